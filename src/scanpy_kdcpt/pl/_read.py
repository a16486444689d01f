"""Helpers shared by every plot: read AnnData keys, phenotype colours, new axes, save / show / return."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .. import _keys
from .._errors import InvalidInputError, KeyNotFoundError
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
            raise InvalidInputError(
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


def wrap(name: str, width: int = 16, max_lines: int = 2) -> str:
    """Break a long phenotype name (e.g. ``CD4+/CD45RA+/CD25- Naive T``) over at most
    ``max_lines`` lines, the last cut with "…" when the name needs more (beside a row of a
    heatmap or a bar, more lines ran into the next row's name).
    """
    name = str(name)
    if len(name) <= width:
        return name
    # allow breaks after "/" too: wrap with a space after each "/", then drop it again
    lines = textwrap.wrap(name.replace("/", "/ "), width=width, break_long_words=False)
    lines = [line.replace("/ ", "/") for line in lines]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(width - 1, 1)].rstrip() + "…"
    return "\n".join(lines)


def wrap_names(names, width: int = 16, max_lines: int = 2) -> list[str]:
    """:func:`wrap` of each name, with more lines for the names it would cut to the same text
    (Cell Ontology names such as "CD4-positive, alpha-beta memory T cell" and "... T cell" share
    their first lines): different phenotypes never read alike.
    """
    names = [str(c) for c in names]
    out = [wrap(c, width, max_lines) for c in names]
    lines = max_lines
    while len(set(out)) < len(set(names)) and lines < 50:
        lines += 1
        seen: dict[str, set] = {}
        for c, w in zip(names, out, strict=True):
            seen.setdefault(w, set()).add(c)
        out = [wrap(c, width, lines) if len(seen[w]) > 1 else w for c, w in zip(names, out, strict=True)]
    return out


def new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return fig, ax


def embeddings(adata: AnnData) -> list[str]:
    """The ``.obsm`` keys that name embeddings (``X_umap``, ``X_pca``, ...), not the package's outputs."""
    return [str(k) for k in adata.obsm.keys() if str(k).startswith("X_")]


def renderer(fig: Figure):
    """The figure's renderer after a layout pass, on any canvas (a bare ``Figure()`` has a base
    canvas without ``get_renderer``).
    """
    fig.draw_without_rendering()
    get = getattr(fig.canvas, "get_renderer", None)
    return get() if get is not None else fig._get_renderer()


def grow_to_fit(fig: Figure, pad: float = 0.05) -> None:
    """Enlarge ``fig`` (inches) so that everything drawn lies inside it, every axes keeping its
    size and its place relative to the others: a plain ``fig.savefig`` then clips nothing (tick
    labels rotated below a dotplot used to). For figures the plot made itself, not a user's.
    """
    inner = fig.get_tightbbox(renderer(fig))  # inches
    width, height = fig.get_size_inches()
    left, bottom = max(-inner.x0, 0.0), max(-inner.y0, 0.0)
    right, top = max(inner.x1 - width, 0.0), max(inner.y1 - height, 0.0)
    if max(left, bottom, right, top) <= 0:
        return
    left, bottom = (left + pad if left else 0.0), (bottom + pad if bottom else 0.0)
    right, top = (right + pad if right else 0.0), (top + pad if top else 0.0)
    boxes = [(a, a.get_position()) for a in fig.axes]
    new_w, new_h = width + left + right, height + bottom + top
    fig.set_size_inches(new_w, new_h)
    for a, b in boxes:
        a.set_position(
            [
                (b.x0 * width + left) / new_w,
                (b.y0 * height + bottom) / new_h,
                b.width * width / new_w,
                b.height * height / new_h,
            ]
        )
    for t in fig.texts:  # suptitles and figure texts keep their place relative to the axes
        if t.get_transform() == fig.transFigure:
            x, y = t.get_position()
            t.set_position(((x * width + left) / new_w, (y * height + bottom) / new_h))


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
    """Each group's name at the median of its cells on an embedding (white box, for orientation).

    When the names would cover each other (many groups, long names), each group gets its
    number there instead, and a legend below the axes says which number is which name.
    """
    if groups is None:
        return
    dtype = getattr(groups, "dtype", None)
    col = pd.Series(np.asarray(groups, dtype=object)).astype(str)
    # in the categories' order (the phenotypes' order elsewhere), else sorted
    order = [str(c) for c in dtype.categories] if isinstance(dtype, pd.CategoricalDtype) else sorted(set(col))
    shown = [(name, np.median(X[(col == name).to_numpy()], 0)) for name in order if (col == name).sum() >= min_cells]
    box = {"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75}
    texts = [
        ax.text(*at, wrap(name, 14), fontsize=8, ha="center", va="center", zorder=4, bbox=box) for name, at in shown
    ]
    if not _any_overlap(ax, texts):
        return
    for t in texts:
        t.remove()
    from matplotlib.lines import Line2D

    handles = []
    # names that are numbers themselves (leiden clusters '0', '1', ...) get letters: a number would
    # read as the cluster of that name
    numeric = any(name.strip().lstrip("-").isdigit() for name, _ in shown)
    for k, (_, at) in enumerate(shown, start=1):
        code = _letters(k) if numeric else str(k)
        ax.text(*at, code, fontsize=7, ha="center", va="center", zorder=4, bbox=box)
        handles.append(
            Line2D([], [], linestyle="none", marker=f"${code}$", color="black", markersize=1 + 4.5 * len(code))
        )
    ncol = 2 if len(shown) > 6 else 1
    kw = {"ncol": ncol, "fontsize": 7, "frameon": False, "handletextpad": 0.4}
    fig, names = ax.figure, [name for name, _ in shown]
    if len(fig.axes) <= 2 and fig.get_layout_engine() is not None:
        # a figure of this plot alone (and its colour bar): taller, the legend below everything
        rows = -(-len(shown) // ncol)
        fig.set_figheight(fig.get_figheight() + rows * 7 * 1.5 / 72 + 0.2)
        fig.legend(handles, names, loc="outside lower center", **kw)
    else:
        ax.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, -0.08), **kw)


def _letters(k: int) -> str:
    """``1`` → ``"A"``, ``26`` → ``"Z"``, ``27`` → ``"AA"`` (spreadsheet columns)."""
    out = ""
    while k > 0:
        k, r = divmod(k - 1, 26)
        out = chr(ord("A") + r) + out
    return out


def _any_overlap(ax, texts) -> bool:
    """Whether any two of the texts' boxes overlap, once the figure is laid out."""
    r = renderer(ax.figure)  # limits and layout final (autoscaling is lazy)
    boxes = [t.get_window_extent(r) for t in texts]
    return any(a.overlaps(b) for k, a in enumerate(boxes) for b in boxes[k + 1 :])
