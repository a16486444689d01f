"""The directed cell chain on an embedding (stream plot) and fate probabilities (from AnnData keys)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from .. import _keys, markov
from .._errors import InvalidInputError, KeyNotFoundError
from . import _read
from ._docs import doc_params

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _basis(adata: AnnData, basis: str, *, finite: bool = True) -> np.ndarray:
    """The first two coordinates of ``.obsm["X_{basis}"]`` (or ``.obsm[basis]``); with ``finite``,
    refused when a cell has none (a NaN row failed inside matplotlib or scikit-learn).
    """
    obsm_key = _keys.basis_key(adata.obsm, basis)
    if obsm_key not in adata.obsm:
        raise KeyNotFoundError(
            f"adata.obsm[{obsm_key!r}] not found: compute the embedding first (e.g. sc.tl.umap) or pass "
            f"basis= one of {_read.embeddings(adata)}."
        )
    X = np.asarray(adata.obsm[obsm_key])[:, :2].astype(float)
    missing = ~np.isfinite(X).all(1)
    if finite and missing.any():
        raise InvalidInputError(
            f"adata.obsm[{obsm_key!r}] has {int(missing.sum())} cells without finite coordinates (NaN or inf); "
            "this plot needs every cell's position: subset the AnnData to the cells that have one, or compute "
            "the embedding for all cells."
        )
    return X


def _grid(X: np.ndarray, V: np.ndarray, density: int = 35, smooth: float = 0.5, max_gap: float | None = None):
    """Cell vectors averaged on a grid by a Gaussian kernel (scVelo's ``velocity_embedding_grid``).

    ``max_gap``: grid points whose nearest cell is farther than this many grid spacings get no
    vector (``None``: only the kernel-mass threshold).
    """
    from sklearn.neighbors import NearestNeighbors

    lo, hi = X.min(0), X.max(0)
    span = hi - lo
    lo, hi = lo - 0.02 * span, hi + 0.02 * span
    gx, gy = np.linspace(lo[0], hi[0], density), np.linspace(lo[1], hi[1], density)
    G = np.array(np.meshgrid(gx, gy)).reshape(2, -1).T
    k = min(50, len(X))
    dist, idx = NearestNeighbors(n_neighbors=k).fit(X).kneighbors(G)
    scale = np.mean(span / density) * smooth * 2
    w = np.exp(-0.5 * (dist / scale) ** 2)
    tot = w.sum(1)
    U = (V[idx] * w[..., None]).sum(1) / np.maximum(tot, 1e-12)[:, None]
    keep = tot >= 0.1 * np.percentile(tot, 99)  # no arrows where there are no cells
    if max_gap is not None:
        keep &= dist[:, 0] <= max_gap * np.mean(span / density)
    U[~keep] = np.nan
    return gx, gy, U[:, 0].reshape(density, density), U[:, 1].reshape(density, density)


@doc_params("doc_key", "doc_show_save_ax")
def transition_stream(
    adata: AnnData,
    *,
    key: str = _keys.DEFAULT_KEY,
    basis: str = "umap",
    color: str | None = None,
    density: float = 1.2,
    grid: int = 35,
    title: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    save: str | bool | None = None,
) -> Axes | Figure | None:
    """The cell-level chain projected onto an embedding as a stream plot (like CellRank / scVelo).

    Each cell's expected step under ``.obsp["{key}_transitions"]`` (minus the step of an
    unbiased walk on the same neighbours) is averaged on a grid and drawn as streamlines over
    the cells coloured by phenotype.

    Parameters
    ----------
    adata
        AnnData with ``.obsp["{key}_transitions"]`` (``model.compute_transitions()``) and
        ``.obsm["X_{basis}"]``.
    {doc_key}
    basis
        Embedding (``.obsm["X_" + basis]`` or an ``.obsm`` key).
    color
        ``.obs`` column colouring the cells (default ``"{key}_pred"``).
    density
        Streamline density (matplotlib's ``streamplot``).
    grid
        Grid points per axis.
    title
        Axes title.
    {doc_show_save_ax}

    Returns
    -------
    The Axes (``None`` when shown; the Figure with ``return_fig=True``).

    """
    keys = _keys.Keys(key)
    if keys.transitions not in adata.obsp:
        raise KeyNotFoundError(
            f"adata.obsp[{keys.transitions!r}] not found: run model.compute_transitions(...) first "
            f"(or pass key= the key_added used; obsp keys: {list(adata.obsp.keys())})."
        )
    X = _basis(adata, basis)
    V = markov.project_chain(adata.obsp[keys.transitions], X)
    gx, gy, U, W = _grid(X, V, grid, max_gap=1.0)  # no streamline through a gap between cells
    fig, ax = _read.new_axes(ax, (6.4, 5.6))
    color = keys.pred if color is None else color
    if color in adata.obs:
        col = adata.obs[color].astype("category")
        names = list(map(str, col.cat.categories))
        lookup = _read.colors(adata, key, names) if color == keys.pred else _scanpy_colors(adata, color, names)
        c = col.astype(str).map(lookup).to_numpy()
        ax.scatter(X[:, 0], X[:, 1], s=6, c=list(c), linewidths=0, alpha=0.6, rasterized=True, zorder=1)
        _read.label_groups(ax, X, col, min_cells=1)
    else:
        ax.scatter(X[:, 0], X[:, 1], s=6, c="#bbbbbb", linewidths=0, rasterized=True, zorder=1)
    speed = np.sqrt(np.nan_to_num(U) ** 2 + np.nan_to_num(W) ** 2)
    lw = 0.6 + 1.6 * speed / max(np.nanmax(speed), 1e-12)
    ax.streamplot(gx, gy, U, W, density=density, color="#222222", linewidth=lw, arrowsize=1.0, zorder=3)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"{basis.upper()}1" if not basis.startswith("X_") else basis + " 1")
    ax.set_ylabel(f"{basis.upper()}2" if not basis.startswith("X_") else basis + " 2")
    direction = adata.uns.get(key, {}).get(_keys.UNS_DIRECTION, {})
    kind = direction.get("kind") if isinstance(direction, dict) else None
    ax.set_title(title if title is not None else f"Cell chain ({kind or 'transitions'})", fontsize=10)
    return _read.finish(fig, ax, show, return_fig, save)


def _scanpy_colors(adata: AnnData, color: str, names: list[str]) -> dict[str, str]:
    cols = adata.uns.get(f"{color}_colors")
    if cols is None or len(cols) != len(names):
        from scanpy.plotting import palettes

        pal = palettes.default_20 if len(names) <= 20 else palettes.default_102
        cols = [pal[i % len(pal)] for i in range(len(names))]
    return dict(zip(names, map(str, cols), strict=True))


def _fates(adata: AnnData, key: str) -> tuple[np.ndarray, list[str], pd.DataFrame]:
    keys = _keys.Keys(key)
    if keys.fate_probabilities not in adata.obsm:
        raise KeyNotFoundError(
            f"adata.obsm[{keys.fate_probabilities!r}] not found: run model.compute_transitions(...), then "
            "writers.write_fates(adata, model.get_fate_probabilities()) or model.annotate()."
        )
    F = np.asarray(adata.obsm[keys.fate_probabilities], dtype=float)
    terminal = [str(t) for t in np.asarray(_read.uns_entry(adata, key, _keys.UNS_FATE_TERMINAL))]
    mean = pd.DataFrame(_read.uns_entry(adata, key, _keys.UNS_FATE))
    mean = pd.DataFrame(mean.to_numpy(float), index=list(map(str, mean.index)), columns=terminal)
    return F, terminal, mean


@doc_params("doc_key", "doc_show_save_ax")
def fate_probabilities(
    adata: AnnData,
    *,
    key: str = _keys.DEFAULT_KEY,
    kind: Literal["embedding", "phenotype"] | None = None,
    basis: str = "umap",
    terminal: list[str] | None = None,
    ncols: int = 4,
    cmap: str = "viridis",
    title: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    save: str | bool | None = None,
):
    """Fate probabilities: per cell on an embedding, or the mean per phenotype.

    Parameters
    ----------
    adata
        AnnData with ``.obsm["{key}_fate_probabilities"]`` and ``.uns[key]["fate"]``,
        ``["fate_terminal"]``.
    {doc_key}
    kind
        ``"embedding"``: one panel per terminal phenotype, cells coloured by their probability
        of ending there (grey: no terminal reachable). ``"phenotype"``: stacked bars of the
        mean fate of each phenotype. Default: ``"embedding"`` when ``.obsm["X_{basis}"]``
        exists, else ``"phenotype"``.
    basis
        Embedding for ``"embedding"``.
    terminal
        Terminal phenotypes to show (default all).
    ncols
        Panels per row (``"embedding"``).
    cmap
        Colour map (``"embedding"``).
    title
        Title (``"phenotype"``).
    {doc_show_save_ax}

    Returns
    -------
    The Axes (a list of Axes for ``"embedding"``; ``None`` when shown; the Figure with
    ``return_fig=True``).

    """
    import matplotlib.pyplot as plt

    F, names, mean = _fates(adata, key)
    if terminal is not None:
        unknown = [t for t in terminal if t not in names]
        if unknown:
            raise KeyNotFoundError(f"terminal {unknown} not among the terminal phenotypes {names}.")
    show_names = names if terminal is None else list(terminal)
    if kind is None:
        kind = "embedding" if (basis in adata.obsm or f"X_{basis}" in adata.obsm) else "phenotype"
    if kind == "embedding":
        X = _basis(adata, basis, finite=False)  # cells without coordinates are not drawn
        n = len(show_names)
        if ax is not None:  # the user's Axes: one per terminal shown
            axs = np.atleast_1d(np.asarray(ax, dtype=object)).ravel()
            if len(axs) < n:
                raise InvalidInputError(
                    f"kind='embedding' draws one panel per terminal ({n}: {show_names}); pass that many Axes as ax=, "
                    "or terminal=[one of them] for a single Axes."
                )
            fig = axs[0].figure
        else:
            nc = min(ncols, n)
            nr = int(np.ceil(n / nc))
            fig, axs = plt.subplots(nr, nc, figsize=(3.4 * nc, 3.1 * nr), layout="constrained", squeeze=False)
            axs = axs.ravel()
        for a, t in zip(axs, show_names, strict=False):
            f = F[:, names.index(t)]
            nan = np.isnan(f)
            a.scatter(X[nan, 0], X[nan, 1], s=4, c="#dddddd", linewidths=0, rasterized=True)
            order = np.argsort(np.where(nan, -1, f))[int(nan.sum()) :]
            sc_ = a.scatter(
                X[order, 0], X[order, 1], s=4, c=f[order], cmap=cmap, vmin=0, vmax=1, linewidths=0, rasterized=True
            )
            head = f"fate: {_read.wrap(t, 24)}"
            if len(names) == 1:  # nothing to choose between: not a commitment
                head += "\n(the only terminal: every cell\nthat reaches one ends here)"
            if nan.any():
                head += f"\ngrey: no terminal reachable ({int(nan.sum())} cells)"
            a.set_title(head, fontsize=10 if head.count("\n") < 2 else 8)
            a.set_xticks([])
            a.set_yticks([])
        for a in axs[n:] if ax is None else ():  # the grid's empty panels (a user's spare Axes stay)
            a.axis("off")
        fig.colorbar(sc_, ax=axs[:n].tolist(), shrink=0.6, label="probability")
        return _read.finish(fig, list(axs[:n]), show, return_fig, save)
    if kind != "phenotype":
        raise InvalidInputError(f"kind must be 'embedding', 'phenotype' or None, not {kind!r}.")
    M = mean[show_names]
    fig, ax = _read.new_axes(ax, (6.4, 0.45 * len(M) + 1.6))
    cols = _read.colors(adata, key, show_names)
    left = np.zeros(len(M))
    y = np.arange(len(M))
    unreached = M.isna().all(axis=1).to_numpy()  # no terminal reachable: said, not drawn as a bar of 0
    for yi in np.flatnonzero(unreached):
        ax.text(0.01, yi, "no terminal reachable", ha="left", va="center", fontsize=7, color="0.4", style="italic")
    from matplotlib.colors import to_rgb

    for t in show_names:
        v = np.nan_to_num(M[t].to_numpy(float))
        ax.barh(y, v, left=left, color=cols[t], edgecolor="white", linewidth=0.5, label=_read.wrap(t, 24))
        r, g, b = to_rgb(cols[t])
        ink = "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"  # readable on dark bars
        for yi, (l0, vi) in enumerate(zip(left, v, strict=True)):
            if vi >= 0.12:
                ax.text(l0 + vi / 2, yi, f"{vi:.2f}", ha="center", va="center", fontsize=7, color=ink)
        left += v
    ax.set_yticks(y, _read.wrap_names(M.index, 20), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("mean fate probability")
    ax.legend(title="terminal", fontsize=8, title_fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left", frameon=False)
    head = "Fate of each phenotype"
    if len(names) == 1:
        head += f"\n(only one terminal, {names[0]}: the fates choose nothing)"
    ax.set_title(title if title is not None else head, fontsize=10)
    return _read.finish(fig, ax, show, return_fig, save)
