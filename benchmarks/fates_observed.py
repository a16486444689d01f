"""Pancreas fates against the terminal populations' observed shares (issue 21).

A phenotype's fate is its cells' eventual absorption probabilities averaged with their
memberships (``KDCPT.get_fate_probabilities``). The progenitors' fates are set beside the share
of each terminal type among the hormone-producing cells of the data. The two are not expected to
be equal — a snapshot's shares also reflect when each lineage started and how long its cells
stay — but a chain whose fates put nearly all mass on one type where the data hold four should
be read with care. Compared: KD-CPT (tutorial settings: 8 epochs, balanced class weights) with
the velocity, CytoTRACE and velocity + CytoTRACE chains over seeds, and CellRank alone (the same
kernels on a 50-PC PCA of log-normalised counts with the given clusters, seed-independent).

Command: ``python benchmarks/fates_observed.py [--seeds 0 1 2] [--epochs 8]``
→ ``benchmarks/results/fates_observed.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from _common import RESULTS, SHARED_DATA, git_commit, machine, now

import scanpy_kdcpt as kdcpt
from scanpy_kdcpt import directed, markov

warnings.filterwarnings("ignore")

TERMINAL = ["Alpha", "Beta", "Delta", "Epsilon"]
PROGENITORS = ["Ductal", "Ngn3 low EP", "Ngn3 high EP", "Pre-endocrine"]
DIRECTIONS = {
    "velocity": {"direction": "velocity"},
    "cytotrace": {"direction": "cytotrace"},
    "velocity+cytotrace": {"direction": {"velocity": 0.5, "cytotrace": 0.3, "connectivity": 0.2}},
}


def load() -> ad.AnnData:
    a = ad.read_h5ad(SHARED_DATA / "pancreas_endocrinogenesis" / "pancreas_bastidas_ponce2019_3696x2000.h5ad")
    a.X = a.layers["counts"].copy()
    a.obs["clusters"] = a.obs["clusters"].astype(str).astype("category")
    # the SCENIC list: the committed results were made with it (before AnimalTFDB became the default)
    a.var["is_tf"] = kdcpt.datasets.is_transcription_factor(a.var_names, species="mouse", source="scenic")
    return a


def observed_shares(a: ad.AnnData) -> dict:
    n = a.obs["clusters"].astype(str).value_counts()[TERMINAL]
    return (n / n.sum()).round(4).to_dict()


def tv(fate: dict, obs: dict) -> float:
    """Total-variation distance between a fate vector and the observed shares."""
    return round(0.5 * sum(abs(fate[t] - obs[t]) for t in TERMINAL), 4)


def kdcpt_runs(a: ad.AnnData, seed: int, epochs: int) -> dict:
    import scvi
    import torch

    torch.set_num_threads(1)
    scvi.settings.seed = seed
    b = a.copy()
    kdcpt.KDCPT.setup_anndata(b, labels_key="clusters", prior_key="is_tf")
    model = kdcpt.KDCPT(b, class_weights="balanced")
    t = time.perf_counter()
    model.train(max_epochs=epochs, enable_progress_bar=False)
    out = {"seed": seed, "train_seconds": round(time.perf_counter() - t, 1), "chains": {}}
    for name, kw in DIRECTIONS.items():
        model.compute_transitions(inplace=False, **kw)
        fates = model.get_fate_probabilities(terminal=TERMINAL)
        out["chains"][name] = fates.mean.loc[PROGENITORS].round(4).to_dict(orient="index")
        print(seed, name, out["chains"][name]["Ngn3 high EP"], flush=True)
    return out


def cellrank_alone(a: ad.AnnData) -> dict:
    b = ad.AnnData(X=a.X.copy())
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    sc.pp.pca(b, n_comps=50, random_state=0)
    names = list(a.obs["clusters"].cat.categories)
    codes = a.obs["clusters"].cat.codes.to_numpy()
    H = markov.memberships(codes, len(names))
    out = {}
    for name, kw in DIRECTIONS.items():
        T, _ = directed.directed_chain(a, b.obsm["X_pca"], expression=b.X, codes=codes, phenotypes=names, **kw)
        F = markov.fate_probabilities(T, H, [names.index(t) for t in TERMINAL])
        mean = pd.DataFrame(markov.mean_fate(F, H), index=names, columns=TERMINAL)
        out[name] = mean.loc[PROGENITORS].round(4).to_dict(orient="index")
    return out


def report(res: dict) -> str:
    obs = res["observed"]
    lines = [
        "# Pancreas fates against the observed terminal shares (issue 21)",
        "",
        f"Command: `{res['command']}`  ",
        f"Date: {res['date']}, commit {res['commit']}, machine: {res['machine']}.",
        "",
        "A phenotype's fate: its cells' eventual absorption in Alpha / Beta / Delta / Epsilon, averaged with",
        "their memberships (`get_fate_probabilities`). *Observed*: each type's share of the 1,284",
        "hormone-producing cells. TV: total-variation distance between the two (0: equal, 1: disjoint).",
        "KD-CPT: mean ± sd over seeds "
        f"{[r['seed'] for r in res['kdcpt']]} ({res['epochs']} epochs, `class_weights='balanced'`);",
        "CellRank alone: the same kernel on a 50-PC PCA with the given clusters (no seed).",
        "",
        "| chain | source | Alpha | Beta | Delta | Epsilon | TV to observed |",
        "|---|---|---|---|---|---|---|",
        "| observed | hormone cells | " + " | ".join(f"{obs[t]:.3f}" for t in TERMINAL) + " | 0 |",
    ]
    for name in DIRECTIONS:
        for src in PROGENITORS:
            vals = {t: np.array([r["chains"][name][src][t] for r in res["kdcpt"]]) for t in TERMINAL}
            tvs = np.array([tv({t: vals[t][i] for t in TERMINAL}, obs) for i in range(len(res["kdcpt"]))])
            sds = {t: vals[t].std(ddof=1) if len(tvs) > 1 else 0.0 for t in TERMINAL}
            cells = " | ".join(f"{vals[t].mean():.3f} ± {sds[t]:.3f}" for t in TERMINAL)
            sd = tvs.std(ddof=1) if len(tvs) > 1 else 0.0
            lines.append(f"| KD-CPT {name} | {src} | {cells} | {tvs.mean():.3f} ± {sd:.3f} |")
        for src in PROGENITORS:
            f = res["cellrank"][name][src]
            lines.append(
                f"| CellRank alone {name} | {src} | "
                + " | ".join(f"{f[t]:.3f}" for t in TERMINAL)
                + f" | {tv(f, obs):.3f} |"
            )
    lines += [
        "",
        "Reading: where the progenitors' rows agree to three decimals, every path from them passes one",
        "bottleneck (Pre-endocrine) before it is absorbed, so where they start no longer matters. The",
        "velocity chain sends most of the mass to Beta, more than Beta's share of the hormone cells,",
        "and little to Delta and Epsilon, with or without KD-CPT: this comes from the velocity field,",
        "not from the coarse-graining. Mixing velocity with CytoTRACE potency (0.5 / 0.3, 0.2 connectivity)",
        "brings the progenitors' fates closest to the observed shares here; CytoTRACE alone puts the mass",
        "on Epsilon and Delta, but its chain runs backwards from Pre-endocrine into the hormone-producing",
        "types on this data (`transitions.md`), so its fates should not be read as lineage outputs.",
        "None of this is a reason to change the default: one data set, and shares are not fates.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=8)
    args = ap.parse_args(argv)
    a = load()
    res = {
        "command": "python benchmarks/fates_observed.py " + " ".join(sys.argv[1:]),
        "date": now(),
        "commit": git_commit(),
        "machine": machine(),
        "epochs": args.epochs,
        "observed": observed_shares(a),
        "cellrank": cellrank_alone(a),
        "kdcpt": [kdcpt_runs(a, s, args.epochs) for s in args.seeds],
    }
    (RESULTS / "fates_observed.json").write_text(json.dumps(res, indent=1))
    (RESULTS / "fates_observed.md").write_text(report(res))
    print(report(res))


if __name__ == "__main__":
    main()
