"""Expression-matched null genes for a knockout's empirical p-values (never its targets or close correlates)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from .. import _expression, stats
from .._errors import InvalidInputError
from ._units import Unit

if TYPE_CHECKING:
    pass


def null_draws(
    X,
    units: dict[str, Unit],
    n_null: int,
    rng: np.random.Generator,
    *,
    targets: sparse.csr_matrix | None = None,
    max_corr: float = 0.15,
    pool: dict | None = None,
    features: np.ndarray | None = None,
    n_genes: int | None = None,
) -> dict[str, list[Unit]]:
    """Per unit, ``n_null`` expression-matched units of the same size.

    Never drawn: the unit's genes, their prior targets (``targets``: regulators × genes, when
    given), genes whose correlation with one of the unit's genes (Pearson, on ``log1p`` of the
    values) exceeds ``max_corr`` in absolute value, and the other screened genes (when at least
    ``2 * n_null`` genes remain). ``pool`` (a dict) receives, per unit, the size of the pool
    and the numbers of genes left out as targets and as correlates. ``features``: the genes'
    :func:`match_features` when already computed (one pass over ``X`` per call). ``n_genes``:
    columns from ``n_genes`` on are regulatory sites (a multiome model): a gene's null is drawn
    from genes and a site's from sites, never across (their values are not comparable).
    """
    if not n_null:
        return {}
    n_features = X.shape[1]
    is_site = np.arange(n_features) >= (n_features if n_genes is None else int(n_genes))
    features = match_features(X) if features is None else features
    screened = np.zeros(n_features, bool)
    screened[[g for u in units.values() for g in u]] = True
    spare = n_features - int(screened.sum()) >= 2 * n_null
    corr = _Correlations(X)
    out = {}
    for name, unit in units.items():
        exclude = screened.copy() if spare else np.zeros(n_features, bool)
        exclude[list(unit)] = True
        tgt = np.zeros(n_features, bool)
        if targets is not None:
            tgt[np.asarray(targets[list(unit)].sum(0)).ravel() > 0] = True
        cor = np.zeros(n_features, bool)
        for g in unit:
            cor |= np.abs(corr.of(g)) > max_corr
        cor[list(unit)] = False
        n_tgt, n_cor = int((tgt & ~exclude).sum()), int((cor & ~exclude & ~tgt).sum())
        exclude |= tgt | cor
        if n_features - int(exclude.sum()) < n_null:  # too strict for this gene: keep the correlates
            exclude &= ~(cor & ~tgt)
            n_cor = 0
        draws = [stats.expression_matched(features, g, exclude | (is_site != is_site[g]), n_null, rng) for g in unit]
        out[name] = [tuple(int(d[i]) for d in draws) for i in range(n_null)]
        if pool is not None:
            kinds = np.isin(is_site, is_site[list(unit)])  # the columns of the unit's modalities
            pool[name] = {
                "null_pool": int((~exclude & kinds).sum()),
                "null_excluded_targets": n_tgt,
                "null_excluded_correlated": n_cor,
            }
    return out


def regulator_draws(
    X,
    units: dict[str, Unit],
    regulators: np.ndarray,
    n: int,
    rng: np.random.Generator,
    n_genes: int | None = None,
    features: np.ndarray | None = None,
) -> dict:
    """Per unit, ``n`` units of GRN ``regulators`` (column indices), one regulator per gene of the
    unit matched to it in (mean, fraction of cells expressing) as :func:`null_draws` does: the
    null of a *simulated* knockout's fate changes (a non-regulator's shift moves no other gene, so
    it is no null there). Never drawn: genes screened in the call. Columns from ``n_genes`` on
    (regulatory sites of a multiome model) are not simulated and get no draw; a unit of sites
    alone gets none. ``features`` as in :func:`null_draws`.
    """
    if not n:
        return {}
    n_features = X.shape[1]
    n_genes = n_features if n_genes is None else int(n_genes)
    exclude = np.ones(n_features, bool)
    exclude[np.asarray(regulators, dtype=int)] = False
    exclude[[g for u in units.values() for g in u]] = True
    if int((~exclude).sum()) < n:
        raise InvalidInputError(
            f"n_regulator_null={n} needs {n} GRN regulators besides the knocked-out genes; the GRN has "
            f"{int((~exclude).sum())} such. Lower n_regulator_null, or fit the GRN with more regulators "
            "(model.fit_grn(regulators=...))."
        )
    features = match_features(X) if features is None else features
    out = {}
    for name, unit in units.items():
        draws = [stats.expression_matched(features, g, exclude, n, rng) for g in unit if g < n_genes]
        if draws:
            out[name] = [tuple(int(d[i]) for d in draws) for i in range(n)]
    return out


class _Correlations:
    """Pearson correlation of one gene with every gene, on ``log1p`` values of up to ``max_cells``
    sampled cells (read in row blocks: X is never densified whole, backed data stays on disk).
    """

    def __init__(self, X, max_cells: int = 5000, seed: int = 0):
        n = X.shape[0]
        rows = np.arange(n)
        if n > max_cells:
            rows = np.sort(np.random.default_rng(seed).choice(n, max_cells, replace=False))
        sub = _expression.read_rows(X, rows)
        if sparse.issparse(sub):
            self.X = sparse.csc_matrix(sub, dtype=np.float64).log1p()
        else:
            self.X = np.log1p(np.asarray(sub, dtype=np.float64))
        self.n = len(rows)
        self.mean = np.asarray(self.X.mean(0)).ravel()
        sq = self.X.multiply(self.X) if sparse.issparse(self.X) else self.X**2
        self.sd = np.sqrt(np.maximum(np.asarray(sq.mean(0)).ravel() - self.mean**2, 0))

    def of(self, g: int) -> np.ndarray:
        col = self.X[:, g]
        col = col.toarray().ravel() if sparse.issparse(col) else np.asarray(col).ravel()
        cov = np.asarray(self.X.T @ col).ravel() / self.n - self.mean * self.mean[g]
        with np.errstate(divide="ignore", invalid="ignore"):
            r = cov / (self.sd * self.sd[g])
        return np.nan_to_num(r)


def null_summary(effect: float, null_effects: list[float]) -> dict:
    if not null_effects:
        return {"pval": np.nan, "null_mean": np.nan, "null_low": np.nan, "null_high": np.nan}
    ne = np.asarray(null_effects, dtype=float)
    low, high = np.quantile(ne, [0.025, 0.975])
    return {
        "pval": stats.empirical_pvalue(effect, ne),
        "null_mean": float(ne.mean()),
        "null_low": float(low),
        "null_high": float(high),
    }


def match_features(X) -> np.ndarray:
    """Genes × 2: what null genes are matched on, each gene's mean and fraction of cells expressing."""
    return np.column_stack(gene_stats(X))


def gene_stats(X, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and fraction of nonzero cells, in row chunks."""
    n, g = X.shape
    s, nz = np.zeros(g), np.zeros(g)
    for start in range(0, n, chunk):
        block = X[start : start + chunk]
        if sparse.issparse(block):
            block = sparse.csr_matrix(block)
            s += np.asarray(block.sum(0)).ravel()
            nz += np.bincount(block.indices[block.data != 0], minlength=g)
        else:
            block = np.asarray(block)
            s += block.sum(0)
            nz += (block != 0).sum(0)
    return s / max(n, 1), nz / max(n, 1)
