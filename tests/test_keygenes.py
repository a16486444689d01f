"""Key genes: planted regulators are found, batched accumulation is exact, writes survive h5ad."""

from __future__ import annotations

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import scanpy_kdcpt as kdcpt
from scanpy_kdcpt import _keys, writers
from scanpy_kdcpt.results import KeyGenes


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One torch thread: on a loaded 2-core machine two threads run many times slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def key_genes(synthetic_model):
    return synthetic_model.get_key_genes()


def test_planted_regulators_rank_top3_of_their_phenotype(synthetic_model, key_genes):
    regulators = synthetic_model.adata.uns["synthetic"]["regulators"]
    for phenotype, reg in regulators.items():
        top3 = key_genes.top(phenotype, 3).index
        assert reg in top3, f"{reg} not in the top 3 of {phenotype}: {list(top3)}"


def test_key_gene_statistics_are_consistent(synthetic_model, key_genes):
    ov = key_genes.overall
    assert list(ov.index) == list(synthetic_model.adata.var_names)
    assert ov["selected_frac"].between(0, 1).all()
    assert sorted(ov["rank"]) == list(range(1, len(ov) + 1))
    # genes are ranked by the model's attribution when it is present
    assert key_genes.default_by == "attribution"
    assert ov["rank"].idxmin() == ov["attribution"].idxmax()
    # the overall score and attribution are cell-weighted means of the per-phenotype ones
    w = key_genes.n_cells / key_genes.n_cells.sum()
    np.testing.assert_allclose(ov["score"], key_genes.scores @ w, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ov["attribution"], key_genes.statistic("attribution") @ w, rtol=1e-6, atol=1e-9)
    # key genes are genes of their phenotype: expressed there above the average cell, while the
    # signed attribution also credits genes whose absence is evidence
    for ph in key_genes.scores.columns:
        top = key_genes.top(ph, 10).index
        assert (key_genes.expression.loc[top, ph] > key_genes.mean_expression.loc[top]).all()
    assert (key_genes.attribution.to_numpy() > 0).sum() > (key_genes.statistic("attribution").to_numpy() > 0).sum()
    # without attributions the specificity of the Cell Learner's score ranks the genes, overall too
    # (the raw score put the prior's decoy TFs first in .var)
    plain = synthetic_model.get_key_genes(attribution=False)
    assert plain.attribution is None and plain.default_by == "specificity"
    assert plain.overall["rank"].idxmin() == plain.overall["specificity"].idxmax()
    regulators = set(synthetic_model.adata.uns["synthetic"]["regulators"].values())
    rank = plain.overall["rank"]
    # the planted regulators lead (a regulator's own target may edge in between: Tgt_P3_2 ranked
    # 4th above Reg_P3 on one machine's floating point), and every decoy TF ranks below all of them
    assert rank[list(regulators)].max() <= 2 * len(regulators)
    assert rank[rank.index.str.startswith("TF_decoy")].min() > rank[list(regulators)].max()
    np.testing.assert_allclose(plain.scores, key_genes.scores, rtol=1e-5, atol=1e-7)
    assert key_genes.n_cells.sum() == synthetic_model.adata.n_obs
    # a regulator is selected in nearly every cell of its phenotype, a background gene is not
    assert key_genes.selected_frac.loc["Reg_P2", "P2"] > 0.9
    assert key_genes.selected_frac.loc["Reg_P2", "P2"] > key_genes.selected_frac.loc["Gene_0", "P2"]


def test_minibatch_accumulation_matches_one_batch(synthetic_model, key_genes):
    small = synthetic_model.get_key_genes(batch_size=97)
    np.testing.assert_allclose(small.scores, key_genes.scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(small.selected_frac, key_genes.selected_frac, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(small.attribution, key_genes.attribution, rtol=1e-4, atol=1e-7)


def test_attribution_is_gradient_times_input(synthetic_model, key_genes):
    """The attribution of a gene equals the finite-difference change of the own phenotype's logit
    margin (its logit minus the mean logit) when its log-expression is scaled by (1 + eps),
    divided by eps (first order), for a few cells."""
    import torch

    model = synthetic_model
    cells = np.arange(6)
    codes, _ = model.labels_()
    module = model.module.eval()
    tensors = next(iter(model._make_data_loader(adata=model.adata, indices=cells, batch_size=6, shuffle=False)))
    inputs = module._get_inference_input(tensors)
    ((_, out),) = list(model._iterate(indices=cells, attribute=codes[cells]))
    gene = int(np.abs(out["attribution"].numpy()).sum(0).argmax())
    eps = 1e-3
    with torch.no_grad():
        x_log = module.normalize(inputs["x"].float())
        bumped = x_log.clone()
        bumped[:, gene] *= 1 + eps
        logits = [module.forward_normalized(x)["logits"] for x in (x_log, bumped)]
        lp = [z[np.arange(6), codes[cells]] - z.mean(1) for z in logits]
    np.testing.assert_allclose(
        ((lp[1] - lp[0]) / eps).numpy(), out["attribution"][:, gene].numpy(), rtol=0.05, atol=1e-4
    )


def test_write_key_genes_sets_var_and_uns(synthetic_model, key_genes):
    adata = synthetic_model.adata.copy()
    keys = _keys.Keys("kgtest")
    writers.write_key_genes(adata, key_genes, key_added="kgtest", n_top=7)
    var = adata.var
    assert int(var[keys.key_gene].sum()) == 7
    assert set(var.index[var[keys.key_gene]]) == set(var[keys.rank].nsmallest(7).index)
    np.testing.assert_allclose(var[keys.score], key_genes.overall["score"], rtol=1e-6)
    ranking = adata.uns["kgtest"][_keys.UNS_KEY_GENES]
    assert {"phenotype", "gene", "rank", "score", "selected_frac"} <= set(ranking.columns)
    first = ranking[ranking["rank"] == 1].set_index("phenotype")["gene"]
    assert first["P2"] == "Reg_P2"


def test_key_genes_of_cells_of_one_phenotype_compare_them_with_the_training_cells(synthetic_model):
    model = synthetic_model
    adata = model.adata
    query = adata[adata.obs["phenotype"] == "P1"].copy()
    model.annotate(query)  # against the mean of these cells alone, no gene was "up": the first genes of .var won
    assert query.var["kdcpt_rank"].idxmin() == "Reg_P1"
    ranking = query.uns["kdcpt"]["key_genes"]
    assert set(ranking["phenotype"].astype(str)) == {"P1"}  # phenotypes without cells get no key genes
    assert ranking.set_index("rank").loc[1, "gene"] == "Reg_P1"
    kg = model.get_key_genes(query)
    assert (kg.top("P1", 5) > 0).all()  # genes the phenotype expresses above the average training cell
    np.testing.assert_allclose(kg.baseline, model.get_key_genes().mean_expression, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="'P0' has no cells among those analysed"):
        kg.top("P0")
    cells = np.flatnonzero(adata.obs["phenotype"] == "P1")
    assert model.get_key_genes(indices=cells).top("P1", 1).index[0] == "Reg_P1"
    # a ranking without attributions drops the earlier ranking's attribution column (it contradicted the ranks)
    writers.write_key_genes(query, model.get_key_genes(query, attribution=False))
    assert "kdcpt_attribution" not in query.var and "kdcpt_attention" in query.var


def _two_phenotype_key_genes(genes: pd.Index, phen: list[str]) -> ad.AnnData:
    """Ten cells of two phenotypes with a written key-gene ranking of six genes."""
    rng = np.random.default_rng(0)
    scores = pd.DataFrame(rng.random((6, 2)), index=genes, columns=phen)
    kg = KeyGenes(
        overall=pd.DataFrame({"score": scores.mean(1), "selected_frac": 0.5, "rank": np.arange(1, 7)}, index=genes),
        scores=scores,
        selected_frac=scores / 2,
        n_cells=pd.Series([5, 5], index=phen),
    )
    adata = ad.AnnData(
        X=rng.poisson(2, (10, 6)).astype(np.float32),
        obs=pd.DataFrame({"kdcpt_pred": pd.Categorical(phen * 5)}, index=[f"c{i}" for i in range(10)]),
        var=pd.DataFrame(index=genes),
    )
    writers.write_key_genes(adata, kg)
    return adata


def test_phenotype_names_with_slash_survive_h5ad_and_plot(tmp_path):
    genes = pd.Index([f"g{i}" for i in range(6)])
    phen = ["CD4+/CD45RA+ naive", "B/plasma"]
    adata = _two_phenotype_key_genes(genes, phen)
    path = tmp_path / "slash.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    ranking = back.uns["kdcpt"]["key_genes"]
    assert list(ranking["phenotype"].cat.categories) == phen
    ax = kdcpt.pl.key_genes(back, n_genes=2, show=False)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert len(labels) == 4 and len(set(labels)) == 4  # 2 genes per phenotype, none repeated
    plt.close("all")


def test_key_genes_plot_fits_inside_its_figure():
    # scanpy's dotplot draws its rotated gene names below the figure: a plain fig.savefig (no
    # bbox_inches="tight") cut them off
    genes = pd.Index([f"Gm{i}0011H14Rik-long-name" for i in range(6)])
    phen = ["Ngn3 high EP", "Pre-endocrine"]
    adata = _two_phenotype_key_genes(genes, phen)
    for title in (None, "Key genes"):
        fig = kdcpt.pl.key_genes(adata, n_genes=3, title=title, return_fig=True, show=False)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        texts = [t for a in fig.axes for t in a.texts + a.get_xticklabels() + a.get_yticklabels() if t.get_text()]
        texts += [t for t in fig.texts if t.get_text()]
        assert any("Rik" in t.get_text() for t in texts)
        for t in texts:
            b = t.get_window_extent(renderer)
            assert b.x0 >= -1 and b.y0 >= -1 and b.x1 <= fig.bbox.x1 + 1 and b.y1 <= fig.bbox.y1 + 1, t.get_text()
        plt.close("all")


def test_key_genes_plot_needs_annotate():
    adata = ad.AnnData(np.ones((3, 2), dtype=np.float32))
    with pytest.raises(KeyError, match="annotate"):
        kdcpt.pl.key_genes(adata, show=False)


def test_key_genes_plot_with_a_phenotype_no_cell_is_assigned_to():
    genes = pd.Index([f"g{i}" for i in range(6)])
    phen = ["A", "B", "C"]
    rng = np.random.default_rng(1)
    scores = pd.DataFrame(rng.random((6, 3)), index=genes, columns=phen)
    kg = KeyGenes(
        overall=pd.DataFrame({"score": scores.mean(1), "selected_frac": 0.5, "rank": np.arange(1, 7)}, index=genes),
        scores=scores,
        selected_frac=scores / 2,
        n_cells=pd.Series([5, 5, 0], index=phen),
    )
    adata = ad.AnnData(
        X=rng.poisson(2, (10, 6)).astype(np.float32),
        obs=pd.DataFrame(
            {"kdcpt_pred": pd.Categorical(["A", "B"] * 5, categories=phen)}, index=[f"c{i}" for i in range(10)]
        ),
        var=pd.DataFrame(index=genes),
    )

    writers.write_key_genes(adata, kg)
    ax = kdcpt.pl.key_genes(adata, n_genes=1, show=False)  # "C" has no cells: its group is left out
    group_labels = [t.get_text() for t in ax.get_yticklabels()]
    assert "C" not in group_labels and {"A", "B"} <= set(group_labels)
    plt.close("all")


def test_decoy_tfs_are_not_key_genes(synthetic_model, key_genes):
    """The prior guides without swamping: the planted regulator leads each phenotype, no
    uninformative TF ranks among the phenotype's 7 planted genes' places (top 7: the regulator
    and its 6 targets), and the decoys rank like the background genes they are distributed like
    (when the prior swamped the attention, all ten decoys ranked 4-13 in every phenotype).
    The top 20 holds 13 places beyond the planted genes; the decoys are 10 of the 193 other
    genes, so about one decoy in a top 20 is what an unbiased ranking gives.
    """
    var = synthetic_model.adata.var
    decoys = list(var.index[var.index.str.startswith("TF_decoy")])
    background = list(var.index[var.index.str.startswith("Gene_")])
    assert len(decoys) == 10
    decoy_ranks, background_ranks = [], []
    for phenotype in key_genes.scores.columns:
        assert key_genes.top(phenotype, 1).index[0] == f"Reg_{phenotype}"
        top7 = set(key_genes.top(phenotype, 7).index)
        assert not top7 & set(decoys), f"decoy TFs in the top 7 of {phenotype}: {sorted(top7 & set(decoys))}"
        rank = key_genes.statistic()[phenotype].rank(ascending=False)
        decoy_ranks.append(rank[decoys].median())
        background_ranks.append(rank[background].median())
    print("median rank: decoys", decoy_ranks, "background", background_ranks)
    assert np.median(decoy_ranks) > 0.6 * np.median(background_ranks)
    # the prior-free attention is reported beside the blended score, and is below it for prior genes only
    ov = key_genes.overall
    assert "attention" in ov
    tf = var["is_tf"].to_numpy(bool)
    assert (ov["attention"].to_numpy()[~tf] >= ov["score"].to_numpy()[~tf] - 1e-6).all()


def test_blend_prior_swamps_bias_prior_does_not():
    """With the paper's blend every expressed prior gene scores ≥ λ; with the bias a prior gene the
    network does not attend to stays at 0."""
    import torch

    from scanpy_kdcpt.module._components import CellLearner

    attention = torch.tensor([[1.0, 0.02, 0.0, 0.02]])
    prior = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    blend = CellLearner(8, 2, 1, 2, 2, 0.3, "mean", 0.0, prior_mode="blend").blend(attention, prior)
    bias = CellLearner(8, 2, 1, 2, 2, 0.3, "mean", 0.0, prior_mode="bias").blend(attention, prior)
    assert blend[0, 2] == pytest.approx(0.3) and blend[0, 2] > blend[0, 1]  # an unattended TF outranks
    assert bias[0, 2] == 0 and bias[0, 3] > bias[0, 1]  # the prior only reorders attended genes
    with pytest.raises(ValueError, match="prior_mode"):
        CellLearner(8, 2, 1, 2, 2, 0.3, "mean", 0.0, prior_mode="swamp")


def test_deleting_a_non_token_gene_leaves_the_token_set_unchanged(transition_model):
    """Ties at the token cutoff are broken by gene order, so only token genes can change the set."""
    import torch

    module = transition_model.module
    X = transition_model.adata.X[:300].toarray().astype(np.float32)
    x = module.normalize(torch.as_tensor(X))
    _, idx, values, mask = module.tokenizer(x)
    n_tok = idx.shape[1]
    cutoff = values[:, -1:]
    assert ((x == cutoff) & (x > 0)).sum(1).gt(1).any(), "no ties at the cutoff: the test would prove nothing"
    rng = np.random.default_rng(0)
    checked = 0
    for c in range(X.shape[0]):
        tokens = set(idx[c][mask[c]].tolist())
        outside = np.setdiff1d(np.flatnonzero(X[c] > 0), list(tokens))
        if not len(outside):
            continue
        g = int(rng.choice(outside))
        X2 = X[c : c + 1].copy()
        X2[0, g] = 0
        _, idx2, _, mask2 = module.tokenizer(module.normalize(torch.as_tensor(X2)))
        # counts are library-normalised: deleting a gene rescales the others but keeps their order
        assert set(idx2[0][mask2[0]].tolist()) == tokens, f"cell {c}: deleting non-token gene {g} changed the tokens"
        checked += 1
    assert checked > 50 and n_tok == 64


def test_faithfulness_key_genes_beat_random(synthetic_model, key_genes):
    f = synthetic_model.get_faithfulness(key_genes, ks=(3, 10), n_random=2, indices=np.arange(0, 1200, 4))
    assert set(f["genes"]) == {"key genes", "random"} and len(f) == 2 * 2 * 2
    t = f.set_index(["genes", "k", "perturbation"])
    for k in (3, 10):
        # keeping only the key genes keeps the prediction; removing them hurts more than removing random genes
        assert t.loc[("key genes", k, "keep"), "accuracy"] > t.loc[("random", k, "keep"), "accuracy"]
        assert t.loc[("key genes", k, "remove"), "confidence"] < t.loc[("random", k, "remove"), "confidence"]
    with pytest.raises(ValueError, match="ks"):
        synthetic_model.get_faithfulness(key_genes, ks=(0,))
