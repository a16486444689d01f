"""Temperature scaling and split-conformal prediction sets (methods mixed into KDCPT).

The maths lives in :mod:`scanpy_kdcpt.calibration`; these methods run the model on held-out
cells, keep the fitted state (saved with the model) and return results. They never write into
AnnData.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scanpy import logging as logg

from .. import calibration as cal
from .._errors import InvalidInputError
from .._utils import check_obs_column, codes_of
from ..results import Calibration, Predictions
from ._docs import model_dsp

if TYPE_CHECKING:
    from anndata import AnnData

    from ._base import KDCPTLike

_STATE_SCALARS = ("ece_before", "ece_after", "brier_before", "brier_after", "nll_before", "nll_after")


class CalibrationMixin:
    """Temperature scaling, calibration diagnostics and conformal prediction sets."""

    @model_dsp.dedent
    def calibrate(
        self: KDCPTLike,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        *,
        labels_key: str | None = None,
        n_bins: int = 15,
        batch_size: int | None = None,
    ) -> dict[str, float]:
        """Temperature scaling on held-out cells, and the scores behind conformal sets.

        Fits ``T`` minimising the negative log-likelihood of the held-out cells' known
        phenotypes, sets ``temperature_`` (saved with the model), and keeps those cells'
        logits and phenotypes so that :meth:`predict` ``(conformal_alpha=...)`` can build
        split-conformal prediction sets (they are saved with the model too).

        Parameters
        ----------
        adata
            The registered AnnData (default) or labelled held-out data.
        indices
            Held-out cells; default: the calibration cells that :meth:`train` kept apart from
            training and early stopping (``calibration_indices_``), else the validation cells.
            Unlabelled cells among them are skipped.
        labels_key
            ``.obs`` column of known phenotypes, for an ``adata`` that is not the registered
            one (its labels are read from the registry otherwise).
        n_bins
            Confidence bins of the ECE.
        %(param_batch_size)s

        Returns
        -------
        ``temperature``, ``temperature_before``, ``ece_before``, ``ece_after``,
        ``brier_before``, ``brier_after``, ``nll_before``, ``nll_after``, ``n_cells``,
        ``n_bins``. ``annotate()`` then writes them to ``.uns[key]["calibration"]``.
        ``temperature_before`` is rarely 1: :meth:`train` already fits a provisional
        temperature on the validation cells (with the network's share), which this call
        replaces by the held-out cells' own. On a few dozen cells ``ece_before`` and
        ``ece_after`` differ by sampling noise (compare both with ``ece_floor`` of
        :func:`scanpy_kdcpt.calibration.ece_floor`); the NLL is the quantity minimised.

        """
        self._check_if_trained(warn=True)
        n_bins = cal.check_n_bins(n_bins)
        target = self.adata if adata is None else adata
        indices = _held_out_indices(self, target, indices)
        codes = _held_out_codes(self, target, indices, labels_key)
        keep = codes >= 0
        if keep.sum() < 2:
            raise InvalidInputError(
                f"Only {int(keep.sum())} of the {len(indices)} held-out cells are labelled; calibration needs more."
            )
        if keep.sum() < 50:
            logg.warning(
                f"Calibrating on {int(keep.sum())} labelled cells only: temperature and conformal sets will be noisy."
            )
        logits = self.get_logits(adata, indices=indices[keep], batch_size=batch_size)
        codes = codes[keep]
        T0 = float(self.temperature_)
        T = cal.fit_temperature(logits, codes)
        before, after = cal.softmax(logits, T0), cal.softmax(logits, T)
        result = {
            "temperature": T,
            "temperature_before": T0,
            "ece_before": cal.expected_calibration_error(before, codes, n_bins),
            "ece_after": cal.expected_calibration_error(after, codes, n_bins),
            "ece_floor": cal.ece_floor(after, n_bins),
            "brier_before": cal.brier_score(before, codes),
            "brier_after": cal.brier_score(after, codes),
            "nll_before": cal.nll(logits, codes, T0),
            "nll_after": cal.nll(logits, codes, T),
            "n_cells": int(len(codes)),
            "n_bins": int(n_bins),
        }
        self.temperature_ = T
        if not isinstance(getattr(self, "extra_", None), dict):
            self.extra_ = {}
        self.extra_["calibration"] = {
            **result,
            "logits": np.asarray(logits, dtype=np.float32),
            "codes": np.asarray(codes, dtype=np.int64),
        }
        logg.info(
            f"temperature {T:.3f}: ECE {result['ece_before']:.4f} → {result['ece_after']:.4f} "
            f"on {len(codes)} held-out cells (a calibrated model would show {result['ece_floor']:.4f} "
            "on this many)"
        )
        return result

    def get_calibration(
        self: KDCPTLike, predictions: Predictions | None = None, *, conformal_alpha: float | None = None
    ) -> Calibration:
        """Calibration diagnostics.

        After :meth:`calibrate`: its numbers (ECE / Brier before and after) and the reliability
        tables of the calibration cells before and at ``temperature_``. Without: the ECE, Brier
        and reliability table of the held-out (validation) cells, read from ``predictions`` of
        the registered AnnData.
        """
        state = _state(self)
        summary: dict = {"temperature": float(self.temperature_), "calibrated": state is not None}
        reliability = before = None
        if state is not None:
            n_bins = int(state.get("n_bins", 15))
            logits = np.asarray(state["logits"], dtype=float)
            codes = np.asarray(state["codes"], dtype=int)
            after = cal.softmax(logits, float(self.temperature_))
            summary.update({k: float(state[k]) for k in _STATE_SCALARS})
            summary["temperature_before"] = float(state.get("temperature_before", 1.0))
            summary.update(_scores(after, codes, n_bins), cells="calibration (held-out) cells")
            before = cal.reliability_table(cal.softmax(logits, summary["temperature_before"]), codes, n_bins)
            reliability = cal.reliability_table(after, codes, n_bins)
        elif predictions is not None:
            held_out = _validation_positions(self, predictions)
            if held_out.size:
                p = predictions.proba.to_numpy()[held_out]
                codes = codes_of(predictions.labels.iloc[held_out], self.classes_)
                calibration_cells = getattr(self, "calibration_indices_", None)
                which = (
                    "calibration (held-out) cells"
                    if calibration_cells is not None and len(calibration_cells)
                    else "validation cells (T fitted on them)"
                )
                summary.update(_scores(p, codes, 15), cells=which)
                reliability = cal.reliability_table(p, codes)
        if conformal_alpha is not None:
            summary["conformal_alpha"] = float(conformal_alpha)
            summary["conformal_threshold"] = float(self._conformal_threshold(conformal_alpha))
        return Calibration(summary=summary, reliability=reliability, reliability_before=before)

    def get_prediction_sets(self: KDCPTLike, proba: pd.DataFrame, alpha: float) -> pd.DataFrame:
        """Boolean cells × phenotypes membership of the split-conformal sets at level ``alpha``."""
        sets = cal.prediction_sets(proba.to_numpy(), self._conformal_threshold(alpha))
        return pd.DataFrame(sets, index=proba.index, columns=proba.columns)

    def _conformal_threshold(self: KDCPTLike, alpha: float) -> float:
        state = _state(self)
        if state is None or "logits" not in state:
            raise InvalidInputError(
                "Prediction sets need conformal calibration scores: call model.calibrate() (held-out "
                "labelled cells) before predict(conformal_alpha=...) or annotate(conformal_alpha=...)."
            )
        proba = cal.softmax(np.asarray(state["logits"], dtype=float), float(self.temperature_))
        return cal.conformal_threshold(cal.conformal_scores(proba, np.asarray(state["codes"], dtype=int)), alpha)


def _state(model) -> dict | None:
    state = getattr(model, "extra_", None)
    return state.get("calibration") if isinstance(state, dict) else None


def _scores(proba: np.ndarray, codes: np.ndarray, n_bins: int) -> dict:
    return {
        "ece": cal.expected_calibration_error(proba, codes, n_bins),
        "ece_floor": cal.ece_floor(proba, n_bins),  # what a calibrated model would show on these cells
        "brier": cal.brier_score(proba, codes),
        "n_cells": int(len(codes)),
    }


def _validation_positions(model, predictions: Predictions) -> np.ndarray:
    """Positions of the labelled held-out cells, when ``predictions`` are of the registered data."""
    if len(predictions.proba) != model.adata.n_obs or not predictions.proba.index.equals(model.adata.obs_names):
        return np.zeros(0, dtype=int)
    held = getattr(model, "calibration_indices_", None)
    if held is None or not len(held):
        held = getattr(model, "validation_indices", None)
    if held is None or not len(held):
        return np.zeros(0, dtype=int)
    held = np.asarray(held)
    return held[predictions.labels.iloc[held].notna().to_numpy()]


def _held_out_indices(model, target, indices) -> np.ndarray:
    if indices is None:
        if target is not model.adata:
            return np.arange(target.n_obs)
        indices = getattr(model, "calibration_indices_", None)
        if indices is None or not len(indices):
            indices = getattr(model, "validation_indices", None)
            stage = getattr(model, "linear_stage_", None)
            if indices is not None and len(indices) and stage is not None and stage.refit_with_validation:
                warnings.warn(
                    "calibrate() falls back to the validation cells (no calibration cells), and the first stage "
                    "was refitted on them (mix = 0): the temperature and conformal scores come from cells the "
                    "model has seen and will be optimistic. Train with calibration_size > 0 (default 0.1), or "
                    "pass indices= of labelled cells left out of training.",
                    UserWarning,
                    stacklevel=3,
                )
        if indices is None or not len(indices):
            raise InvalidInputError(
                "The model has no held-out cells to calibrate on (trained with train_size=1.0, "
                "or loaded from disk). Pass indices= of labelled cells left out of training."
            )
    indices = np.asarray(indices)
    return np.flatnonzero(indices) if indices.dtype == bool else indices


def _held_out_codes(model, target, indices: np.ndarray, labels_key: str | None) -> np.ndarray:
    if labels_key is None:
        if target is not model.adata:
            raise InvalidInputError(
                "Pass labels_key= (the .obs column of known phenotypes) to calibrate on another AnnData."
            )
        codes, _ = model.labels_(None)
        return codes[indices]
    check_obs_column(target, labels_key, "labels_key")
    return codes_of(target.obs[labels_key].iloc[indices], model.classes_)
