"""Directed cell-level Markov chains from CellRank 2 kernels (torch-free, public).

:func:`directed_chain` builds the chain that :meth:`~scanpy_kdcpt.KDCPT.compute_transitions`
coarse-grains into phenotype transitions: a kNN graph on a representation that keeps the
manifold (built by :func:`scanpy_kdcpt.markov.knn_graph`, never by ``sc.pp.neighbors``),
biased by a direction signal through CellRank 2's kernels. CellRank works on a light AnnData
made here; the user's AnnData is only read.

Direction signals (``direction=``):

- ``"velocity"``: RNA velocity (scVelo, stochastic model) from ``spliced`` / ``unspliced``
  layers → ``VelocityKernel``, mixed 0.8 / 0.2 with the ``ConnectivityKernel`` as CellRank
  recommends;
- ``"pseudotime"``: a pseudotime column (``time_key``), or diffusion pseudotime from a
  ``root`` phenotype → ``PseudotimeKernel``;
- ``"time"``: experimental time points (``time_key``). ``RealTimeKernel`` needs moscot
  (optimal transport) which is not a dependency: the time points are used as a pseudotime
  (``PseudotimeKernel``), recorded as ``"time (as pseudotime)"``;
- ``"cytotrace"``: CytoTRACE developmental potential → ``CytoTRACEKernel`` (no root needed);
- ``"auto"``: velocity when the layers exist, else pseudotime when ``time_key`` or ``root`` is
  given, otherwise CytoTRACE;
- ``None``: the undirected ``ConnectivityKernel``;
- a dict ``{signal: weight}`` combines kernels, e.g. ``{"velocity": 0.5, "cytotrace": 0.3,
  "connectivity": 0.2}``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

from . import markov
from ._errors import InvalidInputError, KeyNotFoundError
from ._utils import import_cellrank

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["DIRECTIONS", "directed_chain", "resolve_direction", "root_candidates", "root_cell"]

#: the direction signals :func:`directed_chain` knows
DIRECTIONS = ("velocity", "pseudotime", "time", "cytotrace", "connectivity")
VELOCITY_LAYERS = ("spliced", "unspliced")


def resolve_direction(
    direction: str | dict | None, adata: AnnData, *, time_key: str | None = None, root: str | None = None
) -> dict[str, float]:
    """The kernel weights a ``direction`` argument stands for (``{signal: weight}``, summing to 1)."""
    if direction is None or direction == "none":
        return {"connectivity": 1.0}
    if isinstance(direction, dict):
        weights = {str(k): float(v) for k, v in direction.items()}
        bad = {k: v for k, v in weights.items() if not np.isfinite(v) or v < 0}
        if bad:  # dropped silently before: {'velocity': -1, 'cytotrace': 1} ran CytoTRACE alone
            raise InvalidInputError(f"direction weights must be finite and 0 or more; got {bad} in {direction!r}.")
        weights = {k: v for k, v in weights.items() if v > 0}
        unknown = sorted(set(weights) - set(DIRECTIONS))
        if unknown or not weights:
            raise InvalidInputError(
                f"direction weights must name some of {list(DIRECTIONS)} with positive weights; got {direction!r}."
            )
        total = sum(weights.values())
        return {k: v / total for k, v in weights.items()}
    if direction == "auto":
        layers = getattr(adata, "layers", None) or {}  # a MuData has none of its own
        if all(k in layers for k in VELOCITY_LAYERS):
            direction = "velocity"
        elif time_key is not None:
            direction = "pseudotime"
        elif root is not None:
            direction = "pseudotime"
        else:
            direction = "cytotrace"
    if direction == "velocity":
        return {"velocity": 0.8, "connectivity": 0.2}
    if direction in DIRECTIONS:
        return {direction: 1.0}
    raise InvalidInputError(
        f"direction must be 'auto', None, one of {list(DIRECTIONS)} or a dict of weights; got {direction!r}."
    )


def directed_chain(
    adata: AnnData,
    representation: np.ndarray,
    *,
    direction: str | dict | None = "auto",
    expression: np.ndarray | sparse.spmatrix | None = None,
    codes: np.ndarray | None = None,
    phenotypes: list[str] | None = None,
    time_key: str | None = None,
    root: str | None = None,
    n_neighbors: int = 30,
    random_state: int = 0,
    graph: tuple[sparse.csr_matrix, sparse.csr_matrix] | None = None,
) -> tuple[sparse.csr_matrix, dict]:
    """A directed cell-level chain: kNN graph on ``representation`` biased by ``direction``.

    Parameters
    ----------
    adata
        The cells (read only: ``layers["spliced"/"unspliced"]`` for velocity, ``obs[time_key]``).
    representation
        Cells × dimensions (e.g. the model's PCA encoder embedding) for the kNN graph.
    direction
        See the module docstring.
    expression
        Log-normalised expression (cells × genes) for CytoTRACE (default ``adata.X``).
    codes, phenotypes
        Each cell's phenotype code and the phenotype names: needed for ``root``.
    time_key
        ``.obs`` column with a pseudotime (``"pseudotime"``) or time points (``"time"``).
    root
        Root phenotype for diffusion pseudotime (``"pseudotime"`` without ``time_key``).
    n_neighbors
        Neighbours per cell of the kNN graph.
    random_state
        Seed of the approximate kNN search.
    graph
        Precomputed ``(distances, connectivities)`` (skips the kNN search).

    Returns
    -------
    The chain (cells × cells CSR, rows sum to 1) and a dict recording what biased it
    (``kind``, ``weights``, ``n_neighbors`` and each signal's parameters).

    """
    weights = resolve_direction(direction, adata, time_key=time_key, root=root)
    if n_neighbors > adata.n_obs - 1:
        warnings.warn(
            f"n_neighbors={n_neighbors} is more than the other {adata.n_obs - 1} cells: every cell is a neighbour "
            "of every other, and the chain is nearly uniform. Pass a smaller n_neighbors (e.g. 15-30).",
            UserWarning,
            stacklevel=3,
        )
    Z = np.asarray(representation, dtype=np.float32)
    if Z.ndim != 2 or Z.shape[0] != adata.n_obs:
        raise InvalidInputError(f"representation must be cells × dimensions with {adata.n_obs} rows, got {Z.shape}.")
    _check_inputs(weights, adata, time_key=time_key, root=root, phenotypes=phenotypes, codes=codes)
    D, W = graph if graph is not None else markov.knn_graph(Z, n_neighbors, random_state=random_state)
    light = _light(adata, D, W, n_neighbors)
    # a chain of the neighbour graph alone has no direction (as direction=None)
    kind = "none" if set(weights) == {"connectivity"} else "+".join(weights)
    record: dict = {"kind": kind, "weights": dict(weights), "n_neighbors": int(min(n_neighbors, adata.n_obs - 1))}
    T = sparse.csr_matrix((adata.n_obs, adata.n_obs))
    for kind, w in weights.items():
        Tk, params = _KERNELS[kind](
            light, adata, expression=expression, codes=codes, phenotypes=phenotypes, time_key=time_key, root=root
        )
        record[kind] = params
        T = T + w * sparse.csr_matrix(Tk)
    T = sparse.csr_matrix(T)
    T.eliminate_zeros()
    s = np.asarray(T.sum(1)).ravel()
    T = sparse.diags(1.0 / np.where(s > 0, s, 1.0)) @ T
    return sparse.csr_matrix(T), record


def root_cell(diffmap: np.ndarray, codes: np.ndarray, root_code: int) -> int:
    """The cell of the root phenotype farthest from the other phenotypes' centroids.

    ``diffmap``: diffusion components (without the trivial first one). A cell picked
    carelessly inside the root phenotype can reverse a step of the lineage; the extreme cell
    (largest summed distance to the other phenotypes' centroids) cannot.
    """
    codes = np.asarray(codes)
    cand = np.flatnonzero(codes == root_code)
    others = [c for c in np.unique(codes) if c != root_code and c >= 0]
    if not len(cand):
        raise InvalidInputError(
            f"No cell of the root phenotype (code {root_code}) among these cells: choose a root phenotype "
            "that has cells here, or pass time_key= a pseudotime."
        )
    if not others:
        return int(cand[0])
    cents = np.stack([diffmap[codes == c].mean(0) for c in others])
    d = np.linalg.norm(diffmap[cand][:, None, :] - cents[None], axis=-1).sum(1)
    return int(cand[np.argmax(d)])


def root_candidates(diffmap: np.ndarray, codes: np.ndarray, root_code: int, n_components: int = 3) -> list[int]:
    """Candidate root cells of a phenotype: its extreme cell (:func:`root_cell`), its medoid,
    and its extremes along the leading diffusion components.

    :func:`directed_chain` computes diffusion pseudotime from each and keeps the root whose
    pseudotime puts the root phenotype earliest (lowest mean rank): on Paul 2015 the extreme
    cell of the multipotent progenitors sits at the erythroid tip (their pseudotime would make
    erythrocytes the earliest type) while the medoid gives the known order; on pancreas-like
    data the extreme cell is the right one.
    """
    codes = np.asarray(codes)
    cand = np.flatnonzero(codes == root_code)
    out = [root_cell(diffmap, codes, root_code)]
    D = diffmap[cand]
    out.append(int(cand[np.argmin(np.linalg.norm(D - np.median(D, 0), axis=1))]))
    for k in range(min(n_components, diffmap.shape[1])):
        out += [int(cand[np.argmin(D[:, k])]), int(cand[np.argmax(D[:, k])])]
    return list(dict.fromkeys(out))


# ------------------------------------------------------------------------------------------
def _check_inputs(weights, adata, *, time_key, root, phenotypes, codes) -> None:
    if "velocity" in weights:
        missing = [k for k in VELOCITY_LAYERS if k not in adata.layers]
        if missing:
            raise KeyNotFoundError(
                f"direction='velocity' needs adata.layers {list(VELOCITY_LAYERS)} (missing: {missing}; "
                f"layers: {list(adata.layers.keys())}). Use direction='pseudotime' with time_key= or root=, "
                "'time' with time_key=, 'cytotrace', or None."
            )
    if "time" in weights and time_key is None:
        raise InvalidInputError("direction='time' needs time_key=, the .obs column of experimental time points.")
    if "pseudotime" in weights and time_key is None and root is None:
        raise InvalidInputError(
            "direction='pseudotime' needs time_key= (an .obs pseudotime column) or root= (a root phenotype)."
        )
    if time_key is not None and ("time" in weights or "pseudotime" in weights):
        if time_key not in adata.obs:
            raise KeyNotFoundError(
                f"time_key {time_key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)})."
            )
        col = adata.obs[time_key]
        if col.isna().any():
            raise InvalidInputError(
                f"adata.obs[{time_key!r}] has {int(col.isna().sum())} missing values: fill or drop those cells."
            )
        if col.nunique() < 2:
            raise InvalidInputError(
                f"adata.obs[{time_key!r}] holds a single time point: a direction needs at least two."
            )
        if not isinstance(col.dtype, pd.CategoricalDtype) and not pd.api.types.is_numeric_dtype(col):
            raise InvalidInputError(
                f"adata.obs[{time_key!r}] must be numeric or an ordered categorical, not {col.dtype}."
            )
        if isinstance(col.dtype, pd.CategoricalDtype) and not col.cat.ordered:
            raise InvalidInputError(
                f"adata.obs[{time_key!r}] is an unordered categorical: make it ordered "
                "(adata.obs[key] = adata.obs[key].cat.as_ordered()) so the time points have an order."
            )
        if pd.api.types.is_numeric_dtype(col) and not np.isfinite(col.to_numpy(float)).all():
            n_inf = int((~np.isfinite(col.to_numpy(float))).sum())
            raise InvalidInputError(
                f"adata.obs[{time_key!r}] has {n_inf} infinite values (sc.tl.dpt writes inf for cells it cannot "
                "reach from the root): drop those cells, or fill them with a finite value you choose."
            )
    if root is not None and "pseudotime" in weights and time_key is None:
        if phenotypes is None or codes is None:
            raise InvalidInputError("root= needs the cells' phenotypes (codes and phenotypes).")
        if str(root) not in phenotypes:
            raise KeyNotFoundError(f"root {root!r} is not a phenotype; phenotypes: {phenotypes}.")


def _light(adata: AnnData, D, W, n_neighbors: int) -> AnnData:
    """An AnnData with only the cells' names and the kNN graph (what CellRank reads)."""
    import anndata as ad

    light = ad.AnnData(
        X=sparse.csr_matrix((adata.n_obs, 1), dtype=np.float32), obs=pd.DataFrame(index=adata.obs_names.copy())
    )
    light.obsp["distances"] = D
    light.obsp["connectivities"] = W
    light.uns["neighbors"] = {
        "connectivities_key": "connectivities",
        "distances_key": "distances",
        "params": {"n_neighbors": int(n_neighbors), "method": "gauss", "metric": "cosine"},
    }
    return light


def _with_expression(light: AnnData, X, var_names) -> AnnData:
    """The light AnnData with an expression matrix (same cells, graph and neighbours entry)."""
    import anndata as ad

    out = ad.AnnData(X=X, obs=light.obs.copy(), var=pd.DataFrame(index=pd.Index(list(map(str, var_names)))))
    for k, v in light.obsp.items():
        out.obsp[k] = v
    out.uns["neighbors"] = dict(light.uns["neighbors"])
    return out


def _smooth(W: sparse.csr_matrix, X) -> np.ndarray:
    """First-order moments: each cell's mean over itself and its neighbours (scVelo's ``Ms``)."""
    A = sparse.csr_matrix(W > 0, dtype=np.float32) + sparse.identity(W.shape[0], dtype=np.float32, format="csr")
    A = sparse.diags(1.0 / np.asarray(A.sum(1)).ravel()) @ A
    out = A @ X
    return np.asarray(out.toarray() if sparse.issparse(out) else out, dtype=np.float32)


@contextlib.contextmanager
def _quiet():
    # stderr too: CellRank's softmax-scale estimate draws a progress bar that no argument turns off
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        prev = logging.getLogger("cellrank").level
        yield
        logging.getLogger("cellrank").setLevel(prev)


def _connectivity_kernel(light, adata, **_):
    import_cellrank()  # keeps the warning filters pygpcca would reset
    from cellrank.kernels import ConnectivityKernel

    with _quiet():
        k = ConnectivityKernel(light, check_connectivity=False).compute_transition_matrix()
    return k.transition_matrix, {"kernel": "ConnectivityKernel"}


def _pseudotime_from_values(light, values: np.ndarray, params: dict):
    import_cellrank()  # keeps the warning filters pygpcca would reset
    from cellrank.kernels import PseudotimeKernel

    light.obs["_kdcpt_pseudotime"] = np.asarray(values, dtype=np.float64)
    with _quiet():
        k = PseudotimeKernel(light, time_key="_kdcpt_pseudotime", check_connectivity=False)
        k.compute_transition_matrix(threshold_scheme="soft", show_progress_bar=False, n_jobs=1)
    return k.transition_matrix, {"kernel": "PseudotimeKernel", "threshold_scheme": "soft", **params}


def _pseudotime_kernel(light, adata, *, codes, phenotypes, time_key, root, **_):
    if time_key is not None:  # an ordered categorical gives its order
        col = adata.obs[time_key]
        values = col.cat.codes.to_numpy(float) if isinstance(col.dtype, pd.CategoricalDtype) else col.to_numpy(float)
        return _pseudotime_from_values(light, values, {"time_key": time_key})
    import scanpy as sc

    root_code = list(phenotypes).index(str(root))
    if light.n_obs < 5:
        raise InvalidInputError(
            f"root= pseudotime needs a diffusion map of at least 5 cells, got {light.n_obs}: pass time_key= a "
            "pseudotime, or use more cells."
        )
    if not (np.asarray(codes) == root_code).any():
        raise InvalidInputError(
            f"No cell of the root phenotype {str(root)!r} among these cells: choose a root phenotype that has "
            "cells here, or pass time_key= a pseudotime."
        )
    with _quiet():
        sc.tl.diffmap(light, n_comps=min(15, light.n_obs - 2))
    dm = np.asarray(light.obsm["X_diffmap"])[:, 1:]
    codes = np.asarray(codes)
    in_root = codes == root_code
    best = None
    for cell in root_candidates(dm, codes, root_code):
        light.uns["iroot"] = int(cell)
        with _quiet():
            sc.tl.dpt(light, n_dcs=min(10, dm.shape[1] + 1))
        pt = np.asarray(light.obs["dpt_pseudotime"], dtype=float)
        rank = pd.Series(np.where(np.isfinite(pt), pt, np.inf)).rank(pct=True).to_numpy()
        score = float(rank[in_root].mean())  # the root phenotype should come first
        if best is None or score < best[0]:
            best = (score, int(cell), pt)
    score, cell, pt = best
    pt = pt.copy()
    finite = np.isfinite(pt)
    n_unreached = int((~finite).sum())
    pt[~finite] = pt[finite].max() if finite.any() else 0.0
    params = {
        "root": str(root),
        "root_cell": str(light.obs_names[cell]),
        "pseudotime": "diffusion (dpt)",
        "root_mean_rank": round(score, 4),
    }
    if n_unreached:
        params["n_unreached"] = n_unreached
    return _pseudotime_from_values(light, pt, params)


def _time_kernel(light, adata, *, time_key, **_):
    col = adata.obs[time_key]
    values = col.cat.codes.to_numpy(float) if isinstance(col.dtype, pd.CategoricalDtype) else col.to_numpy(float)
    T, params = _pseudotime_from_values(light, values, {"time_key": time_key})
    params["kernel"] = "PseudotimeKernel on experimental time (RealTimeKernel needs moscot)"
    return T, params


def _cytotrace_kernel(light, adata, *, expression, **_):
    import_cellrank()  # keeps the warning filters pygpcca would reset
    from cellrank.kernels import CytoTRACEKernel

    X = adata.X if expression is None else expression
    X = sparse.csr_matrix(X, dtype=np.float32) if sparse.issparse(X) else np.asarray(X, dtype=np.float32)
    # a gene constant over the cells (e.g. undetected, or zero-filled in a query) has no correlation
    # with the gene count: CellRank's CytoTRACE stops at its NaN
    mean = np.asarray(X.mean(0)).ravel()
    sq = np.asarray((X.multiply(X) if sparse.issparse(X) else X * X).mean(0)).ravel()
    varying = sq - mean**2 > 1e-12
    if not varying.all():
        X = X[:, np.flatnonzero(varying)]
    if X.shape[1] < 2 or adata.n_obs < 3:
        raise InvalidInputError(
            f"direction='cytotrace' needs at least 2 genes that vary and 3 cells (got {X.shape[1]} genes, "
            f"{adata.n_obs} cells): use direction='pseudotime' with root= or time_key=."
        )
    cyt = _with_expression(light, X, [f"g{i}" for i in range(X.shape[1])])
    cyt.layers["Ms"] = _smooth(light.obsp["connectivities"], X)
    with _quiet():
        k = CytoTRACEKernel(cyt, check_connectivity=False).compute_cytotrace(layer="Ms")
        k.compute_transition_matrix(threshold_scheme="soft", show_progress_bar=False, n_jobs=1)
    light.obs["ct_score"] = cyt.obs["ct_score"].to_numpy()
    return k.transition_matrix, {"kernel": "CytoTRACEKernel", "threshold_scheme": "soft", "layer": "Ms (kNN mean)"}


def _velocity_kernel(light, adata, **_):
    import scvelo as scv

    import_cellrank()  # keeps the warning filters pygpcca would reset
    from cellrank.kernels import VelocityKernel

    S = sparse.csr_matrix(adata.layers["spliced"], dtype=np.float32)
    U = sparse.csr_matrix(adata.layers["unspliced"], dtype=np.float32)
    vel = _with_expression(light, S, adata.var_names.astype(str))
    # scVelo's normalisation of each layer: to the median total of the spliced + unspliced counts
    for name, L in (("spliced", S), ("unspliced", U)):
        tot = np.asarray(L.sum(1)).ravel()
        L = sparse.diags(np.median(tot[tot > 0]) / np.maximum(tot, 1)) @ L
        vel.layers[name] = L
    X = sparse.csr_matrix(vel.layers["spliced"], copy=True)
    X.data = np.log1p(X.data)
    vel.X = X
    W = light.obsp["connectivities"]
    vel.layers["Ms"] = _smooth(W, vel.layers["spliced"])
    vel.layers["Mu"] = _smooth(W, vel.layers["unspliced"])
    with _quiet():
        scv.settings.verbosity = 0
        scv.tl.velocity(vel, mode="stochastic")
        n_genes = int(np.asarray(vel.var["velocity_genes"]).sum()) if "velocity_genes" in vel.var else vel.n_vars
        k = VelocityKernel(vel, check_connectivity=False).compute_transition_matrix(
            model="deterministic", show_progress_bar=False, n_jobs=1
        )
    return k.transition_matrix, {
        "kernel": "VelocityKernel",
        "velocity": "scVelo stochastic",
        "n_velocity_genes": n_genes,
        "softmax_scale": float(k.params.get("softmax_scale", np.nan)),
    }


_KERNELS = {
    "connectivity": _connectivity_kernel,
    "pseudotime": _pseudotime_kernel,
    "time": _time_kernel,
    "cytotrace": _cytotrace_kernel,
    "velocity": _velocity_kernel,
}
