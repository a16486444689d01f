"""In-silico knockouts (methods mixed into KDCPT).

A knockout zeroes (or overexpresses) a gene in the input of the cells that express it, reruns
the network on those cells only, and compares the phenotype transition matrix before and after.
The steps: resolve the genes (:func:`_units`), draw expression-matched nulls (:func:`_null_draws`),
plan and stream the perturbed cells (:class:`_Perturbation`, :meth:`KnockoutMixin._rerun`),
then assemble the tidy result (:func:`_assemble`). Maths from :mod:`scanpy_kdcpt.markov` and
:mod:`scanpy_kdcpt.stats`; writing by :func:`scanpy_kdcpt.writers.write_knockout`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import torch
from scipy import sparse

from .. import _expression, _keys, markov, stats, writers
from .._constants import TARGET_SUM
from .._errors import KeyNotFoundError
from .._utils import did_you_mean
from ..results import KnockoutResult
from ._embed import Reembedder, make_reembedder
from ._fate import FateDeltas, resolve_chain
from ._grn import edges_matrix, fit_propagation, warn_without_targets
from ._screen import first_order_deltas

if TYPE_CHECKING:
    from anndata import AnnData

    from ._base import KDCPTLike

Mode = Literal["delete", "overexpress"]
Unit = tuple[int, ...]


@dataclass
class _Baseline:
    """What every knockout is compared with: base probabilities and the grouping of cells."""

    proba: np.ndarray  # cells × phenotypes
    pred: np.ndarray  # argmax per cell
    groups: np.ndarray  # source group per cell (-1: none)
    row_names: list[str]
    P: np.ndarray  # groups × phenotypes
    n_per_group: np.ndarray


@dataclass
class _Deltas:
    """Per unit: summed change of probabilities per group, cells whose prediction changes, cells rerun."""

    sums: np.ndarray  # units × groups × phenotypes
    changed: np.ndarray  # units
    n_rerun: np.ndarray  # units
    pair_dp: np.ndarray | None = None  # (cell, unit) pairs × phenotypes, for fate deltas


class KnockoutMixin:
    """In-silico knockouts and overexpression."""

    def knockout(
        self: KDCPTLike,
        genes: str | Sequence[str] | Mapping[str, Sequence[str]],
        adata: AnnData | None = None,
        *,
        mode: Mode = "delete",
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
        embed_fn: Callable | object | None = None,
        screen: Literal["auto", "exact", "first_order"] = "auto",
        n_exact: int = 50,
        chain=None,
        terminal: Sequence[str] | None = None,
        null_max_corr: float = 0.15,
        propagate: Literal["grn"] | None = None,
        grn: pd.DataFrame | None = None,
        n_steps: int = 1,
    ) -> KnockoutResult:
        """Simulate gene knockouts (or overexpression) and compare transition matrices.

        A knocked-out gene is set to zero in the model's input: its token drops out of the
        Cell Learner and, with the internal PCA encoder, the prediction branch sees the zero
        too. With an external ``embedding_key``, pass ``embed_fn`` (the model that made the
        embedding, or a function) so the perturbed cells are embedded again and the knockout
        reaches the prediction branch; without it only the gene-token branch sees the
        knockout (a warning says so once, and ``params["prediction_branch_fixed"]`` is True).
        Only the cells that express the gene change, so only they are rerun
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
            ``2 * n_null`` remain). ``pval = (1 + #null effects ≥ effect) / (1 + n_null)``
            (use ``n_null ≥ 50`` for p-values below 0.05); ``qval``: Benjamini–Hochberg
            across the genes screened.
        groupby
            ``.obs`` column that defines the sources (rows) of the transition matrix; default
            the known phenotype of each cell, else its prediction.
        floor, fraction
            An off-diagonal transition with ``P[i, j] > floor`` whose knockout probability
            falls below ``fraction * P[i, j]`` is *terminated*.
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
        embed_fn
            For models set up with ``embedding_key``: what made that embedding — any object
            with ``get_latent_representation(adata)`` (every scvi-tools model; it receives an
            AnnData of the perturbed cells with their ``.obs`` and the registered values in
            ``X`` and in the registered layer) or a callable ``expression → embedding``
            (numpy, cells × genes in the model's gene order, values as registered → cells ×
            embedding dims). The perturbed cells get ``stored + embed(x_ko) - embed(x)``: the
            shift the knockout causes, added to the stored embedding. A wrong output shape is
            an error.
        screen
            ``"exact"``: rerun the network for every gene. ``"first_order"``: rank every gene
            by a first-order (gradient) estimate of its deletion effect — one forward and one
            backward pass per phenotype per minibatch, for all genes at once — then recompute
            the ``n_exact`` highest exactly (with their nulls). ``"auto"`` (default): first
            order for deletions of more than ``n_exact`` single genes (``genes="all"`` on a
            real genome), exact otherwise. Genes not recomputed get ``effect`` NaN and their
            estimate in ``effect_first_order``. The first-order estimate follows the gene
            tokens and the internal encoder; with an external embedding it leaves out the
            embedding (the exact recompute re-embeds with ``embed_fn``).
        n_exact
            Genes recomputed exactly after a first-order screen.
        chain
            A directed cell-level chain (cells × cells, row-stochastic, sparse or dense, or a
            :class:`~scanpy_kdcpt.results.Transitions` with a ``cell_chain``) for fate deltas.
            Default: the model's ``transitions_.cell_chain`` when it has one (set by
            ``compute_transitions``), else no fate deltas. The directed phenotype chain is
            ``P = D⁻¹ Mᵀ T M`` with the soft memberships ``M`` (the model's probabilities)
            before and after the knockout, on the same ``T``.
        terminal
            Terminal phenotypes, made absorbing for the fate probabilities (default: those
            recorded with the model's chain).
        null_max_corr
            Genes whose correlation with the tested gene (Pearson on ``log1p`` values) exceeds
            this in absolute value are left out of its null pool, as are its prior targets
            (with ``propagate="grn"``). The pool sizes are reported in the summary
            (``null_pool``, ``null_excluded_targets``, ``null_excluded_correlated``).
        propagate
            ``"grn"``: a knockout also moves the targets of the knocked-out genes through the
            regulatory network ``grn`` — each target's log expression is a ridge regression on
            its prior regulators, fitted on the data over the prior edges (as CellOracle does),
            applied for ``n_steps`` steps. The direct effect (no propagation) is reported beside
            it (``effect_direct``, ``frac_changed_direct`` in the summary, ``delta_direct`` in
            the table). A gene without prior targets gets a warning and its direct effect.
        grn
            TF → target edges (columns ``tf``, ``target``), e.g. DoRothEA read with
            :func:`scanpy_kdcpt.datasets.tf_target_prior`. Also used for the null pool: a
            gene's prior targets are never drawn as its null.
        n_steps
            Propagation steps (1: the direct targets; 2: their targets too; ...).

        Returns
        -------
        :class:`~scanpy_kdcpt.results.KnockoutResult` (``table``, ``summary``,
        ``transition_matrix``, ``null``, ``params``). With ``inplace=True`` also sets

        - ``.uns[key]["knockout"]``: the tidy ``table``;
        - ``.uns[key]["knockout_summary"]``: the ``summary``;
        - ``.uns[key]["knockout_params"]``: the parameters;
        - ``.var["{key}_knockout_effect"]``: effect of each single-gene deletion (NaN where
          not screened, or estimated to first order only).

        With a directed chain also ``.uns[key]["knockout_fate"]`` (``gene``, ``source``,
        ``terminal``, ``fate_base``, ``fate_ko``, ``delta``; ``source="all"``: the mean over all
        cells) and ``.uns[key]["knockout_flux"]`` (``gene``, ``source``, ``target``, ``p_base``,
        ``p_ko`` of the directed chain, ``flux_base``, ``flux_ko``, ``delta``).

        """
        self._check_if_trained(warn=True)
        _check_args(mode, floor, fraction, quantile, n_null)
        if screen not in ("auto", "exact", "first_order"):
            raise ValueError(f"screen must be 'auto', 'exact' or 'first_order', not {screen!r}.")
        if n_exact < 1:
            raise ValueError(f"n_exact must be 1 or more, got {n_exact}.")
        if propagate not in (None, "grn"):
            raise ValueError(f"propagate must be None or 'grn', not {propagate!r}.")
        if propagate == "grn" and grn is None:
            raise ValueError(
                "propagate='grn' needs grn=, a TF → target table (columns 'tf', 'target'), e.g. "
                "kdcpt.datasets.tf_target_prior('dorothea_mm.tsv.gz', genes=adata.var_names)."
            )
        if n_steps < 1:
            raise ValueError(f"n_steps must be 1 or more, got {n_steps}.")
        edges = edges_matrix(grn, self.var_names_) if grn is not None else None
        target = self.adata if adata is None else adata
        query = None if target is self.adata else target
        units = _units(self, genes, target, _keys.Keys(key_added), n_top)
        embedder = make_reembedder(self, embed_fn, target)
        if embedder is None:
            _warn_fixed_embedding(self)
        prepared = self._prepare_adata(query)
        T, terminal = resolve_chain(self, chain, terminal, target.n_obs)
        X = self._registered_matrix(prepared)  # genes (+ regulatory sites with setup_mudata)
        base = _baseline(self, target, query, groupby, batch_size)
        first_order = None
        single = all(len(u) == 1 for u in units.values())
        if screen == "first_order" and (mode != "delete" or not single):
            raise ValueError("screen='first_order' estimates single-gene deletions only; use screen='exact'.")
        if screen == "first_order" or (screen == "auto" and mode == "delete" and single and len(units) > n_exact):
            first_order = _first_order_effects(self, prepared, base, units, batch_size, progress)
            keep = first_order.nlargest(min(n_exact, len(first_order)), keep="first").index
            units = {name: units[name] for name in keep}
        pool: dict = {}
        null = _null_draws(
            X, units, n_null, np.random.default_rng(random_state), targets=edges, max_corr=null_max_corr, pool=pool
        )
        run_list = list(dict.fromkeys([*units.values(), *(d for draws in null.values() for d in draws)]))
        plan = _Perturbation.plan(X, run_list, mode, quantile, only_expressing, self.data_type_ == "counts")
        direct = None
        if propagate == "grn":
            props = fit_propagation(_expression.log_normalize(X, self.data_type_), edges, run_list, n_steps=n_steps)
            warn_without_targets([n for n, u in units.items() if props[run_list.index(u)] is None])
            direct = self._rerun(prepared, plan, base, batch_size, progress, embedder=embedder)
            plan = replace(
                plan, propagation=props, normalize=self.module.normalize, is_counts=self.data_type_ == "counts"
            )
        deltas = self._rerun(prepared, plan, base, batch_size, progress, embedder=embedder, keep_cells=T is not None)
        params = {
            "mode": mode,
            "groupby": groupby if groupby is not None else "phenotype (known, else predicted)",
            "floor": float(floor),
            "fraction": float(fraction),
            "quantile": float(quantile),
            "n_null": int(n_null),
            "null_max_corr": float(null_max_corr),
            "propagate": "None" if propagate is None else propagate,
            "n_steps": int(n_steps),
            "random_state": int(random_state),
            "prediction_branch_fixed": bool(getattr(self.module, "external_embedding", False)) and embedder is None,
            "embed_fn": "None" if embedder is None else embedder.kind,
            "gene_sets": {n: np.asarray([self.var_names_[g] for g in u], dtype=object) for n, u in units.items()},
            "screen": "first_order" if first_order is not None else "exact",
            "n_exact": int(len(units)),
        }
        result = _assemble(self, units, null, run_list, base, deltas, X.shape[0], params)
        if direct is not None:
            plain = _assemble(self, units, null, run_list, base, direct, X.shape[0], params)
            by_gene = plain.summary.set_index("gene")
            for col in ("effect", "frac_changed"):
                result.summary[f"{col}_direct"] = result.summary["gene"].map(by_gene[col]).to_numpy()
            result.table["delta_direct"] = plain.table["delta"].to_numpy()
        if pool:
            for col in ("null_pool", "null_excluded_targets", "null_excluded_correlated"):
                result.summary[col] = result.summary["gene"].map({k: v[col] for k, v in pool.items()})
        if first_order is not None:
            result.summary = _with_first_order(result.summary, first_order, params["mode"])
        if T is not None:
            result.fate, result.flux = _fates(T, terminal, base, plan, deltas, units, run_list, list(self.classes_))
            params["terminal"] = np.asarray(terminal, dtype=object)
        if inplace:
            writers.write_knockout(target, result, key_added=key_added)
        return result

    def _rerun(
        self: KDCPTLike,
        prepared: AnnData,
        plan: _Perturbation,
        base: _Baseline,
        batch_size: int | None,
        progress: bool,
        embedder: Reembedder | None = None,
        keep_cells: bool = False,
    ) -> _Deltas:
        """Rerun the perturbed cells of every unit in one stream of minibatches."""
        n_units, n_groups, n_cls = len(plan.units), len(base.row_names), base.proba.shape[1]
        out = _Deltas(np.zeros((n_units, n_groups, n_cls)), np.zeros(n_units), plan.n_rerun)
        if keep_cells:
            out.pair_dp = np.zeros((len(plan.cells), n_cls), dtype=np.float32)
        if not len(plan.cells):
            return out
        perturb = plan.transform(self.device)

        def perturb_inputs(inputs: dict, pos: np.ndarray) -> dict:
            x0 = inputs["x"].to(self.device)
            x1 = perturb(x0, pos)
            inputs["x"] = x1
            if embedder is not None:
                inputs["embedding"] = embedder.shifted(x0, x1, inputs["embedding"], plan.cells[pos])
            return inputs

        for pos, res in self._iterate(
            prepared,
            indices=plan.cells,
            batch_size=batch_size,
            transform_inputs=perturb_inputs,
            progress=progress,
            description=f"knockout ({n_units} genes, {len(plan.cells)} cell runs)",
        ):
            p_ko = self._softmax(res["logits"].float().cpu().numpy())
            c, u = plan.cells[pos], plan.unit_of[pos]
            g = base.groups[c]
            ok = g >= 0
            np.add.at(out.sums, (u[ok], g[ok]), p_ko[ok] - base.proba[c[ok]])
            if out.pair_dp is not None:
                out.pair_dp[pos] = p_ko - base.proba[c]
            out.changed += np.bincount(u, weights=(p_ko.argmax(1) != base.pred[c]), minlength=n_units)
        return out


# -------------------------------------------------------------------------------------------
# steps
# -------------------------------------------------------------------------------------------
def _check_args(mode: str, floor: float, fraction: float, quantile: float, n_null: int) -> None:
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


def _units(model: KDCPTLike, genes, target: AnnData, keys: _keys.Keys, n_top: int) -> dict[str, Unit]:
    """Names → tuples of gene positions (one unit per gene or gene set)."""
    lookup = {g: i for i, g in enumerate(model.var_names_)}

    def positions(names: Sequence[str]) -> Unit:
        missing = [g for g in names if g not in lookup]
        if missing:
            raise KeyNotFoundError(
                f"{len(missing)} gene(s) not among the model's genes — {did_you_mean(missing, model.var_names_)}"
            )
        return tuple(dict.fromkeys(lookup[g] for g in names))

    if isinstance(genes, str) and genes in ("key", "all") and genes not in lookup:
        if genes == "all":
            return {g: (i,) for i, g in enumerate(model.var_names_)}
        return {str(g): (lookup[str(g)],) for g in _top_key_genes(model, target, keys, n_top, lookup)}
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


def _top_key_genes(model: KDCPTLike, target: AnnData, keys: _keys.Keys, n_top: int, lookup: dict) -> pd.Index:
    if n_top < 1:
        raise ValueError(f"n_top must be 1 or more, got {n_top}.")
    if keys.rank in target.var and target.var[keys.rank].notna().any():
        rank = target.var[keys.rank].astype(float)
        return rank[rank.index.isin(list(lookup))].nsmallest(n_top).index
    query = None if target is model.adata else target
    return model.get_key_genes(query).overall["rank"].nsmallest(n_top).index


def _warn_fixed_embedding(model: KDCPTLike) -> None:
    if getattr(model.module, "external_embedding", False) and not getattr(model, "_ko_embedding_warned", False):
        warnings.warn(
            "This model reads an external embedding (embedding_key): knockouts change only the gene-token "
            "branch (Cell Learner); the prediction branch keeps the unperturbed embedding. Pass embed_fn (the "
            "model that made the embedding, e.g. a trained scVI, or a function expression → embedding) to "
            "re-embed the perturbed cells, or set up without embedding_key.",
            UserWarning,
            stacklevel=3,
        )
        model._ko_embedding_warned = True


def _baseline(model: KDCPTLike, target: AnnData, query, groupby: str | None, batch_size: int | None) -> _Baseline:
    proba = model._softmax(model.get_logits(query, batch_size=batch_size))
    pred = proba.argmax(1)
    if groupby is None:
        codes, labelled = model.labels_(query)
        groups, names = np.where(labelled, codes, pred).astype(np.int64), list(model.classes_)
    else:
        if groupby not in target.obs:
            raise KeyNotFoundError(
                f"groupby {groupby!r} is not a column of adata.obs (columns: {list(target.obs.columns)})."
            )
        col = target.obs[groupby].astype("category")
        groups, names = col.cat.codes.to_numpy().astype(np.int64), list(map(str, col.cat.categories))
    M = markov.memberships(groups, len(names))
    n_per_group = np.asarray(M.sum(0)).ravel()
    P = markov.row_normalize(np.asarray(M.T @ proba), empty="zero")
    return _Baseline(proba, pred, groups, names, P, n_per_group)


def _null_draws(
    X,
    units: dict[str, Unit],
    n_null: int,
    rng: np.random.Generator,
    *,
    targets: sparse.csr_matrix | None = None,
    max_corr: float = 0.15,
    pool: dict | None = None,
) -> dict[str, list[Unit]]:
    """Per unit, ``n_null`` expression-matched units of the same size.

    Never drawn: the unit's genes, their prior targets (``targets``: regulators × genes, when
    given), genes whose correlation with one of the unit's genes (Pearson, on ``log1p`` of the
    values) exceeds ``max_corr`` in absolute value, and the other screened genes (when at least
    ``2 * n_null`` genes remain). ``pool`` (a dict) receives, per unit, the size of the pool
    and the numbers of genes left out as targets and as correlates.
    """
    if not n_null:
        return {}
    n_genes = X.shape[1]
    mean, frac = _gene_stats(X)
    features = np.column_stack([mean, frac])
    screened = np.zeros(n_genes, bool)
    screened[[g for u in units.values() for g in u]] = True
    spare = n_genes - int(screened.sum()) >= 2 * n_null
    corr = _Correlations(X)
    out = {}
    for name, unit in units.items():
        exclude = screened.copy() if spare else np.zeros(n_genes, bool)
        exclude[list(unit)] = True
        tgt = np.zeros(n_genes, bool)
        if targets is not None:
            tgt[np.asarray(targets[list(unit)].sum(0)).ravel() > 0] = True
        cor = np.zeros(n_genes, bool)
        for g in unit:
            cor |= np.abs(corr.of(g)) > max_corr
        cor[list(unit)] = False
        n_tgt, n_cor = int((tgt & ~exclude).sum()), int((cor & ~exclude & ~tgt).sum())
        exclude |= tgt | cor
        if n_genes - int(exclude.sum()) < n_null:  # too strict for this gene: keep the correlates
            exclude &= ~(cor & ~tgt)
            n_cor = 0
        draws = [stats.expression_matched(features, g, exclude, n_null, rng) for g in unit]
        out[name] = [tuple(int(d[i]) for d in draws) for i in range(n_null)]
        if pool is not None:
            pool[name] = {
                "null_pool": int(n_genes - exclude.sum()),
                "null_excluded_targets": n_tgt,
                "null_excluded_correlated": n_cor,
            }
    return out


class _Correlations:
    """Pearson correlation of one gene with every gene, on ``log1p`` values of up to ``max_cells``
    sampled cells (read in row blocks: X is never densified whole, backed data stays on disk).
    """

    def __init__(self, X, max_cells: int = 5000, seed: int = 0):
        n = X.shape[0]
        rows = np.arange(n)
        if n > max_cells:
            rows = np.sort(np.random.default_rng(seed).choice(n, max_cells, replace=False))
        sub = _expression.read_rows(X, rows)
        if sparse.issparse(sub):
            self.X = sparse.csc_matrix(sub, dtype=np.float64).log1p()
        else:
            self.X = np.log1p(np.asarray(sub, dtype=np.float64))
        self.n = len(rows)
        self.mean = np.asarray(self.X.mean(0)).ravel()
        sq = self.X.multiply(self.X) if sparse.issparse(self.X) else self.X**2
        self.sd = np.sqrt(np.maximum(np.asarray(sq.mean(0)).ravel() - self.mean**2, 0))

    def of(self, g: int) -> np.ndarray:
        col = self.X[:, g]
        col = col.toarray().ravel() if sparse.issparse(col) else np.asarray(col).ravel()
        cov = np.asarray(self.X.T @ col).ravel() / self.n - self.mean * self.mean[g]
        with np.errstate(divide="ignore", invalid="ignore"):
            r = cov / (self.sd * self.sd[g])
        return np.nan_to_num(r)


@dataclass
class _Perturbation:
    """Which (cell, unit) pairs to rerun, and how to perturb each unit's genes."""

    units: list[Unit]
    mode: str
    cells: np.ndarray  # cell of each pair
    unit_of: np.ndarray  # unit of each pair
    n_rerun: np.ndarray  # pairs per unit
    level: dict[int, float]  # overexpression level per gene
    library: np.ndarray | None  # library sizes (counts, overexpression only)
    propagation: list | None = None  # per unit: width × genes matrix of propagated log changes
    normalize: Callable | None = None  # input → log-normalised (the module's), with propagation
    is_counts: bool = False

    @classmethod
    def plan(
        cls, X, units: list[Unit], mode: str, quantile: float, only_expressing: bool, is_counts: bool
    ) -> _Perturbation:
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
        return cls(units, mode, np.concatenate(cells), np.concatenate(unit_of), n_rerun, level, library)

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


def _assemble(
    model: KDCPTLike,
    units: dict[str, Unit],
    null: dict[str, list[Unit]],
    run_list: list[Unit],
    base: _Baseline,
    deltas: _Deltas,
    n_cells: int,
    params: dict,
) -> KnockoutResult:
    """Tidy table, summary (effects, p- and q-values) and null draws of a knockout screen."""
    index_of = {u: i for i, u in enumerate(run_list)}
    scale = np.maximum(base.n_per_group, 1)[:, None]
    P_ko = {u: base.P + deltas.sums[i] / scale for u, i in index_of.items()}
    effects = {u: markov.total_variation(P_ko[u], base.P, base.n_per_group) for u in run_list}
    src_cat = pd.CategoricalDtype(base.row_names)
    tgt_cat = pd.CategoricalDtype(list(model.classes_))
    src, tgt = np.meshgrid(np.arange(len(base.row_names)), np.arange(len(model.classes_)), indexing="ij")
    same = np.asarray(base.row_names, dtype=object)[src] == np.asarray(model.classes_, dtype=object)[tgt]
    tables, summaries, nulls = [], [], []
    for name, unit in units.items():
        Pk = P_ko[unit]
        term = (base.P > params["floor"]) & (Pk < params["fraction"] * base.P) & (base.n_per_group[:, None] > 0)
        term &= ~same  # a diagonal entry (staying) is never a terminated transition
        tables.append(
            pd.DataFrame(
                {
                    "gene": name,
                    "mode": params["mode"],
                    "source": pd.Categorical.from_codes(src.ravel(), dtype=src_cat),
                    "target": pd.Categorical.from_codes(tgt.ravel(), dtype=tgt_cat),
                    "p_base": base.P.ravel(),
                    "p_ko": Pk.ravel(),
                    "delta": (Pk - base.P).ravel(),
                    "terminated": term.ravel(),
                }
            )
        )
        i = index_of[unit]
        row = {
            "gene": name,
            "mode": params["mode"],
            "effect": effects[unit],
            "frac_changed": deltas.changed[i] / max(n_cells, 1),
            "n_recomputed": int(deltas.n_rerun[i]),
            "n_terminated": int(term.sum()),
        }
        row.update(_null_summary(effects[unit], [effects[d] for d in null.get(name, [])]))
        summaries.append(row)
        if name in null:
            names = ["+".join(model.var_names_[g] for g in d) for d in null[name]]
            nulls.append(pd.DataFrame({"gene": name, "null_gene": names, "effect": [effects[d] for d in null[name]]}))
    summary = pd.DataFrame(summaries)
    summary["qval"] = stats.benjamini_hochberg(summary["pval"].to_numpy(float))
    summary = summary.sort_values("effect", ascending=False, kind="stable").reset_index(drop=True)
    null_frame = pd.concat(nulls, ignore_index=True) if nulls else pd.DataFrame(columns=["gene", "null_gene", "effect"])
    return KnockoutResult(
        table=pd.concat(tables, ignore_index=True),
        summary=summary,
        transition_matrix=pd.DataFrame(
            base.P, index=pd.Index(base.row_names, name="source"), columns=pd.Index(model.classes_)
        ),
        null=null_frame,
        params=params,
    )


def _first_order_effects(
    model: KDCPTLike, prepared: AnnData, base: _Baseline, units: dict[str, Unit], batch_size, progress
) -> pd.Series:
    """First-order estimate of each single-gene deletion's effect (mean row total variation)."""
    sums = first_order_deltas(
        model, prepared, base.groups, len(base.row_names), batch_size=batch_size, progress=progress
    )
    scale = np.maximum(base.n_per_group, 1)[:, None]
    est = {}
    for name, (g,) in units.items():
        P_ko = np.clip(base.P + sums[g] / scale, 0.0, None)
        est[name] = markov.total_variation(P_ko, base.P, base.n_per_group)
    return pd.Series(est, name="effect_first_order", dtype=float)


def _with_first_order(summary: pd.DataFrame, first_order: pd.Series, mode: str) -> pd.DataFrame:
    """Summary of the exact genes plus one row per gene estimated to first order only."""
    summary = summary.copy()
    summary["exact"] = True
    summary["effect_first_order"] = first_order.reindex(summary["gene"]).to_numpy()
    rest = first_order.drop(summary["gene"], errors="ignore")
    extra = pd.DataFrame({"gene": rest.index.astype(str), "mode": mode, "effect_first_order": rest.to_numpy()})
    extra["exact"] = False
    extra = extra.sort_values("effect_first_order", ascending=False, kind="stable")
    out = pd.concat([summary, extra], ignore_index=True)
    for col in ("n_recomputed", "n_terminated"):
        out[col] = out[col].fillna(0).astype(np.int64)
    return out


def _fates(T, terminal, base: _Baseline, plan: _Perturbation, deltas: _Deltas, units, run_list, phenotypes):
    """Tidy fate and flux deltas of every screened unit on the directed chain ``T``."""
    fd = FateDeltas(T, base.proba, phenotypes, terminal)
    index_of = {u: i for i, u in enumerate(run_list)}
    fates, fluxes = [], []
    for name, unit in units.items():
        sel = plan.unit_of == index_of[unit]
        fate, flux = fd.unit(name, plan.cells[sel], deltas.pair_dp[sel])
        fates.append(fate)
        fluxes.append(flux)
    return pd.concat(fates, ignore_index=True), pd.concat(fluxes, ignore_index=True)


def _null_summary(effect: float, null_effects: list[float]) -> dict:
    if not null_effects:
        return {"pval": np.nan, "null_mean": np.nan, "null_low": np.nan, "null_high": np.nan}
    ne = np.asarray(null_effects, dtype=float)
    low, high = np.quantile(ne, [0.025, 0.975])
    return {
        "pval": stats.empirical_pvalue(effect, ne),
        "null_mean": float(ne.mean()),
        "null_low": float(low),
        "null_high": float(high),
    }


# -------------------------------------------------------------------------------------------
# matrix access that never densifies X whole
# -------------------------------------------------------------------------------------------
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


def _gene_stats(X, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and fraction of nonzero cells, in row chunks."""
    n, g = X.shape
    s, nz = np.zeros(g), np.zeros(g)
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
