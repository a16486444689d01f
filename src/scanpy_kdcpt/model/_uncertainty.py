"""Confidence and uncertainty of phenotype probabilities. numpy only."""

from __future__ import annotations

import numpy as np


def confidence(proba: np.ndarray) -> np.ndarray:
    """Maximum probability per cell."""
    return np.asarray(proba).max(axis=1)


def cosine_uncertainty(proba: np.ndarray) -> np.ndarray:
    """Cosine uncertainty index in [0, 1].

    ``(1 - cos(p, e_ŷ)) / (1 - 1/sqrt(C))`` with ``e_ŷ`` the one-hot vector of the predicted
    phenotype: 0 for a distribution on one phenotype, 1 for the uniform distribution.
    """
    p = np.asarray(proba, dtype=float)
    n_classes = p.shape[1]
    cos = p.max(axis=1) / np.maximum(np.linalg.norm(p, axis=1), 1e-12)
    return np.clip((1.0 - cos) / (1.0 - 1.0 / np.sqrt(n_classes)), 0.0, 1.0)
