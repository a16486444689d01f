"""``annotate()`` (mixed into KDCPT): one pass of the network, then every writer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .. import _keys, metrics, writers
from .._errors import InvalidInputError
from .._utils import default_palette
from .._version import __version__
from ..results import KeyGenes, Predictions
from ._crossfit import check_predictions
from ._docs import model_dsp, output_target
from ._keygenes import KeyGeneAccumulator

if TYPE_CHECKING:
    from anndata import AnnData


class AnnotateMixin:
    """Predict every cell and write predictions, calibration, transitions, fates and key genes."""

    @model_dsp.dedent
    def annotate(
        self,
        adata: AnnData | None = None,
        *,
        key_added: str = _keys.DEFAULT_KEY,
        batch_size: int | None = None,
        conformal_alpha: float | None = None,
        direction: str | dict | None = "stored",
        transition_predictions: Predictions | None = None,
        terminal: str | list[str] | None = None,
        copy: bool = False,
    ) -> AnnData | None:
        """Predict every cell and write the results into ``adata``.

        Parameters
        ----------
        %(param_adata)s
        %(param_key_added)s
        %(param_batch_size)s
        conformal_alpha
            Also write split-conformal prediction sets at this level (needs :meth:`calibrate`).
        direction
            Which transition matrix to write. ``"stored"`` (default): the directed chain of
            :meth:`compute_transitions` when it was run on these cells, else the posterior
            form (recorded in ``.uns[key]["direction"]``). ``"posterior"``: always the
            posterior form. Any ``direction`` of :meth:`compute_transitions` (``"auto"``,
            ``"velocity"``, ...): compute the directed chain now. With a directed chain the
            fate probabilities into the sink phenotypes are written too.
        transition_predictions
            Probabilities of the same cells to build the transition matrix, entropies and fates
            from, e.g. out-of-sample ones from :meth:`get_cross_fitted_predictions` (the model's
            own probabilities of its training cells are in-sample: over-confident, so the
            posterior matrix comes out too diagonal). Default: this model's predictions.
        terminal
            Terminal phenotypes of the fates written with a directed chain, as in
            :meth:`get_fate_probabilities`. Default: the ones named by an earlier
            ``annotate(terminal=...)`` on this chain, else the sinks of the net flux. Recorded
            with the chain: knockouts compare fates into the same ones.
        %(param_copy)s

        Returns
        -------
        ``None`` (or the annotated copy with ``copy=True``). Sets

        - ``.obs``: ``{key}_pred`` (categorical), ``{key}_proba_<phenotype>``,
          ``{key}_confidence``, ``{key}_uncertainty`` (cosine index, 0 = certain, 1 = uniform);
          with ``conformal_alpha``: ``{key}_prediction_set`` (e.g. ``"B|T"``), ``{key}_set_size``;
        - ``.uns["{key}_pred_colors"]``;
        - ``.uns[key]``: ``params``, ``classes``, ``metrics`` (on labelled cells — a query's
          labels are read from its own ``labels_key`` column when it has one, phenotypes the
          model does not know left out — and on the validation cells when ``adata`` is the
          training data), ``history``, ``version``,
          ``calibration`` (temperature, ECE / Brier before and after :meth:`calibrate`,
          reliability tables), ``transition_matrix``, ``phenotype_mass``, ``entropy``,
          ``entropy_total``, ``entropy_total_normalized`` (``stationary`` and ``flux`` only
          with a directed chain), ``transition_method``,
          ``direction``, plus what the key-gene writer adds;
        - with a directed chain: ``.obsp["{key}_transitions"]``,
          ``.obsm["{key}_fate_probabilities"]``, ``.uns[key]["fate"]``, ``["fate_terminal"]``.

        """
        source = self.adata if adata is None else adata
        query = None if source is self.adata else source  # None: the registered (training) data
        self._check_if_trained()
        self._check_outputs_free(source, key_added)
        if conformal_alpha is not None:  # fail early, before anything is written
            self._conformal_threshold(conformal_alpha)
            _keys.check_set_names(self.classes_)
        predictions, key_genes = self._predict_with_key_genes(query, batch_size=batch_size)
        calibration = self.get_calibration(predictions if query is None else None, conformal_alpha=conformal_alpha)
        if transition_predictions is not None:
            check_predictions(transition_predictions, source.obs_names, self.classes_)
        transitions, fates = self._annotate_transitions(
            query, predictions if transition_predictions is None else transition_predictions, direction, terminal
        )
        target = output_target(source, copy=copy)
        writers.write_predictions(target, predictions, key_added=key_added, colors=self._colors())
        if conformal_alpha is not None:
            sets = self.get_prediction_sets(predictions.proba, conformal_alpha)
            writers.write_prediction_sets(target, sets, conformal_alpha, key_added=key_added)
        writers.write_summary(
            target,
            key_added=key_added,
            phenotypes=self.classes_,
            params={
                **self.init_params_.get("non_kwargs", {}),
                **self.adata_manager.registry["setup_args"],
                "temperature": float(self.temperature_),
            },
            metrics=self.get_metrics(predictions, is_training=query is None),
            history=pd.concat(list(self.history_.values()), axis=1).astype(float).reset_index()
            if self.history_
            else None,
            version=__version__,
        )
        writers.write_calibration(target, calibration, key_added=key_added)
        writers.write_transitions(target, transitions, key_added=key_added)
        if fates is not None:
            writers.write_fates(target, fates, key_added=key_added)
        writers.write_key_genes(target, key_genes, key_added=key_added, **self._inputs.key_feature_kwargs(target))
        return target if copy else None

    def _check_outputs_free(self, adata: AnnData, key_added: str) -> None:
        """Refuse before anything is written when an output key would overwrite the user's input.

        The labels, batch and prior columns the model was set up with must not be named like an
        output (``labels_key="kdcpt_pred"``); phenotype names must map to distinct columns.
        """
        keys = _keys.Keys(key_added)
        if keys.uns in adata.uns and not isinstance(adata.uns[keys.uns], Mapping):
            raise InvalidInputError(
                f"adata.uns[{keys.uns!r}] holds a {type(adata.uns[keys.uns]).__name__}, not the package's results: "
                f"writing would replace it. Pass another key_added or move adata.uns[{keys.uns!r}]."
            )
        setup = self.adata_manager.registry["setup_args"]
        _keys.check_phenotype_keys(self.classes_, key_added, where="the model's phenotypes")
        obs_out = {keys.pred, keys.confidence, keys.uncertainty, keys.prediction_set, keys.set_size}
        obs_out |= {keys.proba(c) for c in self.classes_}
        var_out = {keys.score, keys.selected_frac, keys.rank, keys.key_gene, keys.knockout_effect}
        for kind, name, outputs in (
            ("labels_key", setup.get("labels_key"), obs_out),
            ("batch_key", setup.get("batch_key"), obs_out),
            ("prior_key", setup.get("prior_key"), var_out),
        ):
            if name is not None and (name in outputs or (outputs is obs_out and name.startswith(keys.proba_prefix))):
                raise InvalidInputError(
                    f"The model's {kind} {name!r} is also an output column of key_added={key_added!r}: writing "
                    f"would overwrite your {kind}. Pass another key_added (e.g. key_added='kdcpt_model') "
                    f"or rename the column before setup_anndata."
                )

    def _predict_with_key_genes(
        self, adata: AnnData | None, *, batch_size: int | None = None
    ) -> tuple[Predictions, KeyGenes]:
        """Predictions and key genes from one pass of the network over the cells."""
        self._check_if_trained(warn=True)
        codes, labelled = self.labels_(adata)
        acc = KeyGeneAccumulator(self.classes_, self.var_names_)
        logits = []
        target = np.where(labelled, codes, -1)
        for pos, out in self._iterate(adata, batch_size=batch_size, attribute=target):
            lg = out["logits"].float().cpu().numpy()
            logits.append(lg)
            acc.add(out, np.where(labelled[pos], codes[pos], lg.argmax(1)))
        proba = self._softmax(np.concatenate(logits))
        query = adata is not None and adata is not self.adata  # attributions against the training cells' mean
        return self._predictions(adata, proba, codes, labelled), acc.result(self._reference_input() if query else None)

    def get_metrics(self, predictions: Predictions, *, is_training: bool = True) -> dict[str, dict[str, float]]:
        """Accuracy, macro-F1, kappa, ECE, mean confidence and uncertainty.

        ``"labelled"``: every labelled cell (training cells included when ``predictions`` are of
        the registered data: a training fit, not a held-out estimate); ``"validation"`` and
        ``"calibration"``: the held-out cells of :meth:`train`, when the cells are the training data.
        """
        known = predictions.labels.notna().to_numpy()
        subsets = {"labelled": np.flatnonzero(known)}
        if is_training:
            for name, held in (
                ("validation", self.validation_indices),
                ("calibration", getattr(self, "calibration_indices_", None)),
            ):
                if held is not None and len(held):
                    held = np.asarray(held)
                    subsets[name] = held[known[held]]
        return metrics.prediction_metrics(predictions.labels, predictions.proba, subsets)

    def _colors(self) -> np.ndarray:
        """Phenotype colours: those of ``labels_key`` when scanpy has them, else scanpy's palette."""
        labels_key = self.adata_manager.registry["setup_args"]["labels_key"]
        source = self.adata.uns.get(f"{labels_key}_colors")
        cats = self.adata.obs[labels_key].astype("category").cat.categories.astype(str)
        if source is not None and len(source) == len(cats):
            lookup = dict(zip(cats, source, strict=True))
            if all(c in lookup for c in self.classes_):
                return [lookup[c] for c in self.classes_]
        return default_palette(len(self.classes_))
