"""Propagation of a knockout to the targets of the knocked-out regulators (``propagate="grn"``).

As CellOracle does, each target's log expression is modelled as a ridge regression on its prior
regulators' log expression, fitted on the data over the prior edges only (a TF → target table
such as DoRothEA, :func:`scanpy_kdcpt.datasets.tf_target_prior`). A knockout's change of log
expression ``d0`` (the knocked-out genes going to 0) then moves the targets by
``d = Σ_{s=1..n_steps} d0 Wˢ`` (``W``: regulators × targets coefficients), the knocked-out genes
themselves staying at 0. Torch-free.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import sparse

from .._errors import KeyNotFoundError


def edges_matrix(edges: pd.DataFrame, genes: Sequence[str]) -> sparse.csr_matrix:
    """Regulators × targets 0/1 matrix over ``genes`` (edges with unknown genes are dropped)."""
    if not isinstance(edges, pd.DataFrame):
        raise TypeError(
            "grn must be a DataFrame with columns 'tf' and 'target' (e.g. "
            "kdcpt.datasets.tf_target_prior(path, genes=adata.var_names))."
        )
    missing = {"tf", "target"} - set(edges.columns)
    if missing:
        raise KeyNotFoundError(f"grn lacks the column(s) {sorted(missing)}; it needs 'tf' and 'target'.")
    lookup = {g: i for i, g in enumerate(genes)}
    tf = edges["tf"].astype(str).map(lookup)
    tg = edges["target"].astype(str).map(lookup)
    ok = tf.notna() & tg.notna() & (tf != tg)
    n = len(genes)
    A = sparse.csr_matrix(
        (np.ones(int(ok.sum())), (tf[ok].to_numpy(int), tg[ok].to_numpy(int))), shape=(n, n), dtype=np.float64
    )
    A.data[:] = 1.0
    return A


def fit_propagation(
    X_log,
    A: sparse.csr_matrix,
    sources: Sequence[Sequence[int]],
    *,
    n_steps: int = 1,
    alpha: float = 1.0,
) -> list[np.ndarray | None]:
    """Per unit (a tuple of knocked-out genes), the ``len(unit) × genes`` propagation matrix
    ``Σ_s (Wˢ)[unit]`` (``None`` where no gene of the unit has a prior target).

    ``X_log``: cells × genes log-normalised expression (sparse or dense). Coefficients are
    fitted only for targets reachable within ``n_steps`` from some unit; ``alpha`` is the ridge
    penalty relative to the number of cells.
    """
    n_cells, n_genes = X_log.shape
    reach = np.zeros(n_genes, bool)
    frontier = np.zeros(n_genes, bool)
    for u in sources:
        frontier[list(u)] = True
    regs_needed = frontier.copy()
    for _ in range(n_steps):
        nxt = np.asarray(A[np.flatnonzero(frontier)].sum(0)).ravel() > 0
        nxt &= ~reach
        reach |= nxt
        frontier = nxt & (np.asarray(A.sum(1)).ravel() > 0)
        regs_needed |= frontier
    targets = np.flatnonzero(reach)
    Xc = sparse.csc_matrix(X_log, dtype=np.float64) if sparse.issparse(X_log) else np.asarray(X_log, np.float64)
    mean = np.asarray(Xc.mean(0)).ravel()

    def cols(idx):
        block = Xc[:, idx]
        block = block.toarray() if sparse.issparse(block) else np.asarray(block)
        return block - mean[idx]

    AT = sparse.csc_matrix(A)
    rows, cols_, vals = [], [], []
    for t in targets:
        regs = AT.indices[AT.indptr[t] : AT.indptr[t + 1]]
        regs = regs[regs_needed[regs]]
        if not len(regs):
            continue
        R, y = cols(regs), cols([t]).ravel()
        beta = np.linalg.solve(R.T @ R + alpha * n_cells * np.eye(len(regs)), R.T @ y)
        rows.extend(regs.tolist())
        cols_.extend([t] * len(regs))
        vals.extend(beta.tolist())
    W = sparse.csr_matrix((vals, (rows, cols_)), shape=(n_genes, n_genes))
    out: list[np.ndarray | None] = []
    for u in sources:
        u = list(u)
        step = W[u]
        if step.nnz == 0:
            out.append(None)
            continue
        total = step.toarray()
        for _ in range(n_steps - 1):
            step = step @ W
            total += step.toarray()
        total[:, u] = 0.0  # the knocked-out genes stay at 0
        out.append(total.astype(np.float32))
    return out


def warn_without_targets(names: Sequence[str]) -> None:
    if names:
        shown = ", ".join(list(names)[:5]) + (" …" if len(names) > 5 else "")
        warnings.warn(
            f"propagate='grn': no prior targets among the model's genes for {len(names)} knockout(s) ({shown}); "
            "their effect is the direct effect only.",
            UserWarning,
            stacklevel=4,
        )
