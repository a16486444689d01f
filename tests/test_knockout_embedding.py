"""Knockouts with an external .obsm embedding reach the prediction branch through embed_fn."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import scvi

import scanpy_kdcpt as kdcpt


@pytest.fixture(scope="module")
def embedded():
    """A small KDCPT on an embedding that is a fixed linear map of log expression."""
    scvi.settings.seed = 0
    adata = kdcpt.datasets.synthetic(n_cells=400, seed=3)
    W = np.random.default_rng(0).normal(size=(adata.n_vars, 8)).astype(np.float32)

    def embed(X):
        X = np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float32)
        return np.log1p(X) @ W

    adata.obsm["X_emb"] = embed(adata.X)
    kdcpt.KDCPT.setup_anndata(adata, labels_key="phenotype", embedding_key="X_emb")
    model = kdcpt.KDCPT(adata, n_tokens=32, n_selected=8, d_model=16, n_hidden=32)
    model.train(max_epochs=8, enable_progress_bar=False)
    return model, embed


class _LatentModel:
    """Stands in for a scvi-tools model: get_latent_representation(adata) reads adata.X."""

    def __init__(self, embed):
        self.embed, self.seen = embed, []

    def get_latent_representation(self, adata):
        assert isinstance(adata, ad.AnnData)
        self.seen.append(adata.n_obs)
        return self.embed(adata.X)


def test_embed_fn_reaches_the_prediction_branch(embedded):
    model, embed = embedded
    with pytest.warns(UserWarning, match="embed_fn"):
        fixed = model.knockout(["Reg_P1", "Reg_P2"], inplace=False, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # re-embedding: no warning
        moved = model.knockout(["Reg_P1", "Reg_P2"], inplace=False, progress=False, embed_fn=embed)
    assert fixed.params["prediction_branch_fixed"] is True
    assert moved.params["prediction_branch_fixed"] is False
    e_fixed = fixed.summary.set_index("gene")["effect"]
    e_moved = moved.summary.set_index("gene")["effect"].reindex(e_fixed.index)
    # the embedding carries the regulators: re-embedding the knocked-out cells moves them further
    assert (e_moved > e_fixed).all(), (e_fixed.to_dict(), e_moved.to_dict())


def test_embedding_shift_is_zero_when_the_embedding_ignores_the_gene(embedded):
    model, _ = embedded
    const = lambda X: np.ones((X.shape[0], 8), np.float32)  # noqa: E731
    with pytest.warns(UserWarning):  # the warning may already be spent in this session
        warnings.warn("spend", UserWarning, stacklevel=1)
        fixed = model.knockout("Reg_P1", inplace=False, progress=False)
    same = model.knockout("Reg_P1", inplace=False, progress=False, embed_fn=const)
    np.testing.assert_allclose(same.table["p_ko"], fixed.table["p_ko"], atol=1e-6)


def test_model_with_get_latent_representation_is_accepted(embedded):
    model, embed = embedded
    latent = _LatentModel(embed)
    via_model = model.knockout("Reg_P1", inplace=False, progress=False, embed_fn=latent)
    via_fn = model.knockout("Reg_P1", inplace=False, progress=False, embed_fn=embed)
    assert latent.seen and sum(latent.seen) >= via_model.summary["n_recomputed"].iloc[0]
    np.testing.assert_allclose(via_model.table["p_ko"], via_fn.table["p_ko"], atol=1e-5)
    assert "get_latent_representation" in via_model.params["embed_fn"]


def test_embed_fn_errors(embedded, transition_model):
    model, _ = embedded
    with pytest.raises(ValueError, match=r"returned shape \(.*, 3\).*must return"):
        model.knockout("Reg_P1", inplace=False, progress=False, embed_fn=lambda X: np.zeros((X.shape[0], 3)))
    with pytest.raises(TypeError, match="get_latent_representation"):
        model.knockout("Reg_P1", inplace=False, progress=False, embed_fn="scvi")
    with pytest.raises(ValueError, match="without embedding_key"):
        transition_model.knockout("Reg_P1", inplace=False, progress=False, embed_fn=lambda X: X)
