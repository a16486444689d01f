"""Knockout genetics on pancreas with the torch-free simulation core (no neural model).

For each seed: 90 % of the cells (seeded subsample), normalise_total + log1p, PCA (30), kNN graph,
the velocity chain of ``kdcpt.directed.directed_chain``, memberships = one-hot ``clusters``,
terminals Alpha / Beta / Delta / Epsilon. A GRN (:func:`scanpy_kdcpt.simulation.fit_grn`, TF prior
as regulators) simulates each knockout's shift; :func:`~scanpy_kdcpt.simulation.perturbed_chain`
(PCA basis, the knocked gene ignored) gives ``T_ko``; fates (mean over Ngn3 high EP +
Pre-endocrine cells), the net flux Ngn3 high EP → Pre-endocrine and the mass not reaching a
terminal within the horizon are compared with the unperturbed chain, each against a null of
randomised shifts (genes permuted, ``mode="genes"``). Published phenotypes are in ``EXPECTED``.

    python benchmarks/knockout_genetics_core.py [--seeds 0 1 2] [--n-null 20] [--sigma 0.25]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import sparse

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SHARED = Path(os.environ.get("KDCPT_SHARED_DATA", "/work/shared/data"))
PANCREAS = SHARED / "pancreas_endocrinogenesis" / "pancreas_bastidas_ponce2019_3696x2000.h5ad"
DOROTHEA = SHARED / "tf_target_prior_dorothea" / "dorothea_mm.tsv.gz"
TERMINALS = ["Alpha", "Beta", "Delta", "Epsilon"]
SOURCES = ["Ngn3 high EP", "Pre-endocrine"]

# published mouse knockout phenotypes: (statistic, sign) pairs; "Beta|Delta" = either rises
EXPECTED = {
    "Neurog3": {
        "checks": [("flux", -1), ("flux_entry", -1), ("not_reached", +1)],
        "phenotype": "no endocrine cells: endocrine progenitors do not form (flux EP → Pre-endocrine ≥ 50 % lower)",
        "ref": "Gradwohl G, Dierich A, LeMeur M, Guillemot F. neurogenin3 is required for the development of the "
        "four endocrine cell lineages of the pancreas. PNAS 97:1607-1611, 2000.",
    },
    "Arx": {
        "checks": [("Alpha", -1), ("Beta|Delta", +1)],
        "phenotype": "no α cells, more β and δ cells",
        "ref": "Collombat P, Mansouri A, Hecksher-Sørensen J, et al. Opposing actions of Arx and Pax4 in endocrine "
        "pancreas development. Genes Dev 17:2591-2603, 2003.",
    },
    "Pax4": {
        "checks": [("Beta", -1), ("Delta", -1), ("Alpha", +1)],
        "phenotype": "no β and δ cells, more α cells",
        "ref": "Sosa-Pineda B, Chowdhury K, Torres M, Oliver G, Gruss P. The Pax4 gene is essential for "
        "differentiation of insulin-producing β cells in the mammalian pancreas. Nature 386:399-402, 1997.",
    },
    "Nkx6-1": {
        "checks": [("Beta", -1)],
        "phenotype": "loss of β cells (other endocrine types formed)",
        "ref": "Sander M, Sussel L, Conners J, et al. Homeobox gene Nkx6.1 lies downstream of Nkx2.2 in the major "
        "pathway of β-cell formation in the pancreas. Development 127:5533-5540, 2000.",
    },
    "Pax6": {
        "checks": [("Alpha", -1)],
        "phenotype": "no α cells (other endocrine cells reduced)",
        "ref": "St-Onge L, Sosa-Pineda B, Chowdhury K, Mansouri A, Gruss P. Pax6 is required for differentiation "
        "of glucagon-producing α-cells in mouse pancreas. Nature 387:406-409, 1997.",
    },
    "Nkx2-2": {
        "checks": [("Beta", -1), ("Alpha", -1)],
        "phenotype": "no β cells, fewer α and PP cells",
        "ref": "Sussel L, Kalamaras J, Hartigan-O'Connor DJ, et al. Mice lacking the homeodomain transcription "
        "factor Nkx2.2 have diabetes due to arrested differentiation of pancreatic β cells. Development "
        "125:2213-2221, 1998.",
    },
}

# the same for the GRN fitted on the chain's drift (--drift-lag 20; run of 2026-12-05, 3 seeds, 12 nulls)
DRIFT_NOTES = [
    "- **What changes:** each target's regression predicts its expected change over 20 chain steps, "
    "`T^20 x − x` (`simulation.chain_drift`), from the regulators' current levels, with the target's own level "
    "as a covariate (`simulation.fit_grn(response=...)`) — a Granger-like network along the chain's direction, "
    "against the default network of each gene's current level (`knockout_genetics_core.md`).",
    "- **It fits the Neurog3 block the issue asks for:** net flux Ngn3 high EP → Pre-endocrine −69 % (the "
    "expression network: +99 %), entry into Ngn3 high EP −22 %.",
    "- **It reverses the lineage choices:** Arx raises α (+0.035) and lowers β, Pax6 raises α, Nkx6-1 raises β; "
    "only Pax4 keeps the published direction (β −0.015, α +0.021), and the effects are ~10× smaller than the "
    "expression network's. 58 % of the directions, none beyond the gene-permuted null (p = 1/13 is its floor "
    "with 12 draws, and 'beyond' needs p ≤ 0.05). The package keeps the expression network as its default.",
]

# what the numbers mean, read off the run of 2026-12-04 (3 seeds, 19 nulls); re-rendered with --from-json
NOTES = [
    "- **The gene-permuted null is lenient.** A shift of the same size in random genes barely moves the chain on "
    "pancreas (2,000 genes, PCA basis), so every statistic, even Nkx2-2's |Δ| < 0.01, sits at the smallest "
    "attainable p (1/20). CellOracle's row-shuffled null (`mode='cells'`) on the perturbation score is stricter "
    "(Arx: p = 0.30). Read 'beyond null' with the size of Δ.",
    "- **Neurog3: the block is real, the issue's flux target is not met.** The knockout makes the Ngn3-high state "
    "repulsive in both directions: the net flux *into* it from Ngn3 low EP reverses (−226 %), and 11 % of the "
    "source cells' mass no longer reaches any terminal within the horizon; but Pre-endocrine cells also stop "
    "moving back into it, so the *net* flux Ngn3 high EP → Pre-endocrine doubles instead of halving.",
    "- **Pax4: β down (✓), α not up.** α goes down too and Epsilon up (+0.29). Epsilon rises also for Pax6 and "
    "Nkx6-1: shifts that push cells off the β and α paths end in the small Epsilon terminal. (More ghrelin / ε "
    "cells after Nkx2-2 and Pax4 loss and after Pax6 loss are reported — Prado et al. PNAS 2004, Heller et al. "
    "Dev Biol 2005 — not scored here.)",
    "- **Nkx2-2: right sign for β, negligible size.** Its simulated shift is small (mean L1 2.9 in the source cells "
    "against 9–79 for the others; about 5 % of a kNN step), so the step-scaled bias hardly moves the chain.",
    "- **Base network:** the DoRothEA mouse prior keeps 212 edges among these 2,000 genes and none from the six "
    "knocked-out genes except Pax6 → Gck; it cannot drive these knockouts, so the GRN uses the mouse TF list "
    "(167 regulators) with `min_z = 3` pruning (35k–75k links per phenotype).",
    "- **Sweep (one chain on all cells, no null):** the scored signs hold for n_propagation 1 / 3, σ 0.25 / 0.5, "
    "min_z 0 / 3 / 5, alpha 0.02 / 0.1 and gene space instead of PCA; none of them makes Pax4 raise α. Without the "
    "step scaling (`step_scale=False`) Nkx2-2's 5 %-of-a-step shift moves α +0.22 / β −0.23, as much as the "
    "strongest knockouts: the scaling is what keeps a tiny shift from redirecting cells.",
    "- **VelocityKernel alternative:** same signs and similar sizes for Arx and Pax4, but a zero shift already "
    "changes T (mean total variation 0.15 per row) and it costs 5–12 s per knockout against ~1–2 s.",
]

warnings.filterwarnings("ignore")


def prepare(seed: int, frac: float = 0.9):
    """Subsample, normalise, PCA, kNN, velocity chain, smoothed expression for one seed."""
    import anndata as ad
    import scanpy as sc
    from sklearn.decomposition import PCA

    from scanpy_kdcpt import directed, markov
    from scanpy_kdcpt import simulation as sim

    adata = ad.read_h5ad(PANCREAS)
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(adata.n_obs, int(round(frac * adata.n_obs)), replace=False))
    adata = adata[keep].copy()
    norm = adata.copy()
    sc.pp.normalize_total(norm)
    sc.pp.log1p(norm)
    X = norm.X.toarray() if sparse.issparse(norm.X) else np.asarray(norm.X)
    pca = PCA(30, random_state=seed).fit(X)
    Z = pca.transform(X)
    D, W = markov.knn_graph(Z, 30, random_state=seed)
    t0 = time.perf_counter()
    T, record = directed.directed_chain(adata, Z, direction="velocity", graph=(D, W), random_state=seed)
    t_chain = time.perf_counter() - t0
    cats = list(adata.obs["clusters"].cat.categories)
    codes = adata.obs["clusters"].cat.codes.to_numpy()
    return {
        "genes": np.asarray(adata.var_names.astype(str)),
        "X": X.astype(np.float32),
        "Xs": sim.smooth_expression(X, W),
        "Z": Z,
        "basis": pca.components_.T,
        "T": T,
        "codes": codes,
        "cats": cats,
        "t_chain": t_chain,
        "chain": record["kind"],
    }


def statistics(T, d, M, terminal, src, horizon):
    """Mean fates over the source cells, net flux EP → Pre-endocrine, mass not reached within the horizon."""
    from scanpy_kdcpt import markov
    from scanpy_kdcpt import simulation as sim

    F = markov.fate_probabilities(T, M, terminal)
    fates = np.nanmean(F[src], 0)
    P = markov.coarse_grain(T, M)
    sizes = np.bincount(d["codes"], minlength=len(d["cats"]))
    net = markov.net_flux(P, sizes)
    flux = net[d["cats"].index(SOURCES[0]), d["cats"].index(SOURCES[1])]
    entry = net[d["cats"].index("Ngn3 low EP"), d["cats"].index(SOURCES[0])]
    H = sim.fates_with_horizon(T, M, terminal, n_steps=horizon)
    return np.concatenate([fates, [flux, entry, H[src, -1].mean()]])


NAMES = [*TERMINALS, "flux", "flux_entry", "not_reached"]


def run_seed(
    seed: int, n_null: int, sigma: float, alpha: float, n_propagation: int, min_z: float, lag: int = 0
) -> dict:
    """One seed: GRN, shifts, perturbed chains, statistics and their nulls for every gene of EXPECTED."""
    import scanpy_kdcpt as kdcpt
    from scanpy_kdcpt import markov
    from scanpy_kdcpt import simulation as sim

    d = prepare(seed)
    genes, codes, cats, T = d["genes"], d["codes"], d["cats"], d["T"]
    tf = kdcpt.datasets.is_transcription_factor(genes, species="mouse")
    t0 = time.perf_counter()
    response = sim.chain_drift(T, d["Xs"], lag) if lag else None
    grn = sim.fit_grn(d["Xs"], codes, regulators=tf, alpha=alpha, min_z=min_z, genes=genes, response=response)
    t_grn = time.perf_counter() - t0
    M = markov.memberships(codes, len(cats))
    terminal = np.array([cats.index(t) for t in TERMINALS])
    src = np.isin(codes, [cats.index(s) for s in SOURCES])
    horizon = sim.choose_horizon(T, M, terminal, reached=0.9)
    base = statistics(T, d, M, terminal, src, horizon)

    def delta(Tk):
        s = statistics(Tk, d, M, terminal, src, horizon)
        out = s - base
        out[4:6] = s[4:6] / base[4:6] - 1.0  # fluxes: relative change
        return out

    out = {
        "seed": seed,
        "n_cells": len(codes),
        "chain": d["chain"],
        "t_chain_s": round(d["t_chain"], 1),
        "t_grn_s": round(t_grn, 2),
        "grn_links_per_phenotype": [int(c.nnz) for c in grn.coef],
        "horizon": int(horizon),
        "base": dict(zip(NAMES, np.round(base, 4).tolist(), strict=True)),
        "genes": {},
    }
    for gene in EXPECTED:
        g = int(np.flatnonzero(genes == gene)[0])
        t0 = time.perf_counter()
        S = sim.simulate_shift(d["Xs"], codes, grn, g, n_propagation=n_propagation)
        kw = {"sigma": sigma, "basis": d["basis"], "ignore": [g]}
        T_ko = sim.perturbed_chain(T, d["Xs"], S, **kw)
        t_ko = time.perf_counter() - t0
        obs = delta(T_ko)
        null = sim.randomized_shift_null(T, d["Xs"], S, delta, n_permutations=n_null, seed=seed, mode="genes", **kw)
        p = sim.empirical_pvalue(obs, null)
        score = sim.perturbation_score(T, d["Z"], sim.embed_shift(T, T_ko, d["Z"]))
        score_src = float(score[src].mean())
        score_null = sim.randomized_shift_null(
            T,
            d["Xs"],
            S,
            lambda Tk: sim.perturbation_score(T, d["Z"], sim.embed_shift(T, Tk, d["Z"]))[src].mean(),
            n_permutations=n_null,
            seed=seed,
            mode="cells",
            **kw,
        )
        out["genes"][gene] = {
            "delta": dict(zip(NAMES, obs.round(4).tolist(), strict=True)),
            "p": dict(zip(NAMES, np.round(p, 4).tolist(), strict=True)),
            "score_src": round(score_src, 4),
            "score_p_cells": round(float(sim.empirical_pvalue(score_src, score_null)), 4),
            "shift_l1_src": round(float(np.abs(S[src]).sum(1).mean()), 3),
            "t_shift_chain_s": round(t_ko, 2),
        }
        print(
            f"seed {seed} {gene:8s} "
            + " ".join(f"{k}={v:+.3f}(p={p_:.2f})" for k, v, p_ in zip(NAMES, obs, p, strict=True)),
            flush=True,
        )
    return out


def velocity_kernel_alternative(seed: int, sigma: float, alpha: float, min_z: float, genes_: list[str]) -> dict:
    """CellRank's VelocityKernel on the shift (xkey = smoothed expression), mixed 0.5 / 0.5 with T."""
    import anndata as ad
    import pandas as pd
    from cellrank.kernels import VelocityKernel

    import scanpy_kdcpt as kdcpt
    from scanpy_kdcpt import markov
    from scanpy_kdcpt import simulation as sim

    d = prepare(seed)
    genes, codes, cats, T = d["genes"], d["codes"], d["cats"], d["T"]
    tf = kdcpt.datasets.is_transcription_factor(genes, species="mouse")
    grn = sim.fit_grn(d["Xs"], codes, regulators=tf, alpha=alpha, min_z=min_z, genes=genes)
    M = markov.memberships(codes, len(cats))
    terminal = np.array([cats.index(t) for t in TERMINALS])
    src = np.isin(codes, [cats.index(s) for s in SOURCES])
    F0 = np.nanmean(markov.fate_probabilities(T, M, terminal)[src], 0)
    _, W = markov.knn_graph(d["Z"], 30, random_state=seed)
    out = {}
    for gene in genes_:
        g = int(np.flatnonzero(genes == gene)[0])
        S = sim.simulate_shift(d["Xs"], codes, grn, g)
        S[:, g] = 0.0
        light = ad.AnnData(X=d["Xs"], obs=pd.DataFrame(index=[str(i) for i in range(len(codes))]))
        light.layers["Ms"] = d["Xs"]
        light.layers["shift"] = S
        light.obsp["connectivities"] = W
        light.obsp["distances"] = W
        light.uns["neighbors"] = {"connectivities_key": "connectivities", "distances_key": "distances"}
        t0 = time.perf_counter()
        try:
            vk = VelocityKernel(light, xkey="Ms", vkey="shift", check_connectivity=False)
            vk.compute_transition_matrix(model="deterministic", show_progress_bar=False, n_jobs=1)
            T_vk = sparse.csr_matrix(0.5 * T + 0.5 * vk.transition_matrix)
            t_vk = time.perf_counter() - t0
            F = np.nanmean(markov.fate_probabilities(T_vk, M, terminal)[src], 0)
            zero = VelocityKernel(light, xkey="Ms", vkey="Ms", check_connectivity=False)
            light.layers["zero"] = np.zeros_like(S)
            zero = VelocityKernel(light, xkey="Ms", vkey="zero", check_connectivity=False)
            zero.compute_transition_matrix(model="deterministic", show_progress_bar=False, n_jobs=1)
            T_zero = 0.5 * T + 0.5 * zero.transition_matrix
            out[gene] = {
                "delta": dict(zip(TERMINALS, np.round(F - F0, 4).tolist(), strict=True)),
                "t_s": round(t_vk, 1),
                "softmax_scale": float(vk.params.get("softmax_scale", np.nan)),
                "zero_shift_tv_from_T": round(float(0.5 * abs(T_zero - T).sum(1).mean()), 4),
            }
        except Exception as err:  # noqa: BLE001 — recorded, this is a comparison only
            out[gene] = {"error": f"{err.__class__.__name__}: {err}"}
        print("velocity kernel", gene, out[gene], flush=True)
    return out


def summarise(runs: list[dict]) -> dict:
    """Mean ± sd over seeds, published sign and null check per direction."""
    rows = []
    for gene, spec in EXPECTED.items():
        for stat, sign in spec["checks"]:
            if stat == "Beta|Delta":
                vals = [max(r["genes"][gene]["delta"]["Beta"], r["genes"][gene]["delta"]["Delta"]) for r in runs]
                pick = [
                    "Beta" if r["genes"][gene]["delta"]["Beta"] >= r["genes"][gene]["delta"]["Delta"] else "Delta"
                    for r in runs
                ]
                ps = [r["genes"][gene]["p"][k] for r, k in zip(runs, pick, strict=True)]
            else:
                vals = [r["genes"][gene]["delta"][stat] for r in runs]
                ps = [r["genes"][gene]["p"][stat] for r in runs]
            mean = float(np.mean(vals))
            rows.append(
                {
                    "gene": gene,
                    "statistic": stat,
                    "expected_sign": sign,
                    "mean": round(mean, 4),
                    "sd": round(float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, 4),
                    "p_median": round(float(np.median(ps)), 4),
                    "sign_ok": bool(np.sign(mean) == sign),
                    "beyond_null": bool(np.sign(mean) == sign and np.median(ps) <= 0.05),
                }
            )
    n = len(rows)
    targets = {
        "Neurog3 flux EP→Pre-endocrine ≥ 50 % lower": _mean(runs, "Neurog3", "flux") <= -0.5,
        "Arx: Alpha ≥ 0.05 lower": _mean(runs, "Arx", "Alpha") <= -0.05,
        "Arx: Beta or Delta higher": max(_mean(runs, "Arx", "Beta"), _mean(runs, "Arx", "Delta")) > 0,
        "Pax4: Beta ≥ 0.05 lower": _mean(runs, "Pax4", "Beta") <= -0.05,
        "Pax4: Alpha higher": _mean(runs, "Pax4", "Alpha") > 0,
    }
    return {
        "rows": rows,
        "share_sign": round(sum(r["sign_ok"] for r in rows) / n, 3),
        "share_sign_beyond_null": round(sum(r["beyond_null"] for r in rows) / n, 3),
        "targets": {k: bool(v) for k, v in targets.items()},
    }


def _mean(runs, gene, stat):
    return float(np.mean([r["genes"][gene]["delta"][stat] for r in runs]))


def write(out: dict, path_json: Path, path_md: Path) -> None:
    """JSON and a markdown table."""
    path_json.write_text(json.dumps(out, indent=1, default=float))
    s = out["summary"]
    lines = [
        "# Knockout genetics on pancreas: the torch-free simulation core",
        "",
        f"Command: `{out['command']}`  ",
        f"Date: {out['date']}; {out['settings']}  ",
        "Chain: `directed_chain(direction='velocity')` on PCA(30) of log expression, 90 % of the cells per seed "
        "(seeded subsample); memberships one-hot `clusters`; fates = mean over Ngn3 high EP + Pre-endocrine cells; "
        "flux = relative change of the net flux Ngn3 high EP → Pre-endocrine; flux_entry = the same for Ngn3 low EP → "
        "Ngn3 high EP (entry into the endocrine progenitor state); not_reached = mass not absorbed within "
        "the horizon (`choose_horizon(reached=0.9)`). p: median over seeds of the two-sided empirical p against "
        f"{out['settings']['n_null']} gene-permuted shifts (`randomized_shift_null(mode='genes')`), (1+#)/(1+n).",
        "",
        "| gene | published phenotype | statistic | expected | Δ mean ± sd | null p | sign | beyond null |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in s["rows"]:
        lines.append(
            f"| {r['gene']} | {EXPECTED[r['gene']]['phenotype']} | {r['statistic']} "
            f"| {'+' if r['expected_sign'] > 0 else '−'} "
            f"| {r['mean']:+.3f} ± {r['sd']:.3f} | {r['p_median']:.3f} | {'✓' if r['sign_ok'] else '✗'} "
            f"| {'✓' if r['beyond_null'] else '✗'} |"
        )
    lines += [
        "",
        f"Share with the published sign: **{s['share_sign']:.0%}**; with the sign and beyond the null: "
        f"**{s['share_sign_beyond_null']:.0%}** (target ≥ 80 %).",
        "",
        "Targets of issue 18: " + "; ".join(f"{k}: {'met' if v else '**not met**'}" for k, v in s["targets"].items()),
        "",
        "## All statistics per gene (mean over seeds)",
        "",
        "| gene | "
        + " | ".join(NAMES)
        + " | perturbation score (src) | score p (cells shuffled) | mean L1 shift (src) |",
        "|---|" + "---|" * (len(NAMES) + 3),
    ]
    runs = out["runs"]
    for gene in EXPECTED:
        vals = [np.mean([r["genes"][gene]["delta"][k] for r in runs]) for k in NAMES]
        sc_ = np.mean([r["genes"][gene]["score_src"] for r in runs])
        sp = np.median([r["genes"][gene]["score_p_cells"] for r in runs])
        l1 = np.mean([r["genes"][gene]["shift_l1_src"] for r in runs])
        lines.append(f"| {gene} | " + " | ".join(f"{v:+.3f}" for v in vals) + f" | {sc_:+.3g} | {sp:.3f} | {l1:.1f} |")
    lines += [
        "",
        "Baselines per seed: " + "; ".join(f"seed {r['seed']}: {r['base']}, horizon {r['horizon']}" for r in runs),
        "",
    ]
    lines += [
        "Timings per seed: " + "; ".join(f"chain {r['t_chain_s']} s, GRN {r['t_grn_s']} s" for r in runs),
        "",
    ]
    if out.get("velocity_kernel"):
        lines += ["## Alternative: CellRank VelocityKernel on the shift, mixed 0.5 / 0.5 with T (seed 0)", ""]
        for gene, v in out["velocity_kernel"].items():
            lines.append(f"- {gene}: {v}")
        lines.append("")
    drift = out["settings"].get("grn_response", "expression") != "expression"
    lines += ["## Notes", "", *(DRIFT_NOTES if drift else NOTES), ""]
    lines += ["## References", ""] + [f"- {g}: {e['ref']}" for g, e in EXPECTED.items()] + [""]
    path_md.write_text("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n-null", type=int, default=20)
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--alpha", type=float, default=0.02)
    p.add_argument("--min-z", type=float, default=3.0)
    p.add_argument("--n-propagation", type=int, default=3)
    p.add_argument(
        "--drift-lag",
        type=int,
        default=0,
        help="fit the GRN on the chain's drift T^lag x - x instead of the expression (0: expression)",
    )
    p.add_argument("--velocity-kernel", action="store_true", help="also measure the VelocityKernel alternative")
    p.add_argument("--out", default=str(RESULTS / "knockout_genetics_core"))
    p.add_argument("--from-json", help="re-render the markdown of an earlier run's JSON (no computation)")
    a = p.parse_args(argv)
    if a.from_json:
        out = json.loads(Path(a.from_json).read_text())
        write(out, Path(a.from_json), Path(a.from_json).with_suffix(".md"))
        return 0
    if not PANCREAS.exists():
        print(f"{PANCREAS} is absent", file=sys.stderr)
        return 1
    command = "python benchmarks/knockout_genetics_core.py " + " ".join(argv if argv is not None else sys.argv[1:])
    settings = {
        "sigma": a.sigma,
        "alpha": a.alpha,
        "min_z": a.min_z,
        "n_propagation": a.n_propagation,
        "n_null": a.n_null,
        "space": "PCA(30) basis",
        "regulators": "mouse TF list",
        "grn_response": f"drift T^{a.drift_lag} x - x" if a.drift_lag else "expression",
    }
    runs = [run_seed(s, a.n_null, a.sigma, a.alpha, a.n_propagation, a.min_z, a.drift_lag) for s in a.seeds]
    out = {
        "command": command.strip(),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "settings": settings,
        "runs": runs,
        "summary": summarise(runs),
    }
    if a.velocity_kernel:
        out["velocity_kernel"] = velocity_kernel_alternative(a.seeds[0], a.sigma, a.alpha, a.min_z, ["Arx", "Pax4"])
    base = Path(a.out)
    base.parent.mkdir(parents=True, exist_ok=True)
    write(out, base.with_suffix(".json"), base.with_suffix(".md"))
    print(json.dumps(out["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
