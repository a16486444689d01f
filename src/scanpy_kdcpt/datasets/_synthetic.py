"""Synthetic counts with planted regulators, phenotypes and transitions (known answers)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from .._errors import InvalidInputError


def synthetic(
    n_cells: int = 2000,
    n_genes: int = 200,
    n_phenotypes: int = 4,
    n_targets: int = 6,
    n_decoy_tfs: int = 10,
    transition_frac: float = 0.3,
    regulator_mean: float = 12.0,
    transition_labels: str = "source",
    seed: int = 0,
) -> ad.AnnData:
    """Counts of a linear lineage ``P0 → P1 → … → P{n-1}`` with one planted regulator each.

    Each phenotype ``Pi`` has a regulator gene ``Reg_Pi`` (a transcription factor, highly
    expressed in its phenotype) and ``n_targets`` weakly induced target genes ``Tgt_Pi_j``.
    A fraction ``transition_frac`` of the cells of ``Pi`` are on their way to ``P(i+1)``:
    they express a share ``w ~ U(0.15, 0.45)`` of the next program, mostly through its
    regulator. So the planted transitions are ``Pi → P(i+1)``, carried by ``Reg_P(i+1)``:
    knocking out ``Reg_P(i+1)`` should terminate ``Pi → P(i+1)``.

    With ``transition_labels="source"`` every cell is labelled with the phenotype it leaves,
    so a calibrated classifier gives transitioning cells (almost) no probability of the next
    phenotype and the posterior transition matrix cannot show the planted transitions. With
    ``"sampled"`` a transitioning cell is labelled ``P(i+1)`` with probability ``w`` (the
    annotation of a cell half-way between two states is itself uncertain): then ``p(P(i+1))``
    of such a cell estimates ``w`` and ``P[Pi, P(i+1)] ≈ transition_frac · E[w]``. The source
    phenotype is kept in ``obs["source_phenotype"]``.

    Returns
    -------
    AnnData with raw counts (sparse) in ``X``; ``obs["phenotype"]`` (the label),
    ``obs["source_phenotype"]``, ``obs["transitioning"]``,
    ``obs["w"]``; ``var["is_tf"]`` (regulators and ``n_decoy_tfs`` decoy TFs),
    ``var["planted_regulator_of"]``; ``uns["synthetic"]`` with ``regulators`` (phenotype →
    gene), ``transitions`` (source, target, carrier gene).

    """
    n_special = n_phenotypes * (1 + n_targets) + n_decoy_tfs
    if n_genes < n_special + 10:
        raise InvalidInputError(f"n_genes must be at least {n_special + 10} for these settings.")
    if n_phenotypes < 2:
        raise InvalidInputError("n_phenotypes must be at least 2.")
    rng = np.random.default_rng(seed)
    phenos = [f"P{i}" for i in range(n_phenotypes)]
    regs = [f"Reg_{p}" for p in phenos]
    targets = [[f"Tgt_{p}_{j}" for j in range(n_targets)] for p in phenos]
    decoys = [f"TF_decoy_{j}" for j in range(n_decoy_tfs)]
    n_bg = n_genes - n_special
    background = [f"Gene_{j}" for j in range(n_bg)]
    genes = regs + [t for ts in targets for t in ts] + decoys + background

    if transition_labels not in ("source", "sampled"):
        raise InvalidInputError(f"transition_labels must be 'source' or 'sampled', not {transition_labels!r}.")
    label = rng.integers(0, n_phenotypes, n_cells)
    transitioning = (rng.random(n_cells) < transition_frac) & (label < n_phenotypes - 1)
    w = np.where(transitioning, rng.uniform(0.15, 0.45, n_cells), 0.0)
    # program activity: cells x phenotypes
    activity = np.zeros((n_cells, n_phenotypes))
    activity[np.arange(n_cells), label] = 1 - w
    nxt = np.minimum(label + 1, n_phenotypes - 1)
    activity[np.arange(n_cells), nxt] += w

    base = rng.lognormal(mean=0.0, sigma=1.0, size=n_genes) * 0.8
    mu = np.tile(base, (n_cells, 1))
    g = {name: i for i, name in enumerate(genes)}
    for p in range(n_phenotypes):
        mu[:, g[regs[p]]] = 0.2 + regulator_mean * activity[:, p]
        for t in targets[p]:
            mu[:, g[t]] = base[g[t]] + 1.5 * activity[:, p] * rng.uniform(0.5, 1.5)
    decoy_idx = [g[d] for d in decoys]
    mu[:, decoy_idx] = rng.lognormal(0.5, 0.5, size=len(decoys))
    size = rng.lognormal(0.0, 0.25, size=(n_cells, 1))
    counts = rng.poisson(mu * size).astype(np.float32)
    source = label
    if transition_labels == "sampled":
        label = np.where(transitioning & (rng.random(n_cells) < w), nxt, label)

    var = pd.DataFrame(index=pd.Index(genes, name="gene"))
    var["is_tf"] = var.index.isin(regs + decoys)
    var["planted_regulator_of"] = pd.Categorical([phenos[regs.index(x)] if x in regs else "none" for x in genes])
    obs = pd.DataFrame(
        {
            "phenotype": pd.Categorical([phenos[i] for i in label], categories=phenos),
            "source_phenotype": pd.Categorical([phenos[i] for i in source], categories=phenos),
            "transitioning": transitioning,
            "w": w,
        },
        index=pd.Index([f"cell_{i}" for i in range(n_cells)]),
    )
    adata = ad.AnnData(X=sparse.csr_matrix(counts), obs=obs, var=var)
    adata.uns["synthetic"] = {
        "regulators": dict(zip(phenos, regs, strict=True)),
        "transitions": pd.DataFrame({"source": phenos[:-1], "target": phenos[1:], "carrier": regs[1:]}),
        "seed": seed,
    }
    return adata


def synthetic_multiome(
    n_cells: int = 1500,
    n_genes: int = 200,
    n_peaks: int = 2000,
    n_phenotypes: int = 4,
    n_key_sites: int = 5,
    site_open: float = 0.6,
    background_open: float = 0.03,
    regulator_mean: float = 12.0,
    seed: int = 0,
):
    """Paired RNA + ATAC counts with planted key sites (a MuData; known answers).

    The RNA modality is :func:`synthetic` (planted regulators ``Reg_Pi``). Every gene gets a
    genomic position (one gene per 100 kb on ``chr1``); peaks lie inside or beside gene bodies
    and are linked to that gene (``atac.var["linked_gene"]``). Each phenotype ``Pi`` has
    ``n_key_sites`` planted sites ``Site_Pi_j`` near its regulator, open (count 1-2) with
    probability ``site_open`` in the cells of ``Pi`` (scaled by the cell's share of that
    programme) and ``background_open`` elsewhere; every other peak opens at ``background_open``
    regardless of phenotype.

    Returns
    -------
    MuData with modalities ``rna`` (raw counts; ``var``: ``is_tf``, ``chrom``, ``start``, ``end``)
    and ``atac`` (raw counts, sparse; ``var``: ``chrom``, ``start``, ``end``, ``linked_gene``,
    ``planted_site_of``); ``obs`` as :func:`synthetic`; ``uns["synthetic"]["key_sites"]``
    (phenotype → site names).

    """
    from mudata import MuData

    rna = synthetic(
        n_cells=n_cells, n_genes=n_genes, n_phenotypes=n_phenotypes, regulator_mean=regulator_mean, seed=seed
    )
    rng = np.random.default_rng(seed + 1)
    phenos = list(rna.obs["phenotype"].cat.categories)
    genes = list(rna.var_names)
    n_special = n_phenotypes * n_key_sites
    if n_peaks < n_special + 10:
        raise InvalidInputError(f"n_peaks must be at least {n_special + 10} for these settings.")
    starts = np.arange(len(genes)) * 100_000 + 10_000
    rna.var["chrom"] = "chr1"
    rna.var["start"] = starts
    rna.var["end"] = starts + 20_000
    # planted sites near their regulator, the others spread over all genes
    linked = [rna.uns["synthetic"]["regulators"][p] for p in phenos for _ in range(n_key_sites)]
    linked += list(rng.choice(genes, n_peaks - n_special))
    gpos = {g: i for i, g in enumerate(genes)}
    site_start = np.array([starts[gpos[g]] + int(rng.integers(-1500, 19_000)) for g in linked])
    seen: set[int] = set()
    for i in range(n_special, n_peaks):  # unique peak names
        while site_start[i] in seen:
            site_start[i] += 1
        seen.add(int(site_start[i]))
    names = [f"Site_{p}_{j}" for p in phenos for j in range(n_key_sites)]
    names += [f"chr1:{s}-{s + 500}" for s in site_start[n_special:]]
    planted = [p for p in phenos for _ in range(n_key_sites)] + ["none"] * (n_peaks - n_special)

    # activity of each programme (as in synthetic: 1 - w for the own phenotype, w for the next)
    src = rna.obs["source_phenotype"].cat.codes.to_numpy()
    w = rna.obs["w"].to_numpy()
    activity = np.zeros((n_cells, n_phenotypes))
    activity[np.arange(n_cells), src] = 1 - w
    activity[np.arange(n_cells), np.minimum(src + 1, n_phenotypes - 1)] += w
    prob = np.full((n_cells, n_peaks), background_open, dtype=np.float32)
    for i in range(n_phenotypes):
        cols = slice(i * n_key_sites, (i + 1) * n_key_sites)
        prob[:, cols] = background_open + (site_open - background_open) * activity[:, [i]]
    is_open = rng.random((n_cells, n_peaks)) < prob
    counts = is_open * rng.integers(1, 3, size=is_open.shape)
    var = pd.DataFrame(
        {
            "chrom": "chr1",
            "start": site_start,
            "end": site_start + 500,
            "linked_gene": pd.Categorical(linked),
            "planted_site_of": pd.Categorical(planted),
        },
        index=pd.Index(names),
    )
    atac = ad.AnnData(X=sparse.csr_matrix(counts.astype(np.float32)), obs=rna.obs.copy(), var=var)
    mdata = MuData({"rna": rna, "atac": atac})
    for c in rna.obs.columns:
        mdata.obs[c] = rna.obs[c].to_numpy() if not hasattr(rna.obs[c], "cat") else rna.obs[c].array
    mdata.uns["synthetic"] = {
        "key_sites": {
            p: np.asarray(names[i * n_key_sites : (i + 1) * n_key_sites], dtype=object) for i, p in enumerate(phenos)
        },
        "regulators": rna.uns["synthetic"]["regulators"],
        "seed": seed,
    }
    return mdata
