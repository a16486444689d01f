"""In-silico knockouts: planted transitions terminate, controls do not, data untouched, h5ad + plots."""

from __future__ import annotations

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scvi
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle

import scanpy_kdcpt as kdcpt
from scanpy_kdcpt._errors import InvalidInputError

RANDOM_GENES = ["Gene_7", "Gene_40", "Gene_91"]
FLOOR = 0.02  # P of the planted transitions is 0.03-0.06 with this model


@pytest.fixture(scope="module")
def krumsiek_model():
    """A KDCPT trained on krumsiek11 (simulated myeloid network with known regulators)."""
    scvi.settings.seed = 0
    adata = kdcpt.datasets.krumsiek11()
    kdcpt.KDCPT.setup_anndata(adata, labels_key="cell_type", prior_key="is_tf")
    model = kdcpt.KDCPT(adata)
    model.train(max_epochs=30, enable_progress_bar=False)
    return model


@pytest.fixture(scope="module")
def screen(transition_model):
    """Planted carriers and random genes, each against 50 expression-matched random genes."""
    carriers = list(transition_model.adata.uns["synthetic"]["transitions"]["carrier"])
    return transition_model.knockout(carriers + RANDOM_GENES, n_null=50, floor=FLOOR, inplace=False, progress=False)


def _terminated(res, gene):
    t = res.table
    return set(map(tuple, t[(t["gene"] == gene) & t["terminated"]][["source", "target"]].astype(str).to_numpy()))


def test_planted_carrier_terminates_its_transition(transition_model, screen):
    transitions = transition_model.adata.uns["synthetic"]["transitions"]
    for src, tgt, carrier in transitions[["source", "target", "carrier"]].itertuples(index=False):
        assert (src, tgt) in _terminated(screen, carrier), f"{carrier} knockout does not terminate {src}->{tgt}"
    planted = set(map(tuple, transitions[["source", "target"]].to_numpy()))
    for gene in RANDOM_GENES:
        assert not (_terminated(screen, gene) & planted), f"random gene {gene} terminates a planted transition"


def test_planted_carriers_beat_expression_matched_null(transition_model, screen):
    s = screen.summary.set_index("gene")
    for carrier in transition_model.adata.uns["synthetic"]["transitions"]["carrier"]:
        assert s.loc[carrier, "pval"] < 0.05
        assert s.loc[carrier, "effect"] > s.loc[RANDOM_GENES, "effect"].max()
    assert (s["pval"] >= 1 / 51).all()  # the smallest p-value 50 null genes can give
    assert len(screen.null) == 50 * len(s)
    assert not screen.null["null_gene"].isin(s.index).any()  # nulls exclude the screened genes


def test_table_is_consistent_with_summary(screen):
    t = screen.table
    np.testing.assert_allclose(t["delta"], t["p_ko"] - t["p_base"], atol=1e-12)
    one = t[t["gene"] == "Reg_P1"]
    P = one.pivot_table(index="source", columns="target", values="p_base", observed=False).to_numpy()
    Q = one.pivot_table(index="source", columns="target", values="p_ko", observed=False).to_numpy()
    np.testing.assert_allclose(P.sum(1), 1, atol=1e-6)
    np.testing.assert_allclose(Q.sum(1), 1, atol=1e-6)
    effect = 0.5 * np.abs(Q - P).sum(1).mean()
    assert screen.summary.set_index("gene").loc["Reg_P1", "effect"] == pytest.approx(effect)


def test_sparse_recompute_equals_recomputing_every_cell(transition_model):
    genes = ["Reg_P1", "Gene_7"]
    fast = transition_model.knockout(genes, inplace=False, progress=False)
    full = transition_model.knockout(genes, inplace=False, progress=False, only_expressing=False)
    np.testing.assert_allclose(fast.table["p_ko"], full.table["p_ko"], atol=1e-5)
    n_expr = int((transition_model.adata[:, "Gene_7"].X.toarray() > 0).sum())
    s = fast.summary.set_index("gene")
    assert s.loc["Gene_7", "n_recomputed"] == n_expr < transition_model.adata.n_obs


def test_gene_set_is_knocked_out_together(transition_model):
    X = transition_model.adata.X.copy()
    res = transition_model.knockout({"two regs": ["Reg_P1", "Reg_P2"]}, inplace=False, progress=False)
    single = transition_model.knockout(["Reg_P1", "Reg_P2"], inplace=False, progress=False)
    s, one = res.summary.set_index("gene"), single.summary.set_index("gene")
    assert s.loc["two regs", "effect"] > one["effect"].max()
    union = np.asarray((transition_model.adata[:, ["Reg_P1", "Reg_P2"]].X.toarray() > 0).any(1)).sum()
    assert s.loc["two regs", "n_recomputed"] == union
    assert (transition_model.adata.X != X).nnz == 0  # nothing in X changed


def test_overexpressing_a_planted_regulator_raises_its_phenotype(transition_model):
    over = transition_model.knockout(["Reg_P2", "Gene_7"], mode="overexpress", inplace=False, progress=False)
    assert set(over.summary["mode"]) == {"overexpress"}
    t = over.table
    # probability that moves into each target phenotype from the other phenotypes (posterior form)
    gain = t[t["source"].astype(str) != t["target"].astype(str)].groupby(["gene", "target"], observed=True)["delta"]
    gain = gain.sum().unstack()
    assert gain.loc["Reg_P2", "P2"] > 0.05  # cells of other phenotypes now look more like P2
    assert gain.loc["Reg_P2", "P2"] == gain.loc["Reg_P2"].max()
    assert gain.loc["Reg_P2", "P2"] > 5 * abs(gain.loc["Gene_7", "P2"])  # a random gene barely moves it
    s = over.summary.set_index("gene")
    assert s.loc["Reg_P2", "effect"] > s.loc["Gene_7", "effect"]


def test_a_gene_set_named_like_a_gene_is_refused(transition_model):
    # the set's result used to stand in the gene's own row: .var's effect and the summary then
    # held the set's effect under the gene's name, without a word
    before = transition_model.adata.uns.get("kdcpt", {}).get("knockout_summary")
    with pytest.raises(InvalidInputError, match=r"also gene names.*'Reg_P1 set'"):
        transition_model.knockout({"Reg_P1": ["Reg_P1", "Reg_P2"]}, progress=False)
    with pytest.raises(InvalidInputError, match="also gene names"):
        transition_model.knockout({"Reg_P2": ["Reg_P1"]}, progress=False)
    with pytest.raises(InvalidInputError, match="one name"):
        transition_model.knockout({"P1/P2": ["Reg_P1", "Reg_P2"], "P1_P2": ["Reg_P1"]}, progress=False)
    after = transition_model.adata.uns.get("kdcpt", {}).get("knockout_summary")
    assert (before is None and after is None) or before is after  # nothing written
    res = transition_model.knockout({"Reg_P1": ["Reg_P1"]}, inplace=False, progress=False)  # the gene itself
    assert list(res.summary["gene"]) == ["Reg_P1"]


def test_unknown_gene_names_the_closest(transition_model):
    with pytest.raises(KeyError, match="Reg_P1"):
        transition_model.knockout(["Reg_P1", "Reg_p11"], progress=False)
    # every unknown name at once, in a list as in gene sets, not only the first
    with pytest.raises(KeyError, match=r"2 gene\(s\).*'Reg_p11'.*'Gene_x'"):
        transition_model.knockout(["Reg_P1", "Reg_p11", "Gene_x"], progress=False)
    with pytest.raises(KeyError, match=r"2 gene\(s\).*'Reg_p11'.*'Gene_x'"):
        transition_model.knockout({"a": ["Reg_P1", "Reg_p11"], "b": ["Gene_x"]}, progress=False)
    with pytest.raises(ValueError, match="mode"):
        transition_model.knockout("Reg_P1", mode="silence", progress=False)
    with pytest.raises(ValueError, match="empty"):
        transition_model.knockout([], progress=False)


def test_a_gene_the_query_lacks_is_refused_not_reported_as_no_effect(transition_model):
    adata = transition_model.adata
    query = adata[:200, adata.var_names != "Reg_P2"].copy()
    with pytest.raises(KeyError, match=r"not measured in the query: \['Reg_P2'\]"):
        transition_model.knockout("Reg_P2", adata=query, inplace=False, progress=False)
    with pytest.raises(KeyError, match="not measured in the query"):
        transition_model.knockout({"pair": ["Reg_P1", "Reg_P2"]}, adata=query, inplace=False, progress=False)
    # a measured gene of the same query works
    res = transition_model.knockout("Reg_P1", adata=query, inplace=False, progress=False)
    assert res.summary.loc[0, "effect"] > 0
    # "all" leaves the unmeasured gene out, saying so
    with pytest.warns(UserWarning, match="1 gene.*not measured in the query are left out"):
        units = kdcpt.perturb._units.resolve_units(transition_model, "all", query, kdcpt._keys.Keys("kdcpt"), 10)
    assert "Reg_P2" not in units and len(units) == adata.n_vars - 1


def test_a_gene_name_that_is_not_a_string_gets_a_clear_error(transition_model):
    with pytest.raises(TypeError, match="gene names must be strings, got 1001 \\(int\\); pass '1001'"):
        transition_model.knockout(1001, progress=False)


def test_external_embedding_warns_once():
    adata = kdcpt.datasets.synthetic(n_cells=120, seed=1)
    adata.obsm["X_emb"] = np.random.default_rng(0).normal(size=(adata.n_obs, 5)).astype(np.float32)
    kdcpt.KDCPT.setup_anndata(adata, labels_key="phenotype", embedding_key="X_emb")
    model = kdcpt.KDCPT(adata, n_tokens=16, n_selected=4, d_model=16, n_hidden=16)
    model.is_trained_ = True
    with pytest.warns(UserWarning, match="gene-token branch"):
        model.knockout("Reg_P1", inplace=False, progress=False)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model.knockout("Reg_P1", inplace=False, progress=False)


def test_krumsiek_gata1_knockout_hits_erythroid_megakaryocyte_cells(krumsiek_model):
    res = krumsiek_model.knockout("all", inplace=False, progress=False)
    t = res.table
    block = t[t["source"].isin(["Ery", "Mk"]) & t["target"].isin(["Ery", "Mk"])]
    # change of p(Ery) + p(Mk), averaged over the Ery and Mk rows
    drop = block.groupby("gene", observed=True)["delta"].sum() / 2
    non_erythroid = ["Pu.1", "Cebpa", "cJun", "EgrNab", "Gfi1"]
    assert drop["Gata1"] < 0
    for gene in non_erythroid:
        assert drop["Gata1"] < drop[gene], f"{gene} lowers Ery/Mk more than Gata1: {drop.to_dict()}"


def test_knockout_writes_survive_h5ad_and_plots_draw(transition_model, tmp_path):
    model = transition_model
    adata = model.adata
    model.annotate()
    model.knockout(["Reg_P1", "Gene_7"], n_null=5, progress=False)
    model.knockout(["Reg_P2"], progress=False)  # a second call adds to the first
    summary = adata.uns["kdcpt"]["knockout_summary"]
    assert set(summary["gene"]) == {"Reg_P1", "Gene_7", "Reg_P2"}
    eff = adata.var["kdcpt_knockout_effect"]
    assert eff.notna().sum() == 3 and eff.idxmax() in {"Reg_P1", "Reg_P2"}
    path = tmp_path / "ko.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    t0, t1 = adata.uns["kdcpt"]["knockout"], back.uns["kdcpt"]["knockout"]
    np.testing.assert_allclose(t1["delta"], t0["delta"])
    assert (t1["terminated"].to_numpy() == t0["terminated"].to_numpy()).all()

    ax = kdcpt.pl.knockout(back, "Reg_P1", show=False)
    img = [c for c in ax.get_children() if isinstance(c, AxesImage)][0]
    rows = t1[t1["gene"] == "Reg_P1"]
    n_cls = len(model.classes_)
    np.testing.assert_allclose(np.asarray(img.get_array()), rows["delta"].to_numpy().reshape(n_cls, n_cls))
    boxes = [p for p in ax.patches if isinstance(p, Rectangle) and not p.get_fill()]
    assert len(boxes) == int(rows["terminated"].sum())
    ax = kdcpt.pl.knockout_effects(back, show=False)
    assert [t.get_text() for t in ax.get_xticklabels()][0] == summary.sort_values("effect")["gene"].iloc[-1]
    ax.figure.canvas.draw()  # the legend covers no dot
    legend = ax.get_legend().get_window_extent(ax.figure.canvas.get_renderer())
    dots = np.concatenate([ax.transData.transform(c.get_offsets()) for c in ax.collections])
    assert not any(legend.contains(x, y) for x, y in dots)
    assert ax.get_xticklabels()[0].get_rotation() == 0  # three short names stand upright
    # the legend names only what is drawn: a red entry only when some knockout terminated a transition
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    terminated = summary["n_terminated"].gt(0)
    assert ("terminates a transition" in legend) == bool(terminated.any())
    assert ("terminates none" in legend) == bool((~terminated).any())
    ax = kdcpt.pl.key_genes(back, n_genes=2, show=False)
    assert "Reg_P0" in [t.get_text() for t in ax.get_xticklabels()]
    with pytest.raises(KeyError, match="Reg_P1"):
        kdcpt.pl.knockout(back, "Reg_P11", show=False)
    plt.close("all")


def test_null_pool_leaves_out_targets_and_correlates(transition_model):
    res = transition_model.knockout("Reg_P1", n_null=20, inplace=False, progress=False)
    drawn = set(res.null["null_gene"])
    assert not {g for g in drawn if g.startswith(("Reg_", "Tgt_P1_"))}, sorted(drawn)
    row = res.summary.iloc[0]
    assert row["null_excluded_correlated"] >= 6  # its planted targets at least
    assert row["null_pool"] + row["null_excluded_correlated"] < transition_model.adata.n_vars
    assert 0 < row["qval"] <= 1


def test_a_knockout_that_reaches_no_cell_is_said(transition_model):
    # a gene no cell expresses: "effect 0" read as no effect, though nothing was perturbed
    query = transition_model.adata[:120].copy()
    X = query.X.toarray() if hasattr(query.X, "toarray") else np.asarray(query.X).copy()
    X[:, list(query.var_names).index("Gene_7")] = 0
    query.X = X
    with pytest.warns(UserWarning, match=r"reach no cell: \['Gene_7'\] is expressed in no cell"):
        res = transition_model.knockout(["Gene_7", "Reg_P1"], adata=query, inplace=False, progress=False)
    assert res.summary.set_index("gene").loc["Gene_7", "n_recomputed"] == 0
    with pytest.warns(UserWarning, match="overexpressing"):
        transition_model.knockout("Gene_7", adata=query, mode="overexpress", inplace=False, progress=False)
    with pytest.warns(UserWarning, match="reach no cell"):  # every cell rerun, none changed
        transition_model.knockout("Gene_7", adata=query, only_expressing=False, inplace=False, progress=False)


def test_knockout_groups_are_groups_of_cells(transition_model):
    query = transition_model.adata[:150].copy()
    labels = query.obs["phenotype"].astype(str)
    query.obs["group"] = pd.Categorical(labels, categories=[*sorted(labels.unique()), "ghost"])
    res = transition_model.knockout("Reg_P1", adata=query, groupby="group", inplace=False, progress=False)
    sources = set(res.table["source"].astype(str))  # a source row of zeros for the empty category
    assert "ghost" not in sources and sources <= set(labels) and "ghost" not in res.transition_matrix.index
    query.obs["n_genes"] = np.arange(query.n_obs) * 1.5
    with pytest.raises(InvalidInputError, match="groupby 'n_genes' holds numbers with 150 distinct values"):
        transition_model.knockout("Reg_P1", adata=query, groupby="n_genes", inplace=False, progress=False)
