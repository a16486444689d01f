"""Transcription-factor lists shipped with the package.

- human (``"lambert2018"``, default): Lambert SA, Jolma A, Campitelli LF, et al. "The Human
  Transcription Factors." Cell 172(4):650-665 (2018), doi:10.1016/j.cell.2018.01.029 — 1,639 genes.
- mouse (``"animaltfdb4"``, default): AnimalTFDB v4.0, Shen WK, Chen SY, Gan ZQ, et al.
  "AnimalTFDB 4.0: a comprehensive animal transcription factor database updated with variation
  and expression annotations." Nucleic Acids Res 51(D1):D39-D45 (2023),
  doi:10.1093/nar/gkac907 — 1,611 genes (curated DNA-binding-domain families).
- mouse (``"scenic"``): the SCENIC / pySCENIC mouse list (mm_mgi_tfs.txt; Aibar et al., Nat Methods
  14:1083, 2017; Van de Sande et al., Nat Protoc 15:2247, 2020) — 1,721 genes. The mouse default
  before AnimalTFDB (benchmarks that say "SCENIC" used it); it holds 516 genes that AnimalTFDB
  does not, among them some that are no transcription factors (Rps10, Sod1, Hspa5, Canx), so it
  is kept to reproduce such runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from importlib.resources import files
from typing import Literal

import numpy as np
import pandas as pd

from .._errors import InvalidInputError

#: per species, its lists; the first is the default
_FILES = {
    "human": {"lambert2018": "tfs_human_lambert2018.txt"},
    "mouse": {"animaltfdb4": "tfs_mouse_animaltfdb4.txt", "scenic": "tfs_mouse_scenic.txt"},
}


@cache
def _load(species: str, source: str | None = None) -> tuple[str, ...]:
    if species not in _FILES:
        raise InvalidInputError(
            f"No transcription-factor list for species {species!r}; choose one of {sorted(_FILES)}."
        )
    lists = _FILES[species]
    name = next(iter(lists)) if source is None else source
    if name not in lists:
        raise InvalidInputError(f"No {species} transcription-factor list {source!r}; choose one of {list(lists)}.")
    text = files("scanpy_kdcpt.datasets").joinpath("data", lists[name]).read_text()
    return tuple(g.strip() for g in text.splitlines() if g.strip())


def transcription_factors(species: Literal["human", "mouse"] = "human", source: str | None = None) -> list[str]:
    """Gene symbols of transcription factors.

    ``source``: which list (default: human, Lambert et al. 2018; mouse, AnimalTFDB v4);
    ``"scenic"`` gives the SCENIC mouse list (it also holds some genes that are not
    transcription factors, e.g. Rps10, Sod1).
    """
    return list(_load(species, source))


def is_transcription_factor(
    genes: Iterable[str], species: Literal["human", "mouse"] = "human", source: str | None = None
) -> np.ndarray:
    """Boolean mask: which of ``genes`` are transcription factors (case-insensitive symbols).

    Use it as a prior: ``adata.var["is_tf"] = is_transcription_factor(adata.var_names, "human")``.
    ``source`` as in :func:`transcription_factors`.
    """
    tfs = {g.upper() for g in _load(species, source)}
    genes = [genes] if isinstance(genes, str) else genes  # one symbol, not a collection of letters
    return np.asarray([str(g).upper() in tfs for g in pd.Index(genes)], dtype=bool)
