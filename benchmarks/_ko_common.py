"""Helpers of the key-gene / knockout benchmarks: data, a cached trained model, machine notes."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"
RESULTS = HERE / "results"
SHARED = Path(os.environ.get("KDCPT_SHARED_DATA", "/work/shared/data"))
PANCREAS = SHARED / "pancreas_endocrinogenesis" / "pancreas_bastidas_ponce2019_3696x2000.h5ad"

warnings.filterwarnings("ignore")


def load(name: str, tf_source: str = "scenic"):
    """``pancreas`` (raw counts, obs 'clusters', mouse TF prior) or ``krumsiek11`` (obs 'cell_type').

    ``tf_source``: the mouse TF list of the prior; ``"scenic"`` by default, since most committed
    results were made with it (before AnimalTFDB v4, ``"animaltfdb4"``, became the package's default).
    """
    import scanpy_kdcpt as kdcpt

    if name == "pancreas":
        adata = kdcpt.datasets.pancreas(PANCREAS)
        if "counts" in adata.layers:
            adata.X = adata.layers["counts"].copy()
        adata.var["is_tf"] = kdcpt.datasets.is_transcription_factor(adata.var_names, species="mouse", source=tf_source)
        return adata, "clusters"
    if name == "krumsiek11":
        return kdcpt.datasets.krumsiek11(), "cell_type"
    raise ValueError(name)


def trained_model(name: str, max_epochs: int, retrain: bool = False, tf_source: str = "scenic", **model_kwargs):
    """A KDCPT with default settings (or ``model_kwargs``) trained on ``name`` (seed 0), cached in ``_work/``."""
    import scvi

    import scanpy_kdcpt as kdcpt

    adata, labels = load(name, tf_source)
    kdcpt.KDCPT.setup_anndata(adata, labels_key=labels, prior_key="is_tf")
    tag = [] if tf_source == "scenic" else [f"tf-{tf_source}"]  # the SCENIC caches keep their names
    path = WORK / "_".join(
        [f"ko_model_{name}_{max_epochs}", *tag, *(f"{k}-{v}" for k, v in sorted(model_kwargs.items()))]
    )
    if path.exists() and not retrain:
        try:
            return kdcpt.KDCPT.load(str(path), adata, accelerator="cpu"), adata, labels
        except (RuntimeError, ValueError, KeyError) as err:  # the architecture changed since
            print(f"cached model unusable ({err.__class__.__name__}); retraining", file=sys.stderr)
    scvi.settings.seed = 0
    model = kdcpt.KDCPT(adata, **model_kwargs)
    model.train(max_epochs=max_epochs, enable_progress_bar=False, accelerator="cpu")
    model.save(str(path), overwrite=True)
    return model, adata, labels


def machine() -> dict:
    import torch

    load = os.getloadavg()
    return {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "load_average_1_5_15": [round(x, 2) for x in load],
        "git_commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
        ).stdout.strip(),
    }


def write(stem: str, result: dict, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2, default=_default))
    (RESULTS / f"{stem}.md").write_text(markdown)
    print(f"wrote {RESULTS / stem}.json and .md")


def _default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
