"""KDCPT: the scvi-tools model class that owns the data registration, training and `get_*`."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import rich.pretty  # noqa: F401 - scvi's view_anndata_setup calls rich.pretty, which rich 15 no longer imports
import torch
from scanpy import logging as logg
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LabelsWithUnlabeledObsField, LayerField, ObsmField
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin
from scvi.utils import setup_anndata_dsp, track

from .. import _expression, _keys, metrics, writers
from .. import calibration as cal
from .._constants import REGISTRY_KEYS, UNLABELED_CATEGORY, UNSEEN_BATCH_KEY
from .._errors import InvalidInputError, NotTrainedError
from .._utils import default_palette
from ..results import KeyGenes, Predictions
from . import _data, _save_load
from ._calibration import CalibrationMixin
from ._crossfit import CrossFitMixin, check_predictions
from ._keygenes import KeyGeneAccumulator, KeyGenesMixin
from ._knockout import KnockoutMixin
from ._module import KDCPTModule
from ._mudata import MuDataMixin, is_mudata, prepare_query
from ._trainingplan import KDCPTTrainingPlan
from ._transitions import TransitionMixin

if TYPE_CHECKING:
    from anndata import AnnData


class KDCPT(
    MuDataMixin,
    CalibrationMixin,
    CrossFitMixin,
    TransitionMixin,
    KeyGenesMixin,
    KnockoutMixin,
    UnsupervisedTrainingMixin,
    BaseModelClass,
):
    """KD-CPT: dual-branch model of cell phenotypes and their transitions.

    A prediction branch reads a cell embedding (an external one from ``.obsm``, or the model's
    own frozen PCA encoder); a Cell Learner selects key gene tokens by CLS attention blended
    with a prior (e.g. transcription factors); the cross-function fusion module (CFFM) fuses
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
        branch, so the model is never weaker than a regularised linear model on the same genes.
        It reads the model's input, so knockouts reach it.
    wide_l2
        Ridge penalty on the wide path's weights.
    balanced_softmax
        Balanced-softmax (logit-adjusted) loss for rare phenotypes: the training loss sees
        ``logits + log(class frequency)``, predictions the plain logits. Default on: it
        raised macro-F1 over plain cross-entropy and over ``class_weights="balanced"`` in
        the tuning runs of ``benchmarks/results/classification.md``.

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
    ):
        super().__init__(adata)
        if aggregation not in ("mean", "learned"):
            raise ValueError(f"aggregation must be 'mean' or 'learned', not {aggregation!r}.")
        if not 0 <= prior_weight <= 1:
            raise ValueError(f"prior_weight must be in [0, 1], got {prior_weight}.")
        if prior_mode not in ("bias", "blend"):
            raise ValueError(f"prior_mode must be 'bias' or 'blend', not {prior_mode!r}.")
        setup = self.adata_manager.registry["setup_args"]
        labels_state = self.adata_manager.get_state_registry(REGISTRY_KEYS.LABELS_KEY)
        mapping = list(labels_state.categorical_mapping)
        self.classes_ = [str(c) for c in mapping if c != labels_state.unlabeled_category]
        self.data_type_ = setup["data_type"]
        self.temperature_ = 1.0
        self.var_names_ = self._feature_names()  # genes (+ regulatory sites with setup_mudata)
        external = setup["embedding_key"] is not None
        n_pcs = int(min(n_pcs, self.adata.n_obs - 1, len(self.var_names_) - 1))
        n_embedding = self.adata.obsm[setup["embedding_key"]].shape[1] if external else n_pcs
        n_batch = self.summary_stats.get("n_batch", 0) if setup["batch_key"] is not None else 0

        module_cls, module_kwargs = self._module_spec()
        self.module = module_cls(
            n_genes=len(self.var_names_),
            n_classes=len(self.classes_),
            n_embedding=n_embedding,
            external_embedding=external,
            is_counts=self.data_type_ == "counts",
            n_batch=n_batch,
            n_tokens=n_tokens,
            n_selected=n_selected,
            d_model=d_model,
            n_layers=n_layers,
            n_heads=n_heads,
            n_latents=n_latents,
            n_hidden=n_hidden,
            prior_weight=prior_weight if setup["prior_key"] is not None else 0.0,
            prior_mode=prior_mode,
            aggregation=aggregation,
            use_cell_learner=use_cell_learner,
            use_cffm=use_cffm,
            aux_weight=aux_weight,
            dropout=dropout,
            use_wide=use_wide,
            wide_l2=wide_l2,
            balanced_softmax=balanced_softmax,
            **module_kwargs,
        )
        if self._fit_encoder_on_init:
            self._fit_inputs(class_weights)
        self._model_summary_string = (
            f"KDCPT: {len(self.classes_)} phenotypes, {len(self.var_names_)} features, "
            f"{'embedding ' + repr(setup['embedding_key']) if external else f'{n_pcs}-PC internal encoder'}, "
            f"data {self.data_type_}, prior {setup['prior_key']!r}, "
            f"cell_learner={use_cell_learner}, cffm={use_cffm}"
        )
        self.init_params_ = self._get_init_params(locals())

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
        if data_type not in ("auto", "counts", "log"):
            raise InvalidInputError(f"data_type must be 'auto', 'counts' or 'log', not {data_type!r}.")
        _data.check_var_names(adata)
        X = _expression.get_matrix(adata, layer)
        where = f"adata.layers[{layer!r}]" if layer else "adata.X"
        _expression.check_values(X, where)
        if data_type == "auto":
            data_type = _expression.detect_data_type(X)
        if data_type == "log":
            _expression.check_logged(X, where)
        setup_method_args["setup_args"]["data_type"] = data_type
        logg.info(f"KDCPT: expression treated as {data_type}.")

        labels_obs_key = _data.check_labels(adata, labels_key, unlabeled_category)
        if unlabeled_category is None:
            unlabeled_category = UNLABELED_CATEGORY
        fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False),
            LabelsWithUnlabeledObsField(REGISTRY_KEYS.LABELS_KEY, labels_obs_key, unlabeled_category),
        ]
        if batch_key is not None:
            _data.check_obs_column(adata, batch_key, "batch_key")
            fields.append(CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key))
        if embedding_key is not None:
            _data.check_embedding(adata, embedding_key)
            fields.append(ObsmField(REGISTRY_KEYS.EMBEDDING_KEY, embedding_key))
        if prior_key is not None:
            _data.check_prior(adata, prior_key)
        adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    def _fit_inputs(self, class_weights) -> None:
        """Fit the frozen encoder / embedding standardisation, the prior and class weights."""
        setup = self.adata_manager.registry["setup_args"]
        m = self.module
        if setup["prior_key"] is not None:
            prior = self._prior_vector(setup["prior_key"])
            m.prior.copy_(torch.as_tensor(prior, dtype=torch.float32))
        if m.external_embedding:
            emb = np.asarray(self.adata.obsm[setup["embedding_key"]], dtype=np.float32)
            m.embedding_mean.copy_(torch.as_tensor(emb.mean(0)))
            m.embedding_scale.copy_(torch.as_tensor(np.maximum(emb.std(0), 1e-6)))
        else:
            from scvi import settings

            mean, loadings, std = self._fit_encoder(m.loadings.shape[1], seed=settings.seed or 0)
            m.gene_mean.copy_(torch.as_tensor(mean))
            m.loadings.copy_(torch.as_tensor(loadings))
            m.embedding_scale.copy_(torch.as_tensor(std))
        if class_weights is not None:
            codes = self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY).ravel()
            if isinstance(class_weights, str):
                if class_weights != "balanced":
                    raise ValueError(f"class_weights must be None, 'balanced' or a sequence, not {class_weights!r}.")
                counts = np.bincount(codes[codes < len(self.classes_)].astype(int), minlength=len(self.classes_))
                w = counts.sum() / (len(self.classes_) * np.maximum(counts, 1))
            else:
                w = np.asarray(class_weights, dtype=float)
                if w.shape != (len(self.classes_),):
                    raise ValueError(
                        f"class_weights needs one weight per phenotype ({len(self.classes_)}), got {w.shape}."
                    )
            m.class_weights.copy_(torch.as_tensor(w, dtype=torch.float32))

    # ---------------------------------------------------------------------------------------
    # training
    # ---------------------------------------------------------------------------------------
    def train(
        self,
        max_epochs: int | None = None,
        *,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        train_size: float | None = None,
        validation_size: float | None = None,
        calibration_size: float = 0.1,
        batch_size: int = 128,
        early_stopping: bool = True,
        early_stopping_patience: int = 8,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        wide_lr: float | None = None,
        restore_best: bool = True,
        plan_kwargs: dict | None = None,
        **trainer_kwargs,
    ):
        """Train the model (GPU when present, CPU otherwise) with a progress bar.

        The cells are split at random into three disjoint sets: training, validation (early
        stopping and the restored best epoch) and calibration (held out of training and of
        early stopping, for temperature scaling and conformal scores:
        ``calibration_indices_``).

        Parameters
        ----------
        max_epochs
            Passes through the data; default ``min(60, max(30, 30000 // n_cells))`` (early
            stopping usually ends training sooner).
        accelerator, devices
            Lightning's; ``"auto"`` takes a GPU when there is one. ``strategy="ddp"`` in
            ``trainer_kwargs`` trains on several GPUs (or CPU processes with ``accelerator="cpu"``);
            it runs as ``"ddp_find_unused_parameters_true"``. See the "Large data" docs page.
        train_size, validation_size, calibration_size
            Fractions of cells for training, validation and calibration. By default
            validation and calibration take ``0.1`` each and training the rest. When only
            ``train_size`` is given, the rest is shared: calibration takes
            ``min(calibration_size, (1 - train_size) / 2)``, validation the remainder
            (``train_size=1.0`` trains on every cell, without validation or calibration).
        batch_size
            Cells per minibatch.
        early_stopping, early_stopping_patience
            Stop when ``validation_loss`` has not improved for that many epochs.
        lr, weight_decay
            Learning rate and (decoupled) weight decay of AdamW.
        wide_lr
            Learning rate of the wide path (linear logits over all genes), trained without
            AdamW's weight decay (its ridge penalty is the model's ``wide_l2``). ``None``
            (default): ``lr`` and ``weight_decay``, like the other parameters. ``1e-2`` raised
            macro-F1 on PBMC and pancreas but lowered it on SNARE-seq cortex (23 types), where
            early stopping then ended some runs before the deep part had learned; with
            ``KDCPT(wide_l2=1e-2)`` beside it that did not happen, and all four benchmark
            datasets scored within one sd of the defaults
            (``benchmarks/results/classification.md``).
        restore_best
            At the end, restore the weights of the epoch with the lowest ``validation_loss``
            (not those of the last epoch); ``model.best_epoch_`` says which one.
        plan_kwargs
            Keyword arguments for :class:`~scanpy_kdcpt.model.KDCPTTrainingPlan`.
        **trainer_kwargs
            Passed to :class:`scvi.train.Trainer` (``enable_progress_bar``, ``strategy``, ...).

        Returns
        -------
        None. ``model.history`` holds per-epoch ``train_loss``, ``validation_loss``,
        ``*_accuracy`` and ``*_f1``; ``model.train_indices``, ``model.validation_indices`` and
        ``model.calibration_indices_`` (labelled cells only) the three disjoint sets.

        Notes
        -----
        CPU threads: training uses torch's setting (``torch.set_num_threads`` or
        ``scvi.settings.num_threads``) and never changes it. On a busy 2-core machine one
        thread was several times faster than two (17 s against 130 s per epoch of 9k cells ×
        2,000 genes): call ``torch.set_num_threads(1)`` there.

        """
        if wide_lr is not None and not getattr(self.module, "use_wide", False):
            warnings.warn(
                "wide_lr has no effect: this model has no wide path (it was built with use_wide=False).",
                UserWarning,
                stacklevel=2,
            )
        if max_epochs is None:
            max_epochs = int(min(60, max(30, 30_000 // max(self.adata.n_obs, 1))))
        if trainer_kwargs.get("strategy") in ("ddp", "ddp_spawn", "ddp_notebook"):
            # some parameters do not reach every loss (e.g. the learned layer weights with
            # aggregation="mean"): DDP must look for unused parameters or it stops at the first step
            trainer_kwargs["strategy"] = f"{trainer_kwargs['strategy']}_find_unused_parameters_true"
        train_size, validation_size, calibration_size = self._split_sizes(train_size, validation_size, calibration_size)
        self._fit_log_prior()
        plan_kwargs = {
            "lr": lr,
            "weight_decay": weight_decay,
            "wide_lr": wide_lr,
            "restore_best": restore_best,
            **(plan_kwargs or {}),
            "n_classes": len(self.classes_),
        }
        has_validation = validation_size > 0
        if early_stopping and has_validation:
            trainer_kwargs.setdefault("early_stopping_monitor", "validation_loss")
            trainer_kwargs.setdefault("early_stopping_patience", early_stopping_patience)
        if has_validation:
            trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
        super().train(
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            train_size=train_size,
            validation_size=validation_size,
            batch_size=batch_size,
            early_stopping=early_stopping and has_validation,
            plan_kwargs=plan_kwargs,
            **trainer_kwargs,
        )
        held_out = np.asarray(self.test_indices if self.test_indices is not None else [], dtype=int)
        codes = self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY).ravel()
        self.calibration_indices_ = np.sort(held_out[codes[held_out] < len(self.classes_)]).astype(int)
        self.best_epoch_ = getattr(self.trainer.lightning_module, "best_epoch", None) if self.trainer else None
        self.module.eval()

    @staticmethod
    def _split_sizes(train_size, validation_size, calibration_size) -> tuple[float, float, float]:
        """Resolve train / validation / calibration fractions (see :meth:`train`)."""
        if not 0 <= calibration_size < 1:
            raise ValueError(f"calibration_size must be in [0, 1), got {calibration_size}.")
        if train_size is None:
            validation_size = 0.1 if validation_size is None else validation_size
            train_size = 1.0 - validation_size - calibration_size
        elif validation_size is None:
            rest = max(1.0 - train_size, 0.0)
            calibration_size = min(calibration_size, rest / 2)
            validation_size = rest - calibration_size
        else:
            calibration_size = 1.0 - train_size - validation_size
        if train_size <= 0 or validation_size < 0 or calibration_size < -1e-9:
            raise ValueError(
                f"train_size={train_size:.3g}, validation_size={validation_size:.3g} and "
                f"calibration_size={calibration_size:.3g} must be non-negative fractions that sum to 1."
            )
        return float(train_size), float(validation_size), max(float(calibration_size), 0.0)

    def _fit_log_prior(self) -> None:
        """Log class frequencies of the labelled cells, for the balanced-softmax loss."""
        codes = self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY).ravel()
        n = len(self.classes_)
        counts = np.bincount(codes[codes < n].astype(int), minlength=n).astype(float)
        prior = (counts + 1.0) / (counts.sum() + n)
        self.module.log_prior.copy_(torch.as_tensor(np.log(prior), dtype=torch.float32))

    # ---------------------------------------------------------------------------------------
    # running the module
    # ---------------------------------------------------------------------------------------
    def _prepare_adata(self, adata: AnnData | None) -> AnnData:
        """The registered AnnData itself, or a light AnnData built from a query.

        A query is aligned to the model's genes by name (missing ones zero-filled with a
        warning), checked, and registered with this model's setup; the user's object is not
        modified.
        """
        if adata is None or adata is self.adata or self.adata_manager.adata is adata:
            return self.adata if adata is None else adata
        if self._is_multiome():
            return self._validate_anndata(prepare_query(self, adata))
        query = _data.query_anndata(
            adata,
            setup=self.adata_manager.registry["setup_args"],
            labels_state=self.adata_manager.get_state_registry(REGISTRY_KEYS.LABELS_KEY),
            var_names=self.var_names_,
            data_type=self.data_type_,
            embedding_width=int(self.module.embedding_mean.shape[0]),
            batch_categories=self._batch_categories(),
        )
        return self._validate_anndata(query)

    def _batch_categories(self) -> list | None:
        """The batches seen at training (``None`` without a ``batch_key``)."""
        if self.adata_manager.registry["setup_args"].get("batch_key") is None:
            return None
        return list(self.adata_manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY).categorical_mapping)

    def _check_if_trained(self, warn: bool = True, message: str | None = None) -> bool:
        """Raise :class:`~scanpy_kdcpt._errors.NotTrainedError` unless the model was trained.

        An untrained network predicts one phenotype for every cell; its results must not reach
        an AnnData, so this refuses rather than warns (``warn`` is kept for scvi-tools' signature).
        """
        if not self.is_trained_:
            raise NotTrainedError(
                message or "The model has not been trained: call model.train() first (or KDCPT.load() a trained model)."
            )
        return True

    def _iterate(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        transform: Callable[[torch.Tensor, np.ndarray], torch.Tensor] | None = None,
        progress: bool = False,
        description: str = "KDCPT",
        transform_inputs: Callable[[dict[str, torch.Tensor], np.ndarray], dict[str, torch.Tensor]] | None = None,
        attribute: np.ndarray | None = None,
    ) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        """Yield ``(positions, module outputs)`` per minibatch under ``torch.inference_mode``.

        ``positions`` index into ``indices`` (or all cells); ``transform(x, positions)`` may
        perturb the expression tensor of a batch (knockouts) before the forward pass;
        ``transform_inputs(inputs, positions)`` may replace any module input (expression and
        embedding together, for knockouts that re-embed the perturbed cells). With
        ``attribute`` (a phenotype code per position; −1: the cell's prediction) the outputs
        also hold ``"gradient"`` (of that phenotype's log-probability with respect to the
        normalised input ``"x_log"``, cells × features; one backward pass per batch) and
        ``"attribution"`` (gradient × ``x_log``).
        """
        adata = self._prepare_adata(adata)
        if indices is None:
            indices = np.arange(adata.n_obs)
        indices = np.asarray(indices)
        batch_size = batch_size or 512
        unseen = adata.obs[UNSEEN_BATCH_KEY].to_numpy(bool) if UNSEEN_BATCH_KEY in adata.obs else None
        dl = self._make_data_loader(adata=adata, indices=indices, batch_size=batch_size, shuffle=False)
        self.module.eval()
        start = 0
        it = track(dl, description=description, disable=not progress, style="tqdm") if progress else dl
        with torch.inference_mode() if attribute is None else torch.enable_grad():
            for tensors in it:
                n = tensors[REGISTRY_KEYS.X_KEY].shape[0]
                pos = np.arange(start, start + n)
                start += n
                inputs = self.module._get_inference_input(tensors)
                if unseen is not None and inputs.get("batch_index") is not None and unseen[indices[pos]].any():
                    inputs["batch_index"] = inputs["batch_index"].clone()
                    inputs["batch_index"][torch.as_tensor(unseen[indices[pos]])] = -1
                if transform is not None:
                    inputs["x"] = transform(inputs["x"].to(self.device), pos)
                if transform_inputs is not None:
                    inputs = transform_inputs(inputs, pos)
                if attribute is None:
                    yield pos, self.module.inference(**inputs)
                else:
                    yield pos, self._attributed(inputs, np.asarray(attribute)[pos])

    def _attributed(self, inputs: dict[str, torch.Tensor], target: np.ndarray) -> dict[str, torch.Tensor]:
        """Module outputs plus gradient × input of each cell's ``target`` log-probability."""
        module = self.module
        x_log = module.normalize(inputs.pop("x").to(self.device).float()).detach().requires_grad_(True)
        out = module.forward_normalized(x_log, **inputs)
        logp = torch.log_softmax(out["logits"].float() / float(self.temperature_), dim=-1)
        target = torch.as_tensor(target, device=logp.device, dtype=torch.long)
        target = torch.where(target >= 0, target, logp.argmax(-1))
        (grad,) = torch.autograd.grad(logp.gather(1, target[:, None]).sum(), x_log)
        out = {k: v.detach() for k, v in out.items()}
        x_log = x_log.detach()
        out.update(attribution=grad * x_log, gradient=grad, x_log=x_log)
        return out

    def _collect(self, keys: Sequence[str], **kwargs) -> dict[str, np.ndarray]:
        out: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        for _, res in self._iterate(**kwargs):
            for k in keys:
                out[k].append(res[k].float().cpu().numpy())
        return {k: np.concatenate(v) for k, v in out.items()}

    def get_logits(self, adata: AnnData | None = None, indices=None, batch_size: int | None = None) -> np.ndarray:
        """Final (fused) logits, cells × phenotypes, before temperature scaling."""
        self._check_if_trained(warn=True)
        return self._collect(["logits"], adata=adata, indices=indices, batch_size=batch_size)["logits"]

    def predict(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        soft: bool = False,
        batch_size: int | None = None,
        conformal_alpha: float | None = None,
    ) -> pd.Series | pd.DataFrame:
        """Predict phenotypes.

        Parameters
        ----------
        adata
            The registered AnnData (default) or a query with the same or partly the same
            genes (aligned by name; missing genes are zero-filled with a warning).
        indices
            Cells to predict (default all).
        soft
            Return probabilities (cells × phenotypes) instead of labels.
        batch_size
            Cells per forward pass.
        conformal_alpha
            Return split-conformal prediction sets at this level instead (e.g. ``0.1``: each
            set holds the true phenotype of ≥ 90 % of exchangeable cells). Needs
            :meth:`calibrate` first.

        Returns
        -------
        A categorical :class:`~pandas.Series` of phenotypes, or a DataFrame of probabilities
        (softmax of the logits divided by ``temperature_``), indexed by ``obs_names``. With
        ``conformal_alpha``: a boolean DataFrame cells × phenotypes, True for the phenotypes
        in each cell's prediction set (``.sum(axis=1)`` is the set size).

        """
        obs_names = (adata if adata is not None else self.adata).obs_names
        if indices is not None:
            obs_names = obs_names[np.asarray(indices)]
        proba = self._softmax(self.get_logits(adata, indices=indices, batch_size=batch_size))
        if conformal_alpha is not None:
            return self.get_prediction_sets(
                pd.DataFrame(proba, index=obs_names, columns=self.classes_), conformal_alpha
            )
        if soft:
            return pd.DataFrame(proba, index=obs_names, columns=self.classes_)
        return pd.Series(
            pd.Categorical.from_codes(proba.argmax(1), categories=self.classes_), index=obs_names, name="prediction"
        )

    def get_predictions(self, adata: AnnData | None = None, *, batch_size: int | None = None) -> Predictions:
        """Phenotype probabilities of every cell, with the known labels beside them.

        Returns
        -------
        :class:`~scanpy_kdcpt.results.Predictions` (``proba``, ``labels``, ``pred``,
        ``confidence``, ``uncertainty``); :func:`scanpy_kdcpt.writers.write_predictions`
        writes it into ``.obs``.

        """
        codes, labelled = self.labels_(adata)
        proba = self._softmax(self.get_logits(adata, batch_size=batch_size))
        return self._predictions(adata, proba, codes, labelled)

    def _predictions(self, adata, proba: np.ndarray, codes: np.ndarray, labelled: np.ndarray) -> Predictions:
        obs_names = (adata if adata is not None else self.adata).obs_names
        names = np.asarray(self.classes_, dtype=object)
        labels = pd.Series(np.where(labelled, names[np.maximum(codes, 0)], None), index=obs_names, dtype=object)
        return Predictions(
            proba=pd.DataFrame(proba, index=obs_names, columns=self.classes_),
            labels=labels,
            temperature=float(self.temperature_),
        )

    def _softmax(self, logits: np.ndarray) -> np.ndarray:
        """Probabilities at the model's temperature."""
        return cal.softmax(logits, float(self.temperature_))

    def get_latent_representation(
        self, adata: AnnData | None = None, indices=None, batch_size: int | None = None
    ) -> np.ndarray:
        """Fused representation (the CFFM output), cells × ``d_model``."""
        self._check_if_trained(warn=True)
        return self._collect(["fused"], adata=adata, indices=indices, batch_size=batch_size)["fused"]

    def labels_(self, adata: AnnData | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Known phenotype codes of ``adata`` (``-1`` where unlabelled) and the labelled mask."""
        adata = self._prepare_adata(adata)
        manager = self.get_anndata_manager(adata, required=True)
        codes = manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY).ravel().astype(int)
        labelled = codes < len(self.classes_)
        return np.where(labelled, codes, -1), labelled

    # ---------------------------------------------------------------------------------------
    # writing into AnnData
    # ---------------------------------------------------------------------------------------
    def annotate(
        self,
        adata: AnnData | None = None,
        *,
        key_added: str = _keys.DEFAULT_KEY,
        batch_size: int | None = None,
        conformal_alpha: float | None = None,
        direction: str | dict | None = "stored",
        transition_predictions: Predictions | None = None,
        copy: bool = False,
    ) -> AnnData | None:
        """Predict every cell and write the results into ``adata``.

        Parameters
        ----------
        adata
            The registered AnnData (default) or a query (genes aligned by name).
        key_added
            Prefix of every key written.
        batch_size
            Cells per forward pass.
        conformal_alpha
            Also write split-conformal prediction sets at this level (needs :meth:`calibrate`).
        direction
            Which transition matrix to write. ``"stored"`` (default): the directed chain of
            :meth:`compute_transitions` when it was run on these cells, else the posterior
            form (recorded in ``.uns[key]["direction"]``). ``"posterior"``: always the
            posterior form. Any ``direction`` of :meth:`compute_transitions` (``"auto"``,
            ``"velocity"``, ...): compute the directed chain now. With a directed chain the
            fate probabilities into the sink phenotypes are written too.
        transition_predictions
            Probabilities of the same cells to build the transition matrix, entropies and fates
            from, e.g. out-of-sample ones from :meth:`get_cross_fitted_predictions` (the model's
            own probabilities of its training cells are in-sample: over-confident, so the
            posterior matrix comes out too diagonal). Default: this model's predictions.
        copy
            Write into a copy and return it instead of modifying ``adata``.

        Returns
        -------
        ``None`` (or the annotated copy with ``copy=True``). Sets

        - ``.obs``: ``{key}_pred`` (categorical), ``{key}_proba_<phenotype>``,
          ``{key}_confidence``, ``{key}_uncertainty`` (cosine index, 0 = certain, 1 = uniform);
          with ``conformal_alpha``: ``{key}_prediction_set`` (e.g. ``"B|T"``), ``{key}_set_size``;
        - ``.uns["{key}_pred_colors"]``;
        - ``.uns[key]``: ``params``, ``classes``, ``metrics`` (on labelled cells, and on the
          validation cells when ``adata`` is the training data), ``history``, ``version``,
          ``calibration`` (temperature, ECE / Brier before and after :meth:`calibrate`,
          reliability tables), ``transition_matrix``, ``stationary``, ``entropy``,
          ``entropy_total``, ``entropy_total_normalized``, ``flux``, ``transition_method``,
          ``direction``, plus what the key-gene writer adds;
        - with a directed chain: ``.obsp["{key}_transitions"]``,
          ``.obsm["{key}_fate_probabilities"]``, ``.uns[key]["fate"]``, ``["fate_terminal"]``.

        """
        source = self.adata if adata is None else adata
        query = None if source is self.adata else source  # None: the registered (training) data
        self._check_if_trained()
        self._check_outputs_free(source, key_added)
        if conformal_alpha is not None:
            self._conformal_threshold(conformal_alpha)  # fails early, before anything is written
        predictions, key_genes = self._predict_with_key_genes(query, batch_size=batch_size)
        calibration = self.get_calibration(predictions if query is None else None, conformal_alpha=conformal_alpha)
        if transition_predictions is not None:
            check_predictions(transition_predictions, source.obs_names, self.classes_)
        transitions, fates = self._annotate_transitions(
            query, predictions if transition_predictions is None else transition_predictions, direction
        )
        target = source.copy() if copy else source
        writers.write_predictions(target, predictions, key_added=key_added, colors=self._colors())
        if conformal_alpha is not None:
            sets = self.get_prediction_sets(predictions.proba, conformal_alpha)
            writers.write_prediction_sets(target, sets, conformal_alpha, key_added=key_added)
        writers.write_summary(
            target,
            key_added=key_added,
            phenotypes=self.classes_,
            params={
                **self.init_params_.get("non_kwargs", {}),
                **self.adata_manager.registry["setup_args"],
                "temperature": float(self.temperature_),
            },
            metrics=self.get_metrics(predictions, is_training=query is None),
            history=pd.concat(list(self.history_.values()), axis=1).astype(float).reset_index()
            if self.history_
            else None,
            version=_version(),
        )
        writers.write_calibration(target, calibration, key_added=key_added)
        writers.write_transitions(target, transitions, key_added=key_added)
        if fates is not None:
            writers.write_fates(target, fates, key_added=key_added)
        writers.write_key_genes(target, key_genes, key_added=key_added, **self._key_feature_kwargs(target))
        return target if copy else None

    def _check_outputs_free(self, adata: AnnData, key_added: str) -> None:
        """Refuse before anything is written when an output key would overwrite the user's input.

        The labels, batch and prior columns the model was set up with must not be named like an
        output (``labels_key="kdcpt_pred"``); phenotype names must map to distinct columns.
        """
        keys = _keys.Keys(key_added)
        setup = self.adata_manager.registry["setup_args"]
        _keys.check_phenotype_keys(self.classes_, key_added, where="the model's phenotypes")
        obs_out = {keys.pred, keys.confidence, keys.uncertainty, keys.prediction_set, keys.set_size}
        obs_out |= {keys.proba(c) for c in self.classes_}
        var_out = {keys.score, keys.selected_frac, keys.rank, keys.key_gene, keys.knockout_effect}
        for kind, name, outputs in (
            ("labels_key", setup.get("labels_key"), obs_out),
            ("batch_key", setup.get("batch_key"), obs_out),
            ("prior_key", setup.get("prior_key"), var_out),
        ):
            if name is not None and name in outputs:
                raise InvalidInputError(
                    f"The model's {kind} {name!r} is also an output column of key_added={key_added!r}: writing "
                    f"would overwrite your {kind}. Pass another key_added (e.g. key_added='kdcpt_model') "
                    f"or rename the column before setup_anndata."
                )

    def _predict_with_key_genes(
        self, adata: AnnData | None, *, batch_size: int | None = None
    ) -> tuple[Predictions, KeyGenes]:
        """Predictions and key genes from one pass of the network over the cells."""
        self._check_if_trained(warn=True)
        codes, labelled = self.labels_(adata)
        acc = KeyGeneAccumulator(self.classes_, self.var_names_)
        logits = []
        target = np.where(labelled, codes, -1)
        for pos, out in self._iterate(adata, batch_size=batch_size, attribute=target):
            lg = out["logits"].float().cpu().numpy()
            logits.append(lg)
            acc.add(out, np.where(labelled[pos], codes[pos], lg.argmax(1)))
        proba = self._softmax(np.concatenate(logits))
        return self._predictions(adata, proba, codes, labelled), acc.result()

    def get_metrics(self, predictions: Predictions, *, is_training: bool = True) -> dict[str, dict[str, float]]:
        """Accuracy, macro-F1, kappa, ECE, mean confidence and uncertainty.

        ``"labelled"``: every labelled cell (training cells included when ``predictions`` are of
        the registered data: a training fit, not a held-out estimate); ``"validation"`` and
        ``"calibration"``: the held-out cells of :meth:`train`, when the cells are the training data.
        """
        known = predictions.labels.notna().to_numpy()
        subsets = {"labelled": np.flatnonzero(known)}
        if is_training:
            for name, held in (
                ("validation", self.validation_indices),
                ("calibration", getattr(self, "calibration_indices_", None)),
            ):
                if held is not None and len(held):
                    held = np.asarray(held)
                    subsets[name] = held[known[held]]
        return metrics.prediction_metrics(predictions.labels, predictions.proba, subsets)

    def _colors(self) -> np.ndarray:
        """Phenotype colours: those of ``labels_key`` when scanpy has them, else scanpy's palette."""
        labels_key = self.adata_manager.registry["setup_args"]["labels_key"]
        source = self.adata.uns.get(f"{labels_key}_colors")
        cats = self.adata.obs[labels_key].astype("category").cat.categories.astype(str)
        if source is not None and len(source) == len(cats):
            lookup = dict(zip(cats, source, strict=True))
            if all(c in lookup for c in self.classes_):
                return [lookup[c] for c in self.classes_]
        return default_palette(len(self.classes_))

    # ---------------------------------------------------------------------------------------
    # save / load (model/_save_load.py)
    # ---------------------------------------------------------------------------------------
    def save(self, dir_path: str, overwrite: bool = False, save_anndata: bool = False, **anndata_write_kwargs) -> None:
        """Save the model to ``dir_path``: ``model.pt`` (tensors only) and ``model.json``.

        A saved model cannot run code when loaded: tensors are read with
        ``torch.load(weights_only=True)`` and everything else is JSON.
        """
        _save_load.save(self, dir_path, overwrite=overwrite, save_anndata=save_anndata, **anndata_write_kwargs)

    @classmethod
    def load(
        cls, dir_path: str, adata: AnnData | None = None, accelerator: str = "auto", device: int | str = "auto"
    ) -> KDCPT:
        """Load a model saved with :meth:`save`.

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save`.
        adata
            AnnData with the model's genes in the same order. Default: the AnnData saved with
            ``save_anndata=True``.
        accelerator, device
            Where to put the model (``"auto"``: GPU when present).

        """
        return _save_load.load(cls, dir_path, adata=adata, accelerator=accelerator, device=device)


def _version() -> str:
    from .. import __version__

    return __version__
