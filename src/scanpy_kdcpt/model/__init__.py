"""The KDCPT model: set-up, training, inference and the ``get_*`` / writing methods (one mixin per job)."""

from ._model import KDCPT
from ._transitions import TransitionState

__all__ = ["KDCPT", "TransitionState"]
