"""Property-based test (issue 13): over shapes, dtypes, sparsity formats and label patterns,
setup → one training epoch → annotate either succeeds with valid outputs or raises a package
error; the input's ``X`` and the user's ``.obs`` / ``.var`` columns are never modified.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scvi
from scipy import sparse

import scanpy_kdcpt as kdcpt
from scanpy_kdcpt._errors import KDCPTError

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def anndatas(draw):
    n_cells = draw(st.integers(12, 48))
    n_genes = draw(st.integers(3, 24))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["counts", "log", "zeros", "negative", "nan"]))
    X = rng.poisson(draw(st.sampled_from([0.05, 1.0, 5.0])), (n_cells, n_genes)).astype(float)
    if kind == "log":
        X = np.log1p(X / np.maximum(X.sum(1, keepdims=True), 1) * 1e4)
    elif kind == "zeros":
        X[:] = 0
    elif kind == "negative":
        X[0, 0] = -1.0
    elif kind == "nan":
        X[0, 0] = np.nan
    X = X.astype(draw(st.sampled_from([np.float32, np.float64, np.int64] if kind == "counts" else [np.float32])))
    fmt = draw(st.sampled_from(["dense", "csr", "csc"]))
    if fmt != "dense":
        X = getattr(sparse, f"{fmt}_matrix")(X)
    n_classes = draw(st.integers(1, 4))
    pattern = draw(st.sampled_from(["str", "int", "missing", "slash"]))
    codes = rng.integers(0, n_classes, n_cells)
    if pattern == "int":
        labels = pd.Series(codes)
    elif pattern == "slash":
        labels = pd.Series(np.where(codes == 0, "a/b", np.where(codes == 1, "a_b", "c" + codes.astype(str))))
    else:
        labels = pd.Series(np.char.add("type ", codes.astype(str)).astype(object))
        if pattern == "missing":
            labels[rng.random(n_cells) < 0.3] = None
    obs = pd.DataFrame({"label": labels.to_numpy()}, index=[f"c{i}" for i in range(n_cells)])
    if pattern != "int":
        obs["label"] = obs["label"].astype("category")
    var = pd.DataFrame({"tf": rng.random(n_genes) < 0.3}, index=[f"g{i}" for i in range(n_genes)])
    return ad.AnnData(X=X, obs=obs, var=var)


#: one setting for both tests: the same 20 examples, in the same order, on every run
EXAMPLES = settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def _setup_train_annotate(adata) -> str:
    """Run setup → one epoch → annotate on ``adata`` and check the contract; return the outcome
    (``"ok"`` or the name of the package error raised)."""
    scvi.settings.seed = 0
    X0 = adata.X.copy()
    obs0, var0 = adata.obs.copy(), adata.var.copy()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kdcpt.KDCPT.setup_anndata(adata, labels_key="label", prior_key="tf")
            model = kdcpt.KDCPT(adata, n_tokens=8, n_selected=4, d_model=8, n_hidden=8, n_pcs=4, n_heads=2)
            model.train(max_epochs=1, batch_size=16, enable_progress_bar=False, enable_model_summary=False)
            model.annotate()
    except KDCPTError as err:
        outcome = type(err).__name__
    else:
        outcome = "ok"
        proba = adata.obs[[f"kdcpt_proba_{c.replace('/', '_')}" for c in model.classes_]].to_numpy()
        assert np.isfinite(proba).all()
        np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-4)
        assert set(adata.obs["kdcpt_pred"].astype(str)) <= set(model.classes_)
        u = adata.obs["kdcpt_uncertainty"].to_numpy()
        assert ((u >= -1e-5) & (u <= 1 + 1e-5)).all()
    # the input is never modified: X, and every column the user had
    if sparse.issparse(X0):
        np.testing.assert_array_equal(adata.X.toarray(), X0.toarray())
    else:
        np.testing.assert_array_equal(adata.X, X0)
    pd.testing.assert_frame_equal(adata.obs[obs0.columns], obs0)
    pd.testing.assert_frame_equal(adata.var[var0.columns], var0)
    return outcome


@EXAMPLES
@given(adata=anndatas())
def test_setup_train_annotate_succeeds_or_raises_package_error(adata):
    _setup_train_annotate(adata)


def test_examples_reach_both_outcomes():
    """The strategy exercises both branches of the property: some examples train and annotate,
    some are refused with a package error (otherwise the property above checks only one)."""
    outcomes: list[str] = []

    @EXAMPLES
    @given(adata=anndatas())
    def collect(adata):
        outcomes.append(_setup_train_annotate(adata))

    collect()
    assert len(outcomes) >= 10, outcomes
    assert "ok" in outcomes, outcomes
    assert any(o != "ok" for o in outcomes), outcomes
