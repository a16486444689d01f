"""Classification metrics for phenotype predictions (scikit-learn underneath)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score


def _as_labels(y) -> np.ndarray:
    return np.asarray(pd.Series(y).astype(str))


def accuracy(y_true: Sequence, y_pred: Sequence) -> float:
    """Fraction of cells whose predicted phenotype equals the known one."""
    return float(accuracy_score(_as_labels(y_true), _as_labels(y_pred)))


def macro_f1(y_true: Sequence, y_pred: Sequence) -> float:
    """F1 averaged over phenotypes with equal weight (rare phenotypes count as much as common ones)."""
    return float(f1_score(_as_labels(y_true), _as_labels(y_pred), average="macro", zero_division=0))


def kappa(y_true: Sequence, y_pred: Sequence) -> float:
    """Cohen's kappa: agreement corrected for chance."""
    return float(cohen_kappa_score(_as_labels(y_true), _as_labels(y_pred)))


def classification_report(y_true: Sequence, y_pred: Sequence) -> dict[str, float]:
    """Accuracy, macro-F1 and Cohen's kappa in one dictionary.

    Cells whose true label is missing are left out.
    """
    y_true = pd.Series(np.asarray(y_true, dtype=object))
    y_pred = pd.Series(np.asarray(y_pred, dtype=object))
    keep = y_true.notna().to_numpy()
    if keep.sum() == 0:
        raise ValueError("No cell has a known phenotype: nothing to score.")
    t, p = y_true[keep], y_pred[keep]
    return {
        "accuracy": accuracy(t, p),
        "macro_f1": macro_f1(t, p),
        "kappa": kappa(t, p),
        "n_cells": int(keep.sum()),
    }
