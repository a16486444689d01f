"""Helpers shared by every plot: read AnnData keys, phenotype colours, new axes, save / show / return."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .. import _keys
from .._errors import KeyNotFoundError
from .._utils import default_palette

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def uns_entry(adata: AnnData, key: str, entry: str, producer: str = "model.annotate()"):
    """``adata.uns[key][entry]``, or a KeyError that says what writes it."""
    if key not in adata.uns:
        raise KeyNotFoundError(
            f"adata.uns[{key!r}] not found: run {producer} first (or pass key= the key_added you used; "
            f"uns keys: {list(adata.uns.keys())})."
        )
    if entry not in adata.uns[key]:
        raise KeyNotFoundError(
            f"adata.uns[{key!r}][{entry!r}] not found: run {producer} with this version of scanpy-kdcpt "
            f"(entries present: {list(adata.uns[key].keys())})."
        )
    return adata.uns[key][entry]


def classes(adata: AnnData, key: str) -> list[str]:
    """The model's phenotypes in order (``.uns[key]["classes"]``)."""
    return [str(c) for c in np.asarray(uns_entry(adata, key, _keys.UNS_CLASSES))]


def labels_key(adata: AnnData, key: str, labels_key: str | None) -> str:
    """``labels_key``, or the one the model was set up with (``.uns[key]["params"]``), checked in ``.obs``."""
    if labels_key is None:
        params = adata.uns.get(key, {}).get(_keys.UNS_PARAMS, {})
        labels_key = params.get("labels_key")
        if labels_key is None or str(labels_key) == "None":
            raise ValueError(
                f"Pass labels_key= (the .obs column of known phenotypes): adata.uns[{key!r}] does not record one."
            )
    labels_key = str(labels_key)
    if labels_key not in adata.obs:
        raise KeyNotFoundError(f"labels_key {labels_key!r} is not a column of adata.obs.")
    return labels_key


def colors(adata: AnnData, key: str, names: list[str]) -> dict[str, str]:
    """Phenotype → colour from ``.uns[f"{key}_pred_colors"]`` (scanpy's palette if absent)."""
    cols = adata.uns.get(_keys.Keys(key).colors)
    all_names = classes(adata, key)
    if cols is None or len(cols) != len(all_names):
        cols = default_palette(len(all_names))
    lookup = dict(zip(all_names, map(str, cols), strict=True))
    return {n: lookup.get(n, "#999999") for n in names}


def wrap(name: str, width: int = 16) -> str:
    """Break a long phenotype name (e.g. ``CD4+/CD45RA+/CD25- Naive T``) over lines."""
    name = str(name)
    if len(name) <= width:
        return name
    # allow breaks after "/" too: wrap with a space after each "/", then drop it again
    lines = textwrap.wrap(name.replace("/", "/ "), width=width, break_long_words=False)
    return "\n".join(line.replace("/ ", "/") for line in lines)


def new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return fig, ax


def finish(
    fig: Figure,
    axes,
    show: bool | None,
    return_fig: bool,
    save: str | bool | None,
    *,
    writekey: str | None = None,
):
    """Scanpy's ending of a plot: save (:func:`savefig`), show, return.

    ``show=None`` follows ``scanpy.settings.autoshow``. Returns the Figure with ``return_fig``,
    ``None`` when shown, else ``axes``. ``writekey`` names the saved file (default: the name of
    the calling plot function, e.g. ``transition_matrix``).
    """
    import matplotlib.pyplot as plt
    from scanpy import settings

    if writekey is None:
        writekey = sys._getframe(1).f_code.co_name
    saved = savefig(fig, writekey, save)
    if return_fig:
        return fig
    show = settings.autoshow if show is None else show
    if show:
        plt.show()
    if saved is not None:
        plt.close(fig)  # as scanpy: a saved figure is closed
    return None if show else axes


def savefig(fig: Figure, writekey: str, save: str | bool | None) -> Path | None:
    """Save ``fig`` as scanpy's ``savefig_or_show`` does; return the path written (or ``None``).

    ``save=True``: ``settings.figdir / f"{writekey}{settings.plot_suffix}.{settings.file_format_figs}"``;
    a string is appended to ``writekey`` and its extension (``.png``, ``.pdf``, ``.svg``), if
    any, sets the format; ``None`` follows ``settings.autosave``; ``False`` saves nothing.
    """
    from scanpy import logging as logg
    from scanpy import settings

    ext = None
    if isinstance(save, str):
        for try_ext in (".svg", ".pdf", ".png"):
            if save.endswith(try_ext):
                ext, save = try_ext[1:], save[: -len(try_ext)]
                break
        writekey, save = writekey + save, True
    if not (settings.autosave if save is None else save):
        return None
    figdir = Path(settings.figdir)
    figdir.mkdir(parents=True, exist_ok=True)
    path = figdir / f"{writekey}{settings.plot_suffix}.{ext or settings.file_format_figs}"
    logg.warning(f"saving figure to file {path}")  # scanpy's level: the user should see where it went
    fig.savefig(path, bbox_inches="tight")  # dpi: rcParams["savefig.dpi"], as scanpy
    return path


def label_groups(ax, X: np.ndarray, groups, *, min_cells: int = 5) -> None:
    """Each group's name at the median of its cells on an embedding (white box, for orientation)."""
    if groups is None:
        return
    col = pd.Series(np.asarray(groups, dtype=object)).astype(str).astype("category")
    for name in col.cat.categories:
        sel = (col == name).to_numpy()
        if sel.sum() >= min_cells:
            ax.text(
                *np.median(X[sel], 0),
                wrap(str(name), 14),
                fontsize=8,
                ha="center",
                va="center",
                zorder=4,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75},
            )
