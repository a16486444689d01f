"""Multi-omics KD-CPT (methods mixed into KDCPT): ``setup_mudata`` and what the model needs to run
on genes plus regulatory sites.

Design: the MuData's RNA and regulatory (ATAC) modalities are registered as two
:class:`~scvi.data.fields.MuDataLayerField` (as scvi-tools' MULTIVI / TOTALVI do), labels and
batches from ``mdata.obs``. The module (:class:`~scanpy_kdcpt.module.KDCPTMultiomeModule`)
concatenates the two minibatch tensors into one feature axis ``[genes, sites]`` before anything
else, so the model's features (``var_names_``) are the genes followed by the sites and every
downstream path — training, ``_iterate``, key genes, knockouts that zero input columns,
save / load — is the RNA-only model's. Peaks stay sparse on the AnnData side; only minibatches
are dense.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from scanpy import logging as logg
from scipy import sparse
from scvi.data import AnnDataManager

from .. import _expression, multiome
from .._constants import REGISTRY_KEYS, UNLABELED_CATEGORY, UNSEEN_BATCH_KEY
from .._errors import InvalidInputError, KeyNotFoundError
from .._utils import is_mudata
from ..module import REGULATORY_KEY
from . import _data

if TYPE_CHECKING:
    from mudata import MuData


class MuDataMixin:
    """Set-up and helpers for paired RNA + regulatory-site data (MuData)."""

    @classmethod
    def setup_mudata(
        cls,
        mdata: MuData,
        labels_key: str,
        *,
        modalities: dict[str, str] | None = None,
        rna_layer: str | None = None,
        regulatory_layer: str | None = None,
        prior_key: str | None = None,
        link_key: str = "linked_gene",
        link_window: int = 2000,
        batch_key: str | None = None,
        embedding_key: str | None = None,
        unlabeled_category: str | None = None,
        data_type: Literal["auto", "counts", "log"] = "auto",
        regulatory_type: Literal["auto", "counts", "tfidf"] = "auto",
        **kwargs,
    ):
        """Register a paired RNA + regulatory-site (ATAC) MuData for KDCPT.

        Genes and peaks enter one token pool (a modality embedding tells them apart), so the Cell
        Learner selects key genes and key sites together. Peak counts are TF-IDF normalised
        inside the model (Signac's LSI method 1; IDF fitted on the training cells); the prior
        reaches a site through its linked gene.

        Parameters
        ----------
        mdata
            MuData whose modalities hold the same cells (e.g. SNARE-seq, 10x Multiome).
        labels_key
            ``mdata.obs`` column with each cell's phenotype (missing / ``unlabeled_category``:
            predicted, left out of the loss).
        modalities
            ``{"rna": name, "regulatory": name}``; default ``{"rna": "rna", "regulatory": "atac"}``.
        rna_layer
            Layer of the RNA modality with counts or log-normalised values (``None``: ``X``).
        regulatory_layer
            Layer of the regulatory modality with peak counts (``None``: ``X``).
        prior_key
            Boolean or [0, 1] column of the RNA modality's ``.var`` (e.g. ``is_tf``). A site gets
            the prior of its linked gene.
        link_key
            Column of the regulatory modality's ``.var`` naming each peak's gene. When absent and
            a ``prior_key`` is given, peaks are linked by coordinates with
            :func:`scanpy_kdcpt.multiome.link_peaks_to_genes` (``window=link_window``), which
            writes this column.
        link_window
            Window (bp) of that linking.
        batch_key
            ``mdata.obs`` column of batches.
        embedding_key
            ``mdata.obsm`` key of a pretrained cell embedding; without it the model fits its own
            frozen encoder (RNA PCA beside ATAC LSI).
        unlabeled_category
            Value of ``labels_key`` that marks unlabelled cells.
        data_type
            RNA values: ``"counts"``, ``"log"`` or ``"auto"`` (as :meth:`setup_anndata`).
        regulatory_type
            Peak values: ``"counts"`` (TF-IDF inside the model), ``"tfidf"`` (already normalised,
            used as is) or ``"auto"`` (non-negative integers → counts).
        **kwargs
            Passed to :meth:`scvi.data.AnnDataManager.register_fields`.

        Notes
        -----
        The model's features (``model.var_names_``) are the genes followed by the sites; a site
        is knocked out (closed) by its name, a gene with its sites through
        :meth:`linked_sites`. Query data for ``predict`` / ``annotate`` / ``knockout``: a MuData
        with the same modalities (genes and sites aligned by name, missing ones zero-filled with a
        warning). A query without the regulatory modality (or a plain AnnData of RNA) is predicted
        from RNA alone, with the sites zero-filled and a warning: accuracy is then lower than on
        paired data (the model was trained with both).

        """
        setup_method_args = cls._get_setup_method_args(**locals())
        from scvi.data.fields import (
            MuDataCategoricalObsField,
            MuDataLabelsWithUnlabeledObsField,
            MuDataLayerField,
            MuDataObsmField,
        )

        if not is_mudata(mdata):
            raise TypeError(
                f"setup_mudata needs a MuData, got {type(mdata).__name__}. For an AnnData use KDCPT.setup_anndata."
            )
        mods = multiome._modalities(mdata, modalities)
        _check_paired(mdata, mods)  # may put a modality's rows in the order of mdata.obs_names
        rna, peaks = mdata[mods["rna"]], mdata[mods["regulatory"]]
        where = f"mdata[{mods['rna']!r}]" + (f".layers[{rna_layer!r}]" if rna_layer else ".X")
        rna_name, peaks_name = f"mdata[{mods['rna']!r}]", f"mdata[{mods['regulatory']!r}]"
        X = _expression.get_matrix(rna, rna_layer, name=rna_name, layer_arg="rna_layer")
        data_type = _data.resolve_data_type(X, data_type, where)
        P = _expression.get_matrix(peaks, regulatory_layer, name=peaks_name, layer_arg="regulatory_layer")
        where = peaks_name + (f".layers[{regulatory_layer!r}]" if regulatory_layer else ".X")
        _expression.check_values(P, where, peaks=True)
        if regulatory_type not in ("auto", "counts", "tfidf"):
            raise InvalidInputError(f"regulatory_type must be 'auto', 'counts' or 'tfidf', not {regulatory_type!r}.")
        vals = _expression._values_sample(P)
        vals = vals[vals != 0]
        integers = vals.size == 0 or np.allclose(vals, np.round(vals))
        if regulatory_type == "auto":
            regulatory_type = "counts" if integers else "tfidf"
        elif regulatory_type == "tfidf" and integers and vals.size:
            warnings.warn(
                f"regulatory_type='tfidf' but {where} holds whole numbers only (counts, or binarised peaks): "
                "they are read as TF-IDF values as asked, without the TF-IDF transform. Pass "
                "regulatory_type='counts' (or 'auto') to have the model compute TF-IDF from the counts.",
                UserWarning,
                stacklevel=2,
            )
        args = setup_method_args["setup_args"]
        args.update(data_type=data_type, regulatory_type=regulatory_type, modalities=mods)
        logg.info(f"KDCPT: RNA treated as {data_type}, regulatory sites as {regulatory_type}.")

        if prior_key is not None:
            _data.check_prior(rna, prior_key, where=f"mdata[{mods['rna']!r}]")
            if link_key not in peaks.var:
                try:
                    multiome.link_peaks_to_genes(mdata, window=link_window, modalities=mods, key_added=link_key)
                except (KeyError, ValueError) as e:
                    raise InvalidInputError(
                        f"prior_key needs each peak's gene: mdata[{mods['regulatory']!r}].var has no {link_key!r} "
                        f"column and the peaks could not be linked by coordinates ({e}). Set "
                        f"mdata[{mods['regulatory']!r}].var[{link_key!r}] to the gene of each peak, or call "
                        "kdcpt.multiome.link_peaks_to_genes(mdata, window=...) with gene coordinates in "
                        f"mdata[{mods['rna']!r}].var ('chrom', 'start', 'end')."
                    ) from None
        if batch_key is not None:  # before anything is written
            _data.check_batch(mdata, batch_key, where="mdata")
        labels_obs_key, unlabeled_category = _data.check_labels(mdata, labels_key, unlabeled_category, where="mdata")
        if unlabeled_category is None:
            unlabeled_category = UNLABELED_CATEGORY
        fields = [
            MuDataLayerField(
                REGISTRY_KEYS.X_KEY, rna_layer, mod_key=mods["rna"], is_count_data=False, mod_required=True
            ),
            MuDataLayerField(
                REGULATORY_KEY, regulatory_layer, mod_key=mods["regulatory"], is_count_data=False, mod_required=True
            ),
            MuDataLabelsWithUnlabeledObsField(REGISTRY_KEYS.LABELS_KEY, labels_obs_key, unlabeled_category),
        ]
        if batch_key is not None:
            fields.append(MuDataCategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key))
        if embedding_key is not None:
            _data.check_embedding(mdata, embedding_key)
            fields.append(MuDataObsmField(REGISTRY_KEYS.EMBEDDING_KEY, embedding_key))
        adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(mdata, **kwargs)
        cls.register_manager(adata_manager)

    # -- public helpers ---------------------------------------------------------------------
    def linked_sites(self, genes: str | Sequence[str]) -> dict[str, list[str]]:
        """Each gene with its linked regulatory sites, as gene sets for :meth:`knockout`.

        Parameters
        ----------
        genes
            Gene name(s) of the RNA modality.

        Returns
        -------
        ``{"<gene>+sites": [gene, site, site, ...]}`` — pass it to ``model.knockout(...)`` to
        delete a gene together with its linked peaks (and ``[site, ...]`` alone to close only the
        peaks).

        """
        if not self._inputs.multiome:
            raise InvalidInputError("linked_sites needs a model set up with KDCPT.setup_mudata.")
        genes = [genes] if isinstance(genes, str) else list(genes)
        rna, peaks = self._inputs.modality_data()
        link_key = self.adata_manager.registry["setup_args"]["link_key"]
        if link_key not in peaks.var:
            raise KeyNotFoundError(
                f"The regulatory modality's .var has no {link_key!r} column: link peaks to genes with "
                "kdcpt.multiome.link_peaks_to_genes(mdata, window=...) first."
            )
        linked = peaks.var[link_key].astype(str)
        missing = [g for g in genes if g not in rna.var_names]
        if missing:
            raise KeyNotFoundError(f"Gene(s) {missing} are not in the RNA modality.")
        out = {}
        for g in genes:
            sites = list(map(str, linked.index[linked.to_numpy() == g]))
            if not sites:
                warnings.warn(f"{g!r} has no linked site; its set holds the gene only.", UserWarning, stacklevel=2)
            out[f"{g}+sites"] = [g, *sites]
        return out


def fit_lsi(P, n_components: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """LSI loadings (sites × components) and component std of TF-IDF values ``P`` (no centring)."""
    from sklearn.decomposition import TruncatedSVD

    rng = np.random.default_rng(seed)
    if P.shape[0] > 20_000:
        P = P[np.sort(rng.choice(P.shape[0], 20_000, replace=False))]
    n_components = int(max(1, min(n_components, min(P.shape) - 1)))
    svd = TruncatedSVD(n_components, random_state=seed).fit(sparse.csr_matrix(P, dtype=np.float32))
    Z = svd.transform(P)
    std = np.maximum(Z.std(0), 1e-6)
    return svd.components_.T.astype(np.float32), std.astype(np.float32)


def _check_paired(mdata, mods: dict[str, str]) -> None:
    """Unique feature names, and both modalities holding the cells of ``mdata.obs``.

    MuData aligns modalities by cell name: a modality that holds the same cells in another order
    has its rows put in the order of ``mdata.obs_names`` (a copy replaces it; warned). Only
    cells missing from a modality are an error.
    """
    rna, peaks = mdata[mods["rna"]], mdata[mods["regulatory"]]
    names = rna.var_names.append(peaks.var_names)
    if names.has_duplicates:
        dup = names[names.duplicated()].unique()[:5].tolist()
        raise InvalidInputError(
            f"Gene and site names must be unique across both modalities (e.g. {dup} repeat). Call "
            "mdata[...].var_names_make_unique() on the modality, or mdata.var_names_make_unique()."
        )
    cells = mdata.obs_names
    for name in (mods["rna"], mods["regulatory"]):
        mod = mdata[name]
        if mod.obs_names.has_duplicates:
            raise InvalidInputError(
                f"mdata[{name!r}] has duplicated cell names; call mdata[{name!r}].obs_names_make_unique() first."
            )
        missing = cells.difference(mod.obs_names)
        if len(missing) or mod.n_obs != len(cells):
            raise InvalidInputError(_unpaired_message(mdata, mods))
    reordered = [name for name in (mods["rna"], mods["regulatory"]) if not mdata[name].obs_names.equals(cells)]
    for name in reordered:
        mdata.mod[name] = mdata[name][cells].copy()
        warnings.warn(
            f"mdata[{name!r}] held the same cells as mdata.obs in another order: setup_mudata replaced it by a copy "
            "in the order of mdata.obs_names. A variable that still points to the old AnnData is no longer the "
            f"MuData's modality and receives no outputs: read mdata[{name!r}] from now on.",
            UserWarning,
            stacklevel=3,
        )
    if reordered:  # MuData's own map from its cells to each modality's rows follows the new order
        mdata.update()


def _unpaired_message(mdata, mods: dict[str, str]) -> str:
    """What differs between the cells of the two modalities, and what to do."""
    a, b = mods["rna"], mods["regulatory"]
    na, nb = mdata[a].obs_names, mdata[b].obs_names
    common = na.intersection(nb)
    head = (
        f"The modalities hold different cells: {a!r} has {len(na)}, {b!r} has {len(nb)}, {len(common)} in common "
        f"(mdata has {mdata.n_obs}, the union). KDCPT needs paired data"
    )
    if not len(common):
        return (
            f"{head}, and no cell name is in both: are the barcodes written the same way in both modalities "
            f"(e.g. {a!r} {list(map(str, na[:2]))}, {b!r} {list(map(str, nb[:2]))})? Rename them so that a nucleus has "
            "one name, then call mdata.update()."
        )
    return f"{head}: subset both modalities to the {len(common)} shared cells, e.g. mu.pp.intersect_obs(mdata)."


def _query_rows(mdata, name: str):
    """``mdata[name]`` with its rows in the order of ``mdata.obs_names`` (a view: the query is not
    changed); a clear error when the modality lacks some of the MuData's cells.
    """
    mod, cells = mdata[name], mdata.obs_names
    if mod.obs_names.equals(cells):
        return mod
    if mod.obs_names.has_duplicates:
        raise InvalidInputError(
            f"The query's {name!r} modality has duplicated cell names; call mdata[{name!r}].obs_names_make_unique()."
        )
    missing = cells.difference(mod.obs_names)
    if len(missing):
        raise InvalidInputError(
            f"The query's {name!r} modality lacks {len(missing)} of the MuData's {len(cells)} cells (e.g. "
            f"{list(map(str, missing[:3]))}); KDCPT needs paired cells: subset the modalities to the shared cells "
            "(mu.pp.intersect_obs(mdata))."
        )
    return mod[cells]


def prepare_query(model, mdata) -> MuData:
    """A light MuData from a query, aligned to the model's genes and sites.

    A query without the regulatory modality is predicted from RNA alone (sites zero-filled,
    with a warning); a plain AnnData is taken as the RNA modality.
    """
    import anndata as ad
    from mudata import MuData

    setup = model.adata_manager.registry["setup_args"]
    mods = dict(setup["modalities"])
    rna_names = pd.Index(model.var_names_[: model.module.n_rna])
    site_names = pd.Index(model.var_names_[model.module.n_rna :])
    if is_mudata(mdata):
        if mdata.n_obs == 0:
            raise InvalidInputError("The query has no cells (mdata.n_obs == 0): pass a MuData with cells to predict.")
        if mods["rna"] not in mdata.mod:
            raise KeyNotFoundError(f"The query has no {mods['rna']!r} modality (modalities: {list(mdata.mod)}).")
        # every modality's rows in the order of mdata.obs_names: the results are written there
        rna = _query_rows(mdata, mods["rna"])
        peaks = _query_rows(mdata, mods["regulatory"]) if mods["regulatory"] in mdata.mod else None
    else:
        if mdata.n_obs == 0:
            raise InvalidInputError("The query has no cells (adata.n_obs == 0): pass an AnnData with cells to predict.")
        rna, peaks = mdata, None
    rna_name = f"the query's {mods['rna']!r} modality" if is_mudata(mdata) else "the query"
    rna_layer = setup["rna_layer"] if setup["rna_layer"] in rna.layers else None
    X = _expression.get_matrix(rna, rna_layer, name=rna_name)
    X = _data.align_genes(X, rna.var_names, rna_names)
    where = f"{rna_name}'s " + (f"layers[{rna_layer!r}]" if rna_layer is not None else "X")
    _data.check_query_values(X, model.data_type_, rna_name, where[0].upper() + where[1:])
    if peaks is None:
        warnings.warn(
            f"The query has no {mods['regulatory']!r} modality: cells are predicted from RNA alone (sites "
            "zero-filled); expect lower accuracy than on paired data.",
            UserWarning,
            stacklevel=3,
        )
        P = sparse.csr_matrix((rna.n_obs, len(site_names)), dtype=np.float32)
    else:
        layer = setup["regulatory_layer"]
        peaks_name = f"the query's {mods['regulatory']!r} modality"
        P = _expression.get_matrix(peaks, layer if layer in peaks.layers else None, name=peaks_name)
        P = _data.align_genes(P, peaks.var_names, site_names, kind="sites")
        _expression.check_values(P, peaks_name, peaks=True, before="predicting")
    labels_state = model.adata_manager.get_state_registry(REGISTRY_KEYS.LABELS_KEY)
    obs = pd.DataFrame(index=rna.obs_names.copy())
    # the query's own labels (mdata.obs), where it has the labels_key column: for annotate's metrics
    obs[labels_state.original_key] = _data._query_labels(mdata, setup["labels_key"], labels_state)
    if setup["batch_key"] is not None:
        key, where = setup["batch_key"], "mdata.obs" if is_mudata(mdata) else "the query's .obs"
        if key not in mdata.obs:
            raise KeyNotFoundError(
                f"The model was set up with batch_key {key!r}, which {where} lacks. Add the column (any value; "
                "batches unseen at training are predicted batch-free)."
            )
        obs[key], obs[UNSEEN_BATCH_KEY] = _data._known_batches(mdata.obs[key], model._batch_categories())
    obsm = {}
    if setup["embedding_key"] is not None:
        src = mdata if is_mudata(mdata) else rna
        obsm[setup["embedding_key"]] = _data._query_embedding(
            src, setup["embedding_key"], int(model.module.embedding_mean.shape[0])
        )

    def mod(M, names, layer):
        var = pd.DataFrame(index=names)
        return (
            ad.AnnData(X=M, obs=pd.DataFrame(index=obs.index), var=var)
            if layer is None
            else ad.AnnData(obs=pd.DataFrame(index=obs.index), var=var, layers={layer: M})
        )

    query = MuData(
        {
            mods["rna"]: mod(X, rna_names, setup["rna_layer"]),
            mods["regulatory"]: mod(P, site_names, setup["regulatory_layer"]),
        }
    )
    for c in obs.columns:
        query.obs[c] = obs[c].to_numpy() if c != labels_state.original_key else obs[c].array
    for k, v in obsm.items():
        query.obsm[k] = v
    return query
