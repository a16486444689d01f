"""One plot API: every ``kdcpt.pl`` function takes ``key``, ``ax``, ``show``, ``save``, ``return_fig``;
``save`` behaves as scanpy's (files in ``sc.settings.figdir``); ``pl`` imports no model internals."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pytest
import scanpy as sc

import scanpy_kdcpt as kdcpt
from scanpy_kdcpt import results, writers

PL = Path(kdcpt.pl.__file__).parent
#: the modules ``pl/`` may import from the package: keys, helpers, the public torch-free core
ALLOWED = {"_keys", "_utils", "_expression", "_errors", "markov", "calibration", "metrics", "stats", "results"}


@pytest.fixture
def annotated():
    """An AnnData with a transition matrix written by the writers (no model needed)."""
    names = ["A", "B", "C"]
    P = np.array([[0.8, 0.15, 0.05], [0.1, 0.7, 0.2], [0.0, 0.1, 0.9]])
    adata = ad.AnnData(np.zeros((6, 2), dtype=np.float32))
    adata.uns["kdcpt"] = {"classes": np.asarray(names, dtype=object)}
    writers.write_transitions(adata, results.Transitions.from_matrix(P, names, np.array([2, 2, 2]), method="posterior"))
    return adata


@pytest.fixture
def figdir(tmp_path):
    """scanpy's figure settings pointed at ``tmp_path`` (restored afterwards)."""
    names = ("figdir", "file_format_figs", "plot_suffix", "autosave")
    before = {n: getattr(sc.settings, n) for n in names}
    sc.settings.figdir, sc.settings.file_format_figs = tmp_path / "figures", "png"
    sc.settings.plot_suffix, sc.settings.autosave = "", False
    yield tmp_path / "figures"
    for n, v in before.items():
        setattr(sc.settings, n, v)
    plt.close("all")


def _plots():
    return [getattr(kdcpt.pl, name) for name in kdcpt.pl.__all__]


@pytest.mark.parametrize("func", _plots(), ids=lambda f: f.__name__)
def test_every_plot_has_the_scanpy_signature(func):
    params = inspect.signature(func).parameters
    for name in ("key", "ax", "show", "save", "return_fig"):
        assert name in params, name
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    assert "key_added" not in params  # readers take key=, writers key_added=
    assert params["key"].default == "kdcpt"
    assert "bool" in str(params["save"].annotation)  # save=True works, as in scanpy
    # one docstring template: the shared parameter text, filled in
    doc = func.__doc__
    assert "{doc_" not in doc
    assert "scanpy.settings.figdir" in doc and "scanpy.settings.autoshow" in doc


def test_save_true_writes_into_figdir_under_the_plot_name(annotated, figdir):
    ax = kdcpt.pl.transition_matrix(annotated, show=False, save=True)
    assert (figdir / "transition_matrix.png").stat().st_size > 1000
    assert ax is not None  # still returns the Axes


def test_save_string_is_a_suffix_and_sets_the_format(annotated, figdir):
    kdcpt.pl.entropy(annotated, show=False, save="_pbmc.pdf")
    out = figdir / "entropy_pbmc.pdf"
    assert out.read_bytes()[:4] == b"%PDF"
    kdcpt.pl.transition_matrix(annotated, show=False, save="_plain")
    assert (figdir / "transition_matrix_plain.png").exists()


def test_save_none_follows_autosave_and_false_saves_nothing(annotated, figdir):
    kdcpt.pl.transition_matrix(annotated, show=False)
    kdcpt.pl.transition_matrix(annotated, show=False, save=False)
    assert not figdir.exists()
    sc.settings.autosave = True
    kdcpt.pl.transition_graph(annotated, show=False)
    assert (figdir / "transition_graph.png").exists()
    kdcpt.pl.transition_matrix(annotated, show=False, save=False)
    assert not (figdir / "transition_matrix.png").exists()


def test_save_with_a_given_axes_saves_its_figure(annotated, figdir):
    fig, axs = plt.subplots(1, 2)
    plt.figure()  # the current figure is another one: the plot's own figure must be saved
    assert kdcpt.pl.entropy(annotated, ax=axs[1], show=False, save=True) is axs[1]
    saved = plt.imread(figdir / "entropy.png")
    assert saved.shape[1] > saved.shape[0]  # the 1 × 2 layout of fig, not the empty square figure


def test_return_fig_and_key(annotated, figdir):
    annotated.uns["other"] = annotated.uns.pop("kdcpt")
    with pytest.raises(KeyError, match="pass key="):
        kdcpt.pl.transition_matrix(annotated, show=False)
    fig = kdcpt.pl.transition_matrix(annotated, key="other", return_fig=True)
    assert isinstance(fig, plt.Figure)


def test_pl_imports_only_keys_helpers_and_the_public_core():
    for path in PL.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 2:  # from ..x import y
                top = (node.module or "").split(".")[0]
                names = [a.name for a in node.names] if not node.module else [top]
                for name in names:
                    assert name in ALLOWED, f"{path.name} imports ..{name}"
            if isinstance(node, ast.ImportFrom) and node.module and "scanpy_kdcpt.model" in node.module:
                raise AssertionError(f"{path.name} imports {node.module}")


def _knockout_summary(**columns) -> ad.AnnData:
    """An AnnData holding only a knockout summary of three genes (none terminated a transition)."""
    import pandas as pd

    adata = ad.AnnData(np.zeros((3, 3), dtype=np.float32))
    base = {"gene": ["Gata1", "Klf1", "Sod1"], "mode": "delete", "effect": [0.3, 0.2, 0.01], "n_terminated": 0}
    adata.uns["kdcpt"] = {"knockout_summary": pd.DataFrame({**base, **columns})}
    return adata


def test_knockout_effects_legend_names_only_what_is_drawn():
    adata = _knockout_summary(null_low=0.0, null_high=0.05, null_mean=0.02, qval=[0.001, 0.01, 0.04])  # all significant
    ax = kdcpt.pl.knockout_effects(adata, show=False)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "terminates none" in legend
    assert "terminates a transition" not in legend and not any("not significant" in t for t in legend)
    assert "largest" not in ax.get_title()  # every knockout drawn
    plt.close("all")
    ax = kdcpt.pl.knockout_effects(adata, n_genes=2, show=False)
    assert "(the 2 largest of 3)" in ax.get_title()  # Sod1 left out, and said
    plt.close("all")
    tiny = _knockout_summary(effect=[0.0005, 0.0003, 0.0001])  # the axis stretched them to fill it
    assert kdcpt.pl.knockout_effects(tiny, show=False).get_ylim()[1] >= 0.01
    plt.close("all")


def test_knockout_effects_tells_untested_from_not_significant():
    # a knockout run without a null (n_null=0) has no p: it was drawn hollow, "not significant"
    adata = _knockout_summary(
        null_low=[0.0, 0.0, np.nan],
        null_high=[0.05, 0.05, np.nan],
        null_mean=[0.02, 0.02, np.nan],
        qval=[0.001, 0.2, np.nan],  # Sod1 was knocked out in a later call without a null
    )
    summary = adata.uns["kdcpt"]["knockout_summary"]
    ax = kdcpt.pl.knockout_effects(adata, show=False)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"significant (q < 0.05)", "not significant (q ≥ 0.05)", "not tested (no null: n_null=0)"} <= set(legend)
    faces = ax.collections[-1].get_facecolors()
    assert faces[0][:3].tolist() != [1.0, 1.0, 1.0] and faces[1][:3].tolist() == [1.0, 1.0, 1.0]  # filled, hollow
    assert faces[2][:3].tolist() not in ([1.0, 1.0, 1.0], faces[0][:3].tolist())  # neither: grey
    plt.close("all")
    summary[["null_low", "null_high", "null_mean", "qval"]] = np.nan  # no null at all
    ax = kdcpt.pl.knockout_effects(adata, show=False)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "not tested (no null: n_null=0)" in legend and not any("significant" in t for t in legend)
    plt.close("all")
