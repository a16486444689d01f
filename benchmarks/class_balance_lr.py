"""Class balance of a linear classifier under a held-out condition (issue 20, Kang 2018).

The first stage's regression (L2, log-normalised input, query values clipped at the training maximum)
with and without class-balanced weights, at three fixed ``C`` (no inner cross-validation, so nothing is
chosen on the test cells: the table shows the whole range), on the splits of ``classification.py``:
held-out macro-F1, mean ± sd over the seeds, and for Kang the confusion of the monocytes.

    python benchmarks/class_balance_lr.py kang pancreas paul15 pbmc snare
"""

import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from classification import load, split  # noqa: E402

warnings.simplefilter("ignore")
GRID = (3e-4, 1e-3, 3e-3)


def main(names: list[str]) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from threadpoolctl import threadpool_limits

    rows, extra = [], {}
    for name in names:
        ds = load(name)
        X = ds.adata.X
        X = (X.toarray() if hasattr(X, "toarray") else np.asarray(X)).astype(np.float32)
        y = ds.labels.to_numpy()
        seeds = [0] if ds.name.startswith("kang") else range(5)  # Kang: one fixed split, a deterministic fit
        for seed in seeds:
            train, test = split(ds, seed)
            X_test = np.minimum(X[test], X[train].max(0))
            for c in GRID:
                for weight in ("balanced", None):
                    with threadpool_limits(1):
                        clf = LogisticRegression(C=c, class_weight=weight, max_iter=1000).fit(X[train], y[train])
                    pred = clf.predict(X_test)
                    rows.append({"dataset": ds.name, "seed": seed, "C": c, "class_weight": str(weight),
                                 "macro_f1": float(f1_score(y[test], pred, average="macro"))})
                    if ds.name.startswith("kang") and c == 1e-3:
                        extra[str(weight)] = pd.crosstab(y[test], pred).to_dict()
            print(name, seed, flush=True)
    df = pd.DataFrame(rows)
    table = df.groupby(["dataset", "C", "class_weight"])["macro_f1"].agg(["mean", "std", "count"]).reset_index()
    L = [
        "# Class-balanced or not: the first stage's regression alone on the classification splits",
        "",
        "Command: `python benchmarks/class_balance_lr.py " + " ".join(names) + "`  ",
        f"Date: {C.now()}; git {C.git_commit()}; 1 BLAS thread.",
        "",
        (__doc__ or "").split("\n\n")[1],
        "",
        "| dataset | C | balanced | not balanced |",
        "|---|---:|---:|---:|",
    ]
    for (dsn, c), g in table.groupby(["dataset", "C"]):
        cell = {}
        for _, r in g.iterrows():
            sd = f" ± {r['std']:.3f}" if r["count"] > 1 else ""
            cell[r["class_weight"]] = f"{r['mean']:.3f}{sd}"
        L.append(f"| {dsn} | {c:g} | {cell.get('balanced', '')} | {cell.get('None', '')} |")
    for weight, ct in extra.items():
        L += ["", f"Kang, C = 0.001, class_weight={weight}: true (rows) × predicted (columns), stimulated cells", ""]
        ct = pd.DataFrame(ct).fillna(0).astype(int)
        L.append("| true \\ predicted | " + " | ".join(ct.columns) + " |")
        L.append("|---|" + "---:|" * len(ct.columns))
        L += [f"| {i} | " + " | ".join(str(v) for v in r) + " |" for i, r in ct.iterrows()]
    (C.RESULTS / "class_balance_lr.md").write_text("\n".join(L) + "\n")
    C.write_json(C.RESULTS / "class_balance_lr.json", {"command": L[2], "rows": rows, "kang_confusion": extra})
    print("\n".join(L))


if __name__ == "__main__":
    main(sys.argv[1:])
