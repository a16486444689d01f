"""Transition matrix heatmap and transition graph (from ``.uns[key]`` only)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from .. import _keys
from .._errors import InvalidInputError
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
            # the stored axes use h5ad-safe names ("/" → "_"); uns["classes"] the real ones
            P = pd.DataFrame(P.to_numpy(), index=names, columns=names)
    else:
        P = matrix
    P = P.astype(float)
    if P.shape[0] != P.shape[1]:
        raise InvalidInputError(f"A transition matrix must be square, got shape {P.shape}.")
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
    ax.grid(False)  # no style grid through the cells and their numbers
    ax.set_xticks(range(n), _read.wrap_names(P.columns, wrap), rotation=60, ha="right", rotation_mode="anchor")
    ylabels = _read.wrap_names(names, wrap)
    if matrix is None and _keys.UNS_PHENOTYPE_MASS in adata.uns.get(key, {}):  # a row of a handful of
        cells = _mass(adata, key, n) * adata.n_obs  # cells reads like any other: say how few
        ylabels = [f"{lab} (≈{c:.0f} cells)" if c < THIN_ROW else lab for lab, c in zip(ylabels, cells, strict=True)]
    ax.set_yticks(range(n), ylabels)
    small = max(5.5, min(9.0, 11 - 0.25 * n))
    ax.tick_params(labelsize=small, length=0)
    posterior = matrix is None and str(adata.uns.get(key, {}).get(_keys.UNS_TRANSITION_METHOD, "")) == "posterior"
    if posterior:  # rows: the cells of a phenotype; columns: their mean probability of each (no move)
        ax.set_xlabel("mean predicted probability of phenotype")
        ax.set_ylabel("cells of phenotype")
    else:
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
    cbar.set_label("mean probability" if posterior else "transition probability")
    ax.set_title(title if title is not None else _matrix_title(adata, key, matrix))
    return _read.finish(fig, ax, show, return_fig, save)


def _matrix_title(adata: AnnData, key: str, matrix) -> str:
    """What the drawn matrix is: a directed chain's (and what directs it) or the posterior form."""
    uns = adata.uns.get(key, {}) if matrix is None else {}
    method = str(uns.get("transition_method", "")) if isinstance(uns, dict) else ""
    if method == "directed":
        direction = uns.get("direction", {})
        kind = str(direction.get("kind", "")) if isinstance(direction, dict) else ""
        if kind and kind != "none":
            return f"Directed transition matrix ({kind} chain)\ndiagonal = stability"
        return "Transition matrix of an undirected cell chain\ndiagonal = stability"
    if method == "posterior":
        return "Transition matrix, posterior form (no direction)\ndiagonal = stability"
    return "Transition matrix (diagonal = stability)"


@doc_params("doc_key", "doc_wrap_title", "doc_show_save_ax", "doc_returns")
def transition_graph(
    adata: AnnData,
    *,
    key: str = _keys.DEFAULT_KEY,
    matrix: pd.DataFrame | None = None,
    directed: bool | None = None,
    weights: Literal["flux", "probability", "similarity"] | None = None,
    basis: str | None = "umap",
    threshold: float | None = None,
    max_edges: int | None = None,
    layout: Literal["circle", "spring"] | dict[str, tuple[float, float]] = "circle",
    node_size: Literal["auto", "stationary", "mass"] | None = "auto",
    edge_labels: bool = False,
    max_width: float = 6.0,
    wrap: int = 18,
    title: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    save: str | bool | None = None,
) -> Axes | Figure | None:
    """Phenotypes as nodes; a directed chain's net flux as arrows, an undirected one's similarity
    as plain edges.

    A **directed** chain (``model.compute_transitions`` with a direction signal) is drawn with
    ``weights="flux"`` (default): each pair of phenotypes gets at most one arrow, in the
    direction of its net flux ``F_ij - F_ji`` (``F = diag(n) P``), above ``threshold``: a
    reader can follow where cells go. ``weights="probability"`` draws every transition
    ``P[i, j]`` above ``threshold`` (both directions). Nodes are sized by the stationary
    distribution.

    An **undirected** chain (the default posterior form, or a chain built without a direction
    signal) has no direction to draw: ``n_i P_ij ≠ n_j P_ji`` there only by noise. Each pair
    gets one line without arrowhead, its width the symmetrised similarity
    ``S_ij = (n_i P_ij + n_j P_ji) / (n_i + n_j)`` (``n``: phenotype mass, the share of the
    cells; :func:`scanpy_kdcpt.markov.symmetrized`); nodes are sized by the phenotype mass.

    Nodes sit at the phenotype centroids of ``.obsm["X_{basis}"]`` when it exists (over the
    cells, in grey; each label beside its node, clear of the other labels, nodes and edges; the
    labels of crowded nodes that have no room there stand in a column beside the cells, each
    joined to its node), else on a circle (labels outside it).

    Parameters
    ----------
    adata
        AnnData annotated by ``model.annotate()`` (or ``model.compute_transitions()``).
    {doc_key}
    matrix
        Draw this matrix instead of the stored one (mass from the stored phenotype mass).
    directed
        Whether the chain has a direction. Default: from ``.uns[key]["transition_method"]``
        and ``["direction"]`` (a directed chain biased by a direction signal); ``False`` with
        ``matrix``.
    weights
        Directed chains: ``"flux"`` (default; net flux, ``.uns[key]["flux"]``) or
        ``"probability"`` (``P[i, j]``). Undirected chains: ``"similarity"`` (the only choice).
    basis
        Embedding for the node positions (``.obsm["X_" + basis]``, phenotypes from
        ``.obs["{key}_pred"]``); ``None`` or absent: ``layout``.
    threshold
        Hide edges below it. Default: 10 % of the largest net flux or similarity, 5 % of
        the largest off-diagonal probability.
    max_edges
        Keep only the strongest edges (default: twice the number of phenotypes, at most 20,
        so that the graph stays readable; the title says how many are drawn).
    layout
        Without an embedding: ``"circle"``, ``"spring"`` (needs networkx) or a dict
        phenotype → (x, y).
    node_size
        ``"stationary"`` (directed chains only), ``"mass"`` (share of the cells), ``"auto"``
        (stationary when directed, else mass) or ``None`` for equal sizes.
    edge_labels
        Write the value on each edge.
    max_width
        Width (points) of the strongest edge.
    {doc_wrap_title}
    {doc_show_save_ax}

    {doc_returns}

    """
    from matplotlib.collections import LineCollection
    from matplotlib.patches import FancyArrowPatch

    from ..markov import symmetrized
    from . import _labels

    P = _matrix(adata, key, matrix)
    names = [str(c) for c in P.index]
    n = len(names)
    values = P.to_numpy()
    if directed is None:
        directed = _stored_directed(adata, key) if matrix is None else False
    if weights is None:
        weights = "flux" if directed else "similarity"
    allowed = ("flux", "probability") if directed else ("similarity",)
    if weights not in allowed:
        why = "" if directed else " (an undirected chain, such as the posterior form, has no direction to draw)"
        raise InvalidInputError(f"weights must be one of {allowed} for this chain{why}, not {weights!r}.")
    mass = _mass(adata, key, n)
    if weights == "flux":
        off = np.clip(_flux(adata, key, P, matrix, mass), 0.0, None)
    elif weights == "similarity":
        off = np.triu(symmetrized(values, mass), 1)  # one edge per pair
    else:
        off = values.copy()
    np.fill_diagonal(off, 0.0)
    emb = _embedding(adata, key, basis, names)
    if emb is not None and not emb[1]:  # none of the matrix's names is a predicted phenotype
        warnings.warn(
            "None of the matrix's phenotypes is among the predicted phenotypes of adata.obs: drawn with "
            "layout= instead of on the embedding.",
            UserWarning,
            stacklevel=2,
        )
        emb = None
    # a phenotype no cell is predicted as has no place on the embedding: not drawn, nor its edges,
    # which neither set the threshold nor count among the arrows
    unplaced = [c for c in names if emb is not None and c not in emb[1]]
    dropped = [k for k, c in enumerate(names) if c in unplaced]
    off[dropped, :] = 0.0
    off[:, dropped] = 0.0
    top = off.max() if off.size else 0.0
    if threshold is None:
        threshold = (0.05 if weights == "probability" else 0.10) * top
    edges = [
        (i, j, off[i, j]) for i in range(n) for j in range(n) if i != j and off[i, j] > 0 and off[i, j] >= threshold
    ]
    edges.sort(key=lambda e: -e[2])
    n_pass = len(edges)  # above the threshold; the title says when fewer are drawn
    edges = edges[: min(2 * n, MAX_EDGES) if max_edges is None else max_edges]

    cols = _read.colors(adata, key, names)
    labels = [
        f"{_read.wrap(c, wrap, 3)}\n(stay {values[k, k]:.2f})" if weights == "probability" else _read.wrap(c, wrap, 3)
        for k, c in enumerate(names)
    ]
    # beside an embedding the labels may stand in two columns: tall enough for about half of them each
    tall = 1.6 + 0.6 * sum(lab.count("\n") + 1 for lab in labels) * _labels.LINE * 8 / 72
    own_figure = ax is None
    fig, ax = _read.new_axes(ax, (8.4, max(5.6, tall)) if emb is not None or layout != "circle" else (6.4, 5.6))
    if emb is not None:
        coords, pos = emb
        ax.scatter(coords[:, 0], coords[:, 1], s=3, c="#d9d9d9", linewidths=0, zorder=1, rasterized=True)
    else:
        pos = _layout(layout, names, off)
    sizes = _node_sizes(adata, key, names, node_size, matrix, directed, mass) * (0.6 if emb is not None else 1.0)
    if unplaced:  # their edges are gone already: renumber the others
        keep = [k for k, c in enumerate(names) if c in pos]
        new = {k: i for i, k in enumerate(keep)}
        edges = [(new[i], new[j], p) for i, j, p in edges]
        names, labels, sizes = [names[k] for k in keep], [labels[k] for k in keep], sizes[keep]
    xy = np.array([pos[c] for c in names])
    if emb is None and layout == "circle":
        pad = 0.42 * max(np.ptp(xy[:, 0]), np.ptp(xy[:, 1]), 1e-9)
        ax.set_xlim(xy[:, 0].min() - pad, xy[:, 0].max() + pad)
        ax.set_ylim(xy[:, 1].min() - pad, xy[:, 1].max() + pad)
        ax.set_aspect("equal")
    else:  # the cells (or nodes) in the middle; room for a label column on each side
        pts = coords if emb is not None else xy
        lo, hi = pts.min(0), pts.max(0)
        width, height = max(hi[0] - lo[0], 1e-9), max(hi[1] - lo[1], 1e-9)
        left, right = lo[0] - 0.05 * width, hi[0] + 0.05 * width
        room = 0.45 * width  # a label column, in data units
        ax.set_xlim(left - room, right + room)
        ax.set_ylim(lo[1] - 0.05 * height, hi[1] + 0.05 * height)
    ax.axis("off")  # before anything is measured: it changes the axes' box
    what = {"flux": "net flux", "probability": "P", "similarity": "similarity"}[weights]
    kind = "arrows" if directed else "edges"
    unit = " cells per step" if weights == "flux" else ""  # F = diag(n) P: cells moving i → j per step, net
    kinds = kind if len(edges) != 1 else kind[:-1]
    if not edges:
        shown = f"no {what} above the threshold"
    elif n_pass > len(edges):  # not every edge above the threshold: say how many are left out
        shown = f"the {len(edges)} largest of {n_pass} {kind} with {what} ≥ {threshold:.2g}{unit}"
    else:
        shown = f"{len(edges)} {kinds}, {what} ≥ {threshold:.2g}{unit}"
    if unplaced:
        shown += f"\nnot drawn (no cell predicted): {', '.join(unplaced[:3])}{' ...' if len(unplaced) > 3 else ''}"
    method = adata.uns.get(key, {}).get(_keys.UNS_TRANSITION_METHOD) if matrix is None else None
    head = {
        "flux": "Net flux between phenotypes",
        "probability": "Transition graph",
        "similarity": "Phenotype similarity, no direction",
    }[weights]
    if method is not None:
        head += f" ({method})"
    if weights == "similarity":
        shown += "\nedge: (n_i P_ij + n_j P_ji) / (n_i + n_j); node size: share of cells"
    elif node_size in ("auto", "stationary", "mass"):  # say what the nodes' size means
        shown += "\nnode size: " + ("share of cells" if node_size == "mass" else "stationary distribution")
        if emb is None and directed:  # arrows then take their source's colour
            shown += "; arrow colour: its source"
    ax.set_title(title if title is not None else f"{head}\n{shown}", fontsize=10)
    # nodes joined by an edge must not cover it: shrink all nodes alike (their ratios are the
    # information) until every edge shows its shaft and head between the nodes, down to a floor
    dist_pt = _node_distances_pt(fig, ax, xy)
    edge_width = {(i, j): 0.6 + (max_width - 0.6) * p / top if top > 0 else 1.0 for i, j, p in edges}
    gap_pt = {e: _ARROW_HEAD * (8 + 2.2 * w) + 6.0 if weights != "similarity" else 4.0 for e, w in edge_width.items()}
    radius_pt = np.sqrt(sizes / np.pi)
    if edges:
        need = [(dist_pt[i, j] - gap_pt[i, j]) / (radius_pt[i] + radius_pt[j]) for i, j, _ in edges]
        sizes = sizes * float(np.clip(min(need), 0.45, 1.0)) ** 2
    ax.scatter(xy[:, 0], xy[:, 1], s=sizes, c=[cols[c] for c in names], edgecolors="black", linewidths=0.8, zorder=3)
    radius_pt = np.sqrt(sizes / np.pi)
    drawn = edges[::-1]  # weakest first, strongest on top
    # an arrow takes its source's colour; an undirected edge has no source
    colors = [cols[names[i]] if emb is None and directed else "#333333" for i, _, _ in drawn]
    widths = [edge_width[i, j] for i, j, _ in drawn]
    rad = 0.0 if weights in ("flux", "similarity") else 0.18  # two-way arrows of P bend apart
    arrows = []
    if weights == "similarity":  # plain lines, no heads; the nodes (above) cover their ends
        segments = [[xy[i], xy[j]] for i, j, _ in drawn]
        ax.add_collection(
            LineCollection(segments, linewidths=widths, colors=colors, alpha=0.6, zorder=2, capstyle="round")
        )
    else:
        segments = []
        for (i, j, _), width, color in zip(drawn, widths, colors, strict=True):
            # nodes still too close (centroids nearly on top of each other): the arrow goes over them
            over = dist_pt[i, j] - radius_pt[i] - radius_pt[j] < gap_pt[i, j]
            arrows.append(
                FancyArrowPatch(
                    xy[i],
                    xy[j],
                    connectionstyle=f"arc3,rad={rad}",
                    arrowstyle=f"-|>,head_length={_ARROW_HEAD},head_width={_ARROW_HEAD / 2}",
                    mutation_scale=8 + 2.2 * width,
                    linewidth=width,
                    color=color,
                    alpha=0.85,
                    shrinkA=0.0 if over else radius_pt[i] + 1,
                    shrinkB=0.0 if over else radius_pt[j] + 2,
                    zorder=4 if over else 2,
                )
            )
            ax.add_patch(arrows[-1])
    numbers = []
    if edge_labels:
        # each number on its own arrow: at the middle of the arc (matplotlib's arc3 control point
        # is the chord's middle + rad · (dy, −dx) in display space, so the curve's middle is half
        # that), which puts the numbers of i → j and j → i on opposite sides, not on top of each
        # other; on a short arc, at least a number's height from the chord
        disp = ax.transData.transform(xy)
        least = 8.0 * fig.dpi / 72.0  # pixels: half a 7-pt number's box and a little
        for i, j, p in edges:
            dx, dy = disp[j] - disp[i]
            normal = np.array([dy, -dx])
            length = float(np.hypot(dx, dy)) or 1.0
            bend = max(0.5 * abs(rad) * length, least) if rad else 0.0
            mid = 0.5 * (disp[i] + disp[j]) + bend * normal / length
            numbers.append(
                ax.text(
                    *ax.transData.inverted().transform(mid),
                    f"{p:.2g}",
                    fontsize=7,
                    ha="center",
                    va="center",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
                    zorder=4,
                )
            )
    if emb is None and layout == "circle":
        _labels.radial_labels(ax, xy, labels, offset_pt=radius_pt + 4)
    else:  # labels beside the nodes clear of the edges, or in a column on each side
        lines = [ax.transData.transform(np.asarray(seg)) for seg in segments]
        lines += [ax.transData.transform(poly) for a in arrows for poly in a.get_path().to_polygons(closed_only=False)]
        texts = _labels.beside_nodes(ax, xy, labels, offset_pt=radius_pt + 3, lines=lines, avoid=numbers)
        if texts is None:  # those that fit beside their nodes, the crowded ones in columns
            _labels.mixed_labels(
                ax, xy, labels, offset_pt=radius_pt + 3, left=left, right=right, lines=lines, avoid=numbers
            )
        elif own_figure:  # the room kept for label columns is not needed
            _trim_width(fig, ax, pts, xy, radius_pt, texts + numbers)
    return _read.finish(fig, ax, show, return_fig, save)


#: rows of fewer cells (membership mass) than this are marked with their count
THIN_ROW = 20

#: the most edges drawn by default (beyond it arrows cross into a wall no direction can be read from)
MAX_EDGES = 20

#: arrow head length as a share of the arrow's mutation scale (Matplotlib's default for "-|>")
_ARROW_HEAD = 0.4


def _trim_width(fig: Figure, ax: Axes, pts: np.ndarray, xy: np.ndarray, radius_pt: np.ndarray, texts: list) -> None:
    """Narrow the axes' x-range to what is drawn (cells, nodes, labels) and the figure by as much,
    so that the drawing keeps its scale and only the empty sides go. The title keeps its room.
    """
    renderer = _read.renderer(fig)
    px = fig.dpi / 72.0
    x_pts = ax.transData.transform(pts)[:, 0]
    x_nodes = ax.transData.transform(xy)[:, 0]
    extents = [b for b in (t.get_window_extent(renderer) for t in texts)]
    lo = min(x_pts.min(), (x_nodes - radius_pt * px).min(), *(b.x0 for b in extents)) - 8 * px
    hi = max(x_pts.max(), (x_nodes + radius_pt * px).max(), *(b.x1 for b in extents)) + 8 * px
    box = ax.get_window_extent(renderer)
    title = ax.title.get_window_extent(renderer).width + 8 * px
    keep = max(hi - lo, title)
    lo, hi = 0.5 * (lo + hi) - 0.5 * keep, 0.5 * (lo + hi) + 0.5 * keep
    cut = box.width - (hi - lo)
    if cut <= 0:
        return
    inverse = ax.transData.inverted()
    ax.set_xlim(inverse.transform((lo, 0))[0], inverse.transform((hi, 0))[0])
    width, height = fig.get_size_inches()
    fig.set_size_inches(width - cut / fig.dpi, height)


def _node_distances_pt(fig: Figure, ax: Axes, xy: np.ndarray) -> np.ndarray:
    """The nodes' pairwise distances in points once the figure is laid out (title set, limits
    final), a little under them for the room the labels still take.
    """
    fig.draw_without_rendering()
    ax.apply_aspect()
    disp = ax.transData.transform(xy) * 72.0 / fig.dpi
    return np.sqrt(((disp[:, None, :] - disp[None, :, :]) ** 2).sum(-1)) * 0.95


def _stored_directed(adata: AnnData, key: str) -> bool:
    """Whether the stored transition matrix comes from a directed chain."""
    from ..results import Transitions

    uns = adata.uns.get(key, {})
    direction = uns.get(_keys.UNS_DIRECTION, {})
    direction = direction if isinstance(direction, dict) else {}
    return Transitions.is_directed(str(uns.get(_keys.UNS_TRANSITION_METHOD, "posterior")), direction)


def _mass(adata: AnnData, key: str, n: int) -> np.ndarray:
    """Phenotype mass (share of the cells): ``.uns[key]["phenotype_mass"]``, else the entropy
    table's priors (files written before it), else uniform.
    """
    uns = adata.uns.get(key, {})
    if _keys.UNS_PHENOTYPE_MASS in uns and np.size(uns[_keys.UNS_PHENOTYPE_MASS]) == n:
        w = np.asarray(uns[_keys.UNS_PHENOTYPE_MASS], dtype=float).ravel()
    elif _keys.UNS_ENTROPY in uns and len(pd.DataFrame(uns[_keys.UNS_ENTROPY])) == n:
        w = np.asarray(pd.DataFrame(uns[_keys.UNS_ENTROPY])["prior"], dtype=float)
    else:
        w = np.ones(n)
    return w / w.sum() if w.sum() > 0 else np.full(n, 1.0 / max(n, 1))


def _flux(adata: AnnData, key: str, P: pd.DataFrame, matrix: pd.DataFrame | None, mass: np.ndarray) -> np.ndarray:
    """Net flux: the stored ``.uns[key]["flux"]``, or from ``P`` and the phenotype mass."""
    from ..markov import net_flux

    stored = adata.uns.get(key, {}).get(_keys.UNS_FLUX) if matrix is None else None
    if stored is not None and np.shape(stored) == P.shape:
        return np.asarray(stored, dtype=float)
    return net_flux(P.to_numpy(float), mass)


def _embedding(adata: AnnData, key: str, basis: str | None, names: list[str]):
    """Cell coordinates and phenotype centroids on ``.obsm["X_{basis}"]``, or None."""
    if basis is None:
        return None
    obsm_key = _keys.basis_key(adata.obsm, basis)
    pred = _keys.Keys(key).pred
    if obsm_key not in adata.obsm or pred not in adata.obs:
        if basis != "umap" and obsm_key not in adata.obsm:  # asked for by name: a typo would pass unseen
            warnings.warn(
                f"adata.obsm[{obsm_key!r}] not found: the graph is drawn with layout= instead of on the embedding "
                f"(embeddings: {_read.embeddings(adata)}).",
                UserWarning,
                stacklevel=3,
            )
        return None
    coords = np.asarray(adata.obsm[obsm_key])[:, :2].astype(float)
    placed = np.isfinite(coords).all(1)  # cells without coordinates (NaN) are left out
    coords, labels = coords[placed], adata.obs[pred].astype(str).to_numpy()[placed]
    if not len(coords):
        raise InvalidInputError(f"adata.obsm[{obsm_key!r}] has no cell with finite coordinates.")
    uniq, inverse = np.unique(labels, return_inverse=True)  # names of a stored matrix's columns, per phenotype
    safe = np.asarray([_keys.safe_name(u) for u in uniq], dtype=object)[inverse]
    pos = {}
    for c in names:
        sel = (labels == c) | (safe == c)
        if sel.any():  # a phenotype no cell is predicted as has no place: left out
            pos[c] = np.median(coords[sel], axis=0)
    return coords, pos


def _layout(layout, names: list[str], off: np.ndarray) -> dict[str, np.ndarray]:
    n = len(names)
    if isinstance(layout, dict):
        missing = [c for c in names if c not in layout]
        if missing:
            raise InvalidInputError(f"layout lacks positions for {missing}.")
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
    raise InvalidInputError(f"layout must be 'circle', 'spring' or a dict of positions, not {layout!r}.")


def _node_sizes(adata, key, names, node_size, matrix, directed, mass) -> np.ndarray:
    n = len(names)
    if node_size == "prior":  # the former name of the phenotype mass
        node_size = "mass"
    if node_size == "auto":
        node_size = "stationary" if directed else "mass"
    if node_size not in (None, "stationary", "mass"):
        raise InvalidInputError(f"node_size must be 'auto', 'stationary', 'mass' or None, not {node_size!r}.")
    if node_size == "stationary" and not directed:
        raise InvalidInputError(
            "node_size='stationary' needs a directed chain: the stationary vector of an undirected one "
            "(the posterior form) is not a state cells reach. Use node_size='mass' (share of the cells)."
        )
    weights = None
    if node_size == "stationary":
        stored = adata.uns.get(key, {}).get(_keys.UNS_STATIONARY) if matrix is None else None
        if stored is not None and np.size(stored) == n:
            weights = np.asarray(stored, dtype=float)
        else:
            weights = stationary_distribution(_matrix(adata, key, matrix).to_numpy(dtype=float))
    elif node_size == "mass":
        weights = mass
    if weights is None or len(weights) != n:
        return np.full(n, 500.0)
    w = weights / max(weights.max(), 1e-12)
    return 180.0 + 900.0 * np.sqrt(w)
