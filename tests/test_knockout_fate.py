"""Fate and flux deltas of knockouts on a directed cell chain (built here, not by the model)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

from scanpy_kdcpt import markov

RANDOM = ["Gene_7", "Gene_40"]


def lineage_chain(adata) -> sparse.csr_matrix:
    """kNN chain on PCA of log counts, keeping only edges that go forward along the planted lineage."""
    X = np.log1p(adata.X.toarray())
    X = X - X.mean(0)
    U, S, _ = np.linalg.svd(X, full_matrices=False)
    T = markov.knn_transition_matrix(U[:, :10] * S[:10], 15).tocoo()
    pos = adata.obs["source_phenotype"].astype(str).str[1:].astype(int).to_numpy() + adata.obs["w"].to_numpy()
    keep = pos[T.col] >= pos[T.row] - 0.05
    T = sparse.csr_matrix((T.data[keep], (T.row[keep], T.col[keep])), shape=T.shape)
    rs = np.asarray(T.sum(1)).ravel()
    empty = rs == 0
    return (sparse.diags(1 / np.where(empty, 1, rs)) @ T + sparse.diags(empty.astype(float))).tocsr()


@pytest.fixture(scope="module")
def fate_result(transition_model):
    T = lineage_chain(transition_model.adata)
    return transition_model.knockout(
        ["Reg_P1", "Reg_P2", *RANDOM], chain=T, terminal=["P2", "P3"], inplace=False, progress=False
    )


def test_fate_table_shape_and_shares(fate_result, transition_model):
    f = fate_result.fate
    assert list(f.columns) == ["gene", "mode", "source", "terminal", "fate_base", "fate_ko", "delta"]
    n_src = len(transition_model.classes_) + 1  # phenotypes and "all"
    assert len(f) == 4 * n_src * 3  # outcomes: the two terminals and "not reached" within the horizon
    assert list(f["terminal"].cat.categories) == ["P2", "P3", "not reached"]
    # eventual fates into the terminals are shares; "not reached" (within the horizon) is beside them
    into = f[f["terminal"] != "not reached"]
    shares = into.groupby(["gene", "source"], observed=True)[["fate_base", "fate_ko"]].sum()
    np.testing.assert_allclose(shares.to_numpy(), 1.0, atol=1e-6)
    nr = f[f["terminal"] == "not reached"]
    assert ((nr["fate_base"] >= 0) & (nr["fate_base"] <= 1)).all()
    np.testing.assert_allclose(f["delta"], f["fate_ko"] - f["fate_base"], atol=1e-12)


def test_fate_base_is_the_fate_table(fate_result, transition_model):
    # one definition: the terminal rows of fate_base are the membership-weighted eventual
    # absorption of get_fate_probabilities / markov.mean_fate, on the same chain and memberships
    T = lineage_chain(transition_model.adata)
    M = transition_model.predict(soft=True).to_numpy()
    names = list(transition_model.classes_)
    codes = [names.index("P2"), names.index("P3")]
    expected = markov.mean_fate(markov.fate_probabilities(T, M, codes), M)
    f = fate_result.fate
    base = f[(f["gene"] == "Reg_P1") & (f["terminal"] != "not reached") & (f["source"] != "all")]
    got = base.pivot_table(index="source", columns="terminal", values="fate_base", observed=True).loc[names]
    np.testing.assert_allclose(got[["P2", "P3"]].to_numpy(), expected, atol=1e-6)


def test_carrier_knockout_shifts_fates_and_flux_random_genes_do_not(fate_result):
    f, fl = fate_result.fate, fate_result.flux
    d = f[f["source"] == "all"].groupby("gene")["delta"].apply(lambda s: s.abs().max())
    for reg in ("Reg_P1", "Reg_P2"):
        assert d[reg] > 0.03 and d[reg] > 10 * d[RANDOM].max(), d.to_dict()
    # the planted transition P1 -> P2 carried by Reg_P2: its net flux drops, far more than for random genes
    row = fl[(fl["source"] == "P1") & (fl["target"] == "P2")].set_index("gene")
    assert row.loc["Reg_P2", "delta"] < 0
    assert abs(row.loc["Reg_P2", "delta"]) > 10 * row.loc[RANDOM, "delta"].abs().max()


def test_fate_written_and_survives_h5ad(transition_model, tmp_path):
    adata = transition_model.adata
    T = lineage_chain(adata)
    transition_model.knockout(["Reg_P2", "Gene_7"], chain=T, terminal=["P2", "P3"], progress=False)
    uns = adata.uns["kdcpt"]
    assert {"knockout_fate", "knockout_flux"} <= set(uns)
    adata.write_h5ad(tmp_path / "f.h5ad")
    back = ad.read_h5ad(tmp_path / "f.h5ad")
    np.testing.assert_allclose(back.uns["kdcpt"]["knockout_fate"]["delta"], uns["knockout_fate"]["delta"])


def test_fate_deltas_accumulate_over_calls_as_the_summary_does(transition_model):
    import dataclasses

    from scanpy_kdcpt import writers

    adata = transition_model.adata
    kw = {"chain": lineage_chain(adata), "inplace": False, "progress": False}
    first = transition_model.knockout("Reg_P2", terminal=["P2", "P3"], **kw)
    second = transition_model.knockout("Reg_P1", terminal=["P2", "P3"], **kw)
    a = ad.AnnData(obs=adata.obs[[]].copy(), var=adata.var[[]].copy())
    writers.write_knockout(a, first)
    writers.write_knockout(a, second)
    uns = a.uns["kdcpt"]
    for key, res in (("knockout_fate", first.fate), ("knockout_flux", first.flux)):
        assert set(uns[key]["gene"]) == {"Reg_P1", "Reg_P2"}
        np.testing.assert_allclose(uns[key].loc[uns[key]["gene"] == "Reg_P2", "delta"], res["delta"])
    # other terminals: other base fates, so the earlier genes' fate rows go (their summary rows stay)
    writers.write_knockout(a, transition_model.knockout("Gene_7", terminal=["P3"], **kw))
    assert set(uns["knockout_fate"]["gene"]) == {"Gene_7"}
    assert set(uns["knockout_summary"]["gene"]) == {"Reg_P1", "Reg_P2", "Gene_7"}
    # results of other phenotypes (another model or grouping) replace every earlier one
    rename = {"P0": "early", "P1": "early", "P2": "late", "P3": "late"}
    table = first.table.assign(**{c: first.table[c].astype(str).map(rename) for c in ("source", "target")})
    other = dataclasses.replace(first, table=table, summary=first.summary.assign(gene="Gene_40"), fate=None, flux=None)
    writers.write_knockout(a, other)
    assert set(uns["knockout_summary"]["gene"]) == {"Gene_40"}
    assert set(uns["knockout"]["source"].astype(str)) == {"early", "late"}
    assert "knockout_fate" not in uns and "knockout_flux" not in uns


def test_knockout_deltas_of_another_chain_are_removed_when_it_is_written(transition_model):
    m = transition_model
    earlier = m.transitions_
    try:
        other = m.compute_transitions(direction="pseudotime", root="P0", inplace=False)
        m.transitions_ = None  # knockouts below use only the chain they are given
        _check_deltas_follow_their_chain(m, other)
    finally:
        m.transitions_ = earlier  # the session's model as the other tests left it


def _check_deltas_follow_their_chain(m, other):
    import dataclasses

    from scanpy_kdcpt import writers

    T = lineage_chain(m.adata)
    a = ad.AnnData(obs=m.adata.obs[[]].copy(), var=m.adata.var[[]].copy())
    writers.write_knockout(a, m.knockout("Reg_P2", chain=T, terminal=["P2", "P3"], inplace=False, progress=False))
    uns = a.uns["kdcpt"]
    writers.write_transitions(a, dataclasses.replace(other, cell_chain=T))  # the knockouts' chain again: kept
    assert {"knockout_fate", "knockout_flux"} <= set(uns)
    # a later classifier-only knockout (no chain) keeps the earlier gene's deltas and their chain
    writers.write_knockout(a, m.knockout("Gene_7", simulate="classifier", inplace=False, progress=False))
    writers.write_transitions(a, dataclasses.replace(other, cell_chain=T))
    assert set(uns["knockout_fate"]["gene"]) == {"Reg_P2"}
    with pytest.warns(UserWarning, match="computed on another cell chain"):  # they contradicted its flux
        writers.write_transitions(a, other)
    assert not {"knockout_fate", "knockout_flux"} & set(uns) and {"knockout", "knockout_summary"} <= set(uns)


def test_a_gene_deleted_and_overexpressed_keeps_both_fate_tables(transition_model):
    import matplotlib.pyplot as plt

    import scanpy_kdcpt as kdcpt
    from scanpy_kdcpt import report, writers

    adata = transition_model.adata
    kw = {"chain": lineage_chain(adata), "terminal": ["P2", "P3"], "inplace": False, "progress": False}
    deleted = transition_model.knockout("Reg_P2", **kw)
    raised = transition_model.knockout("Reg_P2", mode="overexpress", **kw)
    assert set(deleted.fate["mode"]) == {"delete"} and set(raised.flux["mode"]) == {"overexpress"}
    a = ad.AnnData(obs=adata.obs[[]].copy(), var=adata.var[[]].copy())
    writers.write_knockout(a, deleted)
    writers.write_knockout(a, raised)
    uns = a.uns["kdcpt"]
    for key, res in (("knockout_fate", deleted.fate), ("knockout_flux", deleted.flux)):
        assert set(uns[key]["mode"]) == {"delete", "overexpress"}  # the deletion's rows were dropped before
        np.testing.assert_allclose(uns[key].loc[uns[key]["mode"] == "delete", "delta"], res["delta"])
    ax = kdcpt.pl.knockout_fate(a, "Reg_P2", mode="overexpress", show=False)
    assert "overexpression" in ax.get_title()
    drawn = np.asarray(ax.images[0].get_array())
    expected = raised.fate.pivot_table(index="source", columns="terminal", values="delta", observed=True, sort=False)
    np.testing.assert_allclose(drawn, expected.to_numpy())
    assert "knockout" in kdcpt.pl.knockout_fate(a, "Reg_P2", show=False).get_title()  # the deletion by default
    plt.close("all")
    # a gene only overexpressed, beside another gene's deletion: pl.knockout said it was never knocked out
    other = transition_model.knockout("Reg_P3", **kw)
    b = ad.AnnData(obs=adata.obs[[]].copy(), var=adata.var[[]].copy())
    writers.write_knockout(b, other)
    writers.write_knockout(b, raised)
    ax = kdcpt.pl.knockout(b, "Reg_P2", show=False)
    assert "Reg_P2" in ax.get_title() and "overexpression" in ax.get_title()
    plt.close("all")
    lines = "\n".join(report._knockout_section(uns, 5, {}))  # the report's fate table: a row for each
    assert "| Reg_P2 (delete) |" in lines and "| Reg_P2 (overexpress) |" in lines


def test_chain_errors(transition_model):
    T = lineage_chain(transition_model.adata)
    with pytest.raises(ValueError, match="cells × cells"):
        transition_model.knockout("Reg_P1", chain=T[:10, :10], terminal=["P3"], inplace=False, progress=False)
    with pytest.raises(ValueError, match="terminal"):
        transition_model.knockout("Reg_P1", chain=T, inplace=False, progress=False)
    with pytest.raises(KeyError, match="P9"):
        transition_model.knockout("Reg_P1", chain=T, terminal=["P9"], inplace=False, progress=False)
    with pytest.raises(ValueError, match="row-stochastic"):
        transition_model.knockout("Reg_P1", chain=T * 2, terminal=["P3"], inplace=False, progress=False)


def test_report_lists_fate_deltas_and_qvalues(fate_result):
    from scanpy_kdcpt import report

    summary = fate_result.summary.assign(pval=0.01, qval=0.02)
    uns = {"knockout_summary": summary, "knockout": fate_result.table, "knockout_fate": fate_result.fate}
    text = "\n".join(report._knockout_section(uns, 5, {}))
    assert "qval" in text and "### Fate deltas" in text and "Reg_P2" in text.split("### Fate deltas")[1]


def test_report_lists_each_flux_change_once_over_the_horizon(fate_result):
    from scanpy_kdcpt import report

    uns = {"knockout_summary": fate_result.summary, "knockout_flux": fate_result.flux}
    text = "\n".join(report._knockout_section(uns, 6, {}))
    table = text.split("### Directed chain")[1]
    rows = [r for r in table.splitlines() if r.startswith("|") and "Reg_" in r]
    assert "flux_horizon_ko" in table and len(rows) == 6
    pairs = [tuple(c.strip() for c in r.split("|")[1:5]) for r in rows]
    # never a pair twice (i -> j and j -> i are one change)
    assert len({(g, frozenset((a, b))) for g, _, a, b in pairs}) == len(pairs)
    # largest change over the horizon first, each in the direction its cells went before
    f = fate_result.flux.set_index(["gene", "source", "target"])
    shown = [f.loc[(g, a, b)] for g, _, a, b in pairs]
    assert all(r["flux_horizon_base"] >= 0 for r in shown)
    sizes = [abs(r["delta_horizon"]) for r in shown]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] == pytest.approx(f["delta_horizon"].abs().max())


def test_knockouts_of_another_model_are_replaced_not_merged(transition_model):
    # a second model's knockout kept the first model's results of other genes (and the CLI report
    # listed them as the new run's)
    import dataclasses

    from scanpy_kdcpt import writers

    adata = transition_model.adata
    kw = {"chain": lineage_chain(adata), "inplace": False, "progress": False}
    first = transition_model.knockout("Reg_P2", terminal=["P2", "P3"], **kw)
    assert first.params["model_id"] == transition_model.extra_["model_id"] != "None"
    a = ad.AnnData(obs=adata.obs[[]].copy(), var=adata.var[[]].copy())
    writers.write_knockout(a, first)
    writers.write_knockout(a, transition_model.knockout("Reg_P1", terminal=["P2", "P3"], **kw))
    assert set(a.uns["kdcpt"]["knockout_summary"]["gene"]) == {"Reg_P1", "Reg_P2"}  # the same model: merged
    other = dataclasses.replace(
        first,
        summary=first.summary.assign(gene="Gene_7"),
        table=first.table.assign(gene="Gene_7"),
        params={**first.params, "model_id": "another"},
        fate=None,
        flux=None,
    )
    with pytest.warns(UserWarning, match="come from another model"):
        writers.write_knockout(a, other)
    assert set(a.uns["kdcpt"]["knockout_summary"]["gene"]) == {"Gene_7"}
