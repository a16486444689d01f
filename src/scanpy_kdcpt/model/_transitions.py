"""Phenotype transition matrices and their entropy (methods mixed into KDCPT).

The maths lives in :mod:`scanpy_kdcpt.markov`; these methods run the model, build the chains and
return :class:`~scanpy_kdcpt.results.Transitions` objects. They never write into AnnData.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from scanpy import logging as logg
from scipy import sparse

from .. import markov
from .._errors import KeyNotFoundError
from ..results import Predictions, Transitions

if TYPE_CHECKING:
    from anndata import AnnData

    from ._base import KDCPTLike


class TransitionMixin:
    """Transition matrices between phenotypes and their entropies."""

    def get_transition_matrix(
        self: KDCPTLike,
        adata: AnnData | None = None,
        *,
        method: Literal["posterior", "latent"] = "posterior",
        groupby: str | None = None,
        n_neighbors: int = 30,
        softmax_scale: float = 10.0,
        batch_size: int | None = None,
        predictions: Predictions | None = None,
    ) -> Transitions | dict[str, Transitions]:
        """Markov transition matrix between phenotypes (rows sum to 1).

        Each cell belongs to its known phenotype, or to its predicted one when unlabelled.

        Parameters
        ----------
        adata
            The registered AnnData (default) or a query.
        method
            ``"posterior"``: the paper's phenotype-similarity form, ``P[i, j]`` = mean predicted
            probability of ``j`` over the cells of ``i`` (reversible: it shows which phenotypes
            shade into each other, not a direction). ``"latent"``: an undirected kNN Markov
            chain between cells (cosine similarity on the model's fused representation,
            ``softmax(softmax_scale * similarity)`` over each cell's ``n_neighbors``),
            coarse-grained to phenotypes with ``P = D⁻¹ Mᵀ T M``.
        groupby
            ``.obs`` column of conditions (e.g. control / disease): one result per condition,
            each from that condition's cells only (for ``"latent"``, neighbours are sought
            within the condition).
        n_neighbors, softmax_scale
            Neighbours per cell and sharpness of the softmax (``"latent"`` only).
        batch_size
            Cells per forward pass.
        predictions
            Predictions of ``adata`` from :meth:`get_predictions` (skips rerunning the network).

        Returns
        -------
        :class:`~scanpy_kdcpt.results.Transitions` (``matrix``, ``stationary``, ``entropy``,
        ``flux``, and for ``"latent"`` the cell-level ``cell_chain``), or a dict condition →
        Transitions with ``groupby``. :func:`scanpy_kdcpt.writers.write_transitions` writes one
        into an AnnData.

        """
        if method not in ("posterior", "latent"):
            raise ValueError(f"method must be 'posterior' or 'latent', not {method!r}.")
        target = self.adata if adata is None else adata
        groups = _groups(target, groupby)
        pred = predictions if predictions is not None else self.get_predictions(adata, batch_size=batch_size)
        proba = pred.proba.to_numpy()
        assigned = pred.assigned
        C = len(self.classes_)
        Z = self.get_latent_representation(adata, batch_size=batch_size) if method == "latent" else None
        out: dict = {}
        for name, idx in groups.items():
            M = markov.memberships(assigned[idx], C)
            sizes = np.asarray(M.sum(0)).ravel()
            _warn_empty(self.classes_, sizes, groupby, name)
            if method == "posterior":
                P, chain = markov.posterior_transition_matrix(proba[idx], M), None
            else:
                chain = markov.knn_transition_matrix(Z[idx], n_neighbors, softmax_scale)
                P = markov.coarse_grain(chain, M)
            out[name] = Transitions.from_matrix(
                P,
                self.classes_,
                sizes,
                method=method,
                cell_chain=chain,
                direction={"kind": "none", "n_neighbors": n_neighbors} if method == "latent" else {},
            )
        if groupby is None:
            return out[None]
        if method == "latent":  # every condition's chain, block-diagonal in the cells' order
            for name, idx in groups.items():
                out[name].cell_chain = _embed_chain(out[name].cell_chain, idx, target.n_obs)
        return out

    def get_entropy(
        self: KDCPTLike,
        adata: AnnData | None = None,
        *,
        method: Literal["posterior", "latent"] = "posterior",
        batch_size: int | None = None,
    ) -> tuple[pd.DataFrame, float]:
        """Entropy of each phenotype's transitions and overall (natural log).

        ``H(C_i) = -Σ_j P[i, j] log P[i, j]``; overall ``H = Σ_i π_i H(C_i)`` with ``π`` the
        phenotype priors (fraction of cells, labels where known, predictions otherwise).

        Returns
        -------
        A DataFrame indexed by phenotype (``entropy``, ``entropy_normalized`` = entropy /
        log(number of phenotypes), ``prior``) and the overall entropy. The same numbers are
        fields of :meth:`get_transition_matrix`'s result.

        """
        result = self.get_transition_matrix(adata, method=method, batch_size=batch_size)
        return result.entropy, result.entropy_total


def _groups(adata: AnnData, groupby: str | None) -> dict:
    if groupby is None:
        return {None: np.arange(adata.n_obs)}
    if groupby not in adata.obs:
        raise KeyNotFoundError(
            f"groupby {groupby!r} is not a column of adata.obs (columns: {list(adata.obs.columns)})."
        )
    col = adata.obs[groupby]
    if col.isna().any():
        raise ValueError(f"adata.obs[{groupby!r}] has missing values; fill or drop them before grouping.")
    col = col.astype("category")
    return {str(c): np.flatnonzero((col == c).to_numpy()) for c in col.cat.categories if (col == c).any()}


def _warn_empty(phenotypes: list[str], sizes: np.ndarray, groupby: str | None, name) -> None:
    empty = [c for c, k in zip(phenotypes, sizes, strict=True) if k == 0]
    if empty:
        where = f" in {groupby}={name!r}" if groupby is not None else ""
        logg.warning(f"No cells of {empty}{where}: their rows are absorbing (1 on the diagonal).")


def _embed_chain(chain: sparse.spmatrix, idx: np.ndarray, n: int) -> sparse.csr_matrix:
    """A chain over the cells ``idx`` placed into an ``n × n`` matrix."""
    coo = chain.tocoo()
    return sparse.csr_matrix((coo.data, (idx[coo.row], idx[coo.col])), shape=(n, n))
