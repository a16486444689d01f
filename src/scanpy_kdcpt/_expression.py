"""Expression matrices: where they are, whether they hold counts or log values, and their
normalisation. numpy / scipy only; shared by the model, the plots and the benchmarks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import sparse

from ._constants import TARGET_SUM
from ._errors import KeyNotFoundError

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


def log_normalize(X, data_type: DataType, *, library: np.ndarray | None = None):
    """Library-size normalise to ``TARGET_SUM`` + log1p when ``data_type == "counts"`` (keeps sparsity).

    ``library``: each cell's library size when ``X`` holds only some of its genes.
    """
    if data_type != "counts":
        return X
    if sparse.issparse(X):
        X = sparse.csr_matrix(X, dtype=np.float32)
        lib = np.asarray(X.sum(1)).ravel() if library is None else np.asarray(library, dtype=np.float32)
        X = sparse.diags((TARGET_SUM / np.maximum(lib, 1.0)).astype(np.float32)) @ X
        X.data = np.log1p(X.data)
        return X
    X = np.asarray(X, dtype=np.float32)
    lib = X.sum(1, keepdims=True) if library is None else np.asarray(library, dtype=np.float32).reshape(-1, 1)
    lib = np.maximum(lib, 1.0)
    return np.log1p(X / lib * TARGET_SUM)
