"""Data for KD-CPT: scanpy's bundled real data, a synthetic generator with planted answers,
the pancreas endocrinogenesis loader, and transcription-factor lists.
"""

from ._bundled import krumsiek11, pancreas, pbmc68k_reduced
from ._grn import tf_target_prior
from ._synthetic import synthetic, synthetic_multiome
from ._tf import is_transcription_factor, transcription_factors

__all__ = [
    "is_transcription_factor",
    "krumsiek11",
    "pancreas",
    "pbmc68k_reduced",
    "synthetic",
    "synthetic_multiome",
    "tf_target_prior",
    "transcription_factors",
]
