"""Transition matrices and fate probabilities."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import sparse

from .. import markov
from ._base import _Result


@dataclass
class Transitions(_Result):
    """A phenotype transition matrix, its entropies and phenotype mass; for a directed chain also
    its stationary distribution and net flux.

    Only a chain with a direction (``method="directed"`` biased by velocity, pseudotime, time
    or potency) carries ``stationary`` and ``flux``. The posterior form (and any chain built
    without a direction signal) is a phenotype *similarity*: ``n_i P_ij ≠ n_j P_ji`` there only
    by noise, and the eigenvector of a near-block matrix mixes slowly, so neither a net flux
    nor a stationary state of it means anything; ``mass`` (each phenotype's share of the cells)
    is reported instead.

    Attributes
    ----------
    matrix
        Phenotypes × phenotypes, row-stochastic (``source`` × ``target``).
    entropy
        Per phenotype: ``entropy``, ``entropy_normalized``, ``prior``.
    entropy_total
        Prior-weighted overall entropy.
    mass
        Phenotype mass: each phenotype's share of the membership mass (of the cells, with hard
        memberships), summing to 1. Not a stationary state.
    stationary
        Stationary distribution of a directed chain (one value per phenotype); ``None`` for an
        undirected one (see :attr:`directed`).
    flux
        Net flux ``F - Fᵀ`` with ``F = diag(n) P`` (``n``: membership mass per phenotype) of a
        directed chain; ``None`` for an undirected one.
    method
        ``"posterior"``, ``"latent"`` or ``"directed"``.
    cell_chain
        The cell-level chain (sparse, row-stochastic) it was coarse-grained from, if any.
    direction
        What biased the cell-level chain, and its parameters (``kind="none"``: nothing did).

    """

    matrix: pd.DataFrame
    entropy: pd.DataFrame
    entropy_total: float
    mass: pd.Series
    stationary: np.ndarray | None = None
    flux: pd.DataFrame | None = None
    method: str = "posterior"
    cell_chain: sparse.csr_matrix | None = None
    direction: dict = field(default_factory=dict)

    @staticmethod
    def is_directed(method: str, direction: dict | None = None) -> bool:
        """Whether a chain of this ``method`` and ``direction`` has a direction: ``"directed"``
        biased by a direction signal (``direction["kind"]`` other than ``"none"``).
        """
        kind = (direction or {}).get("kind")
        return method == "directed" and kind != "none"

    @property
    def directed(self) -> bool:
        """``True`` for a chain with a direction (it carries :attr:`stationary` and :attr:`flux`)."""
        return self.is_directed(self.method, self.direction)

    @classmethod
    def from_matrix(
        cls,
        P: np.ndarray,
        phenotypes: list[str],
        sizes: np.ndarray,
        *,
        method: str,
        cell_chain: sparse.spmatrix | None = None,
        direction: dict | None = None,
    ) -> Transitions:
        """Entropies (priors: ``sizes``) and phenotype mass of a phenotype chain; its stationary
        distribution and net flux when it is directed (see :attr:`directed`).
        """
        P = markov.check_stochastic(P)
        sizes = np.asarray(sizes, dtype=float)
        names = list(map(str, phenotypes))
        total = sizes.sum()
        start = sizes / total if total > 0 else None
        table, h_total = markov.entropy(pd.DataFrame(P, index=names), sizes if total > 0 else None)
        frame = pd.DataFrame(P, index=pd.Index(names, name="source"), columns=pd.Index(names, name="target"))
        mass = pd.Series(
            start if start is not None else np.full(len(names), 1.0 / max(len(names), 1)),
            index=pd.Index(names, name="phenotype"),
            name="mass",
        )
        directed = cls.is_directed(method, direction)
        return cls(
            matrix=frame,
            entropy=table,
            entropy_total=h_total,
            mass=mass,
            stationary=markov.stationary_distribution(P, start=start) if directed else None,
            flux=(
                pd.DataFrame(markov.net_flux(P, sizes), index=frame.index, columns=frame.columns) if directed else None
            ),
            method=method,
            cell_chain=None if cell_chain is None else sparse.csr_matrix(cell_chain),
            direction=dict(direction or {}),
        )

    def similarity(self) -> pd.DataFrame:
        """Symmetric phenotype similarity ``S_ij = (n_i P_ij + n_j P_ji) / (n_i + n_j)``
        (``n``: :attr:`mass`), the weight of the undirected graph of an undirected chain.
        """
        return pd.DataFrame(
            markov.symmetrized(self.matrix.to_numpy(float), self.mass.to_numpy(float)),
            index=self.matrix.index,
            columns=self.matrix.columns,
        )

    @property
    def entropy_total_normalized(self) -> float:
        n = self.matrix.shape[0]
        return float(self.entropy_total / np.log(n)) if n > 1 else 0.0

    def to_frame(self) -> pd.DataFrame:
        return self.matrix

    def to_dict(self) -> dict:
        """Every field but the cell chain; ``stationary`` and ``flux`` only for a directed chain."""
        out = {
            "matrix": self.matrix,
            "entropy": self.entropy,
            "entropy_total": self.entropy_total,
            "entropy_total_normalized": self.entropy_total_normalized,
            "phenotype_mass": self.mass,
            "method": self.method,
            "direction": self.direction,
        }
        if self.directed:
            out["stationary"] = self.stationary
            out["flux"] = self.flux
        return out


@dataclass
class Fates(_Result):
    """Fate probabilities: where each cell's directed chain ends (absorption into terminal phenotypes).

    Attributes
    ----------
    probabilities
        Cells × terminal phenotypes, indexed by ``obs_names``; NaN rows for cells from which no
        terminal state is reachable.
    mean
        Phenotypes × terminal phenotypes: membership-weighted mean fate of each phenotype.
    terminal
        The terminal phenotypes (columns of both tables).
    params
        How the terminals were chosen (``"given"``, ``"flux"``, ``"gpcca"``), ``core``, the
        number of cells without a reachable terminal.

    """

    probabilities: pd.DataFrame
    mean: pd.DataFrame
    terminal: list[str]
    params: dict = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        return self.probabilities
