"""Issue 10: knockouts against known genetics, and the genome-wide screen's speed and accuracy.

Pancreas (Bastidas-Ponce et al. 2019, 3,696 cells × 2,000 genes, counts):

- speed: ``model.knockout("all")`` (first-order screen of every gene, exact recompute of the
  top 50) timed against one prediction pass over all cells, in the same run;
- accuracy of the first-order ranking: Spearman correlation with exact knockouts of a random
  sample of genes;
- known genetics, on a directed cell chain (kNN on PCA of log counts, edges kept only forward in
  diffusion pseudotime from the Ductal cell farthest from the other phenotypes, terminal
  phenotypes Alpha / Beta / Delta / Epsilon): Neurog3 (no endocrine cells form in Neurog3-null
  mice, Gradwohl et al. 2000), Arx (Alpha fate down, Beta / Delta up) and Pax4 (Beta / Delta
  down, Alpha up; Collombat et al. 2003), each against an expression-matched null.

krumsiek11 (simulated myeloid network): Gata1 should lower Ery / Mk, Pu.1 and Cebpa Mo / Neu.

    python benchmarks/knockout_validation.py --threads 1 --epochs 10 --n-sample 40 --n-null 20
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from _ko_common import load, machine, trained_model, write  # noqa: E402

TERMINAL = ["Alpha", "Beta", "Delta", "Epsilon"]
EXPECT = {
    "Neurog3": "flow from Ngn3 high EP into Pre-endocrine / endocrine falls (no endocrine cells form)",
    "Arx": "Alpha fate down, Beta / Delta up",
    "Pax4": "Beta / Delta fate down, Alpha up",
}


def directed_chain(adata, labels: str, n_neighbors: int = 30):
    """kNN chain on PCA of log counts, kept forward in diffusion pseudotime from a Ductal extreme."""
    import scanpy as sc

    from scanpy_kdcpt import markov

    a = adata.copy()
    a.X = a.X.astype(np.float32)
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    sc.pp.pca(a, n_comps=30, random_state=0)
    sc.pp.neighbors(a, n_neighbors=n_neighbors, random_state=0)
    sc.tl.diffmap(a, random_state=0)
    dm = a.obsm["X_diffmap"][:, 1:6]
    lab = a.obs[labels].astype(str).to_numpy()
    others = np.stack([dm[lab == c].mean(0) for c in np.unique(lab) if c != "Ductal"])
    ductal = np.flatnonzero(lab == "Ductal")
    far = ((dm[ductal, None, :] - others[None]) ** 2).sum(-1).min(1)
    a.uns["iroot"] = int(ductal[np.argmax(far)])
    sc.tl.dpt(a)
    pt = a.obs["dpt_pseudotime"].to_numpy()
    T = markov.knn_transition_matrix(a.obsm["X_pca"], n_neighbors).tocoo()
    keep = pt[T.col] >= pt[T.row]
    from scipy import sparse

    T = sparse.csr_matrix((T.data[keep], (T.row[keep], T.col[keep])), shape=T.shape)
    rs = np.asarray(T.sum(1)).ravel()
    empty = rs == 0
    T = (sparse.diags(1 / np.where(empty, 1, rs)) @ T + sparse.diags(empty.astype(float))).tocsr()
    return T, pt


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--n-sample", type=int, default=40, help="random genes knocked out exactly for the Spearman check")
    p.add_argument("--n-null", type=int, default=20)
    p.add_argument("--n-exact", type=int, default=50)
    p.add_argument("--skip-krumsiek", action="store_true")
    args = p.parse_args(argv)

    import scvi
    import torch
    from scipy.stats import spearmanr

    import scanpy_kdcpt as kdcpt

    torch.set_num_threads(args.threads)
    command = "python benchmarks/knockout_validation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    before = machine()
    model, adata, labels = trained_model("pancreas", args.epochs)
    out: dict = {"command": command, "machine_before": before}

    # -- krumsiek11 ------------------------------------------------------------------------------
    if not args.skip_krumsiek:  # cheap: first
        k_adata, k_labels = load("krumsiek11")
        kdcpt.KDCPT.setup_anndata(k_adata, labels_key=k_labels, prior_key="is_tf")
        scvi.settings.seed = 0
        km = kdcpt.KDCPT(k_adata)
        km.train(max_epochs=30, enable_progress_bar=False, accelerator="cpu")
        kr = km.knockout("all", inplace=False, progress=False).table
        blocks = {"Ery/Mk": ["Ery", "Mk"], "Mo/Neu": ["Mo", "Neu"]}
        res = {}
        for name, cl in blocks.items():
            sel = kr[kr["source"].isin(cl) & kr["target"].isin(cl)]
            res[name] = (sel.groupby("gene", observed=True)["delta"].sum() / len(cl)).to_dict()
        out["krumsiek11_block_change"] = res
        checkpoint(out)

    # -- known genetics on a directed chain ----------------------------------------------------
    T, _ = directed_chain(adata, labels)
    genes = [g for g in EXPECT if g in adata.var_names]
    scvi.settings.seed = 0
    ko = model.knockout(
        genes, chain=T, terminal=TERMINAL, n_null=args.n_null, floor=0.02, inplace=False, progress=False
    )
    fate = ko.fate
    out["knockout_summary"] = ko.summary.to_dict("records")
    out["fate_all"] = (
        fate[fate["source"] == "all"].pivot_table(index="gene", columns="terminal", values="delta", observed=True)
    ).to_dict("index")
    out["fate_base_all"] = (
        fate[(fate["source"] == "all") & (fate["gene"] == genes[0])].set_index("terminal")["fate_base"].to_dict()
    )
    ep = fate[fate["source"].isin(["Ngn3 high EP", "Pre-endocrine"])]
    out["fate_from_progenitors"] = (
        ep.pivot_table(index=["gene", "source"], columns="terminal", values="delta", observed=True)
        .reset_index()
        .to_dict("records")
    )
    fl = ko.flux
    pairs = [("Ngn3 low EP", "Ngn3 high EP"), ("Ngn3 high EP", "Pre-endocrine"), ("Pre-endocrine", "Alpha"),
             ("Pre-endocrine", "Beta"), ("Pre-endocrine", "Delta"), ("Pre-endocrine", "Epsilon")]  # fmt: skip
    rows = []
    for a, b in pairs:
        sel = fl[(fl["source"] == a) & (fl["target"] == b)]
        for r in sel.itertuples(index=False):
            rows.append({"gene": r.gene, "transition": f"{a} -> {b}", "p_base": r.p_base, "p_ko": r.p_ko,
                         "flux_base": r.flux_base, "flux_ko": r.flux_ko})  # fmt: skip
    out["directed_flux"] = rows
    t = ko.table
    out["terminated"] = t[t["terminated"]][["gene", "source", "target", "p_base", "p_ko"]].to_dict("records")
    post = t[(t["source"] == "Ngn3 high EP") & (t["target"] == "Pre-endocrine")]
    out["posterior_ep_to_pre"] = post[["gene", "p_base", "p_ko", "delta"]].to_dict("records")

    checkpoint(out)

    # -- the same knockouts propagated to DoRothEA targets (ridge over the prior edges) --------
    from _ko_common import SHARED

    edges = kdcpt.datasets.tf_target_prior(
        SHARED / "tf_target_prior_dorothea" / "dorothea_mm.tsv.gz", confidence=None, genes=adata.var_names
    )
    out["grn_edges"] = {g: int((edges["tf"] == g).sum()) for g in genes}
    scvi.settings.seed = 0
    ko_grn = model.knockout(
        genes, chain=T, terminal=TERMINAL, n_null=args.n_null, floor=0.02, inplace=False, progress=False,
        propagate="grn", grn=edges, n_steps=2,
    )  # fmt: skip
    fg = ko_grn.fate
    out["grn_summary"] = ko_grn.summary.to_dict("records")
    out["grn_fate_all"] = (
        fg[fg["source"] == "all"].pivot_table(index="gene", columns="terminal", values="delta", observed=True)
    ).to_dict("index")
    checkpoint(out)

    # -- speed: one prediction pass vs the genome-wide screen, in the same run ------------------
    model.get_logits(indices=np.arange(256))  # warm-up
    t = time.perf_counter()
    model.get_logits()
    t_pass = time.perf_counter() - t
    t = time.perf_counter()
    screen = model.knockout("all", n_exact=args.n_exact, inplace=False, progress=False)
    t_screen = time.perf_counter() - t
    s = screen.summary
    out["speed"] = {
        "n_genes": int(adata.n_vars),
        "n_cells": int(adata.n_obs),
        "n_exact": int(s["exact"].sum()),
        "seconds_prediction_pass": t_pass,
        "seconds_screen": t_screen,
        "ratio_screen_to_pass": t_screen / t_pass,
    }
    print(out["speed"], flush=True)
    checkpoint(out)

    # -- accuracy of the first-order ranking on a random sample -------------------------------
    rng = np.random.default_rng(0)
    sample = list(rng.choice(adata.var_names, args.n_sample, replace=False))
    t = time.perf_counter()
    exact = model.knockout(sample, screen="exact", inplace=False, progress=False).summary.set_index("gene")["effect"]
    t_exact = time.perf_counter() - t
    approx = s.set_index("gene")["effect_first_order"].reindex(exact.index)
    out["first_order_vs_exact"] = {
        "n_genes": len(sample),
        "spearman": float(spearmanr(approx, exact).correlation),
        "seconds_exact_sample": t_exact,
        "exact_seconds_per_gene": t_exact / len(sample),
        "extrapolated_exact_all_seconds": t_exact / len(sample) * adata.n_vars,
    }
    top = s[s["exact"]].nlargest(15, "effect")[["gene", "effect", "effect_first_order", "frac_changed"]]
    out["top_exact"] = top.to_dict("records")
    print(out["first_order_vs_exact"], flush=True)
    checkpoint(out)

    out["complete"] = True
    checkpoint(out)
    return 0


def checkpoint(out: dict) -> None:
    """Write what is done so far (a long run on a loaded machine may not finish)."""
    out["machine_after"] = machine()
    write("knockout_validation", out, markdown(out))


def _fmt(x, nd=3):
    return "nan" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{nd}f}"


def markdown(o: dict) -> str:
    mb, ma = o["machine_before"], o["machine_after"]
    lines = [
        "# Knockouts against known genetics; the genome-wide screen (issue 10)",
        "",
        f"Command: `{o['command']}`  ",
        f"Date: {mb['date']}; git {mb['git_commit']}; Python {mb['python']}, torch {mb['torch']} "
        f"({mb['torch_threads']} thread(s)), {mb['cpus']} CPUs shared with other jobs.  ",
        f"Load before: `{mb['uptime']}`; after: `{ma['uptime']}`.  ",
        "Model: default KDCPT (prior `is_tf`, SCENIC mouse TFs), 10 epochs, seed 0, cached under `benchmarks/_work/`.",
        "" if o.get("complete") else "\n**Partial run**: the sections below are those that finished.\n",
    ]
    if "krumsiek11_block_change" in o:
        lines += ["", "## krumsiek11", "", "Mean change of p(block) over the block's rows (knockout − base):", "",
                  "| gene | Ery/Mk | Mo/Neu |", "| --- | --- | --- |"]  # fmt: skip
        k = o["krumsiek11_block_change"]
        for g in k["Ery/Mk"]:
            lines.append(f"| {g} | {_fmt(k['Ery/Mk'][g], 4)} | {_fmt(k['Mo/Neu'].get(g), 4)} |")
    if "knockout_summary" in o:
        lines += known(o)
    if "grn_summary" in o:
        lines += grn(o)
    if "speed" in o:
        lines += screen(o)
    return "\n".join(lines) + "\n"


def screen(o: dict) -> list[str]:
    sp = o["speed"]
    fo = o.get("first_order_vs_exact", {"n_genes": 0, "exact_seconds_per_gene": np.nan,
                                         "extrapolated_exact_all_seconds": np.nan, "spearman": np.nan})  # fmt: skip
    lines = [
        "",
        "## Genome-wide screen (pancreas, all 2,000 genes)",
        "",
        "| quantity | value |",
        "| --- | --- |",
        f"| one prediction pass over {sp['n_cells']} cells (s) | {_fmt(sp['seconds_prediction_pass'], 2)} |",
        f'| `knockout("all")`: first order for {sp["n_genes"]} genes + exact top {sp["n_exact"]} (s) | '
        f"{_fmt(sp['seconds_screen'], 1)} |",
        f"| ratio screen / prediction pass | **{_fmt(sp['ratio_screen_to_pass'], 1)}** |",
        f"| exact knockout, s per gene (sample of {fo['n_genes']}) | {_fmt(fo['exact_seconds_per_gene'], 2)} |",
        f"| exact screen of all genes, extrapolated (s) | {_fmt(fo['extrapolated_exact_all_seconds'], 0)} |",
        f"| Spearman(first order, exact) on {fo['n_genes']} random genes | **{_fmt(fo['spearman'])}** |",
        "",
        "Top genes of the screen (exact effect = mean total-variation change of the rows of P):",
        "",
        "| gene | effect (exact) | first order | frac. cells changed |",
        "| --- | --- | --- | --- |",
    ]
    for r in o.get("top_exact", []):
        lines.append(
            f"| {r['gene']} | {_fmt(r['effect'])} | {_fmt(r['effect_first_order'], 4)} | {_fmt(r['frac_changed'])} |"
        )
    return lines


def grn(o: dict) -> list[str]:
    lines = ["", "## The same knockouts propagated through DoRothEA (`propagate=\"grn\"`, 2 steps)", "",
             "Prior edges to other pancreas genes (DoRothEA mouse, all confidence levels): "
             + ", ".join(f"{g} {n}" for g, n in o["grn_edges"].items()) + ". A gene without edges keeps its "
             "direct effect (a warning says so).", "",
             "| gene | effect (direct + targets) | frac. changed | p | q | " + " | ".join(TERMINAL) + " |",
             "| --- | --- | --- | --- | --- |" + " --- |" * len(TERMINAL)]  # fmt: skip
    for r in o["grn_summary"]:
        f = o["grn_fate_all"].get(r["gene"], {})
        lines.append(
            f"| {r['gene']} | {_fmt(r['effect'])} | {_fmt(r['frac_changed'])} | {_fmt(r['pval'])} | "
            f"{_fmt(r['qval'])} | " + " | ".join(_fmt(f.get(t), 4) for t in TERMINAL) + " |"
        )
    return lines


def known(o: dict) -> list[str]:
    lines = ["", "## Known genetics (pancreas, directed chain, terminal Alpha / Beta / Delta / Epsilon)", ""]
    lines += ["Knockout summary (posterior transition matrix; null: expression-matched genes, targets and "
              "correlates excluded):", "", "| gene | effect | frac. changed | p | q | null pool | n terminated |",
              "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in o["knockout_summary"]:
        lines.append(
            f"| {r['gene']} | {_fmt(r['effect'])} | {_fmt(r['frac_changed'])} | {_fmt(r['pval'])} | "
            f"{_fmt(r['qval'])} | {r.get('null_pool', '')} | {r['n_terminated']} |"
        )
    lines += ["", "Base fates (all cells, shares of the terminal phenotypes): "
              + ", ".join(f"{k} {_fmt(v)}" for k, v in o["fate_base_all"].items()), "",
              "Change of fate (source = all cells, knockout − base):", "",
              "| gene | expected | " + " | ".join(TERMINAL) + " |",
              "| --- | --- |" + " --- |" * len(TERMINAL)]  # fmt: skip
    for g, row in o["fate_all"].items():
        lines.append(f"| {g} | {EXPECT.get(g, '')} | " + " | ".join(_fmt(row.get(t), 4) for t in TERMINAL) + " |")
    lines += ["", "Change of fate from the progenitors:", "", "| gene | source | " + " | ".join(TERMINAL) + " |",
              "| --- | --- |" + " --- |" * len(TERMINAL)]  # fmt: skip
    for r in o["fate_from_progenitors"]:
        lines.append(f"| {r['gene']} | {r['source']} | " + " | ".join(_fmt(r.get(t), 4) for t in TERMINAL) + " |")
    lines += ["", "Directed phenotype chain and net flux along the lineage:", "",
              "| gene | transition | P base | P ko | net flux base | net flux ko |",
              "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in o["directed_flux"]:
        lines.append(
            f"| {r['gene']} | {r['transition']} | {_fmt(r['p_base'])} | {_fmt(r['p_ko'])} | "
            f"{_fmt(r['flux_base'], 1)} | {_fmt(r['flux_ko'], 1)} |"
        )
    lines += ["", "Posterior transition Ngn3 high EP → Pre-endocrine:", "", "| gene | P base | P ko | delta |",
              "| --- | --- | --- | --- |"]  # fmt: skip
    for r in o["posterior_ep_to_pre"]:
        lines.append(f"| {r['gene']} | {_fmt(r['p_base'])} | {_fmt(r['p_ko'])} | {_fmt(r['delta'], 4)} |")
    lines += ["", f"Terminated transitions (floor 0.02, fraction 0.5): {len(o['terminated'])}"]
    for r in o["terminated"]:
        lines.append(f"- {r['gene']}: {r['source']} → {r['target']} ({_fmt(r['p_base'])} → {_fmt(r['p_ko'])})")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
