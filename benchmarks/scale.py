"""Scale benchmark of issue 13: KDCPT on a backed (on-disk) sparse AnnData in bounded memory.

For each size, a synthetic sparse counts file (cells × 2,000 genes, 3 phenotypes with planted
marker genes, ~5 % nonzero) is written to ``benchmarks/_work/scale_<n>.h5ad`` block by block,
then a fresh Python process (so that writing the file does not count) runs the public API on
``anndata.read_h5ad(path, backed="r")``:

``setup_anndata`` → ``KDCPT()`` (PCA encoder fit on a streamed subsample) → ``train`` (a few
batches: ``limit_train_batches``; ``--epoch`` for one full epoch) → ``predict`` → ``annotate``.

Each step is timed, and the process's peak resident memory (``ru_maxrss``) is read after each
step. The file's X is never loaded whole; its in-memory size (data + indices + indptr) is
reported beside the peak to show the bound.

Usage (repository root, project venv)::

    python benchmarks/scale.py --cells 50000                  # predict + annotate at 50k
    python benchmarks/scale.py --cells 50000 100000 200000    # linearity
    python benchmarks/scale.py --cells 100000 --epoch         # one full training epoch at 100k

Results: ``benchmarks/results/scale.json`` and ``scale.md`` (merged with earlier sizes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"
RESULTS = HERE / "results"
N_GENES = 2_000
N_PHENOTYPES = 3
BLOCK = 10_000


def make_file(n_cells: int, path: Path, seed: int = 0) -> float:
    """Write a sparse counts h5ad block by block; return the in-memory size of X (MB)."""
    import anndata as ad
    import h5py
    import pandas as pd
    from anndata.io import sparse_dataset, write_elem
    from scipy import sparse

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, N_PHENOTYPES, n_cells)
    base = rng.gamma(0.3, 0.2, N_GENES)  # ~5 % of entries nonzero
    markers = {p: rng.choice(N_GENES, 20, replace=False) for p in range(N_PHENOTYPES)}
    obs = pd.DataFrame(
        {"phenotype": pd.Categorical([f"P{p}" for p in labels])}, index=[f"cell_{i}" for i in range(n_cells)]
    )
    var = pd.DataFrame(index=[f"gene_{j}" for j in range(N_GENES)])
    ad.AnnData(obs=obs, var=var).write_h5ad(path)  # obs / var; X appended below
    nbytes = 0
    with h5py.File(path, "a") as f:
        if "X" in f:
            del f["X"]
        for start in range(0, n_cells, BLOCK):
            lab = labels[start : start + BLOCK]
            rate = np.tile(base, (len(lab), 1))
            for p, genes in markers.items():
                rate[np.ix_(lab == p, genes)] += 2.0
            block = sparse.csr_matrix(rng.poisson(rate).astype(np.float32))
            nbytes += block.data.nbytes + block.indices.nbytes + block.indptr.nbytes
            if start == 0:
                write_elem(f, "X", block)
            else:
                sparse_dataset(f["X"]).append(block)
    return nbytes / 1e6


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def run_size(path: Path, *, epoch: bool, train_batches: int) -> dict:
    """Child process: the public API on the backed file; times and peak RSS per step."""
    import warnings

    warnings.filterwarnings("ignore")
    import anndata as ad
    import scvi
    import torch

    import scanpy_kdcpt as kdcpt

    torch.set_num_threads(1)
    scvi.settings.seed = 0
    out = {"rss_after_imports_mb": _rss_mb()}
    steps = {}

    def step(name, f):
        t0 = time.perf_counter()
        r = f()
        steps[name] = {"seconds": time.perf_counter() - t0, "peak_rss_mb": _rss_mb()}
        return r

    adata = step("read_backed", lambda: ad.read_h5ad(path, backed="r"))
    out["n_cells"] = int(adata.n_obs)
    step("setup_anndata", lambda: kdcpt.KDCPT.setup_anndata(adata, labels_key="phenotype"))
    model = step("init (PCA on a streamed subsample)", lambda: kdcpt.KDCPT(adata))
    train_kwargs = {} if epoch else {"limit_train_batches": train_batches, "limit_val_batches": 2}
    step(
        "train (1 full epoch)" if epoch else f"train ({train_batches} batches)",
        lambda: model.train(
            max_epochs=1, enable_progress_bar=False, enable_model_summary=False, early_stopping=False, **train_kwargs
        ),
    )
    if not epoch:
        pred = step("predict", lambda: model.predict())
        out["accuracy"] = float((pred.astype(str).to_numpy() == adata.obs["phenotype"].astype(str).to_numpy()).mean())
        step("annotate", lambda: model.annotate())
        out["written"] = sorted(c for c in adata.obs.columns if c.startswith("kdcpt_"))
    out["steps"] = steps
    out["peak_rss_mb"] = _rss_mb()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[50_000])
    parser.add_argument("--epoch", action="store_true", help="time one full training epoch (no predict/annotate)")
    parser.add_argument("--train-batches", type=int, default=10)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_size(Path(args.child), epoch=args.epoch, train_batches=args.train_batches)))
        return
    WORK.mkdir(exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    res_path = RESULTS / "scale.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {"runs": []}
    for n in args.cells:
        path = WORK / f"scale_{n}.h5ad"
        if not path.exists():
            t0 = time.perf_counter()
            x_mb = make_file(n, path)
            print(f"wrote {path} ({x_mb:.0f} MB of X in memory) in {time.perf_counter() - t0:.0f} s", flush=True)
            (WORK / f"scale_{n}.json").write_text(json.dumps({"x_in_memory_mb": x_mb}))
        x_mb = json.loads((WORK / f"scale_{n}.json").read_text())["x_in_memory_mb"]
        cmd = [sys.executable, __file__, "--child", str(path), "--train-batches", str(args.train_batches)]
        if args.epoch:
            cmd.append("--epoch")
        malloc_env = {k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")}
        load_before = os.getloadavg()
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], capture_output=True, text=True).stdout.strip()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"child failed for {n} cells")
        run = json.loads(proc.stdout.strip().splitlines()[-1])
        run.update(
            {
                "mode": "epoch" if args.epoch else "predict+annotate",
                "n_genes": N_GENES,
                "x_in_memory_mb": x_mb,
                "file_mb": path.stat().st_size / 1e6,
                "load_avg_before": [round(v, 2) for v in load_before],
                "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": "".join(f"{k}={v} " for k, v in malloc_env.items())
                + "python benchmarks/scale.py "
                + " ".join(sys.argv[1:]),
                "malloc_env": malloc_env,
                "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), shared; no GPU; torch threads 1",
                "commit": commit + ("+uncommitted src" if dirty else ""),
            }
        )
        for s, v in run["steps"].items():
            if s in ("predict", "annotate"):
                v["ms_per_1k_cells"] = 1000 * v["seconds"] / n * 1000
        print(json.dumps(run, indent=1), flush=True)
        key = (n, run["mode"], malloc_env)  # a rerun replaces the row of the same size, mode and allocator
        results["runs"] = [r for r in results["runs"] if (r["n_cells"], r["mode"], r.get("malloc_env", {})) != key]
        results["runs"].append(run)
        res_path.write_text(json.dumps(results, indent=1))
        write_markdown(results)


def write_markdown(results: dict) -> None:
    lines = [
        "# Scale benchmark (issue 13): backed sparse AnnData in bounded memory",
        "",
        "Synthetic sparse counts (3 phenotypes, 20 planted markers each, ~5 % nonzero), 2,000 genes, written to",
        "an h5ad and opened with `anndata.read_h5ad(path, backed='r')`; X is never loaded whole. Each size runs",
        "in a fresh process; peak RSS is the process's `ru_maxrss` (imports included). KDCPT defaults,",
        "torch threads 1. See `benchmarks/scale.py` for the steps.",
        "",
        "| cells | mode | X in memory would be (MB) | init s | train s | predict s | annotate s"
        " | predict ms / 1k cells | annotate ms / 1k cells | peak RSS (MB) | RSS after imports (MB)"
        " | accuracy | load avg before | date | commit | command |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | --- |",
    ]

    def get(run, prefix, field="seconds"):
        for k, v in run["steps"].items():
            if k.startswith(prefix):
                return f"{v[field]:.1f}" if field in v else ""
        return ""

    for r in sorted(results["runs"], key=lambda r: (r["mode"], r["n_cells"], str(r.get("malloc_env", {})))):
        lines.append(
            f"| {r['n_cells']:,} | {r['mode']} | {r['x_in_memory_mb']:.0f} | {get(r, 'init')} | {get(r, 'train')}"
            f" | {get(r, 'predict')} | {get(r, 'annotate')} | {get(r, 'predict', 'ms_per_1k_cells')}"
            f" | {get(r, 'annotate', 'ms_per_1k_cells')} | {r['peak_rss_mb']:.0f} | {r['rss_after_imports_mb']:.0f}"
            f" | {r.get('accuracy', float('nan')):.3f} | {r['load_avg_before']} | {r['date']} | {r['commit']}"
            f" | `{r['command']}` |"
        )
    lines += ["", f"Machine: {results['runs'][-1]['machine']}. No GPU is available to this project.", ""]
    notes = HERE / "_notes" / "scale.md"
    if notes.exists():
        lines += [notes.read_text()]
    (RESULTS / "scale.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
