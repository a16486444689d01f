"""The torch-free public core (markov, stats) against hand computations, and the writers' log."""

from __future__ import annotations

import io

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
from scipy import sparse

from scanpy_kdcpt import markov, results, stats, writers


def test_absorption_probabilities_of_a_hand_solved_chain():
    # 0 ↔ 1 transient, each leaking half its mass to a terminal: 0 → 3 (group 0), 1 → 4 (group 1);
    # 2 ↔ 5 cycle between themselves and never reach a terminal
    T = np.zeros((6, 6))
    T[0, [1, 3]] = 0.5
    T[1, [0, 4]] = 0.5
    T[2, 5] = T[5, 2] = 1.0
    T[3, 3] = T[4, 4] = 1.0
    absorbing = np.array([False, False, False, True, True, False])
    targets = np.array([-1, -1, -1, 0, 1, -1])
    A = markov.absorption_probabilities(sparse.csr_matrix(T), absorbing, targets, 2)
    # a0 = ½ a1 + ½ e0, a1 = ½ a0 + ½ e1  ⇒  a0 = (2/3, 1/3), a1 = (1/3, 2/3)
    np.testing.assert_allclose(A[0], [2 / 3, 1 / 3], atol=1e-12)
    np.testing.assert_allclose(A[1], [1 / 3, 2 / 3], atol=1e-12)
    np.testing.assert_array_equal(A[3], [1, 0])
    np.testing.assert_array_equal(A[4], [0, 1])
    assert np.isnan(A[[2, 5]]).all()  # cannot reach a terminal: NaN, not a uniform guess
    np.testing.assert_allclose(markov.absorption_probabilities(T, absorbing, targets, 2)[:2], A[:2])  # dense
    with pytest.raises(ValueError, match="No absorbing state"):
        markov.absorption_probabilities(T, np.zeros(6, bool), targets, 2)


def _drifting_knn_chain(n: int, seed: int = 0):
    """A kNN chain of points in the unit square drifting towards x = 1 (absorbing beyond 0.9)."""
    rng = np.random.default_rng(seed)
    xy = rng.random((n, 2))
    from sklearn.neighbors import NearestNeighbors

    idx = NearestNeighbors(n_neighbors=15).fit(xy).kneighbors(return_distance=False)
    rows = np.repeat(np.arange(n), idx.shape[1])
    w = np.exp(4.0 * (xy[idx.ravel(), 0] - xy[rows, 0]))  # forward moves favoured
    W = sparse.csr_matrix((w, (rows, idx.ravel())), shape=(n, n))
    T = sparse.diags(1.0 / np.asarray(W.sum(1)).ravel()) @ W
    return T, xy[:, 0] > 0.9, (xy[:, 1] > 0.5).astype(int)


def test_absorbing_chains_are_solved_without_the_sparse_lu(monkeypatch):
    # the sparse LU fills in faster than linearly on kNN graphs (minutes at 10,000 cells): the
    # solve is iterative, checked against its residual, and the LU is only a fallback
    import scipy.sparse.linalg as spla

    from scanpy_kdcpt import simulation

    T, absorbing, groups = _drifting_knn_chain(2500)
    assert (~absorbing).sum() > markov._fates.LU_UP_TO  # the iterative path
    t = np.flatnonzero(~absorbing)
    A = np.eye(len(t)) - T[t][:, t].toarray()
    R = np.column_stack([np.asarray(T[t][:, absorbing & (groups == g)].sum(1)).ravel() for g in (0, 1)])
    exact, steps = np.linalg.solve(A, R), np.linalg.solve(A, np.ones(len(t)))

    def no_lu(*args, **kwargs):
        raise AssertionError("the sparse LU was called")

    monkeypatch.setattr(spla, "splu", no_lu)
    F = markov.absorption_probabilities(T, absorbing, groups, 2)
    np.testing.assert_allclose(F[t], exact / exact.sum(1, keepdims=True), atol=1e-8)
    np.testing.assert_allclose(simulation.chain_stage(T, absorbing)[t], np.log1p(steps), atol=1e-8)
    monkeypatch.undo()
    # where GMRES does not converge, the LU gives the exact answer
    monkeypatch.setattr(spla, "gmres", lambda A, b, **kw: (np.zeros_like(b), 1))
    np.testing.assert_allclose(markov.solve_transient(T[t][:, t], R), exact, atol=1e-10)


def test_net_flux_is_antisymmetric_with_the_hand_value():
    P = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.0, 0.5, 0.5]])
    w = np.array([10.0, 5.0, 2.0])
    flux = markov.net_flux(P, w)
    np.testing.assert_allclose(flux, -flux.T, atol=1e-15)
    assert flux[0, 1] == pytest.approx(10 * 0.2 - 5 * 0.3)  # 0.5: more mass 0 → 1 than back
    assert flux[1, 2] == pytest.approx(5 * 0.1 - 2 * 0.5)  # -0.5
    assert flux[0, 2] == pytest.approx(10 * 0.1 - 0.0)
    np.testing.assert_array_equal(np.diag(flux), 0)
    with pytest.raises(ValueError, match="one entry per phenotype"):
        markov.net_flux(P, w[:2])


def test_coarse_grain_with_soft_memberships_is_the_formula():
    rng = np.random.default_rng(0)
    n, k = 40, 3
    T = rng.random((n, n)) * (rng.random((n, n)) < 0.3)
    np.fill_diagonal(T, 0.1)
    T /= T.sum(1, keepdims=True)
    M = rng.dirichlet(np.ones(k), n)  # soft phenotype memberships, rows sum to 1
    D = np.diag(M.sum(0))  # D = diag(Mᵀ 1)
    expected = np.linalg.inv(D) @ M.T @ T @ M
    P = markov.coarse_grain(sparse.csr_matrix(T), M)
    np.testing.assert_allclose(P, expected, atol=1e-12)
    np.testing.assert_allclose(P.sum(1), 1, atol=1e-12)
    # one-hot memberships: P[i, j] = mean over cells of i of the probability to move into j
    codes = rng.integers(0, k, n)
    hard = markov.coarse_grain(T, markov.memberships(codes, k))
    i, j = 1, 2
    assert hard[i, j] == pytest.approx(T[codes == i][:, codes == j].sum(1).mean())


def test_knn_above_the_exact_limit_uses_pynndescent_and_leaves_self_out():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 10))
    Z = (centres[rng.integers(0, 8, 4500)] + 0.3 * rng.normal(size=(4500, 10))).astype(np.float32)
    Z[1:4] = Z[0]  # exact duplicates: pynndescent may place a cell itself anywhere among them
    k = 10
    idx, dist = markov.knn(Z, k, random_state=0, exact_below=4096)
    assert idx.shape == dist.shape == (4500, k)
    assert not (idx == np.arange(4500)[:, None]).any()  # no cell is its own neighbour
    assert {1, 2, 3} <= set(idx[0])  # its duplicates are its nearest cells
    # the approximate neighbours are the exact ones (on a sample of cells)
    from sklearn.neighbors import NearestNeighbors

    sample = rng.choice(4500, 200, replace=False)
    exact = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(Z).kneighbors(Z[sample], return_distance=False)
    recall = np.mean([len(set(idx[s]) & (set(e) - {s})) / k for s, e in zip(sample, exact, strict=True)])
    assert recall > 0.9
    T = markov.knn_transition_matrix(Z, n_neighbors=k)
    np.testing.assert_allclose(np.asarray(T.sum(1)).ravel(), 1, atol=1e-6)
    assert T.diagonal().max() == 0


def test_benjamini_hochberg_against_a_hand_computation():
    p = np.array([0.01, 0.04, 0.03, 0.20, np.nan])
    # m = 4 tested; sorted 0.01, 0.03, 0.04, 0.20 → p·m/rank = 0.04, 0.06, 0.0533, 0.20 → running min from the top
    q = stats.benjamini_hochberg(p)
    np.testing.assert_allclose(q[:4], [0.04, 0.16 / 3, 0.16 / 3, 0.20], atol=1e-12)
    assert np.isnan(q[4])
    assert stats.empirical_pvalue(0.5, np.array([0.1, 0.6, 0.7])) == pytest.approx(3 / 4)


@pytest.fixture
def info_log():
    """scanpy's log at info verbosity, written into a string."""
    before = sc.settings.verbosity, sc.settings.logfile
    buffer = io.StringIO()
    sc.settings.verbosity = "info"
    sc.settings.logfile = buffer
    yield buffer
    sc.settings.verbosity, sc.settings.logfile = before


def test_writers_log_every_key_they_add(info_log):
    names = ["A", "B"]
    adata = ad.AnnData(np.zeros((4, 2), dtype=np.float32))
    result = results.Transitions.from_matrix(
        np.array([[0.9, 0.1], [0.2, 0.8]]),
        names,
        np.array([2, 2]),
        method="directed",
        cell_chain=sparse.eye(4),
        direction={"kind": "pseudotime"},
    )
    writers.write_transitions(adata, result, key_added="kd")
    log = info_log.getvalue()
    for key in ("transition_matrix", "phenotype_mass", "stationary", "entropy", "flux", "kd_transitions"):
        assert repr(key) in log, key
    assert ".obsp" in log and "kd_transitions" in adata.obsp


def test_writers_are_silent_at_warning_verbosity(info_log):
    sc.settings.verbosity = "warning"
    adata = ad.AnnData(np.zeros((4, 2), dtype=np.float32))
    result = results.Transitions.from_matrix(np.eye(2), ["A", "B"], np.array([2, 2]), method="posterior")
    writers.write_transitions(adata, result)
    assert info_log.getvalue() == ""
    assert "transition_matrix" in adata.uns["kdcpt"]


def test_every_error_the_package_raises_is_one_of_its_own():
    # docs/scale.md: "every error the package raises on bad input derives from KDCPTError" — a
    # plain ValueError / KeyError escaped `except KDCPTError` (root=, terminal=, time_key= ...)
    import pathlib
    import re

    import scanpy_kdcpt

    root = pathlib.Path(scanpy_kdcpt.__file__).parent
    plain = [
        f"{p.relative_to(root)}:{i}"
        for p in sorted(root.rglob("*.py"))
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"\braise (ValueError|KeyError)\(", line)
    ]
    assert not plain, f"raise InvalidInputError / KeyNotFoundError (scanpy_kdcpt._errors) instead at {plain}"


def test_chain_input_errors_are_the_packages_and_keep_their_builtin_type():
    from scanpy_kdcpt import directed
    from scanpy_kdcpt._errors import InvalidInputError, KDCPTError, KeyNotFoundError

    adata = ad.AnnData(np.zeros((4, 2), dtype=np.float32))
    with pytest.raises(KeyNotFoundError, match="root 'HSC' is not a phenotype") as err:
        directed._check_inputs(
            {"pseudotime": 1.0}, adata, time_key=None, root="HSC", phenotypes=["A"], codes=np.zeros(4, int)
        )
    assert isinstance(err.value, KDCPTError) and isinstance(err.value, KeyError)
    with pytest.raises(InvalidInputError, match="empty='absorbing' needs a square matrix") as err:
        markov.row_normalize(np.ones((2, 3)), empty="absorbing")
    assert isinstance(err.value, ValueError)
