"""Issues 4 and 10: KD-CPT key genes against attribution baselines (public API only).

Every method gives per-phenotype gene scores (genes × phenotypes) for the same trained KDCPT:

- ``kdcpt``: the key-gene ranking of ``model.get_key_genes()`` (its default,
  ``KeyGenes.attribution``: mean gradient × (input − mean input) of the own-phenotype
  log-probability over the phenotype's cells);
- ``kdcpt_specificity``: ``KeyGenes.specificity`` (mean Cell Learner score in the phenotype minus
  elsewhere; the default ranking before the attribution);
- ``kdcpt_score``: the mean Cell Learner score per phenotype (attention guided by the prior);
- ``kdcpt_attention``: the mean prior-free attention per phenotype;
- ``wilcoxon``: scanpy ``rank_genes_groups`` (Wilcoxon) on log-normalised expression, by label;
- ``permutation``: permutation importance of the model — drop of log p(label) over a phenotype's
  cells when the gene's values are shuffled across the evaluation cells;
- ``integrated_gradients``: captum IG of p(label) w.r.t. the log-normalised input (baseline 0),
  mean |attribution| over a phenotype's cells;
- ``mean_expression``: mean log expression per phenotype (a trivial baseline);
- ``random``: random scores.

Fidelity (deletion / insertion): on held-out evaluation cells, each cell keeps only the top-k
genes of its predicted phenotype's ranking (insertion / "keep") or loses them ("remove");
accuracy against the labels and mean probability of the unperturbed prediction are reported.
Good rankings keep accuracy high with few genes and destroy it when removed.
Recovery: rank of known markers / TFs in their phenotype's ranking (pancreas: Neurog3, Arx,
Pax4, Pdx1, Ins1, Gcg, Sst, Ghrl; krumsiek11: the network's regulators of each fate).

    python benchmarks/keygenes.py --dataset krumsiek11
    python benchmarks/keygenes.py --dataset pancreas --eval-cells 600 --pi-cells 60
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ko_common import machine, trained_model, write  # noqa: E402

from scanpy_kdcpt.calibration import softmax  # noqa: E402

MARKERS = {
    "pancreas": {
        "Neurog3": ["Ngn3 high EP"],
        "Arx": ["Alpha"],
        "Gcg": ["Alpha"],
        "Pax4": ["Beta", "Delta"],
        "Pdx1": ["Beta"],
        "Ins1": ["Beta"],
        "Sst": ["Delta"],
        "Ghrl": ["Epsilon"],
    },
    # Krumsiek et al. 2011: Gata1 with EKLF (Ery) / Fli1 (Mk); Pu.1 with cJun / EgrNab (Mo), Cebpa with Gfi1 (Neu)
    "krumsiek11": {
        "Gata1": ["Ery", "Mk"],
        "EKLF": ["Ery"],
        "Fli1": ["Mk"],
        "Pu.1": ["Mo", "Neu"],
        "cJun": ["Mo"],
        "EgrNab": ["Mo"],
        "Cebpa": ["Neu"],
        "Gfi1": ["Neu"],
    },
}


def dense(X) -> np.ndarray:
    return np.asarray(X.toarray() if sparse.issparse(X) else X, dtype=np.float32)


class Runner:
    """Forward passes of the model's module on dense tensors (no AnnData in the loop)."""

    def __init__(self, model, batch_size: int = 512):
        import torch

        self.torch = torch
        self.model = model
        self.module = model.module.eval()
        self.batch_size = batch_size

    def proba(self, X: np.ndarray) -> np.ndarray:

        torch = self.torch
        out = []
        with torch.inference_mode():
            for s in range(0, len(X), self.batch_size):
                x = torch.as_tensor(X[s : s + self.batch_size])
                out.append(self.module.inference(x)["logits"].float().numpy())
        return softmax(np.concatenate(out), float(self.model.temperature_))


def log_norm(X: np.ndarray, is_counts: bool) -> np.ndarray:
    if not is_counts:
        return X
    return np.log1p(X / np.maximum(X.sum(1, keepdims=True), 1) * 1e4).astype(np.float32)


def permutation_importance(runner, X, y, n_cls, rng) -> np.ndarray:
    """genes × phenotypes: mean drop of log p(label) over the phenotype's cells."""
    base = np.log(np.clip(runner.proba(X)[np.arange(len(y)), y], 1e-12, None))
    n, g = X.shape
    out = np.zeros((g, n_cls))
    counts = np.bincount(y, minlength=n_cls).astype(float)
    perm = rng.permutation(n)
    for j in range(g):
        if not X[:, j].any():
            continue
        Xp = X.copy()
        Xp[:, j] = X[perm, j]
        lp = np.log(np.clip(runner.proba(Xp)[np.arange(n), y], 1e-12, None))
        out[j] = np.bincount(y, weights=base - lp, minlength=n_cls) / np.maximum(counts, 1)
    return out


def integrated_gradients(model, X_log, y, n_cls, steps: int) -> np.ndarray:
    import torch
    from captum.attr import IntegratedGradients

    module = model.module.eval()
    was_counts = module.is_counts
    module.is_counts = False  # attribute on the log-normalised input

    def f(x):
        return torch.softmax(module.inference(x)["logits"] / float(model.temperature_), -1)

    ig = IntegratedGradients(f)
    att = np.zeros_like(X_log)
    try:
        for s in range(0, len(X_log), 32):
            x = torch.as_tensor(X_log[s : s + 32], dtype=torch.float32)
            a = ig.attribute(x, baselines=torch.zeros_like(x), target=torch.as_tensor(y[s : s + 32]), n_steps=steps)
            att[s : s + 32] = a.detach().numpy()
    finally:
        module.is_counts = was_counts
    out = np.zeros((X_log.shape[1], n_cls))
    for c in range(n_cls):
        if (y == c).any():
            out[:, c] = np.abs(att[y == c]).mean(0)
    return out


def fidelity(runner, X, y, pred, scores: np.ndarray, ks) -> dict:
    """Keep / remove the top-k genes of each cell's predicted phenotype ranking."""
    order = np.argsort(-scores, axis=0)  # genes ranked per phenotype
    base_conf_idx = pred
    out = {}
    for k in ks:
        top = order[:k]  # k × phenotypes
        keep_mask = np.zeros((scores.shape[1], X.shape[1]), bool)
        for c in range(scores.shape[1]):
            keep_mask[c, top[:, c]] = True
        m = keep_mask[pred]  # cells × genes
        res = {}
        for name, Xk in (("keep", np.where(m, X, 0)), ("remove", np.where(m, 0, X))):
            p = runner.proba(Xk.astype(np.float32))
            res[name] = {
                "accuracy": float((p.argmax(1) == y).mean()),
                "confidence": float(p[np.arange(len(y)), base_conf_idx].mean()),
            }
        out[int(k)] = res
    return out


def recovery(scores: pd.DataFrame, markers: dict) -> dict:
    ranks = scores.rank(ascending=False, method="first")
    out = {}
    for gene, phens in markers.items():
        if gene not in ranks.index:
            continue
        for ph in phens:
            if ph in ranks.columns:
                out[f"{gene}:{ph}"] = int(ranks.loc[gene, ph])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=["pancreas", "krumsiek11"], default="krumsiek11")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (pancreas 10, krumsiek11 30)")
    p.add_argument("--eval-cells", type=int, default=600, help="held-out-style evaluation cells (stratified)")
    p.add_argument("--pi-cells", type=int, default=None, help="cells for permutation importance (default all eval)")
    p.add_argument("--ig-cells", type=int, default=None, help="cells for integrated gradients (default all eval)")
    p.add_argument("--ig-steps", type=int, default=16)
    p.add_argument("--ks", type=int, nargs="+", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument("--linear-stage", action="store_true", help="train KDCPT(linear_stage=True) (issue 20)")
    p.add_argument("--tf-source", default="scenic", choices=["scenic", "animaltfdb4"],
                   help="mouse TF list of the prior (pancreas); the package's default is animaltfdb4")
    args = p.parse_args(argv)
    import scanpy as sc
    import torch

    torch.set_num_threads(args.threads)
    epochs = args.epochs or (10 if args.dataset == "pancreas" else 30)
    extra = {"linear_stage": True} if args.linear_stage else {}
    model, adata, labels_key = trained_model(args.dataset, epochs, tf_source=args.tf_source, **extra)
    classes = list(model.classes_)
    n_cls = len(classes)
    is_counts = model.data_type_ == "counts"
    rng = np.random.default_rng(0)
    labels = adata.obs[labels_key].astype(str).to_numpy()
    y_all = pd.Categorical(labels, categories=classes).codes.astype(np.int64)
    # evaluation cells: stratified sample, preferring the model's validation cells
    val = np.asarray(model.validation_indices if model.validation_indices is not None else [], dtype=int)
    per = max(1, args.eval_cells // n_cls)
    order = list(dict.fromkeys(np.concatenate([val, rng.permutation(adata.n_obs)]).tolist()))
    ev = []
    for c in range(n_cls):
        ev.extend([i for i in order if y_all[i] == c][:per])
    ev = np.array(sorted(ev))
    X = dense(adata.X[ev])
    y = y_all[ev]
    runner = Runner(model)
    base = runner.proba(X)
    pred = base.argmax(1)
    ks = args.ks or ([1, 2, 3, 5] if adata.n_vars <= 20 else [10, 25, 50, 100, 200])
    methods = args.methods or [
        "kdcpt",
        "kdcpt_specificity",
        "kdcpt_score",
        "kdcpt_attention",
        "wilcoxon",
        "permutation",
        "integrated_gradients",
        "mean_expression",
        "random",
    ]
    genes = pd.Index(adata.var_names)
    scores, seconds = {}, {}
    before = machine()
    for m in methods:
        t = time.perf_counter()
        if m in ("kdcpt", "kdcpt_specificity", "kdcpt_score", "kdcpt_attention"):
            kg = model.get_key_genes()
            by = {"kdcpt": None, "kdcpt_specificity": "specificity", "kdcpt_score": "score"}.get(m, "attention")
            s = kg.statistic(by)[classes].to_numpy()
        elif m == "wilcoxon":
            tmp = sc.AnnData(
                X=log_norm(dense(adata.X), is_counts),
                obs=pd.DataFrame({"g": pd.Categorical(labels, categories=classes)}),
            )
            tmp.var_names = genes
            sc.tl.rank_genes_groups(tmp, "g", method="wilcoxon", n_genes=adata.n_vars)
            r = tmp.uns["rank_genes_groups"]
            s = np.zeros((adata.n_vars, n_cls))
            for c, ph in enumerate(classes):
                s[genes.get_indexer(r["names"][ph]), c] = r["scores"][ph]
        elif m == "permutation":
            sub = (
                np.arange(len(ev))
                if args.pi_cells is None
                else np.sort(rng.choice(len(ev), min(args.pi_cells, len(ev)), replace=False))
            )
            s = permutation_importance(runner, X[sub], y[sub], n_cls, rng)
        elif m == "integrated_gradients":
            sub = (
                np.arange(len(ev))
                if args.ig_cells is None
                else np.sort(rng.choice(len(ev), min(args.ig_cells, len(ev)), replace=False))
            )
            s = integrated_gradients(model, log_norm(X[sub], is_counts), y[sub], n_cls, args.ig_steps)
        elif m == "mean_expression":
            L = log_norm(dense(adata.X), is_counts)
            s = np.stack([L[y_all == c].mean(0) for c in range(n_cls)], 1)
        elif m == "random":
            s = rng.random((adata.n_vars, n_cls))
        else:
            raise ValueError(m)
        seconds[m] = time.perf_counter() - t
        scores[m] = pd.DataFrame(s, index=genes, columns=classes)
        print(f"{m}: {seconds[m]:.1f} s", flush=True)

    results = {}
    for m, s in scores.items():
        rec = recovery(s, MARKERS[args.dataset])
        results[m] = {
            "seconds": seconds[m],
            "fidelity": fidelity(runner, X, y, pred, s.to_numpy(), ks),
            "recovery_ranks": rec,
            "recovery_median_rank": float(np.median(list(rec.values()))) if rec else None,
            "recovery_hits_top10": int(sum(r <= 10 for r in rec.values())),
            "recovery_n": len(rec),
            "top5": {ph: list(s[ph].nlargest(5).index) for ph in classes},
        }
    after = machine()
    argv_used = argv if argv is not None else sys.argv[1:]
    out = {
        "command": "python benchmarks/keygenes.py " + " ".join(argv_used),
        "dataset": args.dataset,
        "n_eval_cells": len(ev),
        "base_accuracy_eval": float((pred == y).mean()),
        "ks": ks,
        "machine_before": before,
        "machine_after": after,
        "results": results,
    }
    md = [
        f"# Key genes vs attribution baselines — {args.dataset} (issues 4 and 10)",
        "",
        f"Command: `{out['command']}`  ",
        f"Date: {before['date']}, git {before['git_commit']}.  ",
        f"Model: {'KDCPT(linear_stage=True)' if args.linear_stage else 'default KDCPT'} (prior_mode='bias', "
        f"prior_weight=0.3; first stage {'on' if getattr(model.module, 'linear_stage', False) else 'off'}), "
        f"{epochs} epochs, seed 0. "
        + (f"TF prior: mouse `source='{args.tf_source}'`, {int(adata.var['is_tf'].sum())} genes flagged. "
           if args.dataset == "pancreas" else "")
        + f"Evaluation: {len(ev)} cells stratified by phenotype "
        f"(validation cells first); accuracy of the unperturbed model on them {out['base_accuracy_eval']:.3f}.  ",
        f"Load before: `{before['uptime']}`; after: `{after['uptime']}`; torch threads {args.threads}.",
        "",
        "## Deletion / insertion fidelity",
        "",
        "Accuracy (vs labels) when each cell keeps **only** the top-k genes of its predicted phenotype "
        "(higher is better) and when it **loses** them (lower is better).",
        "",
    ]
    head = (
        "| method | "
        + " | ".join(f"keep {k}" for k in ks)
        + " | "
        + " | ".join(f"remove {k}" for k in ks)
        + " | seconds |"
    )
    md += [head, "| --- " * (2 * len(ks) + 2) + "|"]
    for m, r in results.items():
        f = r["fidelity"]
        md.append(
            f"| {m} | "
            + " | ".join(f"{f[k]['keep']['accuracy']:.3f}" for k in ks)
            + " | "
            + " | ".join(f"{f[k]['remove']['accuracy']:.3f}" for k in ks)
            + f" | {r['seconds']:.1f} |"
        )
    md += [
        "",
        "Mean probability of the unperturbed prediction (confidence) under the same perturbations:",
        "",
        head.replace(" seconds |", ""),
        "| --- " * (2 * len(ks) + 1) + "|",
    ]
    for m, r in results.items():
        f = r["fidelity"]
        md.append(
            f"| {m} | "
            + " | ".join(f"{f[k]['keep']['confidence']:.3f}" for k in ks)
            + " | "
            + " | ".join(f"{f[k]['remove']['confidence']:.3f}" for k in ks)
            + " |"
        )
    md += [
        "",
        "## Recovery of known markers / regulators",
        "",
        f"Rank of each known gene in its phenotype's ranking (1 = top; {adata.n_vars} genes).",
        "",
    ]
    pairs = list(next(iter(results.values()))["recovery_ranks"])
    md += ["| method | " + " | ".join(pairs) + " | median | in top 10 |", "| --- " * (len(pairs) + 3) + "|"]
    for m, r in results.items():
        md.append(
            f"| {m} | "
            + " | ".join(str(r["recovery_ranks"].get(k, "")) for k in pairs)
            + f" | {r['recovery_median_rank']} | {r['recovery_hits_top10']}/{r['recovery_n']} |"
        )
    md += ["", "## Top 5 genes per phenotype", ""]
    for m, r in results.items():
        md.append(f"- **{m}**: " + "; ".join(f"{ph}: {', '.join(g)}" for ph, g in r["top5"].items()))
    md.append("")
    stem = f"keygenes_{args.dataset}" + ("_linear_stage" if args.linear_stage else "")
    write(stem + ("" if args.tf_source == "scenic" else f"_{args.tf_source}"), out, "\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
