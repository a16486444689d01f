"""Transition, entropy, reliability and history plots after a write_h5ad / read_h5ad round trip."""

from __future__ import annotations

import copy
import re

import anndata as ad
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection
from matplotlib.patches import FancyArrowPatch

import scanpy_kdcpt as kdcpt

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def reread(synthetic_model, tmp_path_factory):
    """The synthetic data annotated (calibrated, conformal sets), written and read back."""
    model = synthetic_model
    T, extra = model.temperature_, copy.deepcopy(getattr(model, "extra_", {}))
    try:
        model.calibrate()
        model.annotate(conformal_alpha=0.1)
        path = tmp_path_factory.mktemp("h5ad") / "annotated.h5ad"
        model.adata.write_h5ad(path)
    finally:
        model.temperature_, model.extra_ = T, extra
    return ad.read_h5ad(path)


def test_annotate_keys_survive_h5ad(reread):
    uns = reread.uns["kdcpt"]
    P = uns["transition_matrix"]
    assert isinstance(P, pd.DataFrame) and P.shape == (4, 4)
    np.testing.assert_allclose(P.sum(1), 1.0, atol=1e-6)
    ent = pd.DataFrame(uns["entropy"])
    np.testing.assert_allclose(ent["entropy"], -(P.to_numpy() * np.log(P.to_numpy())).sum(1), rtol=1e-6)
    assert uns["entropy_total"] == pytest.approx((ent["prior"] * ent["entropy"]).sum())
    assert uns["entropy_total_normalized"] == pytest.approx(uns["entropy_total"] / np.log(4))
    # the posterior form has no direction: phenotype mass (share of the cells), no stationary state or flux
    assert uns["transition_method"] == "posterior" and "stationary" not in uns and "flux" not in uns
    np.testing.assert_allclose(uns["phenotype_mass"], ent["prior"], atol=1e-12)
    known = reread.obs["phenotype"].astype(object)
    assigned = known.where(known.notna(), reread.obs["kdcpt_pred"].astype(object))  # label, else prediction
    counts = assigned.astype(str).value_counts(normalize=True).reindex(P.index)
    np.testing.assert_allclose(uns["phenotype_mass"], counts.to_numpy(), atol=1e-12)
    calib = uns["calibration"]
    assert calib["calibrated"] and calib["conformal_alpha"] == 0.1
    assert {"ece_before", "ece_after", "reliability", "reliability_before"} <= set(calib)
    sets = reread.obs["kdcpt_prediction_set"].astype(str)
    sizes = reread.obs["kdcpt_set_size"]
    assert (sets.str.count(r"\|") + 1 == sizes).all()
    pred = reread.obs["kdcpt_pred"].astype(str)
    assert all(p in s.split("|") for p, s in zip(pred, sets, strict=True))


def test_every_plot_draws_from_reread_file(reread, synthetic_model):
    ax = kdcpt.pl.transition_matrix(reread, show=False)
    assert len(ax.texts) == 16  # one annotation per cell
    assert [t.get_text() for t in ax.get_yticklabels()] == ["P0", "P1", "P2", "P3"]

    ax = kdcpt.pl.transition_graph(reread, show=False, threshold=0.0)
    assert not [p for p in ax.patches if isinstance(p, FancyArrowPatch)]  # posterior: no arrows
    (edges,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    P = reread.uns["kdcpt"]["transition_matrix"].to_numpy()
    assert len(edges.get_segments()) == int(((P + P.T) > 0)[np.triu_indices(4, 1)].sum())  # one per pair
    widths = edges.get_linewidths()
    assert max(widths) > min(widths)  # widths follow the similarity
    with pytest.raises(ValueError, match="no direction"):
        kdcpt.pl.transition_graph(reread, show=False, weights="probability")
    ax = kdcpt.pl.transition_graph(
        reread, show=False, threshold=0.0, max_edges=16, directed=True, weights="probability"
    )
    arrows = [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
    assert len(arrows) == int((P > 0).sum() - 4)

    ax = kdcpt.pl.entropy(reread, show=False)
    assert len(ax.patches) == 4

    calib = reread.uns["kdcpt"]["calibration"]
    ax = kdcpt.pl.reliability(reread, show=False)  # the held-out cells' table after calibration
    assert _title_ece(ax) == pytest.approx(calib["ece_after"], abs=5e-4)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"before (ECE {calib['ece_before']:.3f})" in legend  # the grey curve before calibration
    ax = kdcpt.pl.reliability(reread, source="obs", show=False)
    assert _title_ece(ax) == pytest.approx(_hand_ece(reread), abs=5e-4)
    n = int(reread.obs["phenotype"].notna().sum())  # the count once ("3696 3696 labelled cells" before)
    assert f"{n} labelled cells (training included)" in ax.get_legend().get_title().get_text() + ax.get_title()
    assert f"{n} {n}" not in ax.get_legend().get_title().get_text() + ax.get_title()

    axes = kdcpt.pl.training_history(reread, show=False)
    assert len(axes) == 3 and all(len(a.lines) == 2 for a in axes)
    axes = kdcpt.pl.training_history(synthetic_model, metrics=["loss"], show=False)
    assert len(axes[0].lines) == 2

    fig = kdcpt.pl.entropy(reread, normalized=True, return_fig=True)
    assert isinstance(fig, plt.Figure)
    plt.close("all")


def _title_ece(ax) -> float:
    return float(re.search(r"ECE ([0-9.]+)", ax.get_title()).group(1))


def _hand_ece(adata, n_bins: int = 15) -> float:
    """Top-label ECE of the labelled cells from the .obs probabilities, bins (k/15, (k+1)/15]."""
    names = [str(c) for c in adata.uns["kdcpt"]["classes"]]
    proba = adata.obs[[f"kdcpt_proba_{c}" for c in names]].to_numpy(float)
    truth = adata.obs["phenotype"].astype(str).to_numpy()
    conf = proba.max(1)
    correct = np.asarray(names)[proba.argmax(1)] == truth
    b = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    return sum(abs(correct[b == k].mean() - conf[b == k].mean()) * (b == k).mean() for k in np.unique(b))


def test_plots_with_long_phenotype_names_and_given_axes(reread):
    long = ["CD4+/CD45RA+/CD25- Naive T", "CD14+ Monocyte", "CD8+/CD45RA+ Naive Cytotoxic", "Dendritic"]
    a = reread.copy()
    a.uns["kdcpt"]["classes"] = np.asarray(long, dtype=object)
    a.uns["kdcpt"]["entropy"] = pd.DataFrame(a.uns["kdcpt"]["entropy"]).set_axis(long)
    fig, axs = plt.subplots(1, 3, figsize=(15, 4))
    assert kdcpt.pl.transition_matrix(a, ax=axs[0], show=False) is axs[0]
    labels = [t.get_text() for t in axs[0].get_yticklabels()]
    assert all(len(line) <= 16 for lab in labels for line in lab.split("\n"))  # long names are wrapped
    assert kdcpt.pl.transition_graph(a, ax=axs[1], show=False) is axs[1]
    assert kdcpt.pl.entropy(a, ax=axs[2], show=False) is axs[2]
    plt.close("all")


def test_key_genes_of_one_phenotype_given_as_a_string(reread):
    ax = kdcpt.pl.key_genes(reread, phenotypes="P2", n_genes=3, show=False)  # 'P2', not ['P', '2']
    assert ax is not None
    plt.close("all")


def test_training_history_ticks_whole_epochs():
    a = ad.AnnData(np.zeros((2, 1), dtype=np.float32))
    a.uns["kdcpt"] = {
        "history": pd.DataFrame({"epoch": [0, 1], "train_loss": [1.0, 0.6], "validation_loss": [1.1, 0.8]})
    }
    (ax,) = kdcpt.pl.training_history(a, metrics=["loss"], show=False)
    assert len(ax.lines) == 2 and all(float(t).is_integer() for t in ax.get_xticks())  # no 0.2, 0.4, ...
    plt.close("all")


def test_plots_explain_missing_keys():
    a = ad.AnnData(np.zeros((3, 2)))
    with pytest.raises(KeyError, match="model.annotate"):
        kdcpt.pl.transition_matrix(a, show=False)
    with pytest.raises(KeyError, match="model.annotate"):
        kdcpt.pl.training_history(a, show=False)


def test_heatmap_has_no_style_grid_through_its_numbers(reread):
    # scanpy's figure style turns the axes grid on; its lines would cross the cells' numbers
    with plt.rc_context({"axes.grid": True}):
        ax = kdcpt.pl.transition_matrix(reread, show=False)
        assert not any(line.get_visible() for line in ax.get_xgridlines() + ax.get_ygridlines())
    plt.close("all")
