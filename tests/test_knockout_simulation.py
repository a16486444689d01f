"""Knockouts that move cells (issue 18): the GRN shift reaches the directed chain, fates and flux.

Planted answers (``kdcpt.datasets.synthetic``): the lineage runs P0 → P1 → P2 → P3 and ``Reg_Pi``
drives phenotype ``Pi`` and its targets. Knocking out ``Reg_Pi`` must cut the flow into ``Pi``
(the GRN shift points the cells away from it); a gene without regulatory effect must leave the
chain exactly as it was.
"""

from __future__ import annotations

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pytest
import scanpy as sc
import scvi

import scanpy_kdcpt as kdcpt
from scanpy_kdcpt._errors import InvalidInputError, KeyNotFoundError

GENES = ["Reg_P1", "Reg_P2", "Gene_7", "Gene_40"]  # two planted regulators, two background genes


def _train(adata, **kwargs):
    kdcpt.KDCPT.setup_anndata(adata, labels_key="phenotype", **kwargs)
    model = kdcpt.KDCPT(adata, n_tokens=64, n_selected=16, d_model=32, n_hidden=64, n_pcs=20)
    model.train(max_epochs=20, enable_progress_bar=False)
    return model


@pytest.fixture(scope="module")
def chain_model():
    scvi.settings.seed = 0
    adata = kdcpt.datasets.synthetic(n_cells=900, seed=1, transition_labels="sampled")
    model = _train(adata, prior_key="is_tf")
    model.annotate()
    rep = sc.AnnData(model.get_encoder_representation())
    sc.pp.neighbors(rep, use_rep="X", random_state=0)
    sc.tl.umap(rep, random_state=0)
    adata.obsm["X_umap"] = rep.obsm["X_umap"]
    model.compute_transitions(direction="pseudotime", root="P0", inplace=False)
    return model


@pytest.fixture(scope="module")
def both(chain_model):
    """The same knockouts simulated through the GRN and through the classifier alone."""
    kw = {"terminal": ["P3"], "inplace": False, "progress": False, "n_shift_null": 9}
    return (
        chain_model.knockout(GENES, simulate="grn", **kw),
        chain_model.knockout(GENES, simulate="classifier", **kw),
    )


def _flux(result, gene, source, target, col="delta"):
    f = result.flux.set_index(["gene", "source", "target"])
    return float(f.loc[(gene, source, target), col])


def test_auto_simulates_when_there_is_a_chain(chain_model, both):
    grn, clf = both
    assert grn.params["simulate"] == "grn" and clf.params["simulate"] == "classifier"
    auto = chain_model.knockout("Reg_P2", terminal=["P3"], inplace=False, progress=False, n_shift_null=0)
    assert auto.params["simulate"] == "grn"
    assert chain_model.grn_ is not None and chain_model.grn_.n_phenotypes == 4


def test_planted_regulator_cuts_the_flow_into_its_phenotype(both):
    grn, clf = both
    base = _flux(grn, "Reg_P2", "P1", "P2", "flux_base")
    assert base > 5  # the planted transition carries flow before the knockout
    # through the GRN, the knockout of P2's regulator cuts the net flux P1 -> P2 by more than half
    assert _flux(grn, "Reg_P2", "P1", "P2") < -0.5 * base
    # ... far more than the classifier alone does on the unchanged chain
    assert _flux(grn, "Reg_P2", "P1", "P2") < 2 * _flux(clf, "Reg_P2", "P1", "P2")
    # and the regulator of P1 cuts the flow into P1
    assert _flux(grn, "Reg_P1", "P0", "P1") < -0.3 * _flux(grn, "Reg_P1", "P0", "P1", "flux_base")
    # a block: mass of P1 that no longer reaches the terminal within the horizon
    fate = grn.fate.set_index(["gene", "source", "terminal"])["delta"]
    assert fate.loc[("Reg_P2", "P1", "not reached")] > 0.02
    s = grn.summary.set_index("gene")
    assert s.loc["Reg_P2", "chain_tv"] > 0.05 and s.loc["Reg_P2", "n_shifted"] > 0
    assert s.loc["Reg_P2", "score"] < 0  # pushed back against development


def test_planted_block_lowers_the_flux_over_the_horizon_and_is_tested(both):
    grn, clf = both
    base = _flux(grn, "Reg_P2", "P1", "P2", "flux_horizon_base")
    assert base > 5  # cells pass P1 -> P2 within the horizon before the knockout
    assert _flux(grn, "Reg_P2", "P1", "P2", "delta_horizon") < -0.3 * base
    # antisymmetric, like the one-step flux
    assert _flux(grn, "Reg_P2", "P2", "P1", "delta_horizon") == pytest.approx(
        -_flux(grn, "Reg_P2", "P1", "P2", "delta_horizon")
    )
    # tested against the same randomised shifts as the fates: the planted block beyond all 9
    assert _flux(grn, "Reg_P2", "P1", "P2", "pval_horizon") == pytest.approx(0.1)
    f = grn.flux.set_index(["gene", "source", "target"])
    # one q per pair of phenotypes: i -> j and j -> i are one change
    assert f.loc[("Reg_P2", "P1", "P2"), "qval_horizon"] == f.loc[("Reg_P2", "P2", "P1"), "qval_horizon"]
    p, q = grn.flux["pval_horizon"].to_numpy(float), grn.flux["qval_horizon"].to_numpy(float)
    ok = np.isfinite(p)
    assert ok.sum() >= 12 and (q[ok] >= p[ok] - 1e-12).all() and np.array_equal(ok, np.isfinite(q))
    assert grn.flux.loc[grn.flux["gene"] == "Gene_7", "pval_horizon"].isna().all()  # its shift moves nothing
    assert "pval_horizon" not in clf.flux.columns


def test_a_gene_without_regulatory_effect_leaves_the_chain_unchanged(chain_model, both):
    grn, clf = both
    T = chain_model.transitions_.cell_chain
    for gene in ("Gene_7", "Gene_40"):
        T_ko = grn.chains[gene]
        assert (T_ko != T).nnz == 0  # T_ko == T exactly
        assert grn.summary.set_index("gene").loc[gene, "chain_tv"] == 0
        # so its fate and flux deltas are those of the classifier alone
        for frame in ("fate", "flux"):
            a = getattr(grn, frame)
            b = getattr(clf, frame)
            np.testing.assert_allclose(a[a["gene"] == gene]["delta"], b[b["gene"] == gene]["delta"], atol=1e-12)
        a, b = grn.flux, clf.flux
        np.testing.assert_allclose(
            a[a["gene"] == gene]["delta_horizon"], b[b["gene"] == gene]["delta_horizon"], atol=1e-9
        )


def test_no_propagation_means_no_shift_of_the_chain(chain_model):
    # and the user is told that any fate change of such a knockout is the classifier's alone
    # and that n_propagation=0 is why (not a GRN to refit)
    with pytest.warns(
        UserWarning,
        match=r"shift no other gene through the GRN \(\['Reg_P2'\]: n_propagation=0.*classifier.*"
        r"Use n_propagation of 1 or more",
    ):
        res = chain_model.knockout(
            ["Reg_P2"], terminal=["P3"], simulate="grn", n_propagation=0, inplace=False, progress=False, n_shift_null=0
        )
    assert (res.chains["Reg_P2"] != chain_model.transitions_.cell_chain).nnz == 0
    assert res.summary.loc[0, "n_shifted"] == 0


def test_simulation_arguments_are_checked_for_nan_and_fractions():
    from scanpy_kdcpt import simulation
    from scanpy_kdcpt.perturb._simulate import check_simulation_args

    for kwargs, match in (
        ({"sigma": float("nan")}, "sigma must be positive"),  # left every chain unchanged
        ({"n_propagation": 1.5}, "n_propagation must be a whole number"),  # failed inside range()
        ({"n_shift_null": 2.5}, "n_shift_null must be a whole number"),  # was cut to 2
    ):
        args = {"simulate": "grn", "n_propagation": 3, "sigma": 0.25, "n_shift_null": 0, **kwargs}
        with pytest.raises(kdcpt._errors.InvalidInputError, match=match):
            check_simulation_args(**args)
    X = np.random.default_rng(0).random((40, 5))
    with pytest.raises(kdcpt._errors.InvalidInputError, match="alpha must be positive"):  # every coefficient NaN
        simulation.fit_grn(X, np.zeros(40, int), alpha=float("nan"))


def test_simulation_needs_a_chain_and_a_prior():
    scvi.settings.seed = 0
    adata = kdcpt.datasets.synthetic(n_cells=300, seed=2)
    model = _train(adata)  # no prior_key, no compute_transitions
    with pytest.raises(ValueError, match="compute_transitions"):
        model.knockout("Reg_P1", simulate="grn", progress=False, inplace=False)
    with pytest.raises(InvalidInputError, match="prior_key"):
        model.fit_grn()
    # a chain but no prior: the default falls back to the classifier, saying how to get shifts;
    # asking for shifts names the fix (not fit_grn's own message, a call the user never made)
    model.compute_transitions(direction="pseudotime", root="P0", inplace=False)
    kw = {"terminal": ["P3"], "progress": False, "inplace": False}
    with pytest.warns(UserWarning, match=r"no prior regulators.*fit_grn\(regulators=None\)"):
        res = model.knockout("Reg_P1", **kw)
    assert res.params["simulate"] == "classifier"
    with pytest.raises(InvalidInputError, match=r"knockout\(simulate='grn'\).*fit_grn\(regulators=None\)"):
        model.knockout("Reg_P1", simulate="grn", **kw)
    grn = model.fit_grn(regulators=["Reg_P0", "Reg_P1", "Reg_P2", "Reg_P3"])
    assert len(grn.regulators) == 4
    assert model.knockout("Reg_P1", **kw).params["simulate"] == "grn"  # with a fitted GRN the default simulates


def test_shift_and_score_written_and_plotted_from_a_reread_file(chain_model, tmp_path):
    adata = chain_model.adata
    chain_model.knockout(["Reg_P2", "Gene_7"], terminal=["P3"], progress=False, n_shift_null=9)
    assert "kdcpt_ko_score_Reg_P2" in adata.obs and adata.obsm["kdcpt_ko_shift_Reg_P2"].shape == (adata.n_obs, 2)
    np.testing.assert_array_equal(adata.obs["kdcpt_ko_score_Gene_7"], 0.0)  # no shift, no score
    adata.write_h5ad(tmp_path / "ko.h5ad")
    back = ad.read_h5ad(tmp_path / "ko.h5ad")
    ax = kdcpt.pl.knockout_shift(back, "Reg_P2", show=False)
    quiver = [c for c in ax.collections if type(c).__name__ == "Quiver"]
    assert len(quiver) == 1 and np.abs(quiver[0].U).max() > 0
    # arrows are scaled so the 98th percentile is 0.9 grid spacings; none under 25 % of that (a head
    # without a shaft where the shift is small) is drawn, and none stands in a gap between the cells
    drawn = np.hypot(quiver[0].U, quiver[0].V) / quiver[0].scale  # data units on the figure
    xs, ys = np.unique(quiver[0].X), np.unique(quiver[0].Y)
    spacing = min(np.diff(xs).min(), np.diff(ys).min())
    assert drawn.min() > 0.25 * 0.9 * spacing * 0.99
    emb = back.obsm["X_umap"]
    nearest = np.sqrt(((quiver[0].get_offsets()[:, None, :] - emb[None, :, :2]) ** 2).sum(-1)).min(1)
    grid_step = np.mean((emb.max(0) - emb.min(0)) * 1.04 / (18 - 1))  # _grid's spacing at grid=18
    assert nearest.max() <= 0.5 * grid_step * 1.01
    assert np.percentile(drawn, 50) < 0.9 * spacing * 1.01  # and the bulk fits between grid points
    assert "Reg_P2" in ax.get_title() and "p =" in ax.get_title()
    plt.close("all")
    ax = kdcpt.pl.knockout_fate(back, "Reg_P2", alpha=0.5, show=False)  # 9 shifts: q ≥ 0.1
    image = ax.get_images()[0].get_array()
    fate = back.uns["kdcpt"]["knockout_fate"]
    expected = fate[fate["gene"] == "Reg_P2"].pivot_table(
        index="source", columns="terminal", values="delta", observed=True, sort=False
    )
    np.testing.assert_allclose(np.asarray(image), expected.to_numpy(), atol=1e-12)
    horizon = int(back.uns["kdcpt"]["knockout_params"]["fate_horizon"])
    ticks = [t.get_text().replace("\n", " ") for t in ax.get_xticklabels()]
    assert ticks == ["P3", f"not reached in {horizon} steps"]
    # the fate changes beyond the randomised shifts are starred, exactly those with q < alpha
    rows = fate[fate["gene"] == "Reg_P2"]
    starred = [t.get_text() for t in ax.texts if t.get_text().endswith("*")]
    significant = rows[(rows["qval"] < 0.5) & (rows["delta"].abs() >= 0.005)]
    assert len(starred) == len(significant) > 0
    assert "randomised shifts" in ax.get_xlabel()
    plt.close("all")
    one = kdcpt.pl.knockout_fate(back, "Reg_P2", sources=["all"], show=False)
    assert one.get_images()[0].get_array().shape[0] == 1
    # a later knockout of another gene without a test leaves Reg_P2's figure saying what Reg_P2 was tested against
    assert "against 9 randomised shifts" in one.get_title()
    back.uns["kdcpt"]["knockout_params"]["n_shift_null"] = 0  # what the later call writes
    again = kdcpt.pl.knockout_fate(back, "Reg_P2", sources=["all"], show=False)
    assert "against 9 randomised shifts" in again.get_title() and "beyond 9 randomised shifts" in again.get_xlabel()
    with pytest.raises(ValueError, match=r"'MPP'.*sources of this knockout are.*'all'"):
        kdcpt.pl.knockout_fate(back, "Reg_P2", sources=["MPP"], show=False)
    plt.close("all")
    with pytest.raises(KeyError, match="simulate='grn'"):
        kdcpt.pl.knockout_shift(back, "Reg_P3")
    del back.obsm["kdcpt_ko_shift_Reg_P2"]  # simulated, but not projected on an embedding
    with pytest.raises(KeyError, match="was simulated.*not projected.*sc.tl.umap"):
        kdcpt.pl.knockout_shift(back, "Reg_P2")


def test_knockout_plots_say_what_was_not_tested_and_where_shifts_belong(chain_model):
    a = chain_model.adata.copy()
    res = chain_model.knockout(["Gene_7", "Reg_P2"], terminal=["P3"], inplace=False, progress=False)
    kdcpt.writers.write_knockout(a, res)
    # untested changes carried no word of it; a background gene's hundredths filled the colour scale
    ax = kdcpt.pl.knockout_fate(a, "Gene_7", show=False)
    assert "not tested against randomised shifts" in ax.get_xlabel()
    assert ax.get_images()[0].get_clim()[1] >= 0.1
    assert "not tested against randomised shifts" in kdcpt.pl.knockout_flux(a, "Reg_P2", show=False).get_xlabel()
    plt.close("all")
    # the shifts were projected on the UMAP: drawn on PCA coordinates they looked plausible and were wrong
    a.obsm["X_pca"] = np.asarray(chain_model.get_encoder_representation())[:, :2]
    with pytest.raises(kdcpt._errors.InvalidInputError, match="projected on 'X_umap', not on 'X_pca'"):
        kdcpt.pl.knockout_shift(a, "Reg_P2", basis="pca", show=False)
    ax = kdcpt.pl.knockout_shift(a, "Reg_P2", show=False)
    assert "arrows: how the knockout changes the cells' expected step" in ax.get_xlabel()  # what arrows mean
    plt.close("all")


def test_knockout_flux_plot_draws_the_largest_changes_over_the_horizon(chain_model, tmp_path):
    adata = chain_model.adata.copy()
    res = chain_model.knockout(["Reg_P2", "Gene_7"], terminal=["P3"], progress=False, n_shift_null=9, inplace=False)
    kdcpt.writers.write_knockout(adata, res)
    adata.write_h5ad(tmp_path / "ko.h5ad")
    back = ad.read_h5ad(tmp_path / "ko.h5ad")
    ax = kdcpt.pl.knockout_flux(back, "Reg_P2", alpha=0.5, show=False)  # 9 shifts: q ≥ 0.1
    labels = [t.get_text().replace("\n", " ") for t in ax.get_yticklabels()]
    rows = res.flux[res.flux["gene"] == "Reg_P2"].set_index(["source", "target"])
    once = rows[rows["flux_horizon_base"] > 0]
    first = once["delta_horizon"].abs().idxmax()
    assert labels[0] == " → ".join(first)  # the largest change on top
    # the planted block of P2 lowers the flux into P2 and on out of it
    assert {"P1 → P2", "P2 → P3"} <= set(labels)
    assert rows.loc[("P1", "P2"), "delta_horizon"] < 0 and rows.loc[("P2", "P3"), "delta_horizon"] < 0
    top = rows.loc[first]
    bars = sorted(ax.patches, key=lambda r: (r.get_y(), r.get_x()))
    widths = {round(r.get_y() + r.get_height() / 2, 1): r.get_width() for r in bars}
    # base (grey) and knockout bars of the first transition are its fluxes over the horizon
    assert widths[-0.2] == pytest.approx(top["flux_horizon_base"]) and widths[0.2] == pytest.approx(
        top["flux_horizon_ko"]
    )
    # each pair of phenotypes once, in the direction of its base net flux
    pairs = [tuple(lab.split(" → ")) for lab in labels]
    assert len({frozenset(p) for p in pairs}) == len(pairs)
    assert all(rows.loc[p, "flux_horizon_base"] >= 0 for p in pairs)
    # its change is written in cells and starred when beyond the randomised shifts at alpha
    texts = [t.get_text() for t in ax.texts]
    assert texts[0].startswith(f"{top['delta_horizon']:+,.0f}".replace("-", "−"))
    assert texts[0].endswith("*") == bool(top["qval_horizon"] < 0.5)
    assert "randomised shifts" in ax.get_xlabel() and "Reg_P2" in ax.get_title()
    plt.close("all")
    table = back.uns["kdcpt"]["knockout_flux"]
    still = table["gene"] == "Gene_7"  # its chain does not move: only its memberships change the flux
    assert table.loc[still, "delta_horizon"].abs().max() < 0.1 * table.loc[~still, "delta_horizon"].abs().max()
    table.loc[still, "delta_horizon"] = 0.0
    with pytest.raises(ValueError, match="changes no net flux"):
        kdcpt.pl.knockout_flux(back, "Gene_7", show=False)
    with pytest.raises(KeyError, match="No flux changes for 'Reg_P9'"):
        kdcpt.pl.knockout_flux(back, "Reg_P9", show=False)
    # a gene's rows written before the flux over the horizon, beside newer rows (NaN there) or alone
    table.loc[table["gene"] == "Reg_P2", ["flux_horizon_base", "flux_horizon_ko", "delta_horizon"]] = np.nan
    with pytest.raises(KeyError, match=r"for 'Reg_P2'.*run model.knockout\('Reg_P2'"):
        kdcpt.pl.knockout_flux(back, "Reg_P2", show=False)
    back.uns["kdcpt"]["knockout_flux"] = table.drop(columns=["flux_horizon_base", "flux_horizon_ko", "delta_horizon"])
    with pytest.raises(KeyError, match="run model.knockout"):
        kdcpt.pl.knockout_flux(back, "Reg_P2", show=False)
    plt.close("all")


def test_shift_kept_on_request_and_its_phenotype_means(chain_model, both):
    from scanpy_kdcpt import simulation
    from scanpy_kdcpt.perturb._simulate import ShiftSimulator

    grn, _ = both
    assert grn.shift == {}  # the cells × genes shifts are not kept by default
    genes, classes = list(chain_model.var_names_), list(chain_model.classes_)
    kept = chain_model.knockout(
        ["Reg_P2", "Gene_7"], terminal=["P3"], inplace=False, progress=False, n_shift_null=0, keep_shift=True
    )
    sim = ShiftSimulator.build(chain_model, chain_model.transitions_.cell_chain, n_propagation=3, sigma=0.25)
    for gene in ("Reg_P2", "Gene_7"):
        S = kept.shift[gene]
        dense = simulation.simulate_shift(sim.X, sim.codes, sim.grn, [genes.index(gene)], n_propagation=3)
        np.testing.assert_allclose(S, dense, atol=1e-6)
        mean = grn.shift_mean[gene]
        assert list(mean.index) == classes and list(mean.columns) == genes
        np.testing.assert_allclose(mean.loc["P1"], dense[sim.codes == classes.index("P1")].mean(0), atol=1e-5)
    # a gene without targets shifts only itself; the planted regulator moves others (lowers P2's targets)
    others = grn.shift_mean["Gene_7"].drop(columns="Gene_7")
    assert (others == 0).all().all()
    assert (grn.shift_mean["Reg_P2"].drop(columns="Reg_P2").abs().to_numpy() > 1e-3).any()


def test_terminal_states_base_holds_the_absorbing_cells(chain_model):
    kw = {"terminal": ["P3"], "inplace": False, "progress": False, "n_shift_null": 0}
    fixed = chain_model.knockout(GENES, simulate="classifier", terminal_states="base", **kw)
    assert fixed.params["terminal_states"] == "base"
    # the chain does not move and the same cells absorb: no fate changes at all
    np.testing.assert_array_equal(fixed.fate["delta"].to_numpy(), 0.0)
    # through the GRN the chain itself moves, so the regulator's knockout still blocks P1
    moved = chain_model.knockout("Reg_P2", simulate="grn", terminal_states="base", **kw)
    fate = moved.fate.set_index(["gene", "source", "terminal"])["delta"]
    assert fate.loc[("Reg_P2", "P1", "not reached")] > 0.02
    with pytest.raises(ValueError, match="terminal_states"):
        chain_model.knockout("Reg_P2", terminal_states="fixed", **kw)


def test_fate_changes_tested_against_randomised_shifts(both):
    grn, clf = both
    fate = grn.fate.set_index(["gene", "source", "terminal"])
    assert {"pval", "qval"} <= set(grn.fate.columns) and "pval" not in clf.fate.columns
    # the planted block of P1 beyond every one of the 9 randomised shifts: the smallest p
    assert fate.loc[("Reg_P2", "P1", "not reached"), "pval"] == pytest.approx(0.1)
    p = grn.fate["pval"].to_numpy(float)
    ok = np.isfinite(p)
    assert ((p[ok] >= 0.1 - 1e-12) & (p[ok] <= 1)).all()
    assert (grn.fate["qval"].to_numpy(float)[ok] >= p[ok] - 1e-12).all()
    # a fate no shift can change is not tested: the single terminal's (always 1), and every fate
    # of a gene whose shift does not move the chain
    assert np.isnan(fate.loc[("Reg_P2", "P1", "P3"), "pval"])
    assert grn.fate.loc[grn.fate["gene"] == "Gene_7", "pval"].isna().all()


def test_fate_test_does_not_repeat_the_notes_on_memberships(chain_model, monkeypatch):
    """A note on the knockout's memberships (a terminal without core cells) is given once, by its
    own fates, not again for every randomised shift of the fate test."""
    import warnings

    from scanpy_kdcpt.perturb import _fate

    fates = _fate.FateDeltas.fates

    def noisy(self, T, M):
        warnings.warn("a note on the memberships", UserWarning, stacklevel=2)
        return fates(self, T, M)

    monkeypatch.setattr(_fate.FateDeltas, "fates", noisy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chain_model.knockout("Reg_P2", terminal=["P3"], inplace=False, progress=False, n_shift_null=5)
    assert sum("a note on the memberships" in str(w.message) for w in caught) == 1


def test_the_horizon_flux_does_not_repeat_the_fates_notes_on_terminal_states(chain_model, monkeypatch):
    """The flux over the horizon finds the terminal states as the fates do; a note on them (a
    terminal without core cells) is the fates' to give, not once more per flux."""
    import warnings

    from scanpy_kdcpt import simulation

    flux = simulation.horizon_flux

    def noisy(*args, **kwargs):
        warnings.warn("a note on the terminal states", UserWarning, stacklevel=2)
        return flux(*args, **kwargs)

    monkeypatch.setattr(simulation, "horizon_flux", noisy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = chain_model.knockout("Reg_P2", terminal=["P3"], inplace=False, progress=False, n_shift_null=0)
    assert "delta_horizon" in res.flux.columns
    assert not any("a note on the terminal states" in str(w.message) for w in caught)


def test_terminals_the_user_named_are_kept_by_annotate_and_knockouts(chain_model):
    state = chain_model.transitions_
    try:
        chain_model.get_fate_probabilities(terminal=["P2"])  # a get_* method records nothing
        annotated = chain_model.annotate(terminal=["P2", "P3"], copy=True)
        assert list(annotated.uns["kdcpt"]["fate_terminal"]) == ["P2", "P3"]
        annotated = chain_model.annotate(copy=True)  # no terminal=: the named ones, not the flux's sinks
        assert list(annotated.uns["kdcpt"]["fate_terminal"]) == ["P2", "P3"]
        ko = chain_model.knockout("Reg_P2", simulate="classifier", inplace=False, progress=False)
        assert set(ko.fate["terminal"].astype(str)) - {"not reached"} == {"P2", "P3"}
        annotated = chain_model.annotate(terminal=["P3"], copy=True)
        assert list(annotated.uns["kdcpt"]["fate_terminal"]) == ["P3"]
        assert state.terminal == ["P3"] and state.terminal_named
    finally:
        state.terminal, state.terminal_named = None, False


def test_terminal_without_a_chain_is_said_to_be_unused():
    model = _train(kdcpt.datasets.synthetic(n_cells=200, seed=3))
    with pytest.warns(UserWarning, match=r"terminal=\['P3'\] is not used.*compute_transitions"):
        result = model.knockout("Reg_P1", simulate="classifier", terminal=["P3"], inplace=False, progress=False)
    assert result.fate is None or not len(result.fate)


def test_a_p_value_at_its_floor_is_called_the_least_possible():
    import pandas as pd

    from scanpy_kdcpt.pl._shift import _pq

    row = pd.Series({"score_pval": 1 / 20, "score_qval": 0.1})
    assert "p = 0.05, the least possible" in _pq(row, 19) and "19 randomised shifts" in _pq(row, 19)
    assert "least possible" not in _pq(row, 99)  # 0.05 with 99 shifts is an ordinary p
    assert _pq(pd.Series({"score_pval": np.nan, "score_qval": np.nan}), 19) == ""


def test_regulator_null_knocks_out_matched_regulators_the_same_way(chain_model, tmp_path):
    kw = {"terminal": ["P3"], "progress": False}
    written = chain_model.knockout(["Reg_P2", "Gene_7"], n_regulator_null=3, copy=True, **kw)
    params = written.uns["kdcpt"]["knockout_params"]
    fate = written.uns["kdcpt"]["knockout_fate"]
    genes = np.asarray(chain_model.var_names_)
    regulators = set(genes[chain_model.grn_.regulators])
    for gene in ("Reg_P2", "Gene_7"):  # other regulators of the GRN, never a gene of the call
        drawn = list(params["regulator_null"][gene])
        assert len(drawn) == 3 and set(drawn) <= regulators - {"Reg_P2", "Gene_7"}
    # each fate row's p is its |Δ| against the same draws knocked out on their own
    drawn = list(params["regulator_null"]["Reg_P2"])
    null = chain_model.knockout(drawn, inplace=False, **kw).fate
    null_delta = null.pivot_table(index=["source", "terminal"], columns="gene", values="delta", observed=True)
    rows = fate[fate["gene"] == "Reg_P2"].set_index(["source", "terminal"])
    tested = 0
    for key, row in rows.iterrows():
        others = null_delta.loc[key, drawn].abs().to_numpy()
        if np.isnan(row["pval_regulators"]):  # nothing changes this fate (P3 is the only terminal)
            assert abs(row["delta"]) < 1e-9 and (others < 1e-9).all()
            continue
        tested += 1
        assert row["pval_regulators"] == pytest.approx((1 + (others >= abs(row["delta"]) - 1e-12).sum()) / 4)
    assert tested == 5 and rows["qval_regulators"].notna().sum() == tested
    written.write_h5ad(tmp_path / "ko.h5ad")  # the drawn genes survive the file
    back = ad.read_h5ad(tmp_path / "ko.h5ad")
    assert list(back.uns["kdcpt"]["knockout_params"]["regulator_null"]["Reg_P2"]) == drawn
    # the fate heatmap marks with † exactly the written deltas with qval_regulators < alpha
    shown = rows[rows["delta"].abs() >= 0.005]
    alpha = float(shown["qval_regulators"].min()) + 1e-9
    ax = kdcpt.pl.knockout_fate(back, "Reg_P2", alpha=alpha, show=False)
    marked = [t.get_text() for t in ax.texts if "†" in t.get_text()]
    assert len(marked) == int((shown["qval_regulators"] < alpha).sum()) >= 1
    assert "beyond 3 expression-matched regulators knocked out alike" in ax.get_xlabel()
    ax.figure.savefig(tmp_path / "fate.png", dpi=100, bbox_inches="tight")
    plt.close("all")
    ax = kdcpt.pl.knockout_fate(back, "Reg_P2", alpha=0.05, show=False)  # 3 draws: p ≥ 0.25, nothing marked
    assert not [t for t in ax.texts if "†" in t.get_text()]
    assert "(none can be: the least p with 3 is 0.25)" in ax.get_xlabel()
    plt.close("all")
    # told when it cannot be used, and when there are too few regulators to draw from
    with pytest.warns(UserWarning, match="n_regulator_null=2 is not used.*simulate='grn'"):
        chain_model.knockout("Reg_P2", simulate="classifier", n_regulator_null=2, inplace=False, **kw)
    with pytest.raises(ValueError, match="n_regulator_null=50 needs 50 GRN regulators besides"):
        chain_model.knockout("Reg_P2", n_regulator_null=50, inplace=False, **kw)
    with pytest.raises(ValueError, match="n_regulator_null must be 0 or a positive integer"):
        chain_model.knockout("Reg_P2", n_regulator_null=-1, inplace=False, **kw)


def test_both_nulls_match_on_one_pass_over_the_expression(chain_model, monkeypatch):
    from scanpy_kdcpt.perturb import _nulls

    calls = []
    stats = _nulls.gene_stats
    monkeypatch.setattr(_nulls, "gene_stats", lambda X, *a, **k: calls.append(X.shape) or stats(X, *a, **k))
    kw = {"terminal": ["P3"], "progress": False, "inplace": False}
    both = chain_model.knockout("Reg_P2", n_null=2, n_regulator_null=2, **kw)
    assert len(calls) == 1
    # the same draws as when each null is asked alone (each matched on its own pass)
    alone = chain_model.knockout("Reg_P2", n_regulator_null=2, **kw)
    assert list(both.params["regulator_null"]["Reg_P2"]) == list(alone.params["regulator_null"]["Reg_P2"])


def test_fit_grn_partials_out_the_chains_stage(chain_model):
    from scanpy_kdcpt import simulation

    before = chain_model.grn_
    adata = chain_model.adata
    try:
        by_chain = chain_model.fit_grn(stage="chain", terminal=["P3"])
        state = chain_model.transitions_
        absorbing = np.asarray(state.memberships)[:, list(chain_model.classes_).index("P3")] >= 0.5
        stage = simulation.chain_stage(state.cell_chain, absorbing)
        assert stage[absorbing].max() == 0 and stage[~absorbing].min() > 0
        by_array = chain_model.fit_grn(stage=stage)
        adata.obs["test_stage"] = stage
        by_obs = chain_model.fit_grn(stage="test_stage")
        plain = chain_model.fit_grn(stage=None)
        for a, b, c in zip(by_chain.coef, by_array.coef, by_obs.coef, strict=True):
            np.testing.assert_allclose(a.toarray(), b.toarray())
            np.testing.assert_allclose(a.toarray(), c.toarray())
        assert any((a != b).nnz for a, b in zip(by_chain.coef, plain.coef, strict=True))
        with pytest.raises(KeyNotFoundError, match="'nope' is neither 'chain' nor a column"):
            chain_model.fit_grn(stage="nope")
        with pytest.raises(InvalidInputError, match="stage must be numeric"):
            chain_model.fit_grn(stage="phenotype")
        with pytest.raises(InvalidInputError, match="one value per registered cell"):
            chain_model.fit_grn(stage=stage[:10])
        with pytest.raises(InvalidInputError, match="3 NaN or infinite"):
            chain_model.fit_grn(stage=np.where(np.arange(len(stage)) < 3, np.nan, stage))
    finally:
        chain_model.grn_ = before
        if "test_stage" in adata.obs:
            del adata.obs["test_stage"]


def test_knockout_shift_says_which_perturbation_it_draws(chain_model):
    import matplotlib.pyplot as plt

    adata = chain_model.adata
    kw = {"terminal": ["P3"], "progress": False}
    chain_model.knockout("Reg_P1", **kw)
    assert "Reg_P1 knockout: simulated shift" in kdcpt.pl.knockout_shift(adata, "Reg_P1", show=False).get_title()
    chain_model.knockout("Reg_P1", mode="overexpress", **kw)  # the same .obs / .obsm keys, now its overexpression
    assert adata.uns["kdcpt"]["knockout_shift_mode"]["Reg_P1"] == "overexpress"
    title = kdcpt.pl.knockout_shift(adata, "Reg_P1", show=False).get_title()
    assert "Reg_P1 overexpression: simulated shift" in title
    plt.close("all")


def test_a_query_knockout_does_not_use_the_registered_cells_chain(chain_model):
    query = chain_model.adata[:150].copy()
    query.obs_names = [f"q{i}" for i in range(query.n_obs)]  # other cells
    with pytest.warns(UserWarning, match=r"terminal=\['P3'\] is not used"):
        res = chain_model.knockout("Reg_P2", adata=query, terminal=["P3"], inplace=False, progress=False)
    assert res.fate is None and res.params["simulate"] == "classifier"
    assert res.summary.loc[0, "effect"] > 0


def test_the_grns_stage_absorbs_where_the_fates_do(chain_model):
    """A terminal phenotype without a confident cell: the stage falls back to the cells that
    predict it, as the fates' absorbing states do (it used to be an error)."""
    from scanpy_kdcpt import markov, simulation

    before, state = chain_model.grn_, chain_model.transitions_
    M0 = state.memberships
    try:
        p3 = list(chain_model.classes_).index("P3")
        M = np.array(M0, dtype=float)
        excess = np.clip(M[:, p3] - 0.45, 0, None)  # no cell is ≥ 0.5 P3 any more
        M += excess[:, None] / (M.shape[1] - 1)
        M[:, p3] = np.minimum(M0[:, p3], 0.45)
        assert (M[:, p3] < 0.5).all() and (M.argmax(1) == p3).any()
        state.memberships = M
        # the warning names the phenotype, not its code
        with pytest.warns(UserWarning, match=r"Terminal phenotype\(s\) \['P3'\] have no cell with membership"):
            by_chain = chain_model.fit_grn(stage="chain", terminal=["P3"])
        with pytest.warns(UserWarning, match="no cell with membership"):
            absorbing, _ = markov.terminal_states(M, np.array([p3]))
        np.testing.assert_array_equal(absorbing, M.argmax(1) == p3)
        by_array = chain_model.fit_grn(stage=simulation.chain_stage(state.cell_chain, absorbing))
        for a, b in zip(by_chain.coef, by_array.coef, strict=True):
            np.testing.assert_allclose(a.toarray(), b.toarray())
    finally:
        state.memberships, chain_model.grn_ = M0, before


def test_fit_grn_stage_chain_needs_a_chain():
    model = _train(kdcpt.datasets.synthetic(n_cells=200, seed=3), prior_key="is_tf")
    with pytest.raises(InvalidInputError, match="stage='chain'.*compute_transitions"):
        model.fit_grn(stage="chain")
    # the default adjusts only where there is a chain: without one it is the plain fit
    auto = model.fit_grn()
    assert model._grn_stage_note == "none (no directed chain)"
    plain = model.fit_grn(stage=None)
    assert all((a != b).nnz == 0 for a, b in zip(auto.coef, plain.coef, strict=True))


def test_the_default_grn_is_stage_adjusted_to_the_knockouts_terminals(chain_model):
    before = chain_model.grn_
    try:
        chain_model.grn_ = None  # fitted on first use, with the knockout's terminals
        ko = chain_model.knockout("Reg_P2", terminal=["P2", "P3"], inplace=False, progress=False)
        assert ko.params["grn_stage"] == "chain: expected steps to ['P2', 'P3']"  # recorded with the result
        first_use = chain_model.grn_
        named = chain_model.fit_grn(stage="chain", terminal=["P2", "P3"])
        other = chain_model.fit_grn(stage="chain", terminal=["P3"])
        plain = chain_model.fit_grn(stage=None)
        for a, b in zip(first_use.coef, named.coef, strict=True):
            np.testing.assert_allclose(a.toarray(), b.toarray())
        assert any((a != b).nnz for a, b in zip(first_use.coef, other.coef, strict=True))
        assert any((a != b).nnz for a, b in zip(first_use.coef, plain.coef, strict=True))
    finally:
        chain_model.grn_ = before


def test_a_grn_fitted_on_an_earlier_chain_is_said_to_be_stale():
    import warnings

    model = _train(kdcpt.datasets.synthetic(n_cells=300, seed=4, transition_labels="sampled"), prior_key="is_tf")
    model.compute_transitions(direction="pseudotime", root="P0", inplace=False)
    model.fit_grn()
    kw = {"terminal": ["P3"], "inplace": False, "progress": False}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # fitted on this chain: nothing to say
        model.knockout("Reg_P2", **kw)
    model.compute_transitions(direction="pseudotime", root="P0", inplace=False)
    with pytest.warns(UserWarning, match="model.grn_ was fitted before the current chain"):
        model.knockout("Reg_P2", **kw)
    model.fit_grn()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model.knockout("Reg_P2", **kw)
