"""The torch-free knockout simulation core: GRN, shift, perturbed chain, score, null, horizon fates."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from scanpy_kdcpt import markov
from scanpy_kdcpt import simulation as sim

# genes of the planted network
REG, GA, GB, GN, DECOY, TIME = 0, 1, 2, 3, 4, 5
N_GENES = 10
P, A_MID, B_MID, A_END, B_END = 0, 1, 2, 3, 4


def _branching(n: int = 700, seed: int = 0):
    """A progenitor splitting into branches A and B; ``Reg`` drives ``gA``, the gene of branch A.

    ``gA = 1.5 Reg`` (planted positive), ``gN = 2 − 0.8 Reg`` (planted negative); ``gB`` rises
    along branch B on its own; ``decoy`` is a regulator candidate without targets. The chain
    follows the kNN graph towards later pseudotime.
    """
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 1, n)
    branch = rng.integers(0, 2, n)
    a = np.where((t > 0.3) & (branch == 0), (t - 0.3) / 0.7, 0.0)
    b = np.where((t > 0.3) & (branch == 1), (t - 0.3) / 0.7, 0.0)
    X = 1.0 + 0.15 * rng.standard_normal((n, N_GENES))
    X[:, REG] = 0.2 + 0.6 * rng.uniform(0, 1, n) + 2.0 * a
    X[:, GA] = 1.5 * X[:, REG] + 0.1 * rng.standard_normal(n)
    X[:, GB] = 0.5 + 3.0 * b + 0.1 * rng.standard_normal(n)
    X[:, GN] = 4.0 - 0.8 * X[:, REG] + 0.1 * rng.standard_normal(n)
    X[:, TIME] = 2.0 * t + 0.1 * rng.standard_normal(n)
    X = np.clip(X, 0, None).astype(np.float32)
    codes = np.where(t <= 0.3, P, np.where(branch == 0, A_MID, B_MID))
    codes = np.where((t > 0.85) & (branch == 0), A_END, codes)
    codes = np.where((t > 0.85) & (branch == 1), B_END, codes)
    _, W = markov.knn_graph(X, 15)
    W = W.tocoo()
    forward = np.where(t[W.col] > t[W.row], 1.0, 0.05)  # towards later pseudotime
    T = sparse.csr_matrix((W.data * forward, (W.row, W.col)), shape=W.shape)
    T = sparse.diags(1.0 / np.asarray(T.sum(1)).ravel()) @ T
    return X, codes, sparse.csr_matrix(T)


@pytest.fixture(scope="module")
def planted():
    X, codes, T = _branching()
    regulators = np.zeros(N_GENES, bool)
    regulators[[REG, DECOY]] = True
    grn = sim.fit_grn(X, codes, regulators=regulators, n_phenotypes=5, min_cells=20)
    M = markov.memberships(codes, 5)
    return X, codes, T, grn, M


def _fate_a(T, M, codes):
    F = markov.fate_probabilities(T, M, [A_END, B_END])
    return float(np.nanmean(F[codes == P, 0]))


def test_fit_grn_recovers_planted_signs(planted):
    X, codes, T, grn, M = planted
    for p in (A_MID, B_MID, P):
        W = grn.coef[p].toarray()
        assert W[REG, GA] > 0.5
        assert W[REG, GN] < -0.3
        assert np.allclose(np.diag(W), 0.0)
        # only regulator rows hold coefficients
        assert not np.delete(W, [REG, DECOY], axis=0).any()
    assert list(grn.targets(REG, A_MID)) and GA in grn.targets(REG, A_MID)


def test_fit_grn_base_and_shared_paths_agree():
    X, codes, _ = _branching(300, seed=1)
    regs = np.zeros(N_GENES, bool)
    regs[[REG, GA, DECOY]] = True  # GA is a regulator too: its own fit must leave itself out
    full = sparse.csr_matrix(np.outer(regs, np.ones(N_GENES)))
    shared = sim.fit_grn(X, codes, regulators=regs, n_phenotypes=5, min_cells=20)
    based = sim.fit_grn(X, codes, regulators=regs, base=full, n_phenotypes=5, min_cells=20)
    for a, b in zip(shared.coef, based.coef, strict=True):
        np.testing.assert_allclose(a.toarray(), b.toarray(), atol=1e-8)
    # a base restricted to decoy → gA leaves Reg out of gA's regulators
    only_decoy = sparse.csr_matrix(([1.0], ([DECOY], [GA])), shape=(N_GENES, N_GENES))
    g = sim.fit_grn(X, codes, base=only_decoy, n_phenotypes=5, min_cells=20)
    assert g.coef[A_MID][REG].nnz == 0 and g.coef[A_MID].nnz <= 1
    # a base whose TFs are none of the regulators: the message said only "regulators (and base) leave none"
    only_ga = np.zeros(N_GENES, bool)
    only_ga[GA] = True
    with pytest.raises(ValueError, match="base network has edges from 1 of the genes, and none of them is among the 1"):
        sim.fit_grn(X, codes, regulators=only_ga, base=only_decoy, n_phenotypes=5, min_cells=20)


def test_fit_grn_on_a_response_controls_for_the_targets_own_level():
    rng = np.random.default_rng(3)
    n, alpha = 200, 0.05
    X = rng.standard_normal((n, 6))
    Y = 0.5 * X[:, [0]] - 0.3 * X + 0.2 * rng.standard_normal((n, 6))  # a drift: pulled back, driven by gene 0
    regs = np.isin(np.arange(6), [0, 1, 2])
    g = sim.fit_grn(X, np.zeros(n, int), regulators=regs, alpha=alpha, min_z=0, response=Y)
    W = g.coef[0].toarray()
    Xc, Yc, lam = X - X.mean(0), Y - Y.mean(0), alpha * n
    for t in range(6):
        # non-regulators: their own level is a covariate; regulators: the others and themselves, own dropped
        cols = [0, 1, 2] if regs[t] else [0, 1, 2, t]
        A = Xc[:, cols]
        beta = np.linalg.solve(A.T @ A + lam * np.eye(len(cols)), A.T @ Yc[:, t])[:3]
        if regs[t]:
            beta[t] = 0.0
        np.testing.assert_allclose(W[:3, t], beta, atol=1e-8)
    assert (W[0, 3:] > 0.3).all()  # gene 0 drives every target's change
    with pytest.raises(ValueError, match="response"):
        sim.fit_grn(X, np.zeros(n, int), response=Y[:, :3])
    with pytest.raises(ValueError, match="base"):
        sim.fit_grn(X, np.zeros(n, int), base=np.ones((6, 6)), response=Y)
    drift = sim.chain_drift(sparse.eye(n, format="csr"), X, lag=3)
    assert drift.shape == X.shape and not drift.any()  # a chain that stays put has no drift


def test_fit_grn_pools_small_phenotypes():
    X, codes, _ = _branching(300, seed=2)
    g = sim.fit_grn(X, codes, regulators=np.arange(N_GENES) == REG, n_phenotypes=6, min_cells=20)
    assert g.pooled[5] and g.n_cells[5] == len(codes)
    with pytest.raises(ValueError, match="alpha"):
        sim.fit_grn(X, codes, alpha=0)


def test_shift_holds_knocked_gene_and_propagates(planted):
    X, codes, T, grn, M = planted
    X0 = X.copy()
    S = sim.simulate_shift(X, codes, grn, REG, n_propagation=3)
    np.testing.assert_array_equal(X, X0)  # the input is never modified
    assert S.dtype == np.float32 and S.shape == X.shape
    np.testing.assert_allclose(S[:, REG], -X[:, REG], atol=1e-6)  # knocked gene held at 0
    assert (S[:, GA] < 0).mean() > 0.95  # a positive target goes down
    assert (S[:, GN] > 0).mean() > 0.95  # a negative target goes up
    assert (X + S >= -1e-6).all()
    direct = sim.simulate_shift(X, codes, grn, REG, n_propagation=0)
    assert not np.delete(direct, REG, axis=1).any()


def test_shift_clipped_at_zero_expression():
    X, codes, _ = _branching(200, seed=3)
    W = sparse.csr_matrix(([3.0], ([REG], [GA])), shape=(N_GENES, N_GENES))  # too strong: would go negative
    grn = sim.GRN(coef=[W] * 5, genes=None, regulators=np.array([REG]), alpha=1.0, n_cells=np.ones(5, int))
    S = sim.simulate_shift(X, codes, grn, [REG], n_propagation=2)
    assert (X + S >= 0).all()
    hit = X[:, GA] < 3.0 * X[:, REG]
    assert hit.any()
    np.testing.assert_allclose((X + S)[hit, GA], 0.0, atol=1e-6)


def test_zero_shift_gives_identical_chain(planted):
    X, codes, T, grn, M = planted
    T_ko = sim.perturbed_chain(T, X, np.zeros_like(X))
    assert (T_ko != T).nnz == 0
    # only some rows shifted: the other rows stay exactly
    S = np.zeros_like(X)
    S[:5, GA] = -1.0
    T_ko = sim.perturbed_chain(T, X, S)
    np.testing.assert_array_equal(T_ko[5:].toarray(), T[5:].toarray())
    assert abs(T_ko[:5] - T[:5]).sum() > 0
    np.testing.assert_array_equal(T_ko.indices, T.indices)
    np.testing.assert_allclose(np.asarray(T_ko.sum(1)).ravel(), 1.0)


def test_non_regulator_leaves_chain_unchanged(planted):
    X, codes, T, grn, M = planted
    S = sim.simulate_shift(X, codes, grn, GB)  # not a regulator: only its own column moves
    assert not np.delete(S, GB, axis=1).any()
    T_ko = sim.perturbed_chain(T, X, S, ignore=[GB])
    assert (T_ko != T).nnz == 0


def test_planted_regulator_knockout_redirects_cells(planted):
    X, codes, T, grn, M = planted
    base = _fate_a(T, M, codes)
    S = sim.simulate_shift(X, codes, grn, REG)
    T_ko = sim.perturbed_chain(T, X, S, ignore=[REG])
    ko = _fate_a(T_ko, M, codes)
    assert 0.3 < base < 0.7
    assert ko < base - 0.1
    # the decoy regulator's knockout barely moves the fates
    S_d = sim.simulate_shift(X, codes, grn, DECOY)
    decoy = _fate_a(sim.perturbed_chain(T, X, S_d, ignore=[DECOY]), M, codes)
    assert abs(decoy - base) < 0.3 * abs(ko - base)
    # the same in a projected space (PCA loadings as basis)
    Xc = X - X.mean(0)
    basis = np.linalg.svd(Xc, full_matrices=False)[2][:5].T
    ko_pca = _fate_a(sim.perturbed_chain(T, X, S, ignore=[REG], basis=basis), M, codes)
    assert ko_pca < base - 0.05


def test_perturbation_score_and_null(planted):
    X, codes, T, grn, M = planted
    S = sim.simulate_shift(X, codes, grn, REG)
    T_ko = sim.perturbed_chain(T, X, S, ignore=[REG])
    Z = X[:, [GA, GB, TIME]].astype(float)
    v = sim.embed_shift(T, T_ko, Z)
    score = sim.perturbation_score(T, Z, v)
    assert score.shape == (len(X),)
    assert np.allclose(sim.embed_shift(T, T, Z), 0.0)
    # cells of branch A are pushed back against their development
    assert score[codes == A_MID].mean() < 0

    def stat(Tk):
        return _fate_a(Tk, M, codes)

    # with 10 genes a random direction is often a meaningful one: a gentle bias (σ = 1) keeps the
    # null of random directions below the planted regulator's effect
    base = _fate_a(T, M, codes)
    obs = stat(sim.perturbed_chain(T, X, S, ignore=[REG], sigma=1.0)) - base
    kw = {"n_permutations": 9, "mode": "genes", "ignore": [REG], "sigma": 1.0}
    null = sim.randomized_shift_null(T, X, S, lambda Tk: stat(Tk) - base, **kw)
    again = sim.randomized_shift_null(T, X, S, lambda Tk: stat(Tk) - base, **kw)
    np.testing.assert_array_equal(null, again)  # seeded
    assert sim.empirical_pvalue(obs, null) == pytest.approx(0.1)  # beyond all 9: (1 + 0) / (1 + 9)
    cells = sim.randomized_shift_null(T, X, S, lambda Tk: stat(Tk) - base, n_permutations=3, seed=1, ignore=[REG])
    assert cells.shape == (3,) and np.isfinite(cells).all()
    assert sim.empirical_pvalue(0.0, np.ones(4)) == 1.0


def test_step_gate_uses_each_cells_median_step():
    from scanpy_kdcpt.simulation._chain import _cosines, _step_gate

    # 1-d positions; cell 0 steps to 1, 2, 3 (lengths 1, 2, 4: median 2), cell 1 to 0 and 2
    # (1, 1: median 1), cell 2 to 4 only, a step of length 0 (no step to measure: no bias)
    X = np.array([[0.0], [1.0], [2.0], [4.0], [2.0]])
    T = sparse.csr_matrix(
        ([1 / 3] * 3 + [0.5] * 2 + [1.0] * 3, ([0, 0, 0, 1, 1, 2, 3, 4], [1, 2, 3, 0, 2, 4, 3, 4])), shape=(5, 5)
    )
    S = np.array([[1.0], [3.0], [5.0], [0.0], [0.5]])
    np.testing.assert_allclose(_step_gate(T, _cosines(T, X, S)[1], S), [0.5, 1.0, 0.0, 0.0, 0.0])


def test_randomised_shifts_are_the_permuted_shifts_on_the_basis(planted):
    # the null projects each randomised shift on the basis without building it: the statistic must
    # be that of perturbed_chain on the shift permuted by hand (same draws), ignored genes kept out
    X, codes, T, grn, M = planted
    S = sim.simulate_shift(X, codes, grn, REG, n_propagation=3)
    basis = np.linalg.svd(X - X.mean(0), full_matrices=False)[2][:4].T  # genes × 4
    kw = {"basis": basis, "ignore": [REG], "sigma": 0.5}

    def stat(Tk):
        return Tk.data.copy()

    cols = np.delete(np.arange(X.shape[1]), REG)
    rng = np.random.default_rng(3)
    expected = []
    for _ in range(2):
        perm = np.arange(X.shape[1])
        perm[cols] = rng.permutation(cols)
        expected.append(stat(sim.perturbed_chain(T, X, S[:, perm], **kw)))
    null = sim.randomized_shift_null(T, X, S, stat, n_permutations=2, seed=3, mode="genes", **kw)
    np.testing.assert_allclose(null, np.stack(expected), atol=1e-12)
    rng = np.random.default_rng(4)
    rows = [rng.permutation(len(X)) for _ in range(2)]
    null = sim.randomized_shift_null(T, X, S, stat, n_permutations=2, seed=4, mode="cells", **kw)
    np.testing.assert_allclose(null, np.stack([stat(sim.perturbed_chain(T, X, S[r], **kw)) for r in rows]), atol=1e-12)
    # entries: each gene's shift permuted across cells with random signs; sizes per gene kept
    moved = cols[np.abs(S[:, cols]).sum(0) > 0]
    rng = np.random.default_rng(5)
    block = rng.permuted(S[:, moved], axis=0) * rng.choice(np.array([-1.0, 1.0]), size=(len(X), len(moved)))
    S_null = np.zeros_like(S, dtype=np.float64)
    S_null[:, moved] = block
    null = sim.randomized_shift_null(T, X, S, stat, n_permutations=1, seed=5, mode="entries", **kw)
    np.testing.assert_allclose(null[0], stat(sim.perturbed_chain(T, X, S_null, **kw)), atol=1e-12)


def test_fates_with_horizon_show_a_block(planted):
    X, codes, T, grn, M = planted
    n = sim.choose_horizon(T, M, [A_END, B_END], reached=0.9)
    F = sim.fates_with_horizon(T, M, [A_END, B_END], n_steps=n)
    assert F.shape == (len(X), 3)
    np.testing.assert_allclose(F.sum(1), 1.0)
    assert F[codes != A_END][:, 2].mean() <= 0.1 + 1e-9
    # a block: progenitors can no longer leave (self-loops only) → all their mass is "not reached"
    T_block = T.tolil()
    for i in np.flatnonzero(codes == P):
        T_block.rows[i], T_block.data[i] = [i], [1.0]
    Fb = sim.fates_with_horizon(T_block.tocsr(), M, [A_END, B_END], n_steps=n)
    assert np.allclose(Fb[codes == P, 2], 1.0)
    assert (Fb[codes == P, :2].sum(1) < F[codes == P, :2].sum(1)).all()
    # the horizon's fates approach the absorption probabilities
    long = sim.fates_with_horizon(T, M, [A_END, B_END], n_steps=20 * n)
    ref = markov.fate_probabilities(T, M, [A_END, B_END])
    ok = ~np.isnan(ref).any(1)
    np.testing.assert_allclose(long[ok, :2], ref[ok], atol=1e-3)


def _line_chain(rows):
    """Cells a, b, c, d (one per phenotype, d terminal) with the given moves."""
    T = np.zeros((4, 4))
    for i, moves in enumerate(rows):
        for j, p in moves.items():
            T[i, j] = p
    return sparse.csr_matrix(T)


def test_horizon_flux_falls_behind_a_block_where_the_one_step_flux_rises():
    M = np.eye(4)
    a, b, c, d = range(4)
    base = _line_chain([{a: 0.5, b: 0.5}, {a: 0.1, b: 0.4, c: 0.5}, {b: 0.3, c: 0.2, d: 0.5}, {d: 1.0}])
    # the knockout: entry into b almost blocked, and c no longer drifts back into b
    ko = _line_chain([{a: 0.99, b: 0.01}, {a: 0.1, b: 0.4, c: 0.5}, {c: 0.2, d: 0.8}, {d: 1.0}])
    one = markov.net_flux(markov.coarse_grain(base, M), M.sum(0))
    one_ko = markov.net_flux(markov.coarse_grain(ko, M), M.sum(0))
    assert one_ko[b, c] > one[b, c]  # the one-step net flux b -> c rises: nothing returns from c
    n = sim.choose_horizon(base, M, [d])  # the base chain's horizon, as a knockout uses it
    h = sim.horizon_flux(base, M, [d], n_steps=n)
    h_ko = sim.horizon_flux(ko, M, [d], n_steps=n)
    np.testing.assert_allclose(h, -h.T)
    # within the horizon a's mass passes b -> c before; under the block hardly any of it does
    assert h[b, c] > 1.5 and h_ko[b, c] < 0.6 * h[b, c]
    # eventually a's and b's mass cross once, net; c's starts beyond and nets 0 however often it goes back
    assert sim.horizon_flux(base, M, [d], n_steps=500)[b, c] == pytest.approx(2.0, abs=1e-6)
    # one step of the non-terminal cells is the one-step net flux without the terminal's row
    F = M[:3].T @ base[:3].toarray() @ M
    np.testing.assert_allclose(sim.horizon_flux(base, M, [d], n_steps=1), F - F.T)
    np.testing.assert_allclose(sim.horizon_flux(base, M, [d], n_steps=0), 0.0)
    with pytest.raises(ValueError, match="n_steps"):
        sim.horizon_flux(base, M, [d], n_steps=-1)


def test_fit_grn_with_the_stage_partialled_out_drops_links_that_only_share_it():
    rng = np.random.default_rng(5)
    n = 400
    stage = rng.uniform(0, 1, n)
    X = 0.1 * rng.standard_normal((n, 4))
    X[:, 0] += 2.0 * stage  # a TF that rises along the lineage, driving nothing
    X[:, 1] += 2.0 - 2.0 * stage  # a gene that falls along it on its own
    X[:, 2] += 0.5 * rng.standard_normal(n)  # a TF varying between cells of the same stage ...
    X[:, 3] += 1.2 * X[:, 2]  # ... that drives its target
    regs = np.isin(np.arange(4), [0, 2])
    codes = np.zeros(n, int)
    plain = sim.fit_grn(X, codes, regulators=regs).coef[0].toarray()
    adjusted = sim.fit_grn(X, codes, regulators=regs, covariates=np.column_stack([stage, stage**2])).coef[0]
    adjusted = adjusted.toarray()
    assert plain[0, 1] < -0.5  # without the stage, the rising TF "represses" the falling gene
    assert adjusted[0, 1] == 0.0  # with it, no link is left (pruned at min_z)
    assert adjusted[2, 3] == pytest.approx(plain[2, 3], rel=0.1) and adjusted[2, 3] > 1.0  # the real one stays
    with pytest.raises(ValueError, match="covariates must be finite"):
        sim.fit_grn(X, codes, regulators=regs, covariates=np.where(stage > 0.5, np.nan, stage))


def test_chain_stage_counts_the_steps_to_a_terminal():
    # 0 → 1 → 2 (absorbing); 3 ↔ 4 never reach it
    T = sparse.csr_matrix(
        np.array([[0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 1, 0]], float)
    )
    s = sim.chain_stage(T, np.array([False, False, True, False, False]))
    np.testing.assert_allclose(s[:3], np.log1p([2.0, 1.0, 0.0]))
    np.testing.assert_allclose(s[3:], np.log1p(2.0))  # stuck cells: as far from a terminal as any cell
    with pytest.raises(ValueError, match="at least one absorbing"):
        sim.chain_stage(T, np.zeros(5, bool))


def _traced_peak(fn) -> tuple[object, int]:
    """``fn()`` and the peak bytes numpy allocated during it (numpy reports its buffers to tracemalloc)."""
    import tracemalloc

    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()


def test_the_shift_and_its_chain_copy_no_more_than_they_must(monkeypatch):
    """Memory of a knockout on many cells: the shift is propagated one block of cells at a time
    (each cell's shift is its own) into the array it returns, never a copy of the expression; the
    perturbed chain projects on the basis block by block of cells, never a float64 copy of all.
    """
    import scanpy_kdcpt.simulation._grn as grn_module

    rng = np.random.default_rng(0)
    n, g = 3000, 1500  # wide, as real data: cells × genes arrays outweigh the chain's entries
    X = rng.gamma(1.0, 1.0, (n, g)).astype(np.float32)
    codes = np.repeat(np.arange(3), n // 3)
    W = sparse.csr_matrix((rng.normal(0, 0.3, 30), (np.zeros(30, int), np.arange(1, 31))), shape=(g, g))
    grn = sim.GRN(coef=[W] * 3, genes=None, regulators=np.array([0]), alpha=1.0, n_cells=np.full(3, n // 3))
    _, W_knn = markov.knn_graph(X[:, :20], 10)
    T = sparse.csr_matrix(sparse.diags(1.0 / np.asarray(W_knn.sum(1)).ravel()) @ W_knn)
    basis = np.linalg.qr(rng.normal(size=(g, 10)))[0]
    monkeypatch.setattr(grn_module, "BLOCK_ENTRIES", n * g)  # all cells in one block
    whole_shift = sim.simulate_shift(X, codes, grn, [0], n_propagation=3)
    whole_chain = sim.perturbed_chain(T, X, whole_shift, basis=basis, ignore=[0])

    monkeypatch.setattr(grn_module, "BLOCK_ENTRIES", 250 * g)  # blocks of 250 cells
    S, peak = _traced_peak(lambda: sim.simulate_shift(X, codes, grn, [0], n_propagation=3))
    assert S.dtype == np.float32 and S[:, 1:31].any()
    np.testing.assert_array_equal(S, whole_shift)  # blocks of cells: the same shift
    assert peak < 1.75 * X.nbytes, peak / X.nbytes  # was 5: copies of X, the direct change, 2 steps, −X
    T_ko, peak = _traced_peak(lambda: sim.perturbed_chain(T, X, S, basis=basis, ignore=[0]))
    assert peak < X.nbytes, peak / X.nbytes  # was ~4: float64 copies of X and the shift
    np.testing.assert_allclose(T_ko.toarray(), whole_chain.toarray(), rtol=1e-12, atol=1e-15)


def test_the_chain_reads_any_array_like_input_as_before(planted):
    """float32, float64, np.matrix and sparse inputs give the same perturbed chain."""
    X, codes, T, grn, M = planted
    S = sim.simulate_shift(X, codes, grn, REG)
    basis = np.linalg.qr(np.random.default_rng(0).normal(size=(N_GENES, 4)))[0]
    ref = sim.perturbed_chain(T, X.astype(np.float64), S.astype(np.float64), basis=basis, ignore=[REG]).toarray()
    for Xi, Si in ((X, S), (np.asmatrix(X), np.asmatrix(S)), (sparse.csr_matrix(X), sparse.csr_matrix(S))):
        got = sim.perturbed_chain(T, Xi, Si, basis=basis, ignore=[REG]).toarray()
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(sim.simulate_shift(np.asmatrix(X), codes, grn, REG), S)


def test_the_phenotype_means_of_a_shift_copy_no_cells_by_genes_array(monkeypatch):
    """``knockout``'s mean shift per phenotype: scipy's ``member @ S`` copies a float32 ``S`` whole
    into float64; by blocks of cells it does not, and gives the same sums.
    """
    import scanpy_kdcpt.simulation._grn as grn_module
    from scanpy_kdcpt.perturb._simulate import _phenotype_sums

    rng = np.random.default_rng(1)
    S = rng.normal(size=(3000, 1500)).astype(np.float32)
    codes = rng.integers(0, 4, 3000)
    member = sparse.csc_matrix((np.ones(3000), (codes, np.arange(3000))), shape=(4, 3000))
    monkeypatch.setattr(grn_module, "BLOCK_ENTRIES", 250 * S.shape[1])
    sums, peak = _traced_peak(lambda: _phenotype_sums(member, S))
    np.testing.assert_allclose(sums, member @ S.astype(np.float64), rtol=1e-12, atol=1e-9)
    assert peak < 0.5 * S.nbytes, peak / S.nbytes  # member @ S: 2 (S in float64)
