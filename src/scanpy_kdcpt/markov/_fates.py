"""Absorption and fate probabilities on a cell chain, terminal phenotypes and terminal states."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy import sparse

from .._errors import InvalidInputError
from ._chains import net_flux

#: relative residual an iterative solve of an absorbing chain must reach; else the exact LU is used
SOLVE_RTOL = 1e-10
#: transient states up to which the exact LU is used: fast there (milliseconds at a few hundred
#: states, where GMRES on a slowly mixing chain needs ~100 products per column)
LU_UP_TO = 2000


def solve_transient(Q: sparse.spmatrix, B: np.ndarray) -> np.ndarray:
    """``X = (I − Q)⁻¹ B`` for the transient block ``Q`` of an absorbing chain (each column of ``B``).

    Up to ``LU_UP_TO`` states, the exact sparse LU. Above, GMRES (restarted every 50
    iterations), each column checked against its true residual (``≤ SOLVE_RTOL`` relative); a
    column that does not get there is solved by the LU. The LU fills in faster than linearly on
    the kNN graph of a cell chain: 2.9 s for 2,500 transient cells of a synthetic lineage, 93 s
    for 10,000 and more than 10 min for 20,000, where GMRES takes 0.02–0.06 s
    (``benchmarks/results/fates_scale.md``).
    """
    from scipy.sparse.linalg import gmres, splu

    A = (sparse.identity(Q.shape[0], format="csr") - sparse.csr_matrix(Q, dtype=np.float64)).tocsr()
    B = np.asarray(B, dtype=np.float64)
    vector = B.ndim == 1
    B = B[:, None] if vector else B
    if B.ndim != 2 or B.shape[0] != A.shape[0]:
        raise InvalidInputError(f"B must have one row per transient state ({A.shape[0]}), got {B.shape[0]}.")
    if A.shape[0] == 0:
        X = np.zeros_like(B)
    elif A.shape[0] <= LU_UP_TO:
        X = splu(A.tocsc()).solve(B)
    else:
        X = np.zeros_like(B)
        failed = []
        for j in range(B.shape[1]):
            b = B[:, j]
            norm = np.linalg.norm(b)
            if norm == 0:
                continue
            x, info = gmres(A, b, rtol=SOLVE_RTOL, atol=0.0, restart=50, maxiter=200)
            if info != 0 or not np.linalg.norm(A @ x - b) <= 10 * SOLVE_RTOL * norm:
                failed.append(j)
            X[:, j] = x
        if failed:
            X[:, failed] = splu(A.tocsc()).solve(B[:, failed])
    return X[:, 0] if vector else X


def absorption_probabilities(
    T: sparse.spmatrix | np.ndarray, absorbing: np.ndarray, targets: np.ndarray, n_targets: int
) -> np.ndarray:
    """Probability that the chain started at each state is first absorbed in each target group.

    Parameters
    ----------
    T
        Row-stochastic states × states chain (cells, or phenotypes).
    absorbing
        Boolean mask of the absorbing (terminal) states.
    targets
        Target group (``0 .. n_targets - 1``) of each absorbing state, one entry per state
        (ignored where not absorbing).
    n_targets
        Number of target groups.

    Returns
    -------
    States × groups. Absorbing states get their own group with probability 1. Rows of
    transient states from which no absorbing state is reachable are NaN (not a uniform guess).
    Rows are shares conditional on absorption: a state that may instead fall into a closed class
    without an absorbing state (e.g. a chain given by hand with dead ends) gets its absorbed
    mass normalised to sum to 1 (half absorbed in A, half trapped: A with share 1).

    """
    T = sparse.csr_matrix(T, dtype=float)
    n = T.shape[0]
    absorbing = np.asarray(absorbing, dtype=bool)
    targets = np.asarray(targets, dtype=int)
    if absorbing.shape != (n,) or targets.shape != (n,):
        raise InvalidInputError(f"absorbing and targets need one entry per state ({n}).")
    if not absorbing.any():
        raise InvalidInputError("No absorbing state: name at least one terminal phenotype.")
    out = np.zeros((n, n_targets))
    a = np.flatnonzero(absorbing)
    out[a, targets[a]] = 1.0
    t = np.flatnonzero(~absorbing)
    if not len(t):
        return out
    reach = reaches(T, absorbing)
    stuck = t[~reach[t]]
    t_ok = t[reach[t]]
    if len(t_ok):
        Q = T[t_ok][:, t_ok]
        R = T[t_ok][:, a] @ sparse.csr_matrix(
            (np.ones(len(a)), (np.arange(len(a)), targets[a])), shape=(len(a), n_targets)
        )
        out[t_ok] = np.clip(solve_transient(Q, np.asarray(R.todense())), 0.0, 1.0)
        s = out[t_ok].sum(1, keepdims=True)  # shares conditional on absorption (see Returns)
        out[t_ok] /= np.where(s > 0, s, 1.0)
    out[stuck] = np.nan
    return out


def reaches(T: sparse.spmatrix, targets: np.ndarray) -> np.ndarray:
    """States from which some target state is reachable (breadth-first on the reversed graph)."""
    from scipy.sparse.csgraph import breadth_first_order

    n = T.shape[0]
    # reversed edges, plus a hub state n with an edge to every target: a search from the hub
    # reaches exactly the states that reach a target
    hits = np.flatnonzero(targets)
    hub = sparse.csr_matrix((np.ones(len(hits)), (np.full(len(hits), n), hits)), shape=(n + 1, n + 1))
    G = sparse.block_diag([sparse.csr_matrix(T.T), sparse.csr_matrix((1, 1))]).tocsr() + hub
    order = breadth_first_order(G, n, directed=True, return_predecessors=False)
    out = np.zeros(n + 1, bool)
    out[order] = True
    return out[:n]


def fate_probabilities(
    T: sparse.spmatrix | np.ndarray,
    M: sparse.spmatrix | np.ndarray,
    terminal: np.ndarray,
    *,
    core: float = 0.5,
    names: Sequence[str] | None = None,
) -> np.ndarray:
    """Probability that each cell's chain ends in each terminal phenotype.

    The cells of a terminal phenotype ``j`` whose membership of ``j`` is its largest and at
    least ``core`` are made absorbing (the terminal *states*, as in CellRank); every other
    cell's absorption probabilities are solved on ``T`` (:func:`absorption_probabilities`).
    A terminal phenotype without such a cell falls back, with a warning, to the cells that
    predict it (else the 1 % with its largest membership).
    This is the function to call with perturbed memberships (a knockout's ``M_ko``) on the
    same chain ``T``.

    Parameters
    ----------
    T
        Cell-level chain, cells × cells, row-stochastic.
    M
        Soft memberships, cells × phenotypes (rows sum to 1).
    terminal
        Integer codes (columns of ``M``) of the terminal phenotypes.
    core
        Least membership of a terminal phenotype for a cell to be one of its absorbing states.
    names
        The phenotypes' names (one per column of ``M``), for the warnings; codes without them.

    Returns
    -------
    Cells × terminals (in the order of ``terminal``); NaN rows for cells from which no
    terminal state is reachable; rows sum to 1, shares conditional on reaching a terminal
    (see :func:`absorption_probabilities`).

    """
    M = M.toarray() if sparse.issparse(M) else np.asarray(M, dtype=float)
    terminal = np.asarray(terminal, dtype=int).ravel()
    if M.ndim != 2 or M.shape[0] != T.shape[0]:
        raise InvalidInputError(f"M must be cells × phenotypes with {T.shape[0]} rows, got {M.shape}.")
    if not len(terminal):
        raise InvalidInputError("terminal is empty: name at least one terminal phenotype.")
    if len(set(terminal.tolist())) != len(terminal) or terminal.min() < 0 or terminal.max() >= M.shape[1]:
        raise InvalidInputError(
            f"terminal must hold distinct phenotype codes in [0, {M.shape[1]}), got {terminal.tolist()}."
        )
    absorbing, group = terminal_states(M, terminal, core=core, names=names)
    return absorption_probabilities(T, absorbing, np.where(absorbing, group, 0), len(terminal))


def mean_fate(F: np.ndarray, M: sparse.spmatrix | np.ndarray) -> np.ndarray:
    """Mean fate per phenotype: membership-weighted mean of the rows of ``F`` (NaN rows left out).

    Returns phenotypes × terminals (NaN for a phenotype without any cell of known fate).
    """
    M = M.toarray() if sparse.issparse(M) else np.asarray(M, dtype=float)
    F = np.asarray(F, dtype=float)
    ok = ~np.isnan(F).any(1)
    W = M[ok]
    num = W.T @ F[ok]
    den = W.sum(0)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def terminal_phenotypes(P: np.ndarray, weights: np.ndarray, *, tol: float = 0.05) -> np.ndarray:
    """Codes of the sink phenotypes of a directed phenotype chain.

    A phenotype is terminal when its net outflow to every other phenotype is at most
    ``tol`` times its largest net inflow (it receives, it does not send on), and it receives
    some net flux. Used when no terminal phenotypes are given.
    """
    flux = net_flux(P, weights)
    out_max = np.clip(flux, 0, None).max(1)
    in_max = np.clip(-flux, 0, None).max(1)
    return np.flatnonzero((in_max > 0) & (out_max <= tol * in_max))


def terminal_states(
    M: np.ndarray, terminal: np.ndarray, *, core: float = 0.5, names: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The absorbing cells of each terminal phenotype: ``(absorbing mask, terminal index per cell)``.

    A cell is a terminal state of phenotype ``terminal[i]`` when that is its largest membership
    and at least ``core``. A terminal phenotype without such a cell falls back, with a warning,
    to the cells that predict it (else the 1 % with its largest membership). ``names`` (one per
    column of ``M``) name the phenotypes in the warnings; without them they give the codes.
    """
    M = M.toarray() if sparse.issparse(M) else np.asarray(M, dtype=float)
    terminal = np.asarray(terminal, dtype=int).ravel()
    top = M.argmax(1)
    lookup = np.full(M.shape[1], -1)
    lookup[terminal] = np.arange(len(terminal))
    group = lookup[top]
    absorbing = (group >= 0) & (M[np.arange(len(M)), top] >= core)
    fallback, lost = [], []
    for i, t in enumerate(terminal):
        if (absorbing & (group == i)).any():
            continue
        # no confident cell (e.g. an undertrained model): the cells that call it most likely, else
        # the 1 % of cells with its largest membership, so that the phenotype still absorbs
        cand = np.flatnonzero(top == t)
        if not len(cand):
            cand = np.argsort(-M[:, t], kind="stable")[: max(1, int(np.ceil(0.01 * len(M))))]
            cand = cand[~absorbing[cand]]
        if not len(cand):
            # every candidate already absorbs in another terminal (e.g. a knockout that turns all of
            # this phenotype's cells into another one): the phenotype absorbs nothing, fate 0
            lost.append(int(t))
            continue
        group[cand], absorbing[cand] = i, True
        fallback.append(int(t))

    def said(codes: list[int]) -> str:
        return f"phenotype(s) {[str(names[c]) for c in codes]}" if names is not None else f"phenotype code(s) {codes}"

    if lost:
        warnings.warn(
            f"Terminal {said(lost)} have no cell left that could absorb the chain (their cells "
            "absorb in other terminals): no cell ends there, their fates are 0.",
            UserWarning,
            stacklevel=2,
        )
    if fallback:
        warnings.warn(
            f"Terminal {said(fallback)} have no cell with membership ≥ core={core}: their absorbing "
            "states are the cells that predict them (else those with the largest membership). Fates into them "
            "are rough; train longer or lower core.",
            UserWarning,
            stacklevel=2,
        )
    return absorbing, group
