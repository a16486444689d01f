"""Phenotype transition matrix, entropy, calibration and conformal sets (methods mixed into KDCPT).

The pure functions (:func:`posterior_transition_matrix`, :func:`knn_transition_matrix`,
:func:`coarse_grain`, :func:`stationary_distribution`, :func:`transition_entropy`) take numpy
arrays; :class:`TransitionMixin` runs the model and writes into AnnData.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from scipy import sparse

from .. import _keys
from .._errors import KeyNotFoundError
from ._uncertainty import (
    brier_score,
    conformal_scores,
    conformal_threshold,
    expected_calibration_error,
    fit_temperature,
    nll,
    prediction_sets,
    reliability_table,
    softmax,
)

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)

#: ``.uns[key]`` entry with the overall entropy divided by ``log(n_phenotypes)``
UNS_ENTROPY_TOTAL_NORMALIZED = _keys.UNS_ENTROPY_TOTAL_NORMALIZED
_SET_SEP = "|"


# -------------------------------------------------------------------------------------------
# pure functions
# -------------------------------------------------------------------------------------------
def posterior_transition_matrix(proba: np.ndarray, assigned: np.ndarray, n_phenotypes: int) -> np.ndarray:
    """``P[i, j]`` = mean of ``p(j)`` over the cells assigned to phenotype ``i``.

    A phenotype without cells gets an absorbing row (1 on the diagonal) so that ``P`` stays
    row-stochastic; a warning names it.
    """
    proba = np.asarray(proba, dtype=float)
    assigned = np.asarray(assigned, dtype=int)
    onehot = np.zeros((len(assigned), n_phenotypes))
    onehot[np.arange(len(assigned)), assigned] = 1.0
    counts = onehot.sum(0)
    P = onehot.T @ proba
    return _normalise_rows(P, counts)


def knn_transition_matrix(
    representation: np.ndarray, n_neighbors: int = 30, softmax_scale: float = 10.0
) -> sparse.csr_matrix:
    """Cell-level Markov chain: each cell moves to one of its ``n_neighbors`` nearest cells.

    Neighbours by cosine distance (scikit-learn ``NearestNeighbors``, the cell itself left
    out); transition weights ``softmax(softmax_scale * cosine similarity)`` over the
    neighbours. Row-stochastic CSR matrix, cells × cells.
    """
    from sklearn.neighbors import NearestNeighbors

    Z = np.asarray(representation, dtype=np.float64)
    n = Z.shape[0]
    if n < 2:
        raise ValueError(f"A kNN transition matrix needs at least 2 cells, got {n}.")
    k = int(min(n_neighbors, n - 1))
    if k < 1:
        raise ValueError(f"n_neighbors must be at least 1, got {n_neighbors}.")
    nn = NearestNeighbors(n_neighbors=k, metric="cosine").fit(Z)
    dist, idx = nn.kneighbors()  # X=None: each cell's neighbours without itself
    sim = 1.0 - dist
    w = softmax(softmax_scale * sim)
    rows = np.repeat(np.arange(n), k)
    return sparse.csr_matrix((w.ravel(), (rows, idx.ravel())), shape=(n, n))


def coarse_grain(T: sparse.spmatrix | np.ndarray, assigned: np.ndarray, n_phenotypes: int) -> np.ndarray:
    """Phenotype-level chain of a cell-level one: ``P[i, j]`` = mean over cells of ``i`` of
    the probability of moving into a cell of ``j``.
    """
    assigned = np.asarray(assigned, dtype=int)
    n = len(assigned)
    M = sparse.csr_matrix((np.ones(n), (np.arange(n), assigned)), shape=(n, n_phenotypes))
    flow = np.asarray((M.T @ sparse.csr_matrix(T) @ M).todense())
    return _normalise_rows(flow, np.asarray(M.sum(0)).ravel())


def _normalise_rows(P: np.ndarray, counts: np.ndarray) -> np.ndarray:
    P = np.array(P, dtype=float)
    empty = counts == 0
    P[~empty] /= counts[~empty, None]
    P[empty] = 0.0
    P[empty, np.flatnonzero(empty)] = 1.0
    P /= P.sum(1, keepdims=True)
    return P


def stationary_distribution(P: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """Stationary distribution ``π = π P`` of a row-stochastic matrix.

    The limit of the lazy chain ``(P + I) / 2`` started from ``start`` (default uniform),
    by repeated squaring: the unique stationary distribution of an irreducible chain, and the
    long-run distribution reached from ``start`` otherwise.
    """
    P = np.asarray(P, dtype=float)
    _check_stochastic(P)
    n = P.shape[0]
    pi = np.full(n, 1.0 / n) if start is None else np.asarray(start, dtype=float) / np.sum(start)
    M = 0.5 * (P + np.eye(n))
    for _ in range(64):
        M = M @ M
        M /= M.sum(1, keepdims=True)
    pi = pi @ M
    return pi / pi.sum()


def transition_entropy(P: np.ndarray | pd.DataFrame, priors: np.ndarray | None = None) -> tuple[pd.DataFrame, float]:
    """Entropy of each phenotype's row of ``P`` and their prior-weighted mean (natural log).

    ``H(C_i) = -Σ_j P[i, j] log P[i, j]`` (``0 log 0 = 0``); overall ``H = Σ_i π_i H(C_i)``
    with ``π`` the phenotype priors (uniform when not given).

    Returns
    -------
    A DataFrame indexed by phenotype with ``entropy``, ``entropy_normalized`` (divided by
    ``log(n_phenotypes)``, in [0, 1]) and ``prior``; and the overall entropy.

    """
    names = list(P.index) if isinstance(P, pd.DataFrame) else [str(i) for i in range(len(P))]
    P = np.asarray(P, dtype=float)
    _check_stochastic(P)
    n = P.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(P > 0, P * np.log(P), 0.0).sum(1)
    pi = np.full(n, 1.0 / n) if priors is None else np.asarray(priors, dtype=float)
    if pi.shape != (n,) or (pi < 0).any() or pi.sum() <= 0:
        raise ValueError(f"priors must be {n} non-negative weights (one per phenotype).")
    pi = pi / pi.sum()
    norm = np.log(n) if n > 1 else 1.0
    table = pd.DataFrame(
        {"entropy": h, "entropy_normalized": h / norm, "prior": pi}, index=pd.Index(names, name="phenotype")
    )
    return table, float(pi @ h)


def _check_stochastic(P: np.ndarray) -> None:
    if P.ndim != 2 or P.shape[0] != P.shape[1]:
        raise ValueError(f"A transition matrix must be square, got shape {P.shape}.")
    if (P < -1e-12).any() or not np.allclose(P.sum(1), 1.0, atol=1e-6):
        raise ValueError("A transition matrix must be non-negative with rows summing to 1.")


# -------------------------------------------------------------------------------------------
# the model's methods
# -------------------------------------------------------------------------------------------
class TransitionMixin:
    """Transition matrix, entropies, calibration and conformal prediction sets."""

    # ---------------------------------------------------------------- transitions
    def _assigned_codes(self, adata: AnnData | None, proba: np.ndarray) -> np.ndarray:
        """Each cell's phenotype code: its label where known, the prediction otherwise."""
        codes, labelled = self.labels_(adata)
        return np.where(labelled, codes, np.asarray(proba).argmax(1))

    def get_transition_matrix(
        self,
        adata: AnnData | None = None,
        *,
        method: Literal["posterior", "latent"] = "posterior",
        groupby: str | None = None,
        n_neighbors: int = 30,
        softmax_scale: float = 10.0,
        key_added: str | None = _keys.DEFAULT_KEY,
        batch_size: int | None = None,
    ) -> pd.DataFrame | dict[str, pd.DataFrame]:
        """Markov transition matrix between phenotypes (rows sum to 1).

        Each cell belongs to its known phenotype, or to its predicted one when unlabelled.

        Parameters
        ----------
        adata
            The registered AnnData (default) or a query.
        method
            ``"posterior"``: ``P[i, j]`` is the mean predicted probability of ``j`` over the
            cells of ``i``. ``"latent"``: a kNN Markov chain on the fused representation
            (cosine similarity, ``softmax(softmax_scale * similarity)`` over each cell's
            ``n_neighbors``), coarse-grained to phenotypes.
        groupby
            ``.obs`` column of conditions (e.g. control / disease): one matrix per condition,
            each from that condition's cells only (for ``"latent"``, neighbours are sought
            within the condition).
        n_neighbors, softmax_scale
            Neighbours per cell and sharpness of the softmax (``"latent"`` only).
        key_added
            With ``method="latent"``, the cell-level chain is written to
            ``adata.obsp[f"{key_added}_transitions"]`` (block-diagonal over conditions with
            ``groupby``), readable by CellRank's ``PrecomputedKernel(adata,
            obsp_key="kdcpt_transitions")``. ``None`` writes nothing.
        batch_size
            Cells per forward pass.

        Returns
        -------
        A phenotypes × phenotypes DataFrame (or a dict condition → DataFrame with
        ``groupby``). The stationary distribution is :func:`stationary_distribution` of it.
        Sets ``.obsp[f"{key_added}_transitions"]`` for ``method="latent"``.

        """
        if method not in ("posterior", "latent"):
            raise ValueError(f"method must be 'posterior' or 'latent', not {method!r}.")
        target = self.adata if adata is None else adata
        groups = self._groups(target, groupby)
        proba = self.predict(adata, soft=True, batch_size=batch_size).to_numpy()
        assigned = self._assigned_codes(adata, proba)
        C = len(self.classes_)

        def frame(P: np.ndarray) -> pd.DataFrame:
            return pd.DataFrame(
                P, index=pd.Index(self.classes_, name="source"), columns=pd.Index(self.classes_, name="target")
            )

        out: dict[str, pd.DataFrame] = {}
        if method == "posterior":
            for name, idx in groups.items():
                out[name] = frame(posterior_transition_matrix(proba[idx], assigned[idx], C))
        else:
            Z = self.get_latent_representation(adata, batch_size=batch_size)
            rows, cols, vals = [], [], []
            for name, idx in groups.items():
                T = knn_transition_matrix(Z[idx], n_neighbors, softmax_scale).tocoo()
                out[name] = frame(coarse_grain(T, assigned[idx], C))
                rows.append(idx[T.row])
                cols.append(idx[T.col])
                vals.append(T.data)
            if key_added is not None:
                n = target.n_obs
                T_all = sparse.csr_matrix(
                    (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
                )
                key = _keys.Keys(key_added).transitions
                if key in target.obsp:
                    logger.info("replacing .obsp[%r]", key)
                target.obsp[key] = T_all
                logger.info("added .obsp[%r] (cell-level kNN Markov chain, rows sum to 1)", key)
        for name in out:
            empty = [
                c
                for c, k in zip(self.classes_, np.bincount(assigned[groups[name]], minlength=C), strict=True)
                if k == 0
            ]
            if empty:
                where = f" in {groupby}={name!r}" if groupby is not None else ""
                logger.warning("No cells of %s%s: their rows are absorbing (1 on the diagonal).", empty, where)
        return out if groupby is not None else out[None]

    @staticmethod
    def _groups(adata: AnnData, groupby: str | None) -> dict:
        if groupby is None:
            return {None: np.arange(adata.n_obs)}
        if groupby not in adata.obs:
            raise KeyNotFoundError(
                f"groupby {groupby!r} is not a column of adata.obs (columns: {list(adata.obs.columns)})."
            )
        col = adata.obs[groupby]
        if col.isna().any():
            raise ValueError(f"adata.obs[{groupby!r}] has missing values; fill or drop them before grouping.")
        col = col.astype("category")
        return {str(c): np.flatnonzero((col == c).to_numpy()) for c in col.cat.categories if (col == c).any()}

    def get_entropy(
        self,
        adata: AnnData | None = None,
        *,
        method: Literal["posterior", "latent"] = "posterior",
        transition_matrix: pd.DataFrame | None = None,
        batch_size: int | None = None,
    ) -> tuple[pd.DataFrame, float]:
        """Entropy of each phenotype's transitions and overall (natural log).

        ``H(C_i) = -Σ_j P[i, j] log P[i, j]``; overall ``H = Σ_i π_i H(C_i)`` with ``π`` the
        phenotype priors (fraction of cells, labels where known, predictions otherwise).

        Parameters
        ----------
        adata
            The registered AnnData (default) or a query.
        method
            Passed to :meth:`get_transition_matrix` when ``transition_matrix`` is not given.
        transition_matrix
            A matrix from :meth:`get_transition_matrix` (skips recomputing it).
        batch_size
            Cells per forward pass.

        Returns
        -------
        A DataFrame indexed by phenotype (``entropy``, ``entropy_normalized`` = entropy /
        log(number of phenotypes), ``prior``) and the overall entropy.

        """
        proba = self.predict(adata, soft=True, batch_size=batch_size).to_numpy()
        priors = np.bincount(self._assigned_codes(adata, proba), minlength=len(self.classes_))
        if transition_matrix is None:
            transition_matrix = self.get_transition_matrix(adata, method=method, batch_size=batch_size, key_added=None)
        return transition_entropy(transition_matrix, priors)

    def _write_transitions(self, adata: AnnData, keys: _keys.Keys, proba: pd.DataFrame, labels: pd.Series) -> None:
        """Write the posterior transition matrix, stationary distribution and entropies.

        Sets ``.uns[key]``: ``transition_matrix`` (DataFrame; its columns use
        :func:`~scanpy_kdcpt._keys.safe_name` since h5ad stores column names as paths),
        ``stationary`` (array in phenotype order), ``entropy`` (DataFrame per phenotype),
        ``entropy_total`` and ``entropy_total_normalized``.
        """
        p = proba.to_numpy()
        lookup = {c: i for i, c in enumerate(self.classes_)}
        known = labels.notna().to_numpy()
        assigned = p.argmax(1)
        assigned[known] = labels[known].map(lookup).to_numpy(int)
        C = len(self.classes_)
        P = posterior_transition_matrix(p, assigned, C)
        priors = np.bincount(assigned, minlength=C).astype(float)
        table, total = transition_entropy(pd.DataFrame(P, index=self.classes_), priors)
        uns = adata.uns.setdefault(keys.uns, {})
        uns[_keys.UNS_TRANSITION] = pd.DataFrame(
            P,
            index=pd.Index(self.classes_, name="source"),
            columns=pd.Index([_keys.safe_name(c) for c in self.classes_], name="target"),
        )
        uns[_keys.UNS_STATIONARY] = stationary_distribution(P, start=priors / priors.sum())
        uns[_keys.UNS_ENTROPY] = table
        uns[_keys.UNS_ENTROPY_TOTAL] = float(total)
        uns[UNS_ENTROPY_TOTAL_NORMALIZED] = float(total / np.log(C)) if C > 1 else 0.0
        logger.info(
            "added .uns[%r]: %s",
            keys.uns,
            ", ".join(
                [
                    _keys.UNS_TRANSITION,
                    _keys.UNS_STATIONARY,
                    _keys.UNS_ENTROPY,
                    _keys.UNS_ENTROPY_TOTAL,
                    UNS_ENTROPY_TOTAL_NORMALIZED,
                ]
            ),
        )

    # ---------------------------------------------------------------- calibration
    def calibrate(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        *,
        labels_key: str | None = None,
        n_bins: int = 15,
        batch_size: int | None = None,
    ) -> dict[str, float]:
        """Temperature scaling on held-out cells, and the scores behind conformal sets.

        Fits ``T`` minimising the negative log-likelihood of the held-out cells' known
        phenotypes, sets ``temperature_`` (saved with the model), and keeps those cells'
        logits and phenotypes so that :meth:`predict` ``(conformal_alpha=...)`` can build
        split-conformal prediction sets (they are saved with the model too). The same
        held-out cells serve both (one fitted scalar barely changes the coverage).

        Parameters
        ----------
        adata
            The registered AnnData (default) or labelled held-out data.
        indices
            Held-out cells; default: the validation cells of training (keep
            ``train_size < 1``). Unlabelled cells among them are skipped.
        labels_key
            ``.obs`` column of known phenotypes, for an ``adata`` that is not the registered
            one (its labels are read from the registry otherwise).
        n_bins
            Confidence bins of the ECE.
        batch_size
            Cells per forward pass.

        Returns
        -------
        ``temperature``, ``temperature_before``, ``ece_before``, ``ece_after``,
        ``brier_before``, ``brier_after``, ``nll_before``, ``nll_after`` (before: at the
        model's temperature before this call, 1 unless set), ``n_cells``, ``n_bins``.
        ``annotate()`` then writes them to ``.uns[key]["calibration"]``.

        """
        self._check_if_trained(warn=True)
        target = self.adata if adata is None else adata
        if indices is None:
            if target is not self.adata:
                indices = np.arange(target.n_obs)
            else:
                indices = getattr(self, "validation_indices", None)
                if indices is None or len(indices) == 0:
                    raise ValueError(
                        "The model has no validation cells to calibrate on (trained with train_size=1.0, "
                        "or loaded from disk). Pass indices= of labelled cells left out of training."
                    )
        indices = np.asarray(indices)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        codes = self._held_out_codes(target, indices, labels_key)
        keep = codes >= 0
        if keep.sum() < 2:
            raise ValueError(
                f"Only {int(keep.sum())} of the {len(indices)} held-out cells are labelled; calibration needs more."
            )
        if keep.sum() < 50:
            logger.warning(
                "Calibrating on %d labelled cells only: temperature and conformal sets will be noisy.", int(keep.sum())
            )
        logits = self.get_logits(adata, indices=indices[keep], batch_size=batch_size)
        codes = codes[keep]
        T0 = float(self.temperature_)
        T = fit_temperature(logits, codes)
        before, after = softmax(logits, T0), softmax(logits, T)
        result = {
            "temperature": T,
            "temperature_before": T0,
            "ece_before": expected_calibration_error(before, codes, n_bins),
            "ece_after": expected_calibration_error(after, codes, n_bins),
            "brier_before": brier_score(before, codes),
            "brier_after": brier_score(after, codes),
            "nll_before": nll(logits, codes, T0),
            "nll_after": nll(logits, codes, T),
            "n_cells": int(len(codes)),
            "n_bins": int(n_bins),
        }
        self.temperature_ = T
        if not isinstance(getattr(self, "extra_", None), dict):
            self.extra_ = {}
        self.extra_["calibration"] = {
            **result,
            "logits": np.asarray(logits, dtype=np.float32),
            "codes": np.asarray(codes, dtype=np.int64),
        }
        logger.info(
            "temperature %.3f: ECE %.4f → %.4f on %d held-out cells",
            T,
            result["ece_before"],
            result["ece_after"],
            len(codes),
        )
        return result

    def _held_out_codes(self, target: AnnData, indices: np.ndarray, labels_key: str | None) -> np.ndarray:
        if labels_key is None:
            if target is not self.adata:
                raise ValueError(
                    "Pass labels_key= (the .obs column of known phenotypes) to calibrate on another AnnData."
                )
            codes, _ = self.labels_(None)
            return codes[indices]
        if labels_key not in target.obs:
            raise KeyNotFoundError(
                f"labels_key {labels_key!r} is not a column of adata.obs (columns: {list(target.obs.columns)})."
            )
        lookup = {c: i for i, c in enumerate(self.classes_)}
        labels = target.obs[labels_key].iloc[indices]
        return labels.map(lambda x: lookup.get(str(x), -1) if pd.notna(x) else -1).to_numpy(int)

    def _calibration_state(self) -> dict | None:
        state = getattr(self, "extra_", None)
        return state.get("calibration") if isinstance(state, dict) else None

    def _conformal_threshold(self, alpha: float) -> float:
        state = self._calibration_state()
        if state is None or "logits" not in state:
            raise ValueError(
                "Prediction sets need conformal calibration scores: call model.calibrate() (held-out "
                "labelled cells) before predict(conformal_alpha=...) or annotate(conformal_alpha=...)."
            )
        proba = softmax(np.asarray(state["logits"], dtype=float), float(self.temperature_))
        return conformal_threshold(conformal_scores(proba, np.asarray(state["codes"], dtype=int)), alpha)

    def _prediction_sets(self, proba: pd.DataFrame, alpha: float) -> pd.DataFrame:
        """Boolean cells × phenotypes membership of the split-conformal sets at level ``alpha``."""
        sets = prediction_sets(proba.to_numpy(), self._conformal_threshold(alpha))
        return pd.DataFrame(sets, index=proba.index, columns=proba.columns)

    def _write_prediction_sets(self, adata: AnnData, keys: _keys.Keys, proba: pd.DataFrame, alpha: float) -> None:
        """Set ``.obs[{key}_prediction_set]`` (e.g. ``"B|T"``) and ``.obs[{key}_set_size]``."""
        sets = self._prediction_sets(proba, alpha)
        names = np.asarray(self.classes_, dtype=object)
        members = [_SET_SEP.join(names[row]) for row in sets.to_numpy()]
        adata.obs[keys.prediction_set] = pd.Categorical(members)
        adata.obs[keys.set_size] = sets.sum(1).to_numpy(np.int32)
        logger.info("added .obs: %s, %s (conformal alpha=%g)", keys.prediction_set, keys.set_size, alpha)

    def _write_calibration(
        self,
        adata: AnnData,
        keys: _keys.Keys,
        proba: pd.DataFrame,
        labels: pd.Series,
        conformal_alpha: float | None = None,
        is_training: bool | None = None,
    ) -> None:
        """Set ``.uns[key]["calibration"]``.

        With :meth:`calibrate` run: its numbers (ECE / Brier before and after) and the
        reliability tables of the calibration cells before (``reliability_before``) and at
        ``temperature_`` (``reliability``). Without: the ECE, Brier and reliability table
        of the validation cells when ``adata`` is the training data.
        """
        state = self._calibration_state()
        out: dict = {"temperature": float(self.temperature_), "calibrated": state is not None}
        if state is not None:
            n_bins = int(state.get("n_bins", 15))
            logits = np.asarray(state["logits"], dtype=float)
            codes = np.asarray(state["codes"], dtype=int)
            after = softmax(logits, float(self.temperature_))
            out.update(
                {
                    k: float(state[k])
                    for k in ("ece_before", "ece_after", "brier_before", "brier_after", "nll_before", "nll_after")
                }
            )
            out["ece"] = expected_calibration_error(after, codes, n_bins)
            out["brier"] = brier_score(after, codes)
            out["n_cells"] = int(len(codes))
            out["temperature_before"] = float(state.get("temperature_before", 1.0))
            out["reliability_before"] = reliability_table(softmax(logits, out["temperature_before"]), codes, n_bins)
            out["reliability"] = reliability_table(after, codes, n_bins)
            out["cells"] = "calibration (held-out) cells"
        elif (
            (adata is self.adata if is_training is None else is_training)
            and getattr(self, "validation_indices", None) is not None
            and len(self.validation_indices)
        ):
            val = np.asarray(self.validation_indices)
            val = val[labels.iloc[val].notna().to_numpy()]
            if val.size:
                lookup = {c: i for i, c in enumerate(self.classes_)}
                codes = labels.iloc[val].map(lookup).to_numpy(int)
                p = proba.to_numpy()[val]
                out["ece"] = expected_calibration_error(p, codes)
                out["brier"] = brier_score(p, codes)
                out["n_cells"] = int(val.size)
                out["reliability"] = reliability_table(p, codes)
                out["cells"] = "validation cells"
        if conformal_alpha is not None:
            out["conformal_alpha"] = float(conformal_alpha)
            out["conformal_threshold"] = float(self._conformal_threshold(conformal_alpha))
        adata.uns.setdefault(keys.uns, {})[_keys.UNS_CALIBRATION] = out
        logger.info("added .uns[%r][%r]", keys.uns, _keys.UNS_CALIBRATION)
