"""Transcription-factor lists shipped with the package.

- human: Lambert SA, Jolma A, Campitelli LF, et al. "The Human Transcription Factors."
  Cell 172(4):650-665 (2018), doi:10.1016/j.cell.2018.01.029 — 1,639 genes.
- mouse: the SCENIC / pySCENIC mouse TF list (mm_mgi_tfs.txt; Aibar et al., Nat Methods 14:1083,
  2017; Van de Sande et al., Nat Protoc 15:2247, 2020) — 1,721 genes.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from importlib.resources import files
from typing import Literal

import numpy as np
import pandas as pd

_FILES = {"human": "tfs_human_lambert2018.txt", "mouse": "tfs_mouse_scenic.txt"}


@cache
def _load(species: str) -> tuple[str, ...]:
    if species not in _FILES:
        raise ValueError(f"No transcription-factor list for species {species!r}; choose one of {sorted(_FILES)}.")
    text = files("scanpy_kdcpt.datasets").joinpath("data", _FILES[species]).read_text()
    return tuple(g.strip() for g in text.splitlines() if g.strip())


def transcription_factors(species: Literal["human", "mouse"] = "human") -> list[str]:
    """Gene symbols of transcription factors (human: Lambert et al. 2018; mouse: SCENIC list)."""
    return list(_load(species))


def is_transcription_factor(genes: Iterable[str], species: Literal["human", "mouse"] = "human") -> np.ndarray:
    """Boolean mask: which of ``genes`` are transcription factors (case-insensitive symbols).

    Use it as a prior: ``adata.var["is_tf"] = is_transcription_factor(adata.var_names, "human")``.
    """
    tfs = {g.upper() for g in _load(species)}
    return np.asarray([str(g).upper() in tfs for g in pd.Index(genes)], dtype=bool)
