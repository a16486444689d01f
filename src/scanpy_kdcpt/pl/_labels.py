"""Node labels of graph plots that do not overlap: radial around a circle; on an embedding
beside each node when they fit there (clear of the other labels, nodes and edges), else in two
columns with a leader line to each node.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import _read

if TYPE_CHECKING:
    from matplotlib.axes import Axes

#: height of a text line, in font sizes
LINE = 1.3


def spread(desired: np.ndarray, heights: np.ndarray) -> np.ndarray:
    """Centres as close as possible (least squares) to ``desired`` such that neighbouring
    intervals of ``heights`` do not overlap; the order of ``desired`` is kept.

    Pool-adjacent-violators on the offsets: blocks of touching intervals sit at the mean of
    their members' wishes.
    """
    desired = np.asarray(desired, dtype=float)
    heights = np.asarray(heights, dtype=float)
    n = len(desired)
    order = np.argsort(desired, kind="stable")
    d, h = desired[order], heights[order]
    # offset of each interval's centre from the bottom edge of a stack starting at 0
    offset = np.r_[0.0, np.cumsum(0.5 * (h[:-1] + h[1:]))] if n else np.zeros(0)
    blocks: list[list] = []  # [start value of the stack bottom, members]
    for k in range(n):
        blocks.append([d[k] - offset[k], [k]])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            b2, b1 = blocks.pop(), blocks.pop()
            members = b1[1] + b2[1]
            blocks.append([float(np.mean([d[m] - offset[m] for m in members])), members])
    out_sorted = np.empty(n)
    for base, members in blocks:
        for m in members:
            out_sorted[m] = base + offset[m]
    out = np.empty(n)
    out[order] = out_sorted
    return out


def data_per_point(ax: Axes) -> tuple[float, float]:
    """Data units per typographic point along x and y, at the axes' current limits and size."""
    box = ax.get_window_extent()
    dpi = ax.figure.dpi
    w_pt, h_pt = max(box.width, 1.0) * 72 / dpi, max(box.height, 1.0) * 72 / dpi
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    return abs(x1 - x0) / w_pt, abs(y1 - y0) / h_pt


def column_labels(
    ax: Axes,
    xy: np.ndarray,
    labels: list[str],
    *,
    left: float,
    right: float,
    fontsize: float = 8,
) -> list:
    """Labels in two columns, right-aligned at ``x = left`` for the nodes in the left half and
    left-aligned at ``x = right`` for the others, each as near its node's height as the others
    allow, joined to its node by a thin grey line. A column is kept within the axes' height,
    in a smaller font (down to 5 pt) when its labels need more. Call after the axes limits are set.
    """
    _, per_pt_y = data_per_point(ax)
    y_lo, y_hi = sorted(ax.get_ylim())
    centre = 0.5 * (left + right)
    lines = np.array([lab.count("\n") + 1 for lab in labels], dtype=float)
    y = xy[:, 1].astype(float).copy()
    texts = [None] * len(labels)
    on_left = xy[:, 0] < centre
    for side, x, ha in ((on_left, left, "right"), (~on_left, right, "left")):
        idx = np.flatnonzero(side)
        if not len(idx):
            continue
        need = float((lines[idx] * LINE * fontsize + 3.0).sum()) * per_pt_y
        size = fontsize if need <= y_hi - y_lo else max(5.0, fontsize * (y_hi - y_lo) / need)
        heights = (lines[idx] * LINE * size + 3.0) * per_pt_y
        y[idx] = spread(xy[idx, 1], heights)
        over = (y[idx] + heights / 2).max() - y_hi  # the stack kept inside the axes
        y[idx] -= max(over, 0.0)
        y[idx] += max(y_lo - (y[idx] - heights / 2).min(), 0.0)
        for k in idx:
            ax.plot([xy[k, 0], x], [xy[k, 1], y[k]], color="0.6", linewidth=0.6, zorder=2.5, solid_capstyle="round")
            texts[k] = ax.text(x, y[k], labels[k], ha=ha, va="center", fontsize=size, zorder=5)
    return texts


def radial_labels(ax: Axes, xy: np.ndarray, labels: list[str], *, offset_pt: np.ndarray, fontsize: float = 8) -> list:
    """Labels of nodes on a circle, each just outside its node along the radius, aligned away
    from the centre (left of the circle right-aligned, right of it left-aligned).
    """
    centre = xy.mean(0)
    texts = []
    for k, lab in enumerate(labels):
        d = xy[k] - centre
        d = d / (np.linalg.norm(d) or 1.0)
        ha = "left" if d[0] > 0.25 else "right" if d[0] < -0.25 else "center"
        va = "bottom" if d[1] > 0.5 else "top" if d[1] < -0.5 else "center"
        texts.append(
            ax.annotate(
                lab,
                xy[k],
                xytext=(d[0] * offset_pt[k], d[1] * offset_pt[k]),
                textcoords="offset points",
                ha=ha,
                va=va,
                fontsize=fontsize,
                zorder=5,
            )
        )
    return texts


#: where a label may stand beside its node, in the order tried: (direction, ha, va)
_SIDES = (
    ((1.0, 0.0), "left", "center"),
    ((-1.0, 0.0), "right", "center"),
    ((0.7071, 0.7071), "left", "bottom"),
    ((-0.7071, 0.7071), "right", "bottom"),
    ((0.7071, -0.7071), "left", "top"),
    ((-0.7071, -0.7071), "right", "top"),
    ((0.0, 1.0), "center", "bottom"),
    ((0.0, -1.0), "center", "top"),
)


def _segment_hits_box(p0: np.ndarray, p1: np.ndarray, box: tuple) -> bool:
    """Whether the segment ``p0``–``p1`` meets the box ``(x0, y0, x1, y1)`` (Liang–Barsky)."""
    d = p1 - p0
    t0, t1 = 0.0, 1.0
    for p, q in ((-d[0], p0[0] - box[0]), (d[0], box[2] - p0[0]), (-d[1], p0[1] - box[1]), (d[1], box[3] - p0[1])):
        if p == 0:
            if q < 0:
                return False
            continue
        t = q / p
        if p < 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
        if t0 > t1:
            return False
    return True


def _hit(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _blocked(box: tuple, boxes: list[tuple], segments: list) -> bool:
    """Whether ``box`` meets any of ``boxes`` or of the two-point ``segments`` (display pixels)."""
    return any(_hit(box, o) for o in boxes) or any(_segment_hits_box(p0, p1, box) for p0, p1 in segments)


def beside_nodes(
    ax: Axes,
    xy: np.ndarray,
    labels: list[str],
    *,
    offset_pt: np.ndarray,
    lines: list[np.ndarray] = (),
    avoid: list = (),
    fontsize: float = 8,
    partial: bool = False,
    renderer=None,
) -> list | dict | None:
    """Each label just beside its node, on the first of eight sides (right, left, the diagonals,
    above, below) where it covers no other label, node, edge (``lines``: polylines in display
    pixels) or artist of ``avoid`` and stays inside the axes; the most constrained labels are
    placed first. When some label has no such side, ``None`` and nothing is drawn; with
    ``partial``, the labels that have one are drawn and returned as ``{index: text}``. Call once
    the axes limits are final.
    """
    fig = ax.figure
    if renderer is None:  # text extents need a renderer and the final layout
        renderer = _read.renderer(fig)
    px = fig.dpi / 72.0
    centres = ax.transData.transform(xy)
    frame = _extent(ax, renderer)
    nodes = [
        (c[0] - r * px, c[1] - r * px, c[0] + r * px, c[1] + r * px) for c, r in zip(centres, offset_pt, strict=True)
    ]
    others = [_extent(a, renderer) for a in avoid]
    segments = [(pl[k], pl[k + 1]) for pl in lines for k in range(len(pl) - 1)]
    sizes = []
    for lab in labels:
        t = ax.text(0, 0, lab, fontsize=fontsize)
        b = t.get_window_extent(renderer)
        t.remove()
        sizes.append((b.width + 3.0, b.height + 2.0))  # the white box's padding

    def box(k: int, side: int) -> tuple:
        (dx, dy), ha, va = _SIDES[side]
        w, h = sizes[k]
        x = centres[k, 0] + dx * offset_pt[k] * px
        y = centres[k, 1] + dy * offset_pt[k] * px
        x0 = x if ha == "left" else x - w if ha == "right" else x - w / 2
        y0 = y if va == "bottom" else y - h if va == "top" else y - h / 2
        return (x0, y0, x0 + w, y0 + h)

    def free(k: int, b: tuple) -> bool:
        if b[0] < frame[0] or b[2] > frame[2] or b[1] < frame[1] or b[3] > frame[3]:
            return False
        return not _blocked(b, [nodes[m] for m in range(len(labels)) if m != k] + others, segments)

    options = [[s for s in range(len(_SIDES)) if free(k, box(k, s))] for k in range(len(labels))]
    placed: dict[int, int] = {}
    for k in sorted(range(len(labels)), key=lambda k: len(options[k])):
        side = next((s for s in options[k] if not any(_hit(box(k, s), box(m, t)) for m, t in placed.items())), None)
        if side is None and not partial:
            return None
        if side is not None:
            placed[k] = side
    texts = {}
    for k in sorted(placed):
        (dx, dy), ha, va = _SIDES[placed[k]]
        lab = labels[k]
        texts[k] = ax.annotate(
            lab,
            xy[k],
            xytext=(dx * offset_pt[k], dy * offset_pt[k]),
            textcoords="offset points",
            ha=ha,
            va=va,
            fontsize=fontsize,
            zorder=5,
            bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7},
        )
    return texts if partial else [texts[k] for k in range(len(labels))]


def mixed_labels(
    ax: Axes,
    xy: np.ndarray,
    labels: list[str],
    *,
    offset_pt: np.ndarray,
    left: float,
    right: float,
    lines: list[np.ndarray] = (),
    avoid: list = (),
) -> None:
    """Labels beside the nodes where they fit (:func:`beside_nodes`), the others in the two
    columns of :func:`column_labels`, each joined to its node: only crowded nodes get a leader
    line. A label beside its node that a column label or a leader line would cover goes to the
    columns too.
    """
    renderer = _read.renderer(ax.figure)
    beside = beside_nodes(
        ax, xy, labels, offset_pt=offset_pt, lines=lines, avoid=avoid, partial=True, renderer=renderer
    )
    rest = [k for k in range(len(labels)) if k not in beside]
    while rest:
        n_lines = len(ax.lines)
        columns = column_labels(ax, xy[rest], [labels[k] for k in rest], left=left, right=right)
        leaders = ax.lines[n_lines:]
        taken = [_extent(t, renderer) for t in columns]
        segments = [ax.transData.transform(np.column_stack(line.get_data())) for line in leaders]
        clash = [k for k, t in beside.items() if _blocked(_extent(t, renderer), taken, segments)]
        if not clash:
            return
        for artist in [*columns, *leaders, *(beside.pop(k) for k in clash)]:
            artist.remove()
        rest = sorted(rest + clash)


def _extent(artist, renderer) -> tuple:
    """An artist's box in display pixels, ``(x0, y0, x1, y1)``."""
    b = artist.get_window_extent(renderer)
    return (b.x0, b.y0, b.x1, b.y1)
