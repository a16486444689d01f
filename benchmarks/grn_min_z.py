"""The GRN's pruning threshold ``min_z`` against planted and known regulation (issue 18).

``fit_grn`` keeps a ridge coefficient when ``|β| / se(β) ≥ min_z`` (default 3), ``se`` computed as
if the cells were independent. They are not: the expression is averaged over each cell's ~30
kNN neighbours first, so ``z`` is inflated, and spurious links survive. Two checks where the
answer is known, for several ``min_z``:

1. ``kdcpt.datasets.synthetic`` (900 cells, lineage P0 → P1 → P2 → P3, ``Reg_Pi`` drives ``Pi``
   and its targets; ten ``TF_decoy_*`` genes flagged as TFs with no targets): GRN links of each
   regulator, mean shift size, chain change, and the change of the net flux into each planted
   phenotype when its regulator (or a decoy) is knocked out (``simulate="grn"``).
2. scanpy's ``krumsiek11`` (known Boolean wiring of 11 TFs): how many of the 26 known edges the
   progenitors' fitted network keeps with the known sign, and how many links it has outside the
   wiring (84 pairs).

Each with the GRN's default fit (the developmental stage partialled out, ``stage="auto"``, the
default since 2026-12-07) and without it (``stage=None``, the fit of the earlier runs).

    python benchmarks/grn_min_z.py
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

MIN_Z = (0.0, 3.0, 5.0, 8.0, 16.0)
#: fit_grn(stage=...): the stage partialled out (the default since 2026-12-07) and not
STAGES = ("auto", None)
KRUMSIEK_EDGES = [  # regulator -> target, sign (scanpy's krumsiek11 rules, self-activation left out)
    ("Gata1", "Gata2", -1), ("Fog1", "Gata2", -1), ("Pu.1", "Gata2", -1),
    ("Gata2", "Gata1", 1), ("Fli1", "Gata1", 1), ("Pu.1", "Gata1", -1),
    ("Gata1", "Fog1", 1), ("Gata1", "EKLF", 1), ("Fli1", "EKLF", -1), ("Gata1", "Fli1", 1), ("EKLF", "Fli1", -1),
    ("Gata1", "SCL", 1), ("Pu.1", "SCL", -1), ("Gata1", "Cebpa", -1), ("Fog1", "Cebpa", -1), ("SCL", "Cebpa", -1),
    ("Cebpa", "Pu.1", 1), ("Gata1", "Pu.1", -1), ("Gata2", "Pu.1", -1), ("Pu.1", "cJun", 1), ("Gfi1", "cJun", -1),
    ("Pu.1", "EgrNab", 1), ("cJun", "EgrNab", 1), ("Gfi1", "EgrNab", -1), ("Cebpa", "Gfi1", 1), ("EgrNab", "Gfi1", -1),
]  # fmt: skip
PLANTED = {"Reg_P1": ("P0", "P1"), "Reg_P2": ("P1", "P2"), "Reg_P3": ("P2", "P3")}


def synthetic_model():
    """The synthetic lineage's trained model with its pseudotime chain, and its AnnData."""
    import scvi

    import scanpy_kdcpt as kdcpt

    scvi.settings.seed = 0
    adata = kdcpt.datasets.synthetic(n_cells=900, seed=1, transition_labels="sampled")
    kdcpt.KDCPT.setup_anndata(adata, labels_key="phenotype", prior_key="is_tf")
    model = kdcpt.KDCPT(adata, n_tokens=64, n_selected=16, d_model=32, n_hidden=64, n_pcs=20)
    model.train(max_epochs=20, enable_progress_bar=False)
    model.compute_transitions(direction="pseudotime", root="P0", inplace=False)
    return model, adata


def krumsiek_model():
    """krumsiek11's trained model (as its tutorial) with its pseudotime chain, and its AnnData."""
    import scvi

    import scanpy_kdcpt as kdcpt

    scvi.settings.seed = 0
    adata = kdcpt.datasets.krumsiek11()
    adata.obs["cell_type"] = adata.obs["cell_type"].cat.reorder_categories(["progenitor", "Ery", "Mk", "Mo", "Neu"])
    kdcpt.KDCPT.setup_anndata(adata, labels_key="cell_type", prior_key="is_tf")
    model = kdcpt.KDCPT(adata, n_selected=6, n_pcs=10)  # as the krumsiek11 tutorial
    model.train(max_epochs=40, enable_progress_bar=False)
    model.compute_transitions(direction="pseudotime", root="progenitor")
    return model, adata


def synthetic() -> list[dict]:
    model, adata = synthetic_model()
    tfs = list(adata.var_names[adata.var["is_tf"].to_numpy()])
    genes = list(model.var_names_)
    rows = []
    for stage, mz in ((st, mz) for st in STAGES for mz in MIN_Z):
        grn = model.fit_grn(min_z=mz, stage=stage, terminal=["P3"])
        res = model.knockout(tfs, terminal=["P3"], inplace=False, progress=False)
        s = res.summary.set_index("gene")
        flux = res.flux.set_index(["gene", "source", "target"])["delta"]
        for g in tfs:
            rows.append({
                "stage": stage, "min_z": mz, "gene": g, "planted": g.startswith("Reg_"),
                "links": int(sum(W.getrow(genes.index(g)).nnz for W in grn.coef)),
                "shift_norm": float(s.loc[g, "shift_norm"]), "chain_tv": float(s.loc[g, "chain_tv"]),
                "flux_into_planted": {f"{a}->{b}": float(flux.loc[(g, a, b)]) for a, b in PLANTED.values()},
            })  # fmt: skip
    return rows


def krumsiek() -> list[dict]:
    model, _ = krumsiek_model()
    rows = []
    for stage, mz in ((st, mz) for st in STAGES for mz in MIN_Z):
        grn = model.fit_grn(min_z=mz, stage=stage, terminal=["Ery", "Mk", "Mo", "Neu"])
        genes = list(grn.genes)
        W = grn.coef[list(model.classes_).index("progenitor")].toarray()
        known, sign = np.zeros_like(W, bool), np.zeros_like(W)
        for r, t, sg in KRUMSIEK_EDGES:
            known[genes.index(r), genes.index(t)], sign[genes.index(r), genes.index(t)] = True, sg
        links = (W != 0) & ~np.eye(len(genes), dtype=bool)
        right = known & (np.sign(W) == sign)
        rows.append({
            "stage": stage, "min_z": mz, "links": int(links.sum()), "known_kept": int((links & known).sum()),
            "known_right_sign": int(right.sum()), "outside_wiring": int((links & ~known).sum()),
            "precision": float(right.sum() / max(links.sum(), 1)),
        })  # fmt: skip
    return rows


def _stage(stage) -> str:
    return "partialled out (default)" if stage == "auto" else "not adjusted"


def markdown(syn: list[dict], kr: list[dict], seconds: float) -> str:
    L = [
        "# The GRN's pruning threshold min_z (issue 18)",
        "",
        "Command: `python benchmarks/grn_min_z.py`  ",
        f"Date: {C.now()}; git {C.git_commit()}; {seconds:.0f} s, 1 torch thread.",
        "",
        (__doc__ or "").split("\n\n")[1],
        "",
        "## Synthetic: planted regulators against decoy TFs (seed 1, one trained model)",
        "",
        "Mean over the 3 planted regulators of P1–P3 and over the 10 decoys. *Own flux*: the change of the net "
        "flux into the regulator's phenotype (P0→P1 for Reg_P1, …; base about 20); *decoys' largest*: the largest "
        "|change| any decoy causes on any of those three transitions.",
        "",
        "| stage | min_z | links, planted | links, decoys | shift, planted | shift, decoys | chain change, planted | "
        "chain change, decoys | own flux change, planted | decoys' largest flux change |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for stage, mz in ((st, mz) for st in STAGES for mz in MIN_Z):
        rows = [r for r in syn if r["min_z"] == mz and r.get("stage", None) == stage]
        pl = [r for r in rows if r["gene"] in PLANTED]
        de = [r for r in rows if not r["planted"]]
        own = np.mean([r["flux_into_planted"]["->".join(PLANTED[r["gene"]])] for r in pl])
        worst = max(abs(v) for r in de for v in r["flux_into_planted"].values())
        L.append(
            f"| {_stage(stage)} | {mz:g} | {np.mean([r['links'] for r in pl]):.0f} "
            f"| {np.mean([r['links'] for r in de]):.0f} "
            f"| {np.mean([r['shift_norm'] for r in pl]):.2f} | {np.mean([r['shift_norm'] for r in de]):.2f} "
            f"| {np.mean([r['chain_tv'] for r in pl]):.3f} | {np.mean([r['chain_tv'] for r in de]):.3f} "
            f"| {own:+.1f} | {worst:.1f} |"
        )
    L += [
        "",
        "## krumsiek11: the progenitors' fitted network against the known wiring",
        "",
        "| stage | min_z | links (of 110) | known edges kept (of 26) | with the known sign | links outside the wiring "
        "(of 84) | precision (right-sign known edges / links) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in kr:
        L.append(
            f"| {_stage(r.get('stage'))} | {r['min_z']:g} | {r['links']} | {r['known_kept']} | {r['known_right_sign']} "
            f"| {r['outside_wiring']} "
            f"| {r['precision']:.2f} |"
        )
    return "\n".join(L) + "\n"


def main() -> None:
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    syn, kr = synthetic(), krumsiek()
    seconds = time.perf_counter() - t0
    out = C.HERE / "results" / "grn_min_z"
    out.with_suffix(".json").write_text(json.dumps({"synthetic": syn, "krumsiek11": kr}, indent=1))
    out.with_suffix(".md").write_text(markdown(syn, kr, seconds))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
