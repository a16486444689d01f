"""Issue 10: the prior weight λ (``prior_weight``, prior as a bias on the attention logits).

For each λ, a default KDCPT is trained and scored on:

- synthetic data (planted regulators, 10 uninformative decoy TFs in the prior; several seeds):
  decoy TFs in each phenotype's top 20 by the Cell Learner's specificity and by attribution,
  the planted regulator's rank, held-out macro-F1;
- pancreas (one seed, 10 epochs): median rank of the known markers / regulators (as in
  ``keygenes.py``) by the Cell Learner's specificity and by attribution, held-out macro-F1.

Held-out: the model's own validation + calibration cells (never trained on).

    python benchmarks/prior_weight.py --weights 0 0.1 0.3 0.6 1.0 --seeds 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ko_common import load, machine, write  # noqa: E402
from keygenes import MARKERS, recovery  # noqa: E402


def held_out_f1(model) -> float:
    from sklearn.metrics import f1_score

    cells = np.concatenate([model.validation_indices, model.calibration_indices_]).astype(int)
    codes, labelled = model.labels_()
    cells = cells[labelled[cells]]
    pred = model.get_predictions().proba.to_numpy().argmax(1)
    return float(f1_score(codes[cells], pred[cells], average="macro"))


def run_synthetic(weight: float, seed: int, epochs: int) -> dict:
    import scvi

    import scanpy_kdcpt as kdcpt

    adata = kdcpt.datasets.synthetic(n_cells=1200, seed=seed)
    kdcpt.KDCPT.setup_anndata(adata, labels_key="phenotype", prior_key="is_tf")
    scvi.settings.seed = seed
    model = kdcpt.KDCPT(adata, prior_weight=weight)
    model.train(max_epochs=epochs, enable_progress_bar=False, accelerator="cpu")
    kg = model.get_key_genes()
    decoys = [g for g in adata.var_names if g.startswith("TF_decoy")]
    out = {"weight": weight, "seed": seed, "held_out_macro_f1": held_out_f1(model)}
    for by in ("specificity", "attribution"):
        rank = kg.statistic(by).rank(ascending=False)
        out[f"decoys_top20_{by}"] = float((rank.loc[decoys] <= 20).sum(0).mean())
        out[f"regulator_rank_{by}"] = float(np.mean([rank.loc[f"Reg_{p}", p] for p in rank.columns]))
    return out


def run_pancreas(weight: float, epochs: int) -> dict:
    import scvi

    import scanpy_kdcpt as kdcpt

    adata, labels = load("pancreas")
    kdcpt.KDCPT.setup_anndata(adata, labels_key=labels, prior_key="is_tf")
    scvi.settings.seed = 0
    model = kdcpt.KDCPT(adata, prior_weight=weight)
    model.train(max_epochs=epochs, enable_progress_bar=False, accelerator="cpu")
    kg = model.get_key_genes()
    out = {"weight": weight, "held_out_macro_f1": held_out_f1(model)}
    for by in ("specificity", "attribution"):
        rec = recovery(kg.statistic(by), MARKERS["pancreas"])
        out[f"marker_median_rank_{by}"] = float(np.median(list(rec.values())))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.1, 0.3, 0.6, 1.0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=12, help="synthetic epochs (pancreas: 10)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-pancreas", action="store_true")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    before = machine()
    t0 = time.perf_counter()
    syn = pd.DataFrame([run_synthetic(w, s, args.epochs) for w in args.weights for s in range(args.seeds)])
    print(syn, flush=True)
    panc = None if args.skip_pancreas else pd.DataFrame([run_pancreas(w, 10) for w in args.weights])
    print(panc, flush=True)
    command = "python benchmarks/prior_weight.py " + " ".join(argv if argv is not None else sys.argv[1:])
    agg = syn.groupby("weight").agg(["mean", "std"])
    lines = [
        "# Prior weight λ (issue 10)",
        "",
        f"Command: `{command}`  ",
        f"Date: {before['date']}; git {before['git_commit']}; torch threads {args.threads}; "
        f"{time.perf_counter() - t0:.0f} s.  ",
        f"Load before: `{before['uptime']}`; after: `{machine()['uptime']}`.",
        "",
        f"## Synthetic ({args.seeds} seeds, 1,200 cells, 10 decoy TFs, {args.epochs} epochs; mean ± sd)",
        "",
        "| λ | held-out macro-F1 | decoys in top 20 (specificity) | decoys in top 20 (attribution) | "
        "regulator rank (specificity) | regulator rank (attribution) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]

    def ms(w, col):
        return f"{agg.loc[w, (col, 'mean')]:.3f} ± {agg.loc[w, (col, 'std')]:.3f}"

    for w in agg.index:
        lines.append(
            f"| {w:g} | {ms(w, 'held_out_macro_f1')} | {ms(w, 'decoys_top20_specificity')} | "
            f"{ms(w, 'decoys_top20_attribution')} | {ms(w, 'regulator_rank_specificity')} | "
            f"{ms(w, 'regulator_rank_attribution')} |"
        )
    if panc is not None:
        lines += [
            "",
            "## Pancreas (seed 0, 10 epochs)",
            "",
            "| λ | held-out macro-F1 | marker median rank (specificity) | marker median rank (attribution) |",
            "| --- | --- | --- | --- |",
        ]
        for r in panc.itertuples(index=False):
            lines.append(
                f"| {r.weight:g} | {r.held_out_macro_f1:.3f} | {r.marker_median_rank_specificity:.0f} | "
                f"{r.marker_median_rank_attribution:.0f} |"
            )
    out = {
        "command": command,
        "machine_before": before,
        "synthetic": syn.to_dict("records"),
        "pancreas": None if panc is None else panc.to_dict("records"),
    }
    write("prior_weight", out, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
