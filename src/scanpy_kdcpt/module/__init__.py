"""The torch networks of KD-CPT and their training plan (no AnnData here).

:class:`KDCPTModule` (gene tokens, Cell Learner, prediction branch, CFFM) and its multi-omics
subclass :class:`KDCPTMultiomeModule` take minibatch tensors and return logits and the Cell
Learner's scores; :class:`KDCPTTrainingPlan` trains them with Lightning (scvi-tools' split of
``module`` / ``train`` / ``model``).
"""

from ._module import KDCPTModule
from ._module_multiome import REGULATORY_KEY, KDCPTMultiomeModule
from ._trainingplan import KDCPTTrainingPlan

__all__ = ["REGULATORY_KEY", "KDCPTModule", "KDCPTMultiomeModule", "KDCPTTrainingPlan"]
