"""Issue 18 item 7, beside it: CellOracle's own in-silico knockout simulation on the same pancreas data.

CellOracle (Kamimoto et al., Nature 614:742, 2023) is run with its standard tutorial pipeline and
scored against the published knockout phenotypes of ``knockout_genetics.py`` (``EXPECTED``, with
citations), with the same sources (Ngn3 high EP + Pre-endocrine, weighted by cell counts) and
terminals (Alpha, Beta, Delta, Epsilon) as our benchmark.

CellOracle needs its own environment (it pins numpy 1.26 and pandas ≤ 1.5.3; never the package's
``.venv``). ``celloracle-lite`` 0.22 on PyPI is only the motif/base-GRN part (no ``Oracle``, no
simulation), so the full ``celloracle`` 0.20.0 is installed without its motif dependencies
(gimmemotifs, pybedtools are stubbed at import: the motif scan is not used, the base GRN is built
from local files)::

    python3.11 -m venv /tmp/co_full
    /tmp/co_full/bin/pip install "numpy==1.26.4" scipy cython "numba>=0.50.1" "matplotlib<3.7" seaborn \
        scikit-learn "h5py>=3.1" "pandas<=1.5.3,>=1.0.3" umap-learn pyarrow tqdm igraph "anndata==0.10.8" \
        "scanpy<1.11" joblib loompy click wheel setuptools genomepy goatools louvain
    /tmp/co_full/bin/pip install --no-build-isolation velocyto==0.17.17
    /tmp/co_full/bin/pip install --no-deps celloracle==0.20.0

Pipeline (seed 0 for UMAP / random parts; CellOracle's own fixed seeds otherwise):
total-count normalisation, log1p, scale, PCA, kNN graph, UMAP (no ``X_umap`` in the file), diffusion
map and DPT pseudotime rooted in Ductal; ``Oracle.import_anndata_as_raw_count`` (depth-normalised
counts, as the tutorial), ``import_TF_data`` (base GRN, below), ``perform_PCA``, ``knn_imputation``,
``get_links(cluster_name_for_GRN_unit="clusters", alpha=10)``, ``filter_links(p=0.001,
weight="coef_abs", threshold_number=2000)``, ``fit_GRN_for_simulation(alpha=10,
use_cluster_specific_TFdict=True)``; per knockout ``simulate_shift({gene: 0.0}, n_propagation=3)``,
``estimate_transition_prob(n_neighbors=200, knn_random=True, sampled_fraction=1)``,
``calculate_embedding_shift(sigma_corr=0.05)``, and the perturbation score against the DPT gradient
(``Gradient_calculator`` → ``Oracle_development_module``).

Base GRN: ``dorothea`` = the DoRothEA mouse regulons (all confidence levels A–E, restricted to the
data's genes); ``tflist`` = every mouse TF of the SCENIC list (the package's own TF prior) → every gene.

Scores. (a) CellOracle's perturbation score (PS, inner product of the simulated flow and the
pseudotime gradient on its grid), read at each cell's nearest grid point and averaged per source
cluster (negative = pushed back). (b) Fate deltas: ``oracle.transition_prob`` (cells × cells, a
softmax with temperature ``sigma_corr`` of the correlation between the cell's simulated shift and
its displacement to each of its 200 UMAP neighbours) against the same call with a zero shift
(correlations NaN → 1 by CellOracle, i.e. a uniform walk on the undirected-by-construction kNN
graph); cells of Alpha/Beta/Delta/Epsilon absorbing, absorption ``(I − Q)⁻¹R``, averaged over the
source cells; "not reached" within the horizon of the unperturbed chain (≥ 90 % reached, as our
``choose_horizon``); flux = net flux Ngn3 high EP → Pre-endocrine of the chain coarse-grained on the
labels (sign scored on its absolute change, since the base flux of an undirected walk is ~0).

    /tmp/co_full/bin/python benchmarks/celloracle_compare.py run --base-grn dorothea
    /tmp/co_full/bin/python benchmarks/celloracle_compare.py run --base-grn tflist
    /tmp/co_full/bin/python benchmarks/celloracle_compare.py report
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from knockout_genetics import EXPECTED, FLUX, SETUP  # noqa: E402  (stdlib + numpy only at import)

WORK = HERE / "_work" / "celloracle"
RESULTS = HERE / "results"
SHARED = Path(os.environ.get("KDCPT_SHARED_DATA", "/work/shared/data"))
DATA = SHARED / "pancreas_endocrinogenesis" / "pancreas_bastidas_ponce2019_3696x2000.h5ad"
DOROTHEA = SHARED / "tf_target_prior_dorothea" / "dorothea_mm.tsv.gz"
TFLIST = SHARED / "tf_lists" / "mm_mgi_tfs.txt"
TABLE = EXPECTED["pancreas"]
TERMINAL = SETUP["pancreas"]["terminal"]
SOURCES = SETUP["pancreas"]["sources"]
LABELS = "clusters"
ROOT = "Ductal"
SEED = 0

warnings.filterwarnings("ignore")


def _stub_motif_deps() -> None:
    """celloracle imports gimmemotifs/pybedtools at import time for its motif scan, unused here."""
    import importlib.util

    names = ["gimmemotifs", "gimmemotifs.scanner", "gimmemotifs.fasta", "gimmemotifs.config",
             "gimmemotifs.motif", "gimmemotifs.utils", "pybedtools"]
    missing = {r for r in ("gimmemotifs", "pybedtools") if importlib.util.find_spec(r) is None}
    for name in names:
        if name.split(".")[0] not in missing or name in sys.modules:
            continue
        m = types.ModuleType(name)
        m.__version__ = "0.0-stub"
        m.__getattr__ = lambda attr, _n=name: type(attr, (), {})  # noqa: B023
        m.DIRECT_NAME, m.INDIRECT_NAME = "direct", "indirect"
        sys.modules[name] = m


# ----------------------------------------------------------------------------------------------- run
def prepare(adata):
    """Tutorial preprocessing: depth normalisation, log, scale, PCA, kNN, UMAP, diffmap, DPT from Ductal."""
    import scanpy as sc

    a = adata.copy()
    sc.pp.normalize_total(a)
    norm = a.X.copy()
    sc.pp.log1p(a)
    sc.pp.scale(a, max_value=10)
    sc.tl.pca(a, n_comps=50, random_state=SEED)
    sc.pp.neighbors(a, n_neighbors=15, n_pcs=30, random_state=SEED)
    sc.tl.umap(a, random_state=SEED)
    sc.tl.diffmap(a, random_state=SEED)
    dc1 = a.obsm["X_diffmap"][:, 1]
    root = (a.obs[LABELS] == ROOT).to_numpy()
    endo = a.obs[LABELS].isin(TERMINAL).to_numpy()
    # root: the Ductal cell at the end of DC1 away from the endocrine cells
    sgn = 1.0 if dc1[endo].mean() > dc1[root].mean() else -1.0
    a.uns["iroot"] = int(np.flatnonzero(root)[np.argmin(sgn * dc1[root])])
    sc.tl.dpt(a)
    out = adata.copy()
    out.X = norm
    out.obsm["X_umap"] = a.obsm["X_umap"]
    out.obs["Pseudotime"] = a.obs["dpt_pseudotime"].to_numpy()
    return out, int(a.uns["iroot"])


def base_grn(kind: str, genes: list[str]) -> dict[str, list[str]]:
    import pandas as pd

    gset = set(genes)
    if kind == "dorothea":
        d = pd.read_csv(DOROTHEA, sep="\t")
        d = d[d.tf.isin(gset) & d.target.isin(gset) & (d.tf != d.target)]
        return {t: sorted(g.tf.unique()) for t, g in d.groupby("target")}
    if kind == "tflist":
        up = {g.strip().upper() for g in TFLIST.read_text().splitlines() if g.strip()}
        tfs = [g for g in genes if g.upper() in up]
        return {t: [f for f in tfs if f != t] for t in genes}
    raise ValueError(kind)


def matched_tfs(X, names, src, table, pool, n, rng) -> list[str]:
    """As knockout_genetics.matched_genes: TFs of ``pool`` closest to each table gene in (mean log
    expression, fraction expressing) over the source cells, ``n`` per gene from the ``3 n`` closest."""
    Xs = X[src]
    lib = Xs.sum(1, keepdims=True)
    L = np.log1p(Xs / np.maximum(lib, 1) * 1e4)
    feat = np.c_[L.mean(0), (Xs > 0).mean(0)]
    feat = (feat - feat.mean(0)) / (feat.std(0) + 1e-12)
    cand = np.flatnonzero(np.isin(names, pool) & ~np.isin(names, list(table)))
    out: list[str] = []
    for g in table:
        i = int(np.flatnonzero(names == g)[0])
        d = ((feat[cand] - feat[i]) ** 2).sum(1)
        near = [c for c in cand[np.argsort(d)] if names[c] not in out][: 3 * n]
        out += [names[c] for c in rng.choice(near, min(n, len(near)), replace=False)]
    return out


def _sparse(T):
    """CellOracle's transition_prob is dense but non-zero only on each cell's sampled neighbours."""
    from scipy import sparse

    return sparse.csr_matrix(T)


class Chain:
    """Fates, "not reached" within a horizon and coarse-grained net flux of a cells × cells chain."""

    def __init__(self, labels: np.ndarray, T_base: np.ndarray):
        self.labels = labels
        self.absorbing = np.isin(labels, TERMINAL)
        self.free = ~self.absorbing
        self.group = np.array([TERMINAL.index(x) if x in TERMINAL else -1 for x in labels])
        self.src = np.isin(labels, SOURCES)
        self.R0 = np.zeros((len(labels), len(TERMINAL)))
        self.R0[np.flatnonzero(self.absorbing), self.group[self.absorbing]] = 1.0
        self.horizon = self._horizon(T_base)
        self.base = self.stats(T_base)

    def _horizon(self, T, reached=0.9, max_steps=5000) -> int:
        r = self.absorbing.astype(float)
        Tf = _sparse(T[self.free])
        for step in range(1, max_steps + 1):
            r[self.free] = Tf @ r
            if r[self.free].mean() >= reached:
                return step
        return max_steps

    def stats(self, T: np.ndarray) -> dict:
        f = self.free
        Q, R = T[np.ix_(f, f)], T[np.ix_(f, self.absorbing)] @ self.R0[self.absorbing]
        A = self.R0.copy()
        A[f] = np.linalg.solve(np.eye(int(f.sum())) - Q, R)
        h = self.absorbing.astype(float)  # mass that has reached any terminal within the horizon
        Tf = _sparse(T[f])
        for _ in range(self.horizon):
            h[f] = Tf @ h
        out = {t: float(A[self.src, k].mean()) for k, t in enumerate(TERMINAL)}  # = count-weighted mean of sources
        out["not_reached"] = float(np.clip(1.0 - h[self.src], 0, 1).mean())
        a, b = (self.labels == FLUX[0]), (self.labels == FLUX[1])
        pab, pba = T[np.ix_(a, b)].sum(1).mean(), T[np.ix_(b, a)].sum(1).mean()
        out["flux"] = float(a.sum() * pab - b.sum() * pba)
        return out


def run(kind: str, n_genes: int | None, n_null: int) -> dict:
    _stub_motif_deps()
    import anndata as ad
    import celloracle as co
    from celloracle.applications import Gradient_calculator, Oracle_development_module
    from scipy import sparse

    t = {}
    rng = np.random.default_rng(SEED)
    np.random.seed(SEED)
    t0 = time.time()
    raw = ad.read_h5ad(DATA)
    if "counts" in raw.layers:
        raw.X = raw.layers["counts"].copy()
    raw.X = sparse.csr_matrix(raw.X, dtype=np.float32)
    table = list(TABLE)
    note_genes = "all 2000 genes of the file"
    if n_genes is not None and n_genes < raw.n_vars:
        import scanpy as sc

        tmp = raw.copy()
        sc.pp.normalize_total(tmp)
        sc.pp.log1p(tmp)
        sc.pp.highly_variable_genes(tmp, n_top_genes=n_genes)
        keep = tmp.var["highly_variable"].to_numpy() | raw.var_names.isin(table)
        raw = raw[:, keep].copy()
        note_genes = f"the {n_genes} most variable genes plus the knocked-out TFs ({raw.n_vars})"
    adata, iroot = prepare(raw)
    t["preprocess_umap_dpt_s"] = round(time.time() - t0, 1)

    t0 = time.time()
    names = np.asarray(adata.var_names.astype(str))
    TFdict = base_grn(kind, list(names))
    oracle = co.Oracle()
    oracle.import_anndata_as_raw_count(adata=adata, cluster_column_name=LABELS, embedding_name="X_umap")
    oracle.import_TF_data(TFdict=TFdict)
    oracle.perform_PCA()
    evr = np.cumsum(oracle.pca.explained_variance_ratio_)
    n_comps = int(min(np.where(np.diff(np.diff(evr) > 0.002))[0][0], 50))
    k = int(0.025 * oracle.adata.n_obs)
    oracle.knn_imputation(n_pca_dims=n_comps, k=k, balanced=True, b_sight=k * 8, b_maxl=k * 4, n_jobs=1)
    t["oracle_import_pca_impute_s"] = round(time.time() - t0, 1)

    t0 = time.time()
    links = oracle.get_links(cluster_name_for_GRN_unit=LABELS, alpha=10, verbose_level=0, n_jobs=1)
    t["get_links_s"] = round(time.time() - t0, 1)
    t0 = time.time()
    links.filter_links(p=0.001, weight="coef_abs", threshold_number=2000)
    oracle.get_cluster_specific_TFdict_from_Links(links_object=links)
    oracle.fit_GRN_for_simulation(alpha=10, use_cluster_specific_TFdict=True, verbose_level=0)
    t["filter_fit_grn_s"] = round(time.time() - t0, 1)
    n_links = {c: int(len(df)) for c, df in links.filtered_links.items()}
    outdeg = {}
    for c, C in oracle.coef_matrix_per_cluster.items():  # rows: regulators, columns: targets
        for g in C.index:
            outdeg.setdefault(str(g), {})[str(c)] = int((C.loc[g].abs() > 0).sum())
    regulators = sorted(g for g, d in outdeg.items() if sum(d.values()) > 0)

    # developmental reference: the DPT gradient on CellOracle's grid
    t0 = time.time()
    grad = Gradient_calculator(oracle_object=oracle, pseudotime_key="Pseudotime")
    grad.calculate_p_mass(smooth=0.8, n_grid=40, n_neighbors=200, n_jobs=1)
    min_mass = float(np.quantile(grad.total_p_mass[grad.total_p_mass > 0], 0.2))
    grad.calculate_mass_filter(min_mass=min_mass, plot=False)
    grad.transfer_data_into_grid(args={"method": "polynomial", "n_poly": 3}, plot=False)
    grad.calculate_gradient()
    grid = grad.gridpoints_coordinates
    emb = oracle.adata.obsm["X_umap"]
    nearest = ((emb[:, None, :] - grid[None, :, :]) ** 2).sum(-1).argmin(1)  # each cell's grid point
    t["gradient_s"] = round(time.time() - t0, 1)
    labels = oracle.adata.obs[LABELS].astype(str).to_numpy()

    # unperturbed chain: the same call with a zero shift
    t0 = time.time()
    oracle.adata.layers["delta_X"] = np.zeros(oracle.adata.shape)
    oracle.estimate_transition_prob(n_neighbors=200, knn_random=True, sampled_fraction=1, n_jobs=1, threads=1)
    oracle.calculate_embedding_shift(sigma_corr=0.05)
    T0 = oracle.transition_prob.copy()
    knn = oracle.embedding_knn.toarray()
    chain = Chain(labels, T0)
    t["base_chain_s"] = round(time.time() - t0, 1)
    uniform = bool(np.allclose(T0, knn / knn.sum(1, keepdims=True)))

    src_tf = np.isin(labels, SOURCES)
    Xraw = raw.X.toarray() if sparse.issparse(raw.X) else np.asarray(raw.X)
    pool = [g for g in regulators if g not in table]
    null = matched_tfs(Xraw, names, src_tf, table, pool, max(1, n_null // len(table)), rng) if n_null else []

    per_gene, t_ko = {}, []
    for gene in table + null:
        t1 = time.time()
        d = {"null": gene in null, "out_degree": outdeg.get(gene, {}), "in_data": bool(gene in names)}
        try:
            oracle.simulate_shift(perturb_condition={gene: 0.0}, n_propagation=3, ignore_warning=True)
        except ValueError as err:  # CellOracle refuses genes that are no regulator of the base GRN
            d["error"] = str(err)
            per_gene[gene] = d
            print(f"{gene}: not simulable: {err}", flush=True)
            continue
        dX = oracle.adata.layers["delta_X"]
        d["shift_norm_mean"] = float(np.linalg.norm(dX, axis=1).mean())
        d["n_genes_shifted"] = int((np.abs(dX).max(0) > 1e-8).sum())
        oracle.estimate_transition_prob(n_neighbors=200, knn_random=True, sampled_fraction=1, n_jobs=1, threads=1)
        oracle.calculate_embedding_shift(sigma_corr=0.05)
        dev = Oracle_development_module()
        dev.load_differentiation_reference_data(gradient_object=grad)
        dev.load_perturb_simulation_data(oracle_object=oracle)
        dev.calculate_inner_product()
        dev.calculate_digitized_ip(n_bins=10)
        ok = ~dev.mass_filter_simulation
        ip, ipr = dev.inner_product, dev.inner_product_random
        d["ps_sum_negative"] = float(-ip[ok & (ip < 0)].sum())
        d["ps_sum_positive"] = float(ip[ok & (ip > 0)].sum())
        d["ps_sum_negative_random"] = float(-ipr[ok & (ipr < 0)].sum())
        cell_ip = np.where(ok[nearest], ip[nearest], np.nan)
        d["ps_per_cluster"] = {c: float(np.nanmean(cell_ip[labels == c])) for c in np.unique(labels)}
        w = {s: int((labels == s).sum()) for s in SOURCES}
        d["ps_sources"] = float(sum(w[s] * d["ps_per_cluster"][s] for s in SOURCES) / sum(w.values()))
        T1 = oracle.transition_prob
        d["chain_tv_sources"] = float(0.5 * np.abs(T1 - T0)[src_tf].sum(1).mean())
        ko = chain.stats(T1)
        for key, v in ko.items():
            d[key] = v - chain.base[key]
            d[f"{key}_ko"] = v
        d["flux_rel"] = ko["flux"] / chain.base["flux"] - 1.0 if abs(chain.base["flux"]) > 1e-12 else None
        d["time_s"] = round(time.time() - t1, 1)
        t_ko.append(d["time_s"])
        per_gene[gene] = d
        print(f"{gene}: " + ", ".join(f"{s}={d[s]:+.4f}" for s in [*TERMINAL, "not_reached", "flux", "ps_sources"]),
              flush=True)
    t["knockouts_s"] = round(sum(t_ko), 1)
    t["per_knockout_s_mean"] = round(float(np.mean(t_ko)), 1)
    import celloracle as co2

    return {
        "base_grn": kind,
        "genes": note_genes,
        "n_cells": int(oracle.adata.n_obs),
        "n_genes": int(oracle.adata.n_vars),
        "n_targets_in_base_grn": len(TFdict),
        "n_regulators_in_base_grn": len({f for v in TFdict.values() for f in v}),
        "n_regulators_fitted": len(regulators),
        "filtered_links_per_cluster": n_links,
        "n_pca_dims_imputation": n_comps,
        "k_imputation": k,
        "dpt_root_cell": iroot,
        "min_mass": min_mass,
        "fate_horizon": chain.horizon,
        "base_is_uniform_knn_walk": uniform,
        "base": chain.base,
        "null_tfs": null,
        "per_gene": per_gene,
        "timings_s": t,
        "seed": SEED,
        "celloracle": co2.__version__,
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "threads": {k_: os.environ.get(k_) for k_ in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
    }


# -------------------------------------------------------------------------------------------- report
def _value(d: dict, stat: str):
    return max(d["Beta"], d["Delta"]) if stat == "Beta|Delta" else d[stat]


def summarise(r: dict) -> dict:
    rows = []
    nulls = [g for g, d in r["per_gene"].items() if d["null"]]
    nulls = [g for g in nulls if "error" not in r["per_gene"][g]]
    for gene, spec in TABLE.items():
        d = r["per_gene"][gene]
        for stat, sign in spec["checks"]:
            if "error" in d:
                rows.append({"gene": gene, "statistic": stat, "expected_sign": sign, "value": None,
                             "sign_ok": False, "null_tf_p": None, "null_tf_n": 0, "beyond_null": False,
                             "ps_sources": None, "note": "not simulable: " + d["error"]})
                continue
            v = _value(d, stat)
            nv = np.array([abs(_value(r["per_gene"][g], stat)) for g in nulls])
            p = float((1 + (nv >= abs(v)).sum()) / (1 + len(nv))) if len(nv) else None
            ok = bool(np.sign(v) == sign and abs(v) > 1e-9)
            rows.append({"gene": gene, "statistic": stat, "expected_sign": sign, "value": v, "sign_ok": ok,
                         "null_tf_p": p, "null_tf_n": len(nv),
                         "beyond_null": bool(ok and p is not None and p <= 0.05),
                         "ps_sources": d["ps_sources"]})
    n = len(rows)
    return {"rows": rows, "n_checks": n, "n_sign_ok": sum(x["sign_ok"] for x in rows),
            "n_beyond_null": sum(x["beyond_null"] for x in rows)}


def ours() -> dict:
    o = json.loads((RESULTS / "knockout_genetics.json").read_text())
    s = o["summary"]["pancreas"]["grn"]
    rows = {(x["gene"], x["statistic"]): x for x in s["rows"]}
    return {"rows": rows, "share_sign": s["share_sign"], "date": o.get("date")}


def report(command: str) -> int:
    runs = {}
    for p in sorted(WORK.glob("run_*.json")):
        r = json.loads(p.read_text())
        runs[r["base_grn"]] = r
    if not runs:
        print("no runs in", WORK, file=sys.stderr)
        return 1
    summ = {k: summarise(r) for k, r in runs.items()}
    kd = ours()
    res = {"command": command, "date": dt.datetime.now().isoformat(timespec="seconds"), "runs": runs,
           "summary": summ,
           "kdcpt_grn": {"share_sign": kd["share_sign"], "source": "benchmarks/results/knockout_genetics.json",
                         "date": kd["date"]}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "celloracle_compare.json").write_text(json.dumps(res, indent=2, default=_default))
    (RESULTS / "celloracle_compare.md").write_text(markdown(res, kd))
    print("wrote", RESULTS / "celloracle_compare.json", "and .md")
    return 0


def _default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _f(v, nd=3):
    return "—" if v is None else f"{v:+.{nd}f}"


def markdown(res: dict, kd: dict) -> str:
    order = [k for k in ("dorothea", "tflist") if k in res["runs"]]
    S = {"Beta|Delta": "Beta or Delta"}
    L = ["# CellOracle's own knockout simulation beside KD-CPT (issue 18, item 7)", ""]
    L += [f"Commands: {res['command']}  ", f"Report date: {res['date']}", ""]
    for k in order:
        r = res["runs"][k]
        L.append(
            f"- **base GRN `{k}`**: CellOracle {r['celloracle']}, {r['n_cells']} cells × {r['n_genes']} genes "
            f"({r['genes']}); base GRN {r['n_regulators_in_base_grn']} regulators → {r['n_targets_in_base_grn']} "
            f"targets, {r['n_regulators_fitted']} regulators with a fitted edge after `filter_links`; filtered links "
            f"per cluster {min(r['filtered_links_per_cluster'].values())}–{max(r['filtered_links_per_cluster'].values())}; "
            f"imputation k={r['k_imputation']}, {r['n_pca_dims_imputation']} PCs; DPT root cell {r['dpt_root_cell']} "
            f"(Ductal); grid min_mass {r['min_mass']:.3g}; fate horizon {r['fate_horizon']} steps; seed {r['seed']}; "
            f"null TFs {r['null_tfs']}; run date {r['date']}."
        )
        L.append(f"  Timings (s): {r['timings_s']}")
    L.append("")
    hdr = "| gene | published phenotype | statistic | expected | "
    hdr += " | ".join(f"CellOracle `{k}` value | sign | TF null p (n)" for k in order)
    hdr += " | KD-CPT grn Δ mean ± sd | KD-CPT sign |"
    L += ["## Per-check table (pancreas; sources Ngn3 high EP + Pre-endocrine)", "", hdr,
          "|" + "---|" * (hdr.count("|") - 1)]
    srows = {k: {(x["gene"], x["statistic"]): x for x in res["summary"][k]["rows"]} for k in order}
    n_ours = 0
    for gene, spec in TABLE.items():
        for stat, sign in spec["checks"]:
            cells = [gene, spec["phenotype"], S.get(stat, stat), "−" if sign < 0 else "+"]
            for k in order:
                x = srows[k][(gene, stat)]
                p = "—" if x["null_tf_p"] is None else f"{x['null_tf_p']:.3g} ({x['null_tf_n']})"
                cells += [_f(x["value"], 4) if x["value"] is not None else "not simulable",
                          "✓" if x["sign_ok"] else "✗", p]
            o = kd["rows"].get((gene, stat))
            if o is not None:
                cells += [f"{o['mean']:+.3f} ± {o['sd']:.3f}", "✓" if o["sign_ok"] else "✗"]
                n_ours += bool(o["sign_ok"])
            else:
                cells += ["—", "—"]
            L.append("| " + " | ".join(cells) + " |")
    L.append("")
    n = res["summary"][order[0]]["n_checks"]
    for k in order:
        s = res["summary"][k]
        L.append(f"- CellOracle `{k}`: published sign in **{s['n_sign_ok']}/{n}** checks, sign and beyond the "
                 f"expression-matched TF null (p ≤ 0.05) in {s['n_beyond_null']}/{n}.")
    L.append(f"- KD-CPT `simulate='grn'` (3 seeds, `knockout_genetics.md`): published sign in **{n_ours}/{n}** "
             f"(sign in the mean over seeds).")
    L.append(f"- KD-CPT numbers copied from `benchmarks/results/knockout_genetics.json` as it stood at this report "
             f"(its report date {kd['date']}); the per-check sign count is the same (7/11) in the committed version "
             f"of that file.")
    L.append("- Reading: CellOracle's fate deltas are large for *every* knocked-out TF, the random expression-matched "
             "TFs included (most lower Alpha and Beta and raise 'not reached'): none of its right signs beats the TF "
             "null (all p ≥ 0.14 with n = 6). Its 8/11 comes mostly from Beta falling and 'not reached' rising for "
             "any knockout, so it is no better evidence than KD-CPT's 7/11 (whose TF null is also not beaten on "
             "pancreas). Both miss Neurog3's flux and Pax4's Delta − / Alpha +; CellOracle gets Nkx2-2 Alpha −, "
             "KD-CPT does not.")
    L.append("")
    L += ["## CellOracle perturbation score and all fate deltas per gene", ""]
    for k in order:
        r = res["runs"][k]
        cols = ["ps_sources", "PS Ngn3 low EP", "PS Ngn3 high EP", "PS Pre-endocrine", "ps_sum_negative",
                "ps_sum_negative_random", *TERMINAL, "not_reached", "flux", "flux_rel", "chain_tv_sources",
                "shift_norm_mean", "n_genes_shifted", "out-degree (sum over clusters)"]
        L += [f"### base GRN `{k}`", "", "| gene | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
        for g, d in r["per_gene"].items():
            if "error" in d:
                L.append(f"| {g} | not simulable by CellOracle: {d['error']} |" + " |" * (len(cols) - 1))
                continue
            pc = d["ps_per_cluster"]
            vals = [_f(d["ps_sources"], 4), _f(pc.get("Ngn3 low EP"), 4), _f(pc.get("Ngn3 high EP"), 4),
                    _f(pc.get("Pre-endocrine"), 4), f"{d['ps_sum_negative']:.3g}", f"{d['ps_sum_negative_random']:.3g}"]
            vals += [_f(d[t], 4) for t in [*TERMINAL, "not_reached"]]
            vals += [_f(d["flux"], 2), _f(d["flux_rel"], 3), f"{d['chain_tv_sources']:.3g}",
                     f"{d['shift_norm_mean']:.3g}", str(d["n_genes_shifted"]), str(sum(d["out_degree"].values()))]
            L.append(f"| {g}{' (null TF)' if d['null'] else ''} | " + " | ".join(vals) + " |")
        b = r["base"]
        L += ["", "Base (zero shift) values: " + ", ".join(f"{kk} {v:.4g}" for kk, v in b.items())
              + f"; base chain identical to the uniform walk on the 200-NN UMAP graph: {r['base_is_uniform_knn_walk']}", ""]
    if "dorothea" not in res["runs"]:
        L += ["## Base GRN: why the table uses the TF list, not DoRothEA", "",
              "The DoRothEA mouse regulons (`/work/shared/data/tf_target_prior_dorothea/dorothea_mm.tsv.gz`, all "
              "confidence levels A–E) restricted to the file's 2000 genes keep 2,530 edges from 81 TFs. Neurog3 has "
              "no regulon in DoRothEA, Pax6 one edge (level A), Arx 50, Pax4 16, Nkx2-2 30, Nkx6-1 82 (all level E). "
              "A full DoRothEA run (2000 genes) got through `get_links` (~6 min) and the base chain, then CellOracle "
              "refused the first knockout: `ValueError: Gene Neurog3 is not included in the base GRN; ... Cannot "
              "perform simulation.` With the session's time box there was no time to rerun it without Neurog3, so "
              "the table uses the fallback the brief names: every mouse TF of the SCENIC list (the same 1,721-gene list "
              "as KD-CPT's TF prior) → every gene, which is also the closest to KD-CPT's own GRN regulators. For the time box the genes were reduced to the "
              "1100 most variable (normalised log, scanpy `highly_variable_genes`) plus the table's TFs: `get_links` "
              "fits every target gene per cluster (bagging ridge, 20 bags) and took 851 s at 1100 genes on one "
              "thread; CellOracle's own gene check needs ≥ 1000 genes after its CV filter, so 1000 failed.", ""]
    L += ["## What is compared, and how the definitions differ", "",
          "- **CellOracle's transition matrix** (`oracle.transition_prob`) is a softmax (temperature `sigma_corr` = 0.05) "
          "over each cell's 200 UMAP neighbours of the Pearson correlation between the cell's *simulated knockout shift* "
          "(`delta_X`, gene space, imputed expression) and its displacement to the neighbour. It contains no development: "
          "with a zero shift it is the uniform random walk on the kNN graph (correlations NaN → 1 by CellOracle), an "
          "undirected-by-construction diffusion. The perturbed chain is that diffusion tilted towards where the knockout "
          "shift points. Fates here are therefore 'where a diffusing cell ends up, with and without the knockout tilt' — "
          "the base fates are those of a diffusion from the sources over the UMAP, not of development.",
          "- **KD-CPT's** chain (`compute_transitions(direction='velocity')`) is directed by RNA velocity before any "
          "knockout; the knockout changes the chain through the GRN-propagated shift *and* the classifier's phenotype "
          "memberships. Its 'not reached' is within the horizon of its own chain (124 steps); here within the horizon of "
          "the zero-shift diffusion (see above).",
          "- **Flux**: KD-CPT reports the relative change of the net flux Ngn3 high EP → Pre-endocrine; an undirected "
          "base walk has a net flux near 0 (any sign), so the relative change is ill-defined and the sign here is scored "
          "on the absolute change of net flux (`flux` column; `flux_rel` given for reference).",
          "- **Perturbation score** (CellOracle's PS): the inner product of the simulated flow and the DPT-gradient on "
          "CellOracle's 40 × 40 grid, read at each cell's nearest retained grid point; negative = the knockout pushes "
          "cells against pseudotime (CellOracle's reading of a block). It is not scored against a sign in the table "
          "because the published phenotypes are fates, but is shown (`ps_sources`) per gene; KD-CPT's `score` is a "
          "different quantity (the chain's perturbation score against its own null).",
          "- **Null**: CellOracle's TF null here is one draw of expression-matched TFs among the fitted regulators "
          "(seed 0), one run; KD-CPT's pools 36 over 3 seeds. CellOracle is deterministic given the seed (UMAP, DPT "
          "root and neighbour sampling fixed), so there are no seed error bars.",
          ""]
    return "\n".join(L)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--base-grn", choices=["dorothea", "tflist"], default="dorothea")
    r.add_argument("--genes", type=int, default=None, help="reduce to N most variable genes + the table's TFs")
    r.add_argument("--n-null", type=int, default=12)
    rp = sub.add_parser("report")
    rp.add_argument("--command", default="see the module docstring")
    a = ap.parse_args(argv)
    if a.cmd == "run":
        WORK.mkdir(parents=True, exist_ok=True)
        res = run(a.base_grn, a.genes, a.n_null)
        (WORK / f"run_{a.base_grn}.json").write_text(json.dumps(res, indent=2, default=_default))
        print("wrote", WORK / f"run_{a.base_grn}.json")
        return 0
    return report(a.command)


if __name__ == "__main__":
    sys.exit(main())
