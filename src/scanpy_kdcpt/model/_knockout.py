"""Key genes from the Cell Learner and in-silico knockouts (methods mixed into KDCPT).

Key genes are read off the Cell Learner's blended token scores, accumulated per phenotype over
minibatches (phenotypes × genes sums, never cells × genes). Knockouts zero (or overexpress) a
gene in the input of the cells that express it, rerun the network on those cells only, and
compare the posterior transition matrix before and after.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import torch
from scipy import sparse

from .. import _keys
from .._constants import REGISTRY_KEYS
from .._errors import KeyNotFoundError
from . import _data

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)

#: genes ranked per phenotype in ``.uns[key]["key_genes"]``
N_RANKED = 100
#: default number of genes flagged ``{key}_key_gene``
N_KEY_GENES = 50


# -------------------------------------------------------------------------------------------
# result containers
# -------------------------------------------------------------------------------------------
@dataclass
class KeyGenes:
    """Key genes of a KDCPT model.

    Attributes
    ----------
    overall
        Genes × ``score`` (mean Cell Learner score over all cells; 0 where the gene is not a
        token), ``selected_frac`` (fraction of cells in which the Cell Learner selects it) and
        ``rank`` (1 = highest score), indexed by ``var_names``.
    scores
        Genes × phenotypes: mean score over the cells of each phenotype.
    selected_frac
        Genes × phenotypes: fraction of each phenotype's cells in which the gene is selected.
    n_cells
        Cells per phenotype (known label, else prediction).

    """

    overall: pd.DataFrame
    scores: pd.DataFrame
    selected_frac: pd.DataFrame
    n_cells: pd.Series

    def top(self, phenotype: str, n: int = 10) -> pd.Series:
        """The ``n`` genes with the highest mean score in ``phenotype`` (score as values)."""
        if phenotype not in self.scores.columns:
            raise KeyNotFoundError(f"{phenotype!r} is not a phenotype; phenotypes: {list(self.scores.columns)}.")
        return self.scores[phenotype].nlargest(n)

    def ranking(self, n: int = N_RANKED) -> pd.DataFrame:
        """Tidy per-phenotype ranking: ``phenotype``, ``gene``, ``rank``, ``score``, ``selected_frac``."""
        rows = []
        n = min(n, self.scores.shape[0])
        for ph in self.scores.columns:
            top = self.scores[ph].nlargest(n)
            rows.append(
                pd.DataFrame(
                    {
                        "phenotype": ph,
                        "gene": top.index.astype(str),
                        "rank": np.arange(1, len(top) + 1),
                        "score": top.to_numpy(np.float64),
                        "selected_frac": self.selected_frac.loc[top.index, ph].to_numpy(np.float64),
                    }
                )
            )
        out = pd.concat(rows, ignore_index=True)
        out["phenotype"] = pd.Categorical(out["phenotype"], categories=list(map(str, self.scores.columns)))
        return out


@dataclass
class KnockoutResult:
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
        ``null_mean``, ``null_low``, ``null_high`` (2.5 / 97.5 % of the null effects).
    transition_matrix
        The unperturbed posterior transition matrix ``P`` (sources × phenotypes).
    null
        Tidy null draws: ``gene`` (the tested gene), ``null_gene``, ``effect``.
    params
        Parameters of the screen.

    """

    table: pd.DataFrame
    summary: pd.DataFrame
    transition_matrix: pd.DataFrame
    null: pd.DataFrame = field(default_factory=pd.DataFrame)
    params: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"KnockoutResult: {len(self.summary)} knockout(s) ({self.params.get('mode', '?')}), "
            f"{int(self.table['terminated'].sum()) if len(self.table) else 0} terminated transition(s); "
            "fields table, summary, transition_matrix, null, params"
        )


# -------------------------------------------------------------------------------------------
# helpers (numpy only)
# -------------------------------------------------------------------------------------------
def posterior_transition(proba: np.ndarray, groups: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """``P[i, j]`` = mean over the cells of group ``i`` of ``p(j)``; returns ``(P, cells per group)``.

    Cells with ``group < 0`` are left out; empty groups get a zero row.
    """
    ok = groups >= 0
    n = np.bincount(groups[ok], minlength=n_groups).astype(np.float64)
    sums = np.zeros((n_groups, proba.shape[1]))
    np.add.at(sums, groups[ok], proba[ok])
    return sums / np.maximum(n, 1)[:, None], n


def total_variation(P: np.ndarray, Q: np.ndarray, weights: np.ndarray) -> float:
    """Mean total-variation distance between the rows of ``P`` and ``Q`` (rows with cells only)."""
    tv = 0.5 * np.abs(P - Q).sum(1)
    rows = weights > 0
    return float(tv[rows].mean()) if rows.any() else 0.0


def expression_matched(
    features: np.ndarray, tested: np.ndarray, exclude: np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """``n`` genes drawn from the ``3 n`` genes closest to gene ``tested`` in rank-normalised
    (mean expression, fraction expressing), excluding ``exclude``.
    """
    ranks = np.column_stack([pd.Series(f).rank(pct=True).to_numpy() for f in features.T])
    d = np.sqrt(((ranks - ranks[tested]) ** 2).sum(1))
    d[exclude] = np.inf
    pool = np.argsort(d, kind="stable")[: max(3 * n, n)]
    pool = pool[np.isfinite(d[pool])]
    if len(pool) < n:
        raise ValueError(
            f"Only {len(pool)} genes are available for an expression-matched null of {n} genes; lower n_null."
        )
    return np.sort(rng.choice(pool, n, replace=False))


def _columns_nonzero(X, genes: np.ndarray) -> list[np.ndarray]:
    """For each gene (column), the rows where it is nonzero (sparse or dense, never densified whole)."""
    if sparse.issparse(X):
        Xc = sparse.csc_matrix(X[:, genes]) if len(genes) < X.shape[1] else sparse.csc_matrix(X)
        Xc.eliminate_zeros()
        return [Xc.indices[Xc.indptr[i] : Xc.indptr[i + 1]] for i in range(len(genes))]
    X = np.asarray(X)
    return [np.flatnonzero(X[:, g]) for g in genes]


def _gene_stats(X, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and fraction of nonzero cells, in row chunks."""
    n, g = X.shape
    s = np.zeros(g)
    nz = np.zeros(g)
    for start in range(0, n, chunk):
        block = X[start : start + chunk]
        if sparse.issparse(block):
            block = sparse.csr_matrix(block)
            s += np.asarray(block.sum(0)).ravel()
            nz += np.bincount(block.indices[block.data != 0], minlength=g)
        else:
            block = np.asarray(block)
            s += block.sum(0)
            nz += (block != 0).sum(0)
    return s / max(n, 1), nz / max(n, 1)


# -------------------------------------------------------------------------------------------
# the mixin
# -------------------------------------------------------------------------------------------
class KnockoutMixin:
    """Key genes and in-silico knockouts."""

    # -- key genes -----------------------------------------------------------------------------
    def get_key_genes(
        self,
        adata: AnnData | None = None,
        *,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> KeyGenes:
        """Key genes from the Cell Learner's token scores.

        For every gene: its mean Cell Learner score (attention blended with the prior) over all
        cells and over the cells of each phenotype (0 in cells where it is not a token), and
        the fraction of cells in which it is among the selected tokens. Cells are grouped by
        their known phenotype, else by their prediction. Computed in minibatches: memory is
        phenotypes × genes, never cells × genes.

        Parameters
        ----------
        adata
            The registered AnnData (default) or a query (genes aligned by name).
        indices
            Cells to use (default all).
        batch_size
            Cells per forward pass.
        progress
            Show a progress bar.

        Returns
        -------
        :class:`~scanpy_kdcpt.model.KeyGenes` with ``overall`` (genes × ``score``,
        ``selected_frac``, ``rank``), ``scores`` and ``selected_frac`` (genes × phenotypes)
        and ``n_cells`` per phenotype.

        """
        self._check_if_trained(warn=True)
        n_genes = len(self.var_names_)
        n_cls = len(self.classes_)
        codes, labelled = self.labels_(adata)
        if indices is not None:
            indices = np.asarray(indices)
            codes, labelled = codes[indices], labelled[indices]
        score_sum = np.zeros(n_cls * n_genes)
        sel_sum = np.zeros(n_cls * n_genes)
        n_cells = np.zeros(n_cls)
        for pos, out in self._iterate(
            adata, indices=indices, batch_size=batch_size, progress=progress, description="key genes"
        ):
            pred = out["logits"].argmax(-1).cpu().numpy()
            grp = np.where(labelled[pos], codes[pos], pred).astype(np.int64)
            n_cells += np.bincount(grp, minlength=n_cls)
            gene_idx = out["gene_idx"]
            mask = out["token_mask"].cpu().numpy()
            flat = (grp[:, None] * n_genes + gene_idx.cpu().numpy())[mask]
            score_sum += np.bincount(flat, weights=out["scores"].float().cpu().numpy()[mask], minlength=score_sum.size)
            sel_genes = torch.gather(gene_idx, 1, out["selected_pos"]).cpu().numpy()
            sel_mask = out["selected_mask"].cpu().numpy()
            flat = (grp[:, None] * n_genes + sel_genes)[sel_mask]
            sel_sum += np.bincount(flat, minlength=sel_sum.size)
        score_sum = score_sum.reshape(n_cls, n_genes)
        sel_sum = sel_sum.reshape(n_cls, n_genes)
        total = max(n_cells.sum(), 1)
        genes = pd.Index(self.var_names_, name="gene")
        score = score_sum.sum(0) / total
        overall = pd.DataFrame({"score": score, "selected_frac": sel_sum.sum(0) / total}, index=genes)
        overall["rank"] = overall["score"].rank(ascending=False, method="first").astype(np.int64)
        denom = np.maximum(n_cells, 1)[:, None]
        return KeyGenes(
            overall=overall,
            scores=pd.DataFrame((score_sum / denom).T, index=genes, columns=self.classes_),
            selected_frac=pd.DataFrame((sel_sum / denom).T, index=genes, columns=self.classes_),
            n_cells=pd.Series(n_cells.astype(np.int64), index=self.classes_, name="n_cells"),
        )

    def _write_key_genes(
        self,
        adata: AnnData,
        keys: _keys.Keys,
        *,
        n_top: int | None = None,
        batch_size: int | None = None,
        key_genes: KeyGenes | None = None,
    ) -> KeyGenes:
        """Write key-gene scores into ``adata``.

        Sets ``.var``: ``{key}_score``, ``{key}_selected_frac``, ``{key}_rank``,
        ``{key}_key_gene`` (the ``n_top`` highest scores; default ``min(50, max(5, n_genes // 10))``)
        and ``.uns[key]["key_genes"]``: a tidy DataFrame (``phenotype``, ``gene``, ``rank``,
        ``score``, ``selected_frac``) of the top genes of each phenotype.
        """
        if key_genes is None:
            key_genes = self.get_key_genes(None if adata is self.adata else adata, batch_size=batch_size)
        overall = key_genes.overall
        n = len(overall)
        if n_top is None:
            n_top = min(N_KEY_GENES, max(5, n // 10))
        n_top = min(int(n_top), n)
        # a query's genes may be ordered differently: align by name, genes unknown to the model get NaN
        ov = overall.reindex(adata.var_names.astype(str))
        adata.var[keys.score] = ov["score"].to_numpy(np.float32)
        adata.var[keys.selected_frac] = ov["selected_frac"].to_numpy(np.float32)
        adata.var[keys.rank] = ov["rank"].to_numpy(np.float64)
        adata.var[keys.key_gene] = (ov["rank"] <= n_top).to_numpy(bool)
        uns = adata.uns.setdefault(keys.uns, {})
        uns[_keys.UNS_KEY_GENES] = key_genes.ranking(N_RANKED)
        logger.info(
            "added .var: %s, %s, %s, %s; .uns[%r][%r]",
            keys.score,
            keys.selected_frac,
            keys.rank,
            keys.key_gene,
            keys.uns,
            _keys.UNS_KEY_GENES,
        )
        return key_genes

    # -- knockouts ----------------------------------------------------------------------------
    def knockout(
        self,
        genes: str | Sequence[str] | Mapping[str, Sequence[str]],
        adata: AnnData | None = None,
        *,
        mode: Literal["delete", "overexpress"] = "delete",
        n_top: int = 20,
        n_null: int = 0,
        groupby: str | None = None,
        floor: float = 0.05,
        fraction: float = 0.5,
        quantile: float = 0.99,
        only_expressing: bool = True,
        batch_size: int | None = None,
        inplace: bool = True,
        key_added: str = _keys.DEFAULT_KEY,
        random_state: int = 0,
        progress: bool = True,
    ) -> KnockoutResult:
        """Simulate gene knockouts (or overexpression) and compare transition matrices.

        A knocked-out gene is set to zero in the model's input: its token drops out of the
        Cell Learner and, with the internal PCA encoder, the prediction branch sees the zero
        too (with an external ``embedding_key`` only the gene-token branch does; a warning
        says so once). Only the cells that express the gene change, so only they are rerun
        (``only_expressing``); the others keep their base probabilities. The data in
        ``adata`` are never modified.

        Parameters
        ----------
        genes
            A gene name, a list of names (knocked out one at a time), a dict
            ``{name: [genes]}`` of gene sets (each knocked out together), ``"key"`` (the
            ``n_top`` highest-ranked key genes) or ``"all"`` (every gene).
        adata
            The registered AnnData (default) or a query (genes aligned by name).
        mode
            ``"delete"`` (set to 0) or ``"overexpress"`` (raise to the ``quantile`` of the
            gene's expression among the cells expressing it; for counts, the quantile of its
            share of the library, scaled by each cell's library size).
        n_top
            Key genes screened with ``genes="key"``.
        n_null
            Expression-matched random genes (or gene sets of the same size) knocked out for an
            empirical p-value per gene (0: none): for each screened gene, ``n_null`` genes drawn
            from the ``3 * n_null`` genes closest to it in (mean expression, fraction of cells
            expressing), among the genes not screened in this call (when at least
            ``2 * n_null`` remain). ``pval = (1 + #null effects ≥ effect) / (1 + n_null)``, so
            use ``n_null ≥ 50`` for p-values below 0.05.
        groupby
            ``.obs`` column that defines the sources (rows) of the transition matrix; default
            the known phenotype of each cell, else its prediction.
        floor, fraction
            A transition with ``P[i, j] > floor`` whose knockout probability falls below
            ``fraction * P[i, j]`` is *terminated*.
        quantile
            The expression quantile used by ``mode="overexpress"``.
        only_expressing
            Rerun only the cells the perturbation changes (``False`` reruns every cell; same
            result, slower — for checking).
        batch_size
            Cells per forward pass (default 512).
        inplace
            Write the results into ``adata`` (below). Earlier results of the same genes and mode
            are replaced, others kept.
        key_added
            Prefix of the keys written.
        random_state
            Seed of the null draws.
        progress
            Show a progress bar.

        Returns
        -------
        :class:`~scanpy_kdcpt.model.KnockoutResult` (``table``, ``summary``,
        ``transition_matrix``, ``null``, ``params``). With ``inplace=True`` also sets

        - ``.uns[key]["knockout"]``: the tidy ``table``;
        - ``.uns[key]["knockout_summary"]``: the ``summary``;
        - ``.uns[key]["knockout_params"]``: the parameters;
        - ``.var["{key}_knockout_effect"]``: effect of each single-gene deletion (NaN where
          not screened).

        """
        self._check_if_trained(warn=True)
        if mode not in ("delete", "overexpress"):
            raise ValueError(f"mode must be 'delete' or 'overexpress', not {mode!r}.")
        if not 0 <= floor < 1:
            raise ValueError(f"floor must be in [0, 1), got {floor}.")
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
        if not 0 < quantile <= 1:
            raise ValueError(f"quantile must be in (0, 1], got {quantile}.")
        if n_null < 0:
            raise ValueError(f"n_null must be 0 or more, got {n_null}.")
        target = self.adata if adata is None else adata
        query = None if target is self.adata else target
        keys = _keys.Keys(key_added)
        units = self._ko_units(genes, target, keys, n_top)
        self._ko_warn_embedding()

        prepared = self._prepare_adata(query)
        X = self.get_anndata_manager(prepared, required=True).get_from_registry(REGISTRY_KEYS.X_KEY)
        n_cells, n_genes = X.shape

        # base probabilities and the grouping of cells (fixed for base and knockout)
        base = self._softmax(self.get_logits(query, batch_size=batch_size))
        base_pred = base.argmax(1)
        groups, row_names = self._ko_groups(target, query, groupby, base_pred)
        P, n_per_group = posterior_transition(base, groups, len(row_names))

        # which genes need a run: tested units, plus the null genes
        rng = np.random.default_rng(random_state)
        mean, frac = _gene_stats(X)
        features = np.column_stack([mean, frac])
        null_draws: dict[str, list[tuple[int, ...]]] = {}
        if n_null:
            # null genes are drawn among the genes not screened in this call, where enough remain
            screened = np.zeros(n_genes, bool)
            screened[[g for gidx in units.values() for g in gidx]] = True
            spare = n_genes - int(screened.sum()) >= 2 * n_null
            for name, gidx in units.items():
                exclude = screened.copy() if spare else np.zeros(n_genes, bool)
                exclude[list(gidx)] = True
                draws = [expression_matched(features, g, exclude, n_null, rng) for g in gidx]
                null_draws[name] = [tuple(int(d[i]) for d in draws) for i in range(n_null)]
        run_units: dict[tuple[int, ...], None] = {}
        for gidx in units.values():
            run_units[tuple(gidx)] = None
        for draws in null_draws.values():
            for d in draws:
                run_units[d] = None
        run_list = list(run_units)

        deltas, changed, n_rerun = self._ko_run(
            run_list,
            X,
            prepared,
            base,
            base_pred,
            groups,
            len(row_names),
            mode,
            quantile,
            only_expressing,
            batch_size,
            progress,
        )
        index_of = {u: i for i, u in enumerate(run_list)}
        effects = np.array(
            [
                total_variation(P + deltas[i] / np.maximum(n_per_group, 1)[:, None], P, n_per_group)
                for i in range(len(run_list))
            ]
        )

        # tidy outputs
        cols = pd.Index(self.classes_)
        tables, summaries, nulls = [], [], []
        src_cat = pd.CategoricalDtype(list(map(str, row_names)))
        tgt_cat = pd.CategoricalDtype(list(map(str, cols)))
        for name, gidx in units.items():
            i = index_of[tuple(gidx)]
            P_ko = P + deltas[i] / np.maximum(n_per_group, 1)[:, None]
            term = (P > floor) & (P_ko < fraction * P) & (n_per_group[:, None] > 0)
            src, tgt = np.meshgrid(np.arange(len(row_names)), np.arange(len(cols)), indexing="ij")
            tables.append(
                pd.DataFrame(
                    {
                        "gene": name,
                        "mode": mode,
                        "source": pd.Categorical.from_codes(src.ravel(), dtype=src_cat),
                        "target": pd.Categorical.from_codes(tgt.ravel(), dtype=tgt_cat),
                        "p_base": P.ravel(),
                        "p_ko": P_ko.ravel(),
                        "delta": (P_ko - P).ravel(),
                        "terminated": term.ravel(),
                    }
                )
            )
            row = {
                "gene": name,
                "mode": mode,
                "effect": effects[i],
                "frac_changed": changed[i] / max(n_cells, 1),
                "n_recomputed": int(n_rerun[i]),
                "n_terminated": int(term.sum()),
                "pval": np.nan,
                "null_mean": np.nan,
                "null_low": np.nan,
                "null_high": np.nan,
            }
            if n_null:
                ne = np.array([effects[index_of[d]] for d in null_draws[name]])
                row["pval"] = (1 + np.sum(ne >= effects[i])) / (1 + n_null)
                row["null_mean"] = float(ne.mean())
                row["null_low"], row["null_high"] = (float(v) for v in np.quantile(ne, [0.025, 0.975]))
                nulls.append(
                    pd.DataFrame(
                        {
                            "gene": name,
                            "null_gene": ["+".join(self.var_names_[g] for g in d) for d in null_draws[name]],
                            "effect": ne,
                        }
                    )
                )
            summaries.append(row)
        table = pd.concat(tables, ignore_index=True)
        summary = pd.DataFrame(summaries).sort_values("effect", ascending=False, kind="stable").reset_index(drop=True)
        null = pd.concat(nulls, ignore_index=True) if nulls else pd.DataFrame(columns=["gene", "null_gene", "effect"])
        params = {
            "mode": mode,
            "groupby": groupby if groupby is not None else "phenotype (known, else predicted)",
            "floor": float(floor),
            "fraction": float(fraction),
            "quantile": float(quantile),
            "n_null": int(n_null),
            "random_state": int(random_state),
            "gene_sets": {
                name: np.asarray([self.var_names_[g] for g in gidx], dtype=object) for name, gidx in units.items()
            },
        }
        result = KnockoutResult(
            table=table,
            summary=summary,
            transition_matrix=pd.DataFrame(P, index=pd.Index(list(map(str, row_names)), name="source"), columns=cols),
            null=null,
            params=params,
        )
        if inplace:
            self._write_knockout(target, keys, result, units)
        return result

    # -- knockout internals ------------------------------------------------------------------
    def _ko_units(self, genes, target: AnnData, keys: _keys.Keys, n_top: int) -> dict[str, tuple[int, ...]]:
        """Names → tuples of gene positions (one unit per gene or gene set)."""
        lookup = {g: i for i, g in enumerate(self.var_names_)}

        def positions(names: Sequence[str]) -> tuple[int, ...]:
            missing = [g for g in names if g not in lookup]
            if missing:
                close = _data.closest_names(missing, self.var_names_)
                detail = "; ".join(
                    f"{g!r}: did you mean {c}?" if c else f"{g!r}: no close name" for g, c in close.items()
                )
                raise KeyNotFoundError(f"{len(missing)} gene(s) not among the model's genes — {detail}")
            return tuple(dict.fromkeys(lookup[g] for g in names))

        if isinstance(genes, str) and genes in ("key", "all") and genes not in lookup:
            if genes == "all":
                return {g: (i,) for i, g in enumerate(self.var_names_)}
            if n_top < 1:
                raise ValueError(f"n_top must be 1 or more, got {n_top}.")
            if keys.rank in target.var and target.var[keys.rank].notna().any():
                rank = target.var[keys.rank].astype(float)
                top = rank[rank.index.isin(list(lookup))].nsmallest(n_top).index
            else:
                top = (
                    self.get_key_genes(None if target is self.adata else target).overall["rank"].nsmallest(n_top).index
                )
            return {str(g): (lookup[str(g)],) for g in top}
        if isinstance(genes, str):
            return {genes: positions([genes])}
        if isinstance(genes, Mapping):
            if not genes:
                raise ValueError("genes is an empty dict; pass {name: [genes, ...]}.")
            out = {}
            for name, members in genes.items():
                members = [members] if isinstance(members, str) else list(members)
                if not members:
                    raise ValueError(f"gene set {name!r} is empty.")
                out[str(name)] = positions(members)
            return out
        genes = list(genes)
        if not genes:
            raise ValueError("genes is empty; pass a gene name, a list, a dict of gene sets, 'key' or 'all'.")
        bad = [g for g in genes if not isinstance(g, str)]
        if bad:
            raise TypeError(f"gene names must be strings, got {bad[:3]}; for gene sets pass a dict {{name: [genes]}}.")
        return {g: positions([g]) for g in dict.fromkeys(genes)}

    def _ko_warn_embedding(self) -> None:
        if getattr(self.module, "external_embedding", False) and not getattr(self, "_ko_embedding_warned", False):
            warnings.warn(
                "This model reads an external embedding (embedding_key): knockouts change only the gene-token "
                "branch (Cell Learner); the prediction branch keeps the unperturbed embedding. Set up without "
                "embedding_key to let knockouts reach both branches.",
                UserWarning,
                stacklevel=3,
            )
            self._ko_embedding_warned = True

    def _ko_groups(self, target, query, groupby, base_pred) -> tuple[np.ndarray, list]:
        if groupby is None:
            codes, labelled = self.labels_(query)
            return np.where(labelled, codes, base_pred).astype(np.int64), list(self.classes_)
        if groupby not in target.obs:
            raise KeyNotFoundError(
                f"groupby {groupby!r} is not a column of adata.obs (columns: {list(target.obs.columns)})."
            )
        col = target.obs[groupby].astype("category")
        return col.cat.codes.to_numpy().astype(np.int64), list(map(str, col.cat.categories))

    def _ko_run(
        self,
        run_list,
        X,
        prepared,
        base,
        base_pred,
        groups,
        n_groups,
        mode,
        quantile,
        only_expressing,
        batch_size,
        progress,
    ):
        """Rerun the perturbed cells of every unit in one stream of minibatches.

        Returns per unit the summed change of probabilities per group (``n_groups × C``),
        the number of cells whose prediction changes, and the number of cells rerun.
        """
        n_cells = X.shape[0]
        n_units = len(run_list)
        n_cls = base.shape[1]
        all_genes = np.unique(np.concatenate([np.asarray(u) for u in run_list]))
        col_of = {g: i for i, g in enumerate(all_genes)}
        nonzero = _columns_nonzero(X, all_genes)

        # the value each gene is raised to when overexpressed
        is_counts = self.data_type_ == "counts"
        lib = None
        level = np.zeros(len(all_genes), dtype=np.float32)
        if mode == "overexpress":
            lib = self._ko_library_sizes(X) if is_counts else None
            for i, g in enumerate(all_genes):
                rows = nonzero[i]
                if not len(rows):
                    continue
                vals = _dense_column(X, rows, g)
                if is_counts:
                    vals = vals / np.maximum(lib[rows], 1)
                level[i] = np.quantile(vals, quantile)

        # (cell, unit) pairs to rerun
        cells, unit_of = [], []
        n_rerun = np.zeros(n_units, dtype=np.int64)
        for u, gidx in enumerate(run_list):
            if not only_expressing:
                rows = np.arange(n_cells)
            elif mode == "delete":
                rows = np.unique(np.concatenate([nonzero[col_of[g]] for g in gidx]))
            else:  # cells below the target level of any gene of the unit
                rows = np.arange(n_cells)
                if all(level[col_of[g]] <= 0 for g in gidx):
                    rows = rows[:0]
            cells.append(rows)
            unit_of.append(np.full(len(rows), u, dtype=np.int64))
            n_rerun[u] = len(rows)
        cells = np.concatenate(cells) if cells else np.zeros(0, np.int64)
        unit_of = np.concatenate(unit_of) if unit_of else np.zeros(0, np.int64)

        deltas = np.zeros((n_units, n_groups, n_cls))
        changed = np.zeros(n_units)
        if not len(cells):
            return deltas, changed, n_rerun
        width = max(len(u) for u in run_list)
        unit_genes = np.full((n_units, width), -1, dtype=np.int64)
        unit_level = np.zeros((n_units, width), dtype=np.float32)
        for u, gidx in enumerate(run_list):
            unit_genes[u, : len(gidx)] = gidx
            unit_level[u, : len(gidx)] = [level[col_of[g]] for g in gidx]
        device = self.device
        unit_genes_t = torch.as_tensor(unit_genes, device=device)
        unit_level_t = torch.as_tensor(unit_level, device=device)
        unit_of_t = torch.as_tensor(unit_of, device=device)
        lib_t = torch.as_tensor(lib, dtype=torch.float32, device=device) if lib is not None else None
        cells_t = torch.as_tensor(cells, device=device)

        def perturb(x: torch.Tensor, pos: np.ndarray) -> torch.Tensor:
            pos_t = torch.as_tensor(pos, device=x.device)
            u = unit_of_t[pos_t]
            cols = unit_genes_t[u]  # (B, width)
            valid = cols >= 0
            rows = torch.arange(x.shape[0], device=x.device)[:, None].expand_as(cols)
            r, c = rows[valid], cols[valid]
            x = x.clone()
            if mode == "delete":
                x[r, c] = 0
            else:
                lvl = unit_level_t[u][valid]
                if lib_t is not None:
                    lvl = lvl * lib_t[cells_t[pos_t]][:, None].expand_as(cols)[valid]
                x[r, c] = torch.maximum(x[r, c], lvl.to(x.dtype))
            return x

        n_pairs = len(cells)
        for pos, out in self._iterate(
            prepared,
            indices=cells,
            batch_size=batch_size,
            transform=perturb,
            progress=progress,
            description=f"knockout ({n_units} genes, {n_pairs} cell runs)",
        ):
            p_ko = self._softmax(out["logits"].float().cpu().numpy())
            c = cells[pos]
            u = unit_of[pos]
            g = groups[c]
            ok = g >= 0
            np.add.at(deltas, (u[ok], g[ok]), p_ko[ok] - base[c[ok]])
            changed += np.bincount(u, weights=(p_ko.argmax(1) != base_pred[c]), minlength=n_units)
        return deltas, changed, n_rerun

    def _ko_library_sizes(self, X) -> np.ndarray:
        return np.asarray(X.sum(1)).ravel().astype(np.float64)

    def _write_knockout(self, adata: AnnData, keys: _keys.Keys, result: KnockoutResult, units) -> None:
        uns = adata.uns.setdefault(keys.uns, {})
        table, summary = result.table.copy(), result.summary.copy()
        old_t, old_s = uns.get(_keys.UNS_KNOCKOUT), uns.get(_keys.UNS_KNOCKOUT_SUMMARY)
        old_params = uns.get("knockout_params", {})
        same_setup = all(str(old_params.get(k)) == str(result.params[k]) for k in ("groupby", "floor", "fraction"))
        if isinstance(old_t, pd.DataFrame) and isinstance(old_s, pd.DataFrame) and len(old_s):
            if same_setup and "mode" in old_s.columns:
                done = set(zip(summary["gene"], summary["mode"], strict=True))
                keep_s = ~pd.Series(list(zip(old_s["gene"], old_s["mode"], strict=True))).isin(done).to_numpy()
                keep_t = ~pd.Series(list(zip(old_t["gene"], old_t["mode"], strict=True))).isin(done).to_numpy()
                replaced = int((~keep_s).sum())
                if replaced:
                    logger.info("replaced earlier knockout results of %d gene(s)", replaced)
                summary = pd.concat([old_s[keep_s], summary], ignore_index=True)
                table = pd.concat([old_t[keep_t], table], ignore_index=True)
                for col in ("source", "target"):
                    table[col] = table[col].astype(str).astype(result.table[col].dtype)
                summary = summary.sort_values("effect", ascending=False, kind="stable").reset_index(drop=True)
            else:
                logger.warning(
                    "earlier knockout results in .uns[%r] used other settings (groupby / floor / fraction) "
                    "and are replaced",
                    keys.uns,
                )
        for col in ("gene", "mode"):
            table[col] = table[col].astype(str)
            summary[col] = summary[col].astype(str)
        uns[_keys.UNS_KNOCKOUT] = table
        uns[_keys.UNS_KNOCKOUT_SUMMARY] = summary
        uns["knockout_params"] = {k: v for k, v in result.params.items() if k != "gene_sets"}
        uns["knockout_params"]["gene_sets"] = {
            _keys.safe_name(k): v for k, v in result.params["gene_sets"].items() if len(v) > 1
        }
        # .var: effect of single-gene deletions
        single = summary[(summary["mode"] == "delete") & summary["gene"].isin(list(map(str, adata.var_names)))]
        effect = pd.Series(np.nan, index=adata.var_names.astype(str), dtype=np.float64)
        effect.loc[single["gene"].to_numpy()] = single["effect"].to_numpy(np.float64)
        adata.var[keys.knockout_effect] = effect.to_numpy()
        logger.info(
            "added .uns[%r]: %s, %s, knockout_params; .var: %s",
            keys.uns,
            _keys.UNS_KNOCKOUT,
            _keys.UNS_KNOCKOUT_SUMMARY,
            keys.knockout_effect,
        )


def _dense_column(X, rows: np.ndarray, gene: int) -> np.ndarray:
    col = X[rows][:, gene] if sparse.issparse(X) else np.asarray(X)[rows, gene]
    if sparse.issparse(col):
        col = col.toarray()
    return np.asarray(col, dtype=np.float64).ravel()
