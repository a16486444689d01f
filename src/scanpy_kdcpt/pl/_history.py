"""Training curves (loss, accuracy, macro-F1 per epoch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .. import _keys
from .._errors import InvalidInputError
from .._utils import is_mudata
from . import _read
from ._docs import doc_params

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_LABELS = {"loss": "loss", "classification_loss": "classification loss", "accuracy": "accuracy", "f1": "macro-F1"}


def _history(model_or_adata, key: str) -> pd.DataFrame:
    from anndata import AnnData

    if isinstance(model_or_adata, AnnData) or is_mudata(model_or_adata):
        hist = pd.DataFrame(_read.uns_entry(model_or_adata, key, _keys.UNS_HISTORY, "model.annotate() after training"))
    else:
        history = getattr(model_or_adata, "history", None)
        if not history:
            raise InvalidInputError("The model has no training history: train it first (model.train()).")
        hist = pd.concat(list(history.values()), axis=1).reset_index()
    if "epoch" not in hist.columns:
        hist = hist.reset_index().rename(columns={"index": "epoch"})
    return hist


@doc_params("doc_show_save_ax")
def training_history(
    model_or_adata,
    *,
    key: str = _keys.DEFAULT_KEY,
    metrics: Sequence[str] = ("loss", "accuracy", "f1"),
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    save: str | bool | None = None,
) -> list[Axes] | Figure | None:
    """Training and validation curves per epoch, one panel per metric.

    Parameters
    ----------
    model_or_adata
        A trained :class:`~scanpy_kdcpt.KDCPT` (its ``history``) or an AnnData annotated by
        ``model.annotate()`` (``.uns[key]["history"]``).
    key
        The ``key_added`` the results were written under (AnnData only; default ``"kdcpt"``).
    metrics
        Among ``"loss"``, ``"classification_loss"``, ``"accuracy"``, ``"f1"``; one panel each
        (with ``ax``, pass one Axes per metric).
    {doc_show_save_ax}

    Returns
    -------
    The list of Axes (``None`` when shown; the Figure with ``return_fig=True``).

    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    hist = _history(model_or_adata, key)
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in metrics if m not in _LABELS]
    if unknown:
        raise InvalidInputError(f"Unknown metrics {unknown}; choose among {list(_LABELS)}.")
    if ax is None:
        fig, axes = plt.subplots(
            1, len(metrics), figsize=(3.4 * len(metrics), 3.0), layout="constrained", squeeze=False
        )
        axes = list(axes.ravel())
    else:
        axes = [ax] if not isinstance(ax, Sequence | np.ndarray) else list(np.ravel(ax))
        if len(axes) != len(metrics):
            raise InvalidInputError(f"Pass one Axes per metric: {len(metrics)} metrics, {len(axes)} Axes.")
        fig = axes[0].figure
    epoch = pd.to_numeric(hist["epoch"], errors="coerce").to_numpy(float)
    for a, m in zip(axes, metrics, strict=True):
        drawn = False
        for mode, colour in (("train", "#1f77b4"), ("validation", "#ff7f0e")):
            col = f"{mode}_{m}"
            if col in hist.columns:
                y = pd.to_numeric(hist[col], errors="coerce").to_numpy(float)
                ok = np.isfinite(y)
                if ok.any():
                    a.plot(epoch[ok], y[ok], marker="o", markersize=2.5, linewidth=1.3, color=colour, label=mode)
                    drawn = True
        if not drawn:
            a.text(0.5, 0.5, f"no {m} logged", transform=a.transAxes, ha="center", va="center", color="0.4")
        a.set_xlabel("epoch")
        a.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 0.2, 0.4 ticks
        a.set_title(_LABELS[m], fontsize=10)
        if m in ("accuracy", "f1"):
            a.set_ylim(max(0.0, a.get_ylim()[0]), 1.01)
        a.spines[["top", "right"]].set_visible(False)
        if drawn:
            a.legend(fontsize=7, frameon=False)
    return _read.finish(fig, axes, show, return_fig, save)
