"""Training plan: scvi-tools' TrainingPlan logging loss, accuracy and macro-F1 per epoch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from scvi.train import TrainingPlan
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

if TYPE_CHECKING:
    from scvi.module.base import LossOutput


class KDCPTTrainingPlan(TrainingPlan):
    """:class:`scvi.train.TrainingPlan` for a classifier.

    Logs ``train_loss`` / ``validation_loss``, ``*_classification_loss``, ``*_accuracy`` and
    ``*_f1`` (macro-F1 over the epoch's labelled cells) into ``model.history``.
    """

    def __init__(self, module, *, n_classes: int, lr: float = 1e-3, weight_decay: float = 1e-4, **kwargs):
        kwargs.setdefault("optimizer", "AdamW")
        kwargs.setdefault("eps", 1e-8)
        kwargs.setdefault("lr_scheduler_metric", "validation_loss")
        super().__init__(module, lr=lr, weight_decay=weight_decay, **kwargs)
        self.n_classes = n_classes
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
