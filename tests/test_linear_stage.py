"""The convex first stage (issue 20): a class-balanced logistic regression fitted on the training
cells only, frozen into the module, with the network's residual on top and its share chosen on
the validation cells."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scvi
import torch
from scipy import sparse
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

import scanpy_kdcpt as kdcpt
from scanpy_kdcpt import linear
from scanpy_kdcpt.model import _linear_stage

SMALL = {"n_tokens": 32, "n_selected": 8, "d_model": 16, "n_hidden": 32, "n_pcs": 10, "linear_stage": True}


def _log_data(n_cells: int = 800, seed: int = 0) -> ad.AnnData:
    adata = kdcpt.datasets.synthetic(n_cells=n_cells, n_genes=120, seed=seed)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    adata.uns.pop("log1p", None)
    return adata


def _train(adata: ad.AnnData, epochs: int = 2, **model_kwargs) -> kdcpt.KDCPT:
    scvi.settings.seed = 0
    kdcpt.KDCPT.setup_anndata(adata, labels_key="phenotype")
    model = kdcpt.KDCPT(adata, **{**SMALL, **model_kwargs})
    model.train(max_epochs=epochs, enable_progress_bar=False, enable_model_summary=False)
    return model


@pytest.fixture(scope="module")
def log_model():
    return _train(_log_data(), epochs=3)


def test_held_out_macro_f1_not_below_logistic_regression():
    adata = kdcpt.datasets.synthetic(n_cells=1500, n_genes=150, seed=3, transition_frac=0.5)
    rng = np.random.default_rng(0)
    test = np.zeros(adata.n_obs, bool)
    test[rng.choice(adata.n_obs, 300, replace=False)] = True
    train, held_out = adata[~test].copy(), adata[test].copy()
    model = _train(train, epochs=8)
    assert model.linear_stage_ is not None and model.linear_stage_.converged
    assert 0.0 <= float(model.module.mix) <= 1.0
    truth = held_out.obs["phenotype"].astype(str).to_numpy()
    f1_model = f1_score(truth, model.predict(held_out).astype(str).to_numpy(), average="macro")

    def logn(a):
        x = a.X.toarray() if sparse.issparse(a.X) else np.asarray(a.X)
        return np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1) * 1e4)

    lr = LogisticRegression(class_weight="balanced", max_iter=2000).fit(logn(train), train.obs["phenotype"].astype(str))
    f1_lr = f1_score(truth, lr.predict(logn(held_out)), average="macro")
    assert f1_lr > 0.8  # a data set a linear model fits well
    assert f1_model >= f1_lr - 0.02, (f1_model, f1_lr)


def test_fitted_on_training_cells_only():
    adata = _log_data(400)
    base = _train(adata.copy(), epochs=1)
    w0 = base.module.linear_weight.clone()
    classes = adata.obs["phenotype"].cat.categories
    # validation cells enter only when mix = 0 made the first stage refit on them (test below)
    refit = base.linear_stage_.refit_with_validation
    for which, same in ((base.validation_indices, not refit), (base.test_indices, True), (base.train_indices, False)):
        changed = adata.copy()
        cell = int(np.sort(which)[0])
        old = changed.obs["phenotype"].iloc[cell]
        changed.obs.iloc[cell, changed.obs.columns.get_loc("phenotype")] = next(c for c in classes if c != old)
        model = _train(changed, epochs=1)
        np.testing.assert_array_equal(np.sort(model.train_indices), np.sort(base.train_indices))
        assert torch.equal(model.module.linear_weight, w0) is same


@pytest.mark.parametrize("mix", [0.0, 0.5])
def test_linear_stage_alone_is_refitted_with_the_validation_cells(monkeypatch, mix):
    scores = {m: float(m != mix) for m in _linear_stage.MIX_GRID}
    monkeypatch.setattr(_linear_stage, "choose_mix", lambda *a: (mix, scores))
    adata = _log_data(400)
    model = _train(adata, epochs=1)
    stage = model.linear_stage_
    assert float(model.module.mix) == mix and stage.refit_with_validation is (mix == 0.0)
    cells = np.concatenate([model.train_indices, model.validation_indices]) if mix == 0.0 else model.train_indices
    assert stage.n_cells == len(cells) and model.extra_["linear_stage"]["n_cells"] == len(cells)
    # the weights are those of a fit at the chosen C on exactly these cells (the calibration cells stay out)
    features = _linear_stage.normalized_rows(model.module, adata.X, np.sort(cells))
    codes = adata.obs["phenotype"].cat.codes.to_numpy()[np.sort(cells)]
    w, _, _ = _linear_stage.fit(features, codes, len(model.classes_), seed=0, C=stage.C)
    np.testing.assert_allclose(model.module.linear_weight.cpu().numpy(), w, atol=1e-5)


def test_calibrating_on_validation_cells_the_stage_was_refitted_on_warns(monkeypatch):
    monkeypatch.setattr(
        _linear_stage, "choose_mix", lambda *a: (0.0, {m: float(m != 0.0) for m in _linear_stage.MIX_GRID})
    )
    scvi.settings.seed = 0
    adata = _log_data(400)
    kdcpt.KDCPT.setup_anndata(adata, labels_key="phenotype")
    model = kdcpt.KDCPT(adata, **SMALL)
    model.train(max_epochs=1, calibration_size=0.0, enable_progress_bar=False, enable_model_summary=False)
    assert model.linear_stage_.refit_with_validation and not len(model.calibration_indices_)
    with pytest.warns(UserWarning, match="refitted on them.*optimistic"):
        model.calibrate()


def test_a_first_stage_alone_says_the_batches_are_not_used(monkeypatch):
    monkeypatch.setattr(
        _linear_stage, "choose_mix", lambda *a: (0.0, {m: float(m != 0.0) for m in _linear_stage.MIX_GRID})
    )
    scvi.settings.seed = 0
    adata = _log_data(300)
    adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 2 == 0, "b1", "b2")
    kdcpt.KDCPT.setup_anndata(adata, labels_key="phenotype", batch_key="batch")
    model = kdcpt.KDCPT(adata, **SMALL)
    with pytest.warns(UserWarning, match="does not read batch_key"):
        model.train(max_epochs=1, enable_progress_bar=False, enable_model_summary=False)


def test_save_load_round_trip(log_model, tmp_path):
    model = log_model
    assert {"linear_weight", "linear_bias", "mix"} <= set(model.module.state_dict())
    assert model.module.linear_weight.abs().sum() > 0
    proba = model.predict(soft=True)
    model.save(tmp_path / "m")
    loaded = kdcpt.KDCPT.load(tmp_path / "m", adata=model.adata)
    assert torch.equal(loaded.module.linear_weight, model.module.linear_weight)
    assert float(loaded.module.mix) == float(model.module.mix)
    assert loaded.extra_["linear_stage"]["C"] == model.linear_stage_.C
    assert loaded.linear_stage_ == model.linear_stage_  # what the fit found, as after train()
    np.testing.assert_array_equal(loaded.predict(soft=True).to_numpy(), proba.to_numpy())


def test_knockout_and_attribution_reach_the_linear_stage(log_model):
    model = log_model
    w = model.module.linear_weight.cpu().numpy()
    gene = int(np.abs(w).max(0).argmax())  # the gene the first stage weighs most
    X = model.adata.X
    column = np.asarray(X[:, gene].toarray() if sparse.issparse(X) else X[:, gene]).ravel()
    cells = np.flatnonzero(column > 0)[:50]
    x_g = column[cells]

    def zero(x, pos):
        x = x.clone()
        x[:, gene] = 0
        return x

    keys = ["logits", "logits_linear", "logits_network"]
    base = model._collect(keys, indices=cells)
    ko = model._collect(keys, indices=cells, transform=zero)
    # log input: the linear logits move by exactly -W[:, gene] * x_gene
    np.testing.assert_allclose(ko["logits_linear"] - base["logits_linear"], -x_g[:, None] * w[:, gene], atol=1e-4)
    assert np.abs(ko["logits"] - base["logits"]).max() > 1e-3
    # with the network's share at 0, the gradient of the logit margin is the linear stage's alone
    mix = float(model.module.mix)
    model.module.mix.fill_(0.0)
    try:
        out = next(model._iterate(indices=cells, attribute=np.zeros(len(cells), int)))[1]
        expected = np.broadcast_to(w[0] - w.mean(0), (len(cells), w.shape[1]))
        np.testing.assert_allclose(out["gradient"].cpu().numpy(), expected, atol=1e-4)
    finally:
        model.module.mix.fill_(mix)


def test_logits_of_the_first_stage_and_the_network_apart(log_model):
    model = log_model
    cells = np.arange(60)
    chosen = float(model.module.mix)
    model.module.mix.fill_(0.5)  # a share strictly between the first stage alone and all of the network
    try:
        combined = model.get_logits(indices=cells)
        first = model.get_logits(indices=cells, component="linear")
        network = model.get_logits(indices=cells, component="network")
    finally:
        model.module.mix.fill_(chosen)
    np.testing.assert_allclose(combined, first + 0.5 * network, atol=1e-4)
    # the first stage's are its regression on the log expression the model reads
    X = model.adata.X[cells]
    X = X.toarray() if sparse.issparse(X) else np.asarray(X)
    W, b = (t.cpu().numpy() for t in (model.module.linear_weight, model.module.linear_bias))
    np.testing.assert_allclose(first, np.minimum(X, model.module.input_max.cpu().numpy()) @ W.T + b, atol=1e-3)
    assert np.abs(network - first).max() > 1e-2
    with pytest.raises(ValueError, match="component must be one of"):
        model.get_logits(component="wide")


def test_backed_data(tmp_path):
    adata = kdcpt.datasets.synthetic(n_cells=400, n_genes=100, seed=1)
    adata.X = sparse.csr_matrix(adata.X)
    adata.write_h5ad(tmp_path / "backed.h5ad")
    backed = ad.read_h5ad(tmp_path / "backed.h5ad", backed="r")
    model = _train(backed, epochs=1)
    assert model.linear_stage_.n_cells == len(model.train_indices)  # every (labelled) training cell
    proba = model.predict(soft=True)
    in_memory = ad.read_h5ad(tmp_path / "backed.h5ad")
    np.testing.assert_allclose(model.predict(in_memory, soft=True).to_numpy(), proba.to_numpy(), atol=1e-5)


def test_stratified_subsample_keeps_every_phenotype():
    codes = np.r_[np.zeros(10_000, int), np.ones(3, int), np.full(500, 2)]
    keep = _linear_stage.stratified_subsample(codes, 1000, np.random.default_rng(0))
    assert len(keep) <= 1010 and set(codes[keep]) == {0, 1, 2} and (codes[keep] == 1).sum() == 3


def test_off_switch_keeps_the_network_alone():
    model = _train(_log_data(300), epochs=1, linear_stage=False)
    assert model.linear_stage_ is None and "linear_weight" not in model.module.state_dict()
    np.testing.assert_array_equal(model.get_logits(component="network"), model.get_logits())
    with pytest.raises(ValueError, match="no first stage"):
        model.get_logits(component="linear")


def test_knockout_warns_about_a_fixed_embedding_only_where_the_prediction_reads_it():
    adata = _log_data(300)
    adata.obsm["X_emb"] = np.asarray(adata.X[:, :8].toarray() if sparse.issparse(adata.X) else adata.X[:, :8])
    scvi.settings.seed = 0
    kdcpt.KDCPT.setup_anndata(adata, labels_key="phenotype", embedding_key="X_emb")
    model = kdcpt.KDCPT(adata, **SMALL)
    model.train(max_epochs=1, enable_progress_bar=False, enable_model_summary=False)
    kw = {"inplace": False, "progress": False}
    model.module.mix.fill_(0.0)  # the first stage alone: the embedding does not reach the prediction
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model.knockout("Reg_P1", **kw)
    model.module.mix.fill_(0.5)  # now it does, and the warning says what the knockout reaches
    with pytest.warns(UserWarning, match="the convex first stage and the gene-token branch"):
        fixed = model.knockout("Reg_P1", **kw)
    assert fixed.params["prediction_branch_fixed"] is True


def test_query_values_clipped_at_the_registered_maximum(log_model):
    """A query gene far above anything the registered cells showed is read at their maximum; the
    registered cells themselves are untouched; clip_input=False leaves the value as it is."""
    adata = log_model.adata
    X = adata.X.toarray() if sparse.issparse(adata.X) else np.asarray(adata.X)
    top = log_model.module.input_max.cpu().numpy()
    np.testing.assert_allclose(top, X.max(0), rtol=1e-6)
    weight = log_model.module.linear_weight.cpu().numpy()
    gene = int(np.abs(weight[:, X.max(0) > 0]).max(0).argmax())
    gene = int(np.flatnonzero(X.max(0) > 0)[gene])  # the first stage's strongest gene
    cells = adata[:50].copy()
    at_max, beyond = cells.copy(), cells.copy()
    at_max.X = np.asarray(at_max.X.toarray() if sparse.issparse(at_max.X) else at_max.X).copy()
    beyond.X = at_max.X.copy()
    at_max.X[:, gene] = top[gene]
    beyond.X[:, gene] = top[gene] + 5.0
    p_max = log_model.predict(at_max, soft=True).to_numpy()
    np.testing.assert_allclose(log_model.predict(beyond, soft=True).to_numpy(), p_max, atol=1e-6)

    # attributions and gradients of a value above the maximum are those at the maximum (not 0)
    def set_to(value):
        def transform(x, pos):
            x = x.clone()
            x[:, gene] = value
            return x

        return transform

    rows = np.arange(20)
    target = np.zeros(len(rows), int)
    at = next(log_model._iterate(indices=rows, attribute=target, transform=set_to(float(top[gene]))))[1]
    above = next(log_model._iterate(indices=rows, attribute=target, transform=set_to(float(top[gene]) + 5.0)))[1]
    assert (at["gradient"][:, gene].abs() > 0).all()
    torch.testing.assert_close(above["attribution"], at["attribution"])

    unclipped = _train(_log_data(), epochs=1, clip_input=False)
    assert torch.isinf(unclipped.module.input_max).all()
    q_max = unclipped.predict(at_max, soft=True).to_numpy()
    assert np.abs(unclipped.predict(beyond, soft=True).to_numpy() - q_max).max() > 1e-3


def test_saved_model_keeps_its_clipping(log_model, tmp_path):
    log_model.save(str(tmp_path / "m"), overwrite=True)
    loaded = kdcpt.KDCPT.load(str(tmp_path / "m"), adata=log_model.adata)
    torch.testing.assert_close(loaded.module.input_max, log_model.module.input_max)


def test_model_saved_before_clipping_loads_without_it(log_model, tmp_path):
    import json

    path = tmp_path / "old"
    log_model.save(str(path), overwrite=True)
    weights = torch.load(path / "model.pt", weights_only=True)
    del weights["input_max"]  # as saved before query clipping existed
    torch.save(weights, path / "model.pt")
    meta = json.loads((path / "model.json").read_text())
    for part in meta["init_params"].values():
        if isinstance(part, dict):
            part.pop("clip_input", None)
    (path / "model.json").write_text(json.dumps(meta))
    loaded = kdcpt.KDCPT.load(str(path), adata=log_model.adata)
    assert torch.isinf(loaded.module.input_max).all() and loaded.module.clip_input is False


@pytest.mark.parametrize("scheme", linear.SCHEMES)
def test_two_phenotypes_get_opposite_weights(scheme):
    # scikit-learn gives a binary fit one row of coefficients: copied to both phenotypes, their
    # logits differed only by the bias and the first stage predicted by chance
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 6))
    y = (X[:, 0] + 0.3 * X[:, 1] > 0).astype(int)
    W, b, info = linear.fit(sparse.csr_matrix(X), y, 3, seed=0, scheme=scheme)
    pred = (X @ W.T + b).argmax(1)
    assert (pred == y).mean() > 0.95
    np.testing.assert_allclose(W[0], -W[1], rtol=1e-6)
    assert not W[2].any() and b[2] == -30.0  # a phenotype without training cells is never predicted


def test_one_vs_rest_logits_give_its_prediction():
    rng = np.random.default_rng(1)
    X = rng.poisson(1.0, size=(400, 20)).astype(float)
    y = rng.integers(0, 4, 400)
    X[y == 1, 3] += 4.0
    X[y == 2, 5] += 4.0
    X = sparse.csr_matrix(X)
    clf = linear.logistic_regression(0.1, max_iter=1000, scheme="ovr").fit(X, y)
    W, b, _ = linear.fit(X, y, 4, seed=0, scheme="ovr", C=0.1)
    np.testing.assert_array_equal(np.asarray(X @ W.T + b).argmax(1), clf.predict(X))
    assert len(clf.estimators_) == 4  # one binary regression per phenotype
    with pytest.raises(ValueError, match="scheme must be one of"):
        linear.logistic_regression(0.1, 100, scheme="softmax")


def test_two_phenotype_model_has_a_working_first_stage():
    adata = _log_data(600)
    keep = adata.obs["phenotype"].isin(adata.obs["phenotype"].cat.categories[:2]).to_numpy()
    adata = adata[keep].copy()
    adata.obs["phenotype"] = adata.obs["phenotype"].cat.remove_unused_categories()
    model = _train(adata, epochs=2)
    W = model.module.linear_weight.cpu().numpy()
    assert not np.allclose(W[0], W[1])
    # the linear stage alone on the validation cells (mix 0): far below chance's log-loss, log 2
    assert model.linear_stage_.mix_scores[0.0] < 0.5 * np.log(2)


def test_one_vs_rest_scheme_reaches_the_model(monkeypatch):
    schemes = []

    def spy(*args, **kwargs):
        schemes.append(kwargs["scheme"])
        return linear.fit(*args, **kwargs)

    monkeypatch.setattr(_linear_stage, "fit", spy)
    adata = _log_data(300)
    model = _train(adata, epochs=1, linear_scheme="ovr")
    assert schemes and set(schemes) == {"ovr"}  # the fit (and a refit with the validation cells)
    W = model.module.linear_weight.cpu().numpy()
    assert np.isfinite(W).all() and np.abs(W).sum(1).min() > 0
    with pytest.raises(ValueError, match="linear_scheme must be one of"):
        kdcpt.KDCPT(adata, linear_scheme="softmax")
