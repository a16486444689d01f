"""Fate probabilities on the directed cell chain (methods mixed into KDCPT; maths in :mod:`scanpy_kdcpt.markov`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scanpy import logging as logg
from scipy import sparse

from .. import markov
from .._errors import InvalidInputError, KeyNotFoundError
from .._utils import import_cellrank
from ..results import Fates

if TYPE_CHECKING:
    from anndata import AnnData

    from ._base import KDCPTLike


class FateMixin:
    """Absorption of the directed cell chain into terminal phenotypes, and the hand-over to CellRank."""

    def get_fate_probabilities(
        self: KDCPTLike,
        adata: AnnData | None = None,
        *,
        terminal: str | list[str] | None = None,
        core: float = 0.5,
        memberships: np.ndarray | None = None,
    ) -> Fates:
        """Fate probabilities: absorption of each cell's directed chain into terminal phenotypes.

        Needs :meth:`compute_transitions` first (its cell chain ``T``). The cells of each
        terminal phenotype (membership ≥ ``core``, largest) are absorbing; the others'
        probabilities of ending in each terminal are solved on ``T``
        (:func:`scanpy_kdcpt.markov.fate_probabilities`).

        Parameters
        ----------
        adata
            The AnnData :meth:`compute_transitions` ran on (default: the registered one).
        terminal
            Terminal phenotype name(s). ``None``: the sinks of the net flux of the coarse
            phenotype chain (:func:`scanpy_kdcpt.markov.terminal_phenotypes`); ``"gpcca"``:
            CellRank's GPCCA terminal macrostates, each mapped onto its most frequent phenotype.
            (Like every ``get_*`` method this leaves the model as it was; ``annotate(terminal=...)``
            records terminals for later calls and knockouts.)
        core
            Least membership of a terminal phenotype for a cell to be absorbing.
        memberships
            Cells × phenotypes memberships to use instead of the stored ones (e.g. a
            knockout's perturbed probabilities).

        Returns
        -------
        :class:`~scanpy_kdcpt.results.Fates` (``probabilities`` cells × terminals, ``mean``
        per phenotype, ``terminal``, ``params``). Cells that reach no terminal get NaN rows
        and a warning. :func:`scanpy_kdcpt.writers.write_fates` writes it
        (``.obsm["{key}_fate_probabilities"]``, ``.uns[key]["fate"]``, ``["fate_terminal"]``).

        """
        state = self._stored_chain(adata)
        target = self.adata if adata is None else adata
        T = state.cell_chain
        M = state.memberships if memberships is None else np.asarray(memberships, dtype=float)
        names = list(self.classes_)
        if terminal is None:
            P = markov.coarse_grain(T, M)
            codes = markov.terminal_phenotypes(P, M.sum(0))
            how = "flux"
            if not len(codes):
                raise InvalidInputError(
                    "No phenotype is a sink of the net flux: pass terminal= (phenotype names) or terminal='gpcca'."
                )
        elif isinstance(terminal, str) and terminal == "gpcca":
            codes, how = _gpcca_terminal(T, M), "gpcca"
        else:
            terminal = terminal_names(terminal, names)
            codes, how = np.array([names.index(t) for t in terminal]), "given"
        F = markov.fate_probabilities(T, M, codes, core=core, names=names)
        stuck = np.isnan(F).any(1)
        if stuck.any():
            obs = list(target.obs_names[stuck][:5])
            logg.warning(
                f"{int(stuck.sum())} cell(s) reach no terminal phenotype (e.g. {obs}): their fate rows are NaN."
            )
        term_names = [names[c] for c in codes]
        if len(codes) == 1 and how != "given":
            found = "net flux" if how == "flux" else "GPCCA"
            logg.warning(
                f"Only one terminal phenotype ({term_names[0]!r}, from the {found}): "
                "every cell that reaches it has fate 1, so these fates say nothing about a choice. Name the end "
                "points with terminal=[...] (phenotype names)."
            )
        mean = markov.mean_fate(F, M)
        return Fates(
            probabilities=pd.DataFrame(F, index=target.obs_names, columns=term_names),
            mean=pd.DataFrame(mean, index=pd.Index(names, name="phenotype"), columns=term_names),
            terminal=term_names,
            params={"terminal_from": how, "core": float(core), "n_unreached": int(stuck.sum())},
        )

    def to_cellrank(self: KDCPTLike, adata: AnnData | None = None):
        """The directed cell chain as a CellRank kernel (``PrecomputedKernel``) to continue in CellRank.

        ``adata`` gets nothing new: the kernel holds the chain; e.g.
        ``cr.estimators.GPCCA(model.to_cellrank())``.
        """
        import_cellrank()  # keeps the warning filters pygpcca would reset
        from cellrank.kernels import PrecomputedKernel

        state = self._stored_chain(adata)
        target = self.adata if adata is None else adata
        return PrecomputedKernel(state.cell_chain, adata=target)


def _gpcca_terminal(T: sparse.csr_matrix, M: np.ndarray) -> np.ndarray:
    """Terminal phenotypes from CellRank's GPCCA: terminal macrostates → their most frequent phenotype."""
    import anndata as ad

    import_cellrank()  # keeps the warning filters pygpcca would reset
    from cellrank.estimators import GPCCA
    from cellrank.kernels import PrecomputedKernel

    n = T.shape[0]
    light = ad.AnnData(X=sparse.csr_matrix((n, 1), dtype=np.float32))
    C = M.shape[1]
    g = GPCCA(PrecomputedKernel(T, adata=light))
    g.fit(n_states=[2, min(C + 1, 12)], cluster_key=None)
    g.predict_terminal_states()
    states = g.terminal_states
    top = M.argmax(1)
    codes = []
    for name in states.cat.categories:
        cells = (states == name).to_numpy()
        codes.append(int(np.bincount(top[cells], minlength=C).argmax()))
    return np.array(sorted(set(codes)))


def terminal_names(terminal: str | Sequence[str], phenotypes: Sequence[str]) -> list[str]:
    """``terminal`` (a name or names) as a list of phenotype names, each checked to be one."""
    names = [str(p) for p in phenotypes]
    terminal = [str(t) for t in ([terminal] if isinstance(terminal, str) else terminal)]
    unknown = [t for t in terminal if t not in names]
    if unknown:
        raise KeyNotFoundError(f"terminal {unknown} not among the phenotypes; phenotypes: {names}.")
    return terminal
