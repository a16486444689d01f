"""Shared fixtures: deterministic seeds and small trained models reused across tests."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

import scvi  # noqa: E402
import torch  # noqa: E402

import scanpy_kdcpt as kdcpt  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PANCREAS = SHARED_DATA / "pancreas_endocrinogenesis" / "pancreas_bastidas_ponce2019_3696x2000.h5ad"

needs_shared = pytest.mark.skipif(
    not SHARED_DATA.exists(), reason=f"{SHARED_DATA} is absent (a user's clone): tests on its data are skipped"
)


# one intra-op thread: the models here are small, and on a busy 2-core machine two threads
# contend badly (measured 5-10x slower); test time stays predictable
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    scvi.settings.seed = 0
    scvi.settings.progress_bar_style = "tqdm"
    warnings.filterwarnings("ignore", message=".*num_workers.*")


def _quiet_train(model, **kwargs):
    kwargs.setdefault("enable_progress_bar", False)
    model.train(**kwargs)
    return model


@pytest.fixture(scope="session")
def synthetic_adata():
    return kdcpt.datasets.synthetic(n_cells=1200, seed=0)


@pytest.fixture(scope="session")
def synthetic_model(synthetic_adata):
    """A KDCPT trained on planted synthetic data (with the TF prior)."""
    scvi.settings.seed = 0
    adata = synthetic_adata
    kdcpt.KDCPT.setup_anndata(adata, labels_key="phenotype", prior_key="is_tf")
    model = kdcpt.KDCPT(adata)
    return _quiet_train(model, max_epochs=12)


@pytest.fixture(scope="session")
def pbmc_model():
    """A KDCPT trained on scanpy's bundled PBMC data (human TF prior)."""
    scvi.settings.seed = 0
    adata = kdcpt.datasets.pbmc68k_reduced()
    adata.var["is_tf"] = kdcpt.datasets.is_transcription_factor(adata.var_names, species="human")
    kdcpt.KDCPT.setup_anndata(adata, labels_key="bulk_labels", prior_key="is_tf")
    model = kdcpt.KDCPT(adata)
    return _quiet_train(model, max_epochs=25)


@pytest.fixture(scope="session")
def transition_model():
    """A small KDCPT on synthetic data whose transitioning cells carry uncertain labels.

    With ``transition_labels="sampled"`` a cell on its way ``Pi -> P(i+1)`` is labelled
    ``P(i+1)`` with probability ``w``, so the planted lineage shows in the posterior
    transition matrix (``P[Pi, P(i+1)]`` about 0.03-0.06) and a knockout can terminate it.
    """
    scvi.settings.seed = 0
    adata = kdcpt.datasets.synthetic(n_cells=1200, seed=0, transition_labels="sampled")
    kdcpt.KDCPT.setup_anndata(adata, labels_key="phenotype", prior_key="is_tf")
    model = kdcpt.KDCPT(adata, n_tokens=64, n_selected=16, d_model=32, n_hidden=64, n_pcs=20)
    return _quiet_train(model, max_epochs=25)
