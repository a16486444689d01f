"""scanpy-kdcpt: KD-CPT, a dual-branch model of cell phenotype transitions, for AnnData."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("scanpy-kdcpt")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

from . import calibration, datasets, directed, markov, metrics, multiome, pl, results, stats, writers
from .model import KDCPT, KDCPTModule, KDCPTTrainingPlan

__all__ = [
    "KDCPT",
    "KDCPTModule",
    "KDCPTTrainingPlan",
    "__version__",
    "calibration",
    "datasets",
    "directed",
    "markov",
    "metrics",
    "multiome",
    "pl",
    "results",
    "stats",
    "writers",
]
