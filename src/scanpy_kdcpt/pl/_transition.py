"""Transition matrix heatmap, transition graph and entropy bars (from ``.uns[key]`` only)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from .. import _keys
from ..markov import stationary_distribution
from . import _read
from ._docs import doc_params

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _matrix(adata: AnnData, key: str, matrix: pd.DataFrame | None) -> pd.DataFrame:
    """The stored transition matrix with phenotype names on both axes (or ``matrix``)."""
    if matrix is None:
        P = _read.uns_entry(adata, key, _keys.UNS_TRANSITION)
        names = _read.classes(adata, key)
        if not isinstance(P, pd.DataFrame):
            P = pd.DataFrame(np.asarray(P), index=names, columns=names)
        if len(P.index) == len(names):
            # stored columns use h5ad-safe names; the index keeps the real ones
            P = pd.DataFrame(P.to_numpy(), index=names, columns=names)
    else:
        P = matrix
    P = P.astype(float)
    if P.shape[0] != P.shape[1]:
        raise ValueError(f"A transition matrix must be square, got shape {P.shape}.")
    return P


@doc_params("doc_key", "doc_wrap_title", "doc_show_save_ax", "doc_returns")
def transition_matrix(
    adata: AnnData,
    *,
    key: str = _keys.DEFAULT_KEY,
    matrix: pd.DataFrame | None = None,
    annotate: bool = True,
    fmt: str = ".2f",
    gamma: float = 0.5,
    cmap: str = "Reds",
    wrap: int = 16,
    title: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    save: str | bool | None = None,
) -> Axes | Figure | None:
    """Heatmap of the phenotype transition matrix; the framed diagonal is each phenotype's stability.

    Parameters
    ----------
    adata
        AnnData annotated by ``model.annotate()`` (``.uns[key]["transition_matrix"]``).
    {doc_key}
    matrix
        Draw this matrix instead (e.g. one condition of
        ``model.get_transition_matrix(groupby=...)``).
    annotate
        Write each probability in its cell.
    fmt
        Number format of the annotations.
    gamma
        Colour scale ``P ** gamma`` (``< 1`` makes the small off-diagonal entries visible
        next to a dominant diagonal; ``1`` is linear).
    cmap
        Matplotlib colour map.
    {doc_wrap_title}
    {doc_show_save_ax}

    {doc_returns}

    """
    from matplotlib.colors import PowerNorm
    from matplotlib.patches import Rectangle

    P = _matrix(adata, key, matrix)
    names = [str(n) for n in P.index]
    n = len(names)
    cell = 0.62 if annotate else 0.4
    fig, ax = _read.new_axes(ax, (max(4.0, cell * n + 3.2), max(3.4, cell * n + 2.0)))
    im = ax.imshow(P.to_numpy(), cmap=cmap, norm=PowerNorm(gamma=gamma, vmin=0.0, vmax=1.0), aspect="equal")
    ax.set_xticks(range(n), [_read.wrap(c, wrap) for c in P.columns], rotation=60, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), [_read.wrap(c, wrap) for c in names])
    small = max(5.5, min(9.0, 11 - 0.25 * n))
    ax.tick_params(labelsize=small, length=0)
    ax.set_xlabel("to phenotype")
    ax.set_ylabel("from phenotype")
    # phenotype colours as small patches along both axes
    cols = _read.colors(adata, key, names)
    for i, c in enumerate(names):
        ax.add_patch(Rectangle((-0.5 + i, n - 0.5), 1, 0.18, color=cols[c], clip_on=False, transform=ax.transData))
        ax.add_patch(Rectangle((-0.68, i - 0.5), 0.18, 1, color=cols[c], clip_on=False, transform=ax.transData))
    for i in range(n):
        ax.add_patch(Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.4))
    if annotate:
        values = P.to_numpy()
        text_size = max(5.0, min(8.5, 10 - 0.3 * n))
        for i in range(n):
            for j in range(n):
                v = values[i, j]
                label = format(v, fmt)
                if v > 0 and float(label) == 0:
                    label = "<" + format(10 ** -int(fmt.strip(".f") or 2), fmt).lstrip("0")
                dark = v**gamma > 0.6
                ax.text(
                    j,
                    i,
                    label,
                    ha="center",
                    va="center",
                    fontsize=text_size,
                    color="white" if dark else "black",
                    fontweight="bold" if i == j else "normal",
                )
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlim(-0.7, n - 0.5)
    ax.set_ylim(n - 0.5 + 0.2, -0.5)
    cbar = fig.colorbar(im, ax=ax, shrink=0.8, pad=0.02)
    cbar.set_label("transition probability")
    ax.set_title(title if title is not None else "Transition matrix (diagonal = stability)")
    return _read.finish(fig, ax, show, return_fig, save)


@doc_params("doc_key", "doc_wrap_title", "doc_show_save_ax", "doc_returns")
def transition_graph(
    adata: AnnData,
    *,
    key: str = _keys.DEFAULT_KEY,
    matrix: pd.DataFrame | None = None,
    weights: Literal["flux", "probability"] = "flux",
    basis: str | None = "umap",
    threshold: float | None = None,
    max_edges: int | None = None,
    layout: Literal["circle", "spring"] | dict[str, tuple[float, float]] = "circle",
    node_size: Literal["stationary", "prior"] | None = "stationary",
    edge_labels: bool = False,
    max_width: float = 6.0,
    wrap: int = 14,
    title: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    save: str | bool | None = None,
) -> Axes | Figure | None:
    """Phenotypes as nodes, net flux ``i → j`` as arrows whose width grows with the flux.

    With ``weights="flux"`` (default) each pair of phenotypes gets at most one arrow, in the
    direction of its net flux ``F_ij - F_ji`` (``F = diag(n) P``), drawn only above
    ``threshold``: a reader can follow where cells go. With ``weights="probability"`` every
    transition ``P[i, j]`` above ``threshold`` is drawn (both directions). Nodes sit at the
    phenotype centroids of ``.obsm["X_{basis}"]`` when it exists (over the cells, in grey),
    else on a circle.

    Parameters
    ----------
    adata
        AnnData annotated by ``model.annotate()`` (or ``model.compute_transitions()``).
    {doc_key}
    matrix
        Draw this matrix instead of the stored one (flux from its phenotype priors).
    weights
        ``"flux"`` (net flux, ``.uns[key]["flux"]``) or ``"probability"`` (``P[i, j]``).
    basis
        Embedding for the node positions (``.obsm["X_" + basis]``, phenotypes from
        ``.obs["{key}_pred"]``); ``None`` or absent: ``layout``.
    threshold
        Hide arrows below it. Default: 10 % of the largest net flux (``"flux"``), 5 % of
        the largest off-diagonal probability (``"probability"``).
    max_edges
        Keep only the strongest arrows.
    layout
        Without an embedding: ``"circle"``, ``"spring"`` (needs networkx) or a dict
        phenotype → (x, y).
    node_size
        Size nodes by the ``"stationary"`` distribution or the phenotype ``"prior"``;
        ``None`` for equal sizes.
    edge_labels
        Write the value on each arrow.
    max_width
        Width (points) of the strongest arrow.
    {doc_wrap_title}
    {doc_show_save_ax}

    {doc_returns}

    """
    from matplotlib.patches import FancyArrowPatch

    if weights not in ("flux", "probability"):
        raise ValueError(f"weights must be 'flux' or 'probability', not {weights!r}.")
    P = _matrix(adata, key, matrix)
    names = [str(c) for c in P.index]
    n = len(names)
    values = P.to_numpy()
    if weights == "flux":
        off = np.clip(_flux(adata, key, P, matrix), 0.0, None)
    else:
        off = values.copy()
    np.fill_diagonal(off, 0.0)
    top = off.max() if off.size else 0.0
    if threshold is None:
        threshold = (0.10 if weights == "flux" else 0.05) * top
    edges = [
        (i, j, off[i, j]) for i in range(n) for j in range(n) if i != j and off[i, j] > 0 and off[i, j] >= threshold
    ]
    edges.sort(key=lambda e: -e[2])
    if max_edges is not None:
        edges = edges[:max_edges]

    cols = _read.colors(adata, key, names)
    fig, ax = _read.new_axes(ax, (6.4, 5.6))
    emb = _embedding(adata, key, basis, names)
    if emb is not None:
        coords, pos = emb
        ax.scatter(coords[:, 0], coords[:, 1], s=3, c="#d9d9d9", linewidths=0, zorder=1, rasterized=True)
    else:
        pos = _layout(layout, names, off)
    sizes = _node_sizes(adata, key, names, node_size, matrix) * (0.6 if emb is not None else 1.0)
    xy = np.array([pos[c] for c in names])
    ax.scatter(xy[:, 0], xy[:, 1], s=sizes, c=[cols[c] for c in names], edgecolors="black", linewidths=0.8, zorder=3)
    radius_pt = np.sqrt(sizes / np.pi)
    rad = 0.0 if weights == "flux" else 0.18
    for i, j, p in edges[::-1]:  # weakest first, strongest on top
        width = 0.6 + (max_width - 0.6) * p / top if top > 0 else 1.0
        ax.add_patch(
            FancyArrowPatch(
                xy[i],
                xy[j],
                connectionstyle=f"arc3,rad={rad}",
                arrowstyle="-|>",
                mutation_scale=8 + 2.2 * width,
                linewidth=width,
                color=cols[names[i]] if emb is None else "#333333",
                alpha=0.85,
                shrinkA=radius_pt[i] + 1,
                shrinkB=radius_pt[j] + 2,
                zorder=2,
            )
        )
        if edge_labels:
            mid = 0.5 * (xy[i] + xy[j])
            ax.text(
                *mid,
                f"{p:.2g}",
                fontsize=7,
                ha="center",
                va="center",
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
                zorder=4,
            )
    centre = xy.mean(0)
    span = max(np.ptp(xy[:, 0]), np.ptp(xy[:, 1]), 1e-9)
    for k, c in enumerate(names):
        d = xy[k] - centre
        d = d / (np.linalg.norm(d) or 1.0)
        off_pt = radius_pt[k] + 4
        ha = "left" if d[0] > 0.3 else "right" if d[0] < -0.3 else "center"
        va = "bottom" if d[1] > 0.3 else "top" if d[1] < -0.3 else "center"
        label = _read.wrap(c, wrap) if weights == "flux" else f"{_read.wrap(c, wrap)}\n(stay {values[k, k]:.2f})"
        ax.annotate(
            label,
            xy[k],
            xytext=(d[0] * off_pt, d[1] * off_pt),
            textcoords="offset points",
            ha=ha,
            va=va,
            fontsize=8,
            zorder=5,
            bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7} if emb is not None else None,
        )
    if emb is None:
        pad = 0.42 * span
        ax.set_xlim(xy[:, 0].min() - pad, xy[:, 0].max() + pad)
        ax.set_ylim(xy[:, 1].min() - pad, xy[:, 1].max() + pad)
        ax.set_aspect("equal")
    ax.axis("off")
    what = "net flux" if weights == "flux" else "P"
    shown = f"{len(edges)} arrows, {what} ≥ {threshold:.2g}" if edges else f"no {what} above the threshold"
    method = adata.uns.get(key, {}).get(_keys.UNS_TRANSITION_METHOD) if matrix is None else None
    head = "Net flux between phenotypes" if weights == "flux" else "Transition graph"
    if method is not None:
        head += f" ({method})"
    ax.set_title(title if title is not None else f"{head}\n{shown}", fontsize=10)
    return _read.finish(fig, ax, show, return_fig, save)


def _flux(adata: AnnData, key: str, P: pd.DataFrame, matrix: pd.DataFrame | None) -> np.ndarray:
    """Net flux: the stored ``.uns[key]["flux"]``, or from ``P`` and the phenotype priors."""
    from ..markov import net_flux

    stored = adata.uns.get(key, {}).get(_keys.UNS_FLUX) if matrix is None else None
    if stored is not None and np.shape(stored) == P.shape:
        return np.asarray(stored, dtype=float)
    w = None
    ent = adata.uns.get(key, {}).get(_keys.UNS_ENTROPY)
    if ent is not None and "prior" in pd.DataFrame(ent) and len(pd.DataFrame(ent)) == P.shape[0]:
        w = np.asarray(pd.DataFrame(ent)["prior"], dtype=float)
    if w is None:
        w = stationary_distribution(P.to_numpy(float))
    return net_flux(P.to_numpy(float), w)


def _embedding(adata: AnnData, key: str, basis: str | None, names: list[str]):
    """Cell coordinates and phenotype centroids on ``.obsm["X_{basis}"]``, or None."""
    if basis is None:
        return None
    obsm_key = basis if basis in adata.obsm else f"X_{basis}"
    pred = _keys.Keys(key).pred
    if obsm_key not in adata.obsm or pred not in adata.obs:
        return None
    coords = np.asarray(adata.obsm[obsm_key])[:, :2].astype(float)
    labels = adata.obs[pred].astype(str).to_numpy()
    pos = {}
    for c in names:
        sel = labels == c
        pos[c] = np.median(coords[sel], axis=0) if sel.any() else coords.mean(0)
    return coords, pos


def _layout(layout, names: list[str], off: np.ndarray) -> dict[str, np.ndarray]:
    n = len(names)
    if isinstance(layout, dict):
        missing = [c for c in names if c not in layout]
        if missing:
            raise ValueError(f"layout lacks positions for {missing}.")
        return {c: np.asarray(layout[c], dtype=float) for c in names}
    if layout == "circle":
        angles = np.pi / 2 - 2 * np.pi * np.arange(n) / n
        return {c: np.array([np.cos(a), np.sin(a)]) for c, a in zip(names, angles, strict=True)}
    if layout == "spring":
        try:
            import networkx as nx
        except ImportError as err:
            raise ImportError(
                "layout='spring' needs networkx (pip install networkx); layout='circle' does not."
            ) from err
        g = nx.DiGraph()
        g.add_nodes_from(range(n))
        for i in range(n):
            for j in range(n):
                if off[i, j] > 0:
                    g.add_edge(i, j, weight=float(off[i, j]))
        pos = nx.spring_layout(g.to_undirected(), weight="weight", seed=0)
        return {c: np.asarray(pos[k]) for k, c in enumerate(names)}
    raise ValueError(f"layout must be 'circle', 'spring' or a dict of positions, not {layout!r}.")


def _node_sizes(adata, key, names, node_size, matrix) -> np.ndarray:
    n = len(names)
    weights = None
    if node_size == "stationary" and matrix is None and _keys.UNS_STATIONARY in adata.uns.get(key, {}):
        weights = np.asarray(adata.uns[key][_keys.UNS_STATIONARY], dtype=float)
    elif node_size == "stationary" and matrix is not None:
        weights = stationary_distribution(matrix.to_numpy(dtype=float))
    elif node_size == "prior" and _keys.UNS_ENTROPY in adata.uns.get(key, {}):
        weights = np.asarray(pd.DataFrame(adata.uns[key][_keys.UNS_ENTROPY])["prior"], dtype=float)
    elif node_size not in (None, "stationary", "prior"):
        raise ValueError(f"node_size must be 'stationary', 'prior' or None, not {node_size!r}.")
    if weights is None or len(weights) != n:
        return np.full(n, 500.0)
    w = weights / max(weights.max(), 1e-12)
    return 180.0 + 900.0 * np.sqrt(w)


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
    ax.set_yticks(y, [_read.wrap(names[k], wrap) for k in order], fontsize=max(6.0, min(9.0, 11 - 0.15 * len(names))))
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
