"""Knockouts that move cells: GRN simulation of the shift and the perturbed cell chain (torch-free, public).

The pieces, in the order a knockout uses them (CellOracle's simulation, Kamimoto et al.,
Nature 2023, on this package's own directed chain):

1. :func:`fit_grn` — a gene regulatory network fitted on the data: per phenotype, a ridge
   regression of each target gene on its candidate regulators, on kNN-smoothed log expression
   (:func:`smooth_expression`);
2. :func:`simulate_shift` — a knockout's expression shift ``Δx`` per cell: the knocked-out
   genes set to ``value``, the change propagated ``n_propagation`` steps through the cell's own
   phenotype coefficients, clipped at zero expression;
3. :func:`perturbed_chain` — the cell chain under the knockout: each cell's move biased towards
   the neighbours whose displacement agrees with its shift,
   ``T_ko[i, j] ∝ T[i, j] · exp(cos(Δz_i, z_j − z_i) / σ)``;
4. :func:`embed_shift`, :func:`perturbation_score` — the shift as a vector in an embedding and
   its agreement with the chain's developmental drift (CellOracle's perturbation score);
   :func:`randomized_shift_null` and :func:`empirical_pvalue` test any statistic of the
   perturbed chain against row-shuffled shifts;
5. :func:`fates_with_horizon` — fates within a horizon with a "not reached" outcome, so that a
   knockout that blocks progenitors lowers their fates into every terminal;
   :func:`horizon_flux` — the net flux between phenotypes of the mass that moves within that
   horizon, so that a block upstream lowers the flux downstream.

Every function takes numpy arrays or scipy sparse matrices and knows nothing of AnnData or
torch. Notation as in :mod:`scanpy_kdcpt.markov`: ``T`` a cell chain (cells × cells,
row-stochastic), ``M`` memberships (cells × phenotypes).
"""

from ._chain import (
    chain_stage,
    choose_horizon,
    embed_shift,
    empirical_pvalue,
    fates_with_horizon,
    horizon_flux,
    perturbation_score,
    perturbed_chain,
    randomized_shift_null,
)
from ._grn import GRN, chain_drift, fit_grn, simulate_shift, smooth_expression

__all__ = [
    "GRN",
    "chain_drift",
    "chain_stage",
    "choose_horizon",
    "embed_shift",
    "empirical_pvalue",
    "fates_with_horizon",
    "fit_grn",
    "horizon_flux",
    "perturbation_score",
    "perturbed_chain",
    "randomized_shift_null",
    "simulate_shift",
    "smooth_expression",
]
