"""setup_anndata: registration, data-type detection and clear errors for bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import scanpy_kdcpt as kdcpt

KDCPT = kdcpt.KDCPT


@pytest.fixture
def adata():
    return kdcpt.datasets.synthetic(n_cells=200, seed=0)


def _setup_type(a, labels_key="phenotype", **kw):
    KDCPT.setup_anndata(a, labels_key=labels_key, **kw)
    return KDCPT._get_most_recent_anndata_manager(a).registry["setup_args"]["data_type"]


def test_counts_and_log_data_are_detected(adata):
    assert _setup_type(adata) == "counts"
    log = adata.copy()
    log.X = log.X.log1p()
    assert _setup_type(log) == "log"
    assert _setup_type(adata.copy(), data_type="log") == "log"  # overridable


def test_missing_labels_key(adata):
    with pytest.raises(KeyError, match="labels_key 'cell_type' is not a column of adata.obs.*phenotype"):
        KDCPT.setup_anndata(adata, labels_key="cell_type")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_values(adata, bad):
    X = adata.X.toarray()
    X[3, 4] = bad
    adata.X = sparse.csr_matrix(X)
    with pytest.raises(ValueError, match="1 NaN or infinite values"):
        KDCPT.setup_anndata(adata, labels_key="phenotype")


def test_scaled_values_are_refused_with_the_fix():
    import scanpy as sc

    raw = sc.datasets.pbmc68k_reduced()  # z-scored values in X
    with pytest.raises(ValueError, match="negative values.*scaled.*counts or log-normalised"):
        KDCPT.setup_anndata(raw, labels_key="bulk_labels")


def test_single_phenotype(adata):
    adata.obs["one"] = "A"
    with pytest.raises(ValueError, match="at least two"):
        KDCPT.setup_anndata(adata, labels_key="one")


def test_missing_layer(adata):
    with pytest.raises(KeyError, match="Layer 'counts' is not in adata.layers"):
        KDCPT.setup_anndata(adata, labels_key="phenotype", layer="counts")


def test_missing_or_bad_embedding(adata):
    with pytest.raises(KeyError, match="embedding_key 'X_scgpt' is not in adata.obsm"):
        KDCPT.setup_anndata(adata, labels_key="phenotype", embedding_key="X_scgpt")
    emb = np.random.default_rng(0).normal(size=(adata.n_obs, 8))
    emb[0, 0] = np.nan
    adata.obsm["X_emb"] = emb
    with pytest.raises(ValueError, match=r"obsm\['X_emb'\] contains NaN"):
        KDCPT.setup_anndata(adata, labels_key="phenotype", embedding_key="X_emb")


def test_batch_key_is_registered_and_used(adata):
    KDCPT.setup_anndata(adata, labels_key="phenotype")
    plain = KDCPT(adata, n_tokens=16, n_selected=4, d_model=16, n_hidden=16)
    assert plain.module.batch_embedding is None
    adata.obs["batch"] = pd.Categorical(np.where(np.arange(adata.n_obs) % 2 == 0, "b1", "b2"))
    KDCPT.setup_anndata(adata, labels_key="phenotype", batch_key="batch")
    manager = KDCPT._get_most_recent_anndata_manager(adata)
    assert manager.registry["setup_args"]["batch_key"] == "batch"
    assert manager.summary_stats["n_batch"] == 2
    model = KDCPT(adata, n_tokens=16, n_selected=4, d_model=16, n_hidden=16)
    assert model.module.batch_embedding.num_embeddings == 2  # the prediction branch sees the batch
    model.is_trained_ = True
    query = adata[:20].copy()
    proba = model.predict(query, soft=True)
    query.obs["batch"] = pd.Categorical(np.where(query.obs["batch"] == "b1", "b2", "b1"))  # swap the batches
    assert not np.allclose(model.predict(query, soft=True).to_numpy(), proba.to_numpy())
    del query.obs["batch"]
    with pytest.raises(KeyError, match="batch_key 'batch'"):
        model.predict(query)
    with pytest.raises(KeyError, match="batch_key 'lane' is not a column"):
        KDCPT.setup_anndata(adata, labels_key="phenotype", batch_key="lane")


def test_prior_checks(adata):
    with pytest.raises(KeyError, match="prior_key 'tf' is not a column of adata.var.*is_transcription_factor"):
        KDCPT.setup_anndata(adata, labels_key="phenotype", prior_key="tf")
    adata.var["bad"] = 2.0
    with pytest.raises(ValueError, match=r"boolean or numbers in \[0, 1\]"):
        KDCPT.setup_anndata(adata, labels_key="phenotype", prior_key="bad")


def test_prior_reaches_the_module(adata):
    KDCPT.setup_anndata(adata, labels_key="phenotype", prior_key="is_tf")
    model = KDCPT(adata)
    np.testing.assert_array_equal(model.module.prior.numpy().astype(bool), adata.var["is_tf"].to_numpy())


def test_a_numeric_column_is_refused_as_labels(adata):
    # a first-use slip: labels_key="n_counts" trained a model of hundreds of "phenotypes"
    adata.obs["n_counts"] = np.asarray(adata.X.sum(1)).ravel() + 0.5
    with pytest.raises(kdcpt._errors.InvalidInputError, match=r"'n_counts'\] holds continuous numbers.*cell types"):
        KDCPT.setup_anndata(adata, labels_key="n_counts")
    adata.obs["cell_id"] = np.arange(adata.n_obs)
    with pytest.raises(kdcpt._errors.InvalidInputError, match=r"'cell_id'\] holds almost one value per cell"):
        KDCPT.setup_anndata(adata, labels_key="cell_id")
    adata.obs["leiden"] = adata.obs["phenotype"].cat.codes.to_numpy()  # integer cluster ids are labels
    assert _setup_type(adata, labels_key="leiden") == "counts"


def test_a_data_type_the_values_contradict_is_refused_or_warned(adata):
    counts = adata.copy()
    counts.X = counts.X * 10  # integer counts up to 260: no log-normalised value is that large
    with pytest.raises(kdcpt._errors.InvalidInputError, match=r"data_type='log'.*integer values up to 260.*counts"):
        _setup_type(counts, data_type="log")
    log = adata.copy()
    log.X = log.X.log1p()
    with pytest.warns(UserWarning, match=r"data_type='counts'.*non-integer values no larger than.*data_type='log'"):
        assert _setup_type(log, data_type="counts") == "counts"


def test_label_categories_without_cells_are_not_phenotypes(adata):
    # mdata[cells].copy() keeps unused categories; they became phenotypes the model predicted with no example
    adata.obs["phenotype"] = (
        adata.obs["phenotype"].cat.add_categories(["Ghost"]).cat.reorder_categories(["P3", "Ghost", "P0", "P1", "P2"])
    )
    KDCPT.setup_anndata(adata, labels_key="phenotype")
    assert list(KDCPT(adata).classes_) == ["P3", "P0", "P1", "P2"]  # the column's order, without Ghost
    assert list(adata.obs["phenotype"].cat.categories) == [
        "P3",
        "Ghost",
        "P0",
        "P1",
        "P2",
    ]  # the user's column as it was


def _classes(a, **kw):
    KDCPT.setup_anndata(a, **kw)
    state = KDCPT._get_most_recent_anndata_manager(a).get_state_registry("labels")
    return [c for c in state.categorical_mapping if c != state.unlabeled_category]  # the phenotypes


def test_labels_a_user_would_mean_otherwise(adata):
    from scanpy_kdcpt._errors import InvalidInputError

    text = adata.obs["phenotype"].astype(str).to_numpy().copy()
    # "" for "no annotation" became a phenotype, and the annotated AnnData could not be written
    empty = text.copy()
    empty[:20] = ""
    adata.obs["empty"] = empty
    with pytest.raises(InvalidInputError, match=r"20 cells with empty text.*unlabeled_category=''"):
        KDCPT.setup_anndata(adata, labels_key="empty")
    assert "" not in _classes(adata, labels_key="empty", unlabeled_category="")
    # the text astype(str) makes of NaN, and two spellings of one label, are trained as phenotypes: said
    nan = text.copy()
    nan[:20] = "nan"
    adata.obs["nan_text"] = nan
    with pytest.warns(UserWarning, match=r"20 cells 'nan'.*unlabeled_category='nan'"):
        KDCPT.setup_anndata(adata, labels_key="nan_text")
    spaced = text.copy()
    spaced[:5] = [t + " " for t in spaced[:5]]
    adata.obs["spaced"] = spaced
    with pytest.warns(UserWarning, match="differ only in spaces or case"):
        KDCPT.setup_anndata(adata, labels_key="spaced")


def test_integer_labels_keep_integer_names(adata):
    codes = adata.obs["phenotype"].cat.codes.to_numpy().astype(int)
    # -1 as the unlabelled code (scikit-learn's convention) failed inside pandas
    adata.obs["cluster"] = np.where(np.arange(adata.n_obs) < 30, -1, codes)
    names = _classes(adata, labels_key="cluster", unlabeled_category=-1)
    assert names == [str(c) for c in np.unique(codes)]  # in their order (scvi-tools' swap put '3' first)
    # text labels with a number as the unlabelled category: scvi-tools compared it as an integer
    adata.obs["text"] = np.where(np.arange(adata.n_obs) < 30, "0", adata.obs["phenotype"].astype(str))
    assert "0" not in _classes(adata, labels_key="text", unlabeled_category=0)
    # integer ids with a missing value arrive as floats: the phenotypes were "0.0", "1.0", ... and
    # a query labelled with integers then matched none of them
    ids = codes.astype(float)
    ids[:10] = np.nan
    adata.obs["ids"] = ids
    assert sorted(_classes(adata, labels_key="ids")) == sorted(str(c) for c in np.unique(codes))


def test_a_batch_column_with_missing_values_is_refused_before_anything_is_written(adata):
    from scanpy_kdcpt._errors import InvalidInputError

    batch = np.where(np.arange(adata.n_obs) % 2 == 0, "b1", "b2").astype(object)
    batch[:7] = np.nan
    adata.obs["donor"] = batch
    columns = list(adata.obs.columns)
    with pytest.raises(InvalidInputError, match=r"'donor'\] has 7 cells without a batch") as error:
        KDCPT.setup_anndata(adata, labels_key="phenotype", batch_key="donor")
    assert list(adata.obs.columns) == columns
    fix = str(error.value).split("(e.g. ", 1)[1].split(") or leave", 1)[0]  # the fix the message offers works
    exec(fix, {"adata": adata})
    assert set(adata.obs["donor"]) == {"b1", "b2", "unknown"}  # not a batch named 'nan'
    KDCPT.setup_anndata(adata, labels_key="phenotype", batch_key="donor")


def test_an_empty_prior_and_a_sparse_embedding_are_said(adata):
    from scanpy_kdcpt._errors import InvalidInputError

    adata.var["none"] = False  # e.g. the TF list matched against Ensembl IDs
    with pytest.warns(UserWarning, match="flags no gene.*Ensembl"):
        KDCPT.setup_anndata(adata, labels_key="phenotype", prior_key="none")
    adata.var["all"] = True  # every gene a regulator (krumsiek11): the GRN's candidates, not a mistake
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        KDCPT.setup_anndata(adata, labels_key="phenotype", prior_key="all")
    adata.obsm["X_emb"] = sparse.csr_matrix(np.random.default_rng(0).normal(size=(adata.n_obs, 8)))
    with pytest.raises(InvalidInputError, match=r"'X_emb'\] is a sparse matrix.*toarray"):
        KDCPT.setup_anndata(adata, labels_key="phenotype", embedding_key="X_emb")
