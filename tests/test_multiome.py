"""Multi-omics KD-CPT (issue 12): setup_mudata, site tokens, key sites, site knockouts, h5mu."""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scvi
import torch
from conftest import SHARED_DATA, needs_shared
from scipy import sparse

import scanpy_kdcpt as kdcpt

md.set_options(pull_on_update=False)
SNARE = SHARED_DATA / "snare_mouse_cortex" / "snare_mouse_cortex.h5mu"


def _train(model, **kwargs):
    kwargs.setdefault("enable_progress_bar", False)
    model.train(**kwargs)
    return model


@pytest.fixture(scope="module")
def multiome():
    scvi.settings.seed = 0
    mdata = kdcpt.datasets.synthetic_multiome(n_cells=900, n_peaks=1000, seed=0)
    kdcpt.KDCPT.setup_mudata(mdata, "phenotype", prior_key="is_tf")
    model = _train(kdcpt.KDCPT(mdata, n_tokens=128, n_selected=16, n_pcs=30), max_epochs=12)
    model.annotate()
    return mdata, model


# ----------------------------------------------------------------- torch-free core
def test_null_draws_stay_within_a_modality():
    from scanpy_kdcpt.perturb._nulls import null_draws

    rng = np.random.default_rng(0)
    # 30 genes and 30 sites of the same value ranges: by expression alone, either could match either
    X = sparse.random(400, 60, density=0.3, random_state=0, format="csr", data_rvs=lambda n: rng.integers(1, 5, n))
    units = {"gene": (3,), "site": (40,), "both": (5, 45)}
    draws = null_draws(X, units, 8, np.random.default_rng(1), max_corr=1.0, n_genes=30)
    assert all(d[0] < 30 for d in draws["gene"]) and all(d[0] >= 30 for d in draws["site"])
    assert all(d[0] < 30 <= d[1] for d in draws["both"])  # member by member
    mixed = null_draws(X, units, 8, np.random.default_rng(1), max_corr=1.0)  # without sites: any column
    assert any(d[0] >= 30 for d in mixed["gene"]) or any(d[0] < 30 for d in mixed["site"])


def test_tfidf_sparse_matches_dense():
    rng = np.random.default_rng(0)
    X = sparse.random(50, 40, density=0.1, random_state=0, format="csr", data_rvs=lambda n: rng.integers(1, 4, n))
    w = kdcpt.multiome.idf(X)
    T = kdcpt.multiome.tfidf(X, w)
    assert sparse.issparse(T) and T.nnz == X.nnz  # zeros stay zeros, never densified
    np.testing.assert_allclose(T.toarray(), kdcpt.multiome.tfidf(X.toarray(), w), rtol=1e-5)
    assert np.isclose(w.mean(), 1.0)
    # a rare peak weighs more than a common one
    df = np.asarray((X > 0).sum(0)).ravel()
    assert w[df.argmin()] > w[df.argmax()]


def test_link_peaks_to_genes_recovers_planted_links():
    mdata = kdcpt.datasets.synthetic_multiome(n_cells=50, n_peaks=300, seed=1)
    planted = mdata["atac"].var["linked_gene"].astype(str).to_numpy()
    del mdata["atac"].var["linked_gene"]
    kdcpt.multiome.link_peaks_to_genes(mdata, window=2000)
    assert (mdata["atac"].var["linked_gene"].astype(str).to_numpy() == planted).mean() == 1.0
    # a window too small to reach peaks upstream of their gene leaves those unlinked
    kdcpt.multiome.link_peaks_to_genes(mdata, window=0, key_added="tight")
    tight = mdata["atac"].var["tight"].astype(str).to_numpy()
    upstream = mdata["atac"].var["start"].to_numpy() + 250 < mdata["rna"].var.loc[planted, "start"].to_numpy()
    assert upstream.any() and (tight[upstream] == "").all()


# ----------------------------------------------------------------- bad input
def test_setup_mudata_bad_input():
    mdata = kdcpt.datasets.synthetic_multiome(n_cells=60, n_peaks=100, seed=2)
    with pytest.raises(KeyError, match=r"not a modality.*\['rna', 'atac'\]"):
        kdcpt.KDCPT.setup_mudata(mdata, "phenotype", modalities={"regulatory": "peaks"})
    with pytest.raises(TypeError, match="setup_mudata"):
        kdcpt.KDCPT.setup_anndata(mdata, "phenotype")
    with pytest.raises(TypeError, match="setup_anndata"):
        kdcpt.KDCPT.setup_mudata(mdata["rna"], "phenotype")
    # peak counts declared as TF-IDF: used as asked, with a warning naming the fix
    with pytest.warns(UserWarning, match="whole numbers only.*regulatory_type='counts'"):
        kdcpt.KDCPT.setup_mudata(mdata.copy(), "phenotype", regulatory_type="tfidf")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        kdcpt.KDCPT.setup_mudata(mdata.copy(), "phenotype")  # auto: counts, no warning
    # missing columns are named where they are looked for: mdata.obs, the RNA modality's .var
    with pytest.raises(KeyError, match=r"labels_key 'nope' is not a column of mdata\.obs"):
        kdcpt.KDCPT.setup_mudata(mdata, "nope")
    with pytest.raises(KeyError, match=r"prior_key 'nope' is not a column of mdata\['rna'\]\.var"):
        kdcpt.KDCPT.setup_mudata(mdata, "phenotype", prior_key="nope")
    # modalities with different cells
    uneven = md.MuData({"rna": mdata["rna"].copy(), "atac": mdata["atac"][:40].copy()})
    uneven.obs["phenotype"] = mdata.obs["phenotype"].reindex(uneven.obs_names).to_numpy()
    with pytest.raises(ValueError, match=r"'rna' has 60, 'atac' has 40, 40 in common .*40 shared cells"):
        kdcpt.KDCPT.setup_mudata(uneven, "phenotype")
    # no cell name in common (barcodes written differently): say so, not "intersect" (it would leave none)
    renamed = mdata["atac"].copy()
    renamed.obs_names = [f"{c}#atac" for c in renamed.obs_names]
    apart = md.MuData({"rna": mdata["rna"].copy(), "atac": renamed})
    apart.obs["phenotype"] = "x"
    with pytest.raises(ValueError, match=r"0 in common .*no cell name is in both") as err:
        kdcpt.KDCPT.setup_mudata(apart, "phenotype")
    assert "intersect_obs" not in str(err.value)
    # peaks with neither a link column nor coordinates, and a prior that needs them
    bare = mdata.copy()
    bare["atac"].var = pd.DataFrame(index=[f"peak{i}" for i in range(bare["atac"].n_vars)])
    bare.update()
    with pytest.raises(ValueError, match="link_peaks_to_genes"):
        kdcpt.KDCPT.setup_mudata(bare, "phenotype", prior_key="is_tf")
    # without a prior no link is needed
    kdcpt.KDCPT.setup_mudata(bare, "phenotype")
    # bad peak values: the message speaks of peaks and regulatory_layer, not of RNA or setup_anndata
    for bad, match in ((np.nan, "NaN or infinite.*regulatory_layer=.*setup_mudata"), (-1.0, "negative.*LSI.*regulatory_layer=")):
        broken = mdata.copy()
        P = broken["atac"].X.toarray() if sparse.issparse(broken["atac"].X) else broken["atac"].X.copy()
        P[0, 0] = bad
        broken["atac"].X = P
        with pytest.raises(ValueError, match=match) as err:
            kdcpt.KDCPT.setup_mudata(broken, "phenotype")
        assert "mdata['atac'].X" in str(err.value) and "setup_anndata" not in str(err.value)
    empty = mdata.copy()
    empty["atac"].X = None
    with pytest.raises(ValueError, match=r"mdata\['atac'\]\.X is empty\. Pass regulatory_layer="):
        kdcpt.KDCPT.setup_mudata(empty, "phenotype")


# ----------------------------------------------------------------- the model
def test_multiome_model_learns_and_writes_per_modality(multiome):
    mdata, model = multiome
    assert model.var_names_[: mdata["rna"].n_vars] == list(mdata["rna"].var_names)
    assert model.var_names_[mdata["rna"].n_vars :] == list(mdata["atac"].var_names)
    metrics = mdata.uns["kdcpt"]["metrics"]
    assert metrics["validation"]["accuracy"] >= 0.9
    # per-cell results in mdata.obs, key genes in rna.var, key sites in atac.var
    assert {"kdcpt_pred", "kdcpt_confidence", "kdcpt_uncertainty"} <= set(mdata.obs.columns)
    assert {"kdcpt_score", "kdcpt_rank", "kdcpt_key_gene"} <= set(mdata["rna"].var.columns)
    atac_var = mdata["atac"].var
    assert {"kdcpt_score", "kdcpt_rank", "kdcpt_key_site", "linked_gene"} <= set(atac_var.columns)
    assert "kdcpt_key_gene" not in atac_var
    assert sorted(atac_var["kdcpt_rank"].astype(int)) == list(range(1, mdata["atac"].n_vars + 1))
    # genes and sites share the token pool: both are selected
    assert (mdata["rna"].var["kdcpt_selected_frac"] > 0).any() and (atac_var["kdcpt_selected_frac"] > 0).any()
    # the joint ranking says which modality each feature is in
    joint = mdata.uns["kdcpt"]["key_features"]
    assert list(joint.columns[:4]) == ["phenotype", "feature", "modality", "rank"]
    rna_names, atac_names = set(mdata["rna"].var_names), set(mdata["atac"].var_names)
    kind = joint["modality"].astype(str)
    assert joint.loc[kind == "rna", "feature"].isin(rna_names).all()
    assert joint.loc[kind == "atac", "feature"].isin(atac_names).all()
    assert set(kind) == {"rna", "atac"}


def test_plots_read_an_annotated_mudata(multiome):
    mdata, _ = multiome
    fig = kdcpt.pl.key_genes(mdata, n_genes=2, return_fig=True, show=False)  # the RNA modality's genes
    genes = set(mdata["rna"].var_names)
    shown = {t.get_text() for a in fig.axes for t in a.get_xticklabels()} & (genes | set(mdata["atac"].var_names))
    assert shown and shown <= genes
    plt.close("all")
    fig = kdcpt.pl.training_history(mdata, return_fig=True, show=False)  # from mdata.uns, no model
    assert fig.axes and fig.axes[0].lines
    plt.close("all")


def test_planted_key_sites_rank_high(multiome):
    mdata, _ = multiome
    ranking = mdata.uns["kdcpt"]["key_sites"]
    for ph, sites in mdata.uns["synthetic"]["key_sites"].items():
        top = ranking[ranking["phenotype"].astype(str) == ph].nsmallest(10, "rank")["site"].tolist()
        assert len(set(top) & set(sites)) >= 2, (ph, top)
    # a random (background) site ranks far below: the planted sites' mean score is higher
    var = mdata["atac"].var
    planted = var["planted_site_of"].astype(str) != "none"
    assert var.loc[planted, "kdcpt_score"].mean() > 2 * var.loc[~planted, "kdcpt_score"].mean()


def test_site_knockouts(multiome):
    mdata, model = multiome
    # a gene's knockout leaves the peaks' .var without an (all-NaN) effect column
    assert "kdcpt_knockout_effect" not in mdata["atac"].var
    model.knockout("Reg_P1", progress=False)
    assert np.isfinite(mdata["rna"].var.loc["Reg_P1", "kdcpt_knockout_effect"])
    assert "kdcpt_knockout_effect" not in mdata["atac"].var
    sites_p1 = list(mdata.uns["synthetic"]["key_sites"]["P1"])
    rng = np.random.default_rng(0)
    background = list(rng.choice(mdata["atac"].var_names[mdata["atac"].var["planted_site_of"] == "none"], 5))
    gene_sets = {"sites_P1": sites_p1, "random_sites": background, **model.linked_sites("Reg_P1")}
    assert set(gene_sets["Reg_P1+sites"]) >= {"Reg_P1", *sites_p1}
    res = model.knockout(gene_sets, progress=False)
    eff = res.summary.set_index("gene")["effect"]
    assert eff["sites_P1"] > 3 * eff["random_sites"]
    assert eff["Reg_P1+sites"] > eff["sites_P1"]
    # a single site: its effect lands in atac.var; its null is drawn from sites only, a gene's from genes
    n_sites = mdata["atac"].n_vars
    res = model.knockout({"site": [sites_p1[0]], "gene": ["Reg_P2"]}, n_null=5, progress=False)
    pool = res.summary.set_index("gene")["null_pool"]
    assert 0 < pool["site"] < n_sites and 0 < pool["gene"] < mdata["rna"].n_vars
    model.knockout(sites_p1[0], progress=False)
    col = mdata["atac"].var["kdcpt_knockout_effect"]
    assert np.isfinite(col[sites_p1[0]]) and col.drop(sites_p1[0]).isna().all()


def test_query_mudata_and_rna_only_query(multiome):
    mdata, model = multiome
    base = model.predict(soft=True)
    query = md.MuData({"rna": mdata["rna"].copy(), "atac": mdata["atac"].copy()})
    np.testing.assert_allclose(model.predict(query, soft=True).to_numpy(), base.to_numpy(), atol=1e-5)
    with pytest.warns(UserWarning, match="no 'atac' modality"):
        rna_only = model.predict(md.MuData({"rna": mdata["rna"].copy()}))
    assert len(rna_only) == mdata.n_obs
    # a query's peaks are checked like the training peaks, and named as sites
    atac = mdata["atac"].copy()
    atac.X = atac.X.toarray() if sparse.issparse(atac.X) else atac.X.copy()
    atac.X[3, 5] = np.nan
    with pytest.raises(ValueError, match="the query's 'atac' modality contains 1 NaN"):
        model.predict(md.MuData({"rna": mdata["rna"].copy(), "atac": atac}))
    renamed = mdata["atac"].copy()
    renamed.var_names = [f"peak-{i}" for i in range(renamed.n_vars)]
    with pytest.raises(ValueError, match="None of the model's sites.*peak names"):
        model.predict(md.MuData({"rna": mdata["rna"].copy(), "atac": renamed}))


def test_mudata_query_is_read_in_the_order_of_its_cells(multiome, tmp_path):
    mdata, model = multiome
    base = model.predict(soft=True)
    # the same cells, the RNA modality listed in another order than mdata.obs (and the ATAC one)
    perm = np.random.default_rng(1).permutation(mdata.n_obs)
    shuffled = md.MuData({"atac": mdata["atac"].copy(), "rna": mdata["rna"][perm].copy()})
    assert not shuffled.obs_names.equals(shuffled["rna"].obs_names)
    got = model.predict(shuffled, soft=True)
    assert got.index.equals(shuffled.obs_names)
    np.testing.assert_allclose(got.loc[base.index].to_numpy(), base.to_numpy(), atol=1e-5)
    # annotate writes each cell's own prediction, and scores the query's own labels
    shuffled.obs["phenotype"] = mdata.obs["phenotype"].reindex(shuffled.obs_names).to_numpy()
    model.annotate(shuffled)
    want = mdata.obs["kdcpt_pred"].astype(str).reindex(shuffled.obs_names)
    assert (shuffled.obs["kdcpt_pred"].astype(str) == want).all()
    assert shuffled.uns["kdcpt"]["metrics"]["labelled"]["n_cells"] == mdata.n_obs
    # an RNA modality without some of the MuData's cells: named, not a pandas length error
    short = md.MuData({"rna": mdata["rna"][:300].copy(), "atac": mdata["atac"][:400].copy()})
    with pytest.raises(ValueError, match=r"'rna' modality lacks 100 of the MuData's 400 cells.*intersect_obs"):
        model.predict(short)
    # log-normalised RNA for a model trained on counts: refused, as for an AnnData query and on load
    logged = mdata.copy()
    sc.pp.normalize_total(logged["rna"])
    sc.pp.log1p(logged["rna"])
    with pytest.raises(ValueError, match=r"'rna' modality's X looks like log values but the model was trained on"):
        model.predict(logged)
    model.save(tmp_path / "model")
    with pytest.raises(ValueError, match=r"mdata\['rna'\]\.X looks like log values but the model was trained on"):
        kdcpt.KDCPT.load(tmp_path / "model", adata=logged)
    # save_anndata is for AnnData: refused before anything is written
    with pytest.raises(ValueError, match="save_anndata=True is for AnnData"):
        model.save(tmp_path / "refused", save_anndata=True)
    assert not (tmp_path / "refused").exists()


def test_mudata_batches_without_training_cells_are_batch_free():
    scvi.settings.seed = 0
    mdata = kdcpt.datasets.synthetic_multiome(n_cells=240, n_peaks=200, seed=3)
    # a categorical batch column with a category that holds no cell (as after subsetting)
    mdata.obs["batch"] = pd.Categorical(np.where(np.arange(mdata.n_obs) % 2, "b1", "b2"), categories=["b1", "b2", "b3"])
    kdcpt.KDCPT.setup_mudata(mdata, "phenotype", batch_key="batch")
    model = kdcpt.KDCPT(mdata, n_tokens=32, n_selected=8, n_pcs=10, linear_stage=False)
    with pytest.warns(UserWarning, match=r"1 batches of batch_key have no training cell \(\['b3'\]"):
        _train(model, max_epochs=2)
    weight = model.module.batch_embedding.weight.detach()
    torch.testing.assert_close(weight[2], weight[:2].mean(0))  # b3: the trained batches' mean
    assert model._batch_categories() == ["b1", "b2"]
    # queries of b3 or of a batch never registered are predicted batch-free, with a warning
    query = md.MuData({"rna": mdata["rna"].copy(), "atac": mdata["atac"].copy()})
    query.obs["batch"] = "b3"
    with pytest.warns(UserWarning, match=r"240 query cells come from batches unseen at training \(\['b3'\]"):
        p3 = model.predict(query, soft=True)
    query.obs["batch"] = "new"
    with pytest.warns(UserWarning, match=r"unseen at training \(\['new'\]"):
        p_new = model.predict(query, soft=True)
    np.testing.assert_allclose(p3.to_numpy(), p_new.to_numpy(), atol=1e-6)


def _texts(labels) -> list[str]:
    return [t.get_text() for t in labels]


def test_h5mu_round_trip_and_plots(multiome, tmp_path):
    mdata, model = multiome
    res = model.knockout(model.linked_sites("Reg_P2"), progress=False)
    path = tmp_path / "multiome.h5mu"
    mdata.write_h5mu(path)
    back = md.read_h5mu(path)
    assert back["atac"].var["kdcpt_key_site"].dtype == bool
    pd.testing.assert_series_equal(back["atac"].var["kdcpt_score"], mdata["atac"].var["kdcpt_score"])
    assert (back.obs["kdcpt_pred"].astype(str) == mdata.obs["kdcpt_pred"].astype(str)).all()
    assert list(back.uns["kdcpt"]["key_sites"].columns[:3]) == ["phenotype", "site", "rank"]
    # the plots of the re-read MuData draw what the model wrote (expected values from the
    # in-memory objects, not from the file the plots read)
    classes = [str(c) for c in model.classes_]
    n = len(classes)
    P = np.asarray(mdata.uns["kdcpt"]["transition_matrix"], dtype=float)

    ax = kdcpt.pl.transition_matrix(back, show=False)
    np.testing.assert_allclose(np.asarray(ax.get_images()[0].get_array()), P, atol=1e-12)
    assert _texts(ax.get_xticklabels()) == classes and _texts(ax.get_yticklabels()) == classes
    frames = [p for p in ax.patches if not p.get_fill()]  # the framed diagonal
    assert sorted(p.get_xy() for p in frames) == [(i - 0.5, i - 0.5) for i in range(n)]
    plt.close("all")

    ax = kdcpt.pl.entropy(back, show=False)
    h = mdata.uns["kdcpt"]["entropy"]["entropy"].astype(float)
    h.index = h.index.astype(str)
    (bars,) = ax.containers
    assert len(bars) == n  # one bar per phenotype, highest entropy first
    np.testing.assert_allclose([b.get_width() for b in bars], h.sort_values(ascending=False).to_numpy())
    assert _texts(ax.get_yticklabels()) == list(h.sort_values(ascending=False).index)
    assert ax.lines[0].get_xdata()[0] == pytest.approx(float(mdata.uns["kdcpt"]["entropy_total"]))
    plt.close("all")

    (name,) = res.summary["gene"]
    assert name == "Reg_P2+sites"  # the gene with its linked sites
    ax = kdcpt.pl.knockout(back, name, show=False)
    assert ax.get_title().startswith(f"{name} knockout")
    rows = res.table[res.table["gene"] == name].astype({"source": str, "target": str})
    delta = rows.set_index(["source", "target"])["delta"]
    want = np.array([[delta[(s, t)] for t in classes] for s in classes])
    np.testing.assert_allclose(np.asarray(ax.get_images()[0].get_array()), want, atol=1e-12)
    assert np.abs(want).max() > 0.01  # the knockout moved something the heatmap has to show
    assert _texts(ax.get_xticklabels()) == classes and _texts(ax.get_yticklabels()) == classes
    plt.close("all")

    rna = back["rna"]
    rna.obs["kdcpt_pred"] = back.obs["kdcpt_pred"].to_numpy()
    ranking = mdata.uns["kdcpt"]["key_genes"].astype({"phenotype": str, "gene": str})
    top = [
        g
        for ph in classes
        for g in ranking[ranking["phenotype"] == ph].sort_values("rank")["gene"].drop_duplicates()[:5]
    ]
    assert len(top) == len(set(top)) == 5 * n  # each phenotype's own 5 (no gene shared here)
    assert set(top) <= set(mdata["rna"].var_names)  # genes of the RNA modality, not sites
    ax = kdcpt.pl.key_genes(rna, n_genes=5, show=False)
    assert _texts(ax.get_xticklabels()) == top
    shown_groups = [str(c) for c in rna.obs["kdcpt_pred"].astype("category").cat.categories]
    assert _texts(ax.get_yticklabels()) == [c for c in classes if c in shown_groups]
    (dots,) = ax.collections
    assert len(dots.get_offsets()) == len(shown_groups) * len(top)  # one dot per phenotype × gene
    plt.close("all")
    # the model itself: save / load with the re-read MuData gives the same probabilities
    model.save(tmp_path / "model")
    loaded = kdcpt.KDCPT.load(tmp_path / "model", adata=back)
    np.testing.assert_allclose(loaded.predict(soft=True).to_numpy(), model.predict(soft=True).to_numpy(), atol=1e-5)


# ----------------------------------------------------------------- real data
@needs_shared
def test_snare_subset():
    if not SNARE.exists():
        pytest.skip(f"{SNARE} is absent")
    from sklearn.model_selection import train_test_split

    full = md.read_h5mu(SNARE)
    keep, _ = train_test_split(
        np.arange(full.n_obs), train_size=800, stratify=full.obs["cell_type_coarse"], random_state=0
    )
    mdata = full[np.sort(keep)].copy()
    del full
    mdata["rna"].var["is_tf"] = kdcpt.datasets.is_transcription_factor(mdata["rna"].var_names, species="mouse")
    scvi.settings.seed = 0
    kdcpt.KDCPT.setup_mudata(mdata, "cell_type_coarse", prior_key="is_tf")
    model = _train(kdcpt.KDCPT(mdata, n_tokens=256, n_pcs=40), max_epochs=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.annotate()
    assert mdata.uns["kdcpt"]["metrics"]["labelled"]["accuracy"] >= 0.6
    var = mdata["atac"].var
    assert var["kdcpt_key_site"].sum() > 0 and var["linked_gene"].notna().all()
    # a site's prior is its linked gene's: sites linked to a TF carry prior 1
    tf_site = var.index[var["linked_gene"].astype(str).isin(mdata["rna"].var_names[mdata["rna"].var["is_tf"]])][0]
    assert float(model.module.prior[model.var_names_.index(tf_site)]) == 1.0
    res = model.knockout(model.linked_sites("Plp1"), progress=False)
    assert res.summary["n_recomputed"].iloc[0] > 0


def test_an_anndata_and_a_mudata_model_say_which_input_they_need(multiome, synthetic_model, tmp_path):
    # a MuData-trained model loaded with an AnnData raised a bare KeyError: 'rna'; an AnnData
    # model given a MuData to predict, a TypeError; a foreign torch file, torch's state-dict error
    from scanpy_kdcpt._errors import InvalidInputError, ModelFileError

    mdata, model = multiome
    model.save(tmp_path / "mu", save_anndata=False)
    with pytest.raises(InvalidInputError, match=r"trained on a MuData \(setup_mudata\).*load it with the MuData"):
        kdcpt.KDCPT.load(tmp_path / "mu", mdata["rna"].copy())
    query = md.MuData({"rna": synthetic_model.adata.copy()})
    with pytest.raises(InvalidInputError, match=r"reads one AnnData.*mdata\['rna'\]"):
        synthetic_model.predict(query)
    synthetic_model.save(tmp_path / "rna", save_anndata=False)
    with pytest.raises(InvalidInputError, match=r"trained on an AnnData and was given a MuData.*mdata\['rna'\]"):
        kdcpt.KDCPT.load(tmp_path / "rna", query)
    torch.save({"x": torch.zeros(3)}, tmp_path / "rna" / "model.pt")
    with pytest.raises(ModelFileError, match="does not hold this model's weights"):
        kdcpt.KDCPT.load(tmp_path / "rna", synthetic_model.adata.copy())
