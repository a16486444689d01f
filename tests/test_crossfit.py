"""Cross-fitted (out-of-sample) predictions for the transition matrix and entropies."""

from __future__ import annotations

import numpy as np
import pytest
import scvi

import scanpy_kdcpt as kdcpt
from scanpy_kdcpt import _keys


@pytest.fixture(scope="module")
def small_model():
    adata = kdcpt.datasets.synthetic(n_cells=360, seed=3)
    kdcpt.KDCPT.setup_anndata(adata, labels_key="phenotype", prior_key="is_tf")
    scvi.settings.seed = 0
    model = kdcpt.KDCPT(adata, n_tokens=64, n_selected=8, n_pcs=20)
    model.train(max_epochs=15, enable_progress_bar=False, early_stopping=False)
    return model


@pytest.fixture(scope="module")
def cross_fitted(small_model):
    return small_model.get_cross_fitted_predictions(n_folds=3, max_epochs=15, early_stopping=False)


def test_every_cell_is_predicted_by_a_model_that_did_not_see_it(small_model, cross_fitted):
    p = cross_fitted.proba.to_numpy()
    assert p.shape == (small_model.adata.n_obs, len(small_model.classes_))
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
    assert list(cross_fitted.proba.index) == list(small_model.adata.obs_names)
    # the cross-fitted predictions are still good, but less sure of the training cells than the
    # model that trained on them: in-sample probabilities are over-confident
    labels = small_model.adata.obs["phenotype"].astype(str).to_numpy()
    accuracy = (cross_fitted.proba.idxmax(axis=1).to_numpy() == labels).mean()
    assert accuracy > 0.7
    own = small_model.get_predictions()
    train = np.setdiff1d(
        np.arange(small_model.adata.n_obs),
        np.concatenate([small_model.validation_indices, small_model.calibration_indices_]),
    )
    truth = own.proba.columns.get_indexer(labels[train])
    p_own = own.proba.to_numpy()[train, truth]
    p_cf = cross_fitted.proba.to_numpy()[train, truth]
    assert p_cf.mean() < p_own.mean()


def test_annotate_builds_transitions_from_the_given_predictions(small_model, cross_fitted):
    adata = small_model.adata.copy()
    small_model.annotate(adata, transition_predictions=cross_fitted, direction="posterior")
    expected = small_model.get_transition_matrix(adata, predictions=cross_fitted).matrix
    np.testing.assert_allclose(adata.uns["kdcpt"][_keys.UNS_TRANSITION], expected, atol=1e-10)
    in_sample = small_model.get_transition_matrix(adata).matrix
    assert not np.allclose(in_sample, expected)
    # predictions in .obs stay the model's own
    np.testing.assert_allclose(
        adata.obs[f"kdcpt_proba_{small_model.classes_[0]}"], small_model.get_predictions().proba.iloc[:, 0], atol=1e-5
    )


def test_bad_transition_predictions_and_folds_are_refused(small_model, cross_fitted):
    from scanpy_kdcpt.results import Predictions

    adata = small_model.adata.copy()
    other = Predictions(proba=cross_fitted.proba.iloc[:10], labels=cross_fitted.labels.iloc[:10])
    with pytest.raises(ValueError, match="other cells"):
        small_model.annotate(adata, transition_predictions=other)
    nan = Predictions(proba=cross_fitted.proba * np.nan, labels=cross_fitted.labels)
    with pytest.raises(ValueError, match="NaN"):
        small_model.annotate(adata, transition_predictions=nan)
    with pytest.raises(ValueError, match="n_folds"):
        small_model.get_cross_fitted_predictions(n_folds=1)
