"""KDCPTModule: the dual-branch network as a scvi-tools module. Tensors in, logits out."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn

from .._constants import REGISTRY_KEYS, TARGET_SUM
from .._errors import InvalidInputError
from ._components import CFFM, CellLearner, GeneTokenizer, PredictionBranch, log_normalize


class KDCPTModule(BaseModuleClass):
    """Dual-branch KD-CPT network.

    Parameters
    ----------
    n_genes
        Number of genes (input features).
    n_classes
        Number of phenotypes.
    n_embedding
        Width of the cell embedding fed to the prediction branch: the external embedding's
        width, or the number of principal components of the internal frozen linear encoder.
    external_embedding
        Whether the embedding comes from ``.obsm`` (``True``) or from the internal encoder.
    is_counts
        Whether inputs are counts (normalised + ``log1p`` inside) or already log-normalised.
    n_batch
        Number of batches (0 for none); a batch embedding is added to the prediction branch.
    n_tokens, n_selected, d_model, n_layers, n_heads, n_latents, n_hidden
        Sizes of the gene-token encoder, the Cell Learner and the prediction branch.
    prior_weight
        λ: strength of the prior in the Cell Learner's scores (see ``prior_mode``).
    prior_mode
        ``"bias"``: the prior is a bias on the log-attention (``attention * exp(β prior)``,
        ``β = -log(1 - λ)``); ``"blend"``: ``(1 - λ) * attention + λ * prior`` (the paper's).
    aggregation
        How CLS attention is aggregated over layers and heads: ``"mean"`` or ``"learned"``.
    use_cell_learner, use_cffm
        Ablation switches.
    aux_weight
        Weight of the auxiliary per-branch cross-entropy losses.
    dropout
        Dropout rate.
    use_wide
        Add a linear "wide" path over all genes' log-normalised values to the prediction
        branch's logits (wide & deep), so that the model is never weaker than a linear model
        on the same genes. The final logits add the prediction branch's logits to the CFFM's
        (a residual), so the fused model starts from the prediction branch.
    wide_l2
        Ridge penalty ``wide_l2 * 0.5 * ||W||²`` on the wide path's weights, added to the loss.
    balanced_softmax
        Balanced-softmax (logit-adjusted) loss for rare phenotypes: during the loss, logits
        are shifted by ``log_prior`` (log class frequencies of the training labels, set by
        the model before training); predictions use the unshifted logits, i.e. a
        class-balanced posterior.
    linear_stage
        A convex first stage below the network: the final logits are
        ``linear_weight @ x_log + linear_bias + mix * network_logits``. The three are frozen
        buffers (not trained by SGD, saved in the ``state_dict``): the model fits the
        multinomial logistic regression before training (:meth:`set_linear_stage`) and
        chooses ``mix`` after it. Until then the stage is zero and ``mix`` is 1, i.e. the
        network alone. It reads ``x_log``, so knockouts and attributions reach it.
    clip_input
        Whether the model fills ``input_max`` (each feature's largest normalised value on the
        registered cells) before training; the forward pass clips at it either way (``+inf``
        when not filled).

    """

    def __init__(
        self,
        n_genes: int,
        n_classes: int,
        n_embedding: int,
        *,
        external_embedding: bool = False,
        is_counts: bool = False,
        n_batch: int = 0,
        n_tokens: int = 256,
        n_selected: int = 32,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        n_latents: int = 4,
        n_hidden: int = 256,
        prior_weight: float = 0.3,
        prior_mode: str = "bias",
        aggregation: str = "mean",
        use_cell_learner: bool = True,
        use_cffm: bool = True,
        aux_weight: float = 0.5,
        dropout: float = 0.1,
        use_wide: bool = True,
        wide_l2: float = 1e-3,
        balanced_softmax: bool = True,
        linear_stage: bool = True,
        clip_input: bool = True,
    ):
        super().__init__()
        self.n_genes = n_genes
        self.n_classes = n_classes
        self.external_embedding = external_embedding
        self.is_counts = is_counts
        self.use_cell_learner = use_cell_learner
        self.use_cffm = use_cffm
        self.aux_weight = aux_weight
        self.use_wide = use_wide
        self.wide_l2 = wide_l2
        self.balanced_softmax = balanced_softmax
        self.linear_stage = linear_stage
        self.clip_input = clip_input
        n_selected = min(n_selected, n_tokens, n_genes)

        self.register_buffer("prior", torch.zeros(n_genes))
        self.register_buffer("class_weights", torch.ones(n_classes))
        # log class frequencies for the balanced-softmax loss (zeros = plain cross-entropy)
        self.register_buffer("log_prior", torch.zeros(n_classes))
        self.register_buffer("embedding_mean", torch.zeros(n_embedding))
        self.register_buffer("embedding_scale", torch.ones(n_embedding))
        self.register_buffer("gene_mean", torch.zeros(n_genes))
        # each feature's largest normalised value on the registered cells (set by the model when
        # clip_input); +inf = no clipping
        self.register_buffer("input_max", torch.full((n_genes,), float("inf")))
        # frozen linear encoder (PCA loadings); unused with an external embedding
        self.register_buffer("loadings", torch.zeros(0 if external_embedding else n_genes, n_embedding))
        if linear_stage:  # the convex first stage and the network's share (set by the model)
            self.register_buffer("linear_weight", torch.zeros(n_classes, n_genes))
            self.register_buffer("linear_bias", torch.zeros(n_classes))
            self.register_buffer("mix", torch.ones(()))

        self.tokenizer = GeneTokenizer(n_genes, d_model, n_tokens)
        self.cell_learner = CellLearner(
            d_model,
            n_heads,
            n_layers,
            n_latents,
            n_selected,
            prior_weight,
            aggregation,
            dropout,
            use_attention=use_cell_learner,
            prior_mode=prior_mode,
        )
        self.batch_embedding = nn.Embedding(n_batch, n_embedding) if n_batch > 1 else None
        self.prediction = PredictionBranch(
            n_embedding, n_hidden, n_classes, n_selected, d_model, dropout, n_genes=n_genes if use_wide else None
        )
        self.selection_head = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, n_classes))
        self.cffm = CFFM(d_model, n_heads, n_selected, dropout) if use_cffm else None
        self.fused_head = nn.Linear(d_model, n_classes) if use_cffm else None

    # -- scvi-tools plumbing ------------------------------------------------------------------
    def _get_inference_input(self, tensors, **kwargs):
        return {
            "x": tensors[REGISTRY_KEYS.X_KEY],
            "embedding": tensors.get(REGISTRY_KEYS.EMBEDDING_KEY),
            "batch_index": tensors.get(REGISTRY_KEYS.BATCH_KEY),
        }

    def _get_generative_input(self, tensors, inference_outputs, **kwargs):
        return {}

    def generative(self, **kwargs):
        """No generative part: KD-CPT is discriminative."""
        return {}

    # -- the network --------------------------------------------------------------------------
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Input values as log-normalised expression."""
        return log_normalize(x, TARGET_SUM) if self.is_counts else x

    def embed(self, x_log: torch.Tensor, embedding: torch.Tensor | None, batch_index) -> torch.Tensor:
        """Standardised cell embedding: external, or the frozen PCA encoder of ``x_log``."""
        if self.external_embedding:
            if embedding is None:
                raise InvalidInputError("This model was set up with an embedding_key but got no embedding.")
            e = embedding.float()
        else:
            e = (x_log - self.gene_mean) @ self.loadings
        e = (e - self.embedding_mean) / self.embedding_scale
        if self.batch_embedding is not None and batch_index is not None:
            idx = batch_index.long().view(-1)
            unseen = idx < 0  # batches unseen at training: the mean batch embedding (batch-free)
            b = self.batch_embedding(idx.clamp(min=0))
            if bool(unseen.any()):
                b = torch.where(unseen[:, None], self.batch_embedding.weight.mean(0, keepdim=True), b)
            e = e + b
        return e

    def set_linear_stage(self, weight: torch.Tensor, bias: torch.Tensor, mix: float = 1.0) -> None:
        """Put a fitted first stage (``weight``: phenotypes × features, ``bias``) into the buffers."""
        if not self.linear_stage:
            raise InvalidInputError("This module was built with linear_stage=False.")
        self.linear_weight.copy_(weight.to(self.linear_weight))
        self.linear_bias.copy_(bias.to(self.linear_bias))
        self.mix.fill_(float(mix))

    @auto_move_data
    def inference(self, x, embedding=None, batch_index=None) -> dict[str, torch.Tensor]:
        """Run both branches and the fusion; return logits and Cell Learner outputs."""
        return self.forward_normalized(self.normalize(x.float()), embedding, batch_index)

    def forward_normalized(self, x_log, embedding=None, batch_index=None) -> dict[str, torch.Tensor]:
        """:meth:`inference` from already normalised input (``normalize(x)``): gradients with
        respect to ``x_log`` give each gene's attribution on the log-expression scale.
        Values above a feature's ``input_max`` (its largest value on the registered cells) are
        clipped to it first, so a shifted query cannot drive the network or the first stage
        beyond the range they were fitted on.
        """
        # straight-through: the value is clipped, the gradient passes as if it were not, so a gene
        # above its maximum keeps the gradient it has at the maximum (first-order knockout screens
        # of query cells), and a value at the maximum keeps its full gradient
        x_log = x_log - (x_log - self.input_max).clamp_min(0.0).detach()
        tokens, gene_idx, values, mask = self.tokenizer(x_log)
        prior = self.prior[gene_idx] * mask
        cl = self.cell_learner(tokens, values, mask, prior)
        # the wide path reads x itself (log-normalised): a knocked-out gene reaches it
        logits_p, e_p = self.prediction(self.embed(x_log, embedding, batch_index), x_log)
        e_t = cl["e_t"]
        denom = cl["selected_mask"].sum(1, keepdim=True).clamp_min(1)
        pooled_t = e_t.sum(1) / denom + cl["cls"]
        logits_t = self.selection_head(pooled_t)
        if self.use_cffm:
            fused = self.cffm(e_p, e_t)
            logits = self.fused_head(fused)
            if self.use_wide:  # residual: the fused model starts from the (wide & deep) branch
                logits = logits + logits_p
        else:  # ablation: late fusion of the two branches' logits
            fused = torch.cat([e_p.mean(1), pooled_t], dim=-1)
            logits = 0.5 * (logits_p + logits_t)
        network = logits
        out = {}
        if self.linear_stage:  # the convex first stage reads x_log: knockouts and gradients pass through it
            out["logits_linear"] = x_log @ self.linear_weight.t() + self.linear_bias
            logits = out["logits_linear"] + self.mix * network
        return {
            **out,
            "logits": logits,
            "logits_network": network,
            "logits_p": logits_p,
            "logits_t": logits_t,
            "fused": fused,
            "gene_idx": gene_idx,
            "token_mask": mask,
            "attention": cl["attention"],
            "scores": cl["scores"],
            "selected_pos": cl["selected_pos"],
            "selected_mask": cl["selected_mask"],
        }

    def loss(self, tensors, inference_outputs, generative_outputs, **kwargs) -> LossOutput:
        """Cross-entropy on the final logits (the first stage's plus the network's, so the network
        learns the residual) + ``aux_weight`` × each branch's (+ the wide path's ridge penalty);
        balanced softmax when set; unlabelled cells skipped.
        """
        y = tensors[REGISTRY_KEYS.LABELS_KEY].long().view(-1)
        labelled = y < self.n_classes
        logits = inference_outputs["logits"]
        n = logits.shape[0]

        shift = self.log_prior if self.balanced_softmax else None

        def ce(lg):
            if not labelled.any():
                return lg.sum() * 0.0
            lg = lg[labelled]
            if shift is not None:  # balanced softmax: train on logits + log prior
                lg = lg + shift
            return F.cross_entropy(lg, y[labelled], weight=self.class_weights)

        main = ce(logits)
        aux = ce(inference_outputs["logits_p"]) + ce(inference_outputs["logits_t"])
        loss = main + self.aux_weight * aux
        if self.prediction.wide is not None and self.wide_l2 > 0:
            loss = loss + self.wide_l2 * self.prediction.wide.penalty()
        return LossOutput(
            loss=loss,
            n_obs_minibatch=n,
            classification_loss=main,
            logits=logits[labelled],
            true_labels=y[labelled].unsqueeze(-1),
        )
