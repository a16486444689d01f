"""Predictions and their calibration."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import calibration
from ._base import _Result


@dataclass
class Predictions(_Result):
    """Phenotype probabilities of every cell (softmax of the logits at the model's temperature).

    Attributes
    ----------
    proba
        Cells × phenotypes probabilities, indexed by ``obs_names``.
    labels
        Known phenotype of each cell (``None`` where unlabelled), indexed by ``obs_names``.
    temperature
        The temperature the probabilities were computed at.

    """

    proba: pd.DataFrame
    labels: pd.Series
    temperature: float = 1.0

    @property
    def phenotypes(self) -> list[str]:
        return list(map(str, self.proba.columns))

    @property
    def codes(self) -> np.ndarray:
        """Predicted phenotype code (argmax) of each cell."""
        return self.proba.to_numpy().argmax(1)

    @property
    def pred(self) -> pd.Series:
        """Predicted phenotype (categorical) of each cell."""
        return pd.Series(
            pd.Categorical.from_codes(self.codes, categories=self.phenotypes), index=self.proba.index, name="prediction"
        )

    @property
    def assigned(self) -> np.ndarray:
        """Each cell's phenotype code: its known label where there is one, its prediction otherwise."""
        lookup = {c: i for i, c in enumerate(self.phenotypes)}
        known = self.labels.notna().to_numpy()
        out = self.codes.copy()
        out[known] = self.labels[known].astype(str).map(lookup).to_numpy(int)
        return out

    @property
    def confidence(self) -> np.ndarray:
        return calibration.confidence(self.proba.to_numpy())

    @property
    def uncertainty(self) -> np.ndarray:
        return calibration.cosine_uncertainty(self.proba.to_numpy())

    def to_frame(self) -> pd.DataFrame:
        """Cells × (``pred``, ``confidence``, ``uncertainty``, one column of probabilities per phenotype)."""
        out = pd.DataFrame(
            {"pred": self.pred, "confidence": self.confidence, "uncertainty": self.uncertainty}, index=self.proba.index
        )
        return pd.concat([out, self.proba], axis=1)


@dataclass
class Calibration(_Result):
    """Temperature scaling and conformal calibration state, or the validation-cell diagnostics.

    ``summary`` holds the scalars (``temperature``, ``ece`` ...), ``reliability`` the
    reliability table at the model's temperature and ``reliability_before`` before calibration.
    """

    summary: dict
    reliability: pd.DataFrame | None = None
    reliability_before: pd.DataFrame | None = None

    def to_frame(self) -> pd.DataFrame:
        return self.reliability if self.reliability is not None else pd.DataFrame()

    def to_dict(self) -> dict:
        out = dict(self.summary)
        if self.reliability is not None:
            out["reliability"] = self.reliability
        if self.reliability_before is not None:
            out["reliability_before"] = self.reliability_before
        return out
