"""The KDCPT model: training, prediction, annotation, save/load, query data."""

from __future__ import annotations

import contextlib
import logging
import warnings

import numpy as np
import pandas as pd
import pytest
import scvi

import scanpy_kdcpt as kdcpt
from scanpy_kdcpt.metrics import classification_report


def test_planted_phenotypes_are_learned(synthetic_model):
    query = kdcpt.datasets.synthetic(n_cells=600, seed=1)  # fresh cells from the same design
    pred = synthetic_model.predict(query)
    assert classification_report(query.obs["phenotype"], pred)["accuracy"] >= 0.9


def test_history_logs_loss_accuracy_f1(synthetic_model):
    hist = synthetic_model.history
    for key in ("train_loss", "validation_loss", "train_accuracy", "validation_accuracy", "validation_f1"):
        assert key in hist, key
    assert hist["train_loss"]["train_loss"].iloc[-1] < hist["train_loss"]["train_loss"].iloc[0]


def test_pbmc_beats_majority_baseline(pbmc_model):
    adata = pbmc_model.adata
    val = np.asarray(pbmc_model.validation_indices)
    truth = adata.obs["bulk_labels"].iloc[val].astype(str)
    pred = pbmc_model.predict(indices=val)
    report = classification_report(truth, pred)
    train_truth = adata.obs["bulk_labels"].iloc[pbmc_model.train_indices].astype(str)
    majority = (truth == train_truth.value_counts().idxmax()).mean()
    assert report["accuracy"] >= majority + 0.3, (report, majority)
    assert report["macro_f1"] >= 0.45, report


def test_predict_soft_is_the_softmax_at_the_model_temperature(pbmc_model):
    proba = pbmc_model.predict(soft=True)
    assert list(proba.columns) == pbmc_model.classes_
    assert proba.index.equals(pbmc_model.adata.obs_names)
    hard = pbmc_model.predict()
    assert (hard.astype(str).to_numpy() == proba.idxmax(1).to_numpy()).all()
    T = pbmc_model.temperature_
    try:
        pbmc_model.temperature_ = 2 * T
        soft = pbmc_model.predict(soft=True)
    finally:
        pbmc_model.temperature_ = T
    # softmax(z / 2T) = softmax(log softmax(z / T) / 2): the log-probabilities halve, up to a per-cell constant
    shift = np.log(soft.to_numpy()) - np.log(proba.to_numpy()) / 2
    np.testing.assert_allclose(shift - shift.mean(1, keepdims=True), 0, atol=1e-4)
    assert (soft.max(1) < proba.max(1) + 1e-7).all() and (soft.idxmax(1) == proba.idxmax(1)).all()


def test_annotate_writes_obs_keys_with_dtypes(synthetic_model):
    adata = synthetic_model.adata
    before = adata.obs["phenotype"].copy()
    synthetic_model.annotate()
    obs = adata.obs
    assert isinstance(obs["kdcpt_pred"].dtype, pd.CategoricalDtype)
    assert list(obs["kdcpt_pred"].cat.categories) == synthetic_model.classes_
    for c in synthetic_model.classes_:
        assert obs[f"kdcpt_proba_{c}"].dtype == np.float32
    assert obs["kdcpt_confidence"].between(1 / len(synthetic_model.classes_), 1).all()
    assert obs["kdcpt_uncertainty"].between(0, 1).all()
    # confidence and the cosine uncertainty index follow their definitions from the written probabilities
    p = obs[[f"kdcpt_proba_{c}" for c in synthetic_model.classes_]].to_numpy(float)
    np.testing.assert_allclose(obs["kdcpt_confidence"], p.max(1), rtol=1e-5)
    cos = p.max(1) / np.linalg.norm(p, axis=1)
    expected = (1 - cos) / (1 - 1 / np.sqrt(p.shape[1]))
    np.testing.assert_allclose(obs["kdcpt_uncertainty"], np.clip(expected, 0, 1), atol=1e-5)
    assert len(adata.uns["kdcpt_pred_colors"]) == len(synthetic_model.classes_)
    assert adata.uns["kdcpt"]["metrics"]["validation"]["accuracy"] >= 0.9
    pd.testing.assert_series_equal(adata.obs["phenotype"], before)


def test_annotate_copy_leaves_input_untouched(synthetic_model):
    q = kdcpt.datasets.synthetic(n_cells=50, seed=3)
    out = synthetic_model.annotate(q, copy=True)
    assert "kdcpt_pred" in out.obs and "kdcpt_pred" not in q.obs


def test_reannotating_removes_earlier_outputs_the_new_ones_contradict():
    scvi.settings.seed = 0
    adata = kdcpt.datasets.synthetic(n_cells=300, n_genes=100, seed=2)
    kdcpt.KDCPT.setup_anndata(adata, labels_key="phenotype")
    model = kdcpt.KDCPT(adata, n_tokens=32, n_selected=8, d_model=16, n_hidden=32, n_pcs=10)
    model.train(max_epochs=2, enable_progress_bar=False, enable_model_summary=False)
    model.calibrate()
    model.compute_transitions(direction="pseudotime", root="P0", inplace=False)
    model.annotate(terminal=["P3"], conformal_alpha=0.1)
    assert {"kdcpt_prediction_set", "kdcpt_set_size"} <= set(adata.obs)
    assert "kdcpt_fate_probabilities" in adata.obsm and "kdcpt_transitions" in adata.obsp
    # predictions of another model with a phenotype "Old", written under the same key
    other = pd.DataFrame({"Old": 0.5, model.classes_[0]: 0.5}, index=adata.obs_names)
    kdcpt.writers.write_predictions(
        adata, kdcpt.results.Predictions(proba=other, labels=pd.Series(np.nan, index=adata.obs_names))
    )
    adata.obs["mine"] = 1.0
    adata.obs["kdcpt_proba_user"] = 2.0  # the user's own column with the prefix: no model wrote it
    model.annotate(direction="posterior")  # no sets asked for, no chain
    assert not {"kdcpt_prediction_set", "kdcpt_set_size", "kdcpt_proba_Old"} & set(adata.obs)
    assert {"mine", "kdcpt_proba_user"} <= set(adata.obs) and all(
        f"kdcpt_proba_{c}" in adata.obs for c in model.classes_
    )
    uns = adata.uns["kdcpt"]
    assert uns["transition_method"] == "posterior"
    assert not {"fate", "fate_terminal", "fate_params", "flux", "stationary"} & set(uns)
    assert "kdcpt_fate_probabilities" not in adata.obsm and "kdcpt_transitions" not in adata.obsp
    # the directed chain again: its fates come back
    model.annotate(direction="stored", terminal=["P3"])
    assert "kdcpt_fate_probabilities" in adata.obsm and list(uns["fate_terminal"]) == ["P3"]


def test_a_second_setup_of_the_same_anndata_does_not_change_the_first_models_labels():
    scvi.settings.seed = 0
    adata = kdcpt.datasets.synthetic(n_cells=300, n_genes=100, seed=4)
    adata.obs["coarse"] = adata.obs["phenotype"].astype(str).replace({"P3": "P2"}).astype("category")
    kdcpt.KDCPT.setup_anndata(adata, labels_key="phenotype")
    model = kdcpt.KDCPT(adata, n_tokens=32, n_selected=8, d_model=16, n_hidden=32, n_pcs=10)
    model.train(max_epochs=2, enable_progress_bar=False, enable_model_summary=False)
    model.annotate(key_added="before")
    codes_before = model.labels_()[0]
    kdcpt.KDCPT.setup_anndata(adata, labels_key="coarse")  # e.g. for a second model on coarser labels
    np.testing.assert_array_equal(model.labels_()[0], codes_before)
    model.annotate(key_added="after")
    before, after = adata.uns["before"], adata.uns["after"]
    pd.testing.assert_frame_equal(before["transition_matrix"], after["transition_matrix"])
    assert before["metrics"] == after["metrics"]


def test_two_setups_with_missing_labels_keep_their_own_private_copies():
    scvi.settings.seed = 0
    adata = kdcpt.datasets.synthetic(n_cells=300, n_genes=100, seed=4)
    fine = adata.obs["phenotype"].astype(object)
    coarse = adata.obs["phenotype"].astype(str).replace({"P3": "P2"}).astype(object)
    fine.iloc[:20], coarse.iloc[20:40] = np.nan, np.nan  # missing labels: each column gets a private copy
    adata.obs["fine"], adata.obs["coarse"] = fine, coarse
    kdcpt.KDCPT.setup_anndata(adata, labels_key="fine")
    model = kdcpt.KDCPT(adata, n_tokens=32, n_selected=8, d_model=16, n_hidden=32, n_pcs=10)
    model.train(max_epochs=1, enable_progress_bar=False, enable_model_summary=False)
    codes, labelled = model.labels_()
    assert labelled.sum() == 280
    kdcpt.KDCPT.setup_anndata(adata, labels_key="coarse")
    again, labelled_again = model.labels_()
    np.testing.assert_array_equal(again, codes)
    np.testing.assert_array_equal(labelled_again, labelled)
    assert {"_kdcpt_labels_fine", "_kdcpt_labels_coarse"} <= set(adata.obs)


def test_a_labelled_query_gets_metrics_on_its_known_labels(synthetic_model):
    q = kdcpt.datasets.synthetic(n_cells=60, seed=5)
    labels = q.obs["phenotype"].astype(object).copy()
    labels.iloc[:10] = None  # unlabelled query cells
    labels.iloc[10:15] = "never seen"  # a phenotype the model does not know
    q.obs["phenotype"] = labels
    out = synthetic_model.annotate(q, copy=True)
    m = out.uns["kdcpt"]["metrics"]
    assert m["labelled"]["n_cells"] == 45 and "validation" not in m
    pred = out.obs["kdcpt_pred"].astype(str).to_numpy()[15:]
    truth = labels.to_numpy()[15:].astype(str)
    assert m["labelled"]["accuracy"] == pytest.approx((pred == truth).mean())
    got = synthetic_model.get_predictions(q).labels
    assert got.iloc[:15].isna().all() and (got.iloc[15:].to_numpy() == truth).all()
    pd.testing.assert_series_equal(q.obs["phenotype"], labels)  # the query is not modified


def test_annotate_copy_of_the_training_data_keeps_labels_and_validation_metrics(synthetic_model):
    out = synthetic_model.annotate(copy=True)
    assert out is not synthetic_model.adata
    metrics = out.uns["kdcpt"]["metrics"]
    assert metrics["validation"]["accuracy"] >= 0.9 and metrics["labelled"]["n_cells"] == out.n_obs
    assert 0 <= metrics["validation"]["ece"] < 0.2
    assert all(0 <= metrics[s]["ece_floor"] < 0.2 for s in ("labelled", "validation"))  # beside each ECE
    assert 0 < metrics["labelled"]["mean_confidence"] <= 1 and 0 <= metrics["labelled"]["mean_uncertainty"] <= 1


def test_save_load_identical_probabilities(synthetic_model, tmp_path):
    synthetic_model.save(tmp_path / "m", overwrite=True)
    loaded = kdcpt.KDCPT.load(tmp_path / "m", synthetic_model.adata)
    a = synthetic_model.predict(soft=True)
    b = loaded.predict(soft=True)
    np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())
    assert loaded.classes_ == synthetic_model.classes_
    assert "validation_loss" in loaded.history
    with pytest.raises(ValueError, match="not empty"):
        synthetic_model.save(tmp_path / "m")


def test_loaded_with_other_cells_the_model_forgets_its_held_out_positions(synthetic_model, tmp_path):
    synthetic_model.save(tmp_path / "m", overwrite=True)
    held = np.asarray(synthetic_model.calibration_indices_)
    assert len(held) and held.max() >= 200  # positions that do not exist in the smaller data below
    same_cells = synthetic_model.adata.copy()
    same = kdcpt.KDCPT.load(tmp_path / "m", same_cells)
    np.testing.assert_array_equal(same.calibration_indices_, held)  # the training cells: kept
    for k in ("train_indices", "validation_indices", "test_indices"):  # and the split of train()
        np.testing.assert_array_equal(getattr(same, k), getattr(synthetic_model, k))
    same.annotate()
    assert "validation" in same_cells.uns["kdcpt"]["metrics"]  # held-out metrics as after training
    other = kdcpt.datasets.synthetic(n_cells=200, seed=7)
    loaded = kdcpt.KDCPT.load(tmp_path / "m", other)
    assert loaded.calibration_indices_ is None and loaded.validation_indices is None
    loaded.annotate()  # an IndexError before; and no "calibration" metrics of arbitrary cells
    assert not {"calibration", "validation"} & set(other.uns["kdcpt"]["metrics"])
    with pytest.raises(ValueError, match="no held-out cells"):
        loaded.calibrate()


def test_load_with_the_reread_h5ad_in_the_same_session(synthetic_model, tmp_path):
    import anndata as ad

    synthetic_model.save(tmp_path / "m")
    synthetic_model.adata.write_h5ad(tmp_path / "a.h5ad")
    before = synthetic_model.predict(soft=True)
    reread = ad.read_h5ad(tmp_path / "a.h5ad")  # carries the scvi id of the in-memory object
    loaded = kdcpt.KDCPT.load(tmp_path / "m", reread)
    np.testing.assert_allclose(loaded.predict(soft=True).to_numpy(), before.to_numpy(), atol=1e-6)
    # the original model still reads its own AnnData, not the re-read copy registered by load
    pd.testing.assert_frame_equal(synthetic_model.predict(soft=True), before)


def test_saved_model_loads_with_weights_only(synthetic_model, tmp_path):
    import torch

    synthetic_model.save(tmp_path / "m")
    state = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_load_against_other_genes_names_the_difference(synthetic_model, tmp_path):
    synthetic_model.save(tmp_path / "m")
    other = synthetic_model.adata[:, 5:].copy()
    with pytest.raises(ValueError, match=r"5 model genes missing from adata.*Reg_P0"):
        kdcpt.KDCPT.load(tmp_path / "m", other)


def test_a_model_loads_onto_fewer_cells_than_its_encoder_has_components(synthetic_model, tmp_path):
    # load rebuilt the 100-component encoder from the cells it was given: on ≤ 100 cells a torch
    # "size mismatch for embedding_mean" error
    synthetic_model.save(tmp_path / "m", save_anndata=False)
    few = synthetic_model.adata[:60].copy()
    loaded = kdcpt.KDCPT.load(tmp_path / "m", few)
    np.testing.assert_allclose(
        loaded.get_predictions().proba.to_numpy(),
        synthetic_model.get_predictions(few).proba.to_numpy(),
        atol=1e-5,
    )


def test_query_with_missing_genes_is_zero_filled_with_warning(synthetic_model):
    query = kdcpt.datasets.synthetic(n_cells=300, seed=2)
    keep = query.var_names[query.var_names.str.startswith("Gene_")][:10]
    query = query[:, query.var_names.difference(keep)[::-1]].copy()  # other order, 10 genes fewer
    with pytest.warns(UserWarning, match="10 of the model's 200 genes are missing"):
        pred = synthetic_model.predict(query)
    assert pred.index.equals(query.obs_names)
    assert (pred.astype(str) == query.obs["phenotype"].astype(str)).mean() >= 0.85
    assert "_scvi_labels" not in query.obs  # the user's query is not modified
    # most genes missing: "predictions lean on the shared genes" understated predictions from 5 genes
    few = query[:, query.var_names[:5]].copy()
    with pytest.warns(UserWarning, match="195 of the model's 200 genes.*most of its genes missing.*unreliable"):
        synthetic_model.predict(few)


def test_a_dense_view_of_a_query_is_read_as_its_copy(synthetic_model):
    # users subset a query before predicting; a view of a dense X used to reach torch as an
    # anndata ArrayView ("'ArrayView' object has no attribute 'float'")
    query = kdcpt.datasets.synthetic(n_cells=300, seed=2)
    query.X = query.X.toarray()
    view = query[query.obs["phenotype"] != query.obs["phenotype"].cat.categories[0]]
    assert view.is_view
    pd.testing.assert_frame_equal(
        synthetic_model.get_predictions(view).proba, synthetic_model.get_predictions(view.copy()).proba
    )
    got, expected = synthetic_model.get_key_genes(view), synthetic_model.get_key_genes(view.copy())
    pd.testing.assert_frame_equal(got.attribution, expected.attribution)
    assert view.is_view  # nothing was written into the user's view


def test_annotate_says_when_terminal_cannot_be_used_and_checks_its_names(synthetic_model):
    # without a directed chain for these cells annotate(terminal=...) wrote nothing and said nothing
    query = kdcpt.datasets.synthetic(n_cells=150, seed=4)
    unused = r"terminal=\['P3'\] is not used: there is no directed chain.*compute_transitions"
    with pytest.warns(UserWarning, match=unused):
        synthetic_model.annotate(query, terminal=["P3"])
    assert not any(k.endswith("fate_probabilities") for k in query.obsm)
    with pytest.raises(kdcpt._errors.KeyNotFoundError, match=r"terminal \['Nope'\] not among the phenotypes"):
        synthetic_model.annotate(query.copy(), terminal=["P3", "Nope"])


def test_a_query_with_nan_is_told_to_fix_the_query_not_the_setup(synthetic_model):
    query = kdcpt.datasets.synthetic(n_cells=20, seed=2)
    X = query.X.toarray()
    X[2, 3] = np.nan
    query.X = X
    with pytest.raises(kdcpt._errors.InvalidInputError, match="1 NaN or infinite values") as err:
        synthetic_model.predict(query)
    assert "before predicting" in str(err.value) and "setup_anndata" not in str(err.value)


def test_query_with_no_shared_genes_fails(synthetic_model):
    query = kdcpt.datasets.synthetic(n_cells=20, seed=2)
    query.var_names = [f"X{i}" for i in range(query.n_vars)]
    with pytest.raises(ValueError, match="None of the model's genes"):
        synthetic_model.predict(query)


def test_query_of_the_wrong_data_type_is_refused(synthetic_model):
    query = kdcpt.datasets.synthetic(n_cells=20, seed=2)
    query.X = query.X.log1p()
    with pytest.raises(ValueError, match="looks like log values but the model was trained on counts"):
        synthetic_model.predict(query)


def test_query_counts_in_the_registered_layer():
    adata = kdcpt.datasets.synthetic(n_cells=300, seed=0)
    adata.layers["counts"] = adata.X.copy()
    adata.X = adata.X.log1p()
    kdcpt.KDCPT.setup_anndata(adata, labels_key="phenotype", layer="counts")
    model = _tiny_train(adata)
    query = kdcpt.datasets.synthetic(n_cells=40, seed=5)
    query.layers["counts"] = query.X.copy()
    query.X = query.X.log1p()
    proba = model.predict(query, soft=True)
    assert proba.index.equals(query.obs_names)
    # the model reads the registered layer, not X: other values in X change nothing
    query.X = query.X * 0
    pd.testing.assert_frame_equal(model.predict(query, soft=True), proba)
    # and the layer's values matter
    query.layers["counts"] = query.layers["counts"][::-1].copy()
    assert not np.allclose(model.predict(query, soft=True).to_numpy(), proba.to_numpy())


def test_train_without_validation_cells():
    adata = kdcpt.datasets.synthetic(n_cells=200, seed=0)
    kdcpt.KDCPT.setup_anndata(adata, labels_key="phenotype")
    model = kdcpt.KDCPT(adata, n_tokens=32, n_selected=8, d_model=16, n_hidden=32)
    model.train(max_epochs=1, train_size=1.0, enable_progress_bar=False)
    assert "validation_loss" not in model.history and "train_loss" in model.history


def _tiny_train(adata, **model_kwargs):
    model = kdcpt.KDCPT(adata, n_tokens=64, n_selected=16, d_model=32, n_hidden=64, **model_kwargs)
    model.train(max_epochs=2, enable_progress_bar=False)
    return model


def _learn(adata, **model_kwargs):
    """A tiny model trained long enough to learn the planted phenotypes (accuracy ≈ 0.95, a few s)."""
    model = kdcpt.KDCPT(adata, n_tokens=64, n_selected=16, d_model=32, n_hidden=64, **model_kwargs)
    model.train(max_epochs=8, batch_size=32, enable_progress_bar=False)
    return model


def test_seed_makes_training_reproducible():
    probas = []
    for _ in range(2):
        scvi.settings.seed = 0
        adata = kdcpt.datasets.synthetic(n_cells=300, seed=0)
        kdcpt.KDCPT.setup_anndata(adata, labels_key="phenotype", prior_key="is_tf")
        probas.append(_tiny_train(adata).predict(soft=True).to_numpy())
    np.testing.assert_allclose(probas[0], probas[1], atol=1e-6)


def test_unlabelled_cells_are_predicted_but_left_out_of_the_loss():
    adata = kdcpt.datasets.synthetic(n_cells=400, seed=0)
    labels = adata.obs["phenotype"].astype(object)
    labels.iloc[:100] = np.nan
    adata.obs["partial"] = labels
    kdcpt.KDCPT.setup_anndata(adata, labels_key="partial")
    assert adata.obs["partial"].isna().sum() == 100  # the user's column is left as it was
    model = _learn(adata)
    assert model.classes_ == ["P0", "P1", "P2", "P3"]
    codes, labelled = model.labels_()
    assert (~labelled[:100]).all() and labelled[100:].all()
    pred = model.predict().astype(str)
    # the unlabelled cells are predicted: their hidden phenotypes are mostly found
    truth = adata.obs["phenotype"].astype(str)
    assert (pred.iloc[:100] == truth.iloc[:100]).mean() >= 0.6


def test_unlabeled_category_is_not_a_phenotype():
    adata = kdcpt.datasets.synthetic(n_cells=300, seed=0)
    labels = adata.obs["phenotype"].astype(str).to_numpy()
    labels[:50] = "Unknown"
    adata.obs["lab"] = pd.Categorical(labels)
    kdcpt.KDCPT.setup_anndata(adata, labels_key="lab", unlabeled_category="Unknown")
    model = kdcpt.KDCPT(adata)
    assert "Unknown" not in model.classes_ and len(model.classes_) == 4


@pytest.mark.parametrize(("use_cell_learner", "use_cffm"), [(False, False), (False, True), (True, False)])
def test_ablations_train_and_predict(use_cell_learner, use_cffm):
    adata = kdcpt.datasets.synthetic(n_cells=300, seed=0)
    kdcpt.KDCPT.setup_anndata(adata, labels_key="phenotype", prior_key="is_tf")
    model = _learn(adata, use_cell_learner=use_cell_learner, use_cffm=use_cffm)
    assert (model.module.cffm is None) == (not use_cffm)
    assert model.module.use_cell_learner == use_cell_learner
    # each ablation still learns the planted phenotypes (chance: 0.25)
    pred = model.predict().astype(str)
    assert (pred == adata.obs["phenotype"].astype(str)).mean() >= 0.6


def test_external_embedding_and_balanced_class_weights():
    adata = kdcpt.datasets.pbmc68k_reduced()
    kdcpt.KDCPT.setup_anndata(adata, labels_key="bulk_labels", embedding_key="X_pca")
    model = _tiny_train(adata, class_weights="balanced")
    w = model.module.class_weights.cpu().numpy()
    counts = adata.obs["bulk_labels"].value_counts().reindex(model.classes_).to_numpy()
    assert np.argmax(w) == np.argmin(counts) and np.argmin(w) == np.argmax(counts)
    query = adata[:20].copy()
    query.obsm["X_pca"] = query.obsm["X_pca"][:, :10]
    with pytest.raises(ValueError, match="10 dimensions; the model was trained on 50"):
        model.predict(query)
    del query.obsm["X_pca"]
    with pytest.raises(KeyError, match="X_pca"):
        model.predict(query)


def test_more_than_4096_cells_end_to_end():
    adata = kdcpt.datasets.synthetic(n_cells=5000, n_genes=120, n_targets=4, seed=0)
    kdcpt.KDCPT.setup_anndata(adata, labels_key="phenotype", prior_key="is_tf")
    model = kdcpt.KDCPT(adata, n_tokens=64, n_selected=16, d_model=32, n_hidden=64)
    model.train(max_epochs=1, batch_size=256, enable_progress_bar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model.annotate()
    latent = model.get_transition_matrix(method="latent", n_neighbors=10)  # > 4,096 cells: pynndescent
    T = latent.cell_chain
    assert T.shape == (5000, 5000) and T.diagonal().max() == 0
    np.testing.assert_allclose(np.asarray(T.sum(1)).ravel(), 1, atol=1e-5)


@contextlib.contextmanager
def _messages_of(logger: logging.Logger):
    """The messages ``logger`` passes on while the block runs, in a list."""
    said = []

    class Keep(logging.Handler):
        def emit(self, record):
            said.append(record.getMessage())

    keep = Keep(level=logging.DEBUG)
    logger.addHandler(keep)
    try:
        yield said
    finally:
        logger.removeHandler(keep)


def test_a_query_does_not_repeat_scvi_tools_setup_transfer_note(synthetic_model):
    scvi_logger = logging.getLogger("scvi.model.base._base_model")
    level = scvi_logger.level
    scvi_logger.setLevel(logging.INFO)  # what a notebook at scvi's default verbosity shows
    try:
        with _messages_of(scvi_logger) as said:
            synthetic_model.predict(kdcpt.datasets.synthetic(n_cells=20, seed=4))
    finally:
        scvi_logger.setLevel(level)
    assert not any("not setup with scvi-tools" in s for s in said)
    assert scvi_logger.level == level  # put back


def test_dropping_a_note_keeps_the_loggers_other_messages():
    from scanpy_kdcpt._utils import dropping_log_messages

    logger = logging.getLogger("kdcpt.test.dropping")
    logger.setLevel(logging.INFO)
    with _messages_of(logger) as said:
        with dropping_log_messages(["kdcpt.test.dropping"], ("Input AnnData not setup",)):
            logger.info("Input AnnData not setup with scvi-tools. attempting to transfer")
            logger.info("a note the user should still see")
        logger.info("Input AnnData not setup again, after the block")
    assert said == ["a note the user should still see", "Input AnnData not setup again, after the block"]


def test_training_drops_lightnings_advert_but_keeps_its_device_lines():
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with _messages_of(log) as said:
        a = kdcpt.datasets.synthetic(n_cells=120, seed=1)
        kdcpt.KDCPT.setup_anndata(a, labels_key="phenotype")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            kdcpt.KDCPT(a).train(max_epochs=1, enable_progress_bar=False, accelerator="cpu")
    assert not any("logging interval" in str(w.message) for w in caught)  # 1 batch per epoch here
    assert any("GPU available" in s for s in said)
    assert not any("Tip: For seamless cloud logging" in s for s in said)
    assert not log.filters  # the filter is taken off after training


def _embedded_variances(model) -> np.ndarray:
    """Variance of each component of the network's input embedding over the registered cells."""
    import torch

    X = model._inputs.registered_matrix(model.adata)
    X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
    m = model.module
    with torch.inference_mode():
        e = m.embed(m.normalize(torch.as_tensor(X, dtype=torch.float32)), None, None)
    return e.numpy().var(0)


def test_whiten_false_keeps_the_encoder_components_relative_variances(tmp_path):
    adata = kdcpt.datasets.synthetic(n_cells=300, n_genes=100, seed=2)
    kdcpt.KDCPT.setup_anndata(adata, labels_key="phenotype")
    small = {"n_tokens": 32, "n_selected": 8, "d_model": 16, "n_hidden": 32, "n_pcs": 10}
    scvi.settings.seed = 0
    whitened = kdcpt.KDCPT(adata, **small)
    scvi.settings.seed = 0
    plain = kdcpt.KDCPT(adata, whiten=False, **small)
    np.testing.assert_allclose(whitened.module.loadings.numpy(), plain.module.loadings.numpy())  # same PCA
    v_white, v_plain = _embedded_variances(whitened), _embedded_variances(plain)
    np.testing.assert_allclose(v_white, 1.0, rtol=0.02)  # each component by its own sd
    assert v_plain[0] == pytest.approx(1.0, rel=0.02)  # all by the first component's sd
    assert np.all(np.diff(v_plain) <= 1e-6) and v_plain[-1] < 0.5 * v_plain[0]
    sd = whitened.module.embedding_scale.numpy()  # each component's sd on the registered cells
    np.testing.assert_allclose(v_plain, (sd / sd[0]) ** 2, rtol=0.02)  # their relative variances
    # the scaling is the model's: it survives save and load
    plain.train(max_epochs=1, enable_progress_bar=False, enable_model_summary=False)
    plain.save(tmp_path / "m", overwrite=True)
    loaded = kdcpt.KDCPT.load(tmp_path / "m", adata=adata)
    np.testing.assert_allclose(_embedded_variances(loaded), v_plain, rtol=1e-5)


def test_saving_where_no_folder_can_be_made_says_so(synthetic_model, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(kdcpt._errors.OutputPathError, match="cannot be saved in.*pass a writable folder"):
        synthetic_model.save(blocker / "model")  # a folder under a file: os.makedirs raised a raw OSError


def test_inputs_that_failed_inside_the_libraries_are_named(synthetic_model):
    from scanpy_kdcpt._errors import InvalidInputError

    m = synthetic_model
    a = m.adata.copy()
    # a key_added with "/" (or empty) was written, then spread over nested groups by write_h5ad
    for bad in ("run/1", ""):
        with pytest.raises(InvalidInputError, match="key_added must be a non-empty name without '/'"):
            m.annotate(a, key_added=bad)
    # a value of the user's under the output key: a TypeError after .obs had been written
    a.uns["kdcpt"] = "my notes"
    columns = list(a.obs.columns)
    with pytest.raises(InvalidInputError, match=r"uns\['kdcpt'\] holds a str"):
        m.annotate(a)
    assert list(a.obs.columns) == columns and a.uns["kdcpt"] == "my notes"
    # indices that pick no cell, or cells that do not exist: pandas' IndexError before
    with pytest.raises(InvalidInputError, match="selects no cell"):
        m.predict(indices=[])
    with pytest.raises(InvalidInputError, match=r"must lie in 0 \.\."):
        m.predict(indices=[0, m.adata.n_obs + 5])
    assert len(m.predict(indices=np.arange(m.adata.n_obs) < 3)) == 3


def test_too_few_cells_for_a_validation_set_are_named():
    from scanpy_kdcpt._errors import InvalidInputError

    a = kdcpt.datasets.synthetic(n_cells=200, seed=0)[:5].copy()
    a.obs["phenotype"] = pd.Categorical(["P0", "P1", "P0", "P1", "P0"])
    kdcpt.KDCPT.setup_anndata(a, labels_key="phenotype")
    model = kdcpt.KDCPT(a, n_tokens=8, n_selected=2, d_model=8, n_hidden=8)
    with pytest.raises(InvalidInputError, match="validation share.*holds no cell.*validation_size=0"):
        model.train(max_epochs=1, enable_progress_bar=False)
