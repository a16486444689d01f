"""Cell and phenotype chains: kNN chains, coarse-graining, stationary state, entropy, flux."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse

from .._errors import InvalidInputError


def check_stochastic(P: np.ndarray, what: str = "A transition matrix") -> np.ndarray:
    """``P`` as a float array, or a ValueError if it is not square, non-negative, rows summing to 1."""
    P = np.asarray(P, dtype=float)
    if P.ndim != 2 or P.shape[0] != P.shape[1]:
        raise InvalidInputError(f"{what} must be square, got shape {P.shape}.")
    if (P < -1e-12).any() or not np.allclose(P.sum(1), 1.0, atol=1e-6):
        raise InvalidInputError(f"{what} must be non-negative with rows summing to 1.")
    return P


def row_normalize(W: np.ndarray, *, empty: str = "absorbing") -> np.ndarray:
    """Rows of a non-negative square matrix scaled to sum to 1.

    A row that sums to 0 (a phenotype without cells) becomes absorbing (1 on the diagonal)
    with ``empty="absorbing"``, or stays 0 with ``empty="zero"``.
    """
    W = np.array(W, dtype=float)
    s = W.sum(1)
    zero = s <= 0
    W[~zero] /= s[~zero, None]
    if empty == "absorbing":
        if W.shape[0] != W.shape[1]:
            raise InvalidInputError("empty='absorbing' needs a square matrix.")
        W[zero] = 0.0
        W[np.flatnonzero(zero), np.flatnonzero(zero)] = 1.0
    elif empty != "zero":
        raise InvalidInputError(f"empty must be 'absorbing' or 'zero', not {empty!r}.")
    return W


def memberships(assigned: np.ndarray, n_phenotypes: int) -> sparse.csr_matrix:
    """Hard memberships: the one-hot cells × phenotypes matrix of integer codes (``-1``: none)."""
    assigned = np.asarray(assigned, dtype=int).ravel()
    ok = assigned >= 0
    rows = np.flatnonzero(ok)
    return sparse.csr_matrix((np.ones(len(rows)), (rows, assigned[ok])), shape=(len(assigned), int(n_phenotypes)))


def coarse_grain(T: sparse.spmatrix | np.ndarray, M: sparse.spmatrix | np.ndarray) -> np.ndarray:
    """Phenotype chain of a cell chain: ``P = D⁻¹ Mᵀ T M`` with ``D = diag(Mᵀ 1)``.

    ``M`` holds each cell's (soft) phenotype memberships; with one-hot rows ``P[i, j]`` is the
    mean over the cells of ``i`` of the probability of moving into a cell of ``j``. A
    phenotype with no membership mass gets an absorbing row.
    """
    T = sparse.csr_matrix(T)
    M = sparse.csr_matrix(M) if sparse.issparse(M) else np.asarray(M, dtype=float)
    if T.shape[0] != T.shape[1] or T.shape[0] != M.shape[0]:
        raise InvalidInputError(f"T must be cells × cells and M cells × phenotypes; got {T.shape} and {M.shape}.")
    TM = T @ M
    flow = M.T @ TM
    flow = flow.toarray() if sparse.issparse(flow) else np.asarray(flow)
    return row_normalize(flow)


def posterior_transition_matrix(proba: np.ndarray, M: sparse.spmatrix | np.ndarray) -> np.ndarray:
    """The paper's phenotype-similarity form: ``P[i, j]`` = mean of ``p(j)`` over the cells of ``i``.

    ``M`` gives the cells of each phenotype (one-hot, see :func:`memberships`, or soft
    weights). Symmetric in the sense of a reversible chain for a calibrated classifier
    (``n_i P_ij ≈ n_j P_ji``): it measures similarity, not direction. Empty phenotypes are
    absorbing.
    """
    proba = np.asarray(proba, dtype=float)
    flow = M.T @ proba
    return row_normalize(np.asarray(flow))


def knn_transition_matrix(
    representation: np.ndarray,
    n_neighbors: int = 30,
    softmax_scale: float = 10.0,
    *,
    random_state: int = 0,
    exact_below: int = 4096,
) -> sparse.csr_matrix:
    """Undirected cell-level chain: each cell moves to one of its ``n_neighbors`` nearest cells.

    Neighbours by cosine distance, the cell itself left out; exact search below
    ``exact_below`` cells, approximate (pynndescent) above. Transition weights
    ``softmax(softmax_scale * cosine similarity)`` over the neighbours. Row-stochastic CSR.
    """
    Z = np.asarray(representation, dtype=np.float32)
    n = Z.shape[0]
    if n < 2:
        raise InvalidInputError(f"A kNN transition matrix needs at least 2 cells, got {n}.")
    if n_neighbors < 1:
        raise InvalidInputError(f"n_neighbors must be at least 1, got {n_neighbors}.")
    k = int(min(n_neighbors, n - 1))
    idx, dist = knn(Z, k, random_state=random_state, exact_below=exact_below)
    sim = 1.0 - np.asarray(dist, dtype=np.float64)
    z = softmax_scale * sim
    z -= z.max(1, keepdims=True)
    w = np.exp(z)
    w /= w.sum(1, keepdims=True)
    rows = np.repeat(np.arange(n), k)
    return sparse.csr_matrix((w.ravel(), (rows, idx.ravel())), shape=(n, n))


def knn(Z: np.ndarray, k: int, *, random_state: int = 0, exact_below: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` nearest other rows by cosine distance: ``(indices, distances)``, cells × k."""
    n = Z.shape[0]
    if n <= exact_below:
        from sklearn.neighbors import NearestNeighbors

        dist, idx = NearestNeighbors(n_neighbors=k, metric="cosine").fit(Z).kneighbors()
        return idx, dist
    from pynndescent import NNDescent

    index = NNDescent(Z, n_neighbors=k + 1, metric="cosine", random_state=random_state, low_memory=True)
    idx, dist = index.neighbor_graph
    # drop each cell itself (normally column 0; duplicates may put it elsewhere)
    self_hit = idx == np.arange(n)[:, None]
    keep = ~self_hit
    keep[keep.sum(1) > k, -1] = False  # no self in the row: drop the farthest
    return idx[keep].reshape(n, k), dist[keep].reshape(n, k)


def stationary_distribution(P: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """Stationary distribution ``π = π P`` of a row-stochastic matrix.

    The limit of the lazy chain ``(P + I) / 2`` started from ``start`` (default uniform), by
    repeated squaring: the unique stationary distribution of an irreducible chain, and the
    long-run distribution reached from ``start`` otherwise.
    """
    P = check_stochastic(P)
    n = P.shape[0]
    pi = np.full(n, 1.0 / n) if start is None else np.asarray(start, dtype=float) / np.sum(start)
    A = 0.5 * (P + np.eye(n))
    for _ in range(64):
        A = A @ A
        A /= A.sum(1, keepdims=True)
    pi = pi @ A
    return pi / pi.sum()


def entropy(P: np.ndarray | pd.DataFrame, priors: np.ndarray | None = None) -> tuple[pd.DataFrame, float]:
    """Entropy of each phenotype's row of ``P`` and their prior-weighted mean (natural log).

    ``H(C_i) = -Σ_j P[i, j] log P[i, j]`` (``0 log 0 = 0``); overall ``H = Σ_i π_i H(C_i)``
    with ``π`` the phenotype priors (uniform when not given). The paper's Eq. 7 carries a
    stray minus sign; the weighted average of its text is what is computed.

    Returns
    -------
    A DataFrame indexed by phenotype with ``entropy``, ``entropy_normalized`` (divided by
    ``log(n_phenotypes)``, in [0, 1]) and ``prior``; and the overall entropy.

    """
    names = list(map(str, P.index)) if isinstance(P, pd.DataFrame) else [str(i) for i in range(len(P))]
    P = check_stochastic(P)
    n = P.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(P > 0, P * np.log(P), 0.0).sum(1)
    pi = np.full(n, 1.0 / n) if priors is None else np.asarray(priors, dtype=float)
    if pi.shape != (n,) or (pi < 0).any() or pi.sum() <= 0:
        raise InvalidInputError(f"priors must be {n} non-negative weights (one per phenotype).")
    pi = pi / pi.sum()
    norm = np.log(n) if n > 1 else 1.0
    table = pd.DataFrame(
        {"entropy": h, "entropy_normalized": h / norm, "prior": pi}, index=pd.Index(names, name="phenotype")
    )
    return table, float(pi @ h)


def net_flux(P: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Net flux ``F - Fᵀ`` with ``F = diag(weights) P`` (weights: phenotype sizes or ``π``).

    ``flux[i, j] > 0``: more mass moves from ``i`` to ``j`` than back. Antisymmetric.
    """
    P = check_stochastic(P)
    w = np.asarray(weights, dtype=float).ravel()
    if w.shape != (P.shape[0],):
        raise InvalidInputError(f"weights must have one entry per phenotype ({P.shape[0]}), got {w.shape}.")
    F = w[:, None] * P
    return F - F.T


def symmetrized(P: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Symmetric similarity ``S_ij = (w_i P_ij + w_j P_ji) / (w_i + w_j)`` of a row-stochastic ``P``.

    The mass-weighted mean of the two directions (``w``: phenotype mass): the edge weight of an
    undirected chain, such as the posterior form, whose asymmetry carries no direction.
    Symmetric, with ``S_ii = P_ii``.
    """
    P = check_stochastic(P)
    w = np.asarray(weights, dtype=float).ravel()
    if w.shape != (P.shape[0],) or (w < 0).any():
        raise InvalidInputError(f"weights must be {P.shape[0]} non-negative values (one per phenotype), got {w.shape}.")
    F = w[:, None] * P
    pair = w[:, None] + w[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        S = np.where(pair > 0, (F + F.T) / np.where(pair > 0, pair, 1.0), 0.5 * (P + P.T))
    return S


def total_variation(P: np.ndarray, Q: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Mean total-variation distance ``½ Σ_j |P_ij - Q_ij|`` over rows (rows with weight > 0)."""
    tv = 0.5 * np.abs(np.asarray(P, dtype=float) - np.asarray(Q, dtype=float)).sum(1)
    rows = np.ones(len(tv), bool) if weights is None else np.asarray(weights) > 0
    return float(tv[rows].mean()) if rows.any() else 0.0


def terminated_transitions(P: np.ndarray, P_ko: np.ndarray, *, floor: float, fraction: float) -> np.ndarray:
    """Off-diagonal transitions ``P[i, j] > floor`` that fall below ``fraction * P[i, j]`` after a perturbation."""
    P = np.asarray(P, dtype=float)
    term = (P > floor) & (np.asarray(P_ko, dtype=float) < fraction * P)
    if term.shape[0] == term.shape[1]:
        np.fill_diagonal(term, False)
    return term


def knn_graph(
    Z: np.ndarray, n_neighbors: int = 30, *, random_state: int = 0, exact_below: int = 4096
) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
    """The ``distances`` and symmetric ``connectivities`` of a kNN graph of a representation (what
    ``sc.pp.neighbors`` writes into ``.obsp``, without calling it).

    Neighbours by cosine distance (:func:`knn`: exact below ``exact_below`` cells, pynndescent
    above). Connectivities are Gaussian with an adaptive width per cell (scanpy's ``"gauss"``
    form: ``σ_i`` = median distance of cell ``i`` to its neighbours), symmetrised by the
    maximum. Memory and time are linear in the number of cells.

    Returns
    -------
    ``(distances, connectivities)``, both cells × cells CSR without a diagonal.

    """
    Z = np.asarray(Z, dtype=np.float32)
    n = Z.shape[0]
    if n < 2:
        raise InvalidInputError(f"A kNN graph needs at least 2 cells, got {n}.")
    if n_neighbors < 1:  # was raised to 1 without a word
        raise InvalidInputError(f"n_neighbors must be at least 1, got {n_neighbors}.")
    k = int(min(n_neighbors, n - 1))
    idx, dist = knn(Z, k, random_state=random_state, exact_below=exact_below)
    dist = np.maximum(np.asarray(dist, dtype=np.float64), 0.0)
    sigma = np.maximum(np.median(dist, axis=1), 1e-8)
    rows = np.repeat(np.arange(n), k)
    cols = idx.ravel()
    s2 = sigma[rows] ** 2 + sigma[cols] ** 2
    w = np.sqrt(2 * sigma[rows] * sigma[cols] / s2) * np.exp(-(dist.ravel() ** 2) / s2)
    D = sparse.csr_matrix((dist.ravel() + 1e-12, (rows, cols)), shape=(n, n))
    W = sparse.csr_matrix((w, (rows, cols)), shape=(n, n))
    W = W.maximum(W.T).tocsr()
    W.setdiag(0)
    W.eliminate_zeros()
    return D, W


def project_chain(T: sparse.spmatrix, X: np.ndarray) -> np.ndarray:
    """Expected displacement of each cell on an embedding under the chain, minus the undirected one.

    ``v_i = Σ_j T_ij u_ij - mean_j u_ij`` over the cell's neighbours ``j`` (``u_ij``: unit
    vector from ``i`` to ``j``), CellRank's projection of a transition matrix.
    """
    T = sparse.csr_matrix(T)
    coo = T.tocoo()
    d = X[coo.col] - X[coo.row]
    norm = np.linalg.norm(d, axis=1, keepdims=True)
    u = np.divide(d, norm, out=np.zeros_like(d), where=norm > 0)
    n = T.shape[0]
    V = np.zeros_like(X)
    np.add.at(V, coo.row, coo.data[:, None] * u)
    mean = np.zeros_like(X)
    np.add.at(mean, coo.row, u)
    k = np.maximum(np.diff(T.indptr), 1)[:, None]
    return V - mean / k if n else V
