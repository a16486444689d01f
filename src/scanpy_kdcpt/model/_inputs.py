"""What the model reads as input features, chosen once at construction: :class:`RnaInputs`
(the genes of an AnnData) or :class:`MultiomeInputs` (genes followed by regulatory sites of a
MuData registered with ``setup_mudata``).

Every place that differs between the two (feature names, module class, prior per feature, raw
feature matrix, frozen encoder, query alignment, where key features are written) asks the
strategy in ``model._inputs`` instead of testing for multi-omics itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import sparse

from .. import _expression, multiome
from .._constants import REGISTRY_KEYS
from .._errors import InvalidInputError
from .._utils import is_mudata
from ..module import REGULATORY_KEY, KDCPTModule, KDCPTMultiomeModule
from . import _data
from ._linear_stage import normalized_max, normalized_mean
from ._mudata import fit_lsi, prepare_query

if TYPE_CHECKING:
    from anndata import AnnData


def inputs_for(model) -> RnaInputs:
    """The input strategy of a model, from the set-up method it was registered with."""
    if model.adata_manager.registry.get("setup_method_name") == "setup_mudata":
        return MultiomeInputs(model)
    return RnaInputs(model)


class RnaInputs:
    """Features are the genes of one AnnData (``setup_anndata``)."""

    multiome = False

    def __init__(self, model):
        self.model = model

    @property
    def setup(self) -> dict:
        return self.model.adata_manager.registry["setup_args"]

    def feature_names(self) -> list[str]:
        """The model's features, in the order of the module's input."""
        return list(map(str, self.model.adata.var_names))

    def module_spec(self) -> tuple[type, dict]:
        """The module class and its extra arguments."""
        return KDCPTModule, {}

    def prior_vector(self, prior_key: str) -> np.ndarray:
        """Prior per feature."""
        return self.model.adata.var[prior_key].astype(float).to_numpy()

    def registered_matrix(self, adata) -> sparse.spmatrix | np.ndarray:
        """Raw input features of (registered) ``adata`` as the module sees them before normalisation."""
        return self.model.get_anndata_manager(adata, required=True).get_from_registry(REGISTRY_KEYS.X_KEY)

    def fit_encoder(self, n_components: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(feature_mean, loadings, component_std)`` of the frozen encoder: PCA of the log-normalised
        genes, on blocks of sampled rows (backed data stays on disk).
        """
        X = self.model.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        return _data.fit_pca(X, n_components, seed=seed, data_type=self.model.data_type_)

    def feature_max(self) -> np.ndarray:
        """Each feature's largest value as the module reads it (``module.normalize``) over the
        registered cells, read in row blocks; the module clips query values at it.
        """
        manager = self.model.adata_manager
        X = manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        extra = manager.get_from_registry(REGULATORY_KEY) if self.multiome else None
        return normalized_max(self.model.module, X, extra)

    def feature_mean(self) -> np.ndarray:
        """Each feature's mean value as the module reads it (normalised, clipped) over the
        registered cells, read in row blocks: the key genes' attribution baseline.
        """
        manager = self.model.adata_manager
        X = manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        extra = manager.get_from_registry(REGULATORY_KEY) if self.multiome else None
        return normalized_mean(self.model.module, X, extra)

    def prepare_query(self, adata: AnnData) -> AnnData:
        """A light AnnData from a query, aligned to the model's genes (not yet registered)."""
        model = self.model
        if is_mudata(adata):
            raise InvalidInputError(
                "This model was set up with setup_anndata and reads one AnnData; it was given a MuData. Pass its "
                "RNA modality (e.g. mdata['rna'])."
            )
        return _data.query_anndata(
            adata,
            setup=self.setup,
            labels_state=model.adata_manager.get_state_registry(REGISTRY_KEYS.LABELS_KEY),
            var_names=model.var_names_,
            data_type=model.data_type_,
            embedding_width=int(model.module.embedding_mean.shape[0]),
            batch_categories=model._batch_categories(),
        )

    def key_feature_kwargs(self, target) -> dict:
        """What :func:`~scanpy_kdcpt.writers.write_key_genes` needs to split features by modality."""
        return {}


class MultiomeInputs(RnaInputs):
    """Features are the genes followed by the regulatory sites of a MuData (``setup_mudata``)."""

    multiome = True

    @property
    def modalities(self) -> dict[str, str]:
        return dict(self.setup["modalities"])

    def modality_data(self, mdata=None) -> tuple[AnnData, AnnData]:
        mods = self.modalities
        mdata = self.model.adata if mdata is None else mdata
        return mdata[mods["rna"]], mdata[mods["regulatory"]]

    def feature_names(self) -> list[str]:
        rna, peaks = self.modality_data()
        return [*map(str, rna.var_names), *map(str, peaks.var_names)]

    def module_spec(self) -> tuple[type, dict]:
        _, peaks = self.modality_data()
        return KDCPTMultiomeModule, {
            "n_regulatory": int(peaks.n_vars),
            "regulatory_is_counts": self.setup["regulatory_type"] == "counts",
        }

    def prior_vector(self, prior_key: str) -> np.ndarray:
        """A site takes its linked gene's prior (0 when unlinked)."""
        rna, peaks = self.modality_data()
        gene_prior = rna.var[prior_key].astype(float)
        linked = peaks.var[self.setup["link_key"]].astype(str)
        site_prior = linked.map(gene_prior).fillna(0.0).to_numpy(float)
        return np.concatenate([gene_prior.to_numpy(), site_prior])

    def registered_matrix(self, adata) -> sparse.spmatrix:
        manager = self.model.get_anndata_manager(adata, required=True)
        X = manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        P = manager.get_from_registry(REGULATORY_KEY)
        return sparse.hstack([sparse.csr_matrix(X, dtype=np.float32), sparse.csr_matrix(P, dtype=np.float32)]).tocsr()

    def fit_encoder(self, n_components: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """RNA PCA beside ATAC LSI (TF-IDF → truncated SVD, no centring), as one block-diagonal
        loading matrix; the IDF is stored in the module.
        """
        model = self.model
        manager = model.adata_manager
        X = _expression.log_normalize(manager.get_from_registry(REGISTRY_KEYS.X_KEY), model.data_type_)
        m = model.module
        n_rna_pc = max(1, n_components // 2)
        mean_r, load_r, std_r = _data.fit_pca(X, n_rna_pc, seed=seed)
        P = manager.get_from_registry(REGULATORY_KEY)
        if m.regulatory_is_counts:
            w = multiome.idf(P)
            m.idf.copy_(torch.as_tensor(w))
            P = multiome.tfidf(P, w)
        load_a, std_a = fit_lsi(P, n_components - load_r.shape[1], seed=seed)
        n_rna, n_reg = load_r.shape[0], load_a.shape[0]
        loadings = np.zeros((n_rna + n_reg, n_components), dtype=np.float32)
        loadings[:n_rna, : load_r.shape[1]] = load_r
        loadings[n_rna:, load_r.shape[1] : load_r.shape[1] + load_a.shape[1]] = load_a
        std = np.ones(n_components, dtype=np.float32)
        std[: load_r.shape[1]] = std_r
        std[load_r.shape[1] : load_r.shape[1] + load_a.shape[1]] = std_a
        mean = np.concatenate([mean_r, np.zeros(n_reg, dtype=np.float32)])
        return mean, loadings, std

    def prepare_query(self, adata) -> AnnData:
        return prepare_query(self.model, adata)

    def key_feature_kwargs(self, target) -> dict:
        if not is_mudata(target):
            return {}
        return {"modalities": self.modalities, "link_key": self.setup["link_key"]}
