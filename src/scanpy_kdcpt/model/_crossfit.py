"""Out-of-sample (cross-fitted) predictions of the registered cells (a method mixed into KDCPT).

A model's probabilities for its own training cells are in-sample: more confident than for new
cells, which makes the posterior transition matrix too diagonal and the entropies too low.
:meth:`CrossFitMixin.get_cross_fitted_predictions` trains ``n_folds`` models of the same
configuration, each without one fold of the cells, and predicts every cell with the model that
did not see it.
"""

from __future__ import annotations

import inspect
import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scanpy import logging as logg

from .._errors import InvalidInputError
from ..results import Predictions

if TYPE_CHECKING:
    from ._base import KDCPTLike


class CrossFitMixin:
    """k-fold cross-fitted predictions."""

    def get_cross_fitted_predictions(
        self: KDCPTLike,
        n_folds: int = 5,
        *,
        random_state: int = 0,
        calibrate: bool = True,
        **train_kwargs,
    ) -> Predictions:
        """Out-of-fold phenotype probabilities of every registered cell (k-fold cross-fitting).

        The cells are split into ``n_folds`` folds (stratified by known phenotype; unlabelled
        cells spread at random); for each fold a new model with this model's settings is set up
        on the other folds, trained (``train_kwargs`` as :meth:`train`), calibrated on its own
        held-out cells (``calibrate``) and used to predict the fold. Every cell's probabilities
        thus come from a model that never saw it. This model is not changed. Costs ``n_folds``
        trainings.

        Pass the result to :meth:`annotate` (``transition_predictions=``) or
        :meth:`get_transition_matrix` (``predictions=``) so that the transition matrix,
        entropies and fates are computed from out-of-sample probabilities.

        Parameters
        ----------
        n_folds
            Number of folds (2 or more).
        random_state
            Seed of the fold assignment and of the fold models' training.
        calibrate
            Fit each fold model's temperature on its own calibration cells before predicting.
        **train_kwargs
            Passed to each fold model's :meth:`train` (e.g. ``max_epochs``).

        Returns
        -------
        :class:`~scanpy_kdcpt.results.Predictions` of the registered cells (``temperature``:
        NaN, each fold model has its own).

        """
        import scvi
        from sklearn.model_selection import StratifiedKFold

        self._check_if_trained(warn=False)
        if self.adata_manager.registry.get("setup_method_name") != "setup_anndata":
            raise NotImplementedError(
                "Cross-fitting supports models set up with setup_anndata only (not setup_mudata)."
            )
        setup = dict(self.adata_manager.registry["setup_args"])
        if int(n_folds) != n_folds or n_folds < 2:
            raise InvalidInputError(f"n_folds must be an integer of 2 or more, got {n_folds!r}.")
        n_folds = int(n_folds)
        adata = self.adata
        codes, labelled = self.labels_()
        counts = np.bincount(codes[labelled], minlength=len(self.classes_))
        if labelled.sum() < n_folds or (counts[counts > 0] < 2).any():
            rare = [c for c, n in zip(self.classes_, counts, strict=True) if 0 < n < 2]
            raise InvalidInputError(
                f"Cross-fitting needs at least 2 labelled cells per phenotype (and {n_folds} in all); "
                f"phenotypes with fewer: {rare}. Merge or drop them, or lower n_folds."
            )
        strata = np.where(labelled, codes, len(self.classes_))  # unlabelled cells: a stratum of their own
        if (~labelled).sum() == 1:
            strata[~labelled] = codes[labelled][0]
        folds = StratifiedKFold(n_folds, shuffle=True, random_state=random_state)
        allowed = set(inspect.signature(type(self).setup_anndata).parameters) - {"adata", "cls"}
        setup_kwargs = {k: v for k, v in setup.items() if k in allowed}
        init = dict(self.init_params_.get("non_kwargs", {}))
        proba = np.full((adata.n_obs, len(self.classes_)), np.nan)
        seed = scvi.settings.seed
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*members, which is less than n_splits.*")
                splits = list(folds.split(np.zeros(adata.n_obs), strata))
            for k, (train, held) in enumerate(splits):
                logg.info(f"cross-fitting: fold {k + 1} of {n_folds} ({len(held)} cells held out)")
                scvi.settings.seed = random_state + k
                sub = _cells(adata, train)
                type(self).setup_anndata(sub, **setup_kwargs)
                model = type(self)(sub, **init)
                train_kwargs.setdefault("enable_progress_bar", False)
                model.train(**train_kwargs)
                if calibrate:
                    model.calibrate()
                fold = model.predict(_cells(adata, held), soft=True)
                proba[held] = fold.reindex(columns=self.classes_, fill_value=0.0).to_numpy(np.float64)
        finally:
            scvi.settings.seed = seed
        result = self._predictions(None, proba, codes, labelled)
        return Predictions(proba=result.proba, labels=result.labels, temperature=float("nan"))


def check_predictions(
    predictions: Predictions, obs_names: pd.Index, classes: list[str], name: str = "transition_predictions"
) -> None:
    """``predictions`` (the argument ``name``) must be of the same cells in the same order and of
    the same phenotypes, without NaN.
    """
    if not isinstance(predictions, Predictions):
        raise TypeError(f"{name} must be Predictions, not {type(predictions).__name__}.")
    if not predictions.proba.index.equals(obs_names):
        raise InvalidInputError(
            f"{name} are of other cells than the AnnData (obs_names differ, or their order does); "
            "compute them on the same AnnData (model.get_predictions(adata) or model.get_cross_fitted_predictions())."
        )
    if list(map(str, predictions.proba.columns)) != list(classes):
        raise InvalidInputError(f"{name}' phenotypes {list(predictions.proba.columns)} are not the model's {classes}.")
    if not np.isfinite(predictions.proba.to_numpy(np.float64)).all():
        raise InvalidInputError(f"{name} contain NaN or infinite probabilities.")


def _cells(adata, rows: np.ndarray):
    """The cells ``rows`` as their own object in memory (a backed AnnData read for them only)."""
    view = adata[rows]
    return view.to_memory() if getattr(adata, "isbacked", False) else view.copy()
