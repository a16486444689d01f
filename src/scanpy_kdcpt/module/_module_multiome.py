"""KDCPTMultiomeModule: KD-CPT over genes and regulatory sites (ATAC peaks) in one token pool."""

from __future__ import annotations

import torch

from .._constants import REGISTRY_KEYS, TARGET_SUM
from .._errors import InvalidInputError
from ..multiome import TFIDF_SCALE
from ._components import GeneTokenizer, log_normalize
from ._module import KDCPTModule

#: registry key of the regulatory-site (peak) matrix
REGULATORY_KEY = "regulatory"


class KDCPTMultiomeModule(KDCPTModule):
    """:class:`KDCPTModule` whose features are ``n_rna`` genes followed by ``n_regulatory`` sites.

    The input ``x`` is the concatenation ``[rna, peaks]`` of the raw minibatch tensors. Genes are
    normalised as in the RNA-only model; peak counts get TF-IDF (``log1p(x / total × idf ×
    1e4)``, the IDF fitted on the training cells and kept in the ``idf`` buffer). Genes and sites
    then enter the same token pool, each token carrying a modality embedding (0 = gene,
    1 = site), so the Cell Learner selects among both; the frozen encoder of the prediction
    branch is block-diagonal (RNA PCA beside ATAC LSI). Everything downstream (Cell Learner,
    CFFM, knockouts that zero input columns) is the RNA-only module's.

    Parameters
    ----------
    n_genes
        Number of features (genes + sites).
    n_regulatory
        Number of sites (the last ``n_regulatory`` features).
    regulatory_is_counts
        Whether site values are counts (TF-IDF inside) or already normalised (used as is).
    **kwargs
        As :class:`KDCPTModule`.

    """

    def __init__(
        self,
        n_genes: int,
        n_classes: int,
        n_embedding: int,
        *,
        n_regulatory: int,
        regulatory_is_counts: bool = True,
        **kwargs,
    ):
        super().__init__(n_genes, n_classes, n_embedding, **kwargs)
        if not 0 < n_regulatory < n_genes:
            raise InvalidInputError(f"n_regulatory must be in (0, n_genes={n_genes}), got {n_regulatory}.")
        self.n_rna = n_genes - n_regulatory
        self.n_regulatory = n_regulatory
        self.regulatory_is_counts = regulatory_is_counts
        self.register_buffer("idf", torch.ones(n_regulatory))
        modality = torch.cat([torch.zeros(self.n_rna, dtype=torch.long), torch.ones(n_regulatory, dtype=torch.long)])
        self.tokenizer = GeneTokenizer(
            n_genes, self.tokenizer.gene_embedding.embedding_dim, self.tokenizer.n_tokens, modality=modality
        )

    def _get_inference_input(self, tensors, **kwargs):
        out = super()._get_inference_input(tensors, **kwargs)
        out["x"] = torch.cat([tensors[REGISTRY_KEYS.X_KEY], tensors[REGULATORY_KEY]], dim=-1)
        return out

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Genes log-normalised (when counts), sites TF-IDF (when counts)."""
        rna, reg = x[:, : self.n_rna], x[:, self.n_rna :]
        if self.is_counts:
            rna = log_normalize(rna, TARGET_SUM)
        if self.regulatory_is_counts:
            lib = reg.sum(dim=-1, keepdim=True).clamp_min(1.0)
            reg = torch.log1p(reg / lib * self.idf * TFIDF_SCALE)
        return torch.cat([rna, reg], dim=-1)
