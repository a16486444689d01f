"""Data in and out of the model: set-up checks, value checks, counts vs log detection,
normalisation, the PCA encoder fit, and query data aligned to the model's genes. No torch.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scanpy import logging as logg
from scipy import sparse

from .. import _keys
from .._constants import LABELS_COPY_PREFIX, UNLABELED_CATEGORY, UNSEEN_BATCH_KEY
from .._errors import InvalidInputError, KeyNotFoundError
from .._expression import (
    MAX_LOG_VALUE,
    beyond_log_range,
    check_logged,
    check_values,
    detect_data_type,
    get_matrix,
    is_backed,
    iter_rows,
    log_normalize,
    read_rows,
    value_kind,
)
from .._utils import check_obs_column, find_label, label_text

if TYPE_CHECKING:
    from anndata import AnnData


#: genes up to which the encoder is fit by a streamed gene × gene covariance (32 MB at 2,000 genes)
MAX_GENES_STREAMED = 4000


def fit_pca(
    X, n_components: int, seed: int, max_cells: int = 20_000, *, data_type: str = "log", chunk: int = 2048
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA of the log-normalised expression ``X`` fit on up to ``max_cells`` cells.

    ``X`` is read only at the sampled rows, ``chunk`` rows at a time (in memory, sparse or
    backed), and each block alone is log-normalised when ``data_type == "counts"``. Up to
    :data:`MAX_GENES_STREAMED` genes, the gene × gene covariance is accumulated block by block
    and eigendecomposed (what scikit-learn's ``covariance_eigh`` solver does in one piece):
    memory is one block plus the covariance, never a copy of the matrix. With more genes, the
    sampled rows are gathered (sparse) and fit by scikit-learn.

    Returns ``(gene_mean, loadings (genes × components), component_std)``.
    """
    rng = np.random.default_rng(seed)
    n, n_genes = X.shape
    rows = np.sort(rng.choice(n, max_cells, replace=False)) if n > max_cells else np.arange(n)
    n_components = int(min(n_components, len(rows) - 1, n_genes - 1))
    if n_genes > MAX_GENES_STREAMED:
        return _fit_pca_sklearn(log_normalize(read_rows(X, rows), data_type), n_components, seed)
    total = np.zeros(n_genes)
    gram = np.zeros((n_genes, n_genes))
    for s in range(0, len(rows), chunk):
        block = log_normalize(read_rows(X, rows[s : s + chunk]), data_type)
        if sparse.issparse(block):
            block = sparse.csr_matrix(block, dtype=np.float64)
            total += np.asarray(block.sum(0)).ravel()
            gram += (block.T @ block).toarray()
        else:
            block = np.asarray(block, dtype=np.float64)
            total += block.sum(0)
            gram += block.T @ block
    m = len(rows)
    mean = total / m
    cov = (gram - m * np.outer(mean, mean)) / max(m - 1, 1)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][:n_components]
    values, vectors = np.maximum(values[order], 0.0), vectors[:, order]
    # deterministic signs (scikit-learn's svd_flip): the largest-magnitude loading of each component positive
    signs = np.sign(vectors[np.abs(vectors).argmax(0), np.arange(vectors.shape[1])])
    vectors = vectors * np.where(signs == 0, 1.0, signs)
    std = np.sqrt(np.maximum(values, 1e-8))
    return mean.astype(np.float32), vectors.astype(np.float32), std.astype(np.float32)


def _fit_pca_sklearn(X, n_components: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.decomposition import PCA

    if sparse.issparse(X):
        X = sparse.csr_matrix(X, dtype=np.float32)
        solver = "arpack"
    else:
        X = np.asarray(X, dtype=np.float32)
        solver = "randomized"
    pca = PCA(n_components=n_components, svd_solver=solver, random_state=seed).fit(X)
    std = np.sqrt(np.maximum(pca.explained_variance_, 1e-8))
    return pca.mean_.astype(np.float32), pca.components_.T.astype(np.float32), std.astype(np.float32)


def align_genes(X, query_genes: pd.Index, model_genes: pd.Index, *, kind: str = "genes"):
    """Reorder the columns of ``X`` to ``model_genes``; missing genes zero-filled with a warning
    (``kind`` names the features in the messages, e.g. ``"sites"``).
    """
    if isinstance(X, np.ndarray):  # an AnnData view's ArrayView as a plain array (no copy): torch reads only those
        X = np.asarray(X)
    if query_genes.equals(model_genes):
        return X
    if query_genes.has_duplicates:
        dup = query_genes[query_genes.duplicated()].unique()[:5].tolist()
        raise InvalidInputError(f"Query var_names are not unique (e.g. {dup}). Call adata.var_names_make_unique().")
    pos = query_genes.get_indexer(model_genes)
    present = pos >= 0
    n_missing = int((~present).sum())
    if present.sum() == 0:
        same = (
            "the same gene identifiers (symbols vs Ensembl IDs)"
            if kind == "genes"
            else "the same peak names (e.g. 'chr1:100-600' vs 'chr1-100-600') and peak set"
        )
        raise InvalidInputError(
            f"None of the model's {kind} are in the query's var_names "
            f"(model: {list(model_genes[:3])}..., query: {list(query_genes[:3])}...). Check that both use {same}."
        )
    if n_missing:
        most = n_missing > len(model_genes) / 2
        warnings.warn(
            f"{n_missing} of the model's {len(model_genes)} {kind} are missing from the query and are "
            f"zero-filled (e.g. {list(model_genes[~present][:5])}). "
            + (
                f"The model reads a zero as 'not expressed', so with most of its {kind} missing the predictions "
                f"are unreliable: predict a query that measures them, or train a model on the shared {kind}."
                if most
                else f"Predictions lean on the shared {kind}."
            ),
            UserWarning,
            stacklevel=3,
        )
    # a 0/1 selection matrix (query genes × model genes) keeps everything sparse
    cols = np.flatnonzero(present)
    sel = sparse.csr_matrix(
        (np.ones(cols.size, dtype=np.float32), (pos[present], cols)), shape=(len(query_genes), len(model_genes))
    )
    if sparse.issparse(X):
        return sparse.csr_matrix(X @ sel, dtype=np.float32)
    if is_backed(X):
        # on disk: read row blocks; the aligned matrix is held sparse (the model's genes only)
        blocks = [sparse.csr_matrix(block, dtype=np.float32) @ sel for _, block in iter_rows(X)]
        return sparse.vstack(blocks, format="csr", dtype=np.float32)
    X = np.asarray(X)
    out = np.zeros((X.shape[0], len(model_genes)), dtype=np.float32)
    out[:, present] = X[:, pos[present]]
    return out


# ----------------------------------------------------------------- set-up checks
def check_var_names(adata: AnnData) -> None:
    """Gene names must be unique: results are written per gene name."""
    names = adata.var_names
    if names.has_duplicates:
        dup = names[names.duplicated()].unique()
        raise InvalidInputError(
            f"adata.var_names has {len(dup)} duplicated gene name(s) (e.g. {list(map(str, dup[:5]))}); "
            "key genes and knockouts are reported per gene name. Call adata.var_names_make_unique() "
            "(or aggregate the duplicates) before setup_anndata."
        )


def check_labels(adata: AnnData, labels_key: str, unlabeled_category, where: str = "adata") -> tuple[str, object]:
    """Check the labels column; return the obs column to register (the user's, or a private copy
    with missing labels filled, non-text labels as text, unused categories left out) and the
    unlabelled category as that column holds it (``None``: the package's default).
    """
    check_obs_column(adata, labels_key, "labels_key", where=where)
    labels = adata.obs[labels_key]
    known = labels[labels.notna()]
    if unlabeled_category is not None:
        known = known[known.map(label_text).astype(str) != label_text(unlabeled_category)]
    n_classes = known.nunique()
    if n_classes < 2:
        raise InvalidInputError(
            f"adata.obs[{labels_key!r}] has {n_classes} labelled phenotype(s); KDCPT needs at least two. "
            "Check the column or the unlabeled_category."
        )
    numbers = pd.api.types.is_numeric_dtype(known) and not pd.api.types.is_bool_dtype(known)
    value = known.to_numpy(float) if numbers else None
    continuous = numbers and not np.allclose(value, np.round(value))
    if continuous or n_classes > max(50, len(known) // 2):
        what = "continuous numbers" if continuous else "almost one value per cell"
        raise InvalidInputError(
            f"adata.obs[{labels_key!r}] holds {what} ({n_classes} distinct values over {len(known)} labelled "
            "cells), not phenotype labels: labels_key must name a column of cell types or clusters (e.g. "
            "'cell_type', 'leiden')."
        )
    names = pd.Series(known.astype(object).map(label_text).unique(), dtype=object)
    _check_label_names(names, labels_key, known)
    _keys.check_phenotype_keys(names, where=f"adata.obs[{labels_key!r}]")
    values = labels.cat.categories if isinstance(labels.dtype, pd.CategoricalDtype) else known.unique()
    not_text = not all(isinstance(v, str) for v in values)
    # categories without a cell (left by subsetting, e.g. mdata[cells].copy()) would be phenotypes
    # the model is trained on and predicts with no example: the copy below leaves them out
    present = set(labels.dropna().unique())
    unused = [c for c in values if c not in present] if labels.dtype == "category" else []
    if labels.isna().any() or not_text or unused:
        # missing labels become the unlabelled category, and non-text labels (integers, ...)
        # their text (whole numbers as integers: 1.0 → "1", as queries are matched), in a
        # private column; the user's column is left as it is
        unlabeled = None if unlabeled_category is None else label_text(unlabeled_category)
        fill = UNLABELED_CATEGORY if unlabeled is None else unlabeled
        copy = labels.astype(object).map(label_text, na_action="ignore").where(labels.notna(), fill).astype(str)
        # named after the labels column: another model set up on another column keeps its own
        copy_key = f"{LABELS_COPY_PREFIX}{labels_key}"
        # copied only to leave out unused categories: the column's order (as without the copy); with
        # missing or non-text labels the order stays as it has been (sorted), so saved models load alike
        if labels.isna().any() or not_text:  # the phenotypes in their natural order (2 before 10), unlabelled last
            order = sorted(set(copy) - {fill}, key=_natural) + ([fill] if (copy == fill).any() else [])
        else:
            order = [str(c) for c in values if c not in unused]
        adata.obs[copy_key] = pd.Categorical(copy, categories=order)
        if labels.isna().any():
            logg.info(f"{int(labels.isna().sum())} cells without a label are predicted but left out of the loss.")
        if not_text:
            logg.info(f"adata.obs[{labels_key!r}] holds non-text labels: phenotypes are named by their text.")
        if unused:
            logg.info(f"adata.obs[{labels_key!r}]: categories without a cell are not phenotypes: {unused[:10]}.")
        return copy_key, unlabeled
    # the column holds text: scvi-tools compares the unlabelled category with it as text (0 → "0")
    return labels_key, None if unlabeled_category is None else label_text(unlabeled_category)


def _natural(name: str) -> tuple:
    """Sort key: names that are whole numbers by their value, before the other names."""
    text = name.strip()
    number = text.lstrip("-").isdigit()
    return (0, int(text), "") if number else (1, 0, name)


def _check_label_names(names: pd.Series, labels_key: str, known: pd.Series) -> None:
    """Phenotype names that cannot be right: empty (refused: a phenotype needs a name, and h5ad
    cannot store an empty key), the text of a missing value, or two names equal but for spaces.
    """
    text = known.astype(object).map(label_text)
    empty = [n for n in names if not n.strip()]
    if empty:
        raise InvalidInputError(
            f"adata.obs[{labels_key!r}] labels {int(text.isin(empty).sum())} cells with empty text ({empty[0]!r}). "
            f"If they have no label, set them to NaN or pass unlabeled_category={empty[0]!r}; a phenotype needs a name."
        )
    missing = [n for n in names if n.strip().lower() in ("nan", "none", "na", "<na>", "null")]
    if missing:
        warnings.warn(
            f"adata.obs[{labels_key!r}] labels {int(text.isin(missing).sum())} cells {missing[0]!r}, the text "
            f"astype(str) makes of a missing value; they are trained as a phenotype {missing[0]!r}. If they have "
            f"no label, set them to NaN or pass unlabeled_category={missing[0]!r}.",
            UserWarning,
            stacklevel=4,
        )
    stripped = names.str.strip().str.casefold()
    twins = names[stripped.duplicated(keep=False)].tolist()
    if twins:
        warnings.warn(
            f"adata.obs[{labels_key!r}] has labels that differ only in spaces or case, each trained as a phenotype "
            f"of its own: {twins[:6]}. Clean the column first if they are one phenotype.",
            UserWarning,
            stacklevel=4,
        )


def check_indices(indices, n_obs: int) -> np.ndarray:
    """Cell positions (or a boolean mask) as an integer array within ``0 .. n_obs - 1``."""
    idx = np.asarray(indices)
    if idx.dtype == bool:
        if idx.shape != (n_obs,):
            raise InvalidInputError(f"A boolean indices mask needs one value per cell ({n_obs}), got {idx.shape}.")
        idx = np.flatnonzero(idx)
    if idx.size == 0:
        raise InvalidInputError("indices selects no cell.")
    if not np.issubdtype(idx.dtype, np.integer):
        raise InvalidInputError(f"indices must be cell positions (integers) or a boolean mask, got {idx.dtype}.")
    if idx.min() < -n_obs or idx.max() >= n_obs:
        raise InvalidInputError(
            f"indices must lie in 0 .. {n_obs - 1} (the data's cells); got {idx.min()} .. {idx.max()}."
        )
    return idx


def check_batch(adata: AnnData, batch_key: str, where: str = "adata") -> None:
    """The batch column exists and gives every cell a batch (scvi-tools' message on NaN named none)."""
    check_obs_column(adata, batch_key, "batch_key", where=where)
    n_missing = int(adata.obs[batch_key].isna().sum())
    if n_missing:
        raise InvalidInputError(
            f"{where}.obs[{batch_key!r}] has {n_missing} cells without a batch (NaN). Give them one (e.g. "
            f"{where}.obs[{batch_key!r}] = {where}.obs[{batch_key!r}].astype(object).fillna('unknown')) or "
            "leave batch_key out."
        )


def check_embedding(adata: AnnData, embedding_key: str) -> None:
    if embedding_key not in adata.obsm:
        raise KeyNotFoundError(
            f"embedding_key {embedding_key!r} is not in adata.obsm (keys: {list(adata.obsm.keys())})."
        )
    if sparse.issparse(adata.obsm[embedding_key]):
        raise InvalidInputError(
            f"adata.obsm[{embedding_key!r}] is a sparse matrix; a cell embedding must be dense: "
            f"adata.obsm[{embedding_key!r}] = adata.obsm[{embedding_key!r}].toarray()."
        )
    emb = np.asarray(adata.obsm[embedding_key])
    if emb.ndim != 2 or emb.shape[0] != adata.n_obs:
        raise InvalidInputError(
            f"adata.obsm[{embedding_key!r}] has shape {emb.shape}; expected (n_obs={adata.n_obs}, n_dims)."
        )
    if not np.isfinite(emb).all():
        raise InvalidInputError(f"adata.obsm[{embedding_key!r}] contains NaN or infinite values.")


def check_prior(adata: AnnData, prior_key: str, where: str = "adata") -> None:
    if prior_key not in adata.var:
        raise KeyNotFoundError(
            f"prior_key {prior_key!r} is not a column of {where}.var (columns: {list(adata.var.columns)}). "
            f'For transcription factors: {where}.var["is_tf"] = '
            f'kdcpt.datasets.is_transcription_factor({where}.var_names, species="human") (or "mouse").'
        )
    prior = pd.to_numeric(adata.var[prior_key], errors="coerce").astype(float).to_numpy()
    if not np.isfinite(prior).all() or prior.min() < 0 or prior.max() > 1:
        raise InvalidInputError(
            f"adata.var[{prior_key!r}] must be boolean or numbers in [0, 1] with no missing values."
        )
    if not (prior > 0).any():  # (every gene flagged is a choice: krumsiek11's genes are all regulators)
        warnings.warn(
            f"{where}.var[{prior_key!r}] flags no gene of the {len(prior)}, so the prior guides nothing. "
            "kdcpt.datasets.is_transcription_factor matches gene symbols: with Ensembl IDs as var_names, pass "
            "the symbols (e.g. adata.var['gene_symbols']) instead.",
            UserWarning,
            stacklevel=4,
        )


# ----------------------------------------------------------------- query data
def query_anndata(
    adata: AnnData,
    *,
    setup: dict,
    labels_state,
    var_names: list[str],
    data_type: str,
    embedding_width: int,
    batch_categories=None,
) -> AnnData:
    """A light AnnData holding what the model reads from a query, aligned to its genes.

    Genes are aligned by name (missing ones zero-filled with a warning); values, data type,
    embedding and batch column are checked against the model's setup. Cells of batches the
    model never saw (``batch_categories``: the training batches) are flagged in
    ``.obs[UNSEEN_BATCH_KEY]`` and predicted batch-free (the mean batch embedding), with a
    warning. ``adata`` is not modified.
    """
    import anndata as ad

    if adata.n_obs == 0:
        raise InvalidInputError("The query has no cells (adata.n_obs == 0): pass an AnnData with cells to predict.")
    layer = setup["layer"]
    X = get_matrix(adata, layer if layer in adata.layers else None)
    X = align_genes(X, adata.var_names, pd.Index(var_names))
    where = f"adata.layers[{layer!r}]" if layer in adata.layers else "adata.X"
    check_query_values(X, data_type, "the query's expression matrix", f"The query's {where}")
    obs = pd.DataFrame(index=adata.obs_names.copy())
    obs[labels_state.original_key] = _query_labels(adata, setup["labels_key"], labels_state)
    obsm = {}
    if setup["embedding_key"] is not None:
        obsm[setup["embedding_key"]] = _query_embedding(adata, setup["embedding_key"], embedding_width)
    if setup["batch_key"] is not None:
        key = setup["batch_key"]
        if key not in adata.obs:
            raise KeyNotFoundError(
                f"The model was set up with batch_key {key!r}, which the query's .obs lacks. Add the column "
                "(any value; batches unseen at training are predicted batch-free)."
            )
        obs[key], obs[UNSEEN_BATCH_KEY] = _known_batches(adata.obs[key], batch_categories)
    var = pd.DataFrame(index=pd.Index(var_names))
    if layer is None:
        return ad.AnnData(X=X, obs=obs, obsm=obsm, var=var)
    return ad.AnnData(obs=obs, obsm=obsm, var=var, layers={layer: X})  # the registry reads this layer


def check_query_values(X, data_type: str, what: str, where: str) -> None:
    """A query's expression values: finite, non-negative, and of the model's ``data_type``
    (counts or log-normalised). ``what`` names the matrix in the value errors, ``where`` (e.g.
    "The query's adata.X") in the data-type error.
    """
    check_values(X, what, before="predicting")
    if data_type == "counts" and beyond_log_range(X):
        return  # non-integer counts (ambient-corrected), as the model may have been set up with
    check_logged(X, what, at_setup=False)
    query_type = detect_data_type(X)
    if query_type != data_type:
        fix = (
            "Pass the query's raw counts (same layer name as at setup, or in X)."
            if data_type == "counts"
            else "Normalise the query the same way (sc.pp.normalize_total + sc.pp.log1p)."
        )
        raise InvalidInputError(
            f"{where} looks like {query_type} values but the model was trained on {data_type} values. {fix}"
        )


def _query_labels(adata: AnnData, labels_key: str, labels_state) -> pd.Categorical:
    """The query's known phenotypes, where its ``.obs`` has the model's ``labels_key`` column:
    read for metrics (``annotate``'s ``"labelled"``) and as each labelled cell's own phenotype,
    never trained on. Missing labels and phenotypes the model does not know are unlabelled.
    """
    mapping = list(labels_state.categorical_mapping)
    unlabeled = labels_state.unlabeled_category
    values = np.full(adata.n_obs, unlabeled, dtype=object)
    if labels_key in adata.obs:
        lookup = {str(c): c for c in mapping if c != unlabeled}
        given = adata.obs[labels_key]
        raw = given.astype(object).where(given.notna(), None)
        text = raw.map(lambda v: None if v is None else label_text(v))
        # a label 1.0 is the phenotype "1" (integer labels with a missing value arrive as floats)
        known = raw.map(lambda v: None if v is None else find_label(lookup, v))
        known = known.to_numpy(dtype=object)
        hit = pd.notna(known)
        values[hit] = known[hit]
        unknown = sorted(set(text[text.notna() & ~hit]) - {str(unlabeled)})
        if unknown:
            logg.info(
                f"{int((text.isin(unknown)).sum())} query cells carry labels the model does not know "
                f"({unknown[:5]}): they are predicted and left out of the metrics."
            )
    return pd.Categorical(values, categories=mapping)


def _known_batches(values: pd.Series, categories) -> tuple[np.ndarray, np.ndarray]:
    """Batch values with those unseen at training replaced by a known one, and the unseen mask."""
    vals = values.astype(object).to_numpy()
    if categories is None:
        return vals, np.zeros(len(vals), dtype=bool)
    cats = list(categories)
    known = pd.Index(cats)
    unseen = ~pd.Index(vals).isin(known)
    if unseen.any():
        new = pd.unique(vals[unseen])
        warnings.warn(
            f"{int(unseen.sum())} query cells come from batches unseen at training ({list(map(str, new[:5]))}); "
            "they are predicted batch-free (with the mean of the training batches' embeddings).",
            UserWarning,
            stacklevel=4,
        )
        vals = vals.copy()
        vals[unseen] = cats[0]  # a placeholder registry code; the module ignores it for these cells
    return vals, unseen


def _query_embedding(adata: AnnData, key: str, width: int) -> np.ndarray:
    if key not in adata.obsm:
        raise KeyNotFoundError(
            f"The model reads the embedding adata.obsm[{key!r}], which the query lacks "
            f"(keys: {list(adata.obsm.keys())}). Embed the query with the same model first."
        )
    emb = np.asarray(adata.obsm[key])
    if emb.shape[1] != width:
        raise InvalidInputError(f"adata.obsm[{key!r}] has {emb.shape[1]} dimensions; the model was trained on {width}.")
    if not np.isfinite(emb).all():
        raise InvalidInputError(f"adata.obsm[{key!r}] contains NaN or infinite values.")
    return emb


def resolve_data_type(X, data_type: str, where: str) -> str:
    """Check the expression values and resolve ``data_type`` (``"auto"`` → ``"counts"`` or ``"log"``).

    The same checks for :meth:`~scanpy_kdcpt.KDCPT.setup_anndata` and ``setup_mudata``: finite,
    non-negative values (scaled data is refused), and log values that look logged.
    """
    if data_type not in ("auto", "counts", "log"):
        raise InvalidInputError(f"data_type must be 'auto', 'counts' or 'log', not {data_type!r}.")
    check_values(X, where)
    declared = data_type != "auto"
    if data_type == "auto":
        data_type = detect_data_type(X)
    if data_type == "log":
        check_logged(X, where)
    integer, largest = value_kind(X)
    if data_type == "log" and integer and largest > MAX_LOG_VALUE:
        # no log-normalised value comes near this (log1p(1e6) ≈ 13.8, log2(TPM + 1) ≈ 20)
        raise InvalidInputError(
            f"data_type='log', but {where} holds integer values up to {largest:g}: raw counts, not log values. "
            "Pass data_type='counts' (or 'auto'), so that they are normalised and logged."
        )
    if declared and data_type == "counts" and not integer and largest <= 20:
        warnings.warn(
            f"data_type='counts', but {where} holds non-integer values no larger than {largest:.3g}, as "
            "log-normalised data does. If they are log values, pass data_type='log' (counts are normalised and "
            "logged, so log values would be logged twice); ambient-corrected counts are fine as they are.",
            UserWarning,
            stacklevel=4,
        )
    return data_type
