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

from .._constants import LABELS_COPY_KEY, UNLABELED_CATEGORY
from .._errors import KeyNotFoundError
from .._expression import check_values, detect_data_type, get_matrix

if TYPE_CHECKING:
    from anndata import AnnData


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


# ----------------------------------------------------------------- set-up checks
def check_labels(adata: AnnData, labels_key: str, unlabeled_category) -> str:
    if labels_key not in adata.obs:
        raise KeyNotFoundError(
            f"labels_key {labels_key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)})."
        )
    labels = adata.obs[labels_key]
    known = labels[labels.notna()]
    if unlabeled_category is not None:
        known = known[known != unlabeled_category]
    n_classes = known.nunique()
    if n_classes < 2:
        raise ValueError(
            f"adata.obs[{labels_key!r}] has {n_classes} labelled phenotype(s); KDCPT needs at least two. "
            "Check the column or the unlabeled_category."
        )
    if labels.isna().any():
        # missing labels become the unlabelled category in a private column; the user's
        # column is left as it is
        fill = UNLABELED_CATEGORY if unlabeled_category is None else unlabeled_category
        copy = labels.astype(object).where(labels.notna(), fill).astype(str)
        adata.obs[LABELS_COPY_KEY] = pd.Categorical(copy)
        logg.info(f"{int(labels.isna().sum())} cells without a label are predicted but left out of the loss.")
        return LABELS_COPY_KEY
    return labels_key


def check_embedding(adata: AnnData, embedding_key: str) -> None:
    if embedding_key not in adata.obsm:
        raise KeyNotFoundError(
            f"embedding_key {embedding_key!r} is not in adata.obsm (keys: {list(adata.obsm.keys())})."
        )
    emb = np.asarray(adata.obsm[embedding_key])
    if emb.ndim != 2 or emb.shape[0] != adata.n_obs:
        raise ValueError(
            f"adata.obsm[{embedding_key!r}] has shape {emb.shape}; expected (n_obs={adata.n_obs}, n_dims)."
        )
    if not np.isfinite(emb).all():
        raise ValueError(f"adata.obsm[{embedding_key!r}] contains NaN or infinite values.")


def check_prior(adata: AnnData, prior_key: str) -> None:
    if prior_key not in adata.var:
        raise KeyNotFoundError(
            f"prior_key {prior_key!r} is not a column of adata.var (columns: {list(adata.var.columns)}). "
            'For transcription factors: adata.var["is_tf"] = '
            'kdcpt.datasets.is_transcription_factor(adata.var_names, species="human").'
        )
    prior = pd.to_numeric(adata.var[prior_key], errors="coerce").astype(float).to_numpy()
    if not np.isfinite(prior).all() or prior.min() < 0 or prior.max() > 1:
        raise ValueError(f"adata.var[{prior_key!r}] must be boolean or numbers in [0, 1] with no missing values.")


# ----------------------------------------------------------------- query data
def query_anndata(
    adata: AnnData, *, setup: dict, labels_state, var_names: list[str], data_type: str, embedding_width: int
) -> AnnData:
    """A light AnnData holding what the model reads from a query, aligned to its genes.

    Genes are aligned by name (missing ones zero-filled with a warning); values, data type,
    embedding and batch column are checked against the model's setup. ``adata`` is not modified.
    """
    import anndata as ad

    layer = setup["layer"]
    X = get_matrix(adata, layer if layer in adata.layers else None)
    X = align_genes(X, adata.var_names, pd.Index(var_names))
    check_values(X, "the query's expression matrix")
    query_type = detect_data_type(X)
    if query_type != data_type:
        where = f"adata.layers[{layer!r}]" if layer in adata.layers else "adata.X"
        fix = (
            "Pass the query's raw counts (same layer name as at setup, or in X)."
            if data_type == "counts"
            else "Normalise the query the same way (sc.pp.normalize_total + sc.pp.log1p)."
        )
        raise ValueError(
            f"The query's {where} looks like {query_type} values but the model was trained on {data_type} values. {fix}"
        )
    obs = pd.DataFrame(index=adata.obs_names.copy())
    obs[labels_state.original_key] = pd.Categorical(
        [labels_state.unlabeled_category] * adata.n_obs, categories=labels_state.categorical_mapping
    )
    obsm = {}
    if setup["embedding_key"] is not None:
        obsm[setup["embedding_key"]] = _query_embedding(adata, setup["embedding_key"], embedding_width)
    if setup["batch_key"] is not None:
        key = setup["batch_key"]
        if key not in adata.obs:
            raise KeyNotFoundError(f"The model was set up with batch_key {key!r}, which the query's .obs lacks.")
        obs[key] = adata.obs[key].to_numpy()
    var = pd.DataFrame(index=pd.Index(var_names))
    if layer is None:
        return ad.AnnData(X=X, obs=obs, obsm=obsm, var=var)
    return ad.AnnData(obs=obs, obsm=obsm, var=var, layers={layer: X})  # the registry reads this layer


def _query_embedding(adata: AnnData, key: str, width: int) -> np.ndarray:
    if key not in adata.obsm:
        raise KeyNotFoundError(
            f"The model reads the embedding adata.obsm[{key!r}], which the query lacks "
            f"(keys: {list(adata.obsm.keys())}). Embed the query with the same model first."
        )
    emb = np.asarray(adata.obsm[key])
    if emb.shape[1] != width:
        raise ValueError(f"adata.obsm[{key!r}] has {emb.shape[1]} dimensions; the model was trained on {width}.")
    if not np.isfinite(emb).all():
        raise ValueError(f"adata.obsm[{key!r}] contains NaN or infinite values.")
    return emb
