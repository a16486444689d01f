"""Calibration (temperature scaling, ECE, Brier), uncertainty and conformal sets (issue 3)."""

from __future__ import annotations

import copy
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest
import scvi

import scanpy_kdcpt as kdcpt
from scanpy_kdcpt.calibration import (
    conformal_scores,
    conformal_threshold,
    cosine_uncertainty,
    ece_floor,
    expected_calibration_error,
    fit_temperature,
    prediction_sets,
    softmax,
)


@contextmanager
def keep_calibration(model):
    """Restore the shared model's temperature and calibration state after a test."""
    T, extra = model.temperature_, copy.deepcopy(getattr(model, "extra_", {}))
    try:
        yield model
    finally:
        model.temperature_, model.extra_ = T, extra


def test_ece_and_brier_hand_values():
    proba = pd.DataFrame([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.5, 0.5]], columns=["B", "T"])
    y = ["B", "T", "B", None]  # the unlabelled cell is left out
    # three bins with one cell each: |1 - 0.9|, |0 - 0.6|, |1 - 0.8|
    assert kdcpt.metrics.ece(y, proba) == pytest.approx((0.1 + 0.6 + 0.2) / 3)
    assert kdcpt.metrics.brier(y, proba) == pytest.approx((0.02 + 0.72 + 0.08) / 3)
    assert kdcpt.metrics.ece(y, proba.to_numpy(), classes=["B", "T"]) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="not among the probability columns"):
        kdcpt.metrics.ece(["B", "NK"], proba.iloc[:2])
    with pytest.raises(ValueError, match="classes="):
        kdcpt.metrics.brier(["B"], proba.to_numpy()[:1])
    # the torch-free core refuses what is not a probability (logits gave an "ECE" of 2.8; a NaN row
    # dropped its whole bin) and bins that are not a whole number
    core = kdcpt.calibration
    codes = np.array([0, 1, 0])
    for bad in ([[5.0, 1.0], [1.0, 3.0], [2.0, 0.0]], [[0.9, 0.1], [np.nan, np.nan], [0.8, 0.2]]):
        for f in (core.expected_calibration_error, core.reliability_table, core.brier_score):
            with pytest.raises(ValueError, match="Expected probabilities"):
                f(np.array(bad), codes)
    for n_bins in (0, 2.5):
        with pytest.raises(ValueError, match="n_bins must be a whole number"):
            core.reliability_table(proba.to_numpy()[:3], codes, n_bins)


def test_temperature_scaling_fixes_overconfident_logits():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, (4000, 5))
    y = np.array([rng.choice(5, p=p) for p in softmax(z)])  # labels drawn from softmax(z): calibrated
    over = 4.0 * z  # an over-confident model
    T = fit_temperature(over[:2000], y[:2000])
    assert T == pytest.approx(4.0, rel=0.15)
    before = expected_calibration_error(softmax(over[2000:]), y[2000:])
    after = expected_calibration_error(softmax(over[2000:], T), y[2000:])
    assert after < before / 3


def test_ece_floor_is_the_ece_of_a_calibrated_model_on_that_many_cells():
    rng = np.random.default_rng(3)
    for n in (60, 400):
        p = softmax(rng.normal(0, 1.5, (n, 6)))
        draws = [  # labels drawn from p: a calibrated model by construction
            expected_calibration_error(p, (rng.random((n, 1)) > np.cumsum(p, 1)).sum(1).clip(max=5))
            for _ in range(300)
        ]
        assert ece_floor(p) == pytest.approx(np.mean(draws), abs=0.006)
    small, large = softmax(rng.normal(0, 1.5, (60, 6))), softmax(rng.normal(0, 1.5, (6000, 6)))
    assert ece_floor(small) > 3 * ece_floor(large)  # ~1/sqrt(n)
    # an over-confident model on many cells sits far above its floor
    z = rng.normal(0, 1.5, (4000, 5))
    y = np.array([rng.choice(5, p=q) for q in softmax(z)])
    over = softmax(4.0 * z)
    assert expected_calibration_error(over, y) > 5 * ece_floor(over)
    with pytest.raises(ValueError, match="cells × phenotypes"):
        ece_floor(np.zeros(3))


def test_conformal_sets_cover_exchangeable_cells():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.full(6, 0.5), 3000)
    y = np.array([rng.choice(6, p=q) for q in p])
    for alpha in (0.05, 0.1, 0.2):
        q = conformal_threshold(conformal_scores(p[:1000], y[:1000]), alpha)
        sets = prediction_sets(p[1000:], q)
        coverage = sets[np.arange(2000), y[1000:]].mean()
        assert 1 - alpha - 0.03 <= coverage <= 1 - alpha + 0.05
        assert sets.sum(1).mean() < 6  # not the trivial full set
    with pytest.raises(ValueError, match="conformal_alpha must be in"):
        conformal_threshold(np.array([0.1, 0.2]), 1.5)
    # 30 cells cannot support alpha = 0.01: every set is full, and that is said
    with pytest.warns(UserWarning, match="needs at least 99 calibration cells, there are 30"):
        assert conformal_threshold(conformal_scores(p[:30], y[:30]), 0.01) == np.inf


def test_cosine_uncertainty_extremes():
    u = cosine_uncertainty(np.array([[1.0, 0, 0, 0], [0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.1]]))
    np.testing.assert_allclose(u[:2], [0.0, 1.0], atol=1e-12)
    assert 0 < u[2] < 1


def test_calibrate_lowers_ece_of_overconfident_model(pbmc_model):
    with keep_calibration(pbmc_model) as model:
        model.temperature_ = 0.2  # make the model over-confident
        res = model.calibrate()
        assert res["temperature_before"] == 0.2
        assert res["ece_after"] < res["ece_before"]
        assert 0 < res["ece_floor"] < 0.2  # the floor of the calibration cells, at the fitted T
        assert res["nll_after"] < res["nll_before"]
        assert model.temperature_ == pytest.approx(res["temperature"]) and model.temperature_ > 0.2
        assert res["n_cells"] == len(model.validation_indices)


def test_conformal_sets_cover_held_out_cells_and_survive_save_load(synthetic_model, tmp_path):
    val = np.asarray(synthetic_model.validation_indices)
    cal, test = val[::2], val[1::2]
    with keep_calibration(synthetic_model) as model:
        model.extra_ = {}
        with pytest.raises(ValueError, match="call model.calibrate"):
            model.predict(conformal_alpha=0.1)
        model.calibrate(indices=cal)
        alpha = 0.1
        sets = model.predict(indices=test, conformal_alpha=alpha)
        assert all(d == np.dtype(bool) for d in sets.dtypes) and list(sets.columns) == model.classes_
        truth = model.adata.obs["phenotype"].astype(str).iloc[test]
        covered = np.array([sets.loc[c, t] for c, t in zip(sets.index, truth, strict=True)])
        assert covered.mean() >= 1 - alpha - 0.05
        # the split-conformal rule by hand: q = the ⌈(n + 1)(1 - α)⌉-th smallest score 1 - p(true) of
        # the calibration cells; a phenotype j is in a test cell's set when 1 - p_j ≤ q
        p_cal = model.predict(indices=cal, soft=True)
        y_cal = model.adata.obs["phenotype"].astype(str).iloc[cal]
        scores = np.sort(1 - np.array([p_cal.loc[c, t] for c, t in zip(p_cal.index, y_cal, strict=True)]))
        q = scores[int(np.ceil((len(cal) + 1) * (1 - alpha))) - 1]
        p_test = model.predict(indices=test, soft=True)
        expected = (1 - p_test.to_numpy()) <= q + 1e-9
        expected[np.arange(len(test)), p_test.to_numpy().argmax(1)] = True
        np.testing.assert_array_equal(sets.to_numpy(), expected)
        wide = model.predict(indices=test, conformal_alpha=0.01).sum(1)
        narrow = model.predict(indices=test, conformal_alpha=0.5).sum(1)
        assert (wide >= narrow).all()

        model.save(str(tmp_path / "m"), overwrite=True)
        loaded = kdcpt.KDCPT.load(str(tmp_path / "m"), adata=model.adata, accelerator="cpu")
        assert loaded.temperature_ == pytest.approx(model.temperature_)
        pd.testing.assert_frame_equal(loaded.predict(indices=test, conformal_alpha=alpha), sets)


def test_training_again_drops_the_earlier_calibration():
    scvi.settings.seed = 0
    adata = kdcpt.datasets.synthetic(n_cells=300, n_genes=100, seed=5)
    kdcpt.KDCPT.setup_anndata(adata, labels_key="phenotype")
    model = kdcpt.KDCPT(adata, n_tokens=32, n_selected=8, d_model=16, n_hidden=32, n_pcs=10, linear_stage=False)
    model.train(max_epochs=2, enable_progress_bar=False, enable_model_summary=False)
    model.calibrate()
    assert model.get_calibration().summary["calibrated"] and model.temperature_ != 1.0
    with pytest.warns(UserWarning, match="discards the earlier calibrate"):
        model.train(max_epochs=2, enable_progress_bar=False, enable_model_summary=False)
    assert not model.get_calibration().summary["calibrated"] and model.temperature_ == 1.0
    with pytest.raises(ValueError, match="call model.calibrate"):
        model.predict(conformal_alpha=0.1)  # no sets from the earlier weights' scores
    # the chain (and a GRN) of the earlier weights: its fates used memberships that are gone
    model.compute_transitions(direction="pseudotime", root="P0", inplace=False)
    assert model.transitions_ is not None
    with pytest.warns(UserWarning, match=r"discards the cell chain \(compute_transitions\)"):
        model.train(max_epochs=1, enable_progress_bar=False, enable_model_summary=False)
    assert model.transitions_ is None and model.grn_ is None


def test_uncertainty_higher_for_misclassified_pbmc_cells(pbmc_model):
    proba = pbmc_model.predict(soft=True)
    truth = pbmc_model.adata.obs["bulk_labels"].astype(str).to_numpy()
    wrong = proba.idxmax(1).to_numpy() != truth
    assert 0 < wrong.sum() < len(wrong)
    u = cosine_uncertainty(proba.to_numpy())
    assert u[wrong].mean() > u[~wrong].mean()


def test_the_reliability_cells_are_named_for_what_they_are(synthetic_model):
    with keep_calibration(synthetic_model) as model:
        model.extra_ = {k: v for k, v in (model.extra_ or {}).items() if k != "calibration"}
        summary = model.get_calibration(model.get_predictions()).summary
        assert summary["cells"] == "calibration (held-out) cells"  # not "validation cells"
