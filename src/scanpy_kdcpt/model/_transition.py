"""Phenotype transition matrix, entropy and calibration (methods mixed into KDCPT)."""

from __future__ import annotations


class TransitionMixin:
    """Transition matrix, entropies, calibration and conformal prediction sets."""

    def _write_transitions(self, adata, keys, proba, labels) -> None:
        """Write the transition matrix and entropies (filled in by the transitions work)."""
