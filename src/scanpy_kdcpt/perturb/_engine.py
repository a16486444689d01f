"""The perturbation applied to each minibatch: which (cell, unit) pairs are rerun, and how their inputs change.

Matrix access here never densifies ``X`` whole (backed data stays on disk).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import sparse

from .. import _expression
from .._constants import TARGET_SUM
from ._units import Unit

if TYPE_CHECKING:
    pass


@dataclass
class Deltas:
    """Per unit: summed change of probabilities per group, cells whose prediction changes, cells rerun."""

    sums: np.ndarray  # units × groups × phenotypes
    changed: np.ndarray  # units
    n_rerun: np.ndarray  # units
    pair_dp: np.ndarray | None = None  # (cell, unit) pairs × phenotypes, for fate deltas


@dataclass
class Perturbation:
    """Which (cell, unit) pairs to rerun, and how to perturb each unit's genes."""

    units: list[Unit]
    mode: str
    cells: np.ndarray  # cell of each pair
    unit_of: np.ndarray  # unit of each pair
    n_rerun: np.ndarray  # pairs per unit
    level: dict[int, float]  # overexpression level per gene
    n_expressing: dict[int, int]  # cells expressing each gene (0: no perturbation can change it)
    library: np.ndarray | None  # library sizes (counts, overexpression only)
    propagation: list | None = None  # per unit: width × genes matrix of propagated log changes
    normalize: Callable | None = None  # input → log-normalised (the module's), with propagation
    is_counts: bool = False

    @classmethod
    def plan(
        cls, X, units: list[Unit], mode: str, quantile: float, only_expressing: bool, is_counts: bool
    ) -> Perturbation:
        n_cells = X.shape[0]
        genes = np.unique(np.concatenate([np.asarray(u) for u in units]))
        nonzero = dict(zip(genes.tolist(), _columns_nonzero(X, genes), strict=True))
        library = _expression.row_sums(X) if mode == "overexpress" and is_counts else None
        level = {g: 0.0 for g in genes.tolist()}
        if mode == "overexpress":
            for g, rows in nonzero.items():
                if len(rows):
                    vals = _dense_column(X, rows, g)
                    level[g] = float(np.quantile(vals / np.maximum(library[rows], 1) if is_counts else vals, quantile))
        cells, unit_of = [], []
        for u, unit in enumerate(units):
            if not only_expressing:
                rows = np.arange(n_cells)
            elif mode == "delete":
                rows = np.unique(np.concatenate([nonzero[g] for g in unit]))
            else:  # overexpression reaches every cell below the level
                rows = np.arange(n_cells) if any(level[g] > 0 for g in unit) else np.zeros(0, np.int64)
            cells.append(rows.astype(np.int64))
            unit_of.append(np.full(len(rows), u, dtype=np.int64))
        n_rerun = np.array([len(c) for c in cells], dtype=np.int64)
        n_expressing = {g: len(rows) for g, rows in nonzero.items()}
        return cls(units, mode, np.concatenate(cells), np.concatenate(unit_of), n_rerun, level, n_expressing, library)

    def transform(self, device):
        """``perturb(x, positions)`` for :meth:`KDCPT._iterate`: the batch's genes set to 0 (or raised)."""
        width = max(len(u) for u in self.units)
        genes = np.full((len(self.units), width), -1, dtype=np.int64)
        levels = np.zeros((len(self.units), width), dtype=np.float32)
        for u, unit in enumerate(self.units):
            genes[u, : len(unit)] = unit
            levels[u, : len(unit)] = [self.level[g] for g in unit]
        genes_t, levels_t = torch.as_tensor(genes, device=device), torch.as_tensor(levels, device=device)
        unit_of_t, cells_t = torch.as_tensor(self.unit_of, device=device), torch.as_tensor(self.cells, device=device)
        lib_t = None if self.library is None else torch.as_tensor(self.library, dtype=torch.float32, device=device)
        prop_t = None
        if self.propagation is not None:
            n_genes = next((p.shape[1] for p in self.propagation if p is not None), 0)
            prop = np.zeros((len(self.units), width, n_genes), dtype=np.float32)
            for u, p in enumerate(self.propagation):
                if p is not None:
                    prop[u, : p.shape[0]] = p
            prop_t = torch.as_tensor(prop, device=device)
        propagate = self._propagate

        def perturb(x: torch.Tensor, pos: np.ndarray) -> torch.Tensor:
            pos_t = torch.as_tensor(pos, device=x.device)
            u = unit_of_t[pos_t]
            cols = genes_t[u]  # (B, width)
            valid = cols >= 0
            rows = torch.arange(x.shape[0], device=x.device)[:, None].expand_as(cols)
            r, c = rows[valid], cols[valid]
            x0 = x
            x = x.clone()
            if self.mode == "delete":
                x[r, c] = 0
            else:
                lvl = levels_t[u][valid]
                if lib_t is not None:
                    lvl = lvl * lib_t[cells_t[pos_t]][:, None].expand_as(cols)[valid]
                x[r, c] = torch.maximum(x[r, c], lvl.to(x.dtype))
            if prop_t is not None:
                x = propagate(x0, x, cols, valid, prop_t[u])
            return x

        return perturb

    def _propagate(self, x0, x1, cols, valid, prop) -> torch.Tensor:
        """Move the targets by the propagated change of log expression; back to the input scale."""
        l0, l1 = self.normalize(x0.float()), self.normalize(x1.float())
        safe = cols.clamp_min(0)
        d0 = (l1.gather(1, safe) - l0.gather(1, safe)) * valid  # (B, width)
        d = torch.einsum("bw,bwg->bg", d0, prop)
        logged = (l1 + d).clamp_min(0)
        if not self.is_counts:  # log data: used as is
            return logged.to(x1.dtype)
        lib = x0.float().sum(1, keepdim=True).clamp_min(1.0)
        return (torch.expm1(logged) * lib / TARGET_SUM).to(x1.dtype)


def _columns_nonzero(X, genes: np.ndarray, chunk: int = 8192) -> list[np.ndarray]:
    """For each gene (column), the rows where it is nonzero; ``X`` read in row blocks (backed too)."""
    genes = np.asarray(genes)
    found: list[list[np.ndarray]] = [[] for _ in genes]
    for start, block in _expression.iter_rows(X, chunk):
        if sparse.issparse(block):
            Xc = sparse.csc_matrix(sparse.csr_matrix(block)[:, genes])
            Xc.eliminate_zeros()
            for i in range(len(genes)):
                found[i].append(start + Xc.indices[Xc.indptr[i] : Xc.indptr[i + 1]])
        else:
            for i, g in enumerate(genes):
                found[i].append(start + np.flatnonzero(block[:, g]))
    return [np.sort(np.concatenate(f)) if f else np.zeros(0, dtype=int) for f in found]


def _dense_column(X, rows: np.ndarray, gene: int) -> np.ndarray:
    """Values of one gene at ``rows`` (any order), reading only those rows."""
    rows = np.asarray(rows)
    order = np.argsort(rows, kind="stable")
    sub = _expression.read_rows(X, rows[order])
    col = sub[:, gene]
    if sparse.issparse(col):
        col = col.toarray()
    out = np.empty(len(rows), dtype=np.float64)
    out[order] = np.asarray(col, dtype=np.float64).ravel()
    return out
