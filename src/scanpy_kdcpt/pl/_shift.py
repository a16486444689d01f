"""Simulated knockouts on an embedding and their fate deltas (from AnnData keys only)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .. import _keys
from .._errors import InvalidInputError, KeyNotFoundError
from .._utils import each_pair_once
from . import _read
from ._docs import doc_params
from ._fate import _basis, _grid
from ._knockout import _pick_mode

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _summary_row(adata: AnnData, key: str, gene: str, mode: str = "delete") -> pd.Series | None:
    summary = adata.uns.get(key, {}).get(_keys.UNS_KNOCKOUT_SUMMARY)
    if not isinstance(summary, pd.DataFrame) or "gene" not in summary:
        return None
    rows = summary[(summary["gene"].astype(str) == gene) & (summary.get("mode", "delete") == mode)]
    return rows.iloc[0] if len(rows) else None


def _params(adata: AnnData, key: str) -> dict:
    """The knockout's settings as written (``knockout_params``; empty when absent)."""
    return adata.uns.get(key, {}).get(_keys.UNS_KNOCKOUT_PARAMS, {})


def _n_shifts(adata: AnnData, key: str, gene: str | None = None, mode: str = "delete") -> int | None:
    """How many randomised shifts ``gene``'s knockout was tested against: its own summary row's
    ``n_shift_null`` (a later call with another ``n_shift_null`` does not change it), else the
    last call's setting (results written before the column existed).
    """
    row = None if gene is None else _summary_row(adata, key, gene, mode)
    if row is not None and "n_shift_null" in row.index and pd.notna(row["n_shift_null"]):
        return int(row["n_shift_null"])
    n = _params(adata, key).get("n_shift_null")
    return None if n is None else int(n)


def _against(n: int | None) -> str:
    """What the tests compare with: ``"19 randomised shifts"`` (or without the count when unknown)."""
    return f"{n} randomised shifts" if n else "randomised shifts"


def _pq(row: pd.Series | None, n: int | None) -> str:
    if row is None or "score_pval" not in row or pd.isna(row["score_pval"]):
        return ""
    p = float(row["score_pval"])
    # an empirical p is at least 1/(n+1): at that floor it says "beyond every shift drawn", not how far
    floor = n is not None and n > 0 and p <= 1.0 / (n + 1) + 1e-12
    p_text = f"p = {p:.3g}, the least possible" if floor else f"p = {p:.3g}"  # as q, so equal values read equal
    return f"score {p_text}, q = {row['score_qval']:.3g} against {_against(n)}"


def _test_note(adata: AnnData, key: str, gene: str, mode: str, alpha: float, tested: bool) -> str:
    """The line under a knockout's fate or flux changes: what ``*`` means, or that nothing was tested."""
    if not tested:
        return f"\n{NOT_TESTED}"
    n_shifts = _n_shifts(adata, key, gene, mode)
    note = f"\n* q < {alpha:g}: the change is beyond {_against(n_shifts)}"
    if n_shifts and 1 / (n_shifts + 1) >= alpha:  # say it when no change can be marked
        note += f" (none can be: the least p with {n_shifts} is {1 / (n_shifts + 1):.2g})"
    return note


def _title(head: str, adata: AnnData, key: str, gene: str, mode: str = "delete") -> str:
    """The plot's subject, and the test of its perturbation score on a line of its own."""
    test = _pq(_summary_row(adata, key, gene, mode), _n_shifts(adata, key, gene, mode))
    return f"{head}\n({test})" if test else head


@doc_params("doc_key", "doc_show_save_ax", "doc_returns")
def knockout_shift(
    adata: AnnData,
    gene: str,
    *,
    key: str = _keys.DEFAULT_KEY,
    basis: str = "umap",
    grid: int = 18,
    scale: float | None = None,
    title: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    save: str | bool | None = None,
) -> Axes | Figure | None:
    """A simulated knockout on an embedding: where it moves cells, and whether against development.

    Arrows: the change of each cell's expected step under the knockout's chain ``T_ko``
    against the unperturbed chain ``T`` (``.obsm["{key}_ko_shift_<gene>"]``), averaged on a
    grid (no arrows farther than half a grid spacing from every cell, nor where the shift is under
    25 % of the largest arrows: the knockout leaves those cells about where they were). Colour:
    each cell's perturbation score (``.obs["{key}_ko_score_<gene>"]``): blue, the knockout
    pushes the cell back against the chain's developmental drift (a block); red, it speeds the
    cell along — CellOracle's figure, on this package's directed chain.

    Parameters
    ----------
    adata
        AnnData after ``model.knockout(gene, simulate="grn")`` with an embedding (a re-read
        ``.h5ad`` works, no model needed).
    gene
        The knocked-out gene (or gene-set name).
    {doc_key}
    basis
        Embedding the shifts were projected on (``knockout(basis=...)``).
    grid
        Grid points per axis for the arrows.
    scale
        Arrow scale (matplotlib's ``quiver``, data units per arrow length unit; default: the
        98th percentile of the grid arrows' lengths drawn as 0.9 grid spacings, so arrows stay
        within their neighbourhood).
    title
        Axes title.
    {doc_show_save_ax}

    {doc_returns}

    """
    keys = _keys.Keys(key)
    score_key, shift_key = keys.ko_score(gene), keys.ko_shift(gene)
    if score_key in adata.obs and shift_key not in adata.obsm:
        raise KeyNotFoundError(
            f"The knockout of {gene!r} was simulated (.obs[{score_key!r}]), but its shift was not projected on an "
            f"embedding (.obsm[{shift_key!r}] is missing): compute one (e.g. sc.tl.umap) and rerun "
            "model.knockout(gene, basis='umap')."
        )
    if score_key not in adata.obs or shift_key not in adata.obsm:
        raise KeyNotFoundError(
            f"No simulated knockout of {gene!r} under key {key!r} (.obs[{score_key!r}] / .obsm[{shift_key!r}]): "
            "run model.knockout(gene, simulate='grn') after model.compute_transitions(...), on an AnnData with "
            "an embedding (e.g. sc.tl.umap)."
        )
    bases = adata.uns.get(key, {}).get(_keys.UNS_KNOCKOUT_SHIFT_BASIS, {})
    projected = str(bases.get(_keys.safe_name(gene), "")) if isinstance(bases, dict) else ""
    wanted = _keys.basis_key(adata.obsm, basis)
    if projected and projected not in (wanted, basis):  # arrows of one embedding on another's coordinates
        raise InvalidInputError(
            f"The knockout shifts were projected on {projected!r}, not on {wanted!r}: pass "
            f"basis={projected.removeprefix('X_')!r}, or rerun model.knockout(..., basis={basis!r})."
        )
    X = _basis(adata, basis)
    V = np.asarray(adata.obsm[shift_key], dtype=float)
    score = adata.obs[score_key].to_numpy(float)
    modes = adata.uns.get(key, {}).get(_keys.UNS_KNOCKOUT_SHIFT_MODE, {})
    mode = str(modes.get(_keys.safe_name(gene), "delete"))  # the gene's latest simulated perturbation
    verb = "knockout" if mode == "delete" else "overexpression"
    # arrows only on the cells: a grid point half a spacing or more from every cell is a gap (at one
    # spacing, arrows stood in the holes of the embedding)
    gx, gy, U, W = _grid(X, V, grid, max_gap=0.5)
    fig, ax = _read.new_axes(ax, (6.4, 5.6))
    lim = float(np.nanpercentile(np.abs(score), 98)) or 1.0
    order = np.argsort(np.abs(score))  # the strongest on top
    dots = ax.scatter(
        X[order, 0],
        X[order, 1],
        c=score[order],
        cmap="RdBu_r",
        vmin=-lim,
        vmax=lim,
        s=7,
        linewidths=0,
        rasterized=True,
        zorder=1,
    )
    GX, GY = np.meshgrid(gx, gy)
    ok = ~np.isnan(U)
    lengths = np.hypot(np.nan_to_num(U), np.nan_to_num(W))
    top = float(np.percentile(lengths[ok], 98)) if ok.any() else 0.0
    ok &= lengths > 0.25 * top  # shorter arrows are heads without shafts (at 10 % a lattice of specks): none
    if scale is None:
        length = top
        spacing = min(np.diff(gx).mean(), np.diff(gy).mean()) if len(gx) > 1 and len(gy) > 1 else 1.0
        scale = length / (0.9 * spacing) if length > 0 else 1.0
    ax.quiver(
        GX[ok],
        GY[ok],
        U[ok],
        W[ok],
        angles="xy",
        scale_units="xy",
        scale=scale,
        width=0.0035,
        color="#222222",
        alpha=0.85,
        zorder=3,
    )
    _read.label_groups(ax, X, adata.obs[keys.pred] if keys.pred in adata.obs else None)
    cbar = fig.colorbar(dots, ax=ax, shrink=0.7, pad=0.02)
    cbar.set_label("perturbation score\n(< 0: pushed back against development)", fontsize=8)
    cbar.ax.tick_params(labelsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(
        f"{basis.upper()}1\narrows: how the {verb} changes the cells' expected step here (lengths relative; "
        "none under a quarter of the longest)",
        fontsize=8,
    )
    ax.set_ylabel(f"{basis.upper()}2", fontsize=8)
    ax.set_title(
        title if title is not None else _title(f"{gene} {verb}: simulated shift", adata, key, gene, mode), fontsize=10
    )
    return _read.finish(fig, ax, show, return_fig, save)


def _gene_rows(adata: AnnData, key: str, entry: str, gene: str, mode: str | None, what: str):
    """One gene's rows of a knockout's tidy table (``knockout_fate`` or ``knockout_flux``) in one
    mode: ``(rows, mode, "knockout" | "overexpression")``.
    """
    table = adata.uns.get(key, {}).get(entry)
    if not isinstance(table, pd.DataFrame) or not len(table):
        raise KeyNotFoundError(
            f"adata.uns[{key!r}][{entry!r}] not found: run model.compute_transitions(...) and then "
            f"model.knockout(...) ({what} need a directed chain)."
        )
    rows = table[table["gene"].astype(str) == gene]
    if not len(rows):
        known = sorted(set(table["gene"].astype(str)))
        raise KeyNotFoundError(f"No {what} for {gene!r}; knocked out: {known}.")
    if "mode" not in rows.columns:  # written before modes were recorded: deletions
        rows = rows.assign(mode="delete")
    rows = _pick_mode(rows, mode)
    mode = str(rows["mode"].iloc[0])
    return rows, mode, "knockout" if mode == "delete" else "overexpression"


@doc_params("doc_key", "doc_show_save_ax", "doc_returns")
def knockout_fate(
    adata: AnnData,
    gene: str,
    *,
    key: str = _keys.DEFAULT_KEY,
    sources: list[str] | None = None,
    mode: str | None = None,
    alpha: float = 0.05,
    title: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    save: str | bool | None = None,
) -> Axes | Figure | None:
    """Fate deltas of one knockout: source phenotype × outcome (terminal phenotypes, "not reached").

    Each cell of a terminal column is the change of the source phenotype's fate, its cells'
    probability of eventually ending in that terminal (the definition of
    :meth:`~scanpy_kdcpt.KDCPT.get_fate_probabilities`); the column "not reached" is the change
    of the mass that has reached no terminal within the chain's horizon (a block or delay, not a
    fate) (``.uns[key]["knockout_fate"]``). The row ``all`` is the mean over all cells. The values
    are written where they read (``|Δ| ≥ 0.005``); the title carries the test of the knockout's
    perturbation score against randomised shifts when the knockout was simulated. With
    ``knockout(..., n_shift_null=n)`` a delta marked ``*`` changed beyond the randomised shifts
    (``qval < alpha`` in ``knockout_fate``); with ``n_regulator_null=n`` a delta marked ``†``
    changed more than when expression-matched GRN regulators are knocked out the same way
    (``qval_regulators < alpha``): only a change marked ``†`` is specific to the gene.

    Parameters
    ----------
    adata
        AnnData after ``model.knockout(...)`` with a directed chain (a re-read ``.h5ad`` works).
    gene
        The knocked-out gene (or gene-set name).
    {doc_key}
    sources
        Source phenotypes to show, in order (default: all, then ``all``).
    mode
        ``"delete"`` or ``"overexpress"`` when the gene was perturbed both ways (default: the
        deletion).
    alpha
        Level of the ``qval`` that marks a delta with ``*`` (and of ``qval_regulators``, ``†``)
        when the fate changes were tested.
    title
        Axes title.
    {doc_show_save_ax}

    {doc_returns}

    """
    rows, mode, verb = _gene_rows(adata, key, _keys.UNS_KNOCKOUT_FATE, gene, mode, "fate deltas")
    D = rows.pivot_table(index="source", columns="terminal", values="delta", observed=True, sort=False)
    if sources is not None:
        sources = [sources] if isinstance(sources, str) else list(sources)
        unknown = [s for s in sources if s not in D.index]
        if unknown:
            raise InvalidInputError(
                f"sources {unknown} have no fate deltas for {gene!r}; the sources of this knockout are "
                f"{[str(s) for s in D.index]} ('all': the mean over all cells)."
            )
        D = D.loc[sources]

    def q_values(column: str) -> tuple[bool, np.ndarray]:
        if column not in rows.columns or not rows[column].notna().any():
            return False, np.full(D.shape, np.nan)
        table = rows.pivot_table(
            index="source", columns="terminal", values=column, observed=True, sort=False, dropna=False
        )
        return True, table.reindex(index=D.index, columns=D.columns).to_numpy(float)

    tested, Q = q_values("qval")
    against_regulators, QR = q_values("qval_regulators")
    vals = D.to_numpy(float)
    # a floor on the colour scale: changes of a hundredth must not look like a regulator's
    vmax = max(float(np.nanmax(np.abs(vals))) if np.isfinite(vals).any() else 0.0, FATE_SCALE_FLOOR)
    fig, ax = _read.new_axes(ax, (max(5.2, 2.8 + 1.0 * D.shape[1]), 2.2 + 0.45 * D.shape[0]))
    im = ax.imshow(vals, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
    ax.grid(False)  # no style grid through the cells and their numbers
    for i in range(vals.shape[0]):
        for j in range(vals.shape[1]):
            v = vals[i, j]
            if np.isfinite(v) and abs(v) >= 0.005:
                dark = abs(v) > 0.6 * vmax
                star = "*" if np.isfinite(Q[i, j]) and Q[i, j] < alpha else ""
                star += "†" if np.isfinite(QR[i, j]) and QR[i, j] < alpha else ""
                text = f"{v:+.2f}{star}".replace("-", "−")
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    horizon = _params(adata, key).get("fate_horizon")
    ticks = [
        f"not reached in {int(horizon)} steps" if str(c) == "not reached" and horizon is not None else str(c)
        for c in D.columns
    ]
    ax.set_xticks(range(D.shape[1]), _read.wrap_names(ticks, 12), fontsize=9)
    ax.set_yticks(range(D.shape[0]), _read.wrap_names(D.index, 22), fontsize=9)
    xlabel = "eventual fate (terminals) · mass still in transit (not reached)"
    xlabel += _test_note(adata, key, gene, mode, alpha, tested)
    if against_regulators:
        n_reg = _params(adata, key).get("n_regulator_null")
        n_reg = int(n_reg) if n_reg else None
        count = f"{n_reg} " if n_reg else ""
        xlabel += f"\n† q < {alpha:g}: beyond {count}expression-matched regulators knocked out alike"
        if n_reg and 1 / (n_reg + 1) >= alpha:  # say it when no change can be marked
            xlabel += f" (none can be: the least p with {n_reg} is {1 / (n_reg + 1):.2g})"
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("source phenotype", fontsize=9)
    cbar = fig.colorbar(im, ax=ax, shrink=0.9, pad=0.02)
    cbar.set_label(f"Δ fate\n({verb} − base)", fontsize=8)
    cbar.ax.tick_params(labelsize=8)
    head = f"{gene} {verb}: fate deltas"
    ax.set_title(title if title is not None else _title(head, adata, key, gene, mode), fontsize=10)
    return _read.finish(fig, ax, show, return_fig, save)


#: the least Δ fate at the ends of knockout_fate's colour scale
FATE_SCALE_FLOOR = 0.1

#: said under a knockout's fate or flux changes when no randomised shifts tested them
NOT_TESTED = "not tested against randomised shifts: knockout(..., n_shift_null=19) tests each change"

#: knockout_flux draws changes of at least this share of the largest, and relative changes of
#: fluxes of at least this share of the largest bar
MIN_SHARE = 0.05


@doc_params("doc_key", "doc_show_save_ax", "doc_returns")
def knockout_flux(
    adata: AnnData,
    gene: str,
    *,
    key: str = _keys.DEFAULT_KEY,
    n_top: int = 8,
    mode: str | None = None,
    alpha: float = 0.05,
    title: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    save: str | bool | None = None,
) -> Axes | Figure | None:
    """Net flux between phenotypes over the fate horizon before and after one knockout.

    One pair of bars per transition ``source → target`` (each pair of phenotypes once, in the
    direction of its net flux before the knockout): how many more cells pass ``source → target``
    than back while the non-terminal cells' mass moves for the horizon's steps, before (grey)
    and under the knockout (blue where it falls, red where it rises), from
    ``.uns[key]["knockout_flux"]`` (``flux_horizon_base``, ``flux_horizon_ko``). The
    ``n_top`` transitions whose flux changes most are drawn (changes under 5 % of the largest
    are left out), the largest change first, each with its change in cells and, beside a flux
    that reads as a bar, its relative change; ``*`` marks a change beyond the randomised shifts
    (``qval_horizon < alpha``, with ``knockout(..., n_shift_null=n)``). A block lowers this flux
    downstream of it; the one-step net flux of the observed cells (``flux_base``, ``flux_ko``)
    is not drawn: it can rise behind a block, because cells stop returning to the blocked state.

    Parameters
    ----------
    adata
        AnnData after ``model.knockout(...)`` with a directed chain (a re-read ``.h5ad`` works).
    gene
        The knocked-out gene (or gene-set name).
    {doc_key}
    n_top
        How many transitions to draw.
    mode
        ``"delete"`` or ``"overexpress"`` when the gene was perturbed both ways (default: the
        deletion).
    alpha
        Level of the ``qval_horizon`` that marks a change with ``*``.
    title
        Axes title.
    {doc_show_save_ax}

    {doc_returns}

    """
    if int(n_top) != n_top or n_top < 1:
        raise InvalidInputError(f"n_top must be a whole number ≥ 1, got {n_top!r}.")
    rows, mode, verb = _gene_rows(adata, key, _keys.UNS_KNOCKOUT_FLUX, gene, mode, "flux changes")
    if "flux_horizon_base" not in rows.columns or rows["flux_horizon_base"].isna().all():
        raise KeyNotFoundError(
            f"adata.uns[{key!r}]['knockout_flux'] has no flux over the horizon for {gene!r} (written by an earlier "
            f"version): run model.knockout({gene!r}, ...) again."
        )
    once = each_pair_once(rows, "flux_horizon_base")
    top = once.reindex(once["delta_horizon"].abs().sort_values(ascending=False).index).head(int(n_top))
    # changes too small to see beside the largest are left out (a relative change of a tiny flux misleads)
    top = top[top["delta_horizon"].abs() >= max(MIN_SHARE * float(once["delta_horizon"].abs().max()), 1e-12)]
    if not len(top):
        raise InvalidInputError(f"The {verb} of {gene!r} changes no net flux over the horizon: nothing to draw.")
    b, k = top["flux_horizon_base"].to_numpy(float), top["flux_horizon_ko"].to_numpy(float)
    q = top["qval_horizon"].to_numpy(float) if "qval_horizon" in top.columns else np.full(len(top), np.nan)
    y = np.arange(len(top))
    fig, ax = _read.new_axes(ax, (6.8, 1.4 + 0.55 * len(top)))
    ax.barh(y - 0.2, b, height=0.38, color="0.72", label="base")
    ax.barh(y + 0.2, k, height=0.38, color=np.where(k < b, "#2166ac", "#b2182b"), label=verb)
    span = max(float(np.nanmax(np.abs(np.r_[b, k]))), 1e-9)
    for yi, bi, ki, qi in zip(y, b, k, q, strict=True):
        change = f"{ki - bi:+,.0f}" if span >= 10 else f"{ki - bi:+.3g}"
        if abs(bi) >= MIN_SHARE * span:  # relative to a flux that reads as a bar
            change += f" ({(ki - bi) / abs(bi):+.0%})"
        text = change.replace("-", "−") + ("*" if np.isfinite(qi) and qi < alpha else "")
        ax.text(max(ki, 0) + 0.02 * span, yi + 0.2, text, va="center", fontsize=8)
    src, tgt = top["source"].astype(str).tolist(), top["target"].astype(str).tolist()
    phenotypes = list(dict.fromkeys(src + tgt))
    short = dict(zip(phenotypes, _read.wrap_names(phenotypes, 22, 1), strict=True))  # one line each, distinct
    labels = [f"{short[s]} → {short[t]}".replace("\n", " ") for s, t in zip(src, tgt, strict=True)]
    ax.set_yticks(y, labels, fontsize=9)
    ax.invert_yaxis()  # the largest change on top
    ax.axvline(0, color="0.3", lw=0.8)
    left = min(0.0, float(np.nanmin(np.r_[b, k])))
    ax.set_xlim(left - (0.05 * span if left < 0 else 0), 1.38 * span)  # room for the changes written
    ax.grid(False)
    horizon = _params(adata, key).get("fate_horizon")
    steps = f"within {int(horizon)} steps" if horizon is not None else "within the fate horizon"
    xlabel = f"net cells passing source → target {steps} (mass of the non-terminal cells)"
    xlabel += _test_note(adata, key, gene, mode, alpha, "qval_horizon" in top.columns and np.isfinite(q).any())
    ax.set_xlabel(xlabel, fontsize=8)
    from matplotlib.patches import Patch

    handles = [Patch(color="0.72", label="base")]
    handles += [
        Patch(color=c, label=f"{verb}: {w}")
        for c, w, m in (("#2166ac", "lower", k < b), ("#b2182b", "higher", k >= b))
        if m.any()
    ]
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    head = f"{gene} {verb}: net flux over the fate horizon"
    ax.set_title(title if title is not None else _title(head, adata, key, gene, mode), fontsize=10)
    return _read.finish(fig, ax, show, return_fig, save)
