"""Markdown report of an annotated AnnData (used by ``kdcpt run``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from . import _keys
from ._utils import each_pair_once
from .results import Transitions

if TYPE_CHECKING:
    from anndata import AnnData


def _fmt(v, floatfmt: str, integer: bool = False) -> str:
    if isinstance(v, (float, np.floating)):
        if np.isnan(v):
            return ""
        return str(int(v)) if integer and float(v).is_integer() else floatfmt.format(v)
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else ""
    return str(v).replace("|", "\\|")


def _table(df: pd.DataFrame, floatfmt: str = "{:.3f}", index: bool = True) -> str:
    """A DataFrame as a Markdown table."""
    cols = list(map(str, df.columns))
    head = ([str(df.index.name or "")] if index else []) + cols
    lines = ["| " + " | ".join(h.replace("|", "\\|") for h in head) + " |", "|" + "---|" * len(head)]
    integer = [c.startswith("n_") or c == "cells" for c in cols]
    for i, row in zip(df.index, df.itertuples(index=False), strict=True):
        cells = ([_fmt(i, floatfmt)] if index else []) + [
            _fmt(v, floatfmt, is_int) for v, is_int in zip(row, integer, strict=True)
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _as_series(x, index: Sequence[str] | None, name: str) -> pd.Series:
    if isinstance(x, pd.Series):
        return x.rename(name)
    if isinstance(x, pd.DataFrame):
        return x.iloc[:, 0].rename(name)
    if isinstance(x, dict):
        return pd.Series(x, name=name)
    arr = np.asarray(x, dtype=float).ravel()
    return pd.Series(arr, index=list(index)[: len(arr)] if index is not None else None, name=name)


def _figures(figures: dict[str, tuple[str, str]], *stems: str) -> list[str]:
    """Inline Markdown images of the figures named by ``stems`` (removed from ``figures``)."""
    lines = []
    for stem in stems:
        if stem in figures:
            title, path = figures.pop(stem)
            lines += [f"![{title}]({path})", ""]
    return lines


def _transitions_section(uns: dict, classes: list[str], figures: dict) -> list[str]:
    if _keys.UNS_TRANSITION not in uns:
        return []
    P = uns[_keys.UNS_TRANSITION]
    P = P if isinstance(P, pd.DataFrame) else pd.DataFrame(np.asarray(P), index=classes, columns=classes)
    P = P.copy()
    if len(P.columns) == len(P.index) == len(classes):
        P.index = P.columns = list(classes)  # the stored axes use h5ad-safe names ("/" → "_")
    P.index.name = "from \\ to"
    directed = uns.get(_keys.UNS_FLUX) is not None  # written for a directed chain only
    meaning = (
        "probability that a cell of phenotype *i* moves to *j* in one step of the directed cell chain"
        if directed
        else "probability that phenotype *i* shades into *j* (no direction: the posterior form)"
    )
    lines = ["## Transition matrix", "", f"Row *i*, column *j*: {meaning}.", ""]
    lines += [_table(P, "{:.2f}"), ""]
    lines += _figures(figures, "transition_matrix", "transition_graph")
    lines += _direction_section(uns, P.index, figures)
    table = pd.DataFrame(index=pd.Index(P.index, name="phenotype"))
    if _keys.UNS_ENTROPY in uns:
        table["entropy"] = _as_series(uns[_keys.UNS_ENTROPY], P.index, "entropy").reindex(table.index)
    if _keys.UNS_PHENOTYPE_MASS in uns:
        mass = _as_series(uns[_keys.UNS_PHENOTYPE_MASS], P.index, "share of cells")
        table["share of cells"] = mass.reindex(table.index)
    if _keys.UNS_STATIONARY in uns and uns.get(_keys.UNS_TRANSITION_METHOD) == "directed":
        table["stationary"] = _as_series(uns[_keys.UNS_STATIONARY], P.index, "stationary").reindex(table.index)
    if len(table.columns):
        total = uns.get(_keys.UNS_ENTROPY_TOTAL)
        lines += ["## Entropy", ""]
        if total is not None:
            lines += [f"Overall entropy (prior-weighted average of the rows): **{float(total):.3f}** nats.", ""]
        lines += [_table(table), ""]
        lines += _figures(figures, "entropy")
    return lines


def _direction_section(uns: dict, names, figures: dict) -> list[str]:
    """Net flux and fate probabilities of a directed transition matrix."""
    method = uns.get(_keys.UNS_TRANSITION_METHOD)
    direction = uns.get(_keys.UNS_DIRECTION, {})
    lines = []
    if not Transitions.is_directed(str(method), direction if isinstance(direction, dict) else {}):
        if method == "directed":
            lines += [
                "A cell-level Markov chain built without a direction signal, coarse-grained with the soft "
                "phenotype memberships: it has no direction, so no net flux or stationary state is reported.",
                "",
            ]
        if method == "posterior":
            lines += [
                "The posterior transition matrix is a phenotype similarity: it shows which phenotypes shade "
                "into each other, not a direction. Its asymmetries are noise, so it has no net flux and no "
                "stationary state; the graph draws the symmetrised similarity without arrows and sizes the "
                "phenotypes by their share of the cells (`kdcpt run --direction ...` builds a directed chain).",
                "",
            ]
        return lines
    kind = direction.get("kind", "?") if isinstance(direction, dict) else "?"
    lines += [
        f"Directed: a cell-level Markov chain biased by **{kind}** (CellRank 2 kernels), coarse-grained with "
        "the soft phenotype memberships.",
        "",
    ]
    if _keys.UNS_FLUX in uns:
        F = pd.DataFrame(np.asarray(uns[_keys.UNS_FLUX], dtype=float), index=list(names), columns=list(names))
        pairs = [(a, b, F.loc[a, b]) for a in F.index for b in F.columns if F.loc[a, b] > 0]
        pairs.sort(key=lambda t: -t[2])
        top = pd.DataFrame(pairs[:10], columns=["from", "to", "net flux"]).set_index("from")
        lines += ["### Net flux", "", "Largest net flows of cells between phenotypes (cells per step):", ""]
        lines += [_table(top, "{:.2f}"), ""]
    lines += _figures(figures, "transition_stream")
    if _keys.UNS_FATE in uns:
        fate = pd.DataFrame(uns[_keys.UNS_FATE]).copy()
        terminal = [str(t) for t in np.asarray(uns.get(_keys.UNS_FATE_TERMINAL, fate.columns))]
        fate.columns = terminal
        fate.index.name = "phenotype"
        lines += [
            "### Fate probabilities",
            "",
            f"Terminal phenotypes: {', '.join(terminal)}. Mean probability that "
            "a cell of each phenotype ends in each terminal phenotype:",
            "",
        ]
        lines += [_table(fate, "{:.2f}"), ""]
        lines += _figures(figures, "fate_probabilities")
    return lines


def _key_genes_section(adata: AnnData, keys: _keys.Keys, uns: dict, n_top: int, figures: dict) -> list[str]:
    kg = uns.get(_keys.UNS_KEY_GENES)
    lines = []
    if isinstance(kg, pd.DataFrame) and len(kg):
        lines += ["## Top key genes per phenotype", ""]
        if {"phenotype", "gene"} <= set(kg.columns):  # tidy ranking
            sort = [c for c in ("rank",) if c in kg.columns]
            kg = kg.sort_values(["phenotype", *sort]) if sort else kg
            grouped = kg.groupby("phenotype", observed=True, sort=False)["gene"]
            top = grouped.apply(lambda g: ", ".join(map(str, g[:n_top])))
        else:  # one column per phenotype, ranked rows
            top = pd.Series({c: ", ".join(map(str, kg[c].iloc[:n_top])) for c in kg.columns})
        lines += [_table(top.rename("key genes").to_frame().rename_axis("phenotype")), ""]
    elif keys.score in adata.var:
        top = adata.var[keys.score].sort_values(ascending=False).head(n_top * 2)
        lines += ["## Top key genes", "", _table(top.to_frame().rename_axis("gene")), ""]
    return lines + _figures(figures, "key_genes")


def _knockout_section(uns: dict, n_top: int, figures: dict) -> list[str]:
    summary = uns.get(_keys.UNS_KNOCKOUT_SUMMARY)
    if not isinstance(summary, pd.DataFrame) or not len(summary):
        return []
    summary = summary.copy()
    if "gene" in summary.columns:
        summary = summary.set_index("gene")
    if "effect" in summary.columns:
        summary = summary.sort_values("effect", ascending=False)
    summary.index.name = "gene"
    cols = [c for c in ("mode", "effect", "frac_changed", "n_terminated", "pval", "qval") if c in summary.columns]
    summary = summary[cols] if cols else summary
    summary = summary.loc[:, summary.notna().any()]  # e.g. no p-values without a null
    if "mode" in summary.columns and summary["mode"].nunique() == 1:
        summary = summary.drop(columns="mode")
    directed = isinstance(uns.get(_keys.UNS_KNOCKOUT_FLUX), pd.DataFrame)
    which = (
        "the posterior-form matrix of the classifier's memberships (the directed chain's change is under "
        "Directed chain below)"
        if directed
        else "the transition matrix"
    )
    lines = [
        "## Strongest knockouts",
        "",
        f"Effect: mean total-variation distance between the rows of {which} before and after the "
        "knockout; frac_changed: fraction of cells whose predicted phenotype changes.",
        "",
        _table(summary.head(n_top)),
        "",
    ]
    lines += _figures(figures, "knockout_effects")
    ko = uns.get(_keys.UNS_KNOCKOUT)
    if isinstance(ko, pd.DataFrame) and "terminated" in ko.columns:
        term = ko[ko["terminated"].astype(bool)]
        lines += ["### Terminated transitions", ""]
        if directed:
            lines += ["In the posterior-form matrix of the classifier's memberships (as the effect above).", ""]
        if len(term):
            cols = [c for c in ("gene", "source", "target", "p_base", "p_ko", "delta") if c in term.columns]
            lines += [_table(term[cols].reset_index(drop=True), index=False), ""]
        else:
            lines += ["No knockout terminated a transition.", ""]
    fate = uns.get(_keys.UNS_KNOCKOUT_FATE)
    if isinstance(fate, pd.DataFrame) and len(fate):
        allc = fate[fate["source"].astype(str) == "all"]
        # one row per knockout; a gene both deleted and overexpressed gets a row for each
        index = ["gene", "mode"] if "mode" in allc.columns and allc["mode"].nunique() > 1 else "gene"
        wide = allc.pivot_table(index=index, columns="terminal", values="delta", observed=True)
        if isinstance(wide.index, pd.MultiIndex):
            wide.index = pd.Index([f"{g} ({m})" for g, m in wide.index], name="gene (mode)")
        lines += [
            "### Fate deltas",
            "",
            "Change of the fate probabilities into each terminal phenotype (mean over all cells, "
            "knockout − base) on the directed chain; `not reached`: the change of the mass that reaches no "
            "terminal within the chain's horizon (a block or delay, not a fate). With a single terminal every "
            "fate is 1, and only `not reached` can change.",
            "",
            _table(wide),
            "",
        ]
    flux = uns.get(_keys.UNS_KNOCKOUT_FLUX)
    if directed and len(flux):
        # each pair of phenotypes once, in the direction its cells went before the knockout
        horizon = "delta_horizon" in flux.columns
        once = each_pair_once(flux, "flux_horizon_base" if horizon else "flux_base")
        moved = once.reindex(once["delta_horizon" if horizon else "delta"].abs().sort_values(ascending=False).index)
        moved = moved.head(n_top)
        cols = [
            c
            for c in (
                "gene",
                "mode",
                "source",
                "target",
                "p_base",
                "p_ko",
                "flux_horizon_base",
                "flux_horizon_ko",
                "pval_horizon",
                "qval_horizon",
                "flux_base",
                "flux_ko",
            )
            if c in moved
        ]
        what = (
            "net flux over the fate horizon (`flux_horizon_*`: how many more cells pass source → target than back "
            "while the non-terminal cells' mass moves for the horizon's steps; a block lowers it downstream)"
            if horizon
            else "net flux (cells per step)"
        )
        lines += [
            "### Directed chain",
            "",
            f"The largest changes of the {what} on the directed chain under each knockout, each pair of "
            "phenotypes once, in the direction of its net flux before the knockout, with the transition "
            "probabilities before and after"
            + (" and the one-step net flux of the observed cells (`flux_base`, `flux_ko`)." if horizon else "."),
            "",
            _table(moved[cols].reset_index(drop=True), index=False),
            "",
        ]
    return lines + _figures(figures, "knockout")


def write_report(
    adata: AnnData,
    out: Path,
    *,
    source: str,
    seconds: float,
    key: str = _keys.DEFAULT_KEY,
    figures: Sequence[tuple[str, str]] = (),
    n_top: int = 10,
) -> Path:
    """Write ``out/report.md`` from the keys ``annotate`` / ``knockout`` wrote; return its path.

    Parameters
    ----------
    adata
        AnnData annotated by :meth:`~scanpy_kdcpt.KDCPT.annotate` (and possibly ``knockout``).
    out
        Output folder.
    source
        Where the data came from (printed in the header).
    seconds
        Run time to report.
    key
        The ``key_added`` the results were written under (default ``"kdcpt"``).
    figures
        ``(title, path relative to out)`` pairs, shown inline next to their tables (matched by the
        file's stem: ``transition_matrix``, ``entropy``, ``key_genes``, ...), the others at the end.
    n_top
        Key genes per phenotype and knockouts listed.

    """
    keys = _keys.Keys(key)
    uns = adata.uns[keys.uns]
    classes = [str(c) for c in uns[_keys.UNS_CLASSES]]
    lines = [
        "# KD-CPT report",
        "",
        f"Data: {source} — {adata.n_obs} cells × {adata.n_vars} genes, {len(classes)} phenotypes. "
        f"Run time {seconds:.0f} s. scanpy-kdcpt {uns.get(_keys.UNS_VERSION, '?')}.",
        "",
        "## Metrics",
        "",
    ]
    placed = {Path(path).stem: (title, path) for title, path in figures}
    metrics = pd.DataFrame(uns[_keys.UNS_METRICS]).T
    metrics.index.name = "cells"
    lines += [
        _table(metrics),
        "",
        "`labelled` includes the training cells (optimistic); `validation`: cells held out of the gradient "
        "steps but used for early stopping and to choose the first stage's mix and a provisional temperature "
        "(mildly optimistic); `calibration`: held out of all of that (after `calibrate()` its temperature, "
        "one number, is fitted on them). `ece_floor`: the ECE a perfectly calibrated model would show on that many "
        "cells — an ECE near it is as good as the set's size can show.",
        "",
    ]
    lines += _figures(placed, "training_history", "reliability")
    counts = adata.obs[keys.pred].value_counts().rename("cells").to_frame()
    counts["mean confidence"] = adata.obs.groupby(keys.pred, observed=True)[keys.confidence].mean()
    counts["mean uncertainty"] = adata.obs.groupby(keys.pred, observed=True)[keys.uncertainty].mean()
    counts.index.name = "predicted phenotype"
    lines += ["## Predicted phenotypes", "", _table(counts), ""]
    lines += _transitions_section(uns, classes, placed)
    lines += _key_genes_section(adata, keys, uns, n_top, placed)
    lines += _knockout_section(uns, n_top, placed)
    if placed:
        lines += ["## Other figures", ""]
        for title, fig in placed.values():
            lines += [f"### {title}", "", f"![{title}]({fig})", ""]
    path = Path(out) / "report.md"
    path.write_text("\n".join(lines))
    return path
