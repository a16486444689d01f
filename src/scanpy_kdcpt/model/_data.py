"""Checks and transforms of the expression matrix: value checks, counts vs log detection,
normalisation, PCA encoder fit, gene alignment of query data. numpy / scipy only.
"""

from __future__ import annotations

import difflib
import warnings
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from scipy import sparse

from .._constants import TARGET_SUM
from .._errors import KeyNotFoundError

if TYPE_CHECKING:
    from anndata import AnnData

DataType = Literal["counts", "log"]


def get_matrix(adata: AnnData, layer: str | None):
    """``adata.layers[layer]`` or ``adata.X``, with a clear error for a missing layer."""
    if layer is None:
        if adata.X is None:
            raise ValueError("adata.X is empty. Pass layer=... naming the layer with expression values.")
        return adata.X
    if layer not in adata.layers:
        raise KeyNotFoundError(
            f"Layer {layer!r} is not in adata.layers (available: {list(adata.layers.keys())}). "
            "Pass layer=None to use adata.X."
        )
    return adata.layers[layer]


def _values_sample(X, max_rows: int = 2000) -> np.ndarray:
    """Nonzero values of up to ``max_rows`` evenly spaced rows (dense or sparse, backed or not)."""
    n = X.shape[0]
    rows = np.unique(np.linspace(0, n - 1, min(n, max_rows)).astype(int))
    sub = X[rows]
    if sparse.issparse(sub):
        return np.asarray(sub.data)
    return np.asarray(sub).ravel()


def check_values(X, what: str = "the expression matrix") -> None:
    """Refuse NaN / inf and scaled (z-scored, negative) values with a message naming the fix."""
    data = X.data if sparse.issparse(X) else np.asarray(X)
    if not np.all(np.isfinite(data)):
        n_bad = int(np.size(data) - np.isfinite(data).sum())
        raise ValueError(
            f"{what} contains {n_bad} NaN or infinite values. Remove or impute them "
            "(e.g. `adata = adata[:, np.isfinite(X).all(0)]`) before setup_anndata."
        )
    if data.size and data.min() < 0:
        raise ValueError(
            f"{what} has negative values (min {data.min():.3g}): it looks scaled (z-scored). "
            "KD-CPT needs counts or log-normalised expression: pass layer=... with counts, "
            "or use log-normalised values (for scanpy's pbmc68k_reduced they are in adata.raw; "
            "kdcpt.datasets.pbmc68k_reduced() returns them in X)."
        )


def detect_data_type(X) -> DataType:
    """``"counts"`` when the sampled values are all non-negative integers, else ``"log"``."""
    vals = _values_sample(X)
    vals = vals[vals != 0]
    if vals.size == 0:
        return "log"
    if np.allclose(vals, np.round(vals)) and vals.max() > 1:
        return "counts"
    return "log"


def log_normalize(X, data_type: DataType):
    """Library-size normalise + log1p when ``data_type == "counts"`` (keeps sparsity)."""
    if data_type != "counts":
        return X
    if sparse.issparse(X):
        X = sparse.csr_matrix(X, dtype=np.float32)
        lib = np.asarray(X.sum(1)).ravel()
        X = sparse.diags((TARGET_SUM / np.maximum(lib, 1.0)).astype(np.float32)) @ X
        X.data = np.log1p(X.data)
        return X
    X = np.asarray(X, dtype=np.float32)
    lib = np.maximum(X.sum(1, keepdims=True), 1.0)
    return np.log1p(X / lib * TARGET_SUM)


def fit_pca(X, n_components: int, seed: int, max_cells: int = 20_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA of (log-normalised) ``X`` on up to ``max_cells`` cells.

    Returns ``(gene_mean, loadings (genes × components), component_std)``.
    Sparse input is never densified whole.
    """
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    n = X.shape[0]
    if n > max_cells:
        X = X[np.sort(rng.choice(n, max_cells, replace=False))]
    n_components = int(min(n_components, X.shape[0] - 1, X.shape[1] - 1))
    if sparse.issparse(X):
        solver = "covariance_eigh" if X.shape[1] <= 4000 else "arpack"
        X = sparse.csr_matrix(X, dtype=np.float32)
    else:
        solver = "covariance_eigh" if X.shape[1] <= 4000 else "randomized"
        X = np.asarray(X, dtype=np.float32)
    pca = PCA(n_components=n_components, svd_solver=solver, random_state=seed).fit(X)
    std = np.sqrt(np.maximum(pca.explained_variance_, 1e-8))
    return pca.mean_.astype(np.float32), pca.components_.T.astype(np.float32), std.astype(np.float32)


def closest_names(names, universe, n: int = 3) -> dict[str, list[str]]:
    """For each unknown name, the closest names in ``universe`` (case-insensitive first)."""
    universe = list(map(str, universe))
    upper = {u.upper(): u for u in universe}
    out = {}
    for name in names:
        if str(name).upper() in upper:
            out[name] = [upper[str(name).upper()]]
        else:
            out[name] = difflib.get_close_matches(str(name), universe, n=n)
    return out


def align_genes(X, query_genes: pd.Index, model_genes: pd.Index):
    """Reorder the columns of ``X`` to ``model_genes``; missing genes zero-filled with a warning."""
    if query_genes.equals(model_genes):
        return X
    if query_genes.has_duplicates:
        dup = query_genes[query_genes.duplicated()].unique()[:5].tolist()
        raise ValueError(f"Query var_names are not unique (e.g. {dup}). Call adata.var_names_make_unique().")
    pos = query_genes.get_indexer(model_genes)
    present = pos >= 0
    n_missing = int((~present).sum())
    if present.sum() == 0:
        raise ValueError(
            "None of the model's genes are in the query's var_names "
            f"(model: {list(model_genes[:3])}..., query: {list(query_genes[:3])}...). "
            "Check that both use the same gene identifiers (symbols vs Ensembl IDs)."
        )
    if n_missing:
        warnings.warn(
            f"{n_missing} of the model's {len(model_genes)} genes are missing from the query and are "
            f"zero-filled (e.g. {list(model_genes[~present][:5])}). Predictions lean on the shared genes.",
            UserWarning,
            stacklevel=3,
        )
    if sparse.issparse(X):
        # a 0/1 selection matrix (query genes × model genes) keeps everything sparse
        cols = np.flatnonzero(present)
        sel = sparse.csr_matrix(
            (np.ones(cols.size, dtype=np.float32), (pos[present], cols)), shape=(len(query_genes), len(model_genes))
        )
        return sparse.csr_matrix(X @ sel, dtype=np.float32)
    X = np.asarray(X)
    out = np.zeros((X.shape[0], len(model_genes)), dtype=np.float32)
    out[:, present] = X[:, pos[present]]
    return out
