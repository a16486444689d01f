"""Key genes per phenotype."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._errors import InvalidInputError, KeyNotFoundError
from ._base import N_RANKED, _Result, rank_overall


@dataclass
class KeyGenes(_Result):
    """Key genes of a KDCPT model.

    Attributes
    ----------
    overall
        Genes × ``score`` (mean Cell Learner score over all cells; 0 where the gene is not a
        token), ``selected_frac`` (fraction of cells in which the Cell Learner selects it),
        ``attention`` (its mean over all cells, when present), ``attribution`` (the phenotypes'
        ``attribution`` averaged weighted by their cells, a phenotype where the gene's mean
        expression is not above the baseline counting at most 0), ``specificity`` (its largest
        :attr:`specificity` over the phenotypes with cells) and ``rank`` (1 = highest
        attribution when present, else highest specificity), indexed by ``var_names``.
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
        own-phenotype logit margin (logit minus the mean logit; with respect to the
        log-normalised expression, through both branches and the fusion) times the gene's
        expression minus the :attr:`baseline`: how much the gene, at its level in these
        cells compared with the average cell, pushes the model towards the phenotype. ``None``
        for results built without it. When present it ranks the genes (``overall["rank"]``
        and the default of :meth:`top` / :meth:`ranking`; see :meth:`statistic`).
    expression
        Genes × phenotypes: mean log-normalised expression over the cells of each phenotype
        (with ``attribution``).
    baseline
        Each gene's mean log-normalised expression over the model's registered (training)
        cells: what the attributions are measured against, so that key genes of a query or of
        some cells (one phenotype alone, say) still compare them with the average training
        cell. ``None``: the mean over the cells analysed (:attr:`mean_expression`).

    """

    overall: pd.DataFrame
    scores: pd.DataFrame
    selected_frac: pd.DataFrame
    n_cells: pd.Series
    attention: pd.DataFrame | None = None
    attribution: pd.DataFrame | None = None
    expression: pd.DataFrame | None = None
    baseline: pd.Series | None = None

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
            reference = self.mean_expression if self.baseline is None else self.baseline
            up = self.expression.to_numpy() > reference.reindex(self.expression.index).to_numpy()[:, None]
            return self.attribution.where(up, self.attribution.clip(upper=0))
        if by == "specificity":
            return self.specificity
        if by == "score":
            return self.scores
        if by == "attention" and self.attention is not None:
            return self.attention
        raise InvalidInputError(
            f"by must be 'attribution' or 'attention' (when present), 'specificity' or 'score', not {by!r}."
        )

    def top(self, phenotype: str, n: int = 10, *, by: str | None = None) -> pd.Series:
        """The ``n`` key genes of ``phenotype`` (values: the ranking statistic).

        ``by``: ``"attribution"`` (default when present: mean gradient × input of the
        phenotype's logit margin), ``"specificity"`` (default otherwise, see
        :attr:`specificity`), ``"score"`` (mean Cell Learner score in the phenotype) or
        ``"attention"`` (mean prior-free attention).
        """
        if phenotype not in self.scores.columns:
            raise KeyNotFoundError(f"{phenotype!r} is not a phenotype; phenotypes: {list(self.scores.columns)}.")
        if not self.n_cells.get(phenotype, 0):
            raise InvalidInputError(
                f"{phenotype!r} has no cells among those analysed: it has no key genes here (phenotypes with "
                f"cells: {self.phenotypes_with_cells})."
            )
        return self.statistic(by)[phenotype].nlargest(n)

    @property
    def phenotypes_with_cells(self) -> list[str]:
        """The phenotypes with at least one cell among those analysed (the others have no key genes)."""
        n = self.n_cells.reindex(self.scores.columns).fillna(0)
        return [str(ph) for ph in self.scores.columns if n[ph] > 0]

    def overall_specificity(self) -> pd.Series:
        """Each gene's largest :attr:`specificity` over the phenotypes with cells."""
        spec = self.specificity[[ph for ph in self.scores.columns if str(ph) in self.phenotypes_with_cells]]
        return spec.max(axis=1) if spec.shape[1] else pd.Series(np.nan, index=self.scores.index)

    def ranking(self, n: int = N_RANKED, *, by: str | None = None) -> pd.DataFrame:
        """Tidy per-phenotype ranking, ranked ``by`` (see :meth:`top`).

        Columns ``phenotype``, ``gene``, ``rank``, ``score``, ``selected_frac``, ``specificity``
        (and ``attention`` when present). Phenotypes without cells among those analysed have
        no rows.
        """
        rows = []
        n = min(n, self.scores.shape[0])
        stat = self.statistic(by)
        spec = self.specificity
        for ph in self.scores.columns:
            if str(ph) not in self.phenotypes_with_cells:
                continue
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
        overall["specificity"] = self.overall_specificity().loc[features]
        overall["rank"] = rank_overall(overall)
        return KeyGenes(
            overall=overall,
            scores=self.scores.loc[features],
            selected_frac=self.selected_frac.loc[features],
            n_cells=self.n_cells,
            attention=None if self.attention is None else self.attention.loc[features],
            attribution=self.attribution.loc[features] if attribution else None,
            expression=self.expression.loc[features] if attribution else None,
            baseline=self.baseline.loc[features] if attribution and self.baseline is not None else None,
        )

    def to_frame(self) -> pd.DataFrame:
        return self.overall
