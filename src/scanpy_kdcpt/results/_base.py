"""The base of every result object, and constants shared by the key-gene results and writers."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pandas as pd

#: genes ranked per phenotype in ``.uns[key]["key_genes"]``
N_RANKED = 100
#: default number of genes flagged ``{key}_key_gene``
N_KEY_GENES = 50


def rank_overall(overall: pd.DataFrame) -> pd.Series:
    """Overall gene rank (1 = top): by mean attribution when present, else by specificity (the
    largest over the phenotypes) when present, else by mean Cell Learner score.
    """
    stat = next(overall[c] for c in ("attribution", "specificity", "score") if c in overall)
    return stat.rank(ascending=False, method="first").astype(np.int64)


class _Result:
    def to_dict(self) -> dict:
        return asdict(self)
