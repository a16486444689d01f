"""Shared helpers of the benchmark scripts: datasets, fixed splits, timing, machine notes."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"
RESULTS = HERE / "results"
SHARED_DATA = Path(os.environ.get("KDCPT_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
if not SHARED_DATA.exists():
    SHARED_DATA = Path("/work/shared/data")

SEED = 0
TEST_SIZE = 0.2
TORCH_THREADS = 2


@dataclass
class Dataset:
    """One benchmark dataset, ready for every method."""

    name: str
    adata: ad.AnnData  # X: log1p-normalised (1e4) or as shipped (PBMC); layers["counts"] when counts exist
    labels_key: str
    species: str
    has_counts: bool

    @property
    def labels(self) -> pd.Series:
        return self.adata.obs[self.labels_key].astype(str)


def _dense(X) -> np.ndarray:
    return np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float32)


def _log_normalize_counts(counts: np.ndarray) -> np.ndarray:
    size = counts.sum(1, keepdims=True)
    return np.log1p(counts / np.maximum(size, 1) * 1e4).astype(np.float32)


def load_dataset(name: str) -> Dataset:
    """``pbmc`` (pbmc68k_reduced, bulk_labels), ``pancreas`` (clusters), ``paul15`` (cell_type).

    ``X`` is log-normalised in every returned AnnData; counts (where the dataset has them) are
    in ``layers["counts"]``. ``var["is_tf"]`` holds the shipped transcription-factor prior.
    """
    import scanpy_kdcpt as kdcpt

    if name == "pbmc":
        a = kdcpt.datasets.pbmc68k_reduced()
        a = ad.AnnData(X=_dense(a.X), obs=a.obs[["bulk_labels"]].copy(), var=pd.DataFrame(index=a.var_names.copy()))
        ds = Dataset("pbmc68k_reduced", a, "bulk_labels", "human", has_counts=False)
    elif name == "pancreas":
        src = ad.read_h5ad(SHARED_DATA / "pancreas_endocrinogenesis" / "pancreas_bastidas_ponce2019_3696x2000.h5ad")
        counts = _dense(src.layers["counts"])
        a = ad.AnnData(X=_log_normalize_counts(counts), obs=src.obs[["clusters"]].copy(),
                       var=pd.DataFrame(index=src.var_names.copy()), layers={"counts": counts})
        ds = Dataset("pancreas", a, "clusters", "mouse", has_counts=True)
    elif name == "paul15":
        src = ad.read_h5ad(SHARED_DATA / "paul15_tradeseq" / "paul15_tradeseq_subset.h5ad")
        counts = _dense(src.layers["counts"])
        a = ad.AnnData(X=_log_normalize_counts(counts), obs=src.obs[["cell_type"]].copy(),
                       var=pd.DataFrame(index=src.var_names.copy()), layers={"counts": counts})
        ds = Dataset("paul15", a, "cell_type", "mouse", has_counts=True)
    elif name == "snare":
        # RNA of SNARE-seq mouse cortex (raw UMI counts, 1,677 genes, 23 cell types); stratified
        # subsample to SNARE_N_CELLS cells (default 4,000, seed 0) to fit the session's time
        import mudata as md

        src = md.read_h5ad(str(SHARED_DATA / "snare_mouse_cortex" / "snare_mouse_cortex.h5mu"), "rna")
        n_cells = int(os.environ.get("SNARE_N_CELLS", 4000))
        if n_cells < src.n_obs:
            from sklearn.model_selection import train_test_split

            keep, _ = train_test_split(np.arange(src.n_obs), train_size=n_cells, random_state=0,
                                       stratify=src.obs["cell_type"].astype(str).to_numpy())
            src = src[np.sort(keep)].copy()
        counts = _dense(src.X)
        a = ad.AnnData(X=_log_normalize_counts(counts), obs=src.obs[["cell_type"]].copy(),
                       var=pd.DataFrame(index=src.var_names.copy()), layers={"counts": counts})
        ds = Dataset("snare_rna", a, "cell_type", "mouse", has_counts=True)
    else:
        raise ValueError(f"unknown dataset {name!r}; use pbmc, pancreas, paul15 or snare")
    ds.adata.obs[ds.labels_key] = ds.adata.obs[ds.labels_key].astype(str).astype("category")
    ds.adata.obs_names_make_unique()
    # mouse: the SCENIC list, with which the committed results were made (before AnimalTFDB became the default)
    source = "scenic" if ds.species == "mouse" else None
    ds.adata.var["is_tf"] = kdcpt.datasets.is_transcription_factor(
        ds.adata.var_names, species=ds.species, source=source
    )
    return ds


def split(labels: pd.Series, seed: int = SEED, test_size: float = TEST_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Fixed stratified train / test positions."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    train, test = train_test_split(idx, test_size=test_size, stratify=np.asarray(labels), random_state=seed)
    return np.sort(train), np.sort(test)


def set_threads(n: int = TORCH_THREADS) -> None:
    import torch

    os.environ["OMP_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


@contextmanager
def timer():
    """``with timer() as t: ...``; then ``t["seconds"]`` and the load averages before / after."""
    t = {"load_before": load_average()}
    start = time.perf_counter()
    try:
        yield t
    finally:
        t["seconds"] = round(time.perf_counter() - start, 3)
        t["load_after"] = load_average()


def machine() -> dict:
    import torch

    return {
        "host_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "processor": platform.processor() or platform.machine(),
    }


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("scanpy-kdcpt", "scvi-tools", "scanpy", "anndata", "scikit-learn", "torch", "lightning"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=HERE, check=False).stdout.strip()
    except OSError:
        return ""


def now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, default=_json_default)
        f.write("\n")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))
