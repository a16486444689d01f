"""Calibration / uncertainty benchmark of issue 3: KDCPT against scANVI and CellTypist.

Protocol, identical for every method, on pbmc68k_reduced (bulk_labels) and pancreas
(clusters): the fixed stratified 80/20 split of ``_common.split`` (seed 0); the 80 % is split
again (stratified, seed 0) into *fit* (85 %) and *calibration* (15 %) cells. Each method fits
on the fit cells only; the calibration cells give the temperature (NLL, one scalar) and the
split-conformal threshold; everything is scored on the 20 % test cells:

- ECE (15 equal-width bins, top label) and Brier, raw and after temperature scaling;
- AUROC of the uncertainty for detecting misclassified test cells (KDCPT's cosine index on
  calibrated probabilities, the same index for the peers; ``1 - confidence`` too);
- split-conformal coverage and mean set size at ``alpha``.

Peers get the same temperature scaling and conformal sets, on ``log p``. scANVI needs counts
(pancreas has them; pbmc68k_reduced does not, so scANVI is skipped there). CellTypist runs in
benchmarks/.venv-celltypist (CellTypist 1.7.1 fails with scikit-learn >= 1.8); its
one-vs-rest probabilities are renormalised to sum to one.

On pancreas the script also reports, for the posterior transition matrix, each phenotype's
largest off-diagonal transition against the known lineage Ductal → Ngn3 low EP → Ngn3 high
EP → Pre-endocrine → Alpha / Beta / Delta / Epsilon.

Usage (repository root, project venv)::

    python benchmarks/calibration.py                       # both datasets, all methods
    python benchmarks/calibration.py --datasets pbmc --no-scanvi
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

CELLTYPIST_PY = C.HERE / ".venv-celltypist" / "bin" / "python"
LINEAGE = {
    "Ductal": ["Ngn3 low EP"],
    "Ngn3 low EP": ["Ngn3 high EP"],
    "Ngn3 high EP": ["Pre-endocrine"],
    "Pre-endocrine": ["Alpha", "Beta", "Delta", "Epsilon"],
}


def scores(logits_cal, y_cal, logits_test, y_test, classes, alpha: float) -> dict:
    """Every number of the protocol from calibration / test logits (or log-probabilities)."""
    from sklearn.metrics import roc_auc_score

    from scanpy_kdcpt.calibration import (
        brier_score,
        conformal_scores,
        conformal_threshold,
        cosine_uncertainty,
        expected_calibration_error,
        fit_temperature,
        nll,
        prediction_sets,
        softmax,
    )
    from scanpy_kdcpt.metrics import accuracy, macro_f1

    T = fit_temperature(logits_cal, y_cal)
    raw, cal = softmax(logits_test), softmax(logits_test, T)
    wrong = cal.argmax(1) != y_test
    q = conformal_threshold(conformal_scores(softmax(logits_cal, T), y_cal), alpha)
    sets = prediction_sets(cal, q)
    names = np.asarray(classes)
    out = {
        "accuracy": accuracy(names[y_test], names[cal.argmax(1)]),
        "macro_f1": macro_f1(names[y_test], names[cal.argmax(1)]),
        "temperature": T,
        "ece_raw": expected_calibration_error(raw, y_test),
        "ece_calibrated": expected_calibration_error(cal, y_test),
        "brier_raw": brier_score(raw, y_test),
        "brier_calibrated": brier_score(cal, y_test),
        "nll_raw": nll(logits_test, y_test),
        "nll_calibrated": nll(logits_test, y_test, T),
        "n_misclassified": int(wrong.sum()),
        "auroc_uncertainty": float(roc_auc_score(wrong, cosine_uncertainty(cal)))
        if 0 < wrong.sum() < len(wrong)
        else None,
        "auroc_1_minus_confidence": float(roc_auc_score(wrong, 1 - cal.max(1)))
        if 0 < wrong.sum() < len(wrong)
        else None,
        "conformal_alpha": alpha,
        "conformal_coverage": float(sets[np.arange(len(y_test)), y_test].mean()),
        "conformal_mean_set_size": float(sets.sum(1).mean()),
        "conformal_singleton_frac": float((sets.sum(1) == 1).mean()),
        "n_calibration": int(len(y_cal)),
        "n_test": int(len(y_test)),
    }
    return out


def codes_of(labels: pd.Series, classes: list[str]) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(classes)}
    return labels.astype(str).map(lookup).to_numpy(int)


def run_kdcpt(ds, fit, cal, test, epochs: int, alpha: float) -> tuple[dict, object]:
    import scvi

    import scanpy_kdcpt as kdcpt

    scvi.settings.seed = C.SEED
    a_fit = ds.adata[fit].copy()
    kdcpt.KDCPT.setup_anndata(a_fit, labels_key=ds.labels_key, prior_key="is_tf")
    model = kdcpt.KDCPT(a_fit)
    t0 = time.perf_counter()
    model.train(max_epochs=epochs, enable_progress_bar=False)
    train_s = time.perf_counter() - t0
    a_cal, a_test = ds.adata[cal].copy(), ds.adata[test].copy()
    classes = model.classes_
    lc, lt = model.get_logits(a_cal), model.get_logits(a_test)
    res = scores(
        lc,
        codes_of(a_cal.obs[ds.labels_key], classes),
        lt,
        codes_of(a_test.obs[ds.labels_key], classes),
        classes,
        alpha,
    )
    # the same through the public API: calibrate() then predict(conformal_alpha=...)
    api = model.calibrate(a_cal, labels_key=ds.labels_key)
    sets = model.predict(a_test, conformal_alpha=alpha)
    y = codes_of(a_test.obs[ds.labels_key], classes)
    res["api_check"] = {
        "temperature": api["temperature"],
        "conformal_coverage": float(sets.to_numpy()[np.arange(len(y)), y].mean()),
        "conformal_mean_set_size": float(sets.sum(1).mean()),
    }
    res["train_seconds"] = round(train_s, 1)
    res["epochs_run"] = int(len(next(iter(model.history.values()))))
    return res, model


def run_scanvi(ds, fit, cal, test, alpha: float, scvi_epochs: int, scanvi_epochs: int) -> dict:
    import scvi

    scvi.settings.seed = C.SEED
    a_fit = ds.adata[fit].copy()
    a_fit.obs["_label"] = a_fit.obs[ds.labels_key].astype(str)
    scvi.model.SCVI.setup_anndata(a_fit, layer="counts", labels_key="_label")
    t0 = time.perf_counter()
    vae = scvi.model.SCVI(a_fit, n_latent=10)
    vae.train(max_epochs=scvi_epochs, enable_progress_bar=False)
    lvae = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category="Unknown", labels_key="_label")
    lvae.train(max_epochs=scanvi_epochs, n_samples_per_label=100, enable_progress_bar=False)
    train_s = time.perf_counter() - t0
    classes = sorted(a_fit.obs["_label"].unique())

    def logp(idx):
        a = ds.adata[idx].copy()
        a.obs["_label"] = "Unknown"
        p = lvae.predict(a, soft=True)
        p = p.reindex(columns=classes).fillna(0.0).to_numpy()
        return np.log(np.clip(p / p.sum(1, keepdims=True), 1e-12, None)), a

    lc, a_cal = logp(cal)
    lt, a_test = logp(test)
    res = scores(
        lc,
        codes_of(ds.adata.obs[ds.labels_key].iloc[cal], classes),
        lt,
        codes_of(ds.adata.obs[ds.labels_key].iloc[test], classes),
        classes,
        alpha,
    )
    res["train_seconds"] = round(train_s, 1)
    res["epochs"] = {"scvi": scvi_epochs, "scanvi": scanvi_epochs}
    return res


def run_celltypist(ds, fit, cal, test, alpha: float) -> dict | None:
    import anndata as ad

    if not CELLTYPIST_PY.exists():
        return None
    C.WORK.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, idx in (("fit", fit), ("cal", cal), ("test", test)):
        a = ad.AnnData(
            X=np.asarray(ds.adata.X[idx], dtype=np.float32),
            obs=ds.adata.obs[[ds.labels_key]].iloc[idx].copy(),
            var=pd.DataFrame(index=ds.adata.var_names.copy()),
        )
        a.obs[ds.labels_key] = a.obs[ds.labels_key].astype(str)
        paths[name] = C.WORK / f"calib_{ds.name}_{name}.h5ad"
        a.write_h5ad(paths[name])
    out = C.WORK / f"calib_{ds.name}_celltypist.json"
    cmd = [
        str(CELLTYPIST_PY),
        str(C.HERE / "_celltypist_proba_runner.py"),
        str(paths["fit"]),
        ds.labels_key,
        str(out),
        str(paths["cal"]),
        str(paths["test"]),
    ]
    import os

    subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    with open(out) as f:
        got = json.load(f)
    classes = sorted(ds.adata.obs[ds.labels_key].astype(str).unique())

    def logp(path):
        s = got["sets"][str(path)]
        p = pd.DataFrame(s["proba"], columns=s["classes"]).reindex(columns=classes).fillna(0.0).to_numpy()
        return np.log(np.clip(p / p.sum(1, keepdims=True), 1e-12, None))

    res = scores(
        logp(paths["cal"]),
        codes_of(ds.adata.obs[ds.labels_key].iloc[cal], classes),
        logp(paths["test"]),
        codes_of(ds.adata.obs[ds.labels_key].iloc[test], classes),
        classes,
        alpha,
    )
    res["train_and_predict_seconds"] = got["seconds"]
    res["version"] = got["version"]
    res["check_expression"] = got["check_expression"]
    res["note"] = "one-vs-rest probabilities renormalised to sum to one"
    return res


def lineage_report(P: pd.DataFrame) -> dict:
    """Each phenotype's largest off-diagonal target, against the known pancreas lineage."""
    rows = {}
    for src in P.index:
        row = P.loc[src].drop(src)
        top = str(row.idxmax())
        expected = LINEAGE.get(src)
        rows[src] = {
            "largest_target": top,
            "p": float(row.max()),
            "expected": expected,
            "on_lineage": (top in expected) if expected else None,
            "expected_rank": (int((row.rank(ascending=False, method="min")[expected]).min()) if expected else None),
        }
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["pbmc", "pancreas"])
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument(
        "--epochs",
        nargs="+",
        default=["pbmc=25", "pancreas=10"],
        help="KDCPT max_epochs per dataset (early stopping on its own validation cells)",
    )
    parser.add_argument("--no-scanvi", action="store_true")
    parser.add_argument("--no-celltypist", action="store_true")
    parser.add_argument("--scvi-epochs", type=int, default=100)
    parser.add_argument("--scanvi-epochs", type=int, default=20)
    parser.add_argument("--out", default=str(C.RESULTS / "calibration"))
    parser.add_argument("--keep-others", action="store_true", help="keep other datasets' results already in --out")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    C.set_threads()
    epochs = dict(e.split("=") for e in args.epochs)
    from sklearn.model_selection import train_test_split

    report = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]) if argv is None else str(argv),
        "date": C.now(),
        "commit": C.git_commit(),
        "machine": C.machine(),
        "versions": C.versions(),
        "protocol": __doc__.split("Usage")[0].strip(),
        "datasets": {},
    }
    previous = Path(args.out + ".json")
    if args.keep_others and previous.exists():
        # keep the other datasets' results (each dataset records its own command)
        report["datasets"] = json.loads(previous.read_text()).get("datasets", {})
    for name in args.datasets:
        ds = C.load_dataset(name)
        train, test = C.split(ds.labels)
        fit, cal = train_test_split(train, test_size=0.15, stratify=ds.labels.iloc[train], random_state=C.SEED)
        fit, cal = np.sort(fit), np.sort(cal)
        entry = {
            "command": report["command"],
            "date": C.now(),
            "n_fit": len(fit),
            "n_calibration": len(cal),
            "n_test": len(test),
            "methods": {},
            "skipped": {},
        }
        with C.timer() as t:
            res, model = run_kdcpt(ds, fit, cal, test, int(epochs.get(name, 20)), args.alpha)
        res["timing"] = t
        entry["methods"]["kdcpt"] = res
        print(
            name,
            "kdcpt",
            {k: res[k] for k in ("accuracy", "ece_raw", "ece_calibrated", "auroc_uncertainty")},
            flush=True,
        )
        if name == "pancreas":
            P_fit = model.get_transition_matrix().matrix
            a_test = ds.adata[test].copy()
            from scanpy_kdcpt.markov import memberships, posterior_transition_matrix

            proba = model.predict(a_test, soft=True).to_numpy()
            M = memberships(codes_of(a_test.obs[ds.labels_key], model.classes_), len(model.classes_))
            P_test = pd.DataFrame(
                posterior_transition_matrix(proba, M),
                index=model.classes_,
                columns=model.classes_,
            )
            entry["transitions"] = {
                "fit_cells_posterior": {
                    "matrix": P_fit.round(4).to_dict(orient="index"),
                    "lineage": lineage_report(P_fit),
                },
                "test_cells_posterior": {
                    "matrix": P_test.round(4).to_dict(orient="index"),
                    "lineage": lineage_report(P_test),
                },
            }
        if args.no_scanvi or not ds.has_counts:
            entry["skipped"]["scanvi"] = (
                "no counts in this dataset (scANVI models counts)" if not ds.has_counts else "--no-scanvi"
            )
        else:
            with C.timer() as t:
                res = run_scanvi(ds, fit, cal, test, args.alpha, args.scvi_epochs, args.scanvi_epochs)
            res["timing"] = t
            entry["methods"]["scanvi"] = res
            print(
                name,
                "scanvi",
                {k: res[k] for k in ("accuracy", "ece_raw", "ece_calibrated", "auroc_uncertainty")},
                flush=True,
            )
        if args.no_celltypist:
            entry["skipped"]["celltypist"] = "--no-celltypist"
        else:
            with C.timer() as t:
                res = run_celltypist(ds, fit, cal, test, args.alpha)
            if res is None:
                entry["skipped"]["celltypist"] = (
                    f"{CELLTYPIST_PY} not found (CellTypist 1.7.1 needs scikit-learn < 1.8)"
                )
            else:
                res["timing"] = t
                entry["methods"]["celltypist"] = res
                print(
                    name,
                    "celltypist",
                    {k: res[k] for k in ("accuracy", "ece_raw", "ece_calibrated", "auroc_uncertainty")},
                    flush=True,
                )
        report["datasets"][ds.name] = entry
        C.write_json(Path(args.out + ".json"), report)
    Path(args.out + ".md").write_text(markdown(report))


def markdown(report: dict) -> str:
    cols = [
        ("accuracy", "acc"),
        ("macro_f1", "macro-F1"),
        ("temperature", "T"),
        ("ece_raw", "ECE raw"),
        ("ece_calibrated", "ECE cal."),
        ("brier_raw", "Brier raw"),
        ("brier_calibrated", "Brier cal."),
        ("auroc_uncertainty", "AUROC unc."),
        ("auroc_1_minus_confidence", "AUROC 1-conf"),
        ("conformal_coverage", "coverage"),
        ("conformal_mean_set_size", "mean set"),
    ]
    lines = [
        "# Calibration and uncertainty benchmark (issue 3)",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}, commit {report['commit']}, "
        f"torch threads {report['machine']['torch_threads']} on a shared {report['machine']['host_cpus']}-CPU machine.",
        "",
        report["protocol"],
        "",
    ]
    for name, entry in report["datasets"].items():
        lines += [
            f"## {name}",
            "",
            f"Command: `{entry.get('command', report['command'])}` ({entry.get('date', report['date'])})",
            "",
            f"fit {entry['n_fit']} / calibration {entry['n_calibration']} / test {entry['n_test']} cells; "
            f"conformal alpha {next(iter(entry['methods'].values()))['conformal_alpha']}.",
            "",
            "| method | " + " | ".join(c[1] for c in cols) + " |",
            "|---" * (len(cols) + 1) + "|",
        ]
        for m, r in entry["methods"].items():
            vals = [("—" if r.get(k) is None else f"{r[k]:.3f}") for k, _ in cols]
            lines.append(f"| {m} | " + " | ".join(vals) + " |")
        for m, why in entry["skipped"].items():
            lines.append(f"\n{m} skipped: {why}.")
        if "transitions" in entry:
            lines += ["", "### Posterior transition matrix vs the known lineage", ""]
            for which, t in entry["transitions"].items():
                lines += [
                    f"**{which.replace('_', ' ')}**",
                    "",
                    "| from | largest off-diagonal | P | expected | on lineage | rank of expected |",
                    "|---|---|---|---|---|---|",
                ]
                for src, r in t["lineage"].items():
                    exp = "/".join(r["expected"]) if r["expected"] else "(terminal)"
                    on = "—" if r["on_lineage"] is None else ("yes" if r["on_lineage"] else "no")
                    rank = "—" if r["expected_rank"] is None else r["expected_rank"]
                    lines.append(f"| {src} | {r['largest_target']} | {r['p']:.4f} | {exp} | {on} | {rank} |")
                lines.append("")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
