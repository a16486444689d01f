"""Issue 4, benchmark 2: speed of a whole-genome knockout screen on pancreas, on CPU.

Knocks out a random subset of genes with the sparse recompute (only the cells expressing the
gene are rerun) and with every cell rerun, checks the two give the same result, and
extrapolates both to all 2,000 genes from the measured cells per second and the exact number
of cell runs each screen needs (the number of nonzeros of X for the sparse screen,
genes × cells for the full one).

    python benchmarks/knockout_screen.py --threads 1 --n-genes 60 --n-genes-full 12
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from _ko_common import machine, trained_model, write  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine has 2 shared cores)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs of the screened model")
    p.add_argument("--n-genes", type=int, default=60, help="random genes timed with the sparse recompute")
    p.add_argument("--n-genes-full", type=int, default=12, help="of those, genes also timed with every cell rerun")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--all", action="store_true", help="run the whole 2,000-gene sparse screen instead of extrapolating")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, adata, _ = trained_model("pancreas", args.epochs)
    t_train = time.perf_counter() - t0
    X = adata.X
    n_cells, n_genes = X.shape
    nnz_per_gene = np.asarray((X > 0).sum(0)).ravel()
    rng = np.random.default_rng(0)
    genes = list(adata.var_names) if args.all else list(rng.choice(adata.var_names, args.n_genes, replace=False))
    sub = adata.var_names.get_indexer(genes)
    full_genes = genes[: args.n_genes_full]
    before = machine()

    model.knockout(genes[:2], inplace=False, progress=False, batch_size=args.batch_size)  # warm-up
    t = time.perf_counter()
    sparse_res = model.knockout(genes, inplace=False, progress=False, batch_size=args.batch_size)
    t_sparse = time.perf_counter() - t
    runs_sparse = int(nnz_per_gene[sub].sum())
    t = time.perf_counter()
    full_res = model.knockout(
        full_genes, inplace=False, progress=False, batch_size=args.batch_size, only_expressing=False
    )
    t_full = time.perf_counter() - t
    runs_full = len(full_genes) * n_cells
    after = machine()

    a = sparse_res.table.set_index(["gene", "source", "target"])["p_ko"]
    b = full_res.table.set_index(["gene", "source", "target"])["p_ko"]
    max_diff = float((a.loc[b.index] - b).abs().max())

    cps_sparse = runs_sparse / t_sparse
    cps_full = runs_full / t_full
    total_sparse_runs = int(nnz_per_gene.sum())
    total_full_runs = n_genes * n_cells
    whole_sparse_s = t_sparse if args.all else total_sparse_runs / cps_sparse
    whole_full_s = total_full_runs / cps_full
    result = {
        "command": "python benchmarks/"
        + " ".join(["knockout_screen.py", *(argv if argv is not None else sys.argv[1:])]),
        "data": f"pancreas {n_cells} cells x {n_genes} genes (raw counts), default KDCPT, {args.epochs} epochs",
        "train_or_load_s": round(t_train, 1),
        "machine_before": before,
        "machine_after": after,
        "torch_threads": args.threads,
        "batch_size": args.batch_size,
        "genes_timed_sparse": len(genes),
        "genes_timed_full": len(full_genes),
        "sparse": {
            "seconds": t_sparse,
            "cell_runs": runs_sparse,
            "cells_per_s": cps_sparse,
            "genes_per_s": len(genes) / t_sparse,
        },
        "full": {
            "seconds": t_full,
            "cell_runs": runs_full,
            "cells_per_s": cps_full,
            "genes_per_s": len(full_genes) / t_full,
        },
        "max_abs_difference_p_ko_sparse_vs_full": max_diff,
        "fraction_expressing_mean": float(nnz_per_gene.mean() / n_cells),
        "whole_screen": {
            "extrapolated": not args.all,
            "sparse_cell_runs": total_sparse_runs,
            "full_cell_runs": total_full_runs,
            "sparse_minutes": whole_sparse_s / 60,
            "full_minutes": whole_full_s / 60,
            "genes_per_s_sparse": n_genes / whole_sparse_s,
            "genes_per_s_full": n_genes / whole_full_s,
            "speedup_sparse_vs_full": whole_full_s / whole_sparse_s,
            "target_minutes": 10,
            "meets_target": whole_sparse_s / 60 < 10,
        },
    }
    w = result["whole_screen"]
    md = f"""# Knockout screen speed (issue 4, benchmark 2)

Command: `{result["command"]}`<br>
Data: {result["data"]}. CPU only, torch threads = {args.threads}, batch {args.batch_size}.  
Load before: `{before["uptime"]}`; after: `{after["uptime"]}` (2 cores shared with other developers).

| | genes timed | cell runs | seconds | cells/s | genes/s |
| --- | ---: | ---: | ---: | ---: | ---: |
| sparse recompute (expressing cells only) | {len(genes)} | {runs_sparse:,} | {t_sparse:.1f} | {cps_sparse:,.0f} | {len(genes) / t_sparse:.2f} |
| every cell recomputed | {len(full_genes)} | {runs_full:,} | {t_full:.1f} | {cps_full:,.0f} | {len(full_genes) / t_full:.2f} |

Max |p_ko(sparse) − p_ko(full)| over the shared genes: {max_diff:.2e} (same result).

Whole screen of all {n_genes} genes ({"measured" if args.all else "extrapolated from the cells/s above and the exact number of cell runs"}):
sparse **{w["sparse_minutes"]:.1f} min** ({w["genes_per_s_sparse"]:.2f} genes/s, {total_sparse_runs:,} cell runs:
genes are expressed in {100 * result["fraction_expressing_mean"]:.0f}% of cells on average) vs every cell
{w["full_minutes"]:.1f} min ({w["genes_per_s_full"]:.2f} genes/s, {total_full_runs:,} cell runs):
**{w["speedup_sparse_vs_full"]:.1f}× faster**. Target < 10 min: **{"met" if w["meets_target"] else "not met"}**.
"""
    write("knockout_screen", result, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
