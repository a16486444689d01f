"""Directed transitions benchmark (issue 9): KD-CPT's directed chain against CellRank alone.

Parts (``--parts``):

- ``pancreas``: KDCPT on pancreas endocrinogenesis (spliced / unspliced layers). Net flux
  along Ductal → Ngn3 low EP → Ngn3 high EP → Pre-endocrine → Alpha / Beta / Delta /
  Epsilon for velocity, CytoTRACE and velocity + CytoTRACE, on the encoder embedding and on the
  fused latent; terminal phenotypes (net-flux sinks) and mean fates. Side by side: CellRank
  alone (the same kernels on a 50-PC PCA of log-normalised counts, coarse-grained with the
  given clusters, one-hot).
- ``paul15``: Paul 2015 (tradeSeq subset), diffusion pseudotime from the root phenotype
  "Multipotent progenitors": flux out to the five mature types; same comparison.
- ``synthetic``: the planted lineage P0 → P1 → P2 → P3, root P0, over seeds.
- ``speed``: :func:`scanpy_kdcpt.directed.directed_chain` on a synthetic 50-d lineage
  representation at 20k and 100k cells (each size in its own process: wall time, peak RSS).

Public API only: ``scanpy_kdcpt`` (KDCPT, directed, markov, datasets).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from _common import RESULTS, SHARED_DATA, WORK, git_commit, machine, now, versions

import scanpy_kdcpt as kdcpt
from scanpy_kdcpt import directed, markov

warnings.filterwarnings("ignore")

PANCREAS_STEPS = [
    ("Ductal", "Ngn3 low EP"),
    ("Ngn3 low EP", "Ngn3 high EP"),
    ("Ngn3 high EP", "Pre-endocrine"),
    ("Pre-endocrine", "Beta"),
    ("Pre-endocrine", "Alpha"),
    ("Pre-endocrine", "Delta"),
    ("Pre-endocrine", "Epsilon"),
]
PANCREAS_TERMINAL = ["Alpha", "Beta", "Delta", "Epsilon"]
PAUL_STEPS = [
    ("Multipotent progenitors", "GMP"),
    ("Multipotent progenitors", "Erythrocyte"),
    ("Multipotent progenitors", "Megakaryocytes"),
    ("GMP", "Monocytes"),
    ("GMP", "Neutrophils"),
    ("GMP", "Basophils"),
    ("Multipotent progenitors", "Basophils"),
]
PAUL_TERMINAL = ["Erythrocyte", "Megakaryocytes", "Monocytes", "Neutrophils", "Basophils"]


def _flux_steps(flux: pd.DataFrame, steps) -> dict:
    return {f"{a} -> {b}": round(float(flux.loc[a, b]), 2) for a, b in steps}


def _summary(P: np.ndarray, M, names, steps, terminal_expected, T) -> dict:
    sizes = np.asarray(M.sum(0)).ravel()
    flux = pd.DataFrame(markov.net_flux(P, sizes), index=names, columns=names)
    sinks = [names[i] for i in markov.terminal_phenotypes(P, sizes)]
    codes = [names.index(t) for t in terminal_expected]
    F = markov.fate_probabilities(T, M, codes)
    mean = pd.DataFrame(markov.mean_fate(F, M), index=names, columns=terminal_expected)
    return {
        "flux": _flux_steps(flux, steps),
        "n_positive_steps": int(sum(flux.loc[a, b] > 0 for a, b in steps)),
        "n_steps": len(steps),
        "sinks": sinks,
        "mean_fate": mean.round(3).to_dict(orient="index"),
        "n_unreached": int(np.isnan(F).any(1).sum()),
    }


def _pca(adata_counts: ad.AnnData) -> tuple[np.ndarray, object]:
    b = ad.AnnData(X=adata_counts.X.copy())
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    sc.pp.pca(b, n_comps=50, random_state=0)
    return b.obsm["X_pca"], b.X


def _train(adata, labels_key, epochs):
    import scvi

    scvi.settings.seed = 0
    kdcpt.KDCPT.setup_anndata(adata, labels_key=labels_key, prior_key="is_tf")
    model = kdcpt.KDCPT(adata)
    t = time.perf_counter()
    model.train(max_epochs=epochs, enable_progress_bar=False)
    return model, time.perf_counter() - t


def run_real(name: str, epochs: int) -> dict:
    if name == "pancreas":
        a = ad.read_h5ad(SHARED_DATA / "pancreas_endocrinogenesis" / "pancreas_bastidas_ponce2019_3696x2000.h5ad")
        labels, steps, terminal = "clusters", PANCREAS_STEPS, PANCREAS_TERMINAL
        a.X = a.layers["counts"].copy()
        settings = {
            "velocity": dict(direction="velocity"),
            "cytotrace": dict(direction="cytotrace"),
            "velocity+cytotrace": dict(direction={"velocity": 0.5, "cytotrace": 0.3, "connectivity": 0.2}),
        }
    else:
        a = ad.read_h5ad(SHARED_DATA / "paul15_tradeseq" / "paul15_tradeseq_subset.h5ad")
        labels, steps, terminal = "cell_type", PAUL_STEPS, PAUL_TERMINAL
        a.X = a.layers["counts"].copy()
        settings = {
            "pseudotime(root)": dict(direction="pseudotime", root="Multipotent progenitors"),
            "cytotrace": dict(direction="cytotrace"),
        }
    a.obs[labels] = a.obs[labels].astype(str).astype("category")
    # the SCENIC list: the committed results were made with it (before AnimalTFDB became the default)
    a.var["is_tf"] = kdcpt.datasets.is_transcription_factor(a.var_names, species="mouse", source="scenic")
    model, t_train = _train(a, labels, epochs)
    names = list(model.classes_)
    pred = model.get_predictions()
    acc = float((pred.pred.astype(str).to_numpy() == a.obs[labels].astype(str).to_numpy()).mean())
    out = {"n_cells": a.n_obs, "epochs": epochs, "train_seconds": round(t_train, 1), "train_accuracy": round(acc, 3)}
    M_soft = pred.proba.to_numpy()
    codes = a.obs[labels].cat.set_categories(names).cat.codes.to_numpy()
    H = markov.memberships(codes, len(names))
    Z_pca, X_log = _pca(a)
    rows = {}
    for n_setting, (setting, kw) in enumerate(settings.items()):
        # the fused latent only for the first direction (the comparison the issue asks for), to save time
        for rep in ("encoder", "latent") if n_setting == 0 else ("encoder",):
            t = time.perf_counter()
            res = model.compute_transitions(representation=rep, predictions=pred, inplace=False, **kw)
            secs = time.perf_counter() - t
            T = model.transitions_.cell_chain
            rows[f"KD-CPT {setting} [{rep}]"] = {
                "seconds": round(secs, 1),
                **_summary(res.matrix.to_numpy(), M_soft, names, steps, terminal, T),
            }
            print(setting, rep, rows[f"KD-CPT {setting} [{rep}]"]["flux"], flush=True)
        # CellRank alone: same kernels, PCA of log-normalised counts, given clusters (one-hot)
        t = time.perf_counter()
        T, rec = directed.directed_chain(
            a, Z_pca, expression=X_log, codes=codes, phenotypes=names, **{k: v for k, v in kw.items()}
        )
        secs = time.perf_counter() - t
        P = markov.coarse_grain(T, H)
        rows[f"CellRank alone {setting} [PCA, given clusters]"] = {
            "seconds": round(secs, 1),
            **_summary(P, H, names, steps, terminal, T),
        }
        print("cellrank", setting, rows[f"CellRank alone {setting} [PCA, given clusters]"]["flux"], flush=True)
    out["rows"] = rows
    return out


def run_synthetic(seeds) -> dict:
    import scvi

    res = []
    for seed in seeds:
        scvi.settings.seed = seed
        a = kdcpt.datasets.synthetic(n_cells=1200, seed=seed, transition_labels="sampled")
        kdcpt.KDCPT.setup_anndata(a, labels_key="phenotype", prior_key="is_tf")
        model = kdcpt.KDCPT(a, n_tokens=64, n_selected=16, d_model=32, n_hidden=64, n_pcs=20)
        model.train(max_epochs=15, enable_progress_bar=False)
        row = {"seed": seed}
        for rep in ("encoder", "latent"):
            r = model.compute_transitions(direction="pseudotime", root="P0", representation=rep, inplace=False)
            F = r.flux
            row[rep] = {f"P{i}->P{i + 1}": round(float(F.loc[f"P{i}", f"P{i + 1}"]), 2) for i in range(3)}
            P = r.matrix
            row[rep]["P(P0->P1)"] = round(float(P.loc["P0", "P1"]), 4)
            row[rep]["P(P1->P0)"] = round(float(P.loc["P1", "P0"]), 4)
        post = model.get_transition_matrix().matrix
        row["posterior"] = {
            "P(P0->P1)": round(float(post.loc["P0", "P1"]), 4),
            "P(P1->P0)": round(float(post.loc["P1", "P0"]), 4),
        }
        print(row, flush=True)
        res.append(row)
    return {"runs": res}


def speed_one(n: int) -> dict:
    """Directed chain on an n-cell synthetic lineage representation (50-d), pseudotime from a column."""
    import resource

    rng = np.random.default_rng(0)
    t = rng.uniform(0, 1, n)
    basis = rng.normal(size=(3, 50))
    Z = (np.c_[np.cos(3 * t), np.sin(3 * t), t] @ basis + 0.05 * rng.normal(size=(n, 50))).astype(np.float32)
    a = ad.AnnData(X=np.zeros((n, 1), np.float32), obs=pd.DataFrame({"pt": t}, index=[f"c{i}" for i in range(n)]))
    out = {"n_cells": n}
    # numba compiles pynndescent's and CellRank's kernels on first use (once per process):
    # timed apart, on 5,000 cells, so that the rows below are the cost of one chain
    t0, c0 = time.perf_counter(), time.process_time()
    w = a[:5000].copy()
    Dw, Ww = markov.knn_graph(Z[:5000], 30, exact_below=0)
    directed.directed_chain(w, Z[:5000], direction="pseudotime", time_key="pt", graph=(Dw, Ww))
    out["warmup_jit_seconds"] = round(time.perf_counter() - t0, 1)
    out["warmup_jit_cpu_seconds"] = round(time.process_time() - c0, 1)
    t0, c0 = time.perf_counter(), time.process_time()
    D, W = markov.knn_graph(Z, 30)
    out["knn_graph_seconds"] = round(time.perf_counter() - t0, 2)
    out["knn_graph_cpu_seconds"] = round(time.process_time() - c0, 2)
    t0, c0 = time.perf_counter(), time.process_time()
    T, _ = directed.directed_chain(a, Z, direction="pseudotime", time_key="pt", graph=(D, W))
    out["kernel_seconds"] = round(time.perf_counter() - t0, 2)
    out["kernel_cpu_seconds"] = round(time.process_time() - c0, 2)
    M = markov.memberships(np.minimum((t * 5).astype(int), 4), 5)
    t0 = time.perf_counter()
    P = markov.coarse_grain(T, M)
    out["coarse_grain_seconds"] = round(time.perf_counter() - t0, 3)
    out["total_seconds"] = round(out["knn_graph_seconds"] + out["kernel_seconds"] + out["coarse_grain_seconds"], 2)
    out["total_cpu_seconds"] = round(out["knn_graph_cpu_seconds"] + out["kernel_cpu_seconds"], 2)
    out["load_average"] = [round(x, 1) for x in __import__("os").getloadavg()]
    out["chain_nnz"] = int(T.nnz)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0)
    out["flux_0_to_1"] = round(float(markov.net_flux(P, np.asarray(M.sum(0)).ravel())[0, 1]), 1)
    return out


def run_speed(sizes) -> dict:
    rows = []
    for n in sizes:
        cmd = [sys.executable, __file__, "--speed-one", str(n)]
        r = subprocess.run(cmd, capture_output=True, text=True, check=True)
        base = subprocess.run(
            [
                sys.executable,
                "-c",
                "import resource, scanpy_kdcpt, cellrank; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        row = json.loads(r.stdout.strip().splitlines()[-1])
        row["import_rss_mb"] = round(int(base.stdout.strip()) / 1024, 0)
        print(row, flush=True)
        rows.append(row)
    return {"rows": rows}


def _row(cells) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def _md(results: dict, command: str) -> str:
    lines = [
        "# Directed transitions benchmark (issue 9)",
        "",
        f"Command: `{command}`  ",
        f"Date: {results['date']}, commit {results['commit']}, machine: {results['machine']['host_cpus']} CPUs "
        f"shared by six developers, {results['machine']['platform']}, torch threads 1.",
        "",
    ]
    lines.append(__doc__.split("Public API")[0].strip().split("\n", 1)[1].strip())
    lines.append("")
    for name in ("pancreas", "paul15"):
        if name not in results:
            continue
        r = results[name]
        lines += [
            f"## {name}",
            "",
            f"{r['n_cells']} cells, KDCPT trained {r['epochs']} epochs ({r['train_seconds']} s, "
            f"training accuracy {r['train_accuracy']}).",
            "",
        ]
        rows = r["rows"]
        steps = list(next(iter(rows.values()))["flux"])
        lines.append("| chain | " + " | ".join(steps) + " | positive steps | sinks (terminal) | s |")
        lines.append("|---|" + "---|" * (len(steps) + 3))
        for k, v in rows.items():
            lines.append(
                f"| {k} | "
                + " | ".join(f"{v['flux'][s]:+.1f}" for s in steps)
                + f" | {v['n_positive_steps']}/{v['n_steps']} | {', '.join(v['sinks'])} | {v['seconds']} |"
            )
        lines.append("")
        lines.append("Mean fate of the progenitor phenotypes (absorption into the expected terminal phenotypes):")
        lines.append("")
        for k, v in rows.items():
            prog = {
                p: f
                for p, f in v["mean_fate"].items()
                if p in ("Ductal", "Ngn3 low EP", "Ngn3 high EP", "Pre-endocrine", "Multipotent progenitors", "GMP")
            }
            lines.append(
                f"- {k}: "
                + "; ".join(f"{p}: " + ", ".join(f"{t} {x:.2f}" for t, x in f.items()) for p, f in prog.items())
            )
        lines.append("")
    if "synthetic" in results:
        lines += [
            "## synthetic planted lineage (root P0)",
            "",
            _row(
                [
                    "seed",
                    "repr",
                    "P0→P1 flux",
                    "P1→P2",
                    "P2→P3",
                    "P(P0→P1)",
                    "P(P1→P0)",
                    "posterior P(P0→P1)",
                    "posterior P(P1→P0)",
                ]
            ),
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in results["synthetic"]["runs"]:
            for rep in ("encoder", "latent"):
                v = row[rep]
                post = row["posterior"]
                lines.append(
                    _row(
                        [
                            row["seed"],
                            rep,
                            f"{v['P0->P1']:+.1f}",
                            f"{v['P1->P2']:+.1f}",
                            f"{v['P2->P3']:+.1f}",
                            f"{v['P(P0->P1)']:.3f}",
                            f"{v['P(P1->P0)']:.3f}",
                            f"{post['P(P0->P1)']:.3f}",
                            f"{post['P(P1->P0)']:.3f}",
                        ]
                    )
                )
        for rep in ("encoder", "latent"):
            for step in ("P0->P1", "P1->P2", "P2->P3"):
                vals = np.array([row[rep][step] for row in results["synthetic"]["runs"]])
                lines.append(
                    f"\n{rep} {step}: mean ± sd {vals.mean():+.1f} ± {vals.std(ddof=1) if len(vals) > 1 else 0:.1f}"
                )
        lines.append("")
    if "speed" in results:
        lines += [
            "## speed and memory of the cell chain",
            "",
            "Wall seconds on a machine whose load average was far above its 2 cores (shown); CPU seconds are the "
            "process's own time. JIT: numba compilation on first use, once per process (timed apart on 5,000 cells).",
            "",
            _row(
                [
                    "cells",
                    "kNN graph s (CPU)",
                    "kernel s (CPU)",
                    "coarse-grain s",
                    "total s (CPU)",
                    "JIT s (CPU)",
                    "peak RSS MB",
                    "RSS after imports MB",
                    "nnz",
                    "load avg",
                ]
            ),
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in results["speed"]["rows"]:
            cells = [r["n_cells"], f"{r['knn_graph_seconds']} ({r['knn_graph_cpu_seconds']})"]
            cells += [f"{r['kernel_seconds']} ({r['kernel_cpu_seconds']})", r["coarse_grain_seconds"]]
            cells += [f"{r['total_seconds']} ({r['total_cpu_seconds']})"]
            cells += [f"{r['warmup_jit_seconds']} ({r['warmup_jit_cpu_seconds']})", f"{r['peak_rss_mb']:.0f}"]
            cells += [f"{r['import_rss_mb']:.0f}", r["chain_nnz"], r["load_average"][0]]
            lines.append(_row(cells))
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--parts", nargs="+", default=["synthetic", "paul15", "pancreas", "speed"])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    p.add_argument("--speed-one", type=int, default=None)
    p.add_argument("--out", default="transitions")
    p.add_argument("--merge", action="store_true", help="keep the other parts of an earlier results file")
    args = p.parse_args()
    if args.speed_one:
        print(json.dumps(speed_one(args.speed_one)))
        return
    import torch

    torch.set_num_threads(1)
    WORK.mkdir(exist_ok=True)
    results = {"date": now(), "commit": git_commit(), "machine": machine(), "versions": versions()}
    earlier = RESULTS / f"{args.out}.json"
    commands = []
    if args.merge and earlier.exists():
        old = json.loads(earlier.read_text())
        commands = old.get("commands", [old.get("command")])
        results = {**old, **{k: v for k, v in results.items()}}
        results.pop("command", None)
    for part in args.parts:
        t = time.perf_counter()
        if part in ("pancreas", "paul15"):
            results[part] = run_real(part, args.epochs)
        elif part == "synthetic":
            results[part] = run_synthetic(args.seeds)
        elif part == "speed":
            results[part] = run_speed(args.sizes)
        print(part, "done", round(time.perf_counter() - t, 1), "s", flush=True)
        command = "python benchmarks/" + " ".join(["transitions.py", *sys.argv[1:]]) + f"  ({now()})"
        results["commands"] = [c for c in commands if c] + [command]
        # written after each part, so that a long run leaves what it finished
        (RESULTS / f"{args.out}.json").write_text(json.dumps(results, default=str, indent=1))
        (RESULTS / f"{args.out}.md").write_text(_md(results, "`, then `".join(results["commands"])))


if __name__ == "__main__":
    main()
