"""Multi-omics models beyond prediction: cells aligned by name, directed chains, fates, knockouts."""

from __future__ import annotations

import mudata as md
import numpy as np
import pytest
import scvi
from scipy import sparse

import scanpy_kdcpt as kdcpt

md.set_options(pull_on_update=False)


def _shuffled_atac(seed: int = 0):
    """A synthetic MuData whose ATAC modality holds the same cells as RNA, in another order."""
    mdata = kdcpt.datasets.synthetic_multiome(n_cells=300, n_peaks=300, seed=seed)
    perm = np.random.default_rng(seed).permutation(mdata.n_obs)
    rna, atac = mdata["rna"].copy(), mdata["atac"][perm].copy()
    shuffled = md.MuData({"rna": rna, "atac": atac})
    for c in mdata.obs.columns:
        shuffled.obs[c] = mdata.obs[c].to_numpy() if not hasattr(mdata.obs[c], "cat") else mdata.obs[c].array
    return mdata, shuffled


@pytest.fixture(scope="module")
def shuffled_model():
    scvi.settings.seed = 0
    original, mdata = _shuffled_atac()
    assert not mdata["atac"].obs_names.equals(mdata.obs_names)  # the case under test: same cells, other order
    kdcpt.KDCPT.setup_mudata(mdata, "phenotype", prior_key="is_tf")
    model = kdcpt.KDCPT(mdata, n_tokens=64, n_selected=8, d_model=16, n_hidden=32, n_pcs=12)
    model.train(max_epochs=4, enable_progress_bar=False)
    return original, mdata, model


def test_modalities_in_another_cell_order_are_aligned_by_name(shuffled_model):
    original, mdata, model = shuffled_model
    assert mdata["atac"].obs_names.equals(mdata.obs_names)
    np.testing.assert_array_equal(mdata.obsmap["atac"].ravel(), np.arange(1, mdata.n_obs + 1))  # MuData's map updated
    # the model reads each cell's own peaks: rows of the registered matrix follow mdata.obs_names
    X = model._inputs.registered_matrix(mdata)
    n_genes = original["rna"].n_vars
    peaks = sparse.csr_matrix(X)[:, n_genes:].toarray()
    expected = original["atac"][mdata.obs_names].X
    expected = expected.toarray() if sparse.issparse(expected) else np.asarray(expected)
    np.testing.assert_array_equal(peaks, expected)


def test_unpaired_cells_are_refused_with_the_fix():
    mdata = kdcpt.datasets.synthetic_multiome(n_cells=60, n_peaks=100, seed=2)
    unpaired = md.MuData({"rna": mdata["rna"].copy(), "atac": mdata["atac"][:50].copy()})
    unpaired.obs["phenotype"] = mdata["rna"].obs["phenotype"].array
    with pytest.raises(ValueError, match="hold different cells.*intersect_obs"):
        kdcpt.KDCPT.setup_mudata(unpaired, "phenotype")


def test_the_default_direction_works_on_a_mudata(shuffled_model):
    _, mdata, model = shuffled_model
    result = model.compute_transitions(inplace=False)  # "auto": a MuData has no layers of its own
    assert result.direction["kind"] == "cytotrace"
    np.testing.assert_allclose(np.asarray(result.cell_chain.sum(1)).ravel(), 1.0)


def test_directed_chain_fates_and_knockouts_on_a_multiome_model(shuffled_model):
    _, mdata, model = shuffled_model
    # the encoder representation covers genes and sites: as wide as the internal encoder
    Z = model.get_encoder_representation()
    assert Z.shape == (mdata.n_obs, model.module.loadings.shape[1]) and np.isfinite(Z).all()
    result = model.compute_transitions(direction="pseudotime", root="P0", inplace=False)
    assert result.method == "directed"
    assert result.cell_chain.shape == (mdata.n_obs, mdata.n_obs)
    np.testing.assert_allclose(np.asarray(result.cell_chain.sum(1)).ravel(), 1.0, atol=1e-6)
    fates = model.get_fate_probabilities(terminal=["P3"])
    assert fates.probabilities.shape == (mdata.n_obs, 1)
    ko = model.knockout(["Reg_P1", "Site_P1_0"], terminal=["P3"], inplace=False, progress=False, n_regulator_null=2)
    assert set(ko.summary["gene"]) == {"Reg_P1", "Site_P1_0"}
    assert set(ko.fate["terminal"]) == {"P3", "not reached"}
    assert np.isfinite(ko.fate["delta"]).all()
    # the regulator null draws GRN regulators (genes) for the gene; a site is not simulated: no draw, no p
    drawn = ko.params["regulator_null"]
    assert set(drawn) == {"Reg_P1"} and set(drawn["Reg_P1"]) <= set(mdata["rna"].var_names) - {"Reg_P1"}
    site_rows = ko.fate[ko.fate["gene"] == "Site_P1_0"]
    assert site_rows["pval_regulators"].isna().all()
    gene_rows = ko.fate[(ko.fate["gene"] == "Reg_P1") & (ko.fate["terminal"] == "not reached")]
    # the gene's rows are tested, except where neither it nor any draw changes anything
    assert gene_rows["pval_regulators"].notna().sum() >= 3
    assert (gene_rows["pval_regulators"].notna() | (gene_rows["delta"].abs() < 1e-9)).all()
