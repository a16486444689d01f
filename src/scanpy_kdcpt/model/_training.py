"""Training (mixed into KDCPT): the three-way split, the balanced-softmax prior, Lightning."""

from __future__ import annotations

import uuid
import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch

from .._constants import REGISTRY_KEYS
from .._errors import InvalidInputError
from .._utils import without_library_noise
from . import _linear_stage

if TYPE_CHECKING:
    pass


class TrainingMixin:
    """Training with scvi-tools' trainer (GPU when present, CPU otherwise)."""

    def train(
        self,
        max_epochs: int | None = None,
        *,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        train_size: float | None = None,
        validation_size: float | None = None,
        calibration_size: float | None = None,
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

        With the convex first stage (``KDCPT(linear_stage=True)``), the split is
        drawn first; a class-balanced multinomial logistic regression on all features is
        fitted to convergence on the training cells alone (L2 strength by 3-fold
        cross-validation on them; at most 20,000 cells, 4,000 for the cross-validation, read
        in row blocks), frozen into the module; the network then learns the residual on top
        of its logits; and the network's share ``mix`` is chosen on the validation cells
        (see :mod:`~scanpy_kdcpt.model._linear_stage`). When ``mix`` is 0 the prediction is
        the first stage's alone, and it is refitted (at the chosen L2 strength) on the
        training and validation cells together. ``model.linear_stage_`` says what was fitted
        and chosen.

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
            When ``train_size`` and ``validation_size`` are both given, calibration takes the
            rest; a ``calibration_size`` given as well must be that rest (the three sum to 1).
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
            Keyword arguments for :class:`~scanpy_kdcpt.KDCPTTrainingPlan`.
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
        self._validate_anndata(self.adata)  # this model's setup replayed if another model's came since
        self._forget_calibration()
        self._fit_log_prior()
        # the split is drawn here (scvi-tools' splitter, same seed, same sets) so that the first
        # stage sees the training cells only; the trainer then uses exactly these sets
        splitter_kwargs = dict(trainer_kwargs.pop("datasplitter_kwargs", None) or {})
        if splitter_kwargs.get("external_indexing") is None:
            splitter = self._data_splitter_cls(
                self.adata_manager, train_size=train_size, validation_size=validation_size, batch_size=batch_size
            )
            splitter.setup()
            splitter_kwargs["external_indexing"] = [
                np.asarray(splitter.train_idx),
                np.asarray(splitter.val_idx),
                np.asarray(splitter.test_idx),
            ]
        train_idx, val_idx, _ = splitter_kwargs["external_indexing"]
        if validation_size > 0 and len(val_idx) == 0:  # scvi-tools' early stopping failed on it
            raise InvalidInputError(
                f"With {self.adata.n_obs} cells the validation share ({validation_size:g}) holds no cell. Train on "
                "more cells, or pass validation_size=0 (no early stopping, no choice of the first stage's mix)."
            )
        self.linear_stage_ = None
        if getattr(self.module, "linear_stage", False):
            from scvi import settings

            self.linear_stage_ = _linear_stage.fit_on_training_cells(self, train_idx, seed=settings.seed or 0)
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
        # Lightning warns when an epoch has fewer batches than its logging interval (10)
        n_batches = -(-len(train_idx) // max(int(batch_size), 1))
        trainer_kwargs.setdefault("log_every_n_steps", int(np.clip(n_batches, 1, 10)))
        with without_library_noise():  # Lightning's advert and its dependencies' deprecation notes
            super().train(
                max_epochs=max_epochs,
                accelerator=accelerator,
                devices=devices,
                train_size=train_size,
                validation_size=validation_size,
                batch_size=batch_size,
                early_stopping=early_stopping and has_validation,
                plan_kwargs=plan_kwargs,
                datasplitter_kwargs=splitter_kwargs,
                **trainer_kwargs,
            )
        self._settle_untrained_batches(np.asarray(train_idx, dtype=int))
        self._reference_cache = None  # the key genes' baseline is of the inputs as this training clips them
        if self.linear_stage_ is not None:
            self._choose_mix(np.asarray(val_idx, dtype=int))
            if self.linear_stage_.mix == 0.0 and len(val_idx):
                self._refit_linear_stage(np.concatenate([train_idx, val_idx]))
                if self.adata_manager.registry["setup_args"].get("batch_key") is not None:
                    warnings.warn(
                        "The validation cells chose the first stage alone (mix = 0), a regression on the expression "
                        "that does not read batch_key: the predictions do not use the batches (the latent "
                        "representation still does). model.linear_stage_.mix_scores says how close the network's "
                        "share came; KDCPT(linear_stage=False) trains the batch-aware network alone.",
                        UserWarning,
                        stacklevel=2,
                    )
        held_out = np.asarray(self.test_indices if self.test_indices is not None else [], dtype=int)
        codes = self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY).ravel()
        self.calibration_indices_ = np.sort(held_out[codes[held_out] < len(self.classes_)]).astype(int)
        self.best_epoch_ = getattr(self.trainer.lightning_module, "best_epoch", None) if self.trainer else None
        # each training is another model: results written by an earlier one are not merged with its own
        self.extra_["model_id"] = uuid.uuid4().hex[:16]
        self.module.eval()

    def _settle_untrained_batches(self, train_idx: np.ndarray) -> None:
        """Batches without a training cell (e.g. unused categories of a categorical ``batch_key``,
        or a batch held out whole) got no gradient: their embedding rows are still random. They
        are set to the mean of the trained rows (batch-free, as a query's unseen batch), and the
        trained batches are recorded (``extra_["trained_batches"]``) so that queries of the others
        are flagged as unseen.
        """
        if not isinstance(getattr(self, "extra_", None), dict):
            self.extra_ = {}
        self.extra_.pop("trained_batches", None)
        embedding = getattr(self.module, "batch_embedding", None)
        if embedding is None:
            return
        mapping = list(self.adata_manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY).categorical_mapping)
        codes = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)).ravel()[train_idx]
        seen = np.unique(codes.astype(int))
        untrained = np.setdiff1d(np.arange(len(mapping)), seen)
        if untrained.size:
            with torch.no_grad():
                embedding.weight[torch.as_tensor(untrained)] = embedding.weight[torch.as_tensor(seen)].mean(0)
            names = [str(mapping[i]) for i in untrained]
            warnings.warn(
                f"{len(names)} batches of batch_key have no training cell ({names[:5]}; e.g. unused categories of "
                "a categorical column): their cells are predicted batch-free (the mean of the trained batches' "
                "embeddings). Drop unused categories (adata.obs[batch_key].cat.remove_unused_categories()) to "
                "silence this.",
                UserWarning,
                stacklevel=3,
            )
        self.extra_["trained_batches"] = [mapping[i] for i in seen]

    def _choose_mix(self, validation: np.ndarray) -> None:
        """The network's share on top of the first stage, on the labelled validation cells
        (1, the trained stacking, when there are none); kept in the module and ``extra_``.

        A provisional ``temperature_`` is fitted on the same cells (the strongly regularised
        first stage alone is under-confident); :meth:`calibrate` replaces it with the one of
        the calibration cells.
        """
        from .. import calibration as cal

        codes = self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY).ravel().astype(int)
        validation = validation[codes[validation] < len(self.classes_)]
        mix, scores = 1.0, {}
        if len(validation):
            out = self._collect(["logits_linear", "logits_network"], indices=validation)
            y = codes[validation]
            mix, scores = _linear_stage.choose_mix(out["logits_linear"], out["logits_network"], y)
            self.temperature_ = cal.fit_temperature(out["logits_linear"] + mix * out["logits_network"], y)
        self.module.mix.fill_(float(mix))
        self.linear_stage_.mix, self.linear_stage_.mix_scores = float(mix), scores
        if not isinstance(getattr(self, "extra_", None), dict):
            self.extra_ = {}
        self.extra_["linear_stage"] = {**self.linear_stage_.to_dict(), "validation_temperature": self.temperature_}

    def _refit_linear_stage(self, cells: np.ndarray) -> None:
        """With ``mix = 0`` the prediction is the first stage's alone and nothing else was fitted
        against it: refit it, at the ``C`` chosen, on the training and validation cells
        together (the calibration cells stay out). The provisional temperature is kept.
        """
        from scvi import settings

        chosen = self.linear_stage_
        refit = _linear_stage.fit_on_training_cells(self, cells, seed=settings.seed or 0, C=chosen.C)
        self.module.mix.fill_(0.0)  # set_linear_stage resets it
        chosen.n_cells, chosen.converged = refit.n_cells, refit.converged
        chosen.seconds = round(chosen.seconds + refit.seconds, 2)
        chosen.refit_with_validation = True
        self.extra_["linear_stage"] = {**chosen.to_dict(), "validation_temperature": self.temperature_}

    def _forget_calibration(self) -> None:
        """A calibration belongs to the weights it was fitted for: training anew drops it (the
        temperature back to 1, the conformal scores gone), and the cell chain and GRN built from
        the earlier memberships too, each said in a warning.
        """
        extra = self.extra_ if isinstance(getattr(self, "extra_", None), dict) else {}
        if extra.pop("calibration", None) is not None:
            warnings.warn(
                "train() discards the earlier calibrate(): its temperature and conformal scores belonged to the "
                "weights it replaces. Call model.calibrate() again after training.",
                UserWarning,
                stacklevel=3,
            )
        self.temperature_ = 1.0
        # the cell chain and the GRN were built from the memberships of the weights being replaced
        dropped = [
            what
            for what, attr in (("the cell chain (compute_transitions)", "transitions_"), ("the GRN (fit_grn)", "grn_"))
            if getattr(self, attr, None) is not None
        ]
        if dropped:
            warnings.warn(
                f"train() discards {' and '.join(dropped)} of the earlier training: they used the memberships of "
                "the weights it replaces. Run them again after training.",
                UserWarning,
                stacklevel=3,
            )
            self.transitions_, self.grn_, self._grn_state = None, None, None

    @staticmethod
    def _split_sizes(train_size, validation_size, calibration_size) -> tuple[float, float, float]:
        """Resolve train / validation / calibration fractions (see :meth:`train`)."""
        given = calibration_size is not None
        calibration_size = 0.1 if calibration_size is None else calibration_size
        if not 0 <= calibration_size < 1:
            raise InvalidInputError(f"calibration_size must be in [0, 1), got {calibration_size}.")
        if given and train_size is not None and validation_size is not None:
            total = train_size + validation_size + calibration_size
            if abs(total - 1.0) > 1e-6:
                raise InvalidInputError(
                    f"train_size={train_size:g}, validation_size={validation_size:g} and calibration_size="
                    f"{calibration_size:g} sum to {total:g}, not 1: give two of them (the third takes the rest) "
                    "or three that sum to 1."
                )
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
            raise InvalidInputError(
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
