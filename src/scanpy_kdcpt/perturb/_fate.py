"""Fate deltas of knockouts on a directed cell-level chain (torch-free; used by ``knockout``).

With a cell chain ``T`` (cells × cells, row-stochastic, e.g. from
:meth:`~scanpy_kdcpt.KDCPT.compute_transitions`) and soft phenotype memberships ``M`` (the
model's probabilities, cells × phenotypes), the directed phenotype chain is
``P = D⁻¹ Mᵀ T M`` (:func:`scanpy_kdcpt.markov.coarse_grain`). A knockout changes ``M`` in
the cells it reaches (``M_ko``) and so ``P_ko`` on the same ``T``. Fates are the absorption
probabilities of the phenotype chain into the terminal phenotypes (made absorbing), from each
source phenotype; ``source="all"`` is their mean weighted by the cells' membership mass.
Net flux ``F - Fᵀ`` with ``F = diag(Mᵀ 1) P``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import sparse

from .. import markov
from .._errors import KeyNotFoundError


def resolve_chain(model, chain, terminal: Sequence[str] | None, n_cells: int):
    """``(T, terminal)`` from the arguments or the model's ``transitions_``; ``(None, None)`` if none."""
    source = "argument"
    if chain is None:
        state = model.transitions_  # a TransitionState, set by model.compute_transitions()
        if state is None or not state.registered:
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
            raise ValueError("chain is a Transitions result without a cell_chain; pass a cells × cells matrix.")
    T = sparse.csr_matrix(chain, dtype=float)
    if T.shape != (n_cells, n_cells):
        raise ValueError(
            f"chain must be cells × cells ({n_cells} × {n_cells}) for the knocked-out AnnData, got {T.shape} "
            f"(from {source})."
        )
    rows = np.asarray(T.sum(1)).ravel()
    if (T.data < 0).any() or not np.allclose(rows, 1.0, atol=1e-6):
        raise ValueError(f"chain (from {source}) must be row-stochastic: non-negative, rows summing to 1.")
    if terminal is None or (not isinstance(terminal, str) and len(terminal) == 0):
        raise ValueError(
            "Fate deltas need the terminal phenotypes: pass terminal=[...] (e.g. ['Alpha', 'Beta', 'Delta', "
            "'Epsilon']) with the chain."
        )
    terminal = [terminal] if isinstance(terminal, str) else [str(t) for t in terminal]
    missing = [t for t in terminal if t not in model.classes_]
    if missing:
        raise KeyNotFoundError(f"terminal phenotype(s) {missing} not among the model's phenotypes {model.classes_}.")
    return T, terminal


def phenotype_fates(P: np.ndarray, terminal_idx: np.ndarray) -> np.ndarray:
    """Phenotypes × terminal phenotypes: absorption probabilities with the terminal rows absorbing."""
    K = P.shape[0]
    absorbing = np.zeros(K, bool)
    absorbing[terminal_idx] = True
    targets = np.zeros(K, np.int64)
    targets[terminal_idx] = np.arange(len(terminal_idx))
    return markov.absorption_probabilities(P, absorbing, targets, len(terminal_idx))


class FateDeltas:
    """Base directed chain and fates; :meth:`unit` gives one knockout's tidy rows."""

    def __init__(self, T: sparse.csr_matrix, proba: np.ndarray, phenotypes: list[str], terminal: list[str]):
        self.T, self.proba, self.phenotypes = T, np.asarray(proba, float), list(phenotypes)
        self.terminal = list(terminal)
        self.terminal_idx = np.array([self.phenotypes.index(t) for t in terminal])
        self.P, self.sizes = self._chain(self.proba)
        self.fate = phenotype_fates(self.P, self.terminal_idx)
        self.flux = markov.net_flux(self.P, self.sizes)

    def _chain(self, M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return markov.coarse_grain(self.T, M), M.sum(0)

    def _all(self, fate: np.ndarray) -> np.ndarray:
        ok = ~np.isnan(fate).any(1)
        w = self.sizes * ok
        return (w[ok, None] * fate[ok]).sum(0) / max(w.sum(), 1e-12)

    def unit(self, name: str, cells: np.ndarray, dp: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Fate and flux rows of one knockout: ``dp`` is the change of probabilities of ``cells``."""
        M = self.proba.copy()
        np.add.at(M, np.asarray(cells, dtype=np.int64), dp)
        M = np.clip(M, 0, None)
        P_ko, sizes_ko = self._chain(M)
        fate_ko = phenotype_fates(P_ko, self.terminal_idx)
        src = [*self.phenotypes, "all"]
        base = np.vstack([self.fate, self._all(self.fate)])
        ko = np.vstack([fate_ko, self._all(fate_ko)])
        K, J = base.shape
        fate = pd.DataFrame(
            {
                "gene": name,
                "source": pd.Categorical(np.repeat(src, J), categories=src),
                "terminal": pd.Categorical(np.tile(self.terminal, K), categories=self.terminal),
                "fate_base": base.ravel(),
                "fate_ko": ko.ravel(),
                "delta": (ko - base).ravel(),
            }
        )
        flux_ko = markov.net_flux(P_ko, sizes_ko)
        i, j = np.nonzero(~np.eye(len(self.phenotypes), dtype=bool))
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
            }
        )
        return fate, flux
