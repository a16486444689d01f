"""Reliability (issue 13): every bad input a clear package error before anything is written,
nothing of the user's overwritten, backed sparse data, query batches unseen at training.

Each test is numbered after the case of the issue it covers.
"""

from __future__ import annotations

import os
import time

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scvi
from scipy import sparse

import scanpy_kdcpt as kdcpt
from scanpy_kdcpt import cli, writers
from scanpy_kdcpt._errors import (
    InvalidInputError,
    KDCPTError,
    KeyNotFoundError,
    ModelFileError,
    NotTrainedError,
)
from scanpy_kdcpt.results import Predictions


def _data(n_cells: int = 240, seed: int = 0) -> ad.AnnData:
    return kdcpt.datasets.synthetic(n_cells, 60, 3, seed=seed)


def _train(adata: ad.AnnData, epochs: int = 1, **setup) -> kdcpt.KDCPT:
    setup.setdefault("labels_key", "phenotype")
    kdcpt.KDCPT.setup_anndata(adata, **setup)
    model = kdcpt.KDCPT(adata, n_tokens=32, n_selected=8, d_model=16, n_hidden=32, n_pcs=10)
    model.train(max_epochs=epochs, enable_progress_bar=False, enable_model_summary=False)
    return model


@pytest.fixture(scope="module")
def trained():
    scvi.settings.seed = 0
    adata = _data()
    return _train(adata), adata


def _snapshot(adata: ad.AnnData):
    return adata.obs.copy(), adata.var.copy(), set(adata.uns.keys())


def _unchanged(adata: ad.AnnData, snap) -> None:
    obs, var, uns = snap
    pd.testing.assert_frame_equal(adata.obs, obs)
    pd.testing.assert_frame_equal(adata.var, var)
    assert set(adata.uns.keys()) == uns


def test_error_hierarchy():
    assert issubclass(InvalidInputError, ValueError) and issubclass(InvalidInputError, KDCPTError)
    assert issubclass(NotTrainedError, ValueError) and issubclass(ModelFileError, KDCPTError)
    assert issubclass(KeyNotFoundError, KeyError) and issubclass(KeyNotFoundError, KDCPTError)
    assert str(KeyNotFoundError("no 'x' here")) == "no 'x' here"  # unquoted


# 1 ---------------------------------------------------------------------------------------
def test_1_duplicate_gene_names_refused_at_setup():
    adata = _data()
    adata.var_names = [adata.var_names[0], adata.var_names[0], *adata.var_names[2:]]
    snap = _snapshot(adata)
    with pytest.raises(InvalidInputError, match="var_names_make_unique"):
        kdcpt.KDCPT.setup_anndata(adata, labels_key="phenotype")
    _unchanged(adata, snap)


# 2 ---------------------------------------------------------------------------------------
def test_2_cli_out_is_a_file_fails_before_training(tmp_path, capsys):
    path = tmp_path / "small.h5ad"
    _data().write_h5ad(path)
    out = tmp_path / "a_file"
    out.write_text("not a folder")
    t0 = time.time()
    code = cli.main(["run", str(path), "--labels", "phenotype", "--epochs", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "is a file" in err and "Traceback" not in err
    assert "training on" not in err  # refused before any training
    assert time.time() - t0 < 20


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc (an unwritable location)")
def test_2_cli_out_unwritable_exits_2(tmp_path, capsys):
    path = tmp_path / "small.h5ad"
    _data().write_h5ad(path)
    code = cli.main(["run", str(path), "--labels", "phenotype", "--epochs", "1", "--out", "/proc/kdcpt_out"])
    err = capsys.readouterr().err
    assert code == 2
    assert "cannot be written" in err and len(err.strip().splitlines()) == 1


# 3 ---------------------------------------------------------------------------------------
def test_3_normalised_but_not_logged_refused():
    adata = _data()
    sc.pp.normalize_total(adata, target_sum=1e6)
    with pytest.raises(InvalidInputError, match="not log-transformed.*log1p"):
        kdcpt.KDCPT.setup_anndata(adata, labels_key="phenotype")
    sc.pp.log1p(adata)  # the fix the message names works
    kdcpt.KDCPT.setup_anndata(adata, labels_key="phenotype")


def test_3_query_normalised_but_not_logged_refused():
    adata = _data()
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    model = _train(adata)
    query = _data(seed=1)
    sc.pp.normalize_total(query, target_sum=1e6)
    with pytest.raises(InvalidInputError, match="not log-transformed"):
        model.predict(query)


def test_3_non_integer_counts_with_data_type_counts():
    adata = _data()
    adata.X = adata.X * 3.1  # ambient-corrected counts (SoupX, CellBender) are not integers
    with pytest.raises(InvalidInputError, match="not log-transformed.*data_type='counts'"):
        kdcpt.KDCPT.setup_anndata(adata, labels_key="phenotype")
    model = _train(adata, data_type="counts")  # the fix the message names works
    query = _data(seed=1)
    query.X = query.X * 3.1
    pred = model.predict(query)  # a query of the same kind of values too
    assert len(pred) == query.n_obs
    with pytest.raises(InvalidInputError, match="looks like log values"):
        query.X = np.log1p(query.X)
        model.predict(query)


def test_3_a_phenotype_named_like_a_set_is_refused_before_sets_are_written():
    adata = _data()
    adata.obs["phenotype"] = adata.obs["phenotype"].cat.rename_categories({"P0": "T|NK"})
    model = _train(adata)
    model.calibrate()
    snap = _snapshot(adata)
    with pytest.raises(InvalidInputError, match=r"\['T\|NK'\] contain '\|'.*rename_categories"):
        model.annotate(conformal_alpha=0.1)
    _unchanged(adata, snap)
    model.annotate()  # without sets the name is fine


# 4 ---------------------------------------------------------------------------------------
def test_4_untrained_model_writes_nothing():
    adata = _data()
    kdcpt.KDCPT.setup_anndata(adata, labels_key="phenotype")
    model = kdcpt.KDCPT(adata, n_pcs=10)
    snap = _snapshot(adata)
    for call in (model.annotate, model.predict, lambda: model.knockout([adata.var_names[0]]), model.calibrate):
        with pytest.raises(NotTrainedError, match="train"):
            call()
    _unchanged(adata, snap)


# 5 ---------------------------------------------------------------------------------------
def test_5_colliding_probability_columns_refused():
    adata = _data()
    adata.obs["lab"] = adata.obs["phenotype"].cat.rename_categories({"P0": "a/b", "P1": "a_b"})
    snap = _snapshot(adata)
    with pytest.raises(InvalidInputError, match="'a_b' and 'a/b'|'a/b' and 'a_b'"):
        kdcpt.KDCPT.setup_anndata(adata, labels_key="lab")
    _unchanged(adata, snap)


def test_5_writer_refuses_colliding_columns_before_writing():
    adata = _data(30)
    proba = pd.DataFrame(np.full((30, 2), 0.5), index=adata.obs_names, columns=["a/b", "a_b"])
    result = Predictions(proba=proba, labels=pd.Series([None] * 30, index=adata.obs_names, dtype=object))
    snap = _snapshot(adata)
    with pytest.raises(InvalidInputError, match="kdcpt_proba_a_b"):
        writers.write_predictions(adata, result)
    _unchanged(adata, snap)


# 6 ---------------------------------------------------------------------------------------
def test_6_integer_labels():
    adata = _data()
    adata.obs["code"] = adata.obs["phenotype"].cat.codes.astype(int)
    model = _train(adata, labels_key="code")
    model.annotate()
    assert list(adata.obs["kdcpt_pred"].cat.categories) == ["0", "1", "2"]
    assert adata.obs["code"].dtype.kind == "i"  # the user's column is left as it was


# 7 ---------------------------------------------------------------------------------------
def test_7_labels_column_named_like_an_output_is_not_overwritten():
    adata = _data()
    adata.obs["kdcpt_pred"] = adata.obs["phenotype"].copy()
    model = _train(adata, labels_key="kdcpt_pred")
    snap = _snapshot(adata)
    with pytest.raises(InvalidInputError, match="key_added"):
        model.annotate()
    _unchanged(adata, snap)  # nothing half-written
    model.annotate(key_added="mine")  # the fix the message names
    pd.testing.assert_series_equal(adata.obs["kdcpt_pred"], snap[0]["kdcpt_pred"])
    assert "mine_pred" in adata.obs


# 8 ---------------------------------------------------------------------------------------
def test_8_backed_sparse_anndata(tmp_path):
    adata = _data()
    adata.X = sparse.csr_matrix(adata.X)
    path = tmp_path / "backed.h5ad"
    adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    model = _train(backed)
    proba = model.predict(soft=True)
    model.annotate()
    result = model.knockout([str(backed.var_names[0])], n_null=2)
    assert "kdcpt_pred" in backed.obs and len(result.summary) == 1
    # the same model on the same values in memory gives the same probabilities
    in_memory = ad.read_h5ad(path)
    np.testing.assert_allclose(model.predict(in_memory, soft=True).to_numpy(), proba.to_numpy(), atol=1e-5)
    # a backed query with the genes in another order is aligned block by block
    in_memory[:, ::-1].copy().write_h5ad(tmp_path / "reordered.h5ad")
    query = ad.read_h5ad(tmp_path / "reordered.h5ad", backed="r")
    np.testing.assert_allclose(model.predict(query, soft=True).to_numpy(), proba.to_numpy(), atol=1e-5)
    # the default chain (CytoTRACE here: no root, time or velocity) reads the backed matrix too
    backed_chain = model.compute_transitions(inplace=False)
    assert backed_chain.direction["kind"] == "cytotrace"
    np.testing.assert_allclose(backed_chain.cell_chain.sum(1), 1.0)
    # cross-fitting reads each fold's cells into memory (a backed view cannot be copied)
    crossfit = model.get_cross_fitted_predictions(n_folds=2, max_epochs=1)
    assert crossfit.proba.shape == proba.shape and np.isfinite(crossfit.proba.to_numpy()).all()


# 9 ---------------------------------------------------------------------------------------
def test_9_load_refuses_other_data_type(trained, tmp_path):
    model, adata = trained
    assert model.data_type_ == "counts"
    model.save(str(tmp_path / "m"))
    logged = adata.copy()
    sc.pp.normalize_total(logged)
    sc.pp.log1p(logged)
    with pytest.raises(InvalidInputError, match="trained on counts"):
        kdcpt.KDCPT.load(str(tmp_path / "m"), adata=logged)


# 10 --------------------------------------------------------------------------------------
def test_10_save_overwrite_drops_stale_anndata(trained, tmp_path):
    model, _ = trained
    d = str(tmp_path / "m")
    model.save(d, save_anndata=True)
    assert os.path.exists(os.path.join(d, "adata.h5ad"))
    model.save(d, overwrite=True)  # without save_anndata
    assert not os.path.exists(os.path.join(d, "adata.h5ad"))
    with pytest.raises(InvalidInputError, match="Pass adata="):
        kdcpt.KDCPT.load(d)


# 11 --------------------------------------------------------------------------------------
def test_11_truncated_weights(trained, tmp_path):
    model, adata = trained
    d = str(tmp_path / "m")
    model.save(d)
    with open(os.path.join(d, "model.pt"), "r+b") as f:
        f.truncate(100)
    with pytest.raises(ModelFileError, match="truncated.*[Ss]ave the model again"):
        kdcpt.KDCPT.load(d, adata=adata)


def test_11_corrupt_json(trained, tmp_path):
    model, adata = trained
    d = str(tmp_path / "m")
    model.save(d)
    with open(os.path.join(d, "model.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(ModelFileError, match="corrupt"):
        kdcpt.KDCPT.load(d, adata=adata)


def test_11_label_unseen_at_training_on_load(trained, tmp_path):
    model, adata = trained
    d = str(tmp_path / "m")
    model.save(d)
    other = adata.copy()
    for k in ("_scvi_uuid", "_scvi_manager_uuid"):
        other.uns.pop(k, None)
    other.obs["phenotype"] = other.obs["phenotype"].cat.add_categories(["NEW"])
    other.obs.iloc[0, other.obs.columns.get_loc("phenotype")] = "NEW"
    with pytest.raises(InvalidInputError, match="never seen at training.*predict"):
        kdcpt.KDCPT.load(d, adata=other)
    assert model.predict(other).shape == (other.n_obs,)  # the query route the message names


def test_11_empty_query(trained):
    model, adata = trained
    with pytest.raises(InvalidInputError, match="no cells"):
        model.predict(adata[:0].copy())


# 12 --------------------------------------------------------------------------------------
def test_12_all_zero_matrix_refused():
    adata = _data()
    adata.X = sparse.csr_matrix(adata.shape, dtype=np.float32)
    with pytest.raises(InvalidInputError, match="all zeros"):
        kdcpt.KDCPT.setup_anndata(adata, labels_key="phenotype")


def test_12_view_anndata_setup(trained, capsys):
    model, _ = trained
    model.view_anndata_setup()
    assert "labels_key" in capsys.readouterr().out


def test_12_cli_quiet_and_no_stale_figures(tmp_path, capfd):
    path = tmp_path / "small.h5ad"
    _data().write_h5ad(path)
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    stale = out / "figures" / "knockout.png"  # from an older run with knockouts
    stale.write_bytes(b"old")
    argv = ["run", str(path), "--labels", "phenotype", "--epochs", "1", "--knockout-top", "0", "--quiet"]
    code = cli.main([*argv, "--out", str(out)])
    captured = capfd.readouterr()
    assert code == 0
    assert not stale.exists()
    assert (out / "figures" / "transition_matrix.png").exists()
    text = captured.out + captured.err
    assert "GPU available" not in text and "litlogger" not in text


# issue 11, item 5 --------------------------------------------------------------------------
def _batched(n_cells: int = 600, seed: int = 0) -> ad.AnnData:
    adata = kdcpt.datasets.synthetic(n_cells, 60, 3, seed=seed)
    rng = np.random.default_rng(seed + 1000)  # not the generator's own stream
    adata.obs["donor"] = pd.Categorical(rng.choice(["d0", "d1", "d2"], adata.n_obs))
    return adata


def test_query_from_donor_unseen_at_training():
    scvi.settings.seed = 0
    full = _batched()
    held = (full.obs["donor"] == "d2").to_numpy()
    ref, query = full[~held].copy(), full[held].copy()
    model = _train(ref, epochs=15, batch_key="donor")
    assert model.module.batch_embedding is not None
    with pytest.warns(UserWarning, match="unseen at training.*batch-free"):
        pred = model.predict(query)
    truth = query.obs["phenotype"].astype(str).to_numpy()
    acc = float((pred.astype(str).to_numpy() == truth).mean())
    assert acc >= 0.6, acc  # chance: 1/3
    # batch-free = the mean of the training batches' embeddings: neither known donor's prediction,
    # and as accurate as pretending the cells came from either known donor
    as_d0, as_d1 = query.copy(), query.copy()
    as_d0.obs["donor"], as_d1.obs["donor"] = "d0", "d1"
    p_free = model.predict(query, soft=True).to_numpy()
    p0, p1 = model.predict(as_d0, soft=True).to_numpy(), model.predict(as_d1, soft=True).to_numpy()
    assert not np.allclose(p_free, p0) and not np.allclose(p_free, p1)
    acc_known = [float((p.argmax(1) == pd.Index(model.classes_).get_indexer(truth)).mean()) for p in (p0, p1)]
    assert acc >= min(acc_known) - 0.05, (acc, acc_known)
    # annotate writes into the query; its donor column is left as it was
    model.annotate(query)
    assert "kdcpt_pred" in query.obs and set(query.obs["donor"]) == {"d2"}


# 3 (large data) ----------------------------------------------------------------------------
def test_encoder_pca_streamed_in_blocks_matches_scikit_learn():
    from sklearn.decomposition import PCA

    from scanpy_kdcpt._expression import log_normalize
    from scanpy_kdcpt.model._data import fit_pca

    rng = np.random.default_rng(0)
    X = sparse.csr_matrix(rng.poisson(rng.gamma(0.5, 1, 80), (500, 80)).astype(np.float32))
    mean, loadings, std = fit_pca(X, 10, seed=0, data_type="counts", chunk=64)  # 8 blocks
    ref = PCA(10, svd_solver="covariance_eigh").fit(log_normalize(X, "counts").toarray())
    np.testing.assert_allclose(mean, ref.mean_, atol=1e-5)
    np.testing.assert_allclose(loadings, ref.components_.T, atol=1e-3)  # signs included
    np.testing.assert_allclose(std, np.sqrt(ref.explained_variance_), rtol=1e-4)
