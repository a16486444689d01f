"""Running the module over minibatches (mixed into KDCPT): predictions, logits, latent, labels."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from scvi.utils import track

from .. import calibration as cal
from .._constants import REGISTRY_KEYS, UNSEEN_BATCH_KEY
from .._errors import InvalidInputError, NotTrainedError
from .._utils import dropping_log_messages
from ..results import Predictions
from . import _data
from ._docs import model_dsp

if TYPE_CHECKING:
    from anndata import AnnData


class InferenceMixin:
    """The inference loop and the prediction API (every ``get_*`` that runs the network uses :meth:`_iterate`)."""

    def _prepare_adata(self, adata: AnnData | None) -> AnnData:
        """The registered AnnData itself, or a light AnnData built from a query.

        A query is aligned to the model's genes by name (missing ones zero-filled with a
        warning), checked, and registered with this model's setup; the user's object is not
        modified.
        """
        if adata is None or adata is self.adata or self.adata_manager.adata is adata:
            registered = self.adata if adata is None else adata
            # another model set up on the same AnnData rewrote the registered columns (labels,
            # batches): scvi-tools replays this model's setup, so its own labels are read
            self._validate_anndata(registered)
            return registered
        query = self._inputs.prepare_query(adata)
        # scvi-tools notes on every call that it transfers the setup to a new AnnData: for a
        # query that is what always happens, so that note (only) is held back
        scvi_note = ("Input AnnData not setup with scvi-tools",)
        with dropping_log_messages(["scvi.model.base._base_model"], scvi_note):
            return self._validate_anndata(query)

    def _batch_categories(self) -> list | None:
        """The batches seen at training (``None`` without a ``batch_key``): those with training
        cells (recorded by ``train``), else every registered category (models of earlier versions).
        """
        if self.adata_manager.registry["setup_args"].get("batch_key") is None:
            return None
        trained = self.extra_.get("trained_batches") if isinstance(getattr(self, "extra_", None), dict) else None
        if trained is not None:
            return list(trained)
        return list(self.adata_manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY).categorical_mapping)

    def _check_if_trained(self, warn: bool = True, message: str | None = None) -> bool:
        """Raise :class:`~scanpy_kdcpt._errors.NotTrainedError` unless the model was trained.

        An untrained network predicts one phenotype for every cell; its results must not reach
        an AnnData, so this refuses rather than warns (``warn`` is kept for scvi-tools' signature).
        """
        if not self.is_trained_:
            raise NotTrainedError(
                message or "The model has not been trained: call model.train() first (or KDCPT.load() a trained model)."
            )
        return True

    def _iterate(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        transform: Callable[[torch.Tensor, np.ndarray], torch.Tensor] | None = None,
        progress: bool = False,
        description: str = "KDCPT",
        transform_inputs: Callable[[dict[str, torch.Tensor], np.ndarray], dict[str, torch.Tensor]] | None = None,
        attribute: np.ndarray | None = None,
    ) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        """Yield ``(positions, module outputs)`` per minibatch under ``torch.inference_mode``.

        ``positions`` index into ``indices`` (or all cells); ``transform(x, positions)`` may
        perturb the expression tensor of a batch (knockouts) before the forward pass;
        ``transform_inputs(inputs, positions)`` may replace any module input (expression and
        embedding together, for knockouts that re-embed the perturbed cells). With
        ``attribute`` (a phenotype code per position; −1: the cell's prediction) the outputs
        also hold ``"gradient"`` (of that phenotype's logit margin — its logit minus the mean
        logit — with respect to the normalised input ``"x_log"``, cells × features; one
        backward pass per batch) and ``"attribution"`` (gradient × ``x_log``).
        """
        adata = self._prepare_adata(adata)
        if indices is None:
            indices = np.arange(adata.n_obs)
        indices = np.asarray(indices)
        batch_size = batch_size or 512
        unseen = adata.obs[UNSEEN_BATCH_KEY].to_numpy(bool) if UNSEEN_BATCH_KEY in adata.obs else None
        dl = self._make_data_loader(adata=adata, indices=indices, batch_size=batch_size, shuffle=False)
        self.module.eval()
        start = 0
        it = track(dl, description=description, disable=not progress, style="tqdm") if progress else dl
        with torch.inference_mode() if attribute is None else torch.enable_grad():
            for tensors in it:
                n = tensors[REGISTRY_KEYS.X_KEY].shape[0]
                pos = np.arange(start, start + n)
                start += n
                inputs = self.module._get_inference_input(tensors)
                if unseen is not None and inputs.get("batch_index") is not None and unseen[indices[pos]].any():
                    inputs["batch_index"] = inputs["batch_index"].clone()
                    inputs["batch_index"][torch.as_tensor(unseen[indices[pos]])] = -1
                if transform is not None:
                    inputs["x"] = transform(inputs["x"].to(self.device), pos)
                if transform_inputs is not None:
                    inputs = transform_inputs(inputs, pos)
                if attribute is None:
                    yield pos, self.module.inference(**inputs)
                else:
                    yield pos, self._attributed(inputs, np.asarray(attribute)[pos])

    def _attributed(self, inputs: dict[str, torch.Tensor], target: np.ndarray) -> dict[str, torch.Tensor]:
        """Module outputs plus gradient × input of each cell's ``target`` logit margin.

        The margin ``z_k − mean_j z_j`` (logits ``z``), not the log-probability: the gradient of
        ``log p_k`` vanishes where the model is confident (``p_k → 1``), so the phenotype's most
        typical cells say least about its genes — measured with the convex first stage, whose
        confident linear logits ranked Neurog3 last of 2,000 genes for Ngn3 high EP
        (``benchmarks/results/keygenes_pancreas_linear_stage.md``). The margin does not saturate.
        """
        module = self.module
        x_log = module.normalize(inputs.pop("x").to(self.device).float())
        # the value the model reads (clipped at the registered maximum), so gradient × input is
        # taken at the point the prediction was made
        x_log = torch.minimum(x_log, module.input_max).detach().requires_grad_(True)
        out = module.forward_normalized(x_log, **inputs)
        logits = out["logits"].float()
        target = torch.as_tensor(target, device=logits.device, dtype=torch.long)
        target = torch.where(target >= 0, target, logits.argmax(-1))
        margin = logits.gather(1, target[:, None]).squeeze(1) - logits.mean(1)
        (grad,) = torch.autograd.grad(margin.sum(), x_log)
        out = {k: v.detach() for k, v in out.items()}
        x_log = x_log.detach()
        out.update(attribution=grad * x_log, gradient=grad, x_log=x_log)
        return out

    def _collect(self, keys: Sequence[str], **kwargs) -> dict[str, np.ndarray]:
        out: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        for _, res in self._iterate(**kwargs):
            for k in keys:
                out[k].append(res[k].float().cpu().numpy())
        return {k: np.concatenate(v) for k, v in out.items()}

    def get_logits(
        self,
        adata: AnnData | None = None,
        indices=None,
        batch_size: int | None = None,
        component: str = "combined",
    ) -> np.ndarray:
        """Logits, cells × phenotypes, before temperature scaling.

        Parameters
        ----------
        adata, indices, batch_size
            The cells (default: the registered ones) and the minibatch size.
        component
            ``"combined"`` (default): the model's logits, the first stage's plus the network's
            times its share, ``linear + mix · network`` (``mix``: ``model.linear_stage_.mix``,
            chosen on the validation cells; 0: the first stage alone). ``"linear"``: the
            convex first stage's (the all-gene logistic regression). ``"network"``: the
            dual-branch network's, before its share. Compare the last two to see what the network
            adds to the first stage on your cells. Without a first stage
            (``KDCPT(linear_stage=False)``) ``"network"`` is ``"combined"`` and ``"linear"`` is
            an error.

        """
        self._check_if_trained(warn=True)
        keys = {"combined": "logits", "linear": "logits_linear", "network": "logits_network"}
        if component not in keys:
            raise InvalidInputError(f"component must be one of {list(keys)}, got {component!r}.")
        if component == "linear" and not self.module.linear_stage:
            raise InvalidInputError(
                "component='linear': this model has no first stage (trained with linear_stage=False); "
                "use component='combined'."
            )
        key = keys[component]
        return self._collect([key], adata=adata, indices=indices, batch_size=batch_size)[key]

    @model_dsp.dedent
    def predict(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        soft: bool = False,
        batch_size: int | None = None,
        conformal_alpha: float | None = None,
    ) -> pd.Series | pd.DataFrame:
        """Predict phenotypes.

        Parameters
        ----------
        %(param_adata)s
        indices
            Cells to predict (default all).
        soft
            Return probabilities (cells × phenotypes) instead of labels.
        %(param_batch_size)s
        conformal_alpha
            Return split-conformal prediction sets at this level instead (e.g. ``0.1``: each
            set holds the true phenotype of ≥ 90 %% of exchangeable cells). Needs
            :meth:`calibrate` first.

        Returns
        -------
        A categorical :class:`~pandas.Series` of phenotypes, or a DataFrame of probabilities
        (softmax of the logits divided by ``temperature_``), indexed by ``obs_names``. With
        ``conformal_alpha``: a boolean DataFrame cells × phenotypes, True for the phenotypes
        in each cell's prediction set (``.sum(axis=1)`` is the set size).

        """
        obs_names = (adata if adata is not None else self.adata).obs_names
        if indices is not None:
            obs_names = obs_names[_data.check_indices(indices, len(obs_names))]
        proba = self._softmax(self.get_logits(adata, indices=indices, batch_size=batch_size))
        if conformal_alpha is not None:
            return self.get_prediction_sets(
                pd.DataFrame(proba, index=obs_names, columns=self.classes_), conformal_alpha
            )
        if soft:
            return pd.DataFrame(proba, index=obs_names, columns=self.classes_)
        return pd.Series(
            pd.Categorical.from_codes(proba.argmax(1), categories=self.classes_), index=obs_names, name="prediction"
        )

    def get_predictions(self, adata: AnnData | None = None, *, batch_size: int | None = None) -> Predictions:
        """Phenotype probabilities of every cell, with the known labels beside them.

        Returns
        -------
        :class:`~scanpy_kdcpt.results.Predictions` (``proba``, ``labels``, ``pred``,
        ``confidence``, ``uncertainty``); :func:`scanpy_kdcpt.writers.write_predictions`
        writes it into ``.obs``.

        """
        codes, labelled = self.labels_(adata)
        proba = self._softmax(self.get_logits(adata, batch_size=batch_size))
        return self._predictions(adata, proba, codes, labelled)

    def _predictions(self, adata, proba: np.ndarray, codes: np.ndarray, labelled: np.ndarray) -> Predictions:
        obs_names = (adata if adata is not None else self.adata).obs_names
        names = np.asarray(self.classes_, dtype=object)
        labels = pd.Series(np.where(labelled, names[np.maximum(codes, 0)], None), index=obs_names, dtype=object)
        return Predictions(
            proba=pd.DataFrame(proba, index=obs_names, columns=self.classes_),
            labels=labels,
            temperature=float(self.temperature_),
        )

    def _softmax(self, logits: np.ndarray) -> np.ndarray:
        """Probabilities at the model's temperature."""
        return cal.softmax(logits, float(self.temperature_))

    def get_latent_representation(
        self, adata: AnnData | None = None, indices=None, batch_size: int | None = None
    ) -> np.ndarray:
        """Fused representation (the CFFM output), cells × ``d_model``."""
        self._check_if_trained(warn=True)
        return self._collect(["fused"], adata=adata, indices=indices, batch_size=batch_size)["fused"]

    def labels_(self, adata: AnnData | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Known phenotype codes of ``adata`` (``-1`` where unlabelled) and the labelled mask."""
        adata = self._prepare_adata(adata)
        manager = self.get_anndata_manager(adata, required=True)
        codes = manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY).ravel().astype(int)
        labelled = codes < len(self.classes_)
        return np.where(labelled, codes, -1), labelled
