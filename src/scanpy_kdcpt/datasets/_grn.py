"""TF → target priors (regulatory networks) for knockout propagation.

Not shipped: DoRothEA (Garcia-Alonso L, Holland CH, Ibrahim MM, Turei D, Saez-Rodriguez J.
"Benchmark and integration of resources for the estimation of human transcription factor
activities." Genome Res 29:1363-1375, 2019) is GPL-3 licensed and this package is BSD-3; read
it (or any TF → target table) from a file with :func:`tf_target_prior`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from .._errors import InvalidInputError


def tf_target_prior(
    path: str | Path,
    *,
    confidence: str | Iterable[str] | None = "ABC",
    genes: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Read a TF → target table (DoRothEA's layout: ``tf``, ``confidence``, ``target``, ``mor``).

    Parameters
    ----------
    path
        A tab-separated file (optionally gzipped) with at least the columns ``tf`` and
        ``target``; ``mor`` (mode of regulation, +1 / -1) and ``confidence`` are used when
        present. DoRothEA's regulons: ``dorothea_mm.tsv.gz`` / ``dorothea_hs.tsv.gz``
        exported from the saezlab/dorothea R package.
    confidence
        Confidence levels kept (DoRothEA: A most reliable … E), as a string of letters
        (``"ABC"``) or a list (``["A", "B"]``); case-insensitive. ``None`` keeps all.
    genes
        Keep only edges whose TF and target are both among these genes (e.g. ``adata.var_names``).

    Returns
    -------
    DataFrame with ``tf``, ``target``, ``mor`` (+1 where absent) and, when present, ``confidence``.

    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No TF → target table at {path}.")
    edges = pd.read_csv(path, sep="\t")
    missing = {"tf", "target"} - set(edges.columns)
    if missing:
        raise InvalidInputError(
            f"{path} lacks the column(s) {sorted(missing)}; it needs 'tf' and 'target' (and 'mor')."
        )
    if "mor" not in edges:
        edges["mor"] = 1.0
    if confidence is not None and "confidence" in edges:
        levels = sorted({str(c).strip().upper() for c in confidence} - {"", ","})
        known = sorted(set(edges["confidence"].astype(str)))
        if not set(levels) & set(known):
            raise InvalidInputError(
                f"confidence {confidence!r}: none of its levels {levels} is in the table, whose levels are "
                f"{known} (pass e.g. 'ABC' or ['A', 'B'], or None for all)."
            )
        edges = edges[edges["confidence"].astype(str).isin(levels)]
    if genes is not None:
        genes = set(map(str, genes))
        edges = edges[edges["tf"].astype(str).isin(genes) & edges["target"].astype(str).isin(genes)]
    edges = edges[edges["tf"] != edges["target"]]
    return edges.reset_index(drop=True)
