"""Regulatory-site (ATAC peak) helpers for multi-omics KD-CPT: TF-IDF, LSI, peak-to-gene links.

numpy / scipy only (public; shared by the model, the plots and the benchmarks). Peak matrices
stay sparse throughout.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scanpy import logging as logg
from scipy import sparse

from ._errors import InvalidInputError, KeyNotFoundError

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["idf", "link_peaks_to_genes", "lsi", "peak_coordinates", "tfidf", "TFIDF_SCALE"]

#: scale factor of the TF-IDF (Signac's ``scale.factor``)
TFIDF_SCALE = 1e4


def idf(X) -> np.ndarray:
    """Inverse document frequency of each peak, ``n_cells / (1 + cells with the peak open)``,
    rescaled to mean 1 (so that the TF-IDF values share the scale of log-normalised RNA).
    """
    X = sparse.csr_matrix(X) if not sparse.issparse(X) else X
    df = np.asarray((X > 0).sum(0)).ravel().astype(np.float64)
    w = X.shape[0] / (1.0 + df)
    return (w / max(w.mean(), 1e-12)).astype(np.float32)


def tfidf(X, idf_weights: np.ndarray, *, scale: float = TFIDF_SCALE):
    """``log1p(TF × IDF × scale)`` with ``TF = x / cell total`` (Signac's LSI method 1).

    Sparse in, sparse out (CSR, float32); the matrix is never densified.
    """
    idf_weights = np.asarray(idf_weights, dtype=np.float32)
    if sparse.issparse(X):
        X = sparse.csr_matrix(X, dtype=np.float32)
        lib = np.asarray(X.sum(1)).ravel()
        X = sparse.diags((scale / np.maximum(lib, 1.0)).astype(np.float32)) @ X @ sparse.diags(idf_weights)
        X = sparse.csr_matrix(X)
        X.data = np.log1p(X.data)
        return X
    X = np.asarray(X, dtype=np.float32)
    lib = np.maximum(X.sum(1, keepdims=True), 1.0)
    return np.log1p(X / lib * idf_weights * scale)


def lsi(X, n_components: int = 50, *, seed: int = 0, idf_weights: np.ndarray | None = None) -> np.ndarray:
    """Latent semantic indexing: truncated SVD of the TF-IDF of peak counts ``X``.

    Returns cells × ``n_components`` (the first component, which mostly follows sequencing depth,
    is kept; drop it with ``[:, 1:]`` when wanted).
    """
    from sklearn.decomposition import TruncatedSVD

    w = idf(X) if idf_weights is None else idf_weights
    T = tfidf(X, w)
    n_components = int(min(n_components, min(T.shape) - 1))
    return TruncatedSVD(n_components, random_state=seed).fit_transform(T).astype(np.float32)


_COORD = re.compile(r"^(?P<chrom>[^:_\-]+)[:_\-](?P<start>\d+)[_\-](?P<end>\d+)$")


def peak_coordinates(peaks: AnnData) -> pd.DataFrame:
    """``chrom``, ``start``, ``end`` of each peak: from those ``.var`` columns, else parsed from
    names like ``chr1:100-200`` / ``chr1_100_200``. Raises ValueError when neither exists.
    """
    var = peaks.var
    if {"chrom", "start", "end"} <= set(var.columns):
        out = pd.DataFrame(
            {"chrom": var["chrom"].astype(str), "start": var["start"], "end": var["end"]}, index=var.index
        )
    else:
        parsed = pd.Series(var.index.astype(str), index=var.index).str.extract(_COORD)
        if parsed.isna().any(axis=None):
            bad = list(var.index[parsed.isna().any(axis=1)][:3])
            raise InvalidInputError(
                f"Peaks have no coordinates: no 'chrom'/'start'/'end' columns and names such as {bad} are not "
                "'chr:start-end'. Link each peak to a gene yourself: "
                'mdata["atac"].var["linked_gene"] = <gene name per peak> (empty string for none).'
            )
        out = parsed
    start = pd.to_numeric(out["start"], errors="coerce")
    end = pd.to_numeric(out["end"], errors="coerce")
    return pd.DataFrame({"chrom": out["chrom"].astype(str), "start": start, "end": end}, index=var.index)


def link_peaks_to_genes(
    mdata: MuData,
    *,
    window: int = 2000,
    modalities: dict[str, str] | None = None,
    key_added: str = "linked_gene",
    copy: bool = False,
) -> MuData | None:
    """Link every peak to the nearest gene body within ``window`` bp (gene body + flanks).

    Gene coordinates come from the RNA modality's ``.var`` columns ``chrom``, ``start``, ``end``;
    peak coordinates from the same columns of the regulatory modality, or its names
    (``chr1:100-200``). A peak overlapping several extended gene bodies goes to the nearest
    gene (distance between the peak centre and the gene body).

    Parameters
    ----------
    mdata
        Paired MuData.
    window
        Flank added on both sides of each gene body, in bp.
    modalities
        ``{"rna": name, "regulatory": name}`` (default ``{"rna": "rna", "regulatory": "atac"}``).
    key_added
        Column of the regulatory modality's ``.var`` that receives the gene names.
    copy
        Return a linked copy instead of modifying ``mdata``.

    Returns
    -------
    ``None`` (or the copy). Sets ``mdata[regulatory].var[key_added]``: the linked gene, ``""`` for
    peaks with no gene within the window.

    """
    mods = _modalities(mdata, modalities)
    if copy:
        mdata = mdata.copy()
    rna, peaks = mdata[mods["rna"]], mdata[mods["regulatory"]]
    if not {"chrom", "start", "end"} <= set(rna.var.columns):
        raise KeyNotFoundError(
            f"mdata[{mods['rna']!r}].var lacks gene coordinates ('chrom', 'start', 'end'); add them or set "
            f"mdata[{mods['regulatory']!r}].var[{key_added!r}] to the gene of each peak."
        )
    pc = peak_coordinates(peaks)
    gv = rna.var
    genes = pd.DataFrame(
        {
            "chrom": gv["chrom"].astype(str).to_numpy(),
            "start": pd.to_numeric(gv["start"], errors="coerce").to_numpy(float),
            "end": pd.to_numeric(gv["end"], errors="coerce").to_numpy(float),
            "name": rna.var_names.astype(str),
        }
    ).dropna()
    centre = ((pc["start"] + pc["end"]) / 2).to_numpy(float)
    linked = np.full(len(pc), "", dtype=object)
    for chrom, g in genes.groupby("chrom", sort=False):
        rows = np.flatnonzero(pc["chrom"].to_numpy() == chrom)
        if not len(rows):
            continue
        c = centre[rows][:, None]
        d = np.maximum(0.0, np.maximum(g["start"].to_numpy()[None, :] - c, c - g["end"].to_numpy()[None, :]))
        best = d.argmin(1)
        ok = d[np.arange(len(rows)), best] <= window
        linked[rows[ok]] = g["name"].to_numpy()[best[ok]]
    peaks.var[key_added] = pd.Categorical(linked.astype(str))
    logg.info(
        f"linked {int((linked != '').sum())} of {len(linked)} peaks to a gene (window {window} bp); "
        f"added mdata[{mods['regulatory']!r}].var[{key_added!r}]"
    )
    return mdata if copy else None


def _modalities(mdata, modalities: dict[str, str] | None) -> dict[str, str]:
    mods = {"rna": "rna", "regulatory": "atac", **(modalities or {})}
    unknown = set(mods) - {"rna", "regulatory"}
    if unknown:
        raise InvalidInputError(f"modalities takes the roles 'rna' and 'regulatory', not {sorted(unknown)}.")
    for role, name in mods.items():
        if name not in mdata.mod:
            raise KeyNotFoundError(
                f"modalities[{role!r}] = {name!r} is not a modality of the MuData (modalities: {list(mdata.mod)})."
            )
    return mods
