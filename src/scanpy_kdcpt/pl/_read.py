"""Helpers of the transition / calibration / history plots: read AnnData keys, finish a figure."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

import numpy as np

from .. import _keys
from .._errors import KeyNotFoundError

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


def colors(adata: AnnData, key: str, names: list[str]) -> dict[str, str]:
    """Phenotype → colour from ``.uns[f"{key}_pred_colors"]`` (scanpy's palette if absent)."""
    cols = adata.uns.get(_keys.Keys(key).colors)
    all_names = classes(adata, key)
    if cols is None or len(cols) != len(all_names):
        from scanpy.plotting import palettes

        pal = palettes.default_20 if len(all_names) <= 20 else palettes.default_102
        cols = [pal[i % len(pal)] for i in range(len(all_names))]
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


def finish(fig: Figure, axes, show: bool | None, return_fig: bool, save: str | None):
    """Scanpy's ending: save, show (``None``: ``scanpy.settings.autoshow``), return."""
    import matplotlib.pyplot as plt

    if save is not None:
        fig.savefig(save, dpi=150, bbox_inches="tight")
    if return_fig:
        return fig
    if show is None:
        try:
            from scanpy import settings

            show = settings.autoshow
        except ImportError:  # pragma: no cover
            show = True
    if show:
        plt.show()
        return None
    return axes
