"""Entropy of each phenotype's transitions (from ``.uns[key]`` only)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .. import _keys
from . import _read
from ._docs import doc_params

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


@doc_params("doc_key", "doc_wrap_title", "doc_show_save_ax", "doc_returns")
def entropy(
    adata: AnnData,
    *,
    key: str = _keys.DEFAULT_KEY,
    normalized: bool = False,
    sort: bool = True,
    wrap: int = 22,
    title: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    save: str | bool | None = None,
) -> Axes | Figure | None:
    """Bars of each phenotype's transition entropy, with the overall (prior-weighted) entropy.

    Low entropy: the phenotype keeps its identity (or moves to one other phenotype); high
    entropy: its cells spread over many phenotypes.

    Parameters
    ----------
    adata
        AnnData annotated by ``model.annotate()`` (``.uns[key]["entropy"]``,
        ``["entropy_total"]``).
    {doc_key}
    normalized
        Divide by ``log(number of phenotypes)`` (1 = uniform row).
    sort
        Highest entropy first.
    {doc_wrap_title}
    {doc_show_save_ax}

    {doc_returns}

    """
    table = pd.DataFrame(_read.uns_entry(adata, key, _keys.UNS_ENTROPY))
    total = float(_read.uns_entry(adata, key, _keys.UNS_ENTROPY_TOTAL))
    names = [str(c) for c in table.index]
    n_classes = len(_read.classes(adata, key))
    h = table["entropy_normalized" if normalized else "entropy"].to_numpy(dtype=float)
    h_max = 1.0 if normalized else np.log(max(n_classes, 2))
    if normalized:
        total = total / np.log(max(n_classes, 2))
    order = np.argsort(-h, kind="stable") if sort else np.arange(len(h))
    cols = _read.colors(adata, key, names)
    fig, ax = _read.new_axes(ax, (5.6, max(2.6, 0.36 * len(names) + 1.4)))
    y = np.arange(len(order))
    ax.barh(y, h[order], color=[cols[names[k]] for k in order], edgecolor="black", linewidth=0.5)
    ax.set_yticks(
        y, _read.wrap_names([names[k] for k in order], wrap), fontsize=max(6.0, min(9.0, 11 - 0.15 * len(names)))
    )
    ax.invert_yaxis()
    ax.axvline(total, color="black", linestyle="--", linewidth=1)
    ax.text(total, -0.7, f" overall {total:.3f}", fontsize=8, va="bottom", ha="left")
    for k, yy in zip(order, y, strict=True):
        ax.text(
            h[k],
            yy,
            f" {h[k]:.3f}",
            va="center",
            fontsize=7,
            bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8},
        )
    upper = max(h.max() if h.size else 0.0, total)
    ax.set_xlim(0, min(h_max, upper * 1.25 + 1e-9) if upper > 0 else h_max)
    ax.set_ylim(len(order) - 0.5, -1.2)
    unit = "H / log C" if normalized else "nats"
    ax.set_xlabel(f"transition entropy ({unit}; uniform = {h_max:.2f})")
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(title if title is not None else "Entropy per phenotype")
    return _read.finish(fig, ax, show, return_fig, save)
