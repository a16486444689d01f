"""``kdcpt.pl.confusion_matrix``: the drawn matrix is sklearn's, row-normalised, on the cells asked for."""

from __future__ import annotations

import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.metrics import f1_score

import scanpy_kdcpt as kdcpt

NAMES = ["B", "Mono", "NK/T", "rare"]


@pytest.fixture
def annotated() -> AnnData:
    """60 cells with known and predicted phenotypes as annotate() writes them (no model needed)."""
    rng = np.random.default_rng(0)
    true = rng.choice(NAMES[:3], size=60)
    pred = np.where(rng.random(60) < 0.7, true, rng.choice(NAMES, size=60))
    true = true.astype(object)
    true[:4] = None  # unlabelled cells are left out
    adata = AnnData(np.zeros((60, 2), dtype=np.float32))
    adata.obs["cell_type"] = pd.Categorical(true)
    adata.obs["kdcpt_pred"] = pd.Categorical(pred, categories=NAMES)
    adata.uns["kdcpt"] = {"classes": np.array(NAMES), "params": {"labels_key": "cell_type"}}
    return adata


def _drawn(ax) -> np.ndarray:
    return np.ma.filled(ax.images[0].get_array().astype(float), np.nan)


def test_drawn_matrix_is_sklearns_row_normalised(annotated):
    ax = kdcpt.pl.confusion_matrix(annotated, show=False)
    keep = annotated.obs["cell_type"].notna().to_numpy()
    true = annotated.obs["cell_type"][keep].astype(str)
    pred = annotated.obs["kdcpt_pred"][keep].astype(str)
    counts = sk_confusion(true, pred, labels=NAMES)
    drawn = _drawn(ax)
    labelled = counts.sum(1) > 0
    np.testing.assert_allclose(drawn[labelled], counts[labelled] / counts[labelled].sum(1, keepdims=True))
    assert np.isnan(drawn[~labelled]).all()  # "rare" has no known cell: an empty row, not zeros
    # each row's cell count in its label; the title's macro-F1 is sklearn's on the same cells
    rows = [t.get_text() for t in ax.get_yticklabels()]
    assert rows == [f"{n} ({c})" for n, c in zip(NAMES, counts.sum(1), strict=True)]
    f1 = float(re.search(r"macro-F1 ([0-9.]+)", ax.get_title()).group(1))
    assert f1 == pytest.approx(f1_score(true, pred, average="macro", zero_division=0), abs=0.005)
    # every labelled cell, the training ones too: the title says it is a fit
    assert ax.get_title().startswith(f"{int(keep.sum())} cells")
    assert ax.get_title().endswith("(every labelled cell, training ones included: a fit)")
    # one number per non-empty cell of the matrix, and they are the shares drawn ("<.01", not "0.00", below 0.005)
    texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert set(texts) == {(i, j) for i, j in zip(*np.nonzero(counts), strict=True)}
    for (i, j), s in texts.items():
        if s == "<.01":
            assert 0 < drawn[i, j] < 0.005
        else:
            assert float(s) == pytest.approx(drawn[i, j], abs=0.005) and float(s) > 0
    plt.close("all")


@pytest.mark.parametrize("as_", ["positions", "mask", "names"])
def test_cells_restrict_the_count(annotated, as_):
    pos = np.arange(10, 40)
    cells = {
        "positions": pos,
        "mask": np.isin(np.arange(annotated.n_obs), pos),
        "names": annotated.obs_names[pos],
    }[as_]
    ax = kdcpt.pl.confusion_matrix(annotated, cells=cells, show=False)
    true = annotated.obs["cell_type"].iloc[pos].astype(str)
    counts = sk_confusion(true, annotated.obs["kdcpt_pred"].iloc[pos].astype(str), labels=NAMES)
    rows = [f"{n} ({c})" for n, c in zip(NAMES, counts.sum(1), strict=True)]
    assert [t.get_text() for t in ax.get_yticklabels()] == rows
    assert ax.get_title().startswith("30 cells:") and "training" not in ax.get_title()  # the cells asked for
    plt.close("all")


def test_missing_keys_name_the_key(annotated):
    with pytest.raises(KeyError, match="no_such_column"):
        kdcpt.pl.confusion_matrix(annotated, labels_key="no_such_column", show=False)
    with pytest.raises(KeyError, match="other_pred"):
        kdcpt.pl.confusion_matrix(annotated, key="other", labels_key="cell_type", show=False)
    with pytest.raises(KeyError, match="not_a_cell"):
        kdcpt.pl.confusion_matrix(annotated, cells=["not_a_cell"], show=False)


def test_renders_and_is_public(annotated, tmp_path):
    assert "confusion_matrix" in kdcpt.pl.__all__
    fig = kdcpt.pl.confusion_matrix(annotated, return_fig=True)
    fig.savefig(tmp_path / "confusion.png")
    assert (tmp_path / "confusion.png").stat().st_size > 5_000
    plt.close("all")
