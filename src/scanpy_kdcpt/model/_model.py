"""KDCPT: the scvi-tools model class that owns the data registration, training and `get_*`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import rich.pretty  # noqa: F401 - scvi's view_anndata_setup calls rich.pretty, which rich 15 no longer imports
import torch
from scanpy import logging as logg
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LabelsWithUnlabeledObsField, LayerField, ObsmField
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin
from scvi.utils import setup_anndata_dsp

from .. import _expression, linear
from .._constants import REGISTRY_KEYS, UNLABELED_CATEGORY
from .._errors import InvalidInputError
from .._utils import is_mudata
from ..module import KDCPTModule, KDCPTTrainingPlan
from ..perturb import GRNMixin, KnockoutMixin
from . import _data
from ._annotate import AnnotateMixin
from ._calibration import CalibrationMixin
from ._crossfit import CrossFitMixin
from ._fates import FateMixin
from ._inference import InferenceMixin
from ._inputs import inputs_for
from ._keygenes import KeyGenesMixin
from ._mudata import MuDataMixin
from ._save_load import SaveLoadMixin
from ._training import TrainingMixin
from ._transitions import TransitionMixin

if TYPE_CHECKING:
    from anndata import AnnData


#: hyper-parameters the model uses itself (the encoder, class weights, the prior, the first stage), not the module
_ENCODER_AND_STAGE_ARGS = ("n_pcs", "whiten", "class_weights", "prior_weight", "linear_scheme")


class KDCPT(
    TrainingMixin,
    InferenceMixin,
    AnnotateMixin,
    SaveLoadMixin,
    MuDataMixin,
    CalibrationMixin,
    CrossFitMixin,
    TransitionMixin,
    FateMixin,
    KeyGenesMixin,
    KnockoutMixin,
    GRNMixin,
    UnsupervisedTrainingMixin,
    BaseModelClass,
):
    """KD-CPT: dual-branch model of cell phenotypes and their transitions.

    A prediction branch reads a cell embedding (an external one from ``.obsm``, or the model's
    own frozen PCA encoder); a Cell Learner selects key gene tokens by CLS attention biased
    by a prior (e.g. transcription factors); the cross-function fusion module (CFFM) fuses
    the two into phenotype logits.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`, or a paired RNA + ATAC MuData registered
        with :meth:`setup_mudata` (genes and regulatory sites then share the token pool).
    n_tokens
        Gene tokens per cell: its ``n_tokens`` most expressed genes (fewer when fewer expressed).
    n_selected
        Tokens kept by the Cell Learner (``k``).
    d_model
        Token width (``c``).
    n_layers, n_heads, n_latents
        Latent-query attention layers, heads, and learned queries (the first is CLS).
    n_hidden
        Width of the prediction branch MLP.
    n_pcs
        Components of the internal encoder when no ``embedding_key`` was registered.
    whiten
        How the internal encoder's components are scaled for the network: ``True`` (default),
        each divided by its own sd (whitened: every component gets the weight of the leading
        ones); ``False``, all divided by the first component's sd, so they keep their relative
        variances and the trailing components, mostly noise, stay small. Measured over 5 splits
        (``benchmarks/results/classification.md``): ``False`` raised macro-F1 on paul15 (a
        240-gene panel, 0.739 against 0.710) and lowered it on PBMC (0.671 against 0.700),
        the other datasets within noise; try it on a small gene panel. An ``embedding_key``
        embedding is standardised per dimension either way.
    prior_weight
        λ, the strength of the prior in the Cell Learner (ignored without a ``prior_key``).
    prior_mode
        How the prior enters the Cell Learner's scores: ``"bias"`` (default), a bias on the
        log-attention — a prior gene's attention is multiplied by ``1 / (1 - λ)``, so the
        prior guides the selection among the genes the network attends to without selecting
        every prior gene; ``"blend"``, the paper's ``(1 - λ) * attention + λ * prior``.
    aggregation
        ``"mean"`` or ``"learned"`` weighting of CLS attention over layers and heads.
    use_cell_learner, use_cffm
        Ablation switches (paper Table 1). Without the Cell Learner, tokens are chosen by
        expression rank; without CFFM, the two branches' logits are averaged.
    aux_weight
        Weight of the auxiliary per-branch losses.
    class_weights
        ``None``, ``"balanced"`` (inverse phenotype frequency, for rare phenotypes), or a
        sequence with one weight per phenotype.
    dropout
        Dropout rate.
    use_wide
        Add a linear "wide" path over all registered genes (log-normalised) to the prediction
        branch (trained by SGD with the network, on top of the first stage). It reads the
        model's input, so knockouts reach it. Kept on by default beside ``linear_stage``: without
        it PBMC lost 0.04 macro-F1 over 5 splits, paul15 and pancreas moved within noise.
    wide_l2
        Ridge penalty on the wide path's weights.
    balanced_softmax
        Balanced-softmax (logit-adjusted) loss for rare phenotypes: the training loss sees
        ``logits + log(class frequency)``, predictions the plain logits. Default on: it
        raised macro-F1 over plain cross-entropy and over ``class_weights="balanced"`` in
        the tuning runs of ``benchmarks/results/classification.md``.
    linear_stage
        A convex first stage (default on): :meth:`train` fits a class-balanced multinomial
        logistic regression on all features (the log-normalised genes the network reads) to
        convergence on the training cells, its L2 strength by inner cross-validation; the
        network learns the residual on top of its logits (``linear + mix * network``), and
        ``mix`` is chosen on the validation cells. The model is then never far below a
        well-fitted linear model, an external ``.obsm`` embedding included. The stage reads
        the model's input, so knockouts and gene attributions pass through it. Measured with
        it on (5 splits each, ``benchmarks/results/classification.md``): held-out macro-F1
        higher than without it on pancreas, PBMC, paul15 and SNARE and training faster (fewer
        epochs); key genes as without it (pancreas marker ranks median 5, 7 of 9 in the top 10,
        ``benchmarks/results/keygenes_pancreas_linear_stage.md``; the attributions are of the
        logit margin, which does not saturate on the confident linear logits); simulated
        knockouts with the same signs and sizes (``benchmarks/results/knockout_genetics.md``).
        Where the validation cells choose ``mix = 0`` (pancreas in 4 of 5 splits) the
        prediction is the linear model's alone and the stage is refitted on the training and
        validation cells; ``model.linear_stage_`` says what was chosen. ``False``: the network
        alone, as before the stage existed (and as models saved then load).
    linear_scheme
        How the first stage fits several phenotypes: ``"multinomial"`` (default), one softmax
        regression; ``"ovr"``, one class-balanced binary regression of each phenotype against
        the rest (as CellTypist fits), its log-odds as the stage's logits. Measured
        (``benchmarks/results/first_stage_scheme.md``, ``classification.md``): ``"ovr"`` helped
        a query shifted by a stimulation (Kang 2018, control → IFN-β: macro-F1 0.845 against
        0.824) and cost the stage 0.07 on 23 cortex types (SNARE, every split); the inner
        cross-validation sees only the training condition and cannot choose for a shifted query.
    clip_input
        Clip every query value at the largest value its feature had on the registered cells
        (after normalisation; stored in ``module.input_max``, default on). On the registered
        cells nothing changes; on a shifted query (another donor, a stimulation) a gene far
        above anything seen in training cannot push the linear stage and the network past the
        range they were fitted on. Measured in ``benchmarks/results/classification.md``
        (Kang 2018: trained on control PBMCs, predicting IFN-β-stimulated ones). An in-silico
        over-expression is clipped likewise. ``False``: no clipping (as models saved before it
        existed load).

    """

    _module_cls = KDCPTModule
    _training_plan_cls = KDCPTTrainingPlan
    _fit_encoder_on_init = True

    def __init__(
        self,
        adata: AnnData,
        n_tokens: int = 256,
        n_selected: int = 32,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        n_latents: int = 4,
        n_hidden: int = 256,
        n_pcs: int = 100,
        whiten: bool = True,
        prior_weight: float = 0.3,
        prior_mode: Literal["bias", "blend"] = "bias",
        aggregation: Literal["mean", "learned"] = "mean",
        use_cell_learner: bool = True,
        use_cffm: bool = True,
        aux_weight: float = 0.5,
        class_weights: Literal["balanced"] | Sequence[float] | None = None,
        dropout: float = 0.1,
        use_wide: bool = True,
        wide_l2: float = 1e-3,
        balanced_softmax: bool = True,
        linear_stage: bool = True,
        linear_scheme: Literal["multinomial", "ovr"] = "multinomial",
        clip_input: bool = True,
    ):
        super().__init__(adata)
        # the hyper-parameters are declared once, in this signature: the module gets them by name
        self.init_params_ = self._get_init_params(locals())
        hyper = self.init_params_["non_kwargs"]
        if aggregation not in ("mean", "learned"):
            raise InvalidInputError(f"aggregation must be 'mean' or 'learned', not {aggregation!r}.")
        if not 0 <= prior_weight <= 1:
            raise InvalidInputError(f"prior_weight must be in [0, 1], got {prior_weight}.")
        if linear_scheme not in linear.SCHEMES:
            raise InvalidInputError(f"linear_scheme must be one of {linear.SCHEMES}, not {linear_scheme!r}.")
        if prior_mode not in ("bias", "blend"):
            raise InvalidInputError(f"prior_mode must be 'bias' or 'blend', not {prior_mode!r}.")
        setup = self.adata_manager.registry["setup_args"]
        labels_state = self.adata_manager.get_state_registry(REGISTRY_KEYS.LABELS_KEY)
        mapping = list(labels_state.categorical_mapping)
        self.classes_ = [str(c) for c in mapping if c != labels_state.unlabeled_category]
        self.data_type_ = setup["data_type"]
        self.temperature_ = 1.0
        self.linear_stage_ = None  # what train() fitted and chose (also in extra_["linear_stage"])
        self._inputs = inputs_for(self)
        self.var_names_ = self._inputs.feature_names()  # genes (+ regulatory sites with setup_mudata)
        external = setup["embedding_key"] is not None
        # a PCA has at most n_obs − 1 components; a loaded model keeps its saved width, whatever the cells
        limits = [n_pcs, len(self.var_names_) - 1] + ([self.adata.n_obs - 1] if self._fit_encoder_on_init else [])
        n_pcs = int(min(limits))
        n_embedding = self.adata.obsm[setup["embedding_key"]].shape[1] if external else n_pcs
        n_batch = self.summary_stats.get("n_batch", 0) if setup["batch_key"] is not None else 0

        module_cls, module_kwargs = self._inputs.module_spec()
        self.module = module_cls(
            n_genes=len(self.var_names_),
            n_classes=len(self.classes_),
            n_embedding=n_embedding,
            external_embedding=external,
            is_counts=self.data_type_ == "counts",
            n_batch=n_batch,
            **{k: v for k, v in hyper.items() if k not in _ENCODER_AND_STAGE_ARGS},
            prior_weight=prior_weight if setup["prior_key"] is not None else 0.0,
            **module_kwargs,
        )
        if self._fit_encoder_on_init:
            self._fit_inputs(class_weights, whiten=whiten)
        self._model_summary_string = (
            f"KDCPT: {len(self.classes_)} phenotypes, {len(self.var_names_)} features, "
            f"{'embedding ' + repr(setup['embedding_key']) if external else f'{n_pcs}-PC internal encoder'}, "
            f"data {self.data_type_}, prior {setup['prior_key']!r}, "
            f"cell_learner={use_cell_learner}, cffm={use_cffm}, linear_stage={linear_stage}"
        )

    # ---------------------------------------------------------------------------------------
    # set-up
    # ---------------------------------------------------------------------------------------
    @classmethod
    @setup_anndata_dsp.dedent
    def setup_anndata(
        cls,
        adata: AnnData,
        labels_key: str,
        layer: str | None = None,
        embedding_key: str | None = None,
        prior_key: str | None = None,
        batch_key: str | None = None,
        unlabeled_category: str | None = None,
        data_type: Literal["auto", "counts", "log"] = "auto",
        **kwargs,
    ):
        """Register an AnnData for KDCPT.

        Parameters
        ----------
        adata
            AnnData with cells × genes.
        labels_key
            ``.obs`` column with each cell's phenotype. Missing values (and
            ``unlabeled_category``) mark cells that are predicted but left out of the loss.
        layer
            Layer with counts or log-normalised expression; ``None`` for ``adata.X``.
            Scaled (z-scored, negative) values are refused.
        embedding_key
            ``.obsm`` key of a pretrained cell embedding (scGPT, Geneformer, UCE, scVI, ...).
            Without it, the model fits its own frozen PCA encoder.
        prior_key
            Boolean or [0, 1] ``.var`` column of prior regulators (e.g. ``is_tf``).
        batch_key
            ``.obs`` column of batches, embedded into the prediction branch.
        unlabeled_category
            Value of ``labels_key`` that marks unlabelled cells.
        data_type
            ``"counts"`` (normalised + log1p inside the model), ``"log"`` (used as is), or
            ``"auto"`` to detect it (integers → counts). The resolved value is recorded.
        **kwargs
            Passed to :meth:`scvi.data.AnnDataManager.register_fields` (e.g. ``source_registry``).

        """
        setup_method_args = cls._get_setup_method_args(**locals())
        if is_mudata(adata):
            raise TypeError(
                "setup_anndata got a MuData: register paired RNA + ATAC data with "
                'KDCPT.setup_mudata(mdata, labels_key, modalities={"rna": "rna", "regulatory": "atac"}), '
                'or pass one modality (mdata["rna"]) to setup_anndata.'
            )
        _data.check_var_names(adata)
        where = f"adata.layers[{layer!r}]" if layer else "adata.X"
        data_type = _data.resolve_data_type(_expression.get_matrix(adata, layer), data_type, where)
        setup_method_args["setup_args"]["data_type"] = data_type
        logg.info(f"KDCPT: expression treated as {data_type}.")

        if batch_key is not None:  # before anything is written
            _data.check_batch(adata, batch_key)
        labels_obs_key, unlabeled_category = _data.check_labels(adata, labels_key, unlabeled_category)
        if unlabeled_category is None:
            unlabeled_category = UNLABELED_CATEGORY
        fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False),
            LabelsWithUnlabeledObsField(REGISTRY_KEYS.LABELS_KEY, labels_obs_key, unlabeled_category),
        ]
        if batch_key is not None:
            fields.append(CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key))
        if embedding_key is not None:
            _data.check_embedding(adata, embedding_key)
            fields.append(ObsmField(REGISTRY_KEYS.EMBEDDING_KEY, embedding_key))
        if prior_key is not None:
            _data.check_prior(adata, prior_key)
        adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    def _fit_inputs(self, class_weights, *, whiten: bool = True) -> None:
        """Fit the frozen encoder / embedding standardisation, the prior and class weights."""
        setup = self.adata_manager.registry["setup_args"]
        m = self.module
        if setup["prior_key"] is not None:
            prior = self._inputs.prior_vector(setup["prior_key"])
            m.prior.copy_(torch.as_tensor(prior, dtype=torch.float32))
        if m.external_embedding:
            emb = np.asarray(self.adata.obsm[setup["embedding_key"]], dtype=np.float32)
            m.embedding_mean.copy_(torch.as_tensor(emb.mean(0)))
            m.embedding_scale.copy_(torch.as_tensor(np.maximum(emb.std(0), 1e-6)))
        else:
            from scvi import settings

            mean, loadings, std = self._inputs.fit_encoder(m.loadings.shape[1], seed=settings.seed or 0)
            m.gene_mean.copy_(torch.as_tensor(mean))
            m.loadings.copy_(torch.as_tensor(loadings))
            # whitened: each component by its own sd; else all by the first's (relative variances kept)
            m.embedding_scale.copy_(torch.as_tensor(std if whiten else np.full_like(std, std[0])))
        if m.clip_input:
            m.input_max.copy_(torch.as_tensor(self._inputs.feature_max()))
        if class_weights is not None:
            codes = self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY).ravel()
            if isinstance(class_weights, str):
                if class_weights != "balanced":
                    raise InvalidInputError(
                        f"class_weights must be None, 'balanced' or a sequence, not {class_weights!r}."
                    )
                counts = np.bincount(codes[codes < len(self.classes_)].astype(int), minlength=len(self.classes_))
                w = counts.sum() / (len(self.classes_) * np.maximum(counts, 1))
            else:
                w = np.asarray(class_weights, dtype=float)
                if w.shape != (len(self.classes_),):
                    raise InvalidInputError(
                        f"class_weights needs one weight per phenotype ({len(self.classes_)}), got {w.shape}."
                    )
            m.class_weights.copy_(torch.as_tensor(w, dtype=torch.float32))
