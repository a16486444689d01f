"""Train CellTypist on a training h5ad and predict a test h5ad (runs in benchmarks/.venv-celltypist).

CellTypist 1.7.1 fails with scikit-learn >= 1.8, so it lives in its own venv::

    python3 -m venv benchmarks/.venv-celltypist
    benchmarks/.venv-celltypist/bin/pip install "scikit-learn<1.8" celltypist scanpy anndata

Usage: ``python _celltypist_runner.py TRAIN.h5ad TEST.h5ad LABEL_KEY OUT.json``

X must be log1p-normalised. CellTypist checks for exactly 1e4 counts per cell; when the data
fail that check (pbmc68k_reduced keeps a 765-gene subset of log-normalised values) the
runner retries with ``check_expression=False`` and records it.
"""

from __future__ import annotations

import json
import sys
import time
import warnings

import anndata as ad
import numpy as np


def main(train_path: str, test_path: str, label_key: str, out_path: str) -> None:
    warnings.simplefilter("ignore")
    import celltypist
    import sklearn

    train = ad.read_h5ad(train_path)
    test = ad.read_h5ad(test_path)
    t0 = time.perf_counter()
    check = True
    try:
        model = celltypist.train(train, labels=label_key, n_jobs=2, check_expression=True)
    except ValueError:
        check = False
        model = celltypist.train(train, labels=label_key, n_jobs=2, check_expression=False)
    pred = celltypist.annotate(test, model=model, majority_voting=False)
    labels = pred.predicted_labels["predicted_labels"].astype(str).to_numpy()
    seconds = time.perf_counter() - t0
    with open(out_path, "w") as f:
        json.dump({"pred": labels.tolist(), "seconds": round(seconds, 3), "check_expression": check,
                   "version": celltypist.__version__, "sklearn": sklearn.__version__,
                   "obs_names": list(map(str, np.asarray(test.obs_names)))}, f)


if __name__ == "__main__":
    main(*sys.argv[1:5])
