"""Real data sets: scanpy's bundled copies and the pancreas endocrinogenesis loader."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import anndata as ad
import numpy as np

from .._errors import InvalidInputError

_PANCREAS_URL = "https://github.com/theislab/scvelo_notebooks/raw/master/data/Pancreas/endocrinogenesis_day15.h5ad"


def pbmc68k_reduced() -> ad.AnnData:
    """700 real PBMCs (10x, 765 genes, 10 ``bulk_labels``), log-normalised values in ``X``.

    scanpy's bundled ``pbmc68k_reduced`` keeps z-scored values in ``X``; here ``X`` holds the
    log-normalised values from its ``.raw`` so that KD-CPT can read them. UMAP, PCA and the
    labels' colours are kept.
    """
    import scanpy as sc

    src = sc.datasets.pbmc68k_reduced()
    adata = ad.AnnData(
        X=np.asarray(src.raw.X.toarray() if hasattr(src.raw.X, "toarray") else src.raw.X, dtype=np.float32),
        obs=src.obs.copy(),
        var=src.raw.var.copy(),
        obsm={k: v.copy() for k, v in src.obsm.items()},
        uns={k: src.uns[k] for k in ("bulk_labels_colors", "louvain_colors") if k in src.uns},
    )
    adata.var_names = src.raw.var_names.copy()
    adata.obs_names_make_unique()
    return adata


def krumsiek11() -> ad.AnnData:
    """Simulated myeloid differentiation (640 cells, 11 genes) with a known regulatory network.

    Gata1 drives the erythroid (Ery) and megakaryocyte (Mk) fates, Pu.1 and Cebpa the
    monocyte (Mo) and neutrophil (Neu) fates (Krumsiek et al., PLoS ONE 6:e22649, 2011).
    Tiny negative values from the simulation's noise are clipped to 0. ``var["is_tf"]`` marks
    the network's transcription factors (all 11 genes are regulators in the model).
    """
    import scanpy as sc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scanpy warns about the file's duplicated obs names
        adata = sc.datasets.krumsiek11()
    adata.obs_names_make_unique()
    adata.X = np.clip(np.asarray(adata.X, dtype=np.float32), 0, None)
    adata.var["is_tf"] = True
    # scanpy's cell index → label dict has integer keys, which write_h5ad cannot store
    if isinstance(adata.uns.get("highlights"), dict):
        adata.uns["highlights"] = {str(k): v for k, v in adata.uns["highlights"].items()}
    return adata


def pancreas(path: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None) -> ad.AnnData:
    """Mouse pancreatic endocrinogenesis, E15.5 (Bastidas-Ponce et al., Development 2019).

    Ductal → Ngn3 low EP → Ngn3 high EP → Pre-endocrine → Alpha / Beta / Delta / Epsilon, in
    ``obs["clusters"]``; raw spliced counts in ``X``.

    Parameters
    ----------
    path
        A local ``.h5ad`` copy. Without it, the scVelo copy is downloaded once from its public
        source into ``cache_dir`` (default ``~/.cache/scanpy-kdcpt``).
    cache_dir
        Where the download is cached.

    """
    if path is None:
        cache = Path(cache_dir or Path.home() / ".cache" / "scanpy-kdcpt")
        path = cache / "endocrinogenesis_day15.h5ad"
        if not path.exists():
            import urllib.request

            cache.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".part")
            try:
                urllib.request.urlretrieve(_PANCREAS_URL, tmp)
            except OSError as err:
                raise OSError(
                    f"Could not download the pancreas data from {_PANCREAS_URL} ({err}). Pass path=... to a local copy."
                ) from err
            tmp.rename(path)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No file at {path}. Pass the path of the pancreas .h5ad, or path=None to download it.")
    adata = ad.read_h5ad(path)
    if "clusters" not in adata.obs:
        raise InvalidInputError(f"{path} has no obs['clusters']: is it the pancreas endocrinogenesis data?")
    if "spliced" in adata.layers and "counts" not in adata.layers and adata.n_vars > 5000:
        adata.X = adata.layers["spliced"].copy()
    return adata
