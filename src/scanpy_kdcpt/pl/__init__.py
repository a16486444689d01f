"""Plots of KD-CPT results, drawn from AnnData keys only (scanpy conventions)."""

from ._calibration import reliability
from ._confusion import confusion_matrix
from ._entropy import entropy
from ._fate import fate_probabilities, transition_stream
from ._history import training_history
from ._keygenes import key_genes
from ._knockout import knockout, knockout_effects
from ._shift import knockout_fate, knockout_flux, knockout_shift
from ._transition import transition_graph, transition_matrix

__all__: list[str] = []
__all__ += ["transition_matrix", "transition_graph", "entropy", "reliability", "training_history"]
__all__ += ["key_genes", "knockout", "knockout_effects"]
__all__ += ["transition_stream", "fate_probabilities", "knockout_shift", "knockout_fate", "knockout_flux"]
__all__ += ["confusion_matrix"]
