"""What the model's ``get_*`` methods return: small result objects, written into AnnData by
:mod:`scanpy_kdcpt.writers`.

Each result is a dataclass with ``to_frame()`` (the main table) and ``to_dict()`` (every field);
none holds a reference to the model or the AnnData.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from scipy import sparse

from . import calibration, markov
from ._errors import KeyNotFoundError

#: genes ranked per phenotype in ``.uns[key]["key_genes"]``
N_RANKED = 100
#: default number of genes flagged ``{key}_key_gene``
N_KEY_GENES = 50

__all__ = ["Calibration", "Fates", "KeyGenes", "KnockoutResult", "Predictions", "Transitions"]


def rank_overall(overall: pd.DataFrame) -> pd.Series:
    """Overall gene rank (1 = top): by mean attribution when present, else by mean Cell Learner score."""
    stat = overall["attribution"] if "attribution" in overall else overall["score"]
    return stat.rank(ascending=False, method="first").astype(np.int64)


class _Result:
    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Predictions(_Result):
    """Phenotype probabilities of every cell (softmax of the logits at the model's temperature).

    Attributes
    ----------
    proba
        Cells × phenotypes probabilities, indexed by ``obs_names``.
    labels
        Known phenotype of each cell (``None`` where unlabelled), indexed by ``obs_names``.
    temperature
        The temperature the probabilities were computed at.

    """

    proba: pd.DataFrame
    labels: pd.Series
    temperature: float = 1.0

    @property
    def phenotypes(self) -> list[str]:
        return list(map(str, self.proba.columns))

    @property
    def codes(self) -> np.ndarray:
        """Predicted phenotype code (argmax) of each cell."""
        return self.proba.to_numpy().argmax(1)

    @property
    def pred(self) -> pd.Series:
        """Predicted phenotype (categorical) of each cell."""
        return pd.Series(
            pd.Categorical.from_codes(self.codes, categories=self.phenotypes), index=self.proba.index, name="prediction"
        )

    @property
    def assigned(self) -> np.ndarray:
        """Each cell's phenotype code: its known label where there is one, its prediction otherwise."""
        lookup = {c: i for i, c in enumerate(self.phenotypes)}
        known = self.labels.notna().to_numpy()
        out = self.codes.copy()
        out[known] = self.labels[known].astype(str).map(lookup).to_numpy(int)
        return out

    @property
    def confidence(self) -> np.ndarray:
        return calibration.confidence(self.proba.to_numpy())

    @property
    def uncertainty(self) -> np.ndarray:
        return calibration.cosine_uncertainty(self.proba.to_numpy())

    def to_frame(self) -> pd.DataFrame:
        """Cells × (``pred``, ``confidence``, ``uncertainty``, one column of probabilities per phenotype)."""
        out = pd.DataFrame(
            {"pred": self.pred, "confidence": self.confidence, "uncertainty": self.uncertainty}, index=self.proba.index
        )
        return pd.concat([out, self.proba], axis=1)


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
class Calibration(_Result):
    """Temperature scaling and conformal calibration state, or the validation-cell diagnostics.

    ``summary`` holds the scalars (``temperature``, ``ece`` ...), ``reliability`` the
    reliability table at the model's temperature and ``reliability_before`` before calibration.
    """

    summary: dict
    reliability: pd.DataFrame | None = None
    reliability_before: pd.DataFrame | None = None

    def to_frame(self) -> pd.DataFrame:
        return self.reliability if self.reliability is not None else pd.DataFrame()

    def to_dict(self) -> dict:
        out = dict(self.summary)
        if self.reliability is not None:
            out["reliability"] = self.reliability
        if self.reliability_before is not None:
            out["reliability_before"] = self.reliability_before
        return out


@dataclass
class KeyGenes(_Result):
    """Key genes of a KDCPT model.

    Attributes
    ----------
    overall
        Genes × ``score`` (mean Cell Learner score over all cells; 0 where the gene is not a
        token), ``selected_frac`` (fraction of cells in which the Cell Learner selects it),
        ``attention`` and ``attribution`` (their means over all cells, when present) and ``rank``
        (1 = highest mean attribution when present, else highest score), indexed by ``var_names``.
    scores
        Genes × phenotypes: mean score over the cells of each phenotype.
    selected_frac
        Genes × phenotypes: fraction of each phenotype's cells in which the gene is selected.
    n_cells
        Cells per phenotype (known label, else prediction).
    attention
        Genes × phenotypes: mean prior-free attention (the Cell Learner's score before the prior
        is applied) over the cells of each phenotype; ``None`` for results built without it.
    attribution
        Genes × phenotypes: mean over the cells of each phenotype of the gradient of the cell's
        own-phenotype log-probability (with respect to the log-normalised expression, through
        both branches and the fusion) times the gene's expression minus its mean over all cells:
        how much the gene, at its level in these cells compared with the average cell, pushes
        the model towards the phenotype. ``None`` for results built without it. When present it
        ranks the genes (``overall["rank"]`` and the default of :meth:`top` / :meth:`ranking`;
        see :meth:`statistic`).
    expression
        Genes × phenotypes: mean log-normalised expression over the cells of each phenotype
        (with ``attribution``).

    """

    overall: pd.DataFrame
    scores: pd.DataFrame
    selected_frac: pd.DataFrame
    n_cells: pd.Series
    attention: pd.DataFrame | None = None
    attribution: pd.DataFrame | None = None
    expression: pd.DataFrame | None = None

    @property
    def specificity(self) -> pd.DataFrame:
        """Genes × phenotypes: mean score in the phenotype minus the mean score in all other cells.

        A gene the Cell Learner selects everywhere (a housekeeping gene, an uninformative prior
        gene) scores ≈ 0; a regulator of the phenotype scores high.
        """
        n = self.n_cells.reindex(self.scores.columns).to_numpy(float)
        s = self.scores.to_numpy(float)
        total = (s * n).sum(1, keepdims=True)
        rest = (total - s * n) / np.maximum(n.sum() - n, 1)
        return pd.DataFrame(s - rest, index=self.scores.index, columns=self.scores.columns)

    @property
    def mean_expression(self) -> pd.Series:
        """Mean log-normalised expression of each gene over all cells (needs :attr:`expression`)."""
        n = self.n_cells.reindex(self.expression.columns).to_numpy(float)
        return (self.expression * n).sum(1) / max(n.sum(), 1)

    @property
    def default_by(self) -> str:
        """The ranking used when ``by`` is not given: ``"attribution"`` when present, else ``"specificity"``."""
        return "attribution" if self.attribution is not None else "specificity"

    def statistic(self, by: str | None = None) -> pd.DataFrame:
        """Genes × phenotypes table that ranks the genes ``by`` (see :meth:`top`).

        ``"attribution"`` ranks the genes a phenotype expresses above the average cell by their
        attribution; a gene below it (whose *absence* the model reads as evidence, e.g. a
        progenitor TF in a mature type) counts at most 0 there, so that key genes are genes of
        the phenotype. The signed table is :attr:`attribution`.
        """
        by = self.default_by if by is None else by
        if by == "attribution" and self.attribution is not None:
            if self.expression is None:
                return self.attribution
            up = self.expression.to_numpy() > self.mean_expression.to_numpy()[:, None]
            return self.attribution.where(up, self.attribution.clip(upper=0))
        if by == "specificity":
            return self.specificity
        if by == "score":
            return self.scores
        if by == "attention" and self.attention is not None:
            return self.attention
        raise ValueError(
            f"by must be 'attribution' or 'attention' (when present), 'specificity' or 'score', not {by!r}."
        )

    def top(self, phenotype: str, n: int = 10, *, by: str | None = None) -> pd.Series:
        """The ``n`` key genes of ``phenotype`` (values: the ranking statistic).

        ``by``: ``"attribution"`` (default when present: mean gradient × input of the
        phenotype's log-probability), ``"specificity"`` (default otherwise, see
        :attr:`specificity`), ``"score"`` (mean Cell Learner score in the phenotype) or
        ``"attention"`` (mean prior-free attention).
        """
        if phenotype not in self.scores.columns:
            raise KeyNotFoundError(f"{phenotype!r} is not a phenotype; phenotypes: {list(self.scores.columns)}.")
        return self.statistic(by)[phenotype].nlargest(n)

    def ranking(self, n: int = N_RANKED, *, by: str | None = None) -> pd.DataFrame:
        """Tidy per-phenotype ranking, ranked ``by`` (see :meth:`top`).

        Columns ``phenotype``, ``gene``, ``rank``, ``score``, ``selected_frac``, ``specificity``
        (and ``attention`` when present).
        """
        rows = []
        n = min(n, self.scores.shape[0])
        stat = self.statistic(by)
        spec = self.specificity
        for ph in self.scores.columns:
            top = stat[ph].nlargest(n)
            rows.append(
                pd.DataFrame(
                    {
                        "phenotype": ph,
                        "gene": top.index.astype(str),
                        "rank": np.arange(1, len(top) + 1),
                        "score": self.scores.loc[top.index, ph].to_numpy(np.float64),
                        "selected_frac": self.selected_frac.loc[top.index, ph].to_numpy(np.float64),
                        "specificity": spec.loc[top.index, ph].to_numpy(np.float64),
                        **{
                            name: table.loc[top.index, ph].to_numpy(np.float64)
                            for name, table in (("attention", self.attention), ("attribution", self.attribution))
                            if table is not None
                        },
                    }
                )
            )
        out = pd.concat(rows, ignore_index=True)
        out["phenotype"] = pd.Categorical(out["phenotype"], categories=list(map(str, self.scores.columns)))
        return out

    def subset(self, features, *, attribution: bool = True) -> KeyGenes:
        """The key genes of some features only (e.g. one modality's), ranked among themselves;
        ``attribution=False`` drops the attributions (ranked by the Cell Learner's score then).
        """
        features = pd.Index([f for f in map(str, features) if f in self.overall.index], name=self.overall.index.name)
        overall = self.overall.loc[features].copy()
        attribution = attribution and self.attribution is not None
        if not attribution:
            overall = overall.drop(columns="attribution", errors="ignore")
        overall["rank"] = rank_overall(overall)
        return KeyGenes(
            overall=overall,
            scores=self.scores.loc[features],
            selected_frac=self.selected_frac.loc[features],
            n_cells=self.n_cells,
            attention=None if self.attention is None else self.attention.loc[features],
            attribution=self.attribution.loc[features] if attribution else None,
            expression=self.expression.loc[features] if attribution else None,
        )

    def to_frame(self) -> pd.DataFrame:
        return self.overall


@dataclass
class KnockoutResult(_Result):
    """Result of :meth:`~scanpy_kdcpt.KDCPT.knockout`.

    Attributes
    ----------
    table
        Tidy: ``gene``, ``mode``, ``source``, ``target``, ``p_base``, ``p_ko``, ``delta``,
        ``terminated`` — one row per knocked-out gene (or gene set) and transition.
    summary
        One row per gene (or gene set): ``gene``, ``mode``, ``effect`` (mean total-variation
        distance between the rows of ``P_ko`` and ``P``), ``frac_changed`` (fraction of cells
        whose predicted phenotype changes), ``n_recomputed`` (cells rerun), ``n_terminated``,
        ``pval`` (empirical, against expression-matched random genes; NaN without a null),
        ``qval`` (Benjamini–Hochberg across the genes screened), ``null_mean``, ``null_low``,
        ``null_high`` (2.5 / 97.5 % of the null effects). With ``simulate="grn"`` also ``score``
        (mean perturbation score over cells), ``score_pval`` / ``score_qval`` (two-sided, against
        row-shuffled shifts within phenotypes, BH across the knockouts), ``shift_norm`` (mean
        norm of ``Δx``), ``n_shifted`` (cells the shift moves), ``chain_tv`` (mean total-variation
        distance between the rows of ``T_ko`` and ``T``).
    transition_matrix
        The unperturbed transition matrix ``P`` (sources × phenotypes).
    null
        Tidy null draws: ``gene`` (the tested gene), ``null_gene``, ``effect``.
    params
        Parameters of the screen.
    fate
        With a directed chain: tidy fate deltas ``gene``, ``source`` (phenotypes, and ``"all"``
        for the mean over all cells), ``terminal`` (the terminal phenotypes, then ``"not
        reached"``: the mass that reaches no terminal within the chain's horizon), ``fate_base``,
        ``fate_ko``, ``delta``. A phenotype's fate is its cells' probabilities of reaching each
        terminal within the horizon, averaged with their memberships.
    flux
        With a directed chain: tidy ``gene``, ``source``, ``target``, ``p_base``, ``p_ko`` (the
        directed phenotype chain), ``flux_base``, ``flux_ko``, ``delta`` (change of net flux).
    shift
        With ``simulate="grn"``: per knockout, the simulated expression shift ``Δx`` (cells ×
        genes, log scale; in memory only, never written over ``X``).
    shift_score
        With ``simulate="grn"``: cells × knockouts perturbation scores (the shift's effect on each
        cell's expected step against the chain's developmental drift; negative: pushed back).
    chains
        With ``simulate="grn"``: per knockout, the perturbed cell chain ``T_ko``.
    shift_embedding
        With ``simulate="grn"`` and an embedding (``basis``): per knockout, the change of each
        cell's expected step on it (cells × 2), for :func:`scanpy_kdcpt.pl.knockout_shift`.

    """

    table: pd.DataFrame
    summary: pd.DataFrame
    transition_matrix: pd.DataFrame
    null: pd.DataFrame = field(default_factory=pd.DataFrame)
    params: dict = field(default_factory=dict)
    fate: pd.DataFrame | None = None
    flux: pd.DataFrame | None = None
    shift: dict = field(default_factory=dict)
    shift_score: pd.DataFrame | None = None
    chains: dict = field(default_factory=dict)
    shift_embedding: dict = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        return self.summary

    def __repr__(self) -> str:
        return (
            f"KnockoutResult: {len(self.summary)} knockout(s) ({self.params.get('mode', '?')}), "
            f"{int(self.table['terminated'].sum()) if len(self.table) else 0} terminated transition(s); "
            "fields table, summary, transition_matrix, null, params"
        )


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
