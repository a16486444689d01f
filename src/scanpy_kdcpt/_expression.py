"""Expression matrices: where they are, whether they hold counts or log values, and their
normalisation. numpy / scipy only; shared by the model, the plots and the benchmarks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import sparse

from ._constants import TARGET_SUM
from ._errors import InvalidInputError, KeyNotFoundError

if TYPE_CHECKING:
    from anndata import AnnData

DataType = Literal["counts", "log"]


def get_matrix(adata: AnnData, layer: str | None, *, name: str = "adata", layer_arg: str = "layer"):
    """``adata.layers[layer]`` or ``adata.X``, with a clear error for a missing layer; ``name`` is
    how the messages call the object (e.g. ``mdata['atac']``), ``layer_arg`` the argument to pass.
    """
    if layer is None:
        if adata.X is None:
            raise InvalidInputError(f"{name}.X is empty. Pass {layer_arg}=... naming the layer with the values.")
        return adata.X
    if layer not in adata.layers:
        raise KeyNotFoundError(
            f"Layer {layer!r} is not in {name}.layers (available: {list(adata.layers.keys())}). "
            f"Pass {layer_arg}=None to use {name}.X."
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


#: rows read at a time when a matrix is streamed (backed or large)
CHUNK_ROWS = 10_000
#: the largest value of log-normalised data: log1p(1e6) ≈ 13.8 (log2(TPM + 1) ≈ 20); beyond this,
#: non-integer values are normalised but not logged
MAX_LOG_VALUE = 50.0


def is_backed(X) -> bool:
    """True for an on-disk (backed) matrix: an h5py dataset or anndata's backed sparse dataset."""
    return not (sparse.issparse(X) or isinstance(X, np.ndarray)) and hasattr(X, "shape")


def iter_rows(X, chunk: int = CHUNK_ROWS):
    """Yield ``(start, block)``: blocks of up to ``chunk`` rows (scipy sparse or numpy), read in turn.

    In-memory, backed (``read_h5ad(..., backed="r")``) and sparse matrices alike; never more than
    ``chunk`` rows in memory at once.
    """
    n = X.shape[0]
    for start in range(0, n, chunk):
        block = X[start : min(start + chunk, n)]
        if not sparse.issparse(block):
            block = np.asarray(block)
        yield start, block


def read_rows(X, rows: np.ndarray, chunk: int = CHUNK_ROWS):
    """Rows ``rows`` (sorted positions) of ``X`` as one in-memory matrix (sparse stays sparse)."""
    rows = np.asarray(rows)
    blocks = []
    for s in range(0, len(rows), chunk):
        block = X[rows[s : s + chunk]]
        blocks.append(block if sparse.issparse(block) else np.asarray(block))
    if not blocks:
        return X[rows]
    if sparse.issparse(blocks[0]):
        return sparse.vstack(blocks, format="csr")
    return np.concatenate(blocks)


def row_sums(X, chunk: int = CHUNK_ROWS) -> np.ndarray:
    """Each row's sum (library size), read in blocks."""
    out = np.zeros(X.shape[0], dtype=np.float64)
    for start, block in iter_rows(X, chunk):
        out[start : start + block.shape[0]] = np.asarray(block.sum(1)).ravel()
    return out


def _block_values(block) -> np.ndarray:
    return np.asarray(block.data) if sparse.issparse(block) else np.asarray(block).ravel()


def check_values(X, what: str = "the expression matrix", *, peaks: bool = False, before: str | None = None) -> None:
    """Refuse NaN / inf, scaled (z-scored, negative) values and an all-zero matrix, with a
    message naming the fix (for accessibility when ``peaks``). The matrix is read in row blocks
    (backed and sparse alike). ``before``: the call the fix must come before (default: the setup).
    """
    before = before or ("setup_mudata" if peaks else "setup_anndata")
    n_bad, vmin, n_nonzero = 0, np.inf, 0
    for _, block in iter_rows(X):
        data = _block_values(block)
        if not np.issubdtype(data.dtype, np.number):
            raise InvalidInputError(f"{what} holds {data.dtype} values; it needs numbers (counts or log-normalised).")
        finite = np.isfinite(data)
        n_bad += int(data.size - finite.sum())
        if finite.any():
            vmin = min(vmin, float(data[finite].min()))
        n_nonzero += int(np.count_nonzero(data[finite]))
    if n_bad:
        if peaks:
            raise InvalidInputError(
                f"{what} contains {n_bad} NaN or infinite values. Peak values must be finite counts or "
                f"TF-IDF: drop the affected peaks or pass regulatory_layer=... naming the counts, before {before}."
            )
        raise InvalidInputError(
            f"{what} contains {n_bad} NaN or infinite values. Remove or impute them "
            f"(e.g. `adata = adata[:, np.isfinite(X).all(0)]`) before {before}."
        )
    if vmin < 0 and peaks:
        raise InvalidInputError(
            f"{what} has negative values (min {vmin:.3g}): it looks scaled or reduced (e.g. LSI). KD-CPT "
            "needs peak counts or TF-IDF (non-negative): pass regulatory_layer=... naming the counts."
        )
    if vmin < 0:
        raise InvalidInputError(
            f"{what} has negative values (min {vmin:.3g}): it looks scaled (z-scored). "
            "KD-CPT needs counts or log-normalised expression: pass layer=... with counts, "
            "or use log-normalised values (for scanpy's pbmc68k_reduced they are in adata.raw; "
            "kdcpt.datasets.pbmc68k_reduced() returns them in X)."
        )
    if X.shape[0] and X.shape[1] and n_nonzero == 0:
        raise InvalidInputError(
            f"{what} is all zeros: there is nothing to learn from. Check the layer "
            f"({'regulatory_layer' if peaks else 'layer'}=...) or that the matrix was filled."
        )


def check_logged(X, what: str = "the expression matrix", *, at_setup: bool = True) -> None:
    """Refuse non-integer values above :data:`MAX_LOG_VALUE`: normalised but not log-transformed."""
    if not beyond_log_range(X):
        return
    hint = (
        " For non-integer counts (e.g. ambient-corrected by SoupX or CellBender) pass data_type='counts' to setup."
        if at_setup
        else ""
    )
    raise InvalidInputError(
        f"{what} looks normalised but not log-transformed (non-integer values above {MAX_LOG_VALUE:g}, where "
        "log-normalised values stay). Call sc.pp.log1p(adata) after sc.pp.normalize_total, or pass the raw "
        f"counts (layer=...).{hint}"
    )


def beyond_log_range(X) -> bool:
    """Non-integer values above :data:`MAX_LOG_VALUE` (in a sample of rows): not log-normalised
    values; normalised ones, or non-integer counts (e.g. ambient-corrected).
    """
    integer, largest = value_kind(X)
    return largest > MAX_LOG_VALUE and not integer


def value_kind(X) -> tuple[bool, float]:
    """``(all integers, largest value)`` of the nonzero values in a sample of rows."""
    vals = _values_sample(X)
    vals = vals[vals != 0]
    if vals.size == 0:
        return True, 0.0
    return bool(np.allclose(vals, np.round(vals))), float(vals.max())


def detect_data_type(X) -> DataType:
    """``"counts"`` when the sampled values are all non-negative integers, else ``"log"``."""
    integer, largest = value_kind(X)
    return "counts" if integer and largest > 1 else "log"


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
