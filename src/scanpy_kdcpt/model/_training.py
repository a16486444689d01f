"""Training (mixed into KDCPT): the three-way split, the balanced-softmax prior, Lightning."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch

from .._constants import REGISTRY_KEYS

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
