"""The posterior form carries no direction: no net flux, no stationary state, an undirected graph;
directed chains keep arrows, flux and stationary (issue 19). Figures readable on PBMC names.
"""

from __future__ import annotations

import logging
import warnings

import anndata as ad
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection
from matplotlib.patches import FancyArrowPatch

import scanpy_kdcpt as kdcpt
from scanpy_kdcpt import cli, markov, report, results, writers

matplotlib.use("Agg")

PBMC = [
    "CD4+/CD25 T Reg",
    "CD4+/CD45RA+/CD25- Naive T",
    "CD4+/CD45RO+ Memory",
    "CD8+ Cytotoxic T",
    "CD8+/CD45RA+ Naive Cytotoxic",
    "CD14+ Monocyte",
    "CD19+ B",
    "CD34+",
    "CD56+ NK",
    "Dendritic",
]
# a hand posterior-like matrix with hard rows and soft columns: n_i P_ij ≠ n_j P_ji by noise
P3 = np.array([[0.8, 0.15, 0.05], [0.3, 0.6, 0.1], [0.02, 0.08, 0.9]])
N3 = np.array([50.0, 10.0, 40.0])


def _annotated(P: np.ndarray, names: list[str], sizes: np.ndarray, *, method: str, direction=None, umap=None):
    """An AnnData with the transition keys a model writes (cells of each phenotype on ``umap``)."""
    codes = np.repeat(np.arange(len(names)), sizes.astype(int))
    a = ad.AnnData(np.zeros((len(codes), 1), dtype=np.float32))
    a.obs["kdcpt_pred"] = pd.Categorical.from_codes(codes, categories=names)
    a.uns["kdcpt"] = {"classes": np.asarray(names, dtype=object)}
    if umap is not None:
        rng = np.random.default_rng(0)
        a.obsm["X_umap"] = np.asarray(umap, dtype=float)[codes] + 0.05 * rng.normal(size=(len(codes), 2))
    r = results.Transitions.from_matrix(P, names, sizes, method=method, direction=direction)
    writers.write_transitions(a, r)
    return a, r


def _arrowheads(ax) -> list:
    """Arrows drawn with a head (Matplotlib's FancyArrowPatch with a ``-|>``-like style)."""
    heads = []
    for p in ax.patches:
        if isinstance(p, FancyArrowPatch):
            style = type(p.get_arrowstyle()).__name__
            if style != "Curve":  # "-" is the only style without a head
                heads.append(p)
    return heads


def test_posterior_transitions_carry_no_flux_and_no_stationary():
    r = results.Transitions.from_matrix(P3, ["a", "b", "c"], N3, method="posterior")
    assert not r.directed
    assert r.flux is None and r.stationary is None
    np.testing.assert_allclose(r.mass.to_numpy(), N3 / N3.sum())  # share of cells, not an eigenvector
    d = r.to_dict()
    assert "flux" not in d and "stationary" not in d
    np.testing.assert_allclose(d["phenotype_mass"], [0.5, 0.1, 0.4])
    S = r.similarity().to_numpy()
    np.testing.assert_allclose(S, S.T)
    assert S[0, 1] == pytest.approx((50 * 0.15 + 10 * 0.3) / 60)


def test_directed_chains_keep_flux_and_stationary_undirected_chains_do_not():
    r = results.Transitions.from_matrix(P3, ["a", "b", "c"], N3, method="directed", direction={"kind": "pseudotime"})
    assert r.directed
    np.testing.assert_allclose(r.stationary @ P3, r.stationary, atol=1e-10)
    np.testing.assert_allclose(r.flux.to_numpy(), markov.net_flux(P3, N3))
    assert {"flux", "stationary", "phenotype_mass"} <= set(r.to_dict())
    for method, direction in (("directed", {"kind": "none"}), ("latent", {"kind": "none"})):
        u = results.Transitions.from_matrix(P3, ["a", "b", "c"], N3, method=method, direction=direction)
        assert not u.directed and u.flux is None and u.stationary is None


def test_posterior_uns_has_phenotype_mass_and_no_stationary_or_flux(tmp_path):
    a, _ = _annotated(P3, ["a", "b", "c"], N3, method="directed", direction={"kind": "pseudotime"})
    assert {"stationary", "flux", "phenotype_mass"} <= set(a.uns["kdcpt"])
    # a posterior result written later removes the directed chain's flux and stationary
    r = results.Transitions.from_matrix(P3, ["a", "b", "c"], N3, method="posterior")
    writers.write_transitions(a, r)
    uns = a.uns["kdcpt"]
    assert "stationary" not in uns and "flux" not in uns
    a.write_h5ad(tmp_path / "p.h5ad")
    back = ad.read_h5ad(tmp_path / "p.h5ad").uns["kdcpt"]
    np.testing.assert_allclose(back["phenotype_mass"], [0.5, 0.1, 0.4])
    assert "stationary" not in back and back["transition_method"] == "posterior"


def test_posterior_graph_is_undirected_with_symmetrised_edges():
    a, r = _annotated(P3, ["a", "b", "c"], N3, method="posterior")
    ax = kdcpt.pl.transition_graph(a, basis=None, threshold=0.0, show=False)
    assert _arrowheads(ax) == []
    lines = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(lines) == 1 and len(lines[0].get_segments()) == 3  # one edge per pair
    widths = lines[0].get_linewidths()
    S = r.similarity().to_numpy()
    strongest = max(((0, 1), (0, 2), (1, 2)), key=lambda e: S[e])
    assert max(widths) == pytest.approx(6.0) and S[strongest] == S[np.triu_indices(3, 1)].max()
    title = ax.get_title().lower()
    assert "flux" not in title and "similarity" in title and "n_i p_ij + n_j p_ji" in title
    with pytest.raises(ValueError, match="no direction"):
        kdcpt.pl.transition_graph(a, weights="flux", show=False)
    with pytest.raises(ValueError, match="directed chain"):
        kdcpt.pl.transition_graph(a, node_size="stationary", show=False)
    plt.close("all")


def test_directed_graph_keeps_arrows():
    a, r = _annotated(P3, ["a", "b", "c"], N3, method="directed", direction={"kind": "pseudotime"})
    ax = kdcpt.pl.transition_graph(a, basis=None, threshold=0.0, show=False)
    n_positive = int((r.flux.to_numpy() > 0).sum())
    assert len(_arrowheads(ax)) == n_positive and n_positive > 0
    assert "net flux" in ax.get_title().lower() and "cells per step" in ax.get_title()  # the flux's unit
    assert "node size: stationary distribution; arrow colour: its source" in ax.get_title()  # what size, colour mean
    plt.close("all")


def _overlaps(fig, texts) -> list[tuple[str, str]]:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_text()]
    return [
        (ta, tb)
        for k, (ta, a) in enumerate(boxes)
        for tb, b in boxes[k + 1 :]
        if a.x0 < b.x1 - 0.5 and b.x0 < a.x1 - 0.5 and a.y0 < b.y1 - 0.5 and b.y0 < a.y1 - 0.5
    ]


@pytest.mark.parametrize("basis", ["umap", None])
def test_graph_labels_of_close_pbmc_phenotypes_do_not_overlap(basis):
    # the T cells sit close together on the embedding, as on PBMC's UMAP
    umap = [[0, 0], [0.3, 0.1], [0.1, -0.2], [0.5, 0.4], [0.6, -0.1], [0.4, 6], [-3, 0.3], [4, -1], [1, 1.2], [5, 2]]
    rng = np.random.default_rng(1)
    P = rng.dirichlet(np.ones(10) * 0.2, 10) * 0.3 + 0.7 * np.eye(10)
    a, _ = _annotated(P, PBMC, np.full(10, 20.0), method="posterior", umap=umap)
    fig = kdcpt.pl.transition_graph(a, basis=basis, return_fig=True, show=False)
    ax = fig.axes[0]
    labels = [t for t in ax.texts if any(line in t.get_text() for line in ("CD", "Dendritic"))]
    assert len(labels) == 10
    assert _overlaps(fig, labels) == []
    if basis == "umap":  # the crowded T cells in columns, each joined to its node; the others beside theirs
        assert 0 < len(ax.lines) < 10
    plt.close("all")


def test_labels_beside_the_nodes_keep_clear_of_the_arrows():
    # a label just right of its node was the only place tried: on the pancreas UMAP "Delta" ran
    # over the thick Pre-endocrine → Beta arrow (and labels on the right of a node with an arrow
    # leaving rightwards covered its shaft)
    names = ["Ductal", "EP", "Alpha", "Beta"]
    umap = [[0, 0], [3, 0], [6, 0], [3, -3]]
    P = np.array([[0.6, 0.4, 0, 0], [0, 0.5, 0.25, 0.25], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    a, _ = _annotated(P, names, np.full(4, 40.0), method="directed", direction={"kind": "pseudotime"}, umap=umap)
    fig = kdcpt.pl.transition_graph(a, return_fig=True, show=False)
    ax = fig.axes[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t for t in ax.texts if t.get_text() in names]
    assert len(labels) == 4 and not [line for line in ax.lines]  # beside the nodes, no leader lines
    arrows = [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
    assert len(arrows) >= 3
    points = []
    for p in arrows:  # each arrow's outline, densely sampled, in display pixels
        for poly in p.get_path().to_polygons(closed_only=False):
            poly = ax.transData.transform(poly)
            for u, v in zip(poly[:-1], poly[1:], strict=True):
                points.append(u + np.linspace(0, 1, 50)[:, None] * (v - u))
    points = np.concatenate(points)
    for t in labels:
        b = t.get_window_extent(renderer)
        inside = (
            (points[:, 0] > b.x0 + 1)
            & (points[:, 0] < b.x1 - 1)
            & (points[:, 1] > b.y0 + 1)
            & (points[:, 1] < b.y1 - 1)
        )
        assert not inside.any(), t.get_text()
    assert fig.get_size_inches()[0] < 8.4  # the room kept for label columns was given back
    assert _overlaps(fig, labels) == []
    plt.close("all")


LONG = [f"CD{i}+ long-named progenitor subtype {i} (cluster {i})" for i in range(20)]


def _inside(fig, texts) -> bool:
    fig.canvas.draw()
    box, renderer = fig.bbox, fig.canvas.get_renderer()
    return all(
        box.x0 - 1 <= b.x0 and b.x1 <= box.x1 + 1 and box.y0 - 1 <= b.y0 and b.y1 <= box.y1 + 1
        for b in (t.get_window_extent(renderer) for t in texts)
    )


def test_a_graph_of_twenty_long_named_phenotypes_stays_readable():
    rng = np.random.default_rng(3)
    umap = rng.normal(scale=3, size=(20, 2))
    P = rng.dirichlet(np.ones(20) * 0.3, 20) * 0.4 + 0.6 * np.eye(20)
    a, _ = _annotated(P, LONG, np.full(20, 15.0), method="directed", direction={"kind": "pseudotime"}, umap=umap)
    fig = kdcpt.pl.transition_graph(a, return_fig=True, show=False)
    ax = fig.axes[0]
    assert len(_arrowheads(ax)) <= 20  # not a wall of 40 arrows
    labels = [t for t in ax.texts if "long-named" in t.get_text()]
    assert len(labels) == 20 and _overlaps(fig, labels) == [] and _inside(fig, labels)
    # each leader line reaches its label (none clipped at the axes' edge)
    ylo, yhi = sorted(ax.get_ylim())
    assert all(ylo - 1e-9 <= t.get_position()[1] <= yhi + 1e-9 for t in labels)
    plt.close("all")


def test_graph_edges_and_names_on_inputs_users_have():
    from matplotlib.figure import Figure

    names = ["A/1", "B", "C", "D"]
    P = np.array([[0.4, 0.3, 0.2, 0.1], [0.1, 0.5, 0.2, 0.2], [0.1, 0.1, 0.6, 0.2], [0.3, 0.1, 0.1, 0.5]])
    umap = [[0, 0], [3, 0], [0, 3], [3, 3]]
    a, _ = _annotated(P, names, np.full(4, 30.0), method="directed", direction={"kind": "pseudotime"}, umap=umap)
    pred = a.obs["kdcpt_pred"].astype(str).to_numpy()
    pred[pred == "D"] = "C"  # no cell predicted as D: D and its edges are left out before the cap
    a.obs["kdcpt_pred"] = pd.Categorical(pred, categories=names)
    ax = kdcpt.pl.transition_graph(a, weights="probability", threshold=0.0, max_edges=3, show=False)
    arrows = [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
    assert len(arrows) == 3 and "the 3 largest of 6 arrows" in ax.get_title()  # 6 among A/1, B, C
    plt.close("all")
    # the stored matrix (h5ad-safe names, "A_1") passed back in: its nodes are found on the embedding
    stored = a.uns["kdcpt"]["transition_matrix"]
    ax = kdcpt.pl.transition_graph(a, matrix=stored, show=False)
    assert "A_1" in [t.get_text() for t in ax.texts]
    plt.close("all")
    with pytest.warns(UserWarning, match="None of the matrix's phenotypes"):  # it raised an IndexError
        kdcpt.pl.transition_graph(a, matrix=pd.DataFrame(P, index=list("wxyz"), columns=list("wxyz")), show=False)
    plt.close("all")
    # a figure made without pyplot (its canvas has no get_renderer): it raised an AttributeError
    ax = Figure().subplots()
    assert kdcpt.pl.transition_graph(a, ax=ax, show=False) is ax


def test_cut_names_never_read_alike():
    from scanpy_kdcpt.pl import _read

    names = ["CD4-positive, alpha-beta memory T cell", "CD4-positive, alpha-beta cytotoxic T cell"]
    P = np.array([[0.9, 0.1], [0.2, 0.8]])
    a, _ = _annotated(P, names, np.full(2, 30.0), method="posterior")
    fig = kdcpt.pl.transition_matrix(a, return_fig=True, show=False)
    rows = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert len(set(rows)) == 2 and len(set(_read.wrap_names(names, 16))) == 2
    plt.close("all")


def test_a_row_of_few_cells_says_so():
    a, _ = _annotated(P3, ["a", "b", "c"], np.array([60.0, 40.0, 3.0]), method="posterior")
    fig = kdcpt.pl.transition_matrix(a, return_fig=True, show=False)
    rows = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert rows == ["a", "b", "c (≈3 cells)"]
    plt.close("all")


def test_long_names_of_many_phenotypes_do_not_run_into_each_other():
    # names of five and more lines ran into the next row's name (entropy, matrix, fates)
    names = [f"Cluster {i}: long intermediate transitional population with mixed signature #{i}" for i in range(24)]
    rng = np.random.default_rng(4)
    P = rng.dirichlet(np.ones(24) * 0.3, 24) * 0.4 + 0.6 * np.eye(24)
    a, _ = _annotated(P, names, np.full(24, 10.0), method="directed", direction={"kind": "pseudotime"})
    for plot in (kdcpt.pl.entropy, kdcpt.pl.transition_matrix):
        fig = plot(a, return_fig=True, show=False)
        ticks = [t for t in fig.axes[0].get_yticklabels() if t.get_text()]
        assert len(ticks) == 24 and all(t.get_text().count("\n") <= 1 for t in ticks)
        assert _overlaps(fig, ticks) == []
        assert any(t.get_text().startswith("Cluster 3:") for t in ticks)  # still tells the rows apart
        plt.close("all")


@pytest.mark.parametrize("names", [LONG, ["Ductal", "EP", "Alpha", "Beta"]])
def test_embedding_labels_never_cover_each_other(names):
    from scanpy_kdcpt import markov

    rng = np.random.default_rng(0)
    codes = rng.integers(0, len(names), 600)
    centres = rng.normal(scale=2.0, size=(len(names), 2)) * (1 if len(names) > 4 else 4)
    a = ad.AnnData(np.zeros((600, 1), dtype=np.float32))
    a.obsm["X_umap"] = centres[codes] + 0.3 * rng.normal(size=(600, 2))
    a.obs["kdcpt_pred"] = pd.Categorical.from_codes(codes, categories=names)
    a.obsp["kdcpt_transitions"] = markov.knn_transition_matrix(a.obsm["X_umap"], 10)
    a.uns["kdcpt"] = {"classes": np.asarray(names, dtype=object)}
    fig = kdcpt.pl.transition_stream(a, return_fig=True, show=False)
    ax = fig.axes[0]
    assert _overlaps(fig, ax.texts) == []
    legends = fig.legends + ([ax.get_legend()] if ax.get_legend() else [])
    if len(names) > 4:  # 20 long names: numbers on the cells, the names in a legend below, inside the figure
        assert sorted(t.get_text() for t in ax.texts) == sorted(str(k) for k in range(1, 21))
        assert [t.get_text() for t in legends[0].get_texts()] == names and _inside(fig, legends[0].get_texts())
    else:  # a few short names stay on the cells
        assert sorted(t.get_text() for t in ax.texts) == sorted(names) and not legends
    plt.close("all")


def _knockout_adata(n: int, delta: np.ndarray, terminated: np.ndarray, names: list[str] | None = None) -> ad.AnnData:
    names = PBMC[:n] if names is None else names
    src, tgt = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    table = pd.DataFrame(
        {
            "gene": "G",
            "mode": "delete",
            "source": pd.Categorical.from_codes(src.ravel(), categories=names),
            "target": pd.Categorical.from_codes(tgt.ravel(), categories=names),
            "delta": delta.ravel(),
            "terminated": terminated.ravel(),
        }
    )
    summary = pd.DataFrame({"gene": ["G"], "mode": ["delete"], "effect": [0.1]})
    a = ad.AnnData(np.zeros((2, 1), dtype=np.float32))
    a.uns["kdcpt"] = {"classes": np.asarray(names, dtype=object), "knockout": table, "knockout_summary": summary}
    return a


def test_knockout_heatmap_writes_only_readable_deltas_and_marks_terminated():
    n = 10
    rng = np.random.default_rng(0)
    delta = rng.normal(scale=1e-4, size=(n, n))  # read as +0.00 / -0.00: left blank
    delta[3, 3], delta[3, 0], delta[8, 8] = -0.05, 0.02, 0.012
    terminated = np.zeros((n, n), bool)
    terminated[3, 4] = True
    a = _knockout_adata(n, delta, terminated)
    fig = kdcpt.pl.knockout(a, return_fig=True, show=False)
    ax = fig.axes[0]
    numbers = [t for t in ax.texts if t.get_text() not in ("×", "")]
    assert sorted(t.get_text() for t in numbers) == ["+0.01", "+0.02", "−0.05"]
    assert not any(t.get_text() in ("+0.00", "-0.00", "−0.00") for t in ax.texts)
    assert sum(t.get_text() == "×" for t in ax.texts) == 1 and "terminated" in ax.get_title()
    assert _overlaps(fig, ax.texts) == []
    plt.close("all")
    # a dense grid: no numbers at all rather than a wall of them
    n = 10
    big = _knockout_adata(n, np.full((n, n), 0.03), np.zeros((n, n), bool))
    fig, small_ax = plt.subplots(figsize=(2.5, 2.5))
    kdcpt.pl.knockout(big, ax=small_ax, show=False)
    assert [t for t in small_ax.texts if t.get_text() not in ("×", "")] == []
    plt.close("all")


def test_knockout_heatmap_colour_bar_keeps_to_its_panel_in_a_grid():
    # the colour bar was appended beside the axes outside the layout: in a user's constrained grid
    # it and its label ran over the next panel
    n = 5
    a = _knockout_adata(n, np.eye(n) * 0.3, np.zeros((n, n), bool))
    fig, axs = plt.subplots(1, 2, figsize=(6, 3), layout="constrained")
    kdcpt.pl.knockout(a, ax=axs[0], show=False)
    axs[1].plot([0, 1], [0, 1])
    axs[1].set_ylabel("a neighbour's label")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    bar = next(x for x in [*fig.axes, *axs[0].child_axes] if x not in axs)
    assert bar.get_tightbbox(renderer).x1 <= axs[1].get_tightbbox(renderer).x0 + 1
    plt.close("all")


def test_knockout_heatmap_of_twenty_long_names_has_readable_labels():
    delta = np.zeros((20, 20))
    delta[12, 12] = -0.8
    a = _knockout_adata(20, delta, np.zeros((20, 20), bool), names=LONG)
    fig = kdcpt.pl.knockout(a, return_fig=True, show=False)
    ax = fig.axes[0]
    ys, xs = ax.get_yticklabels(), ax.get_xticklabels()
    assert len(ys) == 20 and _overlaps(fig, ys) == [] and _inside(fig, ys + xs)
    # the x labels stand rotated: neighbours clear each other when the columns are further apart,
    # across the text, than a label is high (all its lines)
    step_pt = np.diff(ax.transData.transform([(0, 0), (1, 0)])[:, 0])[0] * 72 / fig.dpi
    rotation = np.radians(xs[0].get_rotation())
    tallest = max((t.get_text().count("\n") + 1) * 1.2 * t.get_fontsize() for t in xs)
    assert step_pt * np.sin(rotation) >= tallest
    plt.close("all")


def test_knockout_heatmap_title_says_when_nothing_is_readable_and_where_the_fates_are():
    n = 4
    a = _knockout_adata(n, np.full((n, n), 2e-4), np.zeros((n, n), bool))  # every change below 0.005
    title = kdcpt.pl.knockout(a, "G", return_fig=True, show=False).axes[0].get_title()
    assert "every |Δ| < 0.005: no numbers written" in title and "knockout_fate" not in title
    plt.close("all")
    a.uns["kdcpt"]["knockout_fate"] = pd.DataFrame({"gene": ["G"], "source": ["a"], "terminal": ["b"], "delta": [-0.2]})
    title = kdcpt.pl.knockout(a, "G", return_fig=True, show=False).axes[0].get_title()
    assert "classifier memberships; on the chain: pl.knockout_fate, pl.knockout_flux" in title
    plt.close("all")


def test_report_of_posterior_lists_share_of_cells_not_stationary(tmp_path):
    a, _ = _annotated(P3, ["a", "b", "c"], N3, method="posterior")
    text = "\n".join(report._transitions_section(a.uns["kdcpt"], ["a", "b", "c"], {}))
    assert "stationary |" not in text and "| share of cells" in text and "no net flux" in text
    d, _ = _annotated(P3, ["a", "b", "c"], N3, method="directed", direction={"kind": "pseudotime"})
    text = "\n".join(report._transitions_section(d.uns["kdcpt"], ["a", "b", "c"], {}))
    assert "stationary |" in text and "### Net flux" in text


def test_cli_drops_lightning_tip_and_leafspec_warning_only_during_the_run(caplog):
    tip = "💡 Tip: For seamless cloud uploads and versioning, try installing litmodels"
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with cli._without_library_noise():
                _noise(logger, tip)
        messages = [r.getMessage() for r in caplog.records]
        assert tip not in messages and "GPU available: False, used: False" in messages
        assert [str(w.message) for w in caught] == ["a warning of the package itself"]
        logger.info(tip)  # after the run: untouched
        assert tip in [r.getMessage() for r in caplog.records]
    assert not logger.filters


def _noise(logger, tip):
    logger.info(tip)
    logger.info("GPU available: False, used: False")
    warnings.warn(
        "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)`",
        FutureWarning,
        stacklevel=2,
    )
    warnings.warn("a warning of the package itself", UserWarning, stacklevel=2)


def test_transition_matrix_title_says_which_matrix_is_drawn():
    a, _ = _annotated(P3, ["a", "b", "c"], N3, method="directed", direction={"kind": "velocity"})
    title = kdcpt.pl.transition_matrix(a, return_fig=True, show=False).axes[0].get_title()
    assert title.startswith("Directed transition matrix (velocity chain)")
    a, _ = _annotated(P3, ["a", "b", "c"], N3, method="posterior")
    title = kdcpt.pl.transition_matrix(a, return_fig=True, show=False).axes[0].get_title()
    assert "posterior form (no direction)" in title and "Directed" not in title
    plt.close("all")


def test_arrows_between_big_neighbouring_nodes_stay_visible():
    # a SNARE-like circle: big adjacent nodes (L2/3, L4/5) used to cover the arrow between them
    names = [
        "Astro",
        "CGE",
        "Clau",
        "Endo",
        "L2/3",
        "L4/5",
        "L6",
        "MGC",
        "Mis",
        "Npy",
        "OPC",
        "Oligo",
        "Peri",
        "Pvalb",
        "Sst",
    ]
    n = len(names)
    P = 0.9 * np.eye(n) + 0.1 * np.random.default_rng(0).dirichlet(np.full(n, 0.3), n)
    for src, dst, w in [("Mis", "L2/3", 0.3), ("L4/5", "L2/3", 0.2), ("Mis", "L4/5", 0.15), ("Oligo", "Mis", 0.2)]:
        i, j = names.index(src), names.index(dst)
        P[i, i] -= w
        P[i, j] += w
    sizes = np.full(n, 20.0)
    sizes[[4, 5, 6, 8]] = [200, 150, 100, 80]
    a, r = _annotated(P / P.sum(1, keepdims=True), names, sizes, method="directed", direction={"kind": "pseudotime"})
    fig = kdcpt.pl.transition_graph(a, basis=None, return_fig=True, show=False)
    ax = fig.axes[0]
    fig.canvas.draw()
    nodes = next(c for c in ax.collections if len(c.get_offsets()) == n)
    assert nodes.get_zorder() == 3
    to_pt = 72.0 / fig.dpi
    centres = ax.transData.transform(nodes.get_offsets()) * to_pt
    radius = np.sqrt(nodes.get_sizes() / np.pi)
    arrows = [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
    pairs = {(names.index("L4/5"), names.index("L2/3"))}
    seen = set()
    for p in arrows:
        (xa, ya), (xb, yb) = p._posA_posB
        i = int(np.argmin(np.abs(nodes.get_offsets() - [xa, ya]).sum(1)))
        j = int(np.argmin(np.abs(nodes.get_offsets() - [xb, yb]).sum(1)))
        seen.add((i, j))
        # between the two nodes' rims there is room for the arrow's head and a shaft, or the
        # arrow is drawn above the nodes
        free = np.linalg.norm(centres[i] - centres[j]) - radius[i] - radius[j]
        head = 0.4 * p.get_mutation_scale()
        assert free >= head + 3 or p.get_zorder() > nodes.get_zorder(), (names[i], names[j], free, head)
    assert pairs <= seen
    plt.close("all")


def test_the_posterior_form_is_not_drawn_as_moves():
    a, _ = _annotated(P3, ["a", "b", "c"], N3, method="posterior")
    ax = kdcpt.pl.transition_matrix(a, show=False)
    assert ax.get_ylabel() == "cells of phenotype" and ax.get_xlabel() == "mean predicted probability of phenotype"
    a, _ = _annotated(P3, ["a", "b", "c"], N3, method="directed", direction={"kind": "pseudotime"})
    ax = kdcpt.pl.transition_matrix(a, show=False)
    assert (ax.get_ylabel(), ax.get_xlabel()) == ("from phenotype", "to phenotype")
    plt.close("all")


def test_the_numbers_of_two_way_arrows_sit_on_their_own_arrows():
    # weights="probability" draws i → j and j → i as two arcs; their numbers were both put at the
    # chord's middle, the smaller often printed over the larger
    P = np.array([[0.5, 0.22, 0.28], [0.47, 0.5, 0.03], [0.1, 0.2, 0.7]])
    a, _ = _annotated(
        P, ["Ductal", "EP", "Beta"], np.array([40.0, 30.0, 30.0]), method="directed", direction={"kind": "pseudotime"}
    )
    fig = kdcpt.pl.transition_graph(
        a, basis=None, weights="probability", edge_labels=True, threshold=0.0, return_fig=True, show=False
    )
    numbers = [t for t in fig.axes[0].texts if t.get_text() in {"0.22", "0.47", "0.28", "0.1", "0.2", "0.03"}]
    assert {t.get_text() for t in numbers} >= {"0.22", "0.47"}
    assert _overlaps(fig, numbers) == []
    plt.close("all")


def test_the_stored_matrix_has_the_same_names_on_both_axes(tmp_path):
    # columns were h5ad-safe ("/" → "_") and the index was not: P.loc["CD4+/CD25 T Reg", ...] failed
    names = ["CD4+/CD25 T Reg", "CD19+ B", "L2/3"]
    a, r = _annotated(P3, names, N3, method="posterior")
    a.write_h5ad(tmp_path / "t.h5ad")
    for P in (a.uns["kdcpt"]["transition_matrix"], ad.read_h5ad(tmp_path / "t.h5ad").uns["kdcpt"]["transition_matrix"]):
        assert list(P.index) == list(P.columns) == ["CD4+_CD25 T Reg", "CD19+ B", "L2_3"]
        assert P.loc["L2_3", "L2_3"] == pytest.approx(P3[2, 2])
    fig = kdcpt.pl.transition_matrix(a, return_fig=True, show=False)  # the plots still read the real names
    assert "CD4+/CD25 T Reg" in [t.get_text().replace("\n", " ") for t in fig.axes[0].get_yticklabels()]
    plt.close("all")


def test_streamlines_stay_on_the_cells():
    # a flow straight out of a block of cells: streamlines used to run on past its edge (as out of
    # the pancreas UMAP's Ductal cells), where the kernel average still had some mass
    from matplotlib.collections import LineCollection
    from scipy import sparse

    rng = np.random.default_rng(0)
    cells = rng.uniform(0, 10, size=(2000, 2))
    a = ad.AnnData(np.zeros((2000, 1), dtype=np.float32))
    a.obsm["X_umap"] = cells
    a.obs["kdcpt_pred"] = pd.Categorical.from_codes(np.zeros(2000, int), categories=["A"])
    d = np.sqrt(((cells[:, None] - cells[None]) ** 2).sum(-1))
    W = np.where((d < 0.6) & (d > 0), np.exp(3 * (cells[None, :, 0] - cells[:, None, 0])), 0.0)  # rightwards
    a.obsp["kdcpt_transitions"] = sparse.csr_matrix(W / W.sum(1, keepdims=True))
    a.uns["kdcpt"] = {"classes": np.asarray(["A"], dtype=object)}
    fig = kdcpt.pl.transition_stream(a, return_fig=True, show=False)
    lines = [c for c in fig.axes[0].collections if isinstance(c, LineCollection)]
    points = np.concatenate([np.asarray(seg) for c in lines for seg in c.get_segments()])
    nearest = np.sqrt(((points[:, None, :] - cells[None, :, :]) ** 2).sum(-1)).min(1)
    assert nearest.max() < 1.2 * 10 / 35  # within about a grid spacing of a cell, the right edge too
    plt.close("all")
