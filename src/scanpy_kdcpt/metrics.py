"""Classification metrics for phenotype predictions (scikit-learn underneath)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score

from . import calibration
from ._errors import InvalidInputError
from ._utils import label_text


def _as_labels(y) -> np.ndarray:
    """Labels as text; whole numbers as integers first (``1.0`` → ``"1"``: integer labels with a
    missing value arrive as floats and must still equal ``1``).
    """
    values = [_text(v) for v in np.asarray(y, dtype=object).ravel()]
    return np.asarray(values, dtype=object).astype(str)


_text = label_text


def accuracy(y_true: Sequence, y_pred: Sequence) -> float:
    """Fraction of cells whose predicted phenotype equals the known one."""
    return float(accuracy_score(_as_labels(y_true), _as_labels(y_pred)))


def macro_f1(y_true: Sequence, y_pred: Sequence) -> float:
    """F1 averaged over phenotypes with equal weight (rare phenotypes count as much as common ones)."""
    return float(f1_score(_as_labels(y_true), _as_labels(y_pred), average="macro", zero_division=0))


def kappa(y_true: Sequence, y_pred: Sequence) -> float:
    """Cohen's kappa: agreement corrected for chance (NaN where chance agreement is certain, e.g.
    one phenotype among the cells and predictions: kappa is undefined there).
    """
    t, p = _as_labels(y_true), _as_labels(y_pred)
    if len(np.union1d(t, p)) < 2:  # scikit-learn warns and returns NaN (0/0)
        return float("nan")
    return float(cohen_kappa_score(t, p))


def classification_report(y_true: Sequence, y_pred: Sequence) -> dict[str, float]:
    """Accuracy, macro-F1 and Cohen's kappa in one dictionary.

    Cells whose true label is missing are left out.
    """
    y_true = pd.Series(np.asarray(y_true, dtype=object))
    y_pred = pd.Series(np.asarray(y_pred, dtype=object))
    if len(y_true) != len(y_pred):
        raise InvalidInputError(f"{len(y_true)} true labels for {len(y_pred)} predictions: pass one of each per cell.")
    keep = y_true.notna().to_numpy()
    if keep.sum() == 0:
        raise InvalidInputError("No cell has a known phenotype: nothing to score.")
    t, p = y_true[keep], y_pred[keep]
    return {
        "accuracy": accuracy(t, p),
        "macro_f1": macro_f1(t, p),
        "kappa": kappa(t, p),
        "n_cells": int(keep.sum()),
    }


def _proba_and_codes(y_true: Sequence, proba, classes: Sequence | None) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and integer codes of the known phenotypes (cells without a label dropped)."""
    if isinstance(proba, pd.DataFrame):
        if classes is None:
            classes = list(proba.columns)
        proba = proba.to_numpy()
    p = np.asarray(proba, dtype=float)
    if p.ndim != 2:
        raise InvalidInputError(f"proba must be a cells × phenotypes matrix, got shape {p.shape}.")
    if classes is None:
        raise InvalidInputError(
            "Pass classes=[...] (the phenotype of each column) or proba as a DataFrame with them as columns."
        )
    classes = [str(c) for c in classes]
    if len(classes) != p.shape[1]:
        raise InvalidInputError(f"{len(classes)} classes for {p.shape[1]} probability columns.")
    y = pd.Series(np.asarray(y_true, dtype=object))
    if len(y) != len(p):
        raise InvalidInputError(f"{len(y)} labels for {len(p)} rows of probabilities.")
    keep = y.notna().to_numpy()
    y = pd.Series(_as_labels(y[keep]), dtype=object)
    unknown = sorted(set(y) - set(classes))
    if unknown:
        raise InvalidInputError(
            f"Labels {unknown[:5]} are not among the probability columns {classes[:10]}; "
            "score only cells of phenotypes the model predicts."
        )
    if not keep.any():
        raise InvalidInputError("No cell has a known phenotype: nothing to score.")
    p = p[keep]
    if not calibration.are_probabilities(p):
        raise InvalidInputError(
            "proba must hold probabilities (rows in [0, 1] summing to 1): for logits pass their softmax "
            "(e.g. model.predict(soft=True))."
        )
    lookup = {c: i for i, c in enumerate(classes)}
    return p, y.map(lookup).to_numpy(int)


def ece(y_true: Sequence, proba, *, classes: Sequence | None = None, n_bins: int = 15) -> float:
    """Expected calibration error of the top-label confidence (``n_bins`` equal-width bins).

    Parameters
    ----------
    y_true
        Known phenotype per cell (missing values are left out).
    proba
        Cells × phenotypes probabilities: a DataFrame with phenotypes as columns, or an array
        with ``classes``.
    classes
        Phenotype of each column of an array ``proba``.
    n_bins
        Confidence bins.

    Returns
    -------
    ``Σ_b (n_b / n) |accuracy_b - confidence_b|``: 0 for a calibrated model.

    """
    n_bins = calibration.check_n_bins(n_bins)
    p, y = _proba_and_codes(y_true, proba, classes)
    return calibration.expected_calibration_error(p, y, n_bins)


def brier(y_true: Sequence, proba, *, classes: Sequence | None = None) -> float:
    """Multi-class Brier score: mean over cells of ``Σ_j (p_j - 1[j = y])²`` (0 best, 2 worst).

    Parameters are those of :func:`ece`.
    """
    p, y = _proba_and_codes(y_true, proba, classes)
    return calibration.brier_score(p, y)


def prediction_metrics(labels: pd.Series, proba: pd.DataFrame, subsets: dict[str, np.ndarray]) -> dict[str, dict]:
    """Accuracy, macro-F1, kappa, ECE, mean confidence and mean uncertainty per subset of cells.

    Beside the ECE, ``ece_floor`` is the ECE a perfectly calibrated model with these
    probabilities would show on this many cells (:func:`scanpy_kdcpt.calibration.ece_floor`):
    on a few hundred cells the binned ECE cannot go much below it.

    Parameters
    ----------
    labels
        Known phenotype of each cell (missing: unlabelled).
    proba
        Cells × phenotypes probabilities (phenotypes as columns).
    subsets
        Name → positions of labelled cells (empty subsets are skipped).

    """
    p = proba.to_numpy()
    names = np.asarray(list(map(str, proba.columns)), dtype=object)
    pred = pd.Series(names[p.argmax(1)], index=labels.index)
    out = {}
    for name, idx in subsets.items():
        idx = np.asarray(idx, dtype=int)
        if not idx.size:
            continue
        r = classification_report(labels.iloc[idx], pred.iloc[idx])
        r["ece"] = ece(labels.iloc[idx].astype(str), p[idx], classes=list(names))
        r["ece_floor"] = calibration.ece_floor(p[idx])  # the ECE of a calibrated model on these cells
        r["mean_confidence"] = float(calibration.confidence(p[idx]).mean())
        r["mean_uncertainty"] = float(calibration.cosine_uncertainty(p[idx]).mean())
        out[name] = r
    return out
