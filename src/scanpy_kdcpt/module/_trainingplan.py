"""Training plan: scvi-tools' TrainingPlan logging loss, accuracy and macro-F1 per epoch."""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING

import lightning.pytorch as pl
from scvi.train import TrainingPlan
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from .._errors import InvalidInputError

if TYPE_CHECKING:
    from scvi.module.base import LossOutput

logger = logging.getLogger(__name__)


class RestoreBestWeights(pl.Callback):
    """Keep the module's weights of the epoch with the lowest ``monitor`` and restore them at the end.

    Early stopping alone keeps the *last* epoch's weights (a run stopped at epoch 29 with its
    best validation loss at epoch 21 kept epoch 29). After each validation epoch the callback
    copies the module's ``state_dict`` (to CPU) when the monitored value improved; at the end
    of training it loads the best copy back. ``best_epoch`` and ``best_score`` are kept on the
    callback and on the training plan.
    """

    def __init__(self, monitor: str = "validation_loss"):
        super().__init__()
        self.monitor = monitor
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.best_state: dict | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        score = float(trainer.callback_metrics[self.monitor])
        if score != score:  # NaN
            return
        if self.best_score is None or score < self.best_score:
            self.best_score = score
            self.best_epoch = int(trainer.current_epoch)
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.module.state_dict().items()}

    def on_train_end(self, trainer, pl_module) -> None:
        if self.best_state is None:
            return
        pl_module.module.load_state_dict(copy.deepcopy(self.best_state))
        pl_module.best_epoch = self.best_epoch
        pl_module.best_score = self.best_score
        logger.info("Restored the weights of epoch %d (%s %.4f).", self.best_epoch, self.monitor, self.best_score)
        self.best_state = None  # free the copy


class KDCPTTrainingPlan(TrainingPlan):
    """:class:`scvi.train.TrainingPlan` for a classifier.

    Logs ``train_loss`` / ``validation_loss``, ``*_classification_loss``, ``*_accuracy`` and
    ``*_f1`` (macro-F1 over the epoch's labelled cells) into ``model.history``.
    With ``restore_best=True`` (default) the weights of the epoch with the lowest
    ``validation_loss`` are restored at the end of training (:class:`RestoreBestWeights`);
    ``best_epoch`` / ``best_score`` then say which epoch was kept.
    ``wide_lr`` gives the wide path (the linear logits over all genes) its own learning rate,
    without AdamW's weight decay (it has its own ridge penalty, ``wide_l2``); ``None`` trains
    it with ``lr`` and ``weight_decay`` like every other parameter.
    """

    def __init__(
        self,
        module,
        *,
        n_classes: int,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        restore_best: bool = True,
        wide_lr: float | None = None,
        **kwargs,
    ):
        kwargs.setdefault("optimizer", "AdamW")
        kwargs.setdefault("eps", 1e-8)
        kwargs.setdefault("lr_scheduler_metric", "validation_loss")
        super().__init__(module, lr=lr, weight_decay=weight_decay, **kwargs)
        self.n_classes = n_classes
        self.restore_best = restore_best
        if wide_lr is not None and not (isinstance(wide_lr, (int, float)) and wide_lr > 0):
            raise InvalidInputError(f"wide_lr must be a positive learning rate or None, got {wide_lr!r}.")
        self.wide_lr = wide_lr
        self.best_epoch: int | None = None
        self.best_score: float | None = None
        self.metrics = {
            mode: {
                "accuracy": MulticlassAccuracy(n_classes, average="micro"),
                "f1": MulticlassF1Score(n_classes, average="macro"),
            }
            for mode in ("train", "validation")
        }
        # register as submodules so that they follow the device
        for mode, mets in self.metrics.items():
            for name, met in mets.items():
                self.add_module(f"_{mode}_{name}", met)

    def configure_callbacks(self):
        """:class:`RestoreBestWeights` on ``validation_loss`` when ``restore_best``."""
        return [RestoreBestWeights("validation_loss")] if self.restore_best else []

    def get_optimizer_creator(self):
        """scvi-tools' optimizer creator; with ``wide_lr``, the wide path in its own parameter group.

        scvi-tools' ``configure_optimizers`` (and its learning-rate scheduler) stay as they are.
        """
        create = super().get_optimizer_creator()
        if self.wide_lr is None:
            return create
        wide_ids = {id(p) for name, p in self.module.named_parameters() if name.startswith("prediction.wide.")}

        def create_grouped(params):
            params = list(params)
            wide = [p for p in params if id(p) in wide_ids]
            groups = [{"params": [p for p in params if id(p) not in wide_ids]}]
            if wide:
                groups.append({"params": wide, "lr": self.wide_lr, "weight_decay": 0.0})
            return create(groups)

        return create_grouped

    def compute_and_log_metrics(self, loss_output: LossOutput, metrics, mode: str):
        """Log classification loss, accuracy and macro-F1 (epoch-level)."""
        n = loss_output.n_obs_minibatch
        self.log(
            f"{mode}_classification_loss", loss_output.classification_loss, on_step=False, on_epoch=True, batch_size=n
        )
        if loss_output.true_labels is None or loss_output.true_labels.numel() == 0:
            return
        preds = loss_output.logits.argmax(-1)
        target = loss_output.true_labels.view(-1)
        for name, met in self.metrics[mode].items():
            met.update(preds, target)
            self.log(f"{mode}_{name}", met, on_step=False, on_epoch=True, batch_size=n)
