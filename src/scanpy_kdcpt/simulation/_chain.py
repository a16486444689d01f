"""The cell chain under a simulated knockout, its perturbation score and null, fates within a horizon."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import numpy as np
from scipy import sparse

from .. import markov
from .._errors import InvalidInputError
from ._grn import _block_rows, _dense

# --------------------------------------------------------------------------------------------
# the perturbed chain
# --------------------------------------------------------------------------------------------


def _row_of(T: sparse.csr_matrix) -> np.ndarray:
    return np.repeat(np.arange(T.shape[0]), np.diff(T.indptr))


def _cosines(T: sparse.csr_matrix, X: np.ndarray, S: np.ndarray, chunk: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """For every stored entry ``(i, j)`` of ``T``: ``cos(S_i, X_j − X_i)`` (0 where either is 0),
    and the step's length ``|X_j − X_i|`` (for :func:`_step_gate`), in one pass.
    """
    rows, cols = _row_of(T), T.indices
    out, length = np.zeros(T.nnz), np.zeros(T.nnz)
    s_norm = np.linalg.norm(S, axis=1)
    for a in range(0, T.nnz, chunk):
        r, c = rows[a : a + chunk], cols[a : a + chunk]
        D = X[c] - X[r]
        num = np.einsum("ij,ij->i", S[r], D, dtype=np.float64)
        length[a : a + chunk] = np.linalg.norm(D, axis=1)
        den = s_norm[r] * length[a : a + chunk]
        out[a : a + chunk] = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return out, length


def _step_gate(T: sparse.csr_matrix, length: np.ndarray, S: np.ndarray) -> np.ndarray:
    """Per cell ``min(1, |Δz_i| / ℓ_i)``, ``ℓ_i`` the median of the cell's step lengths ``|z_j − z_i|``
    in ``T`` (``length``, one per stored entry, from :func:`_cosines`).
    """
    rows, n = _row_of(T), T.shape[0]
    # median of each row's steps of length > 0: the steps sorted by row, then by length
    valid = length > 0
    r, steps = rows[valid], length[valid]
    steps = steps[np.lexsort((steps, r))]
    count = np.bincount(r, minlength=n)
    start = np.cumsum(count) - count
    ell = np.full(n, np.inf)
    has = count > 0
    ell[has] = 0.5 * (steps[start[has] + (count[has] - 1) // 2] + steps[start[has] + count[has] // 2])
    return np.minimum(1.0, np.linalg.norm(S, axis=1) / ell)


def _projected(X: np.ndarray, S: np.ndarray | None, basis: np.ndarray | None, ignore) -> tuple[np.ndarray, ...]:
    """``X`` and ``S`` without the ``ignore`` columns, projected on ``basis`` when given (genes ×
    components), without copying the cells × genes matrices: ``X B − X[:, ignore] B[ignore]``.
    """
    ign = np.zeros(X.shape[1], bool)
    if ignore is not None:
        ign[np.asarray(ignore, dtype=int)] = True
    if basis is None:  # gene space, in float64
        X, S = _dense(X), None if S is None else _dense(S)
        if not ign.any():
            return X, S
        return X[:, ~ign], None if S is None else S[:, ~ign]
    basis = np.asarray(basis, dtype=np.float64)
    if basis.shape[0] != X.shape[1]:
        raise InvalidInputError(f"basis must be genes × components with {X.shape[1]} rows, got {basis.shape}.")

    def project(A):  # in float64, one block of rows at a time (A is never copied whole)
        out, step = np.empty((A.shape[0], basis.shape[1])), _block_rows(A.shape[1])
        for a in range(0, A.shape[0], step):
            block = np.asarray(A[a : a + step], dtype=np.float64)
            out[a : a + step] = block @ basis
            if ign.any():
                out[a : a + step] -= block[:, ign] @ basis[ign]
        return out

    return project(X), None if S is None else project(S)


def _as_array(A) -> np.ndarray:
    """A dense float array: float32 and float64 arrays as they are (no copy), anything else float64."""
    if isinstance(A, np.ndarray) and A.dtype in (np.float32, np.float64):
        return A
    return _dense(A)


def _checked(T, X, shift, sigma: float) -> tuple[sparse.csr_matrix, np.ndarray, np.ndarray]:
    """The chain (CSR, sorted), the expression and the shift of :func:`perturbed_chain`, checked.

    Cells × genes arrays keep their float32 or float64 dtype (no copy): :func:`_projected` reads
    them in float64 one block of rows at a time.
    """
    T = sparse.csr_matrix(T, dtype=np.float64)
    T.sort_indices()
    X = _as_array(X)
    S = _as_array(shift)
    if X.shape[0] != T.shape[0] or S.shape != X.shape:
        raise InvalidInputError(
            f"X and shift must both be cells × genes with {T.shape[0]} rows, got {X.shape} and {S.shape}."
        )
    if sigma <= 0:
        raise InvalidInputError(f"sigma must be positive, got {sigma}.")
    return T, X, S


def _biased_chain(T: sparse.csr_matrix, X: np.ndarray, S: np.ndarray, sigma: float, step_scale: bool):
    """:func:`perturbed_chain` on ``X`` and ``S`` already in the space the cosines are taken in."""
    n = T.shape[0]
    moving = np.linalg.norm(S, axis=1) > 0
    T_ko = T.copy()
    if not moving.any():
        return T_ko
    c, length = _cosines(T, X, S)
    rows = _row_of(T)
    logit = c / sigma
    if step_scale:
        logit *= _step_gate(T, length, S)[rows]
    # subtract each row's largest logit before exp (same result after normalisation, no overflow)
    row_max = np.full(n, -np.inf)
    np.maximum.at(row_max, rows, logit)
    w = T.data * np.exp(logit - row_max[rows])
    s = np.bincount(rows, weights=w, minlength=n)
    upd = moving[rows] & (s[rows] > 0)
    T_ko.data[upd] = w[upd] / s[rows][upd]
    return T_ko


def perturbed_chain(
    T: sparse.spmatrix,
    X: np.ndarray,
    shift: np.ndarray,
    *,
    sigma: float = 0.25,
    basis: np.ndarray | None = None,
    ignore: np.ndarray | Sequence[int] | None = None,
    step_scale: bool = True,
) -> sparse.csr_matrix:
    """The cell chain under a knockout: each move biased by the agreement of the shift with it.

    ``T_ko[i, j] ∝ T[i, j] · exp(cos(Δz_i, z_j − z_i) / σ)`` over the stored entries of ``T``
    (the same neighbours, so the same sparsity pattern), rows renormalised. ``z`` and ``Δz`` are
    the expression and the shift in the space the cosine is taken in: gene space by default,
    or projected on ``basis`` (genes × components, e.g. PCA loadings) — which removes the
    noise of the thousands of genes the shift does not touch from the displacements.

    With ``step_scale`` (default) the exponent is multiplied by ``min(1, |Δz_i| / ℓ_i)``, ``ℓ_i``
    the median length of cell ``i``'s steps: the cosine alone ignores how large the shift is, so
    a knockout that moves a cell by 5 % of a step would redirect it as much as one that moves it
    by several steps (measured: Nkx2-2, whose shift is ~5 % of a step on pancreas, changed
    fates more than Neurog3 without it). A shift of a full step or more biases fully.

    Space: gene space (``basis=None``) and a 30-component PCA basis gave the same signs on
    pancreas for the fate changes scored against genetics (six knockouts; gene space about
    two thirds of the size); PCA was ~20× faster (0.5–1 s against ~20 s per
    knockout on 3,696 cells), which is what makes a null of tens of randomised shifts
    affordable. Pass the PCA loadings of the representation the chain was built on.

    The chain ``T`` keeps its direction (velocity, pseudotime …); the knockout re-weights it,
    it does not replace it (CellOracle replaces the transition probabilities by the softmax
    alone, which suits a picture but loses the developmental direction that fates need). A
    cell whose shift is zero keeps its row of ``T`` exactly, so a gene without regulatory
    effect leaves the chain unchanged.

    CellRank's ``VelocityKernel`` with the shift as velocity, mixed with ``T``, was measured as
    the alternative (``benchmarks/knockout_genetics_core.py``): it replaces part of every row
    even where the shift is zero (a zero velocity gives a uniform move over the neighbours),
    its softmax scale is re-estimated per knockout so effects are not comparable across genes,
    and it runs CellRank once per knockout; the multiplicative bias has none of these.

    Parameters
    ----------
    T
        Cells × cells chain (row-stochastic).
    X
        Cells × genes expression the shift was simulated on (the smoothed log expression).
    shift
        Cells × genes ``Δx`` from :func:`simulate_shift`.
    sigma
        Temperature of the bias: a neighbour straight along a full-sized shift is favoured
        ``exp(1/σ)``-fold over an orthogonal one. CellOracle's 0.05 (on correlations) replaces
        the chain outright (``e²⁰``); 0.25 (``e⁴ ≈ 55``) lets a knockout redirect cells while the
        developmental direction of ``T`` still counts. Measured on pancreas in PCA space
        (``benchmarks/knockout_genetics_core.py``): the fate changes scored against genetics
        keep their signs for σ = 0.1, 0.25, 0.5; their size falls with σ (Arx: α −0.18, −0.14,
        −0.09).
    basis
        Genes × components projection for the cosine (``None``: gene space).
    step_scale
        Scale the bias by the shift's size relative to the cell's steps (see above).
    ignore
        Gene columns left out of both the shift and the displacements — pass the knocked-out
        genes so that only their propagated effect moves the cells (their own loss is the
        classifier's direct effect), and a knockout without targets gives ``T_ko == T``.

    Returns
    -------
    ``T_ko``, cells × cells CSR with the pattern of ``T``, rows summing to 1.

    """
    T, X, S = _checked(T, X, shift, sigma)
    X, S = _projected(X, S, basis, ignore)
    return _biased_chain(T, X, S, sigma, step_scale)


def chain_stage(T: sparse.spmatrix, absorbing: np.ndarray) -> np.ndarray:
    """Each cell's developmental stage on a directed chain: ``log(1 + τ)``, ``τ`` the expected
    number of steps before the chain reaches an ``absorbing`` (terminal) cell; 0 on those
    cells, and the largest finite value on cells from which none can be reached.
    """
    T = sparse.csr_matrix(T, dtype=np.float64)
    absorbing = np.asarray(absorbing, dtype=bool)
    if absorbing.shape != (T.shape[0],):
        raise InvalidInputError(f"absorbing must have one entry per cell ({T.shape[0]}), got {absorbing.shape}.")
    if not absorbing.any():
        raise InvalidInputError("chain_stage needs at least one absorbing (terminal) cell.")
    tau = np.zeros(T.shape[0])
    reach = markov.reaches(T, absorbing)
    t = np.flatnonzero(~absorbing & reach)
    if len(t):
        tau[t] = np.clip(markov.solve_transient(T[t][:, t], np.ones(len(t))), 0.0, None)
    stuck = ~absorbing & ~reach
    tau[stuck] = tau.max()
    return np.log1p(tau)


# --------------------------------------------------------------------------------------------
# the perturbation score and its null
# --------------------------------------------------------------------------------------------


def embed_shift(T: sparse.spmatrix, T_ko: sparse.spmatrix, representation: np.ndarray) -> np.ndarray:
    """The shift as a vector in an embedding: the change of each cell's expected step, ``(T_ko − T) Z``.

    CellOracle's simulated vector field is the expected displacement under the
    shift-biased transitions; here the unperturbed expected step is subtracted, so the
    vector is the knockout's effect alone (zero where ``T_ko == T``).
    """
    Z = np.asarray(representation, dtype=np.float64)
    return np.asarray(sparse.csr_matrix(T_ko) @ Z - sparse.csr_matrix(T) @ Z)


def perturbation_score(T: sparse.spmatrix, representation: np.ndarray, shift_embedding: np.ndarray) -> np.ndarray:
    """Per cell, the agreement of the knockout's shift with the developmental direction.

    The inner product ``⟨v_i, d_i⟩`` of the shift's vector ``v_i`` in the embedding
    (:func:`embed_shift`) with the chain's drift ``d_i = E_T[z_j − z_i] = (T Z − Z)_i``: the
    perturbation score of CellOracle, with the chain's own drift as the development vector.
    Negative: the knockout pushes the cell back against development (a block); positive: it
    speeds the cell along.
    """
    Z = np.asarray(representation, dtype=np.float64)
    V = np.asarray(shift_embedding, dtype=np.float64)
    if V.shape != Z.shape:
        raise InvalidInputError(f"shift_embedding must match representation's shape {Z.shape}, got {V.shape}.")
    drift = np.asarray(sparse.csr_matrix(T) @ Z) - Z
    return np.einsum("ij,ij->i", V, drift)


def randomized_shift_null(
    T: sparse.spmatrix,
    X: np.ndarray,
    shift: np.ndarray,
    statistic: Callable[[sparse.csr_matrix], float | np.ndarray],
    *,
    n_permutations: int = 50,
    seed: int = 0,
    mode: str = "cells",
    groups: np.ndarray | None = None,
    **chain_kwargs,
) -> np.ndarray:
    """The null of a statistic of the perturbed chain under randomised shifts.

    ``mode="cells"`` (CellOracle's randomisation): each permutation gives every cell the shift
    of another cell (rows shuffled, within ``groups`` when given) — the genes moved and the
    magnitudes stay, their alignment with each cell's own neighbourhood is lost. When a
    knockout moves most cells the same way this null keeps the direction too, and is
    conservative (measured on the planted network of the tests: the real shift is *not*
    beyond it).

    ``mode="entries"`` (velocyto's ``permute_rows_nsign``, which CellOracle uses for its
    randomised vectors): each gene's shift values are permuted across cells and their signs
    flipped at random — the genes and the sizes stay, any coherent direction is lost. This is
    the null of the perturbation score in :meth:`~scanpy_kdcpt.KDCPT.knockout`.

    ``mode="genes"``: the columns (genes) of the shift are permuted, one permutation for all
    cells — a coherent shift of the same size and sparsity in random genes. It asks whether
    the genes the GRN moved matter, which is the question behind "the fate change is beyond
    the null". Columns named in ``ignore`` stay in place.

    ``statistic(T_ko)`` is computed on :func:`perturbed_chain` of the randomised shift with
    the same ``chain_kwargs`` as the real one.

    Parameters
    ----------
    T, X, shift
        As for :func:`perturbed_chain`.
    statistic
        Function of the perturbed chain returning a number or an array (e.g. a fate change).
    n_permutations
        Number of randomisations.
    seed
        Seed of the randomisations.
    mode
        ``"cells"``, ``"entries"`` or ``"genes"`` (see above).
    groups
        With ``mode="cells"``: shuffle only within these groups (e.g. phenotype codes).
    **chain_kwargs
        ``sigma``, ``basis``, ``ignore``, ``step_scale`` for :func:`perturbed_chain`.

    Returns
    -------
    ``n_permutations × …`` array of the statistic's null values.

    """
    if mode not in ("cells", "genes", "entries"):
        raise InvalidInputError(f"mode must be 'cells', 'genes' or 'entries', got {mode!r}.")
    # perturbed_chain's own defaults (an unknown keyword is a TypeError, as in a direct call)
    kw = inspect.signature(perturbed_chain).bind(T, X, shift, **chain_kwargs)
    kw.apply_defaults()
    sigma, basis, ignore, step_scale = (kw.arguments[k] for k in ("sigma", "basis", "ignore", "step_scale"))
    T, X, S = _checked(T, X, shift, sigma)
    rng = np.random.default_rng(seed)
    n, n_genes = S.shape
    movable = np.ones(n_genes, bool)
    if ignore is not None:
        movable[np.asarray(ignore, dtype=int)] = False
    cols = np.flatnonzero(movable)
    shifted, step = np.zeros(n_genes, bool), _block_rows(n_genes)  # only movable columns with a shift are randomised
    for a in range(0, n, step):
        shifted |= (S[a : a + step] != 0).any(0)
    moved = cols[shifted[cols]]
    # the expression in the cosines' space once; each randomised shift is projected block by block
    # of genes, so no cells × genes copy of it is made when a basis is given
    # mode "cells" shuffles the rows of the projected shift; the others project each randomised one
    Xp, Sp = _projected(X, S if mode == "cells" else None, basis, ignore)
    kept = np.cumsum(movable) - 1  # a movable gene's column after the ignored ones are dropped
    B = None if basis is None else np.asarray(basis, dtype=np.float64)
    out = []
    for _ in range(int(n_permutations)):
        if mode == "entries":  # velocyto's permute_rows_nsign, one block of genes at a time
            S_null = np.zeros((n, Xp.shape[1]))
            for a in range(0, len(moved), 64):
                g = moved[a : a + 64]
                block = rng.permuted(_dense(S[:, g]), axis=0)
                block *= rng.choice(np.array([-1.0, 1.0]), size=block.shape)
                if B is not None:
                    S_null += block @ B[g]
                else:
                    S_null[:, kept[g]] = block
        elif mode == "genes":  # column j takes gene perm[j]'s shift
            perm = np.arange(n_genes)
            perm[cols] = rng.permutation(cols)
            if B is not None:
                B_perm = np.zeros_like(B)
                B_perm[perm[cols]] = B[cols]
                S_null = S[:, cols] @ B_perm[cols]
            else:
                S_null = _dense(S[:, perm[cols]])
        elif groups is None:
            S_null = Sp[rng.permutation(n)]
        else:
            groups = np.asarray(groups)
            perm = np.arange(n)
            for gval in np.unique(groups):
                idx = np.flatnonzero(groups == gval)
                perm[idx] = rng.permutation(idx)
            S_null = Sp[perm]
        out.append(np.asarray(statistic(_biased_chain(T, Xp, S_null, sigma, step_scale)), dtype=float))
    return np.stack(out)


def empirical_pvalue(observed, null: np.ndarray, *, alternative: str = "two-sided") -> np.ndarray | float:
    """Empirical p-value ``(1 + #{null as or more extreme}) / (1 + n)`` (never 0).

    ``alternative``: ``"two-sided"`` (by absolute value), ``"greater"`` or ``"less"``. ``null``
    is ``n × …`` (the first axis the permutations), ``observed`` the statistic's shape.
    """
    obs = np.asarray(observed, dtype=float)
    null = np.asarray(null, dtype=float)
    if alternative == "two-sided":
        hits = np.abs(null) >= np.abs(obs)
    elif alternative == "greater":
        hits = null >= obs
    elif alternative == "less":
        hits = null <= obs
    else:
        raise InvalidInputError(f"alternative must be 'two-sided', 'greater' or 'less', got {alternative!r}.")
    p = (1.0 + hits.sum(0)) / (1.0 + null.shape[0])
    return float(p) if np.ndim(p) == 0 else p


# --------------------------------------------------------------------------------------------
# fates with a horizon: a block can lower every fate
# --------------------------------------------------------------------------------------------


def fates_with_horizon(
    T: sparse.spmatrix, M, terminal: np.ndarray, *, n_steps: int, core: float = 0.5, names: Sequence[str] | None = None
) -> np.ndarray:
    """Probability of reaching each terminal within ``n_steps`` steps, and of reaching none.

    Absorption probabilities on a connected chain always sum to 1 over the terminals: a
    knockout that *blocks* progenitors only slows them, and their eventual fates barely move
    (Neurog3 knockout: no endocrine cells, yet every cell would still be absorbed in some
    endocrine terminal). Within a horizon — the number of steps the unperturbed chain needs to
    bring most cells to a terminal (:func:`choose_horizon`) — a block shows as mass that has
    not reached any terminal: the last column, "not reached". This was chosen over declaring a
    progenitor phenotype absorbing because it needs no prior choice of where a knockout blocks,
    and it leaves the terminals of :func:`scanpy_kdcpt.markov.fate_probabilities` unchanged.

    Terminal states are the cells of a terminal phenotype with membership ≥ ``core`` (as in
    :func:`~scanpy_kdcpt.markov.fate_probabilities`; ``names``, one per column of ``M``, name
    the phenotypes in its warnings).

    Returns
    -------
    Cells × (terminals + 1): columns in the order of ``terminal``, then "not reached"; rows
    sum to 1.

    """
    T = sparse.csr_matrix(T, dtype=np.float64)
    if n_steps < 0:
        raise InvalidInputError(f"n_steps must be ≥ 0, got {n_steps}.")
    absorbing, group = markov.terminal_states(M, terminal, core=core, names=names)
    k = len(np.asarray(terminal).ravel())
    A = np.zeros((T.shape[0], k))
    A[np.flatnonzero(absorbing), group[absorbing]] = 1.0
    E = A.copy()
    free = ~absorbing
    Tf = T[free]
    for _ in range(int(n_steps)):
        A[free] = Tf @ A
    A[absorbing] = E[absorbing]
    return np.column_stack([A, np.clip(1.0 - A.sum(1), 0.0, 1.0)])


def horizon_flux(
    T: sparse.spmatrix,
    M,
    terminal: np.ndarray,
    *,
    n_steps: int,
    core: float = 0.5,
    states=None,
    names: Sequence[str] | None = None,
) -> np.ndarray:
    """Net flux between phenotypes over ``n_steps`` steps of the mass that starts on the cells
    outside the terminal states (one unit per cell), absorbed where it reaches a terminal state.

    ``F = Mᵀ diag(v) T M`` with ``v = Σ_{t < n_steps} p_t`` the expected visits of that mass
    (``p_0`` one per non-terminal cell, ``p_{t+1} = p_t T``, terminal states absorbing); the
    result is ``F - Fᵀ``, in cells: how many more cells move ``i → j`` than back within the
    horizon. With ``n_steps=1`` it is the one-step net flux of :func:`scanpy_kdcpt.markov.net_flux`
    restricted to the non-terminal cells.

    The one-step net flux weighs each phenotype by the cells observed in it, so a knockout that
    stops cells from *returning* to a state (Neurog3: Pre-endocrine cells no longer drift back
    into Ngn3 high EP) raises the net forward flux even when fewer cells *arrive* there. Over the
    horizon the mass has to reach a phenotype before it can leave it, so a block upstream lowers
    the flux downstream: the flux that answers "how many cells pass from i to j".

    ``states`` (default ``M``): the memberships that decide the terminal states (the base ones,
    to keep the absorbing cells of a knockout fixed). ``names``: as for :func:`fates_with_horizon`.
    """
    T = sparse.csr_matrix(T, dtype=np.float64)
    M = np.asarray(M.toarray() if sparse.issparse(M) else M, dtype=np.float64)
    if n_steps < 0:
        raise InvalidInputError(f"n_steps must be ≥ 0, got {n_steps}.")
    absorbing, _ = markov.terminal_states(M if states is None else states, terminal, core=core, names=names)
    p = (~absorbing).astype(np.float64)
    visits = np.zeros_like(p)
    Tt = T.T.tocsr()
    for _ in range(int(n_steps)):
        visits += p
        p = Tt @ p
        p[absorbing] = 0.0
    F = (M * visits[:, None]).T @ np.asarray(T @ M)
    return F - F.T


def choose_horizon(
    T: sparse.spmatrix,
    M,
    terminal: np.ndarray,
    *,
    reached: float = 0.9,
    core: float = 0.5,
    max_steps: int = 10000,
    names: Sequence[str] | None = None,
) -> int:
    """The horizon for :func:`fates_with_horizon`: the fewest steps after which the unperturbed chain
    has brought cells to a terminal with mean probability ≥ ``reached`` of what it ever brings.

    The mean is over the cells that are not terminal states themselves. On a chain where every
    cell reaches a terminal eventually this is ``reached`` itself; where some cells never do
    (a dead end, a cycle away from the terminals) it is ``reached`` times the mean mass that
    arrives by the time the chain has converged (no gain above 1e-9 in 100 steps), so a chain
    with unreachable cells still gets a horizon. Use the same horizon for the chain under a
    knockout. ``names``: as for :func:`fates_with_horizon`.
    """
    T = sparse.csr_matrix(T, dtype=np.float64)
    absorbing, group = markov.terminal_states(M, terminal, core=core, names=names)
    free = ~absorbing
    if not free.any():
        return 1
    r = absorbing.astype(float)
    Tf = T[free]
    means = []
    for step in range(1, int(max_steps) + 1):
        r[free] = Tf @ r
        means.append(float(r[free].mean()))
        if means[-1] >= reached:
            return step
        if step > 100 and means[-1] - means[-101] < 1e-9:
            break
    limit = means[-1]
    if limit <= 0:
        raise InvalidInputError("No cell outside the terminal states ever reaches a terminal phenotype on this chain.")
    return int(np.searchsorted(np.asarray(means), reached * limit) + 1)
