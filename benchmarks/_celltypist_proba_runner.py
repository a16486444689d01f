"""CellTypist probabilities for the calibration benchmark (runs in benchmarks/.venv-celltypist).

CellTypist 1.7.1 fails with scikit-learn >= 1.8, so it lives in its own venv (see
``_celltypist_runner.py``). Trains on FIT.h5ad and writes, for each of the other files, the
probability matrix of ``celltypist.annotate`` (one-vs-rest sigmoid probabilities, which do
not sum to one) to OUT.json.

Usage: ``python _celltypist_proba_runner.py FIT.h5ad LABEL_KEY OUT.json A.h5ad [B.h5ad ...]``
"""

from __future__ import annotations

import json
import sys
import time
import warnings

import anndata as ad


def main(fit_path: str, label_key: str, out_path: str, *paths: str) -> None:
    warnings.simplefilter("ignore")
    import celltypist
    import sklearn

    fit = ad.read_h5ad(fit_path)
    t0 = time.perf_counter()
    check = True
    try:
        model = celltypist.train(fit, labels=label_key, n_jobs=1, check_expression=True)
    except ValueError:
        check = False
        model = celltypist.train(fit, labels=label_key, n_jobs=1, check_expression=False)
    out = {"check_expression": check, "version": celltypist.__version__, "sklearn": sklearn.__version__, "sets": {}}
    for path in paths:
        data = ad.read_h5ad(path)
        pred = celltypist.annotate(data, model=model, majority_voting=False)
        prob = pred.probability_matrix
        out["sets"][path] = {
            "classes": [str(c) for c in prob.columns],
            "proba": prob.to_numpy().tolist(),
            "obs_names": [str(x) for x in prob.index],
        }
    out["seconds"] = round(time.perf_counter() - t0, 3)
    with open(out_path, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(*sys.argv[1:4], *sys.argv[4:])
