"""The convex first stage's scheme (issue 20): one multinomial softmax or one binary regression
per phenotype against the rest (one-vs-rest, as CellTypist fits), each with the package's rule
for ``C`` (``scanpy_kdcpt.linear.fit``: 3-fold CV macro-F1, class-balanced).

The first stage alone on 80 % of each benchmark training split (what the model's inner split
leaves it), scored (macro-F1) on the held-out test cells of ``classification.py``'s split; Kang:
one fixed split (train on control, test on IFN-β-stimulated cells).

    python benchmarks/first_stage_scheme.py pbmc paul15 pancreas snare kang
"""

import datetime as dt
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import sparse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from classification import load, split
from sklearn.metrics import confusion_matrix, f1_score

from scanpy_kdcpt import linear

warnings.simplefilter("ignore")
HERE = Path(__file__).resolve().parent
RES = HERE / "results" / "first_stage_scheme"


def per_class(truth: np.ndarray, pred: np.ndarray, n: int) -> list[float]:
    return np.round(f1_score(truth, pred, average=None, labels=range(n)), 4).tolist()


def run(names: list[str], seeds: list[int]) -> dict:
    out = {}
    for name in names:
        ds = load(name)
        cats = [str(c) for c in ds.labels.astype("category").cat.categories]
        codes = ds.labels.astype("category").cat.codes.to_numpy()
        X = sparse.csr_matrix(ds.adata.X, dtype=np.float64)
        for seed in [0] if name == "kang" else seeds:
            tr, te = split(ds, seed)
            rng = np.random.default_rng(seed)  # the model's inner split: 80 % of the training split
            tr = np.sort(rng.choice(tr, int(0.8 * len(tr)), replace=False))
            row = {}
            for scheme in linear.SCHEMES:
                t0 = time.perf_counter()
                W, b, info = linear.fit(X[tr], codes[tr], int(codes.max()) + 1, seed=seed, scheme=scheme)
                pred = np.asarray(X[te] @ W.T + b).argmax(1)
                row[scheme] = {
                    "macro_f1": round(float(f1_score(codes[te], pred, average="macro")), 4),
                    "accuracy": round(float((pred == codes[te]).mean()), 4),
                    "f1_per_class": dict(zip(cats, per_class(codes[te], pred, len(cats)), strict=True)),
                    "confusion": confusion_matrix(codes[te], pred, labels=range(len(cats))).tolist(),
                    "C": info.C,
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            out[f"{name}_s{seed}"] = row
            print(name, seed, row, flush=True)
    return out


def report(out: dict, cmd: str) -> None:
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    date = dt.datetime.now().isoformat(timespec="seconds")
    RES.with_suffix(".json").write_text(json.dumps({"command": cmd, "date": date, "git": git, "runs": out}, indent=1))
    md = [
        "# First stage: multinomial or one-vs-rest (issue 20)",
        "",
        f"Command: `{cmd}`  ",
        f"Date: {date}; git {git}; 1 BLAS thread, 2 shared CPU cores",
        "",
        "Held-out macro-F1 of the first stage alone (C chosen by the package's rule in brackets; fit "
        "seconds with the cross-validation after the slash). Kang: one fixed split (control → stimulated).",
        "",
        "| split | multinomial | one-vs-rest | Δ (ovr − multinomial) |",
        "|---|---|---|---:|",
    ]
    for k, row in out.items():
        m, o = row["multinomial"], row["ovr"]
        md.append(
            f"| {k} | {m['macro_f1']:.3f} ({m['C']:g}) / {m['seconds']:.0f} s | "
            f"{o['macro_f1']:.3f} ({o['C']:g}) / {o['seconds']:.0f} s | {o['macro_f1'] - m['macro_f1']:+.3f} |"
        )
    md += ["", "Per dataset (mean ± sd over its splits):", ""]
    for name in sorted({k.rsplit("_s", 1)[0] for k in out}):
        rows = [r for k, r in out.items() if k.rsplit("_s", 1)[0] == name]
        d = np.array([r["ovr"]["macro_f1"] - r["multinomial"]["macro_f1"] for r in rows])
        m = np.array([r["multinomial"]["macro_f1"] for r in rows])
        o = np.array([r["ovr"]["macro_f1"] for r in rows])
        md.append(
            f"- {name} ({len(rows)} splits): multinomial {m.mean():.3f} ± {m.std():.3f}, one-vs-rest "
            f"{o.mean():.3f} ± {o.std():.3f}; difference {d.mean():+.3f} ± {d.std():.3f}"
        )
    for k, row in out.items():
        if not k.startswith("kang"):
            continue
        cats = list(row["multinomial"]["f1_per_class"])
        md += [
            "",
            f"Where the two differ on Kang ({k}): F1 per phenotype of the stimulated cells, and the "
            "confusion (rows: true, columns: predicted, in the order of the F1 columns).",
            "",
            "| scheme | " + " | ".join(cats) + " | confusion |",
            "|---" * (len(cats) + 2) + "|",
        ]
        for scheme in ("multinomial", "ovr"):
            r = row[scheme]
            conf = "; ".join(" ".join(str(v) for v in line) for line in r["confusion"])
            md.append(f"| {scheme} | " + " | ".join(f"{r['f1_per_class'][c]:.3f}" for c in cats) + f" | {conf} |")
    md.append("")
    RES.with_suffix(".md").write_text("\n".join(md))


if __name__ == "__main__":
    names = [a for a in sys.argv[1:] if not a.startswith("--")]
    cmd = "python benchmarks/first_stage_scheme.py " + " ".join(sys.argv[1:])
    report(run(names, [0, 1, 2]), cmd)
