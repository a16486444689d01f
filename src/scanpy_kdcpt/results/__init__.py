"""What the model's ``get_*`` methods return: small result objects, written into AnnData by
:mod:`scanpy_kdcpt.writers`.

Each result is a dataclass with ``to_frame()`` (the main table) and ``to_dict()`` (every field);
none holds a reference to the model or the AnnData.
"""

from ._base import N_KEY_GENES as N_KEY_GENES  # used by the writers
from ._base import N_RANKED as N_RANKED
from ._base import rank_overall as rank_overall
from ._keygenes import KeyGenes
from ._knockout import KnockoutResult
from ._predictions import Calibration, Predictions
from ._transitions import Fates, Transitions

__all__ = ["Calibration", "Fates", "KeyGenes", "KnockoutResult", "Predictions", "Transitions"]
