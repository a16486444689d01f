"""Knockout results."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from ._base import _Result


@dataclass
class KnockoutResult(_Result):
    """Result of :meth:`~scanpy_kdcpt.KDCPT.knockout`.

    Attributes
    ----------
    table
        Tidy: ``gene``, ``mode``, ``source``, ``target``, ``p_base``, ``p_ko``, ``delta``,
        ``terminated`` — one row per knocked-out gene (or gene set) and transition.
    summary
        One row per gene (or gene set): ``gene``, ``mode``, ``effect`` (mean total-variation
        distance between the rows of ``P_ko`` and ``P``), ``frac_changed`` (fraction of cells
        whose predicted phenotype changes), ``n_recomputed`` (cells rerun), ``n_terminated``,
        ``pval`` (empirical, against expression-matched random genes; NaN without a null),
        ``qval`` (Benjamini–Hochberg across the genes screened), ``null_mean``, ``null_low``,
        ``null_high`` (2.5 / 97.5 % of the null effects). With ``simulate="grn"`` also ``score``
        (mean perturbation score over cells), ``score_pval`` / ``score_qval`` (two-sided, against
        row-shuffled shifts within phenotypes, BH across the knockouts), ``shift_norm`` (mean
        norm of ``Δx``), ``n_shifted`` (cells the shift moves), ``chain_tv`` (mean total-variation
        distance between the rows of ``T_ko`` and ``T``).
    transition_matrix
        The unperturbed transition matrix ``P`` (sources × phenotypes).
    null
        Tidy null draws: ``gene`` (the tested gene), ``null_gene``, ``effect``.
    params
        Parameters of the screen.
    fate
        With a directed chain: tidy fate deltas ``gene``, ``mode``, ``source`` (phenotypes, and ``"all"``
        for the mean over all cells), ``terminal`` (the terminal phenotypes, then ``"not
        reached"``: the mass that has reached no terminal within the chain's horizon — a block,
        not a fate), ``fate_base``, ``fate_ko``, ``delta``. A phenotype's fate in a terminal is
        its cells' probability of eventually ending there (absorption), averaged with their
        memberships, as in :meth:`~scanpy_kdcpt.KDCPT.get_fate_probabilities`.
    flux
        With a directed chain: tidy ``gene``, ``mode``, ``source``, ``target``, ``p_base``, ``p_ko`` (the
        directed phenotype chain), ``flux_base``, ``flux_ko``, ``delta`` (change of net flux).
    shift
        With ``simulate="grn"`` and ``keep_shift=True``: per knockout, the simulated expression
        shift ``Δx`` (cells × genes, log scale, float32; in memory only, never written over ``X``).
    shift_mean
        With ``simulate="grn"``: per knockout, the mean shift of each phenotype's cells
        (phenotypes × genes, log scale; the knocked-out genes' own loss included) — which genes
        the knockout moves, where.
    shift_score
        With ``simulate="grn"``: cells × knockouts perturbation scores (the shift's effect on each
        cell's expected step against the chain's developmental drift; negative: pushed back).
    chains
        With ``simulate="grn"``: per knockout, the perturbed cell chain ``T_ko``.
    shift_embedding
        With ``simulate="grn"`` and an embedding (``basis``): per knockout, the change of each
        cell's expected step on it (cells × 2), for :func:`scanpy_kdcpt.pl.knockout_shift`.

    """

    table: pd.DataFrame
    summary: pd.DataFrame
    transition_matrix: pd.DataFrame
    null: pd.DataFrame = field(default_factory=pd.DataFrame)
    params: dict = field(default_factory=dict)
    fate: pd.DataFrame | None = None
    flux: pd.DataFrame | None = None
    shift: dict = field(default_factory=dict)
    shift_mean: dict = field(default_factory=dict)
    shift_score: pd.DataFrame | None = None
    chains: dict = field(default_factory=dict)
    shift_embedding: dict = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        return self.summary

    def __repr__(self) -> str:
        return (
            f"KnockoutResult: {len(self.summary)} knockout(s) ({self.params.get('mode', '?')}), "
            f"{int(self.table['terminated'].sum()) if len(self.table) else 0} terminated transition(s); "
            "fields table, summary, transition_matrix, null, params"
        )
