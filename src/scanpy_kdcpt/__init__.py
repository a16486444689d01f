"""scanpy-kdcpt: KD-CPT, a dual-branch model of cell phenotype transitions, for AnnData."""

from __future__ import annotations

from . import calibration, datasets, directed, linear, markov, metrics, multiome, pl, results, stats, writers
from ._version import __version__
from .model import KDCPT
from .module import KDCPTModule, KDCPTTrainingPlan

__all__ = [
    "KDCPT",
    "KDCPTModule",
    "KDCPTTrainingPlan",
    "__version__",
    "calibration",
    "datasets",
    "directed",
    "linear",
    "markov",
    "metrics",
    "multiome",
    "pl",
    "results",
    "stats",
    "writers",
]
