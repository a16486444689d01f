"""Knockouts with an external .obsm embedding reach the prediction branch through embed_fn."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import scvi

import scanpy_kdcpt as kdcpt


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small KDCPT on an embedding that is a fixed linear map of log expression (saved)."""
    scvi.settings.seed = 0
    adata = kdcpt.datasets.synthetic(n_cells=400, seed=3)
    W = np.random.default_rng(0).normal(size=(adata.n_vars, 8)).astype(np.float32)

    def embed(X):
        X = np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float32)
        return np.log1p(X) @ W

    adata.obsm["X_emb"] = embed(adata.X)
    kdcpt.KDCPT.setup_anndata(adata, labels_key="phenotype", embedding_key="X_emb")
    # the network alone: with the first stage the validation cells may choose mix = 0, and then the
    # prediction is the linear model's, which no embedding reaches (what these tests are about)
    model = kdcpt.KDCPT(adata, n_tokens=32, n_selected=8, d_model=16, n_hidden=32, linear_stage=False)
    model.train(max_epochs=8, enable_progress_bar=False)
    path = tmp_path_factory.mktemp("embedded") / "model"
    model.save(path)
    return model, embed, path


@pytest.fixture
def embedded(trained):
    """The shared trained model (for tests that do not look at the once-per-model warning)."""
    model, embed, _ = trained
    return model, embed


@pytest.fixture
def fresh(trained):
    """The trained model loaded anew, so its once-per-model warning has not been given yet:
    a test sees the library's warning whatever ran before it."""
    model, embed, path = trained
    return kdcpt.KDCPT.load(path, adata=model.adata.copy()), embed


def _ko(model, genes, **kwargs):
    return model.knockout(genes, inplace=False, progress=False, **kwargs)


class _LatentModel:
    """Stands in for a scvi-tools model: get_latent_representation(adata) reads adata.X."""

    def __init__(self, embed):
        self.embed, self.seen = embed, []

    def get_latent_representation(self, adata):
        assert isinstance(adata, ad.AnnData)
        self.seen.append(adata.n_obs)
        return self.embed(adata.X)


def test_embed_fn_reaches_the_prediction_branch(fresh):
    model, embed = fresh
    regulators = ["Reg_P1", "Reg_P2"]
    # without embed_fn the library warns (once per model) and flags the result
    with pytest.warns(UserWarning, match=r"external embedding.*Pass embed_fn"):
        fixed = _ko(model, regulators)
    assert fixed.params["prediction_branch_fixed"] is True
    assert fixed.params["embed_fn"] == "None"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # already said once for this model
        again = _ko(model, regulators)
    assert again.params["prediction_branch_fixed"] is True
    # with embed_fn: no warning, and not flagged
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        moved = _ko(model, regulators, embed_fn=embed)
    assert moved.params["prediction_branch_fixed"] is False
    assert moved.params["embed_fn"] == "embed"
    # the re-embedded cells change the predictions: the base is the same, the knockout is not
    np.testing.assert_allclose(moved.table["p_base"], fixed.table["p_base"], atol=1e-6)
    assert np.abs(moved.table["p_ko"].to_numpy() - fixed.table["p_ko"].to_numpy()).max() > 0.01
    e_fixed = fixed.summary.set_index("gene")["effect"]
    e_moved = moved.summary.set_index("gene")["effect"].reindex(e_fixed.index)
    # the embedding carries the regulators: re-embedding the knocked-out cells moves them further
    assert (e_moved > e_fixed).all(), (e_fixed.to_dict(), e_moved.to_dict())


def test_embedding_shift_is_zero_when_the_embedding_ignores_the_gene(fresh):
    model, embed = fresh
    with pytest.warns(UserWarning, match="embed_fn"):  # the library's warning, as the model is fresh
        fixed = _ko(model, "Reg_P1")
    # an embedder blind to the gene gives a zero shift: the prediction branch's input is unchanged
    const = lambda X: np.ones((X.shape[0], 8), np.float32)  # noqa: E731
    same = _ko(model, "Reg_P1", embed_fn=const)
    np.testing.assert_allclose(same.table["p_ko"], fixed.table["p_ko"], atol=1e-6)
    seen = []

    def recording(X):
        seen.append(np.asarray(X, dtype=np.float32).copy())
        return embed(X)

    moved = _ko(model, "Reg_P1", embed_fn=recording)
    # embed_fn embeds the recomputed cells (those expressing the gene) as they are, and knocked out
    col = model.var_names_.index("Reg_P1")
    n = int(moved.summary["n_recomputed"].iloc[0])
    as_is = np.concatenate([x for x in seen if (x[:, col] > 0).all()])
    knocked = np.concatenate([x for x in seen if (x[:, col] == 0).all()])
    assert n > 0 and len(as_is) == len(knocked) == n == sum(len(x) for x in seen) // 2
    np.testing.assert_array_equal(np.delete(knocked, col, axis=1), np.delete(as_is, col, axis=1))
    # the shift, not the embedder's output, is applied: an embedder that is off by a constant
    # (another preprocessing, another seed) moves the cells exactly as the one that made X_emb
    offset = _ko(model, "Reg_P1", embed_fn=lambda X: embed(X) + 5.0)
    np.testing.assert_allclose(offset.table["p_ko"], moved.table["p_ko"], atol=1e-5)
    # and re-embedding moves the prediction where the fixed embedding did not
    assert np.abs(moved.table["p_ko"].to_numpy() - fixed.table["p_ko"].to_numpy()).max() > 0.01


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
