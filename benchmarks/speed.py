"""Speed benchmark of issue 2: training seconds per epoch per 10k cells, prediction cells/s,
and scANVI's training time on the same data.

Data: ``kdcpt.datasets.synthetic(n_cells=10000, n_genes=2000)`` (counts). KDCPT with default
settings, batch 128, trained through ``model.train`` (scvi-tools / Lightning loop; default
90/10 train/validation split — ``train_size=1.0`` fails in KDCPT.train, reported). Training batch
times (validation excluded) are scaled to an epoch of 10,000 cells (79 batches). To keep the run modest on a
shared machine, each timed fit runs ``--batches`` training batches (Lightning's
``limit_train_batches``) for 2 epochs; the first epoch is warm-up, and the second is timed
batch by batch and scaled to a full epoch of 10,000 cells (79 batches). ``--full-epoch``
times one complete epoch instead.

scVI (pre-training) and scANVI are timed the same way on the same cells and extrapolated to
their default numbers of epochs (400 + 10 for 10k cells in scvi-tools 1.4); KDCPT's default
is ``min(60, max(30, 30000 // n_cells))`` = 30 epochs for 10k cells (early stopping can
end sooner).

Usage (repository root, project venv)::

    python benchmarks/speed.py                 # torch threads 2 (the target's setting)
    python benchmarks/speed.py --threads 1 2   # both, one after the other
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

N_CELLS = 10_000
N_GENES = 2_000
BATCH = 128
TARGET_EPOCH_S = 30.0


def _timer_callback():
    from lightning.pytorch import Callback

    class BatchTimer(Callback):
        def __init__(self):
            self.epochs: list[list[float]] = []
            self.cpu: list[list[float]] = []

        def on_train_epoch_start(self, trainer, pl_module):
            self.epochs.append([])
            self.cpu.append([])

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self._t = time.perf_counter()
            self._c = time.process_time()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.epochs[-1].append(time.perf_counter() - self._t)
            self.cpu[-1].append(time.process_time() - self._c)

    return BatchTimer()


def _summarise(cb, n_batches_epoch: int) -> dict:
    timed = cb.epochs[-1]
    cpu = cb.cpu[-1]
    per_batch = float(np.median(timed))
    return {
        "timed_batches": len(timed),
        "seconds_per_batch_median": round(per_batch, 4),
        "seconds_per_batch_mean": round(float(np.mean(timed)), 4),
        "cpu_seconds_per_batch_median": round(float(np.median(cpu)), 4),
        "batches_per_epoch_10k": n_batches_epoch,
        "seconds_per_epoch_10k": round(per_batch * n_batches_epoch, 2),
        "seconds_per_epoch_10k_from_mean": round(float(np.mean(timed)) * n_batches_epoch, 2),
        "cpu_seconds_per_epoch_10k": round(float(np.median(cpu)) * n_batches_epoch, 2),
    }


def time_kdcpt(adata, n_batches: int, full_epoch: bool) -> dict:
    import scvi

    import scanpy_kdcpt as kdcpt

    scvi.settings.seed = C.SEED
    a = adata.copy()
    kdcpt.KDCPT.setup_anndata(a, labels_key="phenotype", prior_key="is_tf")
    model = kdcpt.KDCPT(a)
    cb = _timer_callback()
    limit = {} if full_epoch else {"limit_train_batches": n_batches}
    load = C.load_average()
    t0 = time.perf_counter()
    model.train(max_epochs=1 if full_epoch else 2, batch_size=BATCH, accelerator="cpu",
                enable_progress_bar=False, callbacks=[cb], **limit)
    fit_s = time.perf_counter() - t0
    out = _summarise(cb, math.ceil(N_CELLS / BATCH))
    if full_epoch:
        out["seconds_full_epoch_measured"] = round(float(np.sum(cb.epochs[-1])), 2)
    out["fit_wall_seconds_total"] = round(fit_s, 2)
    out["default_max_epochs"] = int(min(60, max(30, 30_000 // N_CELLS)))
    out["default_training_seconds_estimate"] = round(out["seconds_per_epoch_10k"] * out["default_max_epochs"], 1)
    out["load_before"] = load
    out["load_after"] = C.load_average()
    # prediction throughput on all 10k cells (default batch 512)
    load = C.load_average()
    t0 = time.perf_counter()
    model.predict(a)
    pred_s = time.perf_counter() - t0
    out["predict_seconds_10k"] = round(pred_s, 2)
    out["predict_cells_per_second"] = round(N_CELLS / pred_s, 1)
    out["predict_load_before"] = load
    return out


def time_scanvi(adata, n_batches: int) -> dict:
    import scvi
    from scvi.model._utils import get_max_epochs_heuristic

    scvi.settings.seed = C.SEED
    a = adata.copy()
    a.obs["phenotype"] = a.obs["phenotype"].astype(str)
    scvi.model.SCVI.setup_anndata(a, labels_key="phenotype")
    vae = scvi.model.SCVI(a)
    cb = _timer_callback()
    load = C.load_average()
    vae.train(max_epochs=2, batch_size=BATCH, accelerator="cpu", enable_progress_bar=False,
              callbacks=[cb], limit_train_batches=n_batches)
    out = {"scvi": _summarise(cb, math.ceil(N_CELLS / BATCH)), "load_before": load}
    lvae = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category="Unknown", labels_key="phenotype")
    cb = _timer_callback()
    lvae.train(max_epochs=2, batch_size=BATCH, accelerator="cpu", enable_progress_bar=False,
               callbacks=[cb], limit_train_batches=n_batches)
    out["scanvi"] = _summarise(cb, math.ceil(N_CELLS / BATCH))
    scvi_epochs = int(get_max_epochs_heuristic(N_CELLS))
    scanvi_epochs = int(np.min([10, np.max([2, round(scvi_epochs / 3.0)])]))
    out["default_epochs"] = {"scvi": scvi_epochs, "scanvi": scanvi_epochs}
    out["default_training_seconds_estimate"] = round(
        out["scvi"]["seconds_per_epoch_10k"] * scvi_epochs + out["scanvi"]["seconds_per_epoch_10k"] * scanvi_epochs, 1)
    out["load_after"] = C.load_average()
    return out


def render(res: dict) -> str:
    lines = [
        "# Speed benchmark (issue 2)", "",
        f"- Command: `{res['command']}` (repository root, project venv active)",
        f"- Date: {res['date']}; git commit {res['git_commit']}",
        f"- Machine: {res['machine']['host_cpus']} CPU cores ({res['machine']['processor']}), shared with other "
        "developers' test runs — the load average is recorded with every timing; no GPU",
        f"- Data: synthetic counts, {N_CELLS} cells × {N_GENES} genes (`kdcpt.datasets.synthetic`), batch {BATCH}, "
        "KDCPT defaults (default 90/10 validation split; validation time excluded), an epoch of 10,000 cells = "
        f"({math.ceil(N_CELLS / BATCH)} batches); {res['n_batches']} timed batches per fit, scaled to an epoch "
        "(median batch time × 79)",
        "",
        "| torch threads | KDCPT s / epoch / 10k cells | CPU s / epoch | target ≤ 30 s | predict cells / s | "
        "KDCPT default training (max epochs, no early stop) s | scANVI default training (400 scVI + 10 scANVI ep.) s | "
        "scVI s / epoch | scANVI s / epoch | load avg (1/5/15 min) before |",
        "| ---: | ---: | ---: | :---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in res["runs"]:
        k = r["kdcpt"]
        s = r.get("scanvi", {})
        ok = "met" if k["seconds_per_epoch_10k"] <= TARGET_EPOCH_S else "missed"
        lines.append(
            f"| {r['threads']} | {k['seconds_per_epoch_10k']:.1f} | {k['cpu_seconds_per_epoch_10k']:.1f} | {ok} | "
            f"{k['predict_cells_per_second']:.0f} | {k['default_training_seconds_estimate']:.0f} | "
            f"{s.get('default_training_seconds_estimate', float('nan')):.0f} | "
            f"{s.get('scvi', {}).get('seconds_per_epoch_10k', float('nan')):.1f} | "
            f"{s.get('scanvi', {}).get('seconds_per_epoch_10k', float('nan')):.1f} | {k['load_before']} |")
    lines.append("")
    notes = C.HERE / "_notes" / "speed.md"
    if notes.exists():
        lines += [notes.read_text().rstrip(), ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[C.TORCH_THREADS])
    p.add_argument("--batches", type=int, default=15, help="timed training batches per fit")
    p.add_argument("--full-epoch", action="store_true", help="time one complete KDCPT epoch")
    p.add_argument("--no-scanvi", action="store_true")
    p.add_argument("--report", action="store_true", help="only re-render speed.md from speed.json")
    args = p.parse_args(argv)
    command = "python benchmarks/speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.report:
        import json

        res = json.loads((C.RESULTS / "speed.json").read_text())
        (C.RESULTS / "speed.md").write_text(render(res))
        return
    import scanpy_kdcpt as kdcpt

    adata = kdcpt.datasets.synthetic(n_cells=N_CELLS, n_genes=N_GENES, seed=0)
    res = {"command": command.strip(), "date": C.now(), "git_commit": C.git_commit(), "uptime": C.uptime(),
           "n_cells": N_CELLS, "n_genes": N_GENES, "batch_size": BATCH, "n_batches": args.batches,
           "target_seconds_per_epoch": TARGET_EPOCH_S, "versions": C.versions(), "runs": []}
    for n in args.threads:
        C.set_threads(n)
        res["machine"] = C.machine()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run = {"threads": n, "uptime_before": C.uptime(), "kdcpt": time_kdcpt(adata, args.batches, args.full_epoch)}
            print(f"threads={n} KDCPT: {run['kdcpt']}", flush=True)
            if not args.no_scanvi:
                run["scanvi"] = time_scanvi(adata, args.batches)
                print(f"threads={n} scANVI: {run['scanvi']}", flush=True)
        run["uptime_after"] = C.uptime()
        res["runs"].append(run)
    C.write_json(C.RESULTS / "speed.json", res)
    (C.RESULTS / "speed.md").write_text(render(res))
    print(f"wrote {C.RESULTS / 'speed.json'} and {C.RESULTS / 'speed.md'}")


if __name__ == "__main__":
    main()
