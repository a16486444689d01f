"""Tidy knockout results: tables, effects with p- and q-values, first-order rows, fate and flux deltas."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .. import markov, stats
from ..results import KnockoutResult
from ._engine import Deltas, Perturbation
from ._fate import FateDeltas
from ._nulls import null_summary
from ._screen import first_order_deltas
from ._units import Baseline, Unit

if TYPE_CHECKING:
    from anndata import AnnData

    from ..model._base import KDCPTLike


def assemble(
    model: KDCPTLike,
    units: dict[str, Unit],
    null: dict[str, list[Unit]],
    run_list: list[Unit],
    base: Baseline,
    deltas: Deltas,
    n_cells: int,
    params: dict,
) -> KnockoutResult:
    """Tidy table, summary (effects, p- and q-values) and null draws of a knockout screen."""
    index_of = {u: i for i, u in enumerate(run_list)}
    scale = np.maximum(base.n_per_group, 1)[:, None]
    P_ko = {u: base.P + deltas.sums[i] / scale for u, i in index_of.items()}
    effects = {u: markov.total_variation(P_ko[u], base.P, base.n_per_group) for u in run_list}
    src_cat = pd.CategoricalDtype(base.row_names)
    tgt_cat = pd.CategoricalDtype(list(model.classes_))
    src, tgt = np.meshgrid(np.arange(len(base.row_names)), np.arange(len(model.classes_)), indexing="ij")
    same = np.asarray(base.row_names, dtype=object)[src] == np.asarray(model.classes_, dtype=object)[tgt]
    tables, summaries, nulls = [], [], []
    for name, unit in units.items():
        Pk = P_ko[unit]
        term = (base.P > params["floor"]) & (Pk < params["fraction"] * base.P) & (base.n_per_group[:, None] > 0)
        term &= ~same  # a diagonal entry (staying) is never a terminated transition
        tables.append(
            pd.DataFrame(
                {
                    "gene": name,
                    "mode": params["mode"],
                    "source": pd.Categorical.from_codes(src.ravel(), dtype=src_cat),
                    "target": pd.Categorical.from_codes(tgt.ravel(), dtype=tgt_cat),
                    "p_base": base.P.ravel(),
                    "p_ko": Pk.ravel(),
                    "delta": (Pk - base.P).ravel(),
                    "terminated": term.ravel(),
                }
            )
        )
        i = index_of[unit]
        row = {
            "gene": name,
            "mode": params["mode"],
            "effect": effects[unit],
            "frac_changed": deltas.changed[i] / max(n_cells, 1),
            "n_recomputed": int(deltas.n_rerun[i]),
            "n_terminated": int(term.sum()),
        }
        row.update(null_summary(effects[unit], [effects[d] for d in null.get(name, [])]))
        summaries.append(row)
        if name in null:
            names = ["+".join(model.var_names_[g] for g in d) for d in null[name]]
            nulls.append(pd.DataFrame({"gene": name, "null_gene": names, "effect": [effects[d] for d in null[name]]}))
    summary = pd.DataFrame(summaries)
    summary["qval"] = stats.benjamini_hochberg(summary["pval"].to_numpy(float))
    summary = summary.sort_values("effect", ascending=False, kind="stable").reset_index(drop=True)
    null_frame = pd.concat(nulls, ignore_index=True) if nulls else pd.DataFrame(columns=["gene", "null_gene", "effect"])
    return KnockoutResult(
        table=pd.concat(tables, ignore_index=True),
        summary=summary,
        transition_matrix=pd.DataFrame(
            base.P, index=pd.Index(base.row_names, name="source"), columns=pd.Index(model.classes_)
        ),
        null=null_frame,
        params=params,
    )


def first_order_effects(
    model: KDCPTLike, prepared: AnnData, base: Baseline, units: dict[str, Unit], batch_size, progress
) -> pd.Series:
    """First-order estimate of each single-gene deletion's effect (mean row total variation)."""
    sums = first_order_deltas(
        model, prepared, base.groups, len(base.row_names), batch_size=batch_size, progress=progress
    )
    scale = np.maximum(base.n_per_group, 1)[:, None]
    est = {}
    for name, (g,) in units.items():
        P_ko = np.clip(base.P + sums[g] / scale, 0.0, None)
        est[name] = markov.total_variation(P_ko, base.P, base.n_per_group)
    return pd.Series(est, name="effect_first_order", dtype=float)


def with_first_order(summary: pd.DataFrame, first_order: pd.Series, mode: str) -> pd.DataFrame:
    """Summary of the exact genes plus one row per gene estimated to first order only."""
    summary = summary.copy()
    summary["exact"] = True
    summary["effect_first_order"] = first_order.reindex(summary["gene"]).to_numpy()
    rest = first_order.drop(summary["gene"], errors="ignore")
    extra = pd.DataFrame({"gene": rest.index.astype(str), "mode": mode, "effect_first_order": rest.to_numpy()})
    extra["exact"] = False
    extra = extra.sort_values("effect_first_order", ascending=False, kind="stable")
    out = pd.concat([summary, extra], ignore_index=True)
    for col in ("n_recomputed", "n_terminated"):
        out[col] = out[col].fillna(0).astype(np.int64)
    return out


def unit_cells(plan: Perturbation, deltas: Deltas, run_list, unit) -> tuple[np.ndarray, np.ndarray]:
    """The cells a unit's knockout reran and the change of their probabilities."""
    sel = plan.unit_of == run_list.index(unit)
    return plan.cells[sel], deltas.pair_dp[sel]


def fate_deltas(
    fd: FateDeltas,
    plan: Perturbation,
    deltas: Deltas,
    units,
    run_list,
    *,
    chains=None,
    pvals: dict[str, np.ndarray] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Tidy fate and flux deltas of every screened unit on the directed chain of ``fd`` (or the
    unit's perturbed chain in ``chains``), and the fate horizon. ``pvals``: per unit, the test of
    each fate change and horizon-flux change against randomised shifts (flat, as
    :meth:`FateDeltas.tested`); with them the fate table gets ``pval`` and ``qval``
    (Benjamini–Hochberg over every tested row of the call), the flux table ``pval_horizon`` and
    ``qval_horizon`` (over each tested pair of phenotypes once: ``i → j`` and ``j → i`` are one change).
    """
    from .. import stats

    run_list = list(run_list)
    fates, fluxes = [], []
    for name, unit in units.items():
        cells, dp = unit_cells(plan, deltas, run_list, unit)
        T_ko = None if chains is None else chains.get(name)
        pval = None if pvals is None else pvals.get(name)
        if pvals and pval is None:  # a knockout without a shift: no test
            pval = np.full(fd.fate.size + len(fd.offdiag[0]), np.nan)
        fate, flux = fd.unit(name, cells, dp, T_ko=T_ko, pval=pval)
        fates.append(fate)
        fluxes.append(flux)
    fate = pd.concat(fates, ignore_index=True)
    if "pval" in fate.columns:
        fate["qval"] = stats.benjamini_hochberg(fate["pval"].to_numpy(float))
    flux = pd.concat(fluxes, ignore_index=True)
    if "pval_horizon" in flux.columns:
        once = (flux["source"].cat.codes < flux["target"].cat.codes).to_numpy()
        q = np.full(len(flux), np.nan)
        q[once] = stats.benjamini_hochberg(flux["pval_horizon"].to_numpy(float)[once])
        key = flux["gene"].astype(str) + "\0" + flux["source"].astype(str) + "\0" + flux["target"].astype(str)
        back = flux["gene"].astype(str) + "\0" + flux["target"].astype(str) + "\0" + flux["source"].astype(str)
        q[~once] = pd.Series(q[once], index=key[once].to_numpy()).reindex(back[~once].to_numpy()).to_numpy()
        flux["qval_horizon"] = q
    return fate, flux, fd.horizon
