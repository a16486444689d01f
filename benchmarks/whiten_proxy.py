"""Can the training cells tell which scaling of the internal encoder to use (issue 20)?

``KDCPT(whiten=False)`` raised paul15's held-out macro-F1 by 0.029 and lowered PBMC's by 0.030
(``classification.md``, 5 splits). A rule that chooses the scaling per data set must see this
on the training cells. This checks cheap proxies: 5-fold cross-validated macro-F1 on the training
split of each of the classification splits, of a class-balanced logistic regression (C = 1), an
MLP (128 units, early stopping) and a 15-nearest-neighbour classifier, each on the model's own
encoder coordinates (100 components) whitened (each by its own sd) or not (all by the first's).
A proxy is of use only if its difference has the network's sign on both data sets.

    python benchmarks/whiten_proxy.py paul15 pbmc kang
"""

import os
import sys
import warnings
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from classification import load, split  # noqa: E402

warnings.simplefilter("ignore")
os.environ.setdefault("OMP_NUM_THREADS", "1")

#: held-out macro-F1, whiten=False minus the default, mean over the 5 splits (classification.md)
NETWORK = {"paul15": 0.029, "pbmc68k_reduced": -0.030, "kang2018_ctrl_to_stim": 0.007}


def main(names: list[str]) -> None:
    import scvi
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier

    import scanpy_kdcpt as kdcpt

    rows = []
    for name in names:
        ds = load(name)
        for seed in range(5):
            scvi.settings.seed = seed
            train, _ = split(ds, seed)
            a = ds.adata[train].copy()
            if ds.has_counts:
                a.X = a.layers.pop("counts")
            kdcpt.KDCPT.setup_anndata(a, labels_key=ds.labels_key, prior_key="is_tf")
            Z = kdcpt.KDCPT(a).get_encoder_representation(a)
            sd = Z.std(0)
            y = a.obs[ds.labels_key].astype(str).to_numpy()
            cv = StratifiedKFold(5, shuffle=True, random_state=seed)
            for scaling, X in (("whitened", Z / sd), ("not whitened", Z / sd[0])):
                for proxy, clf in (
                    ("logistic regression", LogisticRegression(C=1.0, class_weight="balanced", max_iter=3000)),
                    ("MLP", MLPClassifier((128,), alpha=1e-3, early_stopping=True, random_state=seed, max_iter=300)),
                    ("15-NN", KNeighborsClassifier(15)),
                ):
                    pred = cross_val_predict(clf, X, y, cv=cv)
                    rows.append(
                        {
                            "dataset": ds.name,
                            "seed": seed,
                            "scaling": scaling,
                            "proxy": proxy,
                            "macro_f1": float(f1_score(y, pred, average="macro")),
                        }
                    )
            print(name, seed, flush=True)
    df = pd.DataFrame(rows)
    wide = df.pivot_table(index=["dataset", "proxy", "seed"], columns="scaling", values="macro_f1")
    diff = (wide["not whitened"] - wide["whitened"]).groupby(["dataset", "proxy"]).agg(["mean", "std", "min", "max"])
    L = [
        "# Whitened or not: do the training cells tell? (issue 20)",
        "",
        "Command: `python benchmarks/whiten_proxy.py " + " ".join(names) + "`  ",
        f"Date: {C.now()}; git {C.git_commit()}; 1 thread.",
        "",
        (__doc__ or "").split("\n\n")[1].replace("\n", " "),
        "",
        "Cross-validated macro-F1 on the training cells, not whitened minus whitened (5 splits), beside the "
        "network's held-out difference:",
        "",
        "| dataset | proxy | proxy difference (mean ± sd) | range | network (held out) |",
        "|---|---|---:|---:|---:|",
    ]
    for (dsn, proxy), r in diff.iterrows():
        net = NETWORK.get(dsn)
        L.append(
            f"| {dsn} | {proxy} | {r['mean']:+.3f} ± {r['std']:.3f} | {r['min']:+.3f} to {r['max']:+.3f} | "
            + (f"{net:+.3f}" if net is not None else "")
            + " |"
        )
    (C.RESULTS / "whiten_proxy.md").write_text("\n".join(L) + "\n")
    C.write_json(C.RESULTS / "whiten_proxy.json", {"command": L[2], "rows": rows})
    print("\n".join(L))


if __name__ == "__main__":
    main(sys.argv[1:])
