"""Markdown report of an annotated AnnData (used by ``kdcpt run``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from . import _keys

if TYPE_CHECKING:
    from anndata import AnnData


def _table(df: pd.DataFrame, floatfmt: str = "{:.3f}") -> str:
    df = df.copy()
    for c in df.columns:
        if pd.api.types.is_float_dtype(df[c]):
            df[c] = df[c].map(floatfmt.format)
    header = "| " + " | ".join([str(df.index.name or "")] + list(map(str, df.columns))) + " |"
    sep = "|" + "---|" * (len(df.columns) + 1)
    rows = ["| " + " | ".join([str(i)] + [str(v) for v in r]) + " |" for i, r in zip(df.index, df.to_numpy(), strict=True)]
    return "\n".join([header, sep, *rows])


def write_report(
    adata: AnnData, out: Path, *, source: str, seconds: float, key_added: str = _keys.DEFAULT_KEY, figures=()
) -> Path:
    """Write ``out/report.md`` from the keys ``annotate`` / ``knockout`` wrote; return its path."""
    keys = _keys.Keys(key_added)
    uns = adata.uns[keys.uns]
    lines = [
        "# KD-CPT report",
        "",
        f"Data: {source} — {adata.n_obs} cells × {adata.n_vars} genes, {len(uns[_keys.UNS_CLASSES])} phenotypes. "
        f"Run time {seconds:.0f} s. scanpy-kdcpt {uns.get(_keys.UNS_VERSION, '?')}.",
        "",
        "## Metrics",
        "",
    ]
    metrics = pd.DataFrame(uns[_keys.UNS_METRICS]).T
    metrics.index.name = "cells"
    lines += [_table(metrics), ""]
    counts = adata.obs[keys.pred].value_counts().rename("cells").to_frame()
    counts["mean confidence"] = adata.obs.groupby(keys.pred, observed=True)[keys.confidence].mean()
    counts["mean uncertainty"] = adata.obs.groupby(keys.pred, observed=True)[keys.uncertainty].mean()
    counts.index.name = "predicted phenotype"
    lines += ["## Predicted phenotypes", "", _table(counts), ""]
    for title, fig in figures:
        lines += [f"## {title}", "", f"![{title}]({fig})", ""]
    path = Path(out) / "report.md"
    path.write_text("\n".join(lines))
    return path
