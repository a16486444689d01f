"""How the network's share on top of the first stage is chosen (issue 20): does another rule generalise better?

For each (dataset, seed) of ``classification.py`` (same split), KDCPT is trained with its defaults, and the
first stage's and the network's logits are kept on the model's validation cells and on the held-out test
cells, with the first stage refitted on training + validation cells as well. Then every rule is scored by
its held-out macro-F1 from the same trained network:

- ``package``: the package's rule (``calibration.choose_mix``: class-balanced log-loss on the validation
  cells, each share at its best temperature; refit of the first stage on training + validation iff share 0);
- ``f1``: the share with the best validation macro-F1 (ties: the larger), refit iff 0;
- ``fixed m``: a fixed share ``m`` on the first stage fitted on the training cells; ``refit + m`` the same on
  the refitted first stage (``refit + 0`` is the first stage alone, refitted);
- ``package, always refit``: the package's share on the refitted first stage;
- ``prior τ``: the package's logits plus ``τ · log(training phenotype frequencies)`` — partly undoing the
  class balance of the first stage and of the balanced softmax (τ = 0: the package; τ = 1: the training
  prior restored); ``prior τ on validation``: τ from 0, 0.25, 0.5, 0.75, 1 by validation macro-F1 (ties: the
  smaller);
- ``oracle``: the best of the share rules on the test cells (not a rule: the bound of any choice among them).

    python benchmarks/mix_rule.py run --dataset paul15 --seed 0 1 2 3 4   # one process per dataset
    python benchmarks/mix_rule.py report
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

WORK = C.WORK / "mix_rule"
NAME = "mix_rule"


def run(dataset: str, seeds: list[int]) -> None:
    import classification as B
    import scvi
    import torch

    import scanpy_kdcpt as kdcpt

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    ds = B.load(dataset)
    refit = kdcpt.KDCPT._refit_linear_stage
    kdcpt.KDCPT._refit_linear_stage = lambda self, cells: None  # every rule from the same network: refit below
    WORK.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        t0 = time.perf_counter()
        train, test = B.split(ds, seed)
        scvi.settings.seed = seed
        a_train, a_test = ds.adata[train].copy(), ds.adata[test].copy()
        if ds.has_counts:  # as classification.run_kdcpt
            for a in (a_train, a_test):
                a.X = a.layers.pop("counts")
        kdcpt.KDCPT.setup_anndata(a_train, labels_key=ds.labels_key, prior_key="is_tf")
        model = kdcpt.KDCPT(a_train)
        model.train(max_epochs=None, enable_progress_bar=False, accelerator="cpu")
        codes, labelled = model.labels_()
        val = np.asarray(model.validation_indices, dtype=int)
        val = val[labelled[val]]
        # the first stage's and the network's logits apart
        v, t = (
            {f"logits_{c}": model.get_logits(component=c, **cells) for c in ("linear", "network")}
            for cells in ({"indices": val}, {"adata": a_test})
        )
        chosen = model.linear_stage_.mix
        refit(model, np.concatenate([np.asarray(model.train_indices, int), np.asarray(model.validation_indices, int)]))
        t_refit = model.get_logits(a_test, component="linear")
        classes = list(model.classes_)
        y_test = [classes.index(c) if c in classes else -1 for c in ds.labels.iloc[test]]
        rec = {
            "dataset": ds.name,
            "seed": seed,
            "package_mix": chosen,
            "C": model.linear_stage_.C,
            "classes": classes,
            "train_counts": np.bincount(codes[labelled], minlength=len(classes)).tolist(),
            "y_val": codes[val].tolist(),
            "y_test": y_test,
            "val_linear": v["logits_linear"].tolist(),
            "val_network": v["logits_network"].tolist(),
            "test_linear": t["logits_linear"].tolist(),
            "test_network": t["logits_network"].tolist(),
            "test_linear_refit": t_refit.tolist(),
            "seconds": round(time.perf_counter() - t0, 1),
            "git_commit": C.git_commit(),
            "date": C.now(),
        }
        (WORK / f"{dataset}_s{seed}.json").write_text(json.dumps(rec))
        print(dataset, seed, "package mix", chosen, rec["seconds"], "s", flush=True)


def scores(rec: dict) -> dict[str, float]:
    """Held-out macro-F1 of every rule on one run."""
    from sklearn.metrics import f1_score

    from scanpy_kdcpt.calibration import MIX_GRID, choose_mix

    yv, yt = np.asarray(rec["y_val"]), np.asarray(rec["y_test"])
    vl, vn = np.asarray(rec["val_linear"]), np.asarray(rec["val_network"])
    tl, tn, tr = (np.asarray(rec[k]) for k in ("test_linear", "test_network", "test_linear_refit"))
    ok = yt >= 0

    def f1(logits):
        return float(f1_score(yt[ok], logits[ok].argmax(1), average="macro"))

    mix, _ = choose_mix(vl, vn, yv)
    assert mix == rec["package_mix"], "choose_mix changed since the run"
    val_f1 = {m: f1_score(yv, (vl + m * vn).argmax(1), average="macro") for m in MIX_GRID}
    m_f1 = max(m for m in MIX_GRID if val_f1[m] >= max(val_f1.values()) - 1e-9)
    out = {
        "package": f1(tr) if mix == 0 else f1(tl + mix * tn),
        "f1": f1(tr) if m_f1 == 0 else f1(tl + m_f1 * tn),
        "package, always refit": f1(tr + mix * tn),
    }
    out.update({f"fixed {m:g}": f1(tl + m * tn) for m in MIX_GRID})
    out.update({f"refit + {m:g}": f1(tr + m * tn) for m in MIX_GRID})
    out["oracle"] = max(out.values())
    log_prior = np.log(np.asarray(rec["train_counts"], dtype=float) + 1.0)
    log_prior -= np.log(np.exp(log_prior).sum())
    test, val = (tr if mix == 0 else tl + mix * tn), vl + mix * vn
    taus = (0.0, 0.25, 0.5, 0.75, 1.0)
    val_tau = {t: f1_score(yv, (val + t * log_prior).argmax(1), average="macro") for t in taus}
    tau_v = min(t for t in taus if val_tau[t] >= max(val_tau.values()) - 1e-9)
    out.update({f"prior τ={t:g}": f1(test + t * log_prior) for t in taus[1:]})
    out["prior τ on validation"] = f1(test + tau_v * log_prior)
    out["package share"] = mix
    return out


def report(command: str) -> None:
    recs = [json.loads(f.read_text()) for f in sorted(WORK.glob("*_s*.json"))]
    if not recs:
        raise SystemExit(f"no runs in {WORK}")
    rows = [{"dataset": r["dataset"], "seed": r["seed"], **scores(r)} for r in recs]
    rules = [k for k in rows[0] if k not in ("dataset", "seed", "package share")]
    datasets = sorted({r["dataset"] for r in rows})
    L = [
        "# How the network's share is chosen (issue 20): the package's rule against others",
        "",
        f"Command: `{command}`  ",
        f"Report date: {C.now()}; runs of git {sorted({r['git_commit'] for r in recs})}  ",
        "Machine: 2 CPU cores shared, torch threads 1, no GPU.",
        "",
        (__doc__ or "").split("\n\n", 1)[1].split("\n\n    python")[0],
        "",
        "Every rule is applied to the same trained network of each run, so the differences are the rules'",
        "alone (paired). Held-out macro-F1, mean ± sd over seeds:",
        "",
        "| rule | "
        + " | ".join(f"{d} (n={sum(r['dataset'] == d for r in rows)})" for d in datasets)
        + " | all runs | Δ vs package, all runs (mean ± sd; better / worse runs) |",
        "|---|" + "---:|" * (len(datasets) + 2),
    ]
    base = np.array([r["package"] for r in rows])
    summary = {}
    for k in rules:
        vals = np.array([r[k] for r in rows])
        d = vals - base
        cells = []
        for ds in datasets:
            x = np.array([r[k] for r in rows if r["dataset"] == ds])
            cells.append(f"{x.mean():.3f} ± {x.std(ddof=1):.3f}" if len(x) > 1 else f"{x.mean():.3f}")
        diff = f"{d.mean():+.4f} ± {d.std(ddof=1):.4f}; {int((d > 1e-9).sum())} / {int((d < -1e-9).sum())}"
        L.append(f"| {k} | " + " | ".join(cells) + f" | {vals.mean():.4f} | {diff if k != 'package' else '—'} |")
        summary[k] = {"mean": float(vals.mean()), "diff_mean": float(d.mean()), "diff_sd": float(d.std(ddof=1))}
    L += [
        "",
        "Shares the package's rule chose: "
        + "; ".join(
            f"{ds} " + ", ".join(f"{r['package share']:g}" for r in rows if r["dataset"] == ds) for ds in datasets
        ),
        "",
    ]
    (C.RESULTS / f"{NAME}.md").write_text("\n".join(L))
    C.write_json(C.RESULTS / f"{NAME}.json", {"command": command, "date": C.now(), "rows": rows, "summary": summary})
    print("\n".join(L))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--dataset", required=True)
    r.add_argument("--seed", type=int, nargs="+", default=[0])
    rep = sub.add_parser("report")
    rep.add_argument("--command", default="python benchmarks/mix_rule.py report")
    a = p.parse_args(argv)
    if a.cmd == "run":
        run(a.dataset, a.seed)
    else:
        report(a.command)


if __name__ == "__main__":
    main()
