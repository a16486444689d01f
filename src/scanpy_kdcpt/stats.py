"""Statistics of knockout screens: expression-matched nulls, empirical p-values, Benjamini–Hochberg.

Torch-free and AnnData-free, like :mod:`scanpy_kdcpt.markov`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._errors import InvalidInputError

__all__ = ["benjamini_hochberg", "empirical_pvalue", "expression_matched"]


def empirical_pvalue(effect: float, null_effects: np.ndarray) -> float:
    """``(1 + #{null ≥ effect}) / (1 + n_null)``: never 0, valid for exchangeable draws."""
    null_effects = np.asarray(null_effects, dtype=float)
    return float((1 + np.sum(null_effects >= effect)) / (1 + len(null_effects)))


def benjamini_hochberg(pvals: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg q-values (false-discovery-rate adjusted p-values); NaN stays NaN."""
    p = np.asarray(pvals, dtype=float)
    q = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if not len(ok):
        return q
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    scaled = p[order] * m / np.arange(1, m + 1)
    q[order] = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    return q


def expression_matched(
    features: np.ndarray, tested: int, exclude: np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """``n`` genes drawn from the ``3 n`` genes closest to gene ``tested`` in rank-normalised features.

    ``features`` is genes × features (for example mean expression and fraction of cells
    expressing); genes where ``exclude`` is True are never drawn (the gene itself, its targets,
    its correlates, other screened genes).
    """
    ranks = np.column_stack([pd.Series(f).rank(pct=True).to_numpy() for f in np.asarray(features).T])
    d = np.sqrt(((ranks - ranks[tested]) ** 2).sum(1))
    d[np.asarray(exclude, dtype=bool)] = np.inf
    pool = np.argsort(d, kind="stable")[: max(3 * n, n)]
    pool = pool[np.isfinite(d[pool])]
    if len(pool) < n:
        raise InvalidInputError(
            f"Only {len(pool)} genes are available for an expression-matched null of {n} genes; lower n_null."
        )
    return np.sort(rng.choice(pool, n, replace=False))
