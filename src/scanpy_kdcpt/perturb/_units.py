"""Which genes a knockout perturbs (units), the baseline it is compared with, and argument checks."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from .. import _keys, markov
from .._errors import InvalidInputError, KeyNotFoundError
from .._utils import check_obs_column, did_you_mean, is_mudata

if TYPE_CHECKING:
    from anndata import AnnData

    from ..model._base import KDCPTLike


Mode = Literal["delete", "overexpress"]
Unit = tuple[int, ...]


@dataclass
class Baseline:
    """What every knockout is compared with: base probabilities and the grouping of cells."""

    proba: np.ndarray  # cells × phenotypes
    pred: np.ndarray  # argmax per cell
    groups: np.ndarray  # source group per cell (-1: none)
    row_names: list[str]
    P: np.ndarray  # groups × phenotypes
    n_per_group: np.ndarray


def check_args(mode: str, floor: float, fraction: float, quantile: float, n_null: int) -> None:
    if mode not in ("delete", "overexpress"):
        raise InvalidInputError(f"mode must be 'delete' or 'overexpress', not {mode!r}.")
    if not 0 <= floor < 1:
        raise InvalidInputError(f"floor must be in [0, 1), got {floor}.")
    if not 0 < fraction <= 1:
        raise InvalidInputError(f"fraction must be in (0, 1], got {fraction}.")
    if not 0 < quantile <= 1:
        raise InvalidInputError(f"quantile must be in (0, 1], got {quantile}.")
    if n_null < 0:
        raise InvalidInputError(f"n_null must be 0 or more, got {n_null}.")


def resolve_units(model: KDCPTLike, genes, target: AnnData, keys: _keys.Keys, n_top: int) -> dict[str, Unit]:
    """Names → tuples of gene positions (one unit per gene or gene set)."""
    lookup = {g: i for i, g in enumerate(model.var_names_)}

    def positions(names: Sequence[str]) -> Unit:
        missing = list(dict.fromkeys(g for g in names if g not in lookup))
        if missing:
            more = f"; and {len(missing) - 20} more" if len(missing) > 20 else ""
            raise KeyNotFoundError(
                f"{len(missing)} gene(s) not among the model's genes — "
                f"{did_you_mean(missing[:20], model.var_names_)}{more}"
            )
        return tuple(dict.fromkeys(lookup[g] for g in names))

    measured = _measured(model, target)
    if isinstance(genes, str) and genes in ("key", "all") and genes not in lookup:
        if genes == "all":
            units = {g: (i,) for i, g in enumerate(model.var_names_)}
        else:
            units = {str(g): (lookup[str(g)],) for g in _top_key_genes(model, target, keys, n_top, lookup)}
        absent = [g for g in units if g not in measured]
        if absent:
            warnings.warn(
                f"genes={genes!r}: {len(absent)} gene(s) not measured in the query are left out "
                f"(e.g. {absent[:5]}): the model zero-fills them, so knocking them out changes nothing.",
                UserWarning,
                stacklevel=3,
            )
        return {g: u for g, u in units.items() if g in measured}
    if isinstance(genes, str):
        return _measured_units({genes: positions([genes])}, model, measured)
    if not isinstance(genes, Iterable):
        raise TypeError(
            f"gene names must be strings, got {genes!r} ({type(genes).__name__}); pass {str(genes)!r}, "
            "a list of names, or a dict of gene sets."
        )
    if isinstance(genes, Mapping):
        if not genes:
            raise InvalidInputError("genes is an empty dict; pass {name: [genes, ...]}.")
        sets = {str(name): [m] if isinstance(m, str) else list(m) for name, m in genes.items()}
        empty = [name for name, members in sets.items() if not members]
        if empty:
            raise InvalidInputError(f"gene set(s) {empty} are empty.")
        positions([g for members in sets.values() for g in members])  # every missing gene named at once
        # results are stored by name: a set named like a gene would stand in that gene's own row
        # (.var's knockout effect, the summary), and h5ad keys turn "/" into "_"
        clash = [name for name, members in sets.items() if name in lookup and members != [name]]
        if clash:
            raise InvalidInputError(
                f"gene set name(s) {clash[:5]} are also gene names: results are stored by name, so the set "
                f"would be read as that gene's own knockout. Name the set otherwise, e.g. {clash[0] + ' set'!r}."
            )
        safe: dict[str, str] = {}
        for name in sets:
            other = safe.setdefault(_keys.safe_name(name), name)
            if other != name:
                raise InvalidInputError(
                    f"gene sets {other!r} and {name!r} would be stored under one name ({_keys.safe_name(name)!r}: "
                    "h5ad keys cannot hold '/'); rename one of them."
                )
        return _measured_units({name: positions(members) for name, members in sets.items()}, model, measured)
    genes = list(genes)
    if not genes:
        raise InvalidInputError("genes is empty; pass a gene name, a list, a dict of gene sets, 'key' or 'all'.")
    bad = [g for g in genes if not isinstance(g, str)]
    if bad:
        raise TypeError(f"gene names must be strings, got {bad[:3]}; for gene sets pass a dict {{name: [genes]}}.")
    positions(genes)  # every missing gene named at once, not only the first
    return _measured_units({g: positions([g]) for g in dict.fromkeys(genes)}, model, measured)


def _measured(model: KDCPTLike, target: AnnData) -> set[str]:
    """The model's features measured in ``target`` (all of them for the registered data)."""
    names = list(map(str, model.var_names_))
    if target is model.adata:
        return set(names)
    if is_mudata(target):
        present = set().union(*(map(str, mod.var_names) for mod in target.mod.values()))
    else:
        present = set(map(str, target.var_names))
    return present.intersection(names)


def _measured_units(units: dict[str, Unit], model: KDCPTLike, measured: set[str]) -> dict[str, Unit]:
    """``units``, checked to be measured in the query: a knocked-out gene the query lacks is
    zero-filled in every cell already, so its knockout would report no effect instead of none measured.
    """
    names = model.var_names_
    absent = list(dict.fromkeys(str(names[i]) for u in units.values() for i in u if str(names[i]) not in measured))
    if absent:
        raise KeyNotFoundError(
            f"{len(absent)} knocked-out gene(s) are not measured in the query: {absent[:10]}. The model "
            "zero-fills genes a query lacks, so their knockout would show no effect. Knock them out on "
            "the registered data (adata=None) or on a query that measures them, or leave them out."
        )
    return units


def _top_key_genes(model: KDCPTLike, target: AnnData, keys: _keys.Keys, n_top: int, lookup: dict) -> pd.Index:
    if n_top < 1:
        raise InvalidInputError(f"n_top must be 1 or more, got {n_top}.")
    if keys.rank in target.var and target.var[keys.rank].notna().any():
        rank = target.var[keys.rank].astype(float)
        return rank[rank.index.isin(list(lookup))].nsmallest(n_top).index
    query = None if target is model.adata else target
    return model.get_key_genes(query).overall["rank"].nsmallest(n_top).index


def warn_fixed_embedding(model: KDCPTLike) -> None:
    """Once per model: a knockout without ``embed_fn`` leaves the external embedding unperturbed.

    Not said when the prediction does not read the embedding: with the first stage alone
    (``mix = 0``) the prediction is the linear model's, which reads the (perturbed) genes.
    """
    module = model.module
    if not getattr(module, "external_embedding", False) or getattr(model, "_ko_embedding_warned", False):
        return
    first_stage = bool(getattr(module, "linear_stage", False))
    if first_stage and float(module.mix) == 0.0:
        return
    reached = "the convex first stage and the gene-token branch" if first_stage else "only the gene-token branch"
    warnings.warn(
        f"This model reads an external embedding (embedding_key): knockouts change {reached} "
        "(Cell Learner); the prediction branch keeps the unperturbed embedding. Pass embed_fn (the "
        "model that made the embedding, e.g. a trained scVI, or a function expression → embedding) to "
        "re-embed the perturbed cells, or set up without embedding_key.",
        UserWarning,
        stacklevel=3,
    )
    model._ko_embedding_warned = True


def baseline(model: KDCPTLike, target: AnnData, query, groupby: str | None, batch_size: int | None) -> Baseline:
    proba = model._softmax(model.get_logits(query, batch_size=batch_size))
    pred = proba.argmax(1)
    if groupby is None:
        codes, labelled = model.labels_(query)
        groups, names = np.where(labelled, codes, pred).astype(np.int64), list(model.classes_)
    else:
        check_obs_column(target, groupby, "groupby")
        raw = target.obs[groupby]
        if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw) and raw.nunique() > 50:
            raise InvalidInputError(
                f"groupby {groupby!r} holds numbers with {raw.nunique()} distinct values, not groups of cells: "
                "pass a column of cell types or clusters."
            )
        # a category without a cell would be a source row of zeros in every table
        col = raw.astype("category").cat.remove_unused_categories()
        groups, names = col.cat.codes.to_numpy().astype(np.int64), list(map(str, col.cat.categories))
    M = markov.memberships(groups, len(names))
    n_per_group = np.asarray(M.sum(0)).ravel()
    P = markov.row_normalize(np.asarray(M.T @ proba), empty="zero")
    return Baseline(proba, pred, groups, names, P, n_per_group)
