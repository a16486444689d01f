"""Directed transitions, fate probabilities and CellRank (issue 9)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import SHARED_DATA, needs_shared
from scipy import sparse

import scanpy_kdcpt as kdcpt
from scanpy_kdcpt import _keys, directed, markov, writers
from scanpy_kdcpt._errors import KeyNotFoundError

# ------------------------------------------------------------------------------------------
# torch-free core
# ------------------------------------------------------------------------------------------


def test_fate_probabilities_split_a_branch_and_mark_unreachable_cells_nan():
    # cell 0 → 1 or 2 (1/2 each); 1 is phenotype A (terminal), 2 is B (terminal);
    # cell 3 only loops on itself with cell 4: it never reaches a terminal
    T = np.zeros((5, 5))
    T[0, 1] = T[0, 2] = 0.5
    T[1, 1] = T[2, 2] = 1.0
    T[3, 4] = T[4, 3] = 1.0
    M = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0], [1, 0, 0]], float)  # phenotypes S, A, B
    F = markov.fate_probabilities(sparse.csr_matrix(T), M, [1, 2])
    np.testing.assert_allclose(F[:3], [[0.5, 0.5], [1, 0], [0, 1]])
    assert np.isnan(F[3:]).all()
    mean = markov.mean_fate(F, M)
    np.testing.assert_allclose(mean[0], [0.5, 0.5])  # NaN rows of phenotype S left out
    with pytest.raises(ValueError, match="distinct phenotype codes"):
        markov.fate_probabilities(T, M, [1, 1])
    # half absorbed in A, half trapped in the closed pair {3, 4}: shares conditional on absorption
    T[0] = [0, 0.5, 0, 0.5, 0]
    np.testing.assert_allclose(markov.fate_probabilities(sparse.csr_matrix(T), M, [1, 2])[0], [1.0, 0.0])


def test_progenitor_phenotypes_with_different_cell_fates_get_different_fates():
    # two progenitor phenotypes: U's cells go to terminal A, V's to terminal B, and one cell of U
    # splits; a phenotype's fate is its cells' fates averaged with their memberships, so U and V
    # differ (a phenotype-level chain with a shared intermediate would give them one fate)
    T = np.zeros((6, 6))
    T[0, 4] = 1.0  # U → A
    T[1, 4] = T[1, 5] = 0.5  # U, splits
    T[2, 5] = T[3, 5] = 1.0  # V → B
    T[4, 4] = T[5, 5] = 1.0
    M = np.array([[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    F = markov.fate_probabilities(sparse.csr_matrix(T), M, [2, 3])
    mean = markov.mean_fate(F, M)
    np.testing.assert_allclose(mean[0], [0.75, 0.25])
    np.testing.assert_allclose(mean[1], [0.0, 1.0])


def test_fate_probabilities_of_a_chain_follow_its_bias():
    # a line of 10 cells: terminal phenotypes L (cells 0-1) and R (8-9), S between; a walk
    # biased to the right ends in R more often, and more so the further right it starts
    n = 10
    T = np.zeros((n, n))
    for i in range(n):
        T[i, max(i - 1, 0)] += 0.3
        T[i, min(i + 1, n - 1)] += 0.7
    M = np.zeros((n, 3))
    M[:2, 0] = M[2:8, 1] = M[8:, 2] = 1
    F = markov.fate_probabilities(T, M, [0, 2])
    assert (F[2:8, 1] > F[2:8, 0]).all() and (np.diff(F[2:8, 1]) > 0).all()
    np.testing.assert_allclose(F[8:], [[0, 1], [0, 1]])
    # the bias reversed: the fates swap
    T_left = np.zeros((n, n))
    for i in range(n):
        T_left[i, max(i - 1, 0)] += 0.7
        T_left[i, min(i + 1, n - 1)] += 0.3
    F_rev = markov.fate_probabilities(T_left, M, [0, 2])
    assert (F_rev[2:8, 0] > F_rev[2:8, 1]).all()


def test_knn_graph_is_symmetric_without_diagonal_and_local():
    rng = np.random.default_rng(0)
    Z = np.vstack([rng.normal([5, 0, 0], 0.3, (40, 3)), rng.normal([0, 5, 0], 0.3, (40, 3))])
    D, W = markov.knn_graph(Z, 8)
    assert abs(W - W.T).max() < 1e-12
    assert W.diagonal().sum() == 0 and (D.diagonal() == 0).all()
    assert W[:40, 40:].sum() == 0  # no edge between the separated clusters
    assert (np.diff(D.indptr) == 8).all()
    with pytest.raises(kdcpt._errors.InvalidInputError, match="n_neighbors must be at least 1, got 0"):
        markov.knn_graph(Z, 0)  # was raised to 1 without a word


def test_terminal_phenotypes_are_the_sinks_of_the_net_flux():
    # 0 → 1 → 2, 0 → 3: sinks 2 and 3
    P = np.array([[0.6, 0.2, 0.0, 0.2], [0.0, 0.7, 0.3, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    assert markov.terminal_phenotypes(P, np.ones(4)).tolist() == [2, 3]


def test_resolve_direction_and_its_errors(synthetic_adata):
    a = ad.AnnData(np.zeros((4, 2)), layers={"spliced": np.zeros((4, 2)), "unspliced": np.zeros((4, 2))})
    assert directed.resolve_direction("auto", a) == {"velocity": 0.8, "connectivity": 0.2}
    assert directed.resolve_direction("auto", synthetic_adata) == {"cytotrace": 1.0}
    assert directed.resolve_direction({"velocity": 1, "cytotrace": 3}, a) == {"velocity": 0.25, "cytotrace": 0.75}
    with pytest.raises(ValueError, match="direction"):
        directed.resolve_direction("sideways", a)


# ------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def directed_result(transition_model):
    return transition_model.compute_transitions(direction="pseudotime", root="P0", inplace=False)


def test_planted_lineage_has_positive_net_flux_and_is_directed(transition_model, directed_result):
    F, P = directed_result.flux, directed_result.matrix
    for i in range(3):
        assert F.loc[f"P{i}", f"P{i + 1}"] > 5  # cells flow down the planted lineage
    assert P.loc["P0", "P1"] > 2 * P.loc["P1", "P0"]
    assert directed_result.method == "directed"
    d = directed_result.direction
    assert d["kind"] == "pseudotime" and d["pseudotime"]["root"] == "P0"
    root_cell = d["pseudotime"]["root_cell"]
    assert transition_model.adata.obs.loc[root_cell, "phenotype"] == "P0"
    T = directed_result.cell_chain
    np.testing.assert_allclose(np.asarray(T.sum(1)).ravel(), 1.0, atol=1e-9)
    # the posterior form carries no direction: no net flux, no stationary state
    post = transition_model.get_transition_matrix()
    assert post.flux is None and post.stationary is None and not post.directed


def test_experimental_time_gives_the_same_direction(transition_model):
    a = transition_model.adata
    a.obs["day"] = pd.Categorical(
        a.obs["source_phenotype"].astype(str).str[1].astype(int), categories=[0, 1, 2, 3], ordered=True
    )
    try:
        r = transition_model.compute_transitions(direction="time", time_key="day", inplace=False)
    finally:
        del a.obs["day"]
    assert r.flux.loc["P0", "P1"] > 5 and r.flux.loc["P2", "P3"] > 5
    assert "moscot" in r.direction["time"]["kernel"]


def test_bad_direction_input_gets_clear_errors(transition_model):
    m = transition_model
    with pytest.raises(KeyNotFoundError, match="spliced"):
        m.compute_transitions(direction="velocity", inplace=False)
    with pytest.raises(KeyError, match="P0"):
        m.compute_transitions(direction="pseudotime", root="P9", inplace=False)
    with pytest.raises(ValueError, match="time_key= .* or root="):
        m.compute_transitions(direction="pseudotime", inplace=False)
    with pytest.raises(ValueError, match="finite and 0 or more"):
        m.compute_transitions(direction={"cytotrace": 1.0, "connectivity": -0.5}, inplace=False)
    a = m.adata
    a.obs["t_nan"] = np.where(np.arange(a.n_obs) % 7 == 0, np.nan, 1.0 + np.arange(a.n_obs) % 3)
    a.obs["t_one"] = 1.0
    try:
        with pytest.raises(ValueError, match="missing values"):
            m.compute_transitions(direction="time", time_key="t_nan", inplace=False)
        with pytest.raises(ValueError, match="single time point"):
            m.compute_transitions(direction="time", time_key="t_one", inplace=False)
        with pytest.raises(KeyNotFoundError, match="not a column"):
            m.compute_transitions(direction="time", time_key="nope", inplace=False)
        # sc.tl.dpt writes inf for unreached cells: named, not a "not row stochastic" from CellRank
        a.obs["t_inf"] = np.where(np.arange(a.n_obs) < 3, np.inf, np.arange(a.n_obs, dtype=float))
        with pytest.raises(ValueError, match="3 infinite values"):
            m.compute_transitions(direction="pseudotime", time_key="t_inf", inplace=False)
    finally:
        del a.obs["t_nan"], a.obs["t_one"]
        a.obs.drop(columns="t_inf", inplace=True, errors="ignore")


def test_predictions_of_other_cells_or_order_are_refused(transition_model):
    m = transition_model
    perm = np.random.default_rng(0).permutation(m.adata.n_obs)
    shuffled = m.get_predictions(m.adata[perm].copy())  # the same cells in another order
    with pytest.raises(ValueError, match="predictions are of other cells .* order"):
        m.compute_transitions(direction="cytotrace", predictions=shuffled, inplace=False)
    with pytest.raises(ValueError, match="predictions are of other cells"):
        m.get_transition_matrix(predictions=m.get_predictions(m.adata[:50].copy()))


def test_an_ordered_categorical_is_a_pseudotime_too(transition_model):
    a = transition_model.adata
    stage = a.obs["source_phenotype"].astype(str).str[1].astype(int)  # P0 < P1 < P2 < P3
    a.obs["stage"] = pd.Categorical(np.array(["a", "b", "c", "d"])[stage], ordered=True)
    try:  # it raised "could not convert string to float" inside pandas
        r = transition_model.compute_transitions(direction="pseudotime", time_key="stage", inplace=False)
    finally:
        del a.obs["stage"]
    assert r.flux.loc["P0", "P1"] > 0 and r.flux.loc["P2", "P3"] > 0


def test_fates_annotate_roundtrip_and_cellrank(transition_model, tmp_path):
    m = transition_model
    a = m.adata.copy()
    r = m.compute_transitions(direction="pseudotime", root="P0", inplace=False)
    fates = m.get_fate_probabilities(terminal=["P2", "P3"])
    assert fates.terminal == ["P2", "P3"]
    # P1 lies upstream of P2: it mostly ends in P2 before reaching P3; P0 reaches P2 more than P1 does P3
    assert fates.mean.loc["P1", "P2"] > 0.5
    np.testing.assert_allclose(fates.probabilities.sum(1), 1.0, atol=1e-6)
    with pytest.raises(KeyError, match="phenotypes"):
        m.get_fate_probabilities(terminal=["nope"])

    # annotate uses the stored directed chain, and writes fates into the sink phenotypes
    out = m.annotate(a, copy=True)
    uns = out.uns["kdcpt"]
    assert uns["transition_method"] == "directed"
    assert uns["direction"]["kind"] == "pseudotime"
    np.testing.assert_allclose(uns["transition_matrix"].to_numpy(), r.matrix.to_numpy(), atol=1e-6)
    assert "P3" in list(uns["fate_terminal"])
    assert out.obsm["kdcpt_fate_probabilities"].shape == (a.n_obs, len(uns["fate_terminal"]))
    # a posterior annotate records that it had no direction
    post = m.annotate(a, copy=True, direction="posterior")
    assert post.uns["kdcpt"]["transition_method"] == "posterior"

    writers.write_fates(out, fates, key_added="kd2")
    path = tmp_path / "fates.h5ad"
    out.write_h5ad(path)
    back = ad.read_h5ad(path)
    np.testing.assert_allclose(back.obsm["kd2_fate_probabilities"], fates.probabilities.to_numpy())
    assert list(back.uns["kd2"]["fate_terminal"]) == ["P2", "P3"]
    assert sparse.issparse(back.obsp["kdcpt_transitions"])

    k = m.to_cellrank()
    assert (abs(k.transition_matrix - r.cell_chain)).max() < 1e-12


def test_encoder_representation_keeps_the_lineage_better_than_the_fused_latent(transition_model, directed_result):
    latent = transition_model.compute_transitions(
        direction="pseudotime", root="P0", representation="latent", inplace=False
    )
    enc = directed_result.flux
    assert enc.loc["P0", "P1"] > latent.flux.loc["P0", "P1"]


# ------------------------------------------------------------------------------------------
# real data (CellRank alone on subsets; the model runs in the benchmark)
# ------------------------------------------------------------------------------------------


def _pca(a: ad.AnnData, n: int = 30) -> tuple[np.ndarray, sparse.csr_matrix]:
    import scanpy as sc

    b = ad.AnnData(X=sparse.csr_matrix(a.layers["counts"] if "counts" in a.layers else a.X, dtype=np.float32))
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    sc.pp.pca(b, n_comps=n, random_state=0)
    return b.obsm["X_pca"], b.X


@needs_shared
def test_paul15_pseudotime_from_root_flows_out_to_mature_types():
    a = ad.read_h5ad(SHARED_DATA / "paul15_tradeseq" / "paul15_tradeseq_subset.h5ad")
    Z, _ = _pca(a)
    cl = a.obs["cell_type"].astype("category")
    names, codes = list(map(str, cl.cat.categories)), cl.cat.codes.to_numpy()
    T, rec = directed.directed_chain(
        a, Z, direction="pseudotime", root="Multipotent progenitors", codes=codes, phenotypes=names
    )
    assert a.obs.loc[rec["pseudotime"]["root_cell"], "cell_type"] == "Multipotent progenitors"
    P = markov.coarse_grain(T, markov.memberships(codes, len(names)))
    F = pd.DataFrame(markov.net_flux(P, np.bincount(codes)), index=names, columns=names)
    assert F.loc["Multipotent progenitors", "GMP"] > 0
    assert F.loc["Multipotent progenitors", "Erythrocyte"] > 0
    assert F.loc["GMP", "Monocytes"] > 0


@needs_shared
def test_pancreas_velocity_flux_runs_down_the_endocrine_lineage():
    from conftest import PANCREAS

    a = ad.read_h5ad(PANCREAS)
    keep = a.obs["clusters"].isin(["Ngn3 high EP", "Pre-endocrine", "Beta", "Alpha"]).to_numpy()
    a = a[keep].copy()
    Z, _ = _pca(a)
    cl = a.obs["clusters"].astype(str).astype("category")
    names, codes = list(map(str, cl.cat.categories)), cl.cat.codes.to_numpy()
    T, rec = directed.directed_chain(a, Z, direction="velocity")
    assert rec["weights"] == {"velocity": 0.8, "connectivity": 0.2}
    P = markov.coarse_grain(T, markov.memberships(codes, len(names)))
    F = pd.DataFrame(markov.net_flux(P, np.bincount(codes)), index=names, columns=names)
    assert F.loc["Ngn3 high EP", "Pre-endocrine"] > 0
    assert F.loc["Pre-endocrine", "Beta"] > 0
    sinks = [names[i] for i in markov.terminal_phenotypes(P, np.bincount(codes))]
    assert "Ngn3 high EP" not in sinks and "Pre-endocrine" not in sinks


# ------------------------------------------------------------------------------------------
# plots (from a re-read h5ad)
# ------------------------------------------------------------------------------------------


def test_directed_plots_draw_from_reread_h5ad(transition_model, tmp_path):
    import matplotlib.pyplot as plt

    m = transition_model
    a = m.adata.copy()
    m.compute_transitions(direction="pseudotime", root="P0", inplace=False)
    out = m.annotate(a, copy=True)
    rng = np.random.default_rng(0)
    out.obsm["X_umap"] = m.get_encoder_representation()[:, :2] + 0.01 * rng.normal(size=(a.n_obs, 2))
    path = tmp_path / "d.h5ad"
    out.write_h5ad(path)
    back = ad.read_h5ad(path)
    ax = kdcpt.pl.transition_stream(back, show=False)
    assert len(ax.collections) >= 2  # cells + streamlines
    plt.close("all")
    axs = kdcpt.pl.fate_probabilities(back, show=False)
    assert len(axs) == len(back.uns["kdcpt"]["fate_terminal"])
    plt.close("all")
    ax = kdcpt.pl.fate_probabilities(back, kind="phenotype", show=False)
    assert len(ax.patches) == 4 * len(back.uns["kdcpt"]["fate_terminal"])
    plt.close("all")
    ax = kdcpt.pl.transition_graph(back, show=False)
    flux = back.uns["kdcpt"]["flux"].to_numpy()
    n_expected = int((flux >= 0.10 * flux.max()).sum() - (flux.max() <= 0))
    from matplotlib.patches import FancyArrowPatch

    arrows = [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
    assert len(arrows) == n_expected  # one arrow per pair, only net flux above the threshold
    plt.close("all")
    with pytest.raises(KeyNotFoundError, match="compute_transitions"):
        kdcpt.pl.transition_stream(ad.AnnData(np.zeros((3, 2))), show=False)
    assert _keys.Keys().fate_probabilities == "kdcpt_fate_probabilities"


def test_directed_plots_with_inputs_users_have(transition_model):
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch

    from scanpy_kdcpt._errors import InvalidInputError
    from scanpy_kdcpt.pl import _read

    m = transition_model
    m.compute_transitions(direction="pseudotime", root="P0", inplace=False)
    a = m.annotate(m.adata.copy(), copy=True)
    umap = m.get_encoder_representation()[:, :2].astype(float)
    umap[:5] = np.nan  # cells without coordinates: matplotlib's / scikit-learn's NaN errors before
    a.obsm["X_umap"] = umap
    with pytest.raises(InvalidInputError, match=r"'X_umap'\] has 5 cells without finite coordinates"):
        kdcpt.pl.transition_stream(a, show=False)
    ax = kdcpt.pl.transition_graph(a, max_edges=1, show=False)  # drawn on the cells that have coordinates
    assert len([p for p in ax.patches if isinstance(p, FancyArrowPatch)]) == 1
    assert "the 1 largest of" in ax.get_title()  # not "1 arrows, net flux ≥ ...": more pass the threshold
    plt.close("all")
    # the user's Axes are used (a new figure was opened); one per terminal
    terminals = list(a.uns["kdcpt"]["fate_terminal"])
    fig, axs = plt.subplots(1, len(terminals) + 1)
    out = kdcpt.pl.fate_probabilities(a, ax=axs, show=False)
    assert [x.figure for x in out] == [fig] * len(terminals) and all(x.collections for x in axs[: len(terminals)])
    assert axs[-1].axison  # a spare Axes of the user's is left as it was
    if len(terminals) > 1:
        with pytest.raises(InvalidInputError, match="one panel per terminal"):
            kdcpt.pl.fate_probabilities(a, ax=axs[0], show=False)
    plt.close("all")
    # a phenotype no cell is predicted as had a node at the mean of all cells, in an empty place
    pred = a.obs["kdcpt_pred"].astype(str).to_numpy()
    gone = str(m.classes_[-1])
    pred[pred == gone] = str(m.classes_[0])
    a.obs["kdcpt_pred"] = pd.Categorical(pred, categories=list(m.classes_))
    ax = kdcpt.pl.transition_graph(a, show=False)
    assert f"not drawn (no cell predicted): {gone}" in ax.get_title()
    assert gone not in [t.get_text() for t in ax.texts]
    plt.close("all")
    # leiden-style names: the key of overlapping labels uses letters, not numbers that read as clusters
    fig, ax = plt.subplots()
    X = np.zeros((40, 2))
    ax.scatter(X[:, 0], X[:, 1])
    _read.label_groups(ax, X, pd.Categorical(["0"] * 20 + ["1"] * 20))
    assert {t.get_text() for t in ax.texts} == {"A", "B"}
    plt.close("all")


# ------------------------------------------------------------------------------------------
# kdcpt run
# ------------------------------------------------------------------------------------------


def test_cli_run_with_a_root_reports_net_flux_and_fates(tmp_path, capsys):
    from scanpy_kdcpt import cli

    a = kdcpt.datasets.synthetic(n_cells=600, seed=0, transition_labels="sampled")
    path = tmp_path / "syn.h5ad"
    a.write_h5ad(path)
    out = tmp_path / "run"
    argv = ["run", str(path), "--labels", "phenotype", "--prior", "is_tf", "--epochs", "2"]
    code = cli.main([*argv, "--knockout-top", "0", "--root", "P0", "--quiet", "--out", str(out)])
    assert code == 0
    report = (out / "report.md").read_text()
    assert "**pseudotime**" in report and "### Net flux" in report and "### Fate probabilities" in report
    back = ad.read_h5ad(out / "annotated.h5ad")
    assert back.uns["kdcpt"]["transition_method"] == "directed"
    assert "kdcpt_transitions" in back.obsp and "kdcpt_fate_probabilities" in back.obsm
    assert (out / "figures" / "fate_probabilities.png").exists()
    code = cli.main([*argv, "--direction", "velocity", "--quiet", "--out", str(tmp_path / "bad")])
    assert code != 0 and "spliced" in capsys.readouterr().err


def test_knockout_after_compute_transitions_writes_fate_deltas_of_the_stored_chain(transition_model):
    m = transition_model
    m.compute_transitions(direction="pseudotime", root="P0", inplace=False)
    m.get_fate_probabilities(terminal=["P2", "P3"])
    assert m.transitions_.terminal is None  # a get_* method leaves the model's state alone
    try:
        res = m.knockout(["Reg_P2", "TF_decoy_0"], terminal=["P2", "P3"], inplace=False, progress=False)
    finally:
        m.transitions_ = None  # the session-wide model goes back to having no chain
    fate = res.fate
    assert res.params["simulate"] == "grn"  # a directed chain on the registered cells: knockouts move cells
    assert {"gene", "source", "terminal", "fate_base", "fate_ko", "delta"} <= set(fate.columns)
    assert set(fate["terminal"].astype(str)) == {"P2", "P3", "not reached"}
    assert "all" in set(fate["source"].astype(str))
    # the planted carrier of P1 -> P2 moves the fate into P2 far more than a decoy transcription factor
    into_p2 = fate[(fate["source"] == "all") & (fate["terminal"] == "P2")].set_index("gene")["delta"].abs()
    assert into_p2["Reg_P2"] > 0.05 and into_p2["Reg_P2"] > 5 * into_p2["TF_decoy_0"]


def test_a_terminal_phenotype_left_without_cells_gets_fate_zero_not_an_error():
    # after a knockout every cell that could absorb in B absorbs in A: B gets no terminal state,
    # a warning, and fate 0 (it used to raise)
    T = np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    M = np.array([[1.0, 0.0, 0.0], [0.0, 0.9, 0.1], [0.0, 0.8, 0.2]])  # phenotypes S, A, B
    with pytest.warns(UserWarning, match=r"phenotype code\(s\) \[2\] have no cell left"):
        absorbing, group = markov.terminal_states(M, np.array([1, 2]))
    with pytest.warns(UserWarning, match=r"phenotype\(s\) \['B'\] have no cell left"):  # named when names are given
        markov.terminal_states(M, np.array([1, 2]), names=["S", "A", "B"])
    assert absorbing.tolist() == [False, True, True] and (group[absorbing] == 0).all()
    with pytest.warns(UserWarning):
        F = markov.fate_probabilities(sparse.csr_matrix(T), M, [1, 2])
    np.testing.assert_allclose(F, [[1, 0], [1, 0], [1, 0]])


def test_importing_cellrank_keeps_the_warning_filters():
    # pygpcca's import sets UserWarning to "always" for the whole process; the package's import
    # of CellRank restores the filters (checked in a fresh interpreter, where CellRank is not loaded)
    import subprocess
    import sys

    code = (
        "import warnings; from scanpy_kdcpt._utils import import_cellrank\n"
        "warnings.simplefilter('ignore', UserWarning); before = list(warnings.filters)\n"
        "import_cellrank()\n"
        "assert list(warnings.filters) == before, 'filters changed'\n"
        "import sys; assert 'pygpcca' in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


def test_a_single_terminal_found_by_the_flux_is_flagged_as_uninformative(transition_model, monkeypatch):
    from scanpy_kdcpt.model import _fates

    m = transition_model
    m.compute_transitions(direction="pseudotime", root="P0", inplace=False)
    said = []
    monkeypatch.setattr(_fates.logg, "warning", lambda msg, *a, **k: said.append(msg))
    fates = m.get_fate_probabilities()  # the planted lineage P0 → … → P3 has one sink
    assert fates.terminal == ["P3"]
    assert any("Only one terminal phenotype ('P3'" in s and "terminal=[" in s for s in said)
    said.clear()
    m.get_fate_probabilities(terminal=["P3"])  # asked for: no note
    assert not any("Only one terminal" in s for s in said)


def test_chain_inputs_at_the_edges(transition_model):
    """Fifth bug hunt: each case failed inside scanpy / CellRank or was silently mislabelled."""
    m = transition_model
    adata = m.adata
    # a gene constant over the cells (undetected; zero-filled in a query): CytoTRACE leaves it out
    query = adata[:300].copy()
    query.X = query.X.toarray() if hasattr(query.X, "toarray") else query.X.copy()
    query.X[:, -1] = 0
    chain = m.compute_transitions(query, direction="cytotrace", inplace=False)
    np.testing.assert_allclose(np.asarray(chain.cell_chain.sum(1)).ravel(), 1.0)
    # the neighbour graph alone has no direction, whatever way it is asked for
    plain = m.compute_transitions(query, direction={"connectivity": 1.0}, inplace=False)
    assert plain.direction["kind"] == "none" and not plain.directed and plain.flux is None
    # more neighbours than cells: said, and the number used recorded
    with pytest.warns(UserWarning, match="n_neighbors=500 is more than the other 299 cells"):
        wide = m.compute_transitions(query, direction="cytotrace", n_neighbors=500, inplace=False)
    assert wide.direction["n_neighbors"] == 299
    # a root phenotype without cells here, and too few cells for a diffusion map: named, with the fix
    codes = m.predict(query).astype(str).to_numpy()
    absent = next(c for c in m.classes_ if c not in set(codes[:4]))
    with pytest.raises(ValueError, match="at least 5 cells, got 4"):
        m.compute_transitions(query[:4].copy(), direction="pseudotime", root=absent, n_neighbors=3, inplace=False)
    only = query[codes != absent].copy()
    with pytest.raises(ValueError, match=f"No cell of the root phenotype {absent!r}"):
        m.compute_transitions(only, direction="pseudotime", root=absent, inplace=False)


def test_grouped_latent_chains_are_row_stochastic(transition_model):
    m = transition_model
    adata = m.adata.copy()
    adata.obs["cond"] = np.where(np.arange(adata.n_obs) % 2 == 0, "a", "b")
    chains = m.get_transition_matrix(adata, method="latent", groupby="cond")
    for name in ("a", "b"):
        T = chains[name].cell_chain
        np.testing.assert_allclose(np.asarray(T.sum(1)).ravel(), 1.0)  # 600 rows summed to 0 before
        within = adata.obs["cond"].to_numpy()
        rows, cols = T.nonzero()
        assert (within[rows] == within[cols]).all()  # every cell moves within its own condition


def test_a_representation_with_nan_is_named(transition_model):
    from scanpy_kdcpt._errors import InvalidInputError

    query = transition_model.adata[:100].copy()
    query.obsm["X_nan"] = np.where(np.arange(100)[:, None] == 3, np.nan, np.ones((100, 5)))
    with pytest.raises(InvalidInputError, match=r"adata.obsm\['X_nan'\] has 5 NaN"):
        transition_model.compute_transitions(query, direction="cytotrace", representation="X_nan", inplace=False)
