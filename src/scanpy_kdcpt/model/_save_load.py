"""Saving and loading KDCPT models: tensors with ``torch.save`` (read back with
``weights_only=True``), everything else as JSON, so that a model file cannot run code.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd
import torch
from scanpy import logging as logg
from scvi.data._utils import _assign_adata_uuid

from .. import _expression, linear
from .._constants import REGISTRY_KEYS
from .._errors import InvalidInputError, ModelFileError, OutputPathError
from .._utils import is_mudata
from .._version import __version__

if TYPE_CHECKING:
    from anndata import AnnData

    from ._model import KDCPT

MODEL_FILE = "model.pt"
META_FILE = "model.json"
ADATA_FILE = "adata.h5ad"
#: model attributes (ending in ``_``) that survive save / load
STATE_ATTRS = ("classes_", "data_type_", "temperature_", "var_names_", "is_trained_", "extra_")
#: positions into the training cells (the split of train(), the calibration cells): kept by load
#: only with the same cells
HELD_OUT_ATTRS = ("calibration_indices_", "train_indices", "validation_indices", "test_indices")


def _save(model, dir_path: str, *, overwrite: bool = False, save_anndata: bool = False, **anndata_write_kwargs) -> None:
    """Write ``model.pt`` (tensors), ``model.json`` (settings, registry, state, history)."""
    if save_anndata and is_mudata(model.adata):  # setup_mudata; refused before anything is written
        raise InvalidInputError(
            "save_anndata=True is for AnnData; save the model without it and write the MuData yourself with "
            "mdata.write_h5mu(...)."
        )
    if os.path.exists(dir_path) and os.listdir(dir_path) and not overwrite:
        raise InvalidInputError(f"{dir_path} exists and is not empty; pass overwrite=True to replace it.")
    try:
        os.makedirs(dir_path, exist_ok=True)
    except OSError as err:
        raise OutputPathError(
            f"The model cannot be saved in {dir_path} ({err.strerror or err}): pass a writable folder."
        ) from err
    stale = os.path.join(dir_path, ADATA_FILE)
    if not save_anndata and os.path.exists(stale):
        # an AnnData of an earlier save must not be paired with these weights by load()
        os.remove(stale)
    state = {k: v.detach().cpu() for k, v in model.module.state_dict().items()}
    torch.save(state, os.path.join(dir_path, MODEL_FILE))
    history = {k: v.reset_index().to_dict(orient="list") for k, v in (model.history or {}).items()}
    attrs = {k: getattr(model, k, {} if k == "extra_" else None) for k in STATE_ATTRS}
    attrs["temperature_"] = float(attrs["temperature_"])
    attrs["is_trained_"] = bool(attrs["is_trained_"])
    for k in HELD_OUT_ATTRS:
        if getattr(model, k, None) is not None:
            attrs[k] = np.asarray(getattr(model, k))
    meta = {
        "init_params": model.init_params_,
        "registry": model.adata_manager.registry,
        "attrs": attrs,
        "cells": cells_fingerprint(model.adata),
        "history": history,
        "version": __version__,
        "saved_anndata": bool(save_anndata),
    }
    with open(os.path.join(dir_path, META_FILE), "w") as f:
        json.dump(meta, f, cls=Encoder)
    if save_anndata:
        model.adata.write_h5ad(os.path.join(dir_path, ADATA_FILE), **anndata_write_kwargs)


def _load(cls, dir_path: str, *, adata: AnnData | None = None, accelerator: str = "auto", device="auto"):
    """A model of class ``cls`` from ``dir_path`` (see :meth:`KDCPT.load`)."""
    from scvi.model._utils import parse_device_args

    meta = read_meta(dir_path)
    attrs = meta["attrs"]
    if adata is None:
        path = os.path.join(dir_path, ADATA_FILE)
        if not os.path.exists(path) or not meta.get("saved_anndata", True):
            raise InvalidInputError("Pass adata=...: the model was saved without its AnnData (save_anndata=False).")
        adata = ad.read_h5ad(path)
    registry = meta["registry"]
    multiome = registry.get("setup_method_name") == "setup_mudata"
    if multiome != is_mudata(adata):
        trained, given = ("a MuData (setup_mudata)", "an AnnData") if multiome else ("an AnnData", "a MuData")
        fix = (
            f"load it with the MuData it was trained on (modalities {dict(registry['setup_args']['modalities'])})"
            if multiome
            else "pass the RNA AnnData (e.g. mdata['rna'])"
        )
        raise InvalidInputError(f"The model was trained on {trained} and was given {given}: {fix}.")
    if multiome:  # genes + sites of the registered modalities
        mods = registry["setup_args"]["modalities"]
        check_same_genes(adata[mods["rna"]].var_names.append(adata[mods["regulatory"]].var_names), attrs["var_names_"])
        check_data(adata, registry, attrs)
    else:
        check_same_genes(adata.var_names, attrs["var_names_"])
        check_data(adata, registry, attrs)
    try:
        manager = cls._get_most_recent_anndata_manager(adata)
    except ValueError:  # a copy or a re-read file carrying the id of another set-up object
        _assign_adata_uuid(adata, overwrite=True)
        manager = None
    if manager is None:
        setup = cls.setup_mudata if multiome else cls.setup_anndata
        setup(adata, source_registry=registry, **dict(registry["setup_args"]))
    init = meta["init_params"]
    kwargs = {**init.get("non_kwargs", {}), **init.get("kwargs", {})}
    kwargs = {k: v for k, v in kwargs.items() if k not in ("adata", "kwargs", "class_weights")}
    weights = read_weights(dir_path)
    if "linear_stage" not in kwargs and "linear_weight" not in weights:
        kwargs["linear_stage"] = False  # saved before the first stage existed
    if "clip_input" not in kwargs and "input_max" not in weights:
        kwargs["clip_input"] = False  # saved before query clipping existed: none, as then
    if weights.get("loadings") is not None and weights["loadings"].shape[0] > 0:
        kwargs["n_pcs"] = int(weights["loadings"].shape[1])  # the saved encoder's width (it was fit on other cells)
    cls._fit_encoder_on_init = False
    try:
        model = cls(adata, **kwargs)
    finally:
        cls._fit_encoder_on_init = True
    if "input_max" not in weights:  # saved before query clipping existed: no clipping, as then
        weights["input_max"] = model.module.input_max
    try:
        model.module.load_state_dict(weights)
    except RuntimeError as err:  # a torch file, but not this model's weights (missing or other-shaped tensors)
        raise ModelFileError(
            f"{os.path.join(dir_path, MODEL_FILE)} does not hold this model's weights ({str(err).splitlines()[0]}): "
            "save the model again (model.save) or point to the folder it was saved in."
        ) from None
    for k, v in attrs.items():
        setattr(model, k, v)
    saved = meta.get("cells")  # absent in files of earlier versions: positions out of range tell
    held = {k: np.asarray(attrs[k], dtype=int) for k in HELD_OUT_ATTRS if attrs.get(k) is not None}
    held = {k: v for k, v in held.items() if len(v)}
    if held:
        other = saved != cells_fingerprint(adata) if saved else max(int(v.max()) for v in held.values()) >= adata.n_obs
        if other:  # positions into the training cells mean nothing in other cells
            for k in held:
                setattr(model, k, None)
            logg.info(
                "KDCPT: loaded with another AnnData than the training one: its training, validation and held-out "
                "calibration cells are not known here (annotate reports no held-out metrics; calibrate(indices=...) "
                "or calibrate(adata, labels_key=...) to recalibrate)."
            )
    record = model.extra_.get("linear_stage") if isinstance(model.extra_, dict) else None
    if record and model.module.linear_stage:  # what the first stage's fit found, as after train()
        model.linear_stage_ = linear.LinearFit.from_dict(record)
    model.init_params_ = init
    if meta.get("history"):
        model.history_ = {k: pd.DataFrame(v).set_index("epoch") for k, v in meta["history"].items()}
    _, _, dev = parse_device_args(accelerator=accelerator, devices=device, return_device="torch")
    model.to_device(dev)
    model.module.eval()
    return model


def cells_fingerprint(adata) -> dict:
    """The cells a model was trained on, in order: their number and a digest of their names."""
    import hashlib

    names = "\n".join(map(str, adata.obs_names)).encode()
    return {"n_obs": int(adata.n_obs), "sha1": hashlib.sha1(names).hexdigest()}


def read_meta(dir_path: str) -> dict:
    meta_path = os.path.join(dir_path, META_FILE)
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"No KDCPT model in {dir_path!r} (missing {META_FILE}).")
    try:
        with open(meta_path) as f:
            meta = json.load(f, object_hook=decode)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFileError(
            f"{meta_path} is corrupt ({type(err).__name__}: {err}); it is not a file written by KDCPT.save. "
            "Save the model again (model.save(dir_path, overwrite=True))."
        ) from err
    missing = [k for k in ("init_params", "registry", "attrs") if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise ModelFileError(
            f"{meta_path} lacks {missing}: it is not a file written by KDCPT.save. Save the model again."
        )
    return meta


def read_weights(dir_path: str) -> dict:
    """The module's tensors from ``model.pt`` (``weights_only=True``), with a clear error when unreadable."""
    path = os.path.join(dir_path, MODEL_FILE)
    if not os.path.exists(path):
        raise ModelFileError(f"No weights in {dir_path!r} (missing {MODEL_FILE}). Save the model again.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError, OSError, EOFError, UnpicklingError
        raise ModelFileError(
            f"{path} cannot be read ({type(err).__name__}): it is truncated, corrupt, or not written by "
            "KDCPT.save. Save the model again (model.save(dir_path, overwrite=True))."
        ) from err


def check_data(adata: AnnData, registry: dict, attrs: dict) -> None:
    """The AnnData a model is loaded with must hold the values, labels and batches it was trained on.

    Values: counts vs log, as recorded at training. Labels and batches: no category unseen at
    training (scvi-tools would ask for ``extend_categories``, which ``load`` cannot take).
    """
    setup = registry["setup_args"]
    if "modalities" in setup:  # a MuData (setup_mudata): the RNA modality's values, mdata.obs's labels
        rna_mod, layer = setup["modalities"]["rna"], setup.get("rna_layer")
        holder, obs_name = adata[rna_mod], "mdata.obs"
        where = f"mdata[{rna_mod!r}]." + (f"layers[{layer!r}]" if layer else "X")
    else:
        holder, layer, obs_name = adata, setup.get("layer"), "adata.obs"
        where = f"adata.layers[{layer!r}]" if layer else "adata.X"
    X = _expression.get_matrix(holder, layer)
    _expression.check_values(X, where, before="KDCPT.load")
    trained_on = attrs.get("data_type_")
    found = _expression.detect_data_type(X)
    if trained_on is not None and found != trained_on:
        fix = (
            "Load with the raw counts in that layer"
            if trained_on == "counts"
            else "Normalise it the same way (sc.pp.normalize_total + sc.pp.log1p)"
        )
        raise InvalidInputError(
            f"{where} looks like {found} values but the model was trained on {trained_on} values. {fix}."
        )
    fields = registry.get("field_registries", {})
    unlabeled = setup.get("unlabeled_category")
    for kind, key, registry_key in (
        ("phenotype labels", setup.get("labels_key"), REGISTRY_KEYS.LABELS_KEY),
        ("batches", setup.get("batch_key"), REGISTRY_KEYS.BATCH_KEY),
    ):
        if key is None or key not in adata.obs:
            continue
        known = fields.get(registry_key, {}).get("state_registry", {}).get("categorical_mapping")
        if known is None:
            continue
        values = adata.obs[key]
        values = values[values.notna()].astype(str).unique()
        new = sorted(set(values) - set(map(str, known)) - {str(unlabeled)})
        if new:
            raise InvalidInputError(
                f"{obs_name}[{key!r}] holds {kind} never seen at training ({new[:5]}). Load the model with its "
                "training AnnData (KDCPT.load(dir_path, adata=training_adata)) and call model.predict(adata) or "
                "model.annotate(adata): new data is then treated as a query (labels ignored, unseen batches "
                "predicted batch-free)."
            )


def check_same_genes(var_names: pd.Index, model_genes: list[str]) -> None:
    genes = pd.Index(list(map(str, var_names)))
    if genes.equals(pd.Index(model_genes)):
        return
    missing = pd.Index(model_genes).difference(genes)
    extra = genes.difference(pd.Index(model_genes))
    detail = (
        f"{len(missing)} model genes missing from adata (e.g. {list(missing[:5])}), "
        f"{len(extra)} adata genes unknown to the model (e.g. {list(extra[:5])})"
    )
    if not len(missing) and not len(extra):
        detail = "same genes in a different order"
    raise InvalidInputError(
        f"adata's genes do not match the model's: {detail}. Load with the AnnData the model was trained on "
        "(or adata[:, model_genes]); for query data with other genes, load with the training AnnData and "
        "call model.predict(query), which aligns genes by name."
    )


class Encoder(json.JSONEncoder):
    """JSON with numpy arrays / scalars and pandas indexes."""

    def default(self, o):
        if isinstance(o, np.ndarray):
            return {"__ndarray__": o.tolist(), "dtype": str(o.dtype)}
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, pd.Index):
            return {"__ndarray__": o.tolist(), "dtype": "object"}
        if isinstance(o, (set, tuple)):
            return list(o)
        return super().default(o)


def decode(d: dict):
    if "__ndarray__" in d:
        dtype = d["dtype"]
        return np.asarray(d["__ndarray__"], dtype=object if dtype.startswith("<U") or dtype == "object" else dtype)
    return d


class SaveLoadMixin:
    """``save`` / ``load`` that never pickle: tensors with ``weights_only=True``, the rest as JSON."""

    def save(self, dir_path: str, overwrite: bool = False, save_anndata: bool = False, **anndata_write_kwargs) -> None:
        """Save the model to ``dir_path``: ``model.pt`` (tensors only) and ``model.json``.

        A saved model cannot run code when loaded: tensors are read with
        ``torch.load(weights_only=True)`` and everything else is JSON.
        """
        _save(self, dir_path, overwrite=overwrite, save_anndata=save_anndata, **anndata_write_kwargs)

    @classmethod
    def load(
        cls, dir_path: str, adata: AnnData | None = None, accelerator: str = "auto", device: int | str = "auto"
    ) -> KDCPT:
        """Load a model saved with :meth:`save`.

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save`.
        adata
            AnnData with the model's genes in the same order. Default: the AnnData saved with
            ``save_anndata=True``.
        accelerator, device
            Where to put the model (``"auto"``: GPU when present).

        """
        return _load(cls, dir_path, adata=adata, accelerator=accelerator, device=device)
