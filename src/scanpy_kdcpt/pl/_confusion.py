"""Confusion matrix of known against predicted phenotypes (from ``.obs`` only)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .. import _keys
from .._errors import InvalidInputError, KeyNotFoundError
from ..metrics import classification_report
from . import _read
from ._docs import doc_params

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _positions(adata: AnnData, cells) -> np.ndarray:
    """Row positions of ``cells``: ``None`` (all), a boolean mask, integer positions or obs names."""
    if cells is None:
        return np.arange(adata.n_obs)
    cells = np.asarray(cells)
    if cells.dtype == bool:
        if cells.shape != (adata.n_obs,):
            raise InvalidInputError(f"A boolean cells mask needs {adata.n_obs} entries, got {cells.shape}.")
        return np.flatnonzero(cells)
    if np.issubdtype(cells.dtype, np.integer):
        return cells.astype(int)
    missing = pd.Index(cells).difference(adata.obs_names)
    if len(missing):
        raise KeyNotFoundError(f"cells not in adata.obs_names: {list(missing[:3])}.")
    return adata.obs_names.get_indexer(cells)


def confusion_table(
    adata: AnnData,
    *,
    key: str = _keys.DEFAULT_KEY,
    labels_key: str | None = None,
    cells: Sequence | np.ndarray | None = None,
) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    """Cell counts (known phenotype × predicted phenotype), and the known and predicted labels used.

    Rows and columns are the model's phenotypes (``.uns[key]["classes"]``); cells without a
    known phenotype, or with one the model does not predict, are left out.
    """
    from sklearn.metrics import confusion_matrix as sk_confusion

    pred_key = _keys.Keys(key).pred
    if pred_key not in adata.obs:
        raise KeyNotFoundError(f"adata.obs[{pred_key!r}] not found: run model.annotate() (key_added={key!r}) first.")
    names = _read.classes(adata, key)
    labels_key = _read.labels_key(adata, key, labels_key)
    pos = _positions(adata, cells)
    true = adata.obs[labels_key].iloc[pos].astype(object)
    pred = adata.obs[pred_key].iloc[pos].astype(str)
    keep = true.notna().to_numpy() & true.astype(str).isin(names).to_numpy()
    if not keep.any():
        raise InvalidInputError(
            f"No selected cell has a known phenotype in adata.obs[{labels_key!r}] that the model predicts."
        )
    true, pred = true[keep].astype(str), pred[keep]
    counts = sk_confusion(true, pred, labels=names)
    return pd.DataFrame(counts, index=names, columns=names), true, pred


@doc_params("doc_key", "doc_wrap_title", "doc_show_save_ax", "doc_returns")
def confusion_matrix(
    adata: AnnData,
    *,
    key: str = _keys.DEFAULT_KEY,
    labels_key: str | None = None,
    cells: Sequence | np.ndarray | None = None,
    annotate: bool = True,
    cmap: str = "Blues",
    wrap: int = 16,
    title: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    save: str | bool | None = None,
) -> Axes | Figure | None:
    """Confusion matrix: each row, the cells of one known phenotype, split by their prediction.

    Rows are normalised to 1 (the diagonal is each phenotype's recall); the row labels give the
    number of cells, and the title the accuracy and macro-F1 of the cells drawn. Pass the cells
    held out of training (``cells=model.calibration_indices_``, or ``model.validation_indices``)
    for an estimate of how the model does on new cells: the training cells' matrix is a fit.

    Parameters
    ----------
    adata
        AnnData annotated by ``model.annotate()`` (``.obs["{key}_pred"]``).
    {doc_key}
    labels_key
        ``.obs`` column of known phenotypes (default: the one the model was set up with).
    cells
        The cells to count: a boolean mask, integer positions or ``obs_names`` (default: every
        cell with a known phenotype).
    annotate
        Write each share in its cell (empty where it is 0).
    cmap
        Matplotlib colour map.
    {doc_wrap_title}
    {doc_show_save_ax}

    {doc_returns}

    """
    counts, true, pred = confusion_table(adata, key=key, labels_key=labels_key, cells=cells)
    names = list(counts.index)
    n = len(names)
    totals = counts.sum(axis=1).to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(totals[:, None] > 0, counts.to_numpy() / totals[:, None], np.nan)
    cell = 0.62 if annotate else 0.4
    fig, ax = _read.new_axes(ax, (max(4.0, cell * n + 3.4), max(3.4, cell * n + 2.0)))
    im = ax.imshow(np.ma.masked_invalid(share), cmap=cmap, vmin=0.0, vmax=1.0, aspect="equal")
    ax.set_xticks(range(n), _read.wrap_names(names, wrap), rotation=60, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), [f"{w} ({t})" for w, t in zip(_read.wrap_names(names, wrap), totals, strict=True)])
    small = max(5.5, min(9.0, 11 - 0.25 * n))
    ax.tick_params(labelsize=small, length=0)
    ax.set_xlabel("predicted phenotype")
    ax.set_ylabel("known phenotype (cells)")
    if annotate:
        text_size = max(5.0, min(8.5, 10 - 0.3 * n))
        for i in range(n):
            for j in range(n):
                v = share[i, j]
                if not np.isfinite(v) or counts.iat[i, j] == 0:
                    continue
                ax.text(
                    j,
                    i,
                    f"{v:.2f}" if v >= 0.005 else "<.01",  # not 0.00 where some cells are
                    ha="center",
                    va="center",
                    fontsize=text_size,
                    color="white" if v > 0.6 else "black",
                    fontweight="bold" if i == j else "normal",
                )
    ax.set_xticks(np.arange(n + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(n + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="0.85", linewidth=0.5)
    ax.grid(which="major", visible=False)
    ax.tick_params(which="minor", length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    cbar = fig.colorbar(im, ax=ax, shrink=0.8, pad=0.02)
    cbar.set_label("share of the row's cells")
    if title is None:
        r = classification_report(true, pred)
        title = f"{r['n_cells']} cells: accuracy {r['accuracy']:.2f}, macro-F1 {r['macro_f1']:.2f}"
        if cells is None:  # say that the training cells are in it: a fit, not an estimate on new cells
            title += "\n(every labelled cell, training ones included: a fit)"
    ax.set_title(title, fontsize=10)
    return _read.finish(fig, ax, show, return_fig, save)
