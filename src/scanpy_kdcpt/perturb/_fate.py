"""Fate and flux deltas of knockouts on a directed cell-level chain (torch-free; used by ``knockout``).

One definition of a phenotype's fate, here as in :meth:`~scanpy_kdcpt.KDCPT.get_fate_probabilities`
and every plot: each cell's probability of being absorbed, eventually, in each terminal phenotype
(:func:`scanpy_kdcpt.markov.fate_probabilities`), averaged over the phenotype's cells weighted by
their membership (the base memberships ``M``, so the same cells are compared before and after);
``source="all"`` is the mean over all cells. Cells from which no terminal can be reached are
left out of the fates (their rows are NaN, as in ``get_fate_probabilities``), so the terminal
rows of a source sum to 1; such cells are counted in "not reached".

Eventual absorption on a connected chain hardly moves when a knockout only *slows* progenitors
(every cell still ends in some terminal), so a block is reported beside the fates, as the
outcome ``"not reached"``: the mass that has not reached any terminal within the chain's horizon
(:func:`scanpy_kdcpt.simulation.fates_with_horizon`; the horizon is the number of steps after
which the unperturbed chain has brought 90 % of the non-terminal cells' mass to a terminal). It
is a measure of delay or block, not a fate: it does not add to the terminal rows.

A knockout changes the memberships (``M_ko``, the classifier's probabilities of the perturbed
cells), which decide the terminal states (cells of a terminal phenotype with membership
≥ 0.5; with ``terminal_states="base"`` the unperturbed memberships decide them, so the same
cells absorb before and after), and — with ``simulate="grn"`` — the chain itself (``T_ko``).
The directed phenotype chain is ``P = D⁻¹ Mᵀ T M`` before and ``P_ko = D⁻¹ M_koᵀ T_ko M_ko``
after; net flux ``F - Fᵀ`` with ``F = diag(Mᵀ 1) P`` (one step of the observed cells). Beside it,
the net flux over the horizon (:func:`scanpy_kdcpt.simulation.horizon_flux`): how many more
cells pass ``i → j`` than back while the non-terminal cells' mass moves for the horizon's steps.
A knockout that blocks a state lowers this flux downstream of the block, where the one-step
flux can rise because cells stop returning to the blocked state.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import sparse

from .. import markov, simulation
from .._errors import InvalidInputError, KeyNotFoundError


def resolve_chain(model, chain, terminal: Sequence[str] | None, cells):
    """``(T, terminal)`` for the cells of ``cells`` (an AnnData) from the arguments or the model's
    ``transitions_`` (when it was built on these cells); ``(None, None)`` if none.
    """
    source, n_cells = "argument", cells.n_obs
    if chain is None:
        state = model.transitions_  # a TransitionState, set by model.compute_transitions()
        if state is None or not state.registered or not state.covers(cells):  # e.g. a query
            if terminal is not None:
                warnings.warn(
                    f"terminal={terminal!r} is not used: fate deltas need a directed chain of these cells, and "
                    "there is none (run model.compute_transitions() on the registered AnnData first, or pass "
                    "chain=). Only the phenotype-membership effects are computed.",
                    UserWarning,
                    stacklevel=3,
                )
            return None, None
        chain, source = state.cell_chain, "model.transitions_"
        if terminal is None:
            terminal = state.terminal
        if terminal is None:
            # the sinks of the net flux, as get_fate_probabilities(terminal=None) picks them
            M = np.asarray(state.memberships, dtype=float)
            codes = markov.terminal_phenotypes(markov.coarse_grain(chain, M), M.sum(0))
            if not len(codes):
                return None, None
            terminal = [model.classes_[c] for c in codes]
    elif hasattr(chain, "cell_chain"):  # a Transitions result
        if terminal is None:
            terminal = (getattr(chain, "direction", None) or {}).get("terminal")
        chain = chain.cell_chain
        if chain is None:
            raise InvalidInputError("chain is a Transitions result without a cell_chain; pass a cells × cells matrix.")
    T = sparse.csr_matrix(chain, dtype=float)
    if T.shape != (n_cells, n_cells):
        raise InvalidInputError(
            f"chain must be cells × cells ({n_cells} × {n_cells}) for the knocked-out AnnData, got {T.shape} "
            f"(from {source})."
        )
    rows = np.asarray(T.sum(1)).ravel()
    if (T.data < 0).any() or not np.allclose(rows, 1.0, atol=1e-6):
        raise InvalidInputError(f"chain (from {source}) must be row-stochastic: non-negative, rows summing to 1.")
    if terminal is None or (not isinstance(terminal, str) and len(terminal) == 0):
        raise InvalidInputError(
            "Fate deltas need the terminal phenotypes: pass terminal=[...] (e.g. ['Alpha', 'Beta', 'Delta', "
            "'Epsilon']) with the chain."
        )
    terminal = [terminal] if isinstance(terminal, str) else [str(t) for t in terminal]
    missing = [t for t in terminal if t not in model.classes_]
    if missing:
        raise KeyNotFoundError(f"terminal phenotype(s) {missing} not among the model's phenotypes {model.classes_}.")
    return T, terminal


#: the outcome beside the fates: the mass that has reached no terminal within the horizon
NOT_REACHED = "not reached"
#: whose memberships decide the absorbing cells under a knockout
TERMINAL_STATES = ("knockout", "base")


class FateDeltas:
    """Base directed chain and fates; :meth:`unit` gives one knockout's tidy rows."""

    def __init__(
        self,
        T: sparse.csr_matrix,
        proba: np.ndarray,
        phenotypes: list[str],
        terminal: list[str],
        terminal_states: str = "knockout",
    ):
        if terminal_states not in TERMINAL_STATES:
            raise InvalidInputError(f"terminal_states must be one of {TERMINAL_STATES}, not {terminal_states!r}.")
        self.T, self.M, self.phenotypes = T, np.asarray(proba, float), list(phenotypes)
        self.terminal, self.fixed_states = list(terminal), terminal_states == "base"
        self.terminal_idx = np.array([self.phenotypes.index(t) for t in terminal])
        self.horizon = simulation.choose_horizon(T, self.M, self.terminal_idx, names=self.phenotypes)
        self.cell_fate = self._cell_fates(T, self.M)
        self.fate = self._phenotype_fates(self.cell_fate)
        self.P, self.sizes = markov.coarse_grain(T, self.M), self.M.sum(0)
        self.flux = markov.net_flux(self.P, self.sizes)
        self.flux_horizon = self.horizon_flux(T, self.M)
        self.offdiag = np.nonzero(~np.eye(len(self.phenotypes), dtype=bool))

    def _cell_fates(self, T, M: np.ndarray) -> np.ndarray:
        """Cells × (terminals + 1): eventual absorption in each terminal, then "not reached" within the horizon."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the fallback warning is given once per chain by the horizon
            eventual = markov.fate_probabilities(T, M, self.terminal_idx, names=self.phenotypes)
        within = simulation.fates_with_horizon(T, M, self.terminal_idx, n_steps=self.horizon, names=self.phenotypes)
        return np.column_stack([eventual, within[:, -1]])

    def _phenotype_fates(self, F: np.ndarray) -> np.ndarray:
        """Phenotypes (then "all") × outcomes: membership-weighted means of the cells' fates.

        As :func:`~scanpy_kdcpt.markov.mean_fate`: cells with no reachable terminal (NaN fates)
        are left out of the terminal columns; they stay in "not reached".
        """
        weights = np.column_stack([self.M, np.ones(len(self.M))])  # the phenotypes, then "all"
        return np.column_stack([markov.mean_fate(F[:, :-1], weights), markov.mean_fate(F[:, -1:], weights)])

    def memberships(self, cells: np.ndarray, dp: np.ndarray) -> np.ndarray:
        """The memberships under a knockout: ``dp`` is the change of probabilities of ``cells``."""
        M = self.M.copy()
        np.add.at(M, np.asarray(cells, dtype=np.int64), dp)
        return np.clip(M, 0, None)

    def fates(self, T: sparse.csr_matrix, M: np.ndarray) -> np.ndarray:
        """Sources (phenotypes, then "all") × outcomes (terminals, then "not reached") of the chain
        ``T`` with the memberships ``M`` (the base ones decide the absorbing cells with
        ``terminal_states="base"``).
        """
        return self._phenotype_fates(self._cell_fates(T, self.M if self.fixed_states else M))

    def horizon_flux(self, T: sparse.csr_matrix, M: np.ndarray) -> np.ndarray:
        """Phenotypes × phenotypes net flux over the horizon of the chain ``T`` with the memberships
        ``M`` (the base ones decide the absorbing cells with ``terminal_states="base"``).
        """
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the same notes on the terminal states as the fates give
            return simulation.horizon_flux(
                T, M, self.terminal_idx, n_steps=self.horizon, states=self.M if self.fixed_states else None
            )

    def tested(self, T: sparse.csr_matrix, M: np.ndarray) -> np.ndarray:
        """What a knockout's randomised-shift test compares, flat: the fates (sources × outcomes,
        row-major), then the net flux over the horizon of each ordered pair of phenotypes.
        """
        return np.r_[self.fates(T, M).ravel(), self.horizon_flux(T, M)[self.offdiag]]

    def unit(
        self,
        name: str,
        cells: np.ndarray,
        dp: np.ndarray,
        T_ko: sparse.csr_matrix | None = None,
        pval: np.ndarray | None = None,
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Fate and flux rows of one knockout: ``dp`` is the change of probabilities of ``cells``;
        ``T_ko`` the perturbed chain (default: the unperturbed one); ``pval`` the test against
        randomised shifts of what :meth:`tested` gives (fates, then horizon fluxes), columns
        ``pval`` of the fate rows and ``pval_horizon`` of the flux rows when given.
        """
        M = self.memberships(cells, dp)
        T = self.T if T_ko is None else T_ko
        fate_ko = self.fates(T, M)
        src = [*self.phenotypes, "all"]
        outcomes = [*self.terminal, NOT_REACHED]
        K, J = self.fate.shape
        fate = pd.DataFrame(
            {
                "gene": name,
                "source": pd.Categorical(np.repeat(src, J), categories=src),
                "terminal": pd.Categorical(np.tile(outcomes, K), categories=outcomes),
                "fate_base": self.fate.ravel(),
                "fate_ko": fate_ko.ravel(),
                "delta": (fate_ko - self.fate).ravel(),
            }
        )
        if pval is not None:
            pval = np.asarray(pval, dtype=float).ravel()
            fate["pval"] = pval[: self.fate.size]
        P_ko, sizes_ko = markov.coarse_grain(T, M), M.sum(0)
        flux_ko = markov.net_flux(P_ko, sizes_ko)
        horizon_ko = self.horizon_flux(T, M)
        i, j = self.offdiag
        cats = pd.CategoricalDtype(self.phenotypes)
        flux = pd.DataFrame(
            {
                "gene": name,
                "source": pd.Categorical.from_codes(i, dtype=cats),
                "target": pd.Categorical.from_codes(j, dtype=cats),
                "p_base": self.P[i, j],
                "p_ko": P_ko[i, j],
                "flux_base": self.flux[i, j],
                "flux_ko": flux_ko[i, j],
                "delta": flux_ko[i, j] - self.flux[i, j],
                "flux_horizon_base": self.flux_horizon[i, j],
                "flux_horizon_ko": horizon_ko[i, j],
                "delta_horizon": horizon_ko[i, j] - self.flux_horizon[i, j],
            }
        )
        if pval is not None:
            flux["pval_horizon"] = pval[self.fate.size :] if len(pval) > self.fate.size else np.nan
        return fate, flux
