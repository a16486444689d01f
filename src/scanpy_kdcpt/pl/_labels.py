"""Node labels of graph plots that do not overlap: radial around a circle; on an embedding
beside each node when they fit there, else in two columns with a leader line to each node.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

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


def beside_nodes(
    ax: Axes, xy: np.ndarray, labels: list[str], *, offset_pt: np.ndarray, fontsize: float = 8
) -> list | None:
    """Labels just right of their nodes, when none would overlap another label or node (text
    size estimated: 0.6 font sizes a character); else ``None`` and nothing is drawn. Call after
    the axes limits are set.
    """
    per_x, per_y = data_per_point(ax)
    boxes = []
    for k, lab in enumerate(labels):
        lines = lab.split("\n")
        w = (0.6 * fontsize * max(len(line) for line in lines) + 4) * per_x
        h = (LINE * fontsize * len(lines) + 2) * per_y
        x0 = xy[k, 0] + offset_pt[k] * per_x
        boxes.append((x0, xy[k, 1] - h / 2, x0 + w, xy[k, 1] + h / 2))
    nodes = [
        (xy[k, 0] - r * per_x, xy[k, 1] - r * per_y, xy[k, 0] + r * per_x, xy[k, 1] + r * per_y)
        for k, r in enumerate(offset_pt)
    ]

    def hit(a, b) -> bool:
        return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]

    n = len(labels)
    for k in range(n):
        if any(hit(boxes[k], boxes[m]) for m in range(k + 1, n)) or any(
            hit(boxes[k], nodes[m]) for m in range(n) if m != k
        ):
            return None
    x_lo, x_hi = ax.get_xlim()
    if max(b[2] for b in boxes) > x_hi:
        return None
    return [
        ax.annotate(
            lab,
            xy[k],
            xytext=(offset_pt[k], 0),
            textcoords="offset points",
            ha="left",
            va="center",
            fontsize=fontsize,
            zorder=5,
            bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7},
        )
        for k, lab in enumerate(labels)
    ]
