"""Writers: results → AnnData keys.

The only module that writes into an AnnData. Every key name comes from :mod:`._keys`, and every
key written is logged through scanpy's ``logg`` (shown at ``sc.settings.verbosity = "info"``).
``annotate()`` and ``knockout()`` call these; users can too, with results from ``get_*``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scanpy import logging as logg

from . import _keys
from ._utils import chain_fingerprint, is_mudata
from .results import N_KEY_GENES, N_RANKED

if TYPE_CHECKING:
    from anndata import AnnData

    from .results import Calibration, Fates, KeyGenes, KnockoutResult, Predictions, Transitions

__all__ = [
    "write_calibration",
    "write_fates",
    "write_key_genes",
    "write_knockout",
    "write_prediction_sets",
    "write_predictions",
    "write_summary",
    "write_transitions",
]


def _added(where: str, names) -> None:
    logg.info(f"added {where}: " + ", ".join(map(repr, names)))


def _uns(adata: AnnData, key_added: str) -> dict:
    return adata.uns.setdefault(_keys.Keys(key_added).uns, {})


def write_predictions(
    adata: AnnData, result: Predictions, *, key_added: str = _keys.DEFAULT_KEY, colors: list[str] | None = None
) -> None:
    """Set ``.obs``: ``{key}_pred``, ``{key}_proba_<phenotype>``, ``{key}_confidence``,
    ``{key}_uncertainty``; and ``.uns["{key}_pred_colors"]``.

    Earlier outputs of the same key that these predictions would contradict are removed:
    ``{key}_proba_`` columns of phenotypes not predicted here (another model's) and the
    prediction sets (:func:`write_prediction_sets` writes the sets of these predictions).
    """
    keys = _keys.Keys(key_added)
    _keys.check_phenotype_keys(result.phenotypes, key_added, where="the predictions")  # before anything is written
    obs = {keys.pred: result.pred.array}
    for c in result.phenotypes:
        obs[keys.proba(c)] = result.proba[c].to_numpy(np.float32)
    obs[keys.confidence] = result.confidence.astype(np.float32)
    obs[keys.uncertainty] = result.uncertainty.astype(np.float32)
    earlier = adata.uns.get(keys.uns, {}).get(_keys.UNS_CLASSES) if isinstance(adata.uns.get(keys.uns), dict) else None
    if earlier is not None:  # the columns an earlier run wrote, not a user's column that shares the prefix
        stale = [keys.proba(c) for c in earlier if keys.proba(c) in adata.obs.columns and keys.proba(c) not in obs]
    else:
        stale = [c for c in adata.obs.columns if str(c).startswith(keys.proba_prefix) and c not in obs]
    stale += [c for c in (keys.prediction_set, keys.set_size) if c in adata.obs.columns]
    if stale:
        adata.obs.drop(columns=stale, inplace=True)
        logg.info(f"removed .obs {stale}: earlier outputs of key_added={key_added!r} these predictions replace")
    for k, v in obs.items():
        adata.obs[k] = v
    # the phenotypes whose columns these are: a later write knows which columns were of its predecessor
    _uns(adata, key_added)[_keys.UNS_CLASSES] = np.asarray(result.phenotypes, dtype=object)
    _added(".obs", obs)
    if colors is not None:
        adata.uns[keys.colors] = np.asarray(colors, dtype=object)
        _added(".uns", [keys.colors])


def write_prediction_sets(
    adata: AnnData, sets: pd.DataFrame, alpha: float, *, key_added: str = _keys.DEFAULT_KEY
) -> None:
    """Set ``.obs[{key}_prediction_set]`` (e.g. ``"B|T"``) and ``.obs[{key}_set_size]``."""
    keys = _keys.Keys(key_added)
    _keys.check_set_names(sets.columns)
    names = np.asarray(list(map(str, sets.columns)), dtype=object)
    members = [_keys.SET_SEP.join(names[row]) for row in sets.to_numpy()]
    adata.obs[keys.prediction_set] = pd.Categorical(members)
    adata.obs[keys.set_size] = sets.sum(1).to_numpy(np.int32)
    _added(f".obs (conformal alpha={alpha:g})", [keys.prediction_set, keys.set_size])


def write_summary(
    adata: AnnData,
    *,
    key_added: str = _keys.DEFAULT_KEY,
    phenotypes: list[str],
    params: dict,
    metrics: dict,
    history: pd.DataFrame | None,
    version: str,
) -> None:
    """Set ``.uns[key]``: ``classes``, ``params``, ``metrics``, ``history``, ``version``."""
    uns = _uns(adata, key_added)
    uns[_keys.UNS_CLASSES] = np.asarray(phenotypes, dtype=object)
    uns[_keys.UNS_PARAMS] = h5ad_safe(params)
    uns[_keys.UNS_METRICS] = metrics
    written = [_keys.UNS_CLASSES, _keys.UNS_PARAMS, _keys.UNS_METRICS]
    if history is not None:
        uns[_keys.UNS_HISTORY] = history
        written.append(_keys.UNS_HISTORY)
    uns[_keys.UNS_VERSION] = version
    _added(f".uns[{key_added!r}]", [*written, _keys.UNS_VERSION])


def write_calibration(adata: AnnData, result: Calibration, *, key_added: str = _keys.DEFAULT_KEY) -> None:
    """Set ``.uns[key]["calibration"]``."""
    _uns(adata, key_added)[_keys.UNS_CALIBRATION] = result.to_dict()
    _added(f".uns[{key_added!r}]", [_keys.UNS_CALIBRATION])


def write_transitions(adata: AnnData, result: Transitions, *, key_added: str = _keys.DEFAULT_KEY) -> None:
    """Set ``.uns[key]``: ``transition_matrix`` (its columns h5ad-safe names), ``phenotype_mass``,
    ``entropy``, ``entropy_total``, ``entropy_total_normalized``, ``transition_method``,
    ``direction``; for a directed chain (:attr:`~scanpy_kdcpt.results.Transitions.directed`)
    also ``stationary`` and ``flux``, which are removed for an undirected one (the posterior
    form has neither); and ``.obsp["{key}_transitions"]`` when the result carries a cell-level chain.

    Fates written for an earlier chain (``.obsm["{key}_fate_probabilities"]``, ``fate``,
    ``fate_terminal``, ``fate_params``) are removed: :func:`write_fates` writes those of this
    chain. So is an earlier cell-level chain when this result has none (the posterior form).
    """
    keys = _keys.Keys(key_added)
    uns = _uns(adata, key_added)
    removed = [
        k for k in (_keys.UNS_FATE, _keys.UNS_FATE_TERMINAL, _keys.UNS_FATE_PARAMS) if uns.pop(k, None) is not None
    ]
    if adata.obsm.pop(keys.fate_probabilities, None) is not None:
        removed.append(f'.obsm["{keys.fate_probabilities}"]')
    if result.cell_chain is None and adata.obsp.pop(keys.transitions, None) is not None:
        removed.append(f'.obsp["{keys.transitions}"]')
    if removed:
        logg.info(f"removed {removed} of the earlier chain (key_added={key_added!r})")
    _drop_knockout_deltas_of_another_chain(uns, result, key_added)
    # h5ad-safe names ("/" → "_", as the kdcpt_proba_ columns) on both axes, so that
    # P.loc[name, name] works; uns["classes"] keeps the real names in the same order
    safe = [_keys.safe_name(c) for c in map(str, result.matrix.index)]
    uns[_keys.UNS_TRANSITION] = pd.DataFrame(
        result.matrix.to_numpy(float),
        index=pd.Index(safe, name="source"),
        columns=pd.Index(safe, name="target"),
    )
    uns[_keys.UNS_PHENOTYPE_MASS] = result.mass.to_numpy(float)  # in the order of the matrix rows
    uns[_keys.UNS_ENTROPY] = result.entropy
    uns[_keys.UNS_ENTROPY_TOTAL] = float(result.entropy_total)
    uns[_keys.UNS_ENTROPY_TOTAL_NORMALIZED] = result.entropy_total_normalized
    uns[_keys.UNS_TRANSITION_METHOD] = result.method
    uns[_keys.UNS_DIRECTION] = h5ad_safe(result.direction)
    written = [
        _keys.UNS_TRANSITION,
        _keys.UNS_PHENOTYPE_MASS,
        _keys.UNS_ENTROPY,
        _keys.UNS_ENTROPY_TOTAL,
        _keys.UNS_ENTROPY_TOTAL_NORMALIZED,
        _keys.UNS_TRANSITION_METHOD,
        _keys.UNS_DIRECTION,
    ]
    if result.directed:
        uns[_keys.UNS_STATIONARY] = np.asarray(result.stationary, dtype=float)
        uns[_keys.UNS_FLUX] = pd.DataFrame(
            result.flux.to_numpy(float), index=pd.Index(safe, name="source"), columns=pd.Index(safe, name="target")
        )
        written += [_keys.UNS_STATIONARY, _keys.UNS_FLUX]
    else:
        stale = [k for k in (_keys.UNS_STATIONARY, _keys.UNS_FLUX) if uns.pop(k, None) is not None]
        if stale:
            logg.info(f"removed .uns[{key_added!r}] {stale}: an undirected chain has no direction")
    _added(f".uns[{key_added!r}]", written)
    if result.cell_chain is not None:
        if keys.transitions in adata.obsp:
            logg.info(f"replacing .obsp[{keys.transitions!r}]")
        adata.obsp[keys.transitions] = result.cell_chain.tocsr()
        _added(".obsp (cell-level Markov chain, rows sum to 1)", [keys.transitions])


def _drop_knockout_deltas_of_another_chain(uns: dict, result: Transitions, key_added: str) -> None:
    """Knockout fate / flux deltas are of the chain they were computed on (its fingerprint in
    ``knockout_params["chain"]``): kept when the same chain is written again, removed with a
    warning for another chain or none (they contradicted the new ``flux``).
    """
    held = [k for k in (_keys.UNS_KNOCKOUT_FATE, _keys.UNS_KNOCKOUT_FLUX) if k in uns]
    if not held:
        return
    params = uns.get(_keys.UNS_KNOCKOUT_PARAMS)
    theirs = params.get("chain") if isinstance(params, Mapping) else None
    if result.cell_chain is not None and theirs is not None and str(theirs) == chain_fingerprint(result.cell_chain):
        return
    for k in held:
        uns.pop(k)
    warnings.warn(
        f".uns[{key_added!r}] {held} were computed on another cell chain than the one written now: removed "
        "(they would contradict its flux and fates). Rerun model.knockout(...) for this chain.",
        UserWarning,
        stacklevel=3,
    )


def write_fates(adata: AnnData, result: Fates, *, key_added: str = _keys.DEFAULT_KEY) -> None:
    """Set ``.obsm["{key}_fate_probabilities"]`` (cells × terminal phenotypes, a plain float array)
    and ``.uns[key]``: ``fate_terminal`` (the column names), ``fate`` (mean fate per phenotype,
    DataFrame), ``fate_params``.
    """
    keys = _keys.Keys(key_added)
    probs = result.probabilities.reindex(adata.obs_names)
    if keys.fate_probabilities in adata.obsm:
        logg.info(f"replacing .obsm[{keys.fate_probabilities!r}]")
    adata.obsm[keys.fate_probabilities] = probs.to_numpy(np.float64)
    uns = _uns(adata, key_added)
    terminal = list(map(str, result.terminal))
    uns[_keys.UNS_FATE_TERMINAL] = np.asarray(terminal, dtype=object)
    uns[_keys.UNS_FATE] = pd.DataFrame(
        result.mean.to_numpy(float),
        index=pd.Index(list(map(str, result.mean.index)), name="phenotype"),
        columns=pd.Index([_keys.safe_name(t) for t in terminal], name="terminal"),
    )
    uns[_keys.UNS_FATE_PARAMS] = h5ad_safe(result.params)
    _added(".obsm (fate probabilities, NaN rows: no terminal reachable)", [keys.fate_probabilities])
    _added(f".uns[{key_added!r}]", [_keys.UNS_FATE_TERMINAL, _keys.UNS_FATE, _keys.UNS_FATE_PARAMS])


def write_key_genes(
    adata: AnnData,
    result: KeyGenes,
    *,
    key_added: str = _keys.DEFAULT_KEY,
    n_top: int | None = None,
    modalities: dict[str, str] | None = None,
    link_key: str | None = None,
) -> None:
    """Set ``.var``: ``{key}_score``, ``{key}_selected_frac``, ``{key}_rank``, ``{key}_key_gene``
    (the ``n_top`` best ranked: by mean attribution when the result has it, else by specificity;
    default ``min(50, max(5, n_genes // 10))``), ``{key}_attention`` and ``{key}_attribution``
    (the prior-free attention and the mean attribution, when the result has them) and
    ``.uns[key]["key_genes"]``: a tidy DataFrame (``phenotype``, ``gene``, ``rank``, ``score``,
    ``selected_frac``) of the top genes of each phenotype.

    With a MuData and ``modalities`` (``{"rna": name, "regulatory": name}``, from
    ``setup_mudata``) the genes and sites are ranked within their own modality and written to
    ``mdata[rna].var`` / ``.uns[key]["key_genes"]`` (key genes) and ``mdata[regulatory].var``
    (``{key}_score``, ``{key}_selected_frac``, ``{key}_rank``, ``{key}_key_site``, plus the
    ``link_key`` column kept beside them) / ``.uns[key]["key_sites"]`` (sites ranked by the
    specificity of their Cell Learner score, genes by attribution when present); ``mdata.uns[key]`` gets
    both rankings (``key_genes``, ``key_sites``) and ``key_features``, the joint ranking over
    genes and sites.
    """
    if modalities is not None:
        _write_key_features_mudata(adata, result, key_added=key_added, n_top=n_top, modalities=modalities)
        return
    keys = _keys.Keys(key_added)
    overall = result.overall
    n = len(overall)
    n_top = min(N_KEY_GENES, max(5, n // 10)) if n_top is None else n_top
    n_top = min(int(n_top), n)
    # a query's genes may be ordered differently: align by name, genes unknown to the model get NaN
    ov = overall.reindex(adata.var_names.astype(str))
    columns = {
        keys.score: ov["score"].to_numpy(np.float32),
        keys.selected_frac: ov["selected_frac"].to_numpy(np.float32),
        keys.rank: ov["rank"].to_numpy(np.float64),
        keys.key_gene: (ov["rank"] <= n_top).to_numpy(bool),
    }
    stale = []
    for extra, name in (("attention", keys.attention), ("attribution", keys.attribution)):
        if extra in ov:
            columns[name] = ov[extra].to_numpy(np.float32)
        elif name in adata.var:  # of an earlier ranking: it would contradict this one's ranks
            adata.var.pop(name)
            stale.append(name)
    if stale:
        logg.info(f"removed .var {stale} of an earlier key-gene ranking (this result has none)")
    for k, v in columns.items():
        adata.var[k] = v
    _uns(adata, key_added)[_keys.UNS_KEY_GENES] = result.ranking(N_RANKED)
    _added(".var", columns)
    _added(f".uns[{key_added!r}]", [_keys.UNS_KEY_GENES])


def _write_key_features_mudata(mdata, result: KeyGenes, *, key_added: str, n_top, modalities: dict[str, str]) -> None:
    """Key genes into the RNA modality, key sites into the regulatory one (see write_key_genes)."""
    keys = _keys.Keys(key_added)
    for role, entry in (("rna", _keys.UNS_KEY_GENES), ("regulatory", _keys.UNS_KEY_SITES)):
        if modalities[role] not in mdata.mod:  # e.g. an RNA-only query
            continue
        mod = mdata[modalities[role]]
        names = mod.var_names.astype(str)
        # sites are ranked by the Cell Learner, which chooses among genes and sites together; the
        # gradient splits credit between a site and the genes that carry the same signal
        sub = result.subset(names, attribution=role == "rna")
        write_key_genes(mod, sub, key_added=key_added, n_top=n_top)
        if role == "regulatory":
            flag = mod.var.pop(keys.key_gene)
            mod.var[keys.key_site] = flag.to_numpy(bool)
            ranking = mod.uns[key_added].pop(_keys.UNS_KEY_GENES).rename(columns={"gene": "site"})
            mod.uns[key_added][entry] = ranking
            _added(f"mdata[{modalities[role]!r}].var (instead of {keys.key_gene!r})", [keys.key_site])
        _uns(mdata, key_added)[entry] = mod.uns[key_added][entry]
    # the joint ranking names features of both kinds: column ``feature`` and the modality it is in
    joint = result.ranking(N_RANKED).rename(columns={"gene": "feature"})
    where = {
        str(name): mod_name
        for mod_name in modalities.values()
        if mod_name in mdata.mod
        for name in mdata[mod_name].var_names
    }
    joint.insert(2, "modality", pd.Categorical(joint["feature"].map(where), categories=list(modalities.values())))
    _uns(mdata, key_added)[_keys.UNS_KEY_FEATURES] = joint
    _added(f"mdata.uns[{key_added!r}]", [_keys.UNS_KEY_GENES, _keys.UNS_KEY_SITES, _keys.UNS_KEY_FEATURES])


def write_knockout(adata: AnnData, result: KnockoutResult, *, key_added: str = _keys.DEFAULT_KEY) -> None:
    """Set ``.uns[key]``: ``knockout`` (tidy table), ``knockout_summary``, ``knockout_params``
    (and ``knockout_fate`` / ``knockout_flux`` when the result has fate deltas);
    ``.var["{key}_knockout_effect"]``.

    Earlier results of the same genes and mode are replaced, others kept (when they used the
    same ``groupby`` / ``floor`` / ``fraction`` and the same phenotypes; otherwise all are
    replaced, with a warning). The fate and flux deltas of the kept genes stay beside the new
    ones when they were computed from the same base fates (the same chain and terminals);
    otherwise they are dropped, with a warning.
    """
    keys = _keys.Keys(key_added)
    uns = _uns(adata, key_added)
    table, summary, kept = _merge_earlier(uns, result, key_added)
    for frame in (table, summary):
        for col in ("gene", "mode"):
            frame[col] = frame[col].astype(str)
    uns[_keys.UNS_KNOCKOUT] = table
    uns[_keys.UNS_KNOCKOUT_SUMMARY] = summary
    params = {k: v for k, v in result.params.items() if k != "gene_sets"}
    params["gene_sets"] = {_keys.safe_name(k): v for k, v in result.params.get("gene_sets", {}).items() if len(v) > 1}
    if "regulator_null" in params:  # gene names as keys inside the h5ad
        params["regulator_null"] = {_keys.safe_name(k): v for k, v in params["regulator_null"].items()}
    earlier = uns.get(_keys.UNS_KNOCKOUT_PARAMS)
    earlier_chain = earlier.get("chain") if isinstance(earlier, Mapping) else None
    written = [_keys.UNS_KNOCKOUT, _keys.UNS_KNOCKOUT_SUMMARY, _keys.UNS_KNOCKOUT_PARAMS]
    for key, base, pair in (
        (_keys.UNS_KNOCKOUT_FATE, "fate_base", ("source", "terminal")),
        (_keys.UNS_KNOCKOUT_FLUX, "flux_base", ("source", "target")),
    ):
        new = getattr(result, key.removeprefix("knockout_"), None)
        new = new if isinstance(new, pd.DataFrame) else None
        if new is not None and "mode" not in new.columns:  # a result made before modes were recorded
            new = new.copy()
            new.insert(1, "mode", str(result.params.get("mode", "delete")))
        merged = _merge_deltas(uns.get(key), new, kept, base, pair, key_added, key)
        if merged is None:
            uns.pop(key, None)
        else:
            uns[key] = merged
            if isinstance(new, pd.DataFrame) and len(new):
                written.append(key)
    kept_deltas = any(k in uns for k in (_keys.UNS_KNOCKOUT_FATE, _keys.UNS_KNOCKOUT_FLUX))
    if "chain" not in params and earlier_chain is not None and kept_deltas:
        params["chain"] = earlier_chain  # the kept genes' deltas stay of their chain
    uns[_keys.UNS_KNOCKOUT_PARAMS] = h5ad_safe(params)
    # .var: effect of single-gene deletions (each modality's .var for a MuData: genes and sites);
    # a modality none of whose features was deleted gets no all-NaN column
    for target in adata.mod.values() if is_mudata(adata) else [adata]:
        single = summary[(summary["mode"] == "delete") & summary["gene"].isin(list(map(str, target.var_names)))]
        if is_mudata(adata) and single.empty and keys.knockout_effect not in target.var:
            continue
        effect = pd.Series(np.nan, index=target.var_names.astype(str), dtype=np.float64)
        effect.loc[single["gene"].to_numpy()] = single["effect"].to_numpy(np.float64)
        target.var[keys.knockout_effect] = effect.to_numpy()
    _added(f".uns[{key_added!r}]", written)
    _added(".var", [keys.knockout_effect])
    _write_shifts(adata, result, keys)


def _write_shifts(adata: AnnData, result: KnockoutResult, keys: _keys.Keys) -> None:
    """``.obs["{key}_ko_score_<gene>"]`` and ``.obsm["{key}_ko_shift_<gene>"]`` of simulated knockouts."""
    scores = getattr(result, "shift_score", None)
    if isinstance(scores, pd.DataFrame):
        cols = []
        modes = _uns(adata, keys.key_added).setdefault(_keys.UNS_KNOCKOUT_SHIFT_MODE, {})
        for gene in scores.columns:
            adata.obs[keys.ko_score(gene)] = scores[gene].to_numpy(np.float64)
            modes[_keys.safe_name(str(gene))] = str(result.params.get("mode", "delete"))
            cols.append(keys.ko_score(gene))
        _added(".obs (perturbation score: < 0 pushed back against development)", cols)
    emb = getattr(result, "shift_embedding", None) or {}
    bases = _uns(adata, keys.key_added).setdefault(_keys.UNS_KNOCKOUT_SHIFT_BASIS, {}) if emb else {}
    for gene, V in emb.items():
        adata.obsm[keys.ko_shift(gene)] = np.asarray(V)
        bases[_keys.safe_name(str(gene))] = str(result.params.get("shift_basis"))
    if emb:
        _added(f".obsm (shift on {result.params.get('shift_basis')})", [keys.ko_shift(g) for g in emb])


def _merge_earlier(uns: dict, result: KnockoutResult, key_added: str) -> tuple[pd.DataFrame, pd.DataFrame, set]:
    """The new knockout table and summary, with earlier results of other genes kept; and the
    genes kept.
    """
    table, summary = result.table.copy(), result.summary.copy()
    old_t, old_s = uns.get(_keys.UNS_KNOCKOUT), uns.get(_keys.UNS_KNOCKOUT_SUMMARY)
    if not (isinstance(old_t, pd.DataFrame) and isinstance(old_s, pd.DataFrame) and len(old_s)):
        return table, summary, set()
    old_params = uns.get(_keys.UNS_KNOCKOUT_PARAMS, {})
    same = all(str(old_params.get(k)) == str(result.params.get(k)) for k in ("groupby", "floor", "fraction"))
    if str(old_params.get("model_id")) != str(result.params.get("model_id")):
        warnings.warn(
            f"earlier knockout results in .uns[{key_added!r}] come from another model (or another training of this "
            "one) and are replaced: results of different models are not merged.",
            UserWarning,
            stacklevel=4,
        )
        return table, summary, set()
    phenotypes = set(map(str, result.table["source"])) | set(map(str, result.table["target"]))
    for col in ("source", "target"):
        if isinstance(result.table[col].dtype, pd.CategoricalDtype):
            phenotypes |= set(map(str, result.table[col].cat.categories))
    if not same or "mode" not in old_s.columns:
        logg.warning(
            f"earlier knockout results in .uns[{key_added!r}] used other settings (groupby / floor / fraction) "
            "and are replaced"
        )
        return table, summary, set()
    old_phenotypes = set(map(str, old_t["source"])) | set(map(str, old_t["target"]))
    if not old_phenotypes <= phenotypes:
        logg.warning(
            f"earlier knockout results in .uns[{key_added!r}] are of other phenotypes "
            f"(e.g. {sorted(old_phenotypes - phenotypes)[:3]}: another model or grouping) and are replaced"
        )
        return table, summary, set()
    done = set(zip(summary["gene"], summary["mode"], strict=True))

    def keep(frame: pd.DataFrame) -> np.ndarray:
        return ~pd.Series(list(zip(frame["gene"], frame["mode"], strict=True))).isin(done).to_numpy()

    keep_s, keep_t = keep(old_s), keep(old_t)
    if (~keep_s).any():
        logg.info(f"replaced earlier knockout results of {int((~keep_s).sum())} gene(s)")
    summary = pd.concat([old_s[keep_s], summary], ignore_index=True)
    table = pd.concat([old_t[keep_t], table], ignore_index=True)
    for col in ("source", "target"):
        table[col] = table[col].astype(str).astype(result.table[col].dtype)
    summary = summary.sort_values("effect", ascending=False, kind="stable").reset_index(drop=True)
    kept = _pairs(old_s[keep_s]) - _pairs(result.summary)
    return table, summary, kept


def _pairs(frame: pd.DataFrame) -> set[tuple[str, str]]:
    """The (gene, mode) of each row (``"delete"`` where a table written before modes has none)."""
    modes = frame["mode"].astype(str) if "mode" in frame.columns else pd.Series("delete", index=frame.index)
    return set(zip(frame["gene"].astype(str), modes, strict=True))


def _merge_deltas(
    old, new: pd.DataFrame | None, kept: set, base: str, pair: tuple[str, str], key_added: str, key: str
) -> pd.DataFrame | None:
    """Fate (or flux) deltas of this knockout with the earlier rows of the (gene, mode) pairs
    still in the summary (``kept``), as the summary accumulates them. Earlier rows are kept only
    when they share this knockout's base values on the same rows (the same chain, terminals and
    memberships); otherwise they are dropped, said in a warning. ``None``: nothing to write.
    """
    earlier = None
    if isinstance(old, pd.DataFrame) and "gene" in old:
        if "mode" not in old.columns:  # written before modes were recorded: deletions
            old = old.assign(mode="delete")
        pairs = pd.Series(list(zip(old["gene"].astype(str), old["mode"].astype(str), strict=True)), index=old.index)
        earlier = old[pairs.isin(kept).to_numpy()]
    if earlier is not None and not len(earlier):
        earlier = None
    if new is None or not len(new):
        return earlier
    if earlier is not None:

        def rows(frame: pd.DataFrame) -> pd.Series:  # one knockout's base values by (source, outcome)
            first = frame.iloc[0]
            one = frame[(frame["gene"] == first["gene"]) & (frame["mode"] == first["mode"])]
            index = pd.MultiIndex.from_arrays([one[c].astype(str) for c in pair])
            return pd.Series(one[base].to_numpy(float), index=index)

        now, before = rows(new), rows(earlier)
        if set(now.index) != set(before.index) or not np.allclose(before.reindex(now.index), now, equal_nan=True):
            logg.warning(
                f"earlier .uns[{key_added!r}][{key!r}] rows of {sorted(g for g, _ in kept)[:5]} were computed on "
                "another chain (other terminals, memberships or cells) and are dropped: knock those genes out again"
            )
            earlier = None
    if earlier is None:
        return new
    merged = pd.concat([earlier, new], ignore_index=True)
    for col in pair:  # the categories of both (h5ad keeps categoricals)
        merged[col] = pd.Categorical(merged[col].astype(str), categories=list(dict.fromkeys(new[col].astype(str))))
    return merged


def h5ad_safe(d: dict) -> dict:
    """Values that ``write_h5ad`` accepts (``None`` → ``"None"``, sequences → arrays)."""
    out = {}
    for k, v in d.items():
        if v is None:
            out[k] = "None"
        elif isinstance(v, dict):
            out[k] = h5ad_safe(v)
        elif isinstance(v, (list, tuple)):
            out[k] = np.asarray(v)
        else:
            out[k] = v
    return out
