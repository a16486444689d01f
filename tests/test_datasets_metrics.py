"""Datasets (bundled, synthetic, TF lists) and classification metrics."""

from __future__ import annotations

import numpy as np
import pytest

import scanpy_kdcpt as kdcpt
from scanpy_kdcpt import metrics


def test_tf_lists():
    human = kdcpt.datasets.transcription_factors("human")
    mouse = kdcpt.datasets.transcription_factors("mouse")
    assert len(human) > 1500 and "SPI1" in human and "GATA1" in human
    assert len(mouse) > 1500 and "Neurog3" in mouse and "Pax4" in mouse
    # the mouse default is a curated TF list: no ribosomal protein, chaperone or antioxidant enzyme
    assert not {"Rps10", "Sod1", "Hspa5", "Canx"} & set(mouse)
    scenic = kdcpt.datasets.transcription_factors("mouse", source="scenic")
    assert len(scenic) == 1721 and "Rps10" in scenic  # the former default, kept to reproduce runs
    assert kdcpt.datasets.is_transcription_factor(["Rps10", "Klf1"], "mouse").tolist() == [False, True]
    with pytest.raises(ValueError, match="No mouse transcription-factor list 'jaspar'.*animaltfdb4"):
        kdcpt.datasets.transcription_factors("mouse", source="jaspar")
    mask = kdcpt.datasets.is_transcription_factor(["SPI1", "spi1", "CD3E", "ACTB"], species="human")
    np.testing.assert_array_equal(mask, [True, True, False, False])
    with pytest.raises(ValueError, match="No transcription-factor list for species 'fly'"):
        kdcpt.datasets.transcription_factors("fly")


def test_pbmc_has_log_values_and_labels():
    adata = kdcpt.datasets.pbmc68k_reduced()
    assert adata.shape == (700, 765)
    assert adata.X.min() >= 0 and adata.X.max() < 20
    assert adata.obs["bulk_labels"].nunique() == 10
    assert "X_umap" in adata.obsm


def test_krumsiek11_is_nonnegative_with_known_regulators(tmp_path):
    adata = kdcpt.datasets.krumsiek11()
    assert adata.X.min() >= 0
    assert {"Gata1", "Pu.1", "Cebpa"} <= set(adata.var_names)
    assert set(adata.obs["cell_type"].unique()) == {"progenitor", "Ery", "Mk", "Mo", "Neu"}
    adata.write_h5ad(tmp_path / "k.h5ad")  # scanpy's uns["highlights"] has integer keys, which h5ad refused


def test_synthetic_plants_regulators_and_transitions():
    adata = kdcpt.datasets.synthetic(n_cells=500, n_phenotypes=3, seed=0)
    planted = adata.uns["synthetic"]
    assert planted["regulators"] == {"P0": "Reg_P0", "P1": "Reg_P1", "P2": "Reg_P2"}
    assert planted["transitions"][["source", "target"]].values.tolist() == [["P0", "P1"], ["P1", "P2"]]
    X = adata.X.toarray()
    for p, reg in planted["regulators"].items():
        cells = (adata.obs["phenotype"] == p).to_numpy() & ~adata.obs["transitioning"].to_numpy()
        col = adata.var_names.get_loc(reg)
        assert X[cells, col].mean() > 3 * X[~cells, col].mean()
    assert adata.var.loc["Reg_P1", "is_tf"] and not adata.var.loc["Gene_0", "is_tf"]
    # transitioning cells of P0 express the next regulator more than settled P0 cells
    p0 = (adata.obs["phenotype"] == "P0").to_numpy()
    trans = adata.obs["transitioning"].to_numpy()
    col = adata.var_names.get_loc("Reg_P1")
    assert X[p0 & trans, col].mean() > 2 * X[p0 & ~trans, col].mean()


def test_classification_report_by_hand():
    y = ["a", "a", "b", "b", "c", None]
    p = ["a", "b", "b", "b", "c", "a"]
    r = metrics.classification_report(y, p)
    assert r["n_cells"] == 5
    assert r["accuracy"] == pytest.approx(4 / 5)
    # F1: a = 2/3, b = 0.8, c = 1
    assert r["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 1) / 3)
    # kappa: po = 0.8, pe = (2*1 + 2*3 + 1*1) / 25 = 9/25
    assert r["kappa"] == pytest.approx((0.8 - 9 / 25) / (1 - 9 / 25))
    # one phenotype among a few query cells and their predictions: kappa is undefined (0/0), said
    # as NaN without scikit-learn's warning reaching the user
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = metrics.classification_report(["a", "a"], ["a", "a"])
    assert r["accuracy"] == 1 and np.isnan(r["kappa"])


def test_metrics_read_labels_as_users_give_them():
    import pandas as pd

    # integer ids with a missing value arrive as floats: 1.0 is still the label 1 (it scored 0)
    r = metrics.classification_report(pd.Series([1, 2, np.nan, 1, 2]), [1, 2, 2, 2, 2])
    assert r["n_cells"] == 4 and r["accuracy"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="3 true labels for 2 predictions"):
        metrics.classification_report(["a", "b", "a"], ["a", "b"])
    # probabilities only: logits or other scores give no "ECE"
    with pytest.raises(ValueError, match="rows in \\[0, 1\\] summing to 1"):
        metrics.ece(["x", "y"], [[5.0, 1.0], [1.0, 3.0]], classes=["x", "y"])
    with pytest.raises(ValueError, match="n_bins must be a whole number of 1 or more"):
        metrics.ece(["x"], [[1.0, 0.0]], classes=["x", "y"], n_bins=0)
    assert metrics.ece(pd.Series([1.0, 2.0]), [[0.9, 0.1], [0.2, 0.8]], classes=[1, 2]) == pytest.approx(0.15)
    # the model's own readers too: calibrate(query, labels_key=) found 0 labelled cells, annotate no metrics
    from types import SimpleNamespace

    import anndata as ad

    from scanpy_kdcpt._utils import codes_of
    from scanpy_kdcpt.model._data import _query_labels

    assert codes_of(pd.Series([1.0, np.nan, 2.0, 7.0]), ["1", "2"]).tolist() == [0, -1, 1, -1]
    assert codes_of(["1.5", 1.5], ["1.5"]).tolist() == [0, 0]
    query = ad.AnnData(obs=pd.DataFrame({"cluster": [1.0, np.nan, 2.0]}, index=["a", "b", "c"]))
    state = SimpleNamespace(categorical_mapping=np.array(["1", "2", "unknown"]), unlabeled_category="unknown")
    assert list(_query_labels(query, "cluster", state)) == ["1", "unknown", "2"]
    # one gene symbol, not its letters
    assert kdcpt.datasets.is_transcription_factor("GATA1").tolist() == [True]
