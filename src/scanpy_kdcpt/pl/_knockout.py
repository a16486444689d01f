"""Knockout plots: the change of the transition matrix for one gene, and effects ranked."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .. import _keys
from .._errors import InvalidInputError, KeyNotFoundError
from .._utils import closest_names
from . import _read
from ._docs import doc_params

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


#: the least top of knockout_effects' y axis (mean TV distance)
EFFECT_SCALE_FLOOR = 0.01


def _pick_mode(frame: pd.DataFrame, mode: str | None) -> pd.DataFrame:
    modes = list(dict.fromkeys(frame["mode"].astype(str))) if "mode" in frame.columns else []
    if mode is None:
        return (
            frame
            if len(modes) <= 1
            else frame[frame["mode"].astype(str) == ("delete" if "delete" in modes else modes[0])]
        )
    if mode not in modes:
        raise InvalidInputError(f"No knockout with mode={mode!r} in the AnnData; modes screened: {modes}.")
    return frame[frame["mode"].astype(str) == mode]


def _fixed_note(adata: AnnData, key: str) -> str:
    """A title line when the knockouts could not reach the prediction branch."""
    params = adata.uns.get(key, {}).get(_keys.UNS_KNOCKOUT_PARAMS, {})
    fixed = params.get("prediction_branch_fixed", False) if isinstance(params, dict) else False
    return "\n(prediction branch fixed: external embedding not recomputed)" if bool(fixed) else ""


def _has_fates(adata: AnnData, key: str, gene: str) -> bool:
    """Whether the knockout of ``gene`` also has fate changes (a directed chain was perturbed)."""
    fate = adata.uns.get(key, {}).get(_keys.UNS_KNOCKOUT_FATE)
    return isinstance(fate, pd.DataFrame) and "gene" in fate and bool((fate["gene"].astype(str) == str(gene)).any())


# -- the plots --------------------------------------------------------------------------------
@doc_params("doc_key", "doc_show_save_ax", "doc_returns")
def knockout(
    adata: AnnData,
    gene: str | None = None,
    *,
    mode: str | None = None,
    key: str = _keys.DEFAULT_KEY,
    cmap: str = "RdBu_r",
    annotate: bool | None = None,
    min_delta: float = 0.005,
    wrap: int = 18,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    save: str | bool | None = None,
) -> Axes | Figure | None:
    """Heatmap of the change of the transition matrix, ``delta = P_ko - P``, for one knockout.

    Rows are source phenotypes, columns target phenotypes; blue cells lose probability, red
    cells gain it; only changes that read as numbers are written (see ``annotate``).
    Terminated transitions (``P`` above the floor falling below a fraction of itself) are
    outlined in black and marked ``×``.

    Parameters
    ----------
    adata
        AnnData with ``.uns[key]["knockout"]`` (written by ``model.knockout``; a re-read
        ``.h5ad`` works, no model needed).
    gene
        Knocked-out gene or gene-set name (default: the one with the largest effect).
    mode
        ``"delete"`` or ``"overexpress"`` when both were screened (default ``"delete"``).
    {doc_key}
    cmap
        Diverging colormap, centred on 0.
    annotate
        Write the readable deltas in their cells: ``|delta|`` at least ``min_delta`` and 20 %
        of the largest, in a font that fits the cell. Default: when the cells leave room for
        a number; ``True``: also in a dense grid; ``False``: never.
    min_delta
        Smallest ``|delta|`` written (smaller changes read as ``+0.00`` and are left blank).
    wrap
        Break phenotype names longer than this over lines.
    {doc_show_save_ax}

    {doc_returns}

    """
    table = _read.uns_entry(adata, key, _keys.UNS_KNOCKOUT, "model.knockout(...)")
    if gene is None:
        summary = _read.uns_entry(adata, key, _keys.UNS_KNOCKOUT_SUMMARY, "model.knockout(...)")
        summary = _pick_mode(summary, mode)
        gene = str(summary.sort_values("effect", ascending=False)["gene"].iloc[0])
    if str(gene) in set(table["gene"].astype(str)):  # the gene first: one only overexpressed has no deletion
        table = table[table["gene"].astype(str) == str(gene)]
    table = _pick_mode(table, mode)
    rows = table[table["gene"].astype(str) == str(gene)]
    if not len(rows):
        screened = list(dict.fromkeys(table["gene"].astype(str)))
        close = closest_names([str(gene)], screened)[str(gene)]
        raise KeyNotFoundError(
            f"No knockout of {gene!r} in adata.uns[{key!r}]['knockout']"
            + (f"; did you mean {close}?" if close else f"; screened: {screened[:10]}")
            + " Run model.knockout(gene) first."
        )
    src_order = list(rows["source"].cat.categories) if hasattr(rows["source"], "cat") else None
    tgt_order = list(rows["target"].cat.categories) if hasattr(rows["target"], "cat") else None
    delta = rows.pivot_table(index="source", columns="target", values="delta", observed=False, sort=False)
    term = rows.pivot_table(index="source", columns="target", values="terminated", aggfunc="max", observed=False)
    if src_order is not None:
        delta = delta.reindex(index=src_order, columns=tgt_order)
        term = term.reindex(index=src_order, columns=tgt_order)
    D = delta.to_numpy(dtype=float)
    T = term.fillna(False).to_numpy(dtype=bool)
    n_r, n_c = D.shape
    labelsize = max(6.0, min(9.0, 11 - 0.25 * max(n_r, n_c)))
    cell = 0.5 if max(n_r, n_c) <= 12 else 0.32
    line = labelsize * 1.4 / 72  # inches per line of label text
    xlabels = _read.wrap_names(delta.columns, wrap)
    ylabels = _read.wrap_names(delta.index, wrap)
    # wrapped labels must clear their neighbours (x: rotated by 60°), else one line each
    if _lines(xlabels) * line / np.sin(np.radians(60)) > cell:
        xlabels = [str(c) for c in delta.columns]
    if _lines(ylabels) * line > cell:
        ylabels = [str(r) for r in delta.index]
    width = 1.6 + _text_width(ylabels, labelsize) + cell * n_c
    height = 1.1 + _text_width(xlabels, labelsize) * np.sin(np.radians(60)) + _lines(xlabels) * line + cell * n_r
    fig, ax = _read.new_axes(ax, (width, height))
    vmax = float(np.nanmax(np.abs(D))) if np.isfinite(D).any() else 1.0
    vmax = vmax if vmax > 0 else 1e-3
    im = ax.imshow(D, cmap=cmap, vmin=-vmax, vmax=vmax, aspect="equal")
    ax.grid(False)  # no style grid through the cells and their numbers
    ax.set_xticks(
        range(n_c),
        xlabels,
        rotation=60,
        ha="right",
        rotation_mode="anchor",
        fontsize=labelsize,
    )
    ax.set_yticks(range(n_r), ylabels, fontsize=labelsize)
    ax.tick_params(length=0)
    ax.set_xlabel("target phenotype")
    ax.set_ylabel("source phenotype")
    mode_name = str(rows["mode"].iloc[0]) if "mode" in rows.columns else "delete"
    verb = "knockout" if mode_name == "delete" else "overexpression"
    from matplotlib.patches import Rectangle

    for i, j in zip(*np.nonzero(T), strict=True):
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2.2))
        dark = np.isfinite(D[i, j]) and abs(D[i, j]) > 0.6 * vmax
        ax.text(
            j + 0.44,
            i - 0.44,
            "×",
            ha="right",
            va="top",
            fontsize=9,
            fontweight="bold",
            color="white" if dark else "black",
        )
    # a colour bar as tall as the square heatmap (shrink= on an aspect-equal axes overran its title),
    # as an inset of the axes so that a constrained layout makes room for it in a user's grid
    cax = ax.inset_axes([1.03, 0.0, 0.035, 1.0])
    cb = fig.colorbar(im, cax=cax)
    cb.set_label("Δ P (knockout − base)")
    lines = [f"{gene} {verb}: change of transition probabilities"]
    if _has_fates(adata, key, gene):  # the simulated shift moved the chain: its fates are drawn elsewhere
        lines.append("(classifier memberships; on the chain: pl.knockout_fate, pl.knockout_flux)")
    if annotate is None or annotate:
        shown, size = _annotate_deltas(ax, D, vmax, min_delta=min_delta, force=bool(annotate))
        if shown == 0 and np.isfinite(D).any() and vmax < min_delta:
            lines.append(f"every |Δ| < {min_delta:g}: no numbers written")
        elif shown < np.isfinite(D).sum() and size is not None:
            lines.append(f"numbers: |Δ| ≥ {max(min_delta, _ANNOTATE_FRACTION * vmax):.2g}")
    if T.any():
        lines.append("boxed ×: terminated transition")
    ax.set_title("\n".join(lines) + _fixed_note(adata, key), fontsize=10)
    return _read.finish(fig, ax, show, return_fig, save)


#: deltas below this fraction of the largest one are not written in their cell
_ANNOTATE_FRACTION = 0.2


def _lines(labels: list[str]) -> int:
    """The most lines of any label."""
    return max((label.count("\n") + 1 for label in labels), default=1)


def _text_width(labels: list[str], size: float) -> float:
    """Inches of the longest line of the labels at font ``size`` (an average glyph width)."""
    longest = max((len(part) for label in labels for part in label.split("\n")), default=0)
    return longest * size * 0.6 / 72


def _annotate_deltas(ax, D: np.ndarray, vmax: float, *, min_delta: float, force: bool) -> tuple[int, float | None]:
    """Write the readable deltas into their cells: those with ``|Δ| ≥ max(min_delta, 20 % of
    the largest)``, in a format with one significant digit at least and a font that fits the
    cell. Without room for a number (a dense grid) nothing is written unless ``force``.
    Returns the number of values written and the font size (``None``: none).
    """
    fig = ax.figure
    engine = fig.get_layout_engine()
    if engine is not None:
        engine.execute(fig)  # the axes' final size, to fit the numbers to the cells
    box = ax.get_window_extent()
    cell_pt = min(box.width / D.shape[1], box.height / D.shape[0]) * 72 / fig.dpi
    floor = max(min_delta, _ANNOTATE_FRACTION * vmax)
    decimals = max(2, int(np.ceil(-np.log10(floor))) if floor > 0 else 2)
    chars = decimals + 3  # sign, "0", "." and the decimals
    size = min(8.0, 0.95 * cell_pt / (0.62 * chars))
    if size < 5.0 and not force:
        return 0, None
    size = max(size, 5.0)
    shown = 0
    for i, j in zip(*np.nonzero(np.isfinite(D) & (np.abs(D) >= floor)), strict=True):
        v = D[i, j]
        ax.text(
            j,
            i,
            f"{v:+.{decimals}f}".replace("-", "−"),
            ha="center",
            va="center",
            fontsize=size,
            color="white" if abs(v) > 0.6 * vmax else "black",
        )
        shown += 1
    return shown, size


@doc_params("doc_key", "doc_show_save_ax", "doc_returns")
def knockout_effects(
    adata: AnnData,
    *,
    n_genes: int = 30,
    mode: str | None = None,
    key: str = _keys.DEFAULT_KEY,
    alpha: float = 0.05,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    save: str | bool | None = None,
) -> Axes | Figure | None:
    """Knockout effects ranked, with the band of expression-matched random genes.

    Each knocked-out gene (or gene set) is a dot at its effect (mean total-variation distance
    between the rows of ``P_ko`` and ``P``); the grey bar spans the 2.5–97.5 % range of its
    null (expression-matched random genes, when ``n_null > 0``). Genes with ``qval < alpha``
    (Benjamini–Hochberg; ``pval`` when there are no q-values) are filled, others hollow; a
    gene that terminated a transition is drawn in red.

    Parameters
    ----------
    adata
        AnnData with ``.uns[key]["knockout_summary"]`` (a re-read ``.h5ad`` works).
    n_genes
        Strongest knockouts shown.
    mode
        ``"delete"`` or ``"overexpress"`` when both were screened (default ``"delete"``).
    {doc_key}
    alpha
        Significance level of the filled dots.
    {doc_show_save_ax}

    {doc_returns}

    """
    if n_genes < 1:
        raise InvalidInputError(f"n_genes must be 1 or more, got {n_genes}.")
    summary = _pick_mode(_read.uns_entry(adata, key, _keys.UNS_KNOCKOUT_SUMMARY, "model.knockout(...)"), mode)
    # genes estimated to first order only (a genome-wide screen) have no exact effect
    summary = summary[np.isfinite(summary["effect"].to_numpy(float))]
    s = summary.sort_values("effect", ascending=False).head(n_genes).reset_index(drop=True)
    n = len(s)
    fig, ax = _read.new_axes(ax, (max(3.5, 1.0 + 0.28 * n) + 1.8, 3.4))  # + the legend beside the axes
    x = np.arange(n)
    has_null = "null_low" in s.columns and s["null_low"].notna().any()
    if has_null:
        lo, hi = s["null_low"].to_numpy(float), s["null_high"].to_numpy(float)
        ax.bar(x, hi - lo, bottom=lo, width=0.6, color="0.85", edgecolor="none", label="null 2.5–97.5 %", zorder=1)
        ax.scatter(x, s["null_mean"], marker="_", color="0.45", s=60, zorder=2, label="null mean")
    stat = "qval" if "qval" in s.columns and s["qval"].notna().any() else "pval"
    p = s[stat].to_numpy(float) if stat in s.columns else np.full(n, np.nan)
    tested = np.isfinite(p)  # a knockout run without a null (n_null=0) has no p: not tested, not "not significant"
    sig = tested & (np.where(tested, p, 1.0) < alpha)
    term = s["n_terminated"].to_numpy() > 0 if "n_terminated" in s.columns else np.zeros(n, bool)
    color = np.where(term, "#d62728", "#1f77b4")
    y = s["effect"].to_numpy(float)
    face = np.where(sig, color, np.where(tested, "white", "0.8"))
    ax.scatter(x, y, s=36, facecolors=face, edgecolors=color, linewidths=1.4, zorder=3)
    # legend proxies: colour as a line (it says nothing of the test), the fill as grey dots
    from matplotlib.lines import Line2D

    handles = []  # an entry only for what is drawn
    if term.any():
        handles.append(Line2D([], [], ls="-", lw=3, color="#d62728", label="terminates a transition"))
    if (~term).any():
        handles.append(Line2D([], [], ls="-", lw=3, color="#1f77b4", label="terminates none"))
    for shown, fill, label in (
        (sig, "0.3", f"significant ({stat[0]} < {alpha:g})"),
        (tested & ~sig, "white", f"not significant ({stat[0]} ≥ {alpha:g})"),
        (~tested, "0.8", "not tested (no null: n_null=0)"),
    ):
        if shown.any():
            handles.append(Line2D([], [], marker="o", ls="", markerfacecolor=fill, markeredgecolor="0.3", label=label))
    h0, _ = ax.get_legend_handles_labels()
    # beside the axes, never over a dot
    ax.legend(handles=h0 + handles, fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    # a long gene-set name, rotated, took most of the figure's height: cut to 24 characters
    names = s["gene"].astype(str).map(lambda t: t if len(t) <= 24 else t[:23] + "…")
    upright = n <= 6 and names.str.len().max() <= 8  # a few short names read best level
    ax.set_xticks(x, names, rotation=0 if upright else 90, fontsize=9)
    ax.set_xlim(-0.7, n - 0.3)
    tops = [y, s["null_high"].to_numpy(float)] if has_null else [y]
    top = float(np.nanmax(np.concatenate(tops))) if n else 1.0
    # room above the largest dot; at least EFFECT_SCALE_FLOOR: effects of ten-thousandths look as small as they are
    ax.set_ylim(0, max(1.12 * top, EFFECT_SCALE_FLOOR) if top > 0 else 1.0)
    ax.set_ylabel("effect (mean TV distance)")
    mode_name = str(s["mode"].iloc[0]) if "mode" in s.columns and n else "delete"
    note = _fixed_note(adata, key)
    if len(summary) > n:  # not every knockout: say how many are left out
        note = f"\n(the {n} largest of {len(summary)})" + note
    ax.set_title(
        ("Knockout effects" if mode_name == "delete" else "Overexpression effects") + note,
        fontsize=10 if note else None,
    )
    ax.spines[["top", "right"]].set_visible(False)
    return _read.finish(fig, ax, show, return_fig, save)
