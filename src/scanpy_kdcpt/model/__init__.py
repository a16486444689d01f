"""The KDCPT model, its module and training plan."""

from ._model import KDCPT
from ._module import KDCPTModule
from ._trainingplan import KDCPTTrainingPlan

__all__ = ["KDCPT", "KDCPTModule", "KDCPTTrainingPlan"]
