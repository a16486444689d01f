"""Confidence, uncertainty and calibration: temperature scaling, ECE, Brier, split-conformal sets.

The torch-free numerical core of the prediction quality; used by the model, metrics and plots.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._errors import InvalidInputError


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


# -------------------------------------------------------------------------------------------
# temperature scaling, calibration metrics, split-conformal prediction sets
# -------------------------------------------------------------------------------------------
def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature``."""
    z = np.asarray(logits, dtype=float) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def _check_codes(proba: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(proba, dtype=float)
    y = np.asarray(codes).ravel()
    if p.ndim != 2:
        raise InvalidInputError(f"Probabilities must be a cells × phenotypes matrix, got shape {p.shape}.")
    if y.shape[0] != p.shape[0]:
        raise InvalidInputError(f"{y.shape[0]} labels for {p.shape[0]} cells: pass one known phenotype per cell.")
    if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
        raise InvalidInputError("Label codes must lie in [0, n_phenotypes); drop unlabelled cells first.")
    return p, y.astype(int)


def are_probabilities(p: np.ndarray) -> bool:
    """Whether every row of ``p`` is a probability vector (finite, in [0, 1], summing to 1)."""
    p = np.asarray(p, dtype=float)
    return bool(
        np.isfinite(p).all() and (p >= -1e-6).all() and (p <= 1 + 1e-6).all() and np.allclose(p.sum(1), 1, atol=1e-3)
    )


def _check_probabilities(proba: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_check_codes`, and rows that are probabilities (:func:`are_probabilities`)."""
    p, y = _check_codes(proba, codes)
    if p.size and not are_probabilities(p):
        raise InvalidInputError(
            "Expected probabilities (finite rows in [0, 1] summing to 1): for logits pass their softmax "
            "(scanpy_kdcpt.calibration.softmax); drop cells with missing values."
        )
    return p, y


def check_n_bins(n_bins) -> int:
    """``n_bins`` as an integer of 1 or more (else a ValueError naming it)."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise InvalidInputError(f"n_bins must be a whole number of 1 or more, got {n_bins!r}.")
    return int(n_bins)


def nll(logits: np.ndarray, codes: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the known phenotypes under ``softmax(logits / T)``."""
    z = np.asarray(logits, dtype=float) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    y = np.asarray(codes, dtype=int).ravel()
    return float(-log_p[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, codes: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Temperature ``T`` minimising the negative log-likelihood of held-out cells.

    A one-dimensional bounded search over ``log T`` (scipy's ``minimize_scalar``); ``T > 1``
    softens an over-confident model, ``T < 1`` sharpens an under-confident one. The predicted
    phenotype (argmax) does not change.
    """
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=float)
    _check_codes(logits, codes)
    if len(logits) == 0:
        raise InvalidInputError("No labelled held-out cells to fit a temperature on.")
    res = minimize_scalar(
        lambda log_t: nll(logits, codes, np.exp(log_t)),
        bounds=(np.log(bounds[0]), np.log(bounds[1])),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(np.exp(res.x))


def reliability_table(proba: np.ndarray, codes: np.ndarray, n_bins: int = 15) -> pd.DataFrame:
    """Confidence (max probability) in ``n_bins`` equal-width bins against accuracy.

    Returns
    -------
    DataFrame with one row per bin: ``lower``, ``upper``, ``confidence`` (mean in the bin),
    ``accuracy`` (fraction correct), ``count`` (cells); empty bins have NaN means and count 0.

    """
    p, y = _check_probabilities(proba, codes)
    n_bins = check_n_bins(n_bins)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bins (lower, upper]; a confidence of exactly 0 falls in the first bin
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        acc = np.bincount(idx, weights=correct, minlength=n_bins) / count
    return pd.DataFrame(
        {"lower": edges[:-1], "upper": edges[1:], "confidence": mean_conf, "accuracy": acc, "count": count}
    )


def expected_calibration_error(proba: np.ndarray, codes: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE: ``Σ_b (n_b / n) |accuracy_b - confidence_b|`` over ``n_bins`` equal bins."""
    table = reliability_table(proba, codes, n_bins)
    if table["count"].sum() == 0:
        raise InvalidInputError("No cells to compute the ECE on.")
    return ece_from_table(table)


def ece_from_table(table: pd.DataFrame) -> float:
    """The ECE of a :func:`reliability_table` (NaN for a table without cells)."""
    t = table[table["count"] > 0]
    n = t["count"].sum()
    return float((t["count"] / n * (t["accuracy"] - t["confidence"]).abs()).sum()) if n else float("nan")


def ece_floor_from_table(table: pd.DataFrame) -> float:
    """The ECE a perfectly calibrated model would show on the cells of a :func:`reliability_table`.

    On a finite set the binned ECE is biased upwards by sampling alone: even when every cell is
    right with exactly its confidence, a bin's accuracy scatters around its confidence. With the
    ``n_b`` cells of bin ``b`` right with probability ``c_b`` (the bin's mean confidence), the
    number right is binomial, and the floor is ``Σ_b (n_b / n) E|X_b / n_b − c_b|``,
    ``X_b ~ Binomial(n_b, c_b)``, summed over the binomial's mass. It needs only the table
    (counts and mean confidences), so it can be given beside any stored ECE. Taking every cell
    of a bin at the bin's mean confidence slightly overstates the spread (cells of different
    confidence vary less in total), by little within a bin 1/15 wide. It is an expectation: a
    calibrated model's ECE falls below it about as often as above. An ECE near its floor is as
    good as these many cells can show; the floor falls roughly as ``1 / sqrt(n)``.
    """
    from scipy import stats

    t = table[table["count"] > 0]
    n = float(t["count"].sum())
    if not n:
        return float("nan")
    total = 0.0
    for n_b, c_b in zip(t["count"].to_numpy(int), t["confidence"].to_numpy(float), strict=True):
        c_b = min(max(c_b, 0.0), 1.0)
        # counts beyond 12 sd of the mean carry no mass (keeps millions of cells cheap)
        half = 12.0 * np.sqrt(n_b * c_b * (1.0 - c_b)) + 2.0
        k = np.arange(max(0, int(n_b * c_b - half)), min(n_b, int(n_b * c_b + half)) + 1)
        total += n_b / n * float(np.sum(stats.binom.pmf(k, n_b, c_b) * np.abs(k / n_b - c_b)))
    return float(total)


def ece_floor(proba: np.ndarray, n_bins: int = 15) -> float:
    """:func:`ece_floor_from_table` for probabilities ``proba`` (cells × phenotypes; labels not needed)."""
    p = np.asarray(proba, dtype=float)
    if p.ndim != 2 or not len(p):
        raise InvalidInputError(f"proba must be a non-empty cells × phenotypes array, got shape {p.shape}.")
    return ece_floor_from_table(reliability_table(p, p.argmax(axis=1), n_bins))


def brier_score(proba: np.ndarray, codes: np.ndarray) -> float:
    """Multi-class Brier score: mean over cells of ``Σ_j (p_j - 1[j = y])²`` (0 best, 2 worst)."""
    p, y = _check_probabilities(proba, codes)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def conformal_scores(proba: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Split-conformal non-conformity scores ``1 - p(true phenotype)`` of calibration cells."""
    p, y = _check_codes(proba, codes)
    return 1.0 - p[np.arange(len(y)), y]


def conformal_threshold(scores: np.ndarray, alpha: float) -> float:
    """The ``⌈(n + 1)(1 - α)⌉ / n`` empirical quantile of calibration scores.

    Sets ``{j : 1 - p_j ≤ q}`` then cover the true phenotype of an exchangeable cell with
    probability at least ``1 - α``.
    """
    if not 0 < alpha < 1:
        raise InvalidInputError(f"conformal_alpha must be in (0, 1), e.g. 0.1 for 90 % coverage; got {alpha}.")
    scores = np.sort(np.asarray(scores, dtype=float))
    n = len(scores)
    if n == 0:
        raise InvalidInputError("No calibration scores: call model.calibrate() on labelled held-out cells first.")
    rank = int(np.ceil((n + 1) * (1 - alpha)))
    if rank > n:
        # too few calibration cells for this alpha: the only valid set is every phenotype
        import warnings

        warnings.warn(
            f"conformal_alpha={alpha} needs at least {int(np.ceil(1 / alpha)) - 1} calibration cells, there are "
            f"{n}: every prediction set holds every phenotype (guaranteed coverage, no information). Use a "
            f"larger alpha (at least {1 / (n + 1):.3g}) or calibrate on more held-out cells.",
            UserWarning,
            stacklevel=2,
        )
        return float("inf")
    return float(scores[rank - 1])


def prediction_sets(proba: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean cells × phenotypes membership: ``1 - p_j ≤ threshold``, the argmax always in."""
    p = np.asarray(proba, dtype=float)
    sets = (1.0 - p) <= threshold + 1e-12
    sets[np.arange(len(p)), p.argmax(axis=1)] = True
    return sets


#: shares of the network's logits on top of the convex first stage tried by :func:`choose_mix`
MIX_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


def _balanced_log_loss(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean over phenotypes of the mean negative log-likelihood of their cells."""
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    nll = -logp[np.arange(len(y)), y]
    return float(np.mean([nll[y == c].mean() for c in np.unique(y)]))


def _best_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature minimising the balanced log-loss (a coarse log grid; calibrate() refines later)."""
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 61))
    return float(min(grid, key=lambda t: _balanced_log_loss(logits / t, y)))


def choose_mix(linear: np.ndarray, network: np.ndarray, y: np.ndarray) -> tuple[float, dict[float, float]]:
    """The share of the network in ``linear + mix * network`` from :data:`MIX_GRID` with the lowest
    class-balanced log-loss on the validation cells, each candidate at its best temperature
    (temperature scaling comes after, so a candidate is not judged by its sharpness). Ties
    (within 1e-4) go to the larger share.
    """
    scores = {}
    for m in MIX_GRID:
        lg = linear + m * network
        scores[m] = _balanced_log_loss(lg / _best_temperature(lg, y), y)
    best = min(scores.values())
    return max(m for m, s in scores.items() if s <= best + 1e-4), scores
