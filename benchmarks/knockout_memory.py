"""Memory of a simulated knockout (``knockout(simulate="grn")``) on many cells (issue 18's leftover).

A fresh process per size builds ``kdcpt.datasets.synthetic(n_cells, 2,000 genes, 4 phenotypes)``,
trains KDCPT for 5 batches, computes the chain (pseudotime from P0) and fits the GRN; then, with
``tracemalloc`` (numpy and scipy arrays report their buffers to it; torch's do not), it records the
peak memory *allocated during* each call above what was allocated when it started:

- ``knockout("Reg_P2", simulate="grn")``;
- the same with ``n_shift_null=5`` randomised shifts;
- ``simulation.simulate_shift`` and ``simulation.perturbed_chain`` (with the knockout's PCA basis)
  alone, on the smoothed expression the knockout uses.

The smoothed expression itself (cells × genes float32, held by the knockout for the call) is
given beside them as the unit: ``n_cells × 2,000 × 4`` bytes.

Usage (repository root, project venv; ``PYTHONPATH`` picks the code measured)::

    python benchmarks/knockout_memory.py --cells 10000 20000 --label after
    PYTHONPATH=<earlier checkout>/src python benchmarks/knockout_memory.py --cells 10000 20000 --label before
    python benchmarks/knockout_memory.py --report

Results: ``benchmarks/results/knockout_memory.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"
RESULTS = HERE / "results"
N_GENES = 2_000


def _traced_peak(fn) -> tuple[object, float, float]:
    """``fn()``, the peak MB it allocated above what was allocated when it started, and its seconds."""
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, round((peak - start) / 2**20, 1), round(seconds, 2)


def one_size(n_cells: int) -> dict:
    import numpy as np
    import torch

    import scanpy_kdcpt as kdcpt
    from scanpy_kdcpt.perturb._simulate import ShiftSimulator

    torch.set_num_threads(1)
    adata = kdcpt.datasets.synthetic(n_cells=n_cells, n_genes=N_GENES, n_phenotypes=4, seed=0)
    kdcpt.KDCPT.setup_anndata(adata, labels_key="phenotype", prior_key="is_tf")
    model = kdcpt.KDCPT(adata)
    model.train(max_epochs=1, limit_train_batches=5, enable_progress_bar=False)
    model.compute_transitions(direction="pseudotime", root="P0")
    model.fit_grn(terminal=["P3"])
    rec: dict = {"n_cells": n_cells, "n_genes": N_GENES, "package": kdcpt.__file__, "peak_mb": {}, "seconds": {}}
    rec["expression_mb"] = round(n_cells * N_GENES * 4 / 2**20, 1)
    kw = {"simulate": "grn", "terminal": ["P2", "P3"], "basis": None, "progress": False}
    for name, fn in (
        ("knockout", lambda: model.knockout("Reg_P2", **kw)),
        ("knockout_5_shift_null", lambda: model.knockout("Reg_P2", n_shift_null=5, **kw)),
    ):
        _, rec["peak_mb"][name], rec["seconds"][name] = _traced_peak(fn)
        print(f"{n_cells} cells: {name} peak {rec['peak_mb'][name]} MB, {rec['seconds'][name]} s", flush=True)
    sim = ShiftSimulator.build(model, model.transitions_.cell_chain, n_propagation=3, sigma=0.25)
    gene = [list(model.var_names_).index("Reg_P2")]
    S, rec["peak_mb"]["simulate_shift"], rec["seconds"]["simulate_shift"] = _traced_peak(lambda: sim.shift(gene))
    _, rec["peak_mb"]["perturbed_chain"], rec["seconds"]["perturbed_chain"] = _traced_peak(lambda: sim.chain(gene, S))
    rec["shift_dtype"] = str(np.asarray(S).dtype)
    print(f"{n_cells} cells: {rec}", flush=True)
    return rec


def report() -> None:
    runs = [json.loads(p.read_text()) for p in sorted(WORK.glob("knockout_memory_*.json"))]
    runs.sort(key=lambda r: (r["n_cells"], r["label"]))
    lines = [
        "# Memory of a simulated knockout (issue 18)",
        "",
        *sorted({f"- `{r['command']}` (git {r['git']}, code: {r['label']}; {r['date']})" for r in runs}),
        "",
        "Synthetic lineage (`kdcpt.datasets.synthetic`, 2,000 genes), KDCPT trained for 5 batches, chain by "
        "pseudotime, GRN fitted with the defaults. Peak MB allocated *during* each call above what was allocated "
        "when it started (`tracemalloc`: numpy and scipy buffers; the classifier's torch tensors are not counted). "
        "`expression` is the smoothed log expression the knockout holds (cells × genes float32), the unit of the "
        "other columns. The git column is the checkout's HEAD when the run was made: `before` is the package "
        "as committed there, `after` the uncommitted change that added this benchmark, on top of it. Seconds "
        "(wall) depend on what else ran on the 2 shared cores (up to 3 jobs during these runs): read only the "
        "memory columns.",
        "",
        "| code | cells | expression | knockout | + 5 randomised shifts | simulate_shift | perturbed_chain | "
        "knockout s | + 5 shifts s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        p, s = r["peak_mb"], r["seconds"]
        lines.append(
            f"| {r['label']} ({r['git']}) | {r['n_cells']:,} | {r['expression_mb']:,.0f} | {p['knockout']:,.0f} | "
            f"{p['knockout_5_shift_null']:,.0f} | {p['simulate_shift']:,.0f} | {p['perturbed_chain']:,.0f} | "
            f"{s['knockout']} | {s['knockout_5_shift_null']} |"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "knockout_memory.json").write_text(json.dumps(runs, indent=1))
    (RESULTS / "knockout_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, nargs="+", default=[10_000, 20_000])
    p.add_argument("--label", default="after", help="what code is measured (e.g. before / after)")
    p.add_argument("--report", action="store_true")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.report:
        return report()
    if args.child:
        print("RESULT " + json.dumps(one_size(args.child)), flush=True)
        return None
    WORK.mkdir(exist_ok=True)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    command = "python benchmarks/knockout_memory.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for n in args.cells:  # a fresh process per size
        out = subprocess.run([sys.executable, __file__, "--child", str(n)], capture_output=True, text=True)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{n} cells failed:\n{out.stderr[-3000:]}")
        rec = json.loads(line[len("RESULT ") :]) | {
            "label": args.label,
            "git": git,
            "command": command,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        (WORK / f"knockout_memory_{args.label}_{n}.json").write_text(json.dumps(rec, indent=1))
        print(f"{n} cells ({args.label}): {rec['peak_mb']}", flush=True)
    return None


if __name__ == "__main__":
    main()
