"""Does the mouse TF list of the prior change classification? SCENIC (the former default) against
AnimalTFDB v4 (the default since 2026-12-06), KDCPT defaults, on the three mouse data sets.

Per data set and seed: the split, training and scoring of ``classification.py`` (``run_kdcpt``:
stratified 80/20 split of the seed, KDCPT defaults, ``calibrate()``, held-out test cells), once with
each list as ``prior_key``. Both lists run in the same session on the same machine, so the paired
difference per seed is what to read.

    python benchmarks/tf_prior.py run --source {scenic,animaltfdb4} [--seeds 5]
    python benchmarks/tf_prior.py report
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _common as C  # noqa: E402
import classification as CL  # noqa: E402

DATASETS = ["pancreas", "paul15", "snare"]
SOURCES = ["scenic", "animaltfdb4"]
WORK = C.WORK / "tf_prior"
STATS = ["accuracy", "macro_f1", "ece_after", "coverage", "auroc_uncertainty"]


def _held_out(info: dict) -> dict:
    """The held-out calibration numbers of ``run_kdcpt`` (``classification._held_out_calibration``), short names."""
    names = {"ece_after": "ece_calibrated", "coverage": "conformal_coverage", "auroc_uncertainty": "uncertainty_auroc"}
    return {short: float("nan") if info.get(name) is None else float(info[name]) for short, name in names.items()}


def run(source: str, seeds: int) -> None:
    import scanpy_kdcpt as kdcpt
    from scanpy_kdcpt.metrics import classification_report

    C.set_threads(1)
    WORK.mkdir(parents=True, exist_ok=True)
    for name in DATASETS:
        ds = CL.load(name)
        ds.adata.var["is_tf"] = kdcpt.datasets.is_transcription_factor(ds.adata.var_names, "mouse", source=source)
        for seed in range(seeds):
            train, test = CL.split(ds, seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with C.timer() as t:
                    pred, info = CL.run_kdcpt(ds, train, test, seed=seed)
            rep = classification_report(ds.labels.iloc[test].to_numpy(), pred)
            res = {
                "dataset": name,
                "source": source,
                "seed": seed,
                "n_prior": int(ds.adata.var["is_tf"].sum()),
                "accuracy": rep["accuracy"],
                "macro_f1": rep["macro_f1"],
                **_held_out(info),
                "info": info,
                "wall_seconds": t["seconds"],
                "load_before": t["load_before"],
                "git": C.git_commit(),
                "date": C.now(),
            }
            C.write_json(WORK / f"{name}_{source}_s{seed}.json", res)
            print(f"[{name} {source} s{seed}] acc={res['accuracy']:.3f} F1={res['macro_f1']:.3f}", flush=True)


def report() -> None:
    rows = [json.loads(p.read_text()) for p in sorted(WORK.glob("*.json"))]
    if not rows:
        raise SystemExit(f"no runs in {WORK}")
    df = pd.DataFrame(rows)
    lines = [
        "# The mouse TF list of the prior: SCENIC vs AnimalTFDB v4 (KDCPT defaults)",
        "",
        "Command: `python benchmarks/tf_prior.py run --source scenic; python benchmarks/tf_prior.py run "
        "--source animaltfdb4; python benchmarks/tf_prior.py report` (repository root, project venv, "
        "the two runs side by side on the shared 2-core machine, torch threads 1).  ",
        f"Date: {C.now()}; git {sorted(set(df['git']))}.  ",
        "Split and scoring as in `classification.py` (stratified 80/20 of each seed, held-out 20 %; ECE "
        "after `calibrate()`, conformal coverage at α = 0.1, AUROC of the uncertainty for the misclassified "
        "cells). Mean ± sd over seeds; Δ = AnimalTFDB − SCENIC, paired by seed.",
        "",
        "| data | prior genes (SCENIC / AnimalTFDB) | seeds | statistic | SCENIC | AnimalTFDB v4 | Δ (paired) |",
        "|---|---|---:|---|---|---|---|",
    ]
    out = {"runs": rows, "summary": []}
    for name in DATASETS:
        d = df[df["dataset"] == name]
        if d.empty:
            continue
        wide = {s: d[d["source"] == s].set_index("seed") for s in SOURCES}
        both = sorted(set(wide["scenic"].index) & set(wide["animaltfdb4"].index))
        if not both:
            continue
        n_prior = " / ".join(str(int(wide[s]["n_prior"].iloc[0])) for s in SOURCES)
        for stat in STATS:
            a, b = wide["scenic"].loc[both, stat].astype(float), wide["animaltfdb4"].loc[both, stat].astype(float)
            diff = b - a
            lines.append(
                f"| {name} | {n_prior} | {len(both)} | {stat} | {a.mean():.3f} ± {a.std(ddof=1):.3f} | "
                f"{b.mean():.3f} ± {b.std(ddof=1):.3f} | {diff.mean():+.3f} ± {diff.std(ddof=1):.3f} |"
            )
            out["summary"].append(
                {"dataset": name, "stat": stat, "n_seeds": len(both), "scenic": a.tolist(), "animaltfdb4": b.tolist()}
            )
    notes = HERE / "_notes" / "tf_prior.md"
    if notes.exists():
        lines += ["", notes.read_text().rstrip()]
    (C.RESULTS / "tf_prior.md").write_text("\n".join(lines) + "\n")
    C.write_json(C.RESULTS / "tf_prior.json", out)
    print("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--source", choices=SOURCES, required=True)
    r.add_argument("--seeds", type=int, default=5)
    sub.add_parser("report")
    a = p.parse_args(argv)
    if a.cmd == "run":
        run(a.source, a.seeds)
    else:
        report()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
