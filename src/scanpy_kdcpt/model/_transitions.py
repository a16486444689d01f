"""Phenotype transition matrices and their entropy (methods mixed into KDCPT).

The maths lives in :mod:`scanpy_kdcpt.markov`; these methods run the model, build the chains and
return :class:`~scanpy_kdcpt.results.Transitions` objects. They never write into AnnData.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import torch
from scanpy import logging as logg
from scipy import sparse

from .. import _expression, _keys, directed, markov, writers
from .._constants import REGISTRY_KEYS
from .._errors import InvalidInputError, KeyNotFoundError
from .._utils import check_obs_column
from ..results import Fates, Predictions, Transitions
from ._crossfit import check_predictions
from ._docs import model_dsp, output_target
from ._fates import terminal_names

if TYPE_CHECKING:
    from anndata import AnnData

    from ._base import KDCPTLike


@dataclass
class TransitionState:
    """The directed cell chain a model keeps after :meth:`~scanpy_kdcpt.KDCPT.compute_transitions`
    (for fates, knockouts and :meth:`~scanpy_kdcpt.KDCPT.to_cellrank`; not saved with the model).

    Attributes
    ----------
    cell_chain
        Cells × cells, row-stochastic (CSR).
    direction
        What biased the chain, and its parameters.
    obs_names
        The cells it was built on, in order.
    memberships
        Cells × phenotypes soft memberships ``M`` it is coarse-grained with.
    registered
        Whether the cells are the model's registered AnnData (knockouts use the chain only then).
    connectivities
        The kNN graph the chain was built on (cells × cells, symmetric): knockout simulation
        smooths expression over it.
    terminal
        Terminal phenotypes recorded by :meth:`~scanpy_kdcpt.KDCPT.annotate` with the fates it
        wrote (``None`` until then), so that knockouts compare fates into the same phenotypes.
    terminal_named
        Whether ``terminal`` was named by the user (``annotate(terminal=...)``); a later
        ``annotate()`` keeps such a choice instead of the sinks of the net flux.

    """

    cell_chain: sparse.csr_matrix
    direction: dict
    obs_names: np.ndarray
    memberships: np.ndarray
    registered: bool = True
    connectivities: sparse.csr_matrix | None = None
    terminal: list[str] | None = None
    terminal_named: bool = False

    def covers(self, adata: AnnData) -> bool:
        """Whether the chain was built on exactly these cells, in this order."""
        return len(self.obs_names) == adata.n_obs and np.array_equal(self.obs_names, np.asarray(adata.obs_names))


class TransitionMixin:
    """Transition matrices between phenotypes and their entropies."""

    #: set by :meth:`compute_transitions`
    transitions_: TransitionState | None = None

    @model_dsp.dedent
    def get_transition_matrix(
        self: KDCPTLike,
        adata: AnnData | None = None,
        *,
        method: Literal["posterior", "latent"] = "posterior",
        groupby: str | None = None,
        n_neighbors: int = 30,
        softmax_scale: float = 10.0,
        batch_size: int | None = None,
        predictions: Predictions | None = None,
    ) -> Transitions | dict[str, Transitions]:
        """Markov transition matrix between phenotypes (rows sum to 1).

        Each cell belongs to its known phenotype, or to its predicted one when unlabelled.

        Parameters
        ----------
        adata
            The registered AnnData (default) or a query.
        method
            ``"posterior"``: the paper's phenotype-similarity form, ``P[i, j]`` = mean predicted
            probability of ``j`` over the cells of ``i`` (reversible: it shows which phenotypes
            shade into each other, not a direction). ``"latent"``: an undirected kNN Markov
            chain between cells (cosine similarity on the model's fused representation,
            ``softmax(softmax_scale * similarity)`` over each cell's ``n_neighbors``),
            coarse-grained to phenotypes with ``P = D⁻¹ Mᵀ T M``.
        groupby
            ``.obs`` column of conditions (e.g. control / disease): one result per condition,
            each from that condition's cells only (for ``"latent"``, neighbours are sought
            within the condition).
        n_neighbors, softmax_scale
            Neighbours per cell and sharpness of the softmax (``"latent"`` only).
        %(param_batch_size)s
        %(param_predictions)s

        Returns
        -------
        :class:`~scanpy_kdcpt.results.Transitions` (``matrix``, ``entropy``, ``mass`` — each
        phenotype's share of the cells — and for ``"latent"`` the cell-level ``cell_chain``; both
        forms are undirected, so no ``stationary`` and no ``flux``), or a dict condition →
        Transitions with ``groupby``. :func:`scanpy_kdcpt.writers.write_transitions` writes one
        into an AnnData.

        """
        if method not in ("posterior", "latent"):
            raise InvalidInputError(f"method must be 'posterior' or 'latent', not {method!r}.")
        target = self.adata if adata is None else adata
        groups = _groups(target, groupby)
        if predictions is not None:
            check_predictions(predictions, target.obs_names, self.classes_, name="predictions")
        pred = predictions if predictions is not None else self.get_predictions(adata, batch_size=batch_size)
        proba = pred.proba.to_numpy()
        assigned = pred.assigned
        C = len(self.classes_)
        Z = self.get_latent_representation(adata, batch_size=batch_size) if method == "latent" else None
        out: dict = {}
        for name, idx in groups.items():
            M = markov.memberships(assigned[idx], C)
            sizes = np.asarray(M.sum(0)).ravel()
            _warn_empty(self.classes_, sizes, groupby, name)
            if method == "posterior":
                P, chain = markov.posterior_transition_matrix(proba[idx], M), None
            else:
                chain = markov.knn_transition_matrix(Z[idx], n_neighbors, softmax_scale)
                P = markov.coarse_grain(chain, M)
            out[name] = Transitions.from_matrix(
                P,
                self.classes_,
                sizes,
                method=method,
                cell_chain=chain,
                direction={"kind": "none", "n_neighbors": n_neighbors} if method == "latent" else {},
            )
        if groupby is None:
            return out[None]
        if method == "latent":  # all conditions' chains, block-diagonal in the cells' order: every
            # cell moves within its own condition, and every row sums to 1 (a PrecomputedKernel reads it)
            blocks = [_embed_chain(out[name].cell_chain, idx, target.n_obs) for name, idx in groups.items()]
            whole = sparse.csr_matrix(sum(blocks[1:], blocks[0]))
            for name in groups:
                out[name].cell_chain = whole
        return out

    def get_encoder_representation(
        self: KDCPTLike, adata: AnnData | None = None, *, batch_size: int = 4096
    ) -> np.ndarray:
        """The model's input embedding of each cell: its PCA encoder coordinates (or the
        ``.obsm`` embedding it was set up with), cells × dimensions, not whitened.

        Unlike the fused latent (:meth:`get_latent_representation`), which the classifier
        squeezes into one tight cluster per phenotype, this keeps the manifold between
        phenotypes: it is what the directed cell chain is built on. Components keep their
        variance (the network's input standardises them, which would give noise components
        the weight of the leading ones in a kNN search).
        """
        adata = self._prepare_adata(adata)
        m = self.module
        if m.external_embedding:
            manager = self.get_anndata_manager(adata, required=True)
            return np.asarray(manager.get_from_registry(REGISTRY_KEYS.EMBEDDING_KEY), dtype=np.float32)
        X = self._inputs.registered_matrix(adata)  # genes (+ regulatory sites with setup_mudata)
        out = []
        with torch.inference_mode():
            for _, block in _expression.iter_rows(X, batch_size):
                block = block.toarray() if sparse.issparse(block) else np.asarray(block)
                x_log = m.normalize(torch.as_tensor(block, dtype=torch.float32, device=m.gene_mean.device))
                x_log = torch.minimum(x_log, m.input_max)  # as the prediction branch reads it
                out.append(((x_log - m.gene_mean) @ m.loadings).cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    @model_dsp.dedent
    def compute_transitions(
        self: KDCPTLike,
        adata: AnnData | None = None,
        *,
        direction: str | dict | None = "auto",
        time_key: str | None = None,
        root: str | None = None,
        n_neighbors: int = 30,
        representation: str = "encoder",
        predictions: Predictions | None = None,
        batch_size: int | None = None,
        random_state: int = 0,
        key_added: str = _keys.DEFAULT_KEY,
        inplace: bool = True,
        copy: bool = False,
    ) -> Transitions:
        """Directed phenotype transitions from a cell-level Markov chain (CellRank 2 kernels).

        A kNN graph on a representation that keeps the manifold is biased by a direction
        signal (see :mod:`scanpy_kdcpt.directed`) into a cell chain ``T``, coarse-grained with
        the model's soft phenotype memberships ``M`` (each cell's predicted probabilities):
        ``P = D⁻¹ Mᵀ T M``, ``D = diag(Mᵀ 1)``.

        Parameters
        ----------
        adata
            The registered AnnData (default) or a query.
        direction
            ``"velocity"`` (``spliced`` / ``unspliced`` layers), ``"pseudotime"`` (``time_key``
            or ``root``), ``"time"`` (experimental time points in ``time_key``), ``"cytotrace"``,
            ``"auto"`` (velocity when the layers exist, else pseudotime when ``time_key`` or
            ``root`` is given, else CytoTRACE), ``None`` (undirected), or a dict of kernel
            weights such as ``{"velocity": 0.5, "cytotrace": 0.5}``.
        time_key
            ``.obs`` column of a pseudotime or of time points (numbers or ordered categories).
        root
            Root phenotype for diffusion pseudotime; its root cell is the cell of that
            phenotype farthest from the other phenotypes' centroids in diffusion-map space.
        n_neighbors
            Neighbours per cell in the kNN graph (exact below 4,096 cells, pynndescent above).
        representation
            ``"encoder"`` (default: the model's PCA encoder / input embedding), ``"latent"``
            (the fused classifier latent, which squeezes phenotypes together) or an ``.obsm`` key.
        %(param_predictions)s
        %(param_batch_size)s
        random_state
            Seed of the approximate kNN search.
        %(param_key_added)s
        %(param_inplace)s
        %(param_copy)s

        Returns
        -------
        :class:`~scanpy_kdcpt.results.Transitions` with ``method="directed"`` (the written copy with
        ``copy=True``). When it writes, sets ``.obsp["{key}_transitions"]`` (the cell chain) and
        ``.uns[key]``: ``transition_matrix``, ``phenotype_mass``, ``entropy``, ``entropy_total``,
        ``entropy_total_normalized``; with a direction signal also ``stationary`` and ``flux``
        (net flux ``F - Fᵀ``, ``F = diag(n) P``; ``direction=None`` gives neither),
        ``transition_method`` (``"directed"``) and ``direction`` (what biased the chain).
        The chain is kept in ``model.transitions_`` for :meth:`get_fate_probabilities`,
        :meth:`to_cellrank` and knockouts (not saved with the model) whether or not it writes:
        ``inplace=False`` leaves ``adata`` untouched, but the model's later fates and knockouts
        use this chain, the last one computed.

        """
        target = self.adata if adata is None else adata
        if predictions is not None:
            check_predictions(predictions, target.obs_names, self.classes_, name="predictions")
        pred = predictions if predictions is not None else self.get_predictions(adata, batch_size=batch_size)
        M = pred.proba.to_numpy(np.float64)
        Z = self._transition_representation(adata, representation, batch_size=batch_size)
        expression = None
        weights = directed.resolve_direction(direction, target, time_key=time_key, root=root)
        if "cytotrace" in weights:
            manager = self.get_anndata_manager(self._prepare_adata(adata), required=True)
            X = manager.get_from_registry(REGISTRY_KEYS.X_KEY)
            if _expression.is_backed(X):  # CytoTRACE reads every cell's genes: in row blocks, kept sparse
                X = _expression.read_rows(X, np.arange(X.shape[0]))
            expression = _expression.log_normalize(X, self.data_type_)
        graph = markov.knn_graph(Z, n_neighbors, random_state=random_state)
        T, record = directed.directed_chain(
            target,
            Z,
            graph=graph,
            direction=weights,
            expression=expression,
            codes=pred.assigned,
            phenotypes=list(self.classes_),
            time_key=time_key,
            root=root,
            n_neighbors=n_neighbors,
            random_state=random_state,
        )
        record["representation"] = representation
        record["memberships"] = "soft (predicted probabilities)"
        if direction is None or direction == "none":
            record["kind"] = "none"
        P = markov.coarse_grain(T, M)
        sizes = M.sum(0)
        result = Transitions.from_matrix(P, self.classes_, sizes, method="directed", cell_chain=T, direction=record)
        self.transitions_ = TransitionState(
            cell_chain=T,
            direction=record,
            obs_names=np.asarray(target.obs_names),
            memberships=M,
            registered=adata is None or adata is self.adata,
            connectivities=graph[1],
        )
        out = output_target(target, inplace=inplace, copy=copy)
        if out is not None:
            writers.write_transitions(out, result, key_added=key_added)
        return out if copy else result

    def _transition_representation(self: KDCPTLike, adata, representation: str, *, batch_size=None) -> np.ndarray:
        target = self.adata if adata is None else adata
        if representation == "encoder":
            return self.get_encoder_representation(adata)
        if representation == "latent":
            return self.get_latent_representation(adata, batch_size=batch_size)
        if representation in target.obsm:
            Z = np.asarray(target.obsm[representation], dtype=np.float32)
            if not np.isfinite(Z).all():
                raise InvalidInputError(
                    f"adata.obsm[{representation!r}] has {int((~np.isfinite(Z)).sum())} NaN or infinite values: "
                    "fill them, or pass representation='encoder'."
                )
            return Z
        raise KeyNotFoundError(
            f"representation {representation!r} is neither 'encoder', 'latent' nor an .obsm key "
            f"(obsm keys: {list(target.obsm.keys())})."
        )

    def _stored_chain(self: KDCPTLike, adata: AnnData | None) -> TransitionState:
        state = self.transitions_
        target = self.adata if adata is None else adata
        if state is None:
            raise InvalidInputError("No directed cell chain: run model.compute_transitions(...) first.")
        if not state.covers(target):
            raise InvalidInputError(
                "model.transitions_ was computed on other cells: run model.compute_transitions(adata) on these cells."
            )
        return state

    def _annotate_transitions(
        self: KDCPTLike, adata: AnnData | None, predictions: Predictions, direction, terminal=None
    ) -> tuple[Transitions, Fates | None]:
        """The transitions (and fates) :meth:`annotate` writes; see its ``direction`` and ``terminal``."""
        target = self.adata if adata is None else adata
        if terminal is not None and not (isinstance(terminal, str) and terminal == "gpcca"):
            terminal_names(terminal, self.classes_)  # checked whether or not a chain will use them
        if direction == "posterior":
            return self.get_transition_matrix(adata, predictions=predictions), None
        if direction == "stored":
            state = self.transitions_
            if state is None or not state.covers(target):
                result = self.get_transition_matrix(adata, predictions=predictions)
                result.direction = {
                    "kind": "none",
                    "note": "posterior form: no directed chain (run model.compute_transitions or "
                    "annotate(direction=...))",
                }
                _terminal_not_used(terminal)
                return result, None
            state.memberships = M = predictions.proba.to_numpy(np.float64)
            result = Transitions.from_matrix(
                markov.coarse_grain(state.cell_chain, M),
                self.classes_,
                M.sum(0),
                method="directed",
                cell_chain=state.cell_chain,
                direction=state.direction,
            )
        else:
            result = self.compute_transitions(adata, direction=direction, predictions=predictions, inplace=False)
        fates = None
        if result.direction.get("kind") == "none":
            _terminal_not_used(terminal)
        if result.direction.get("kind") != "none":
            state = self.transitions_
            if terminal is None and state.terminal_named:
                terminal = state.terminal  # the user's choice stands; the sinks of the flux only without one
            try:
                fates = self.get_fate_probabilities(adata, terminal=terminal)
            except ValueError as err:
                logg.warning(f"fate probabilities not written: {err}")
            else:  # knockouts compare fates into the same terminal phenotypes
                state.terminal = list(fates.terminal)
                state.terminal_named = state.terminal_named or terminal is not None
        return result, fates

    def get_entropy(
        self: KDCPTLike,
        adata: AnnData | None = None,
        *,
        method: Literal["posterior", "latent"] = "posterior",
        batch_size: int | None = None,
    ) -> tuple[pd.DataFrame, float]:
        """Entropy of each phenotype's transitions and overall (natural log).

        ``H(C_i) = -Σ_j P[i, j] log P[i, j]``; overall ``H = Σ_i π_i H(C_i)`` with ``π`` the
        phenotype priors (fraction of cells, labels where known, predictions otherwise).

        Returns
        -------
        A DataFrame indexed by phenotype (``entropy``, ``entropy_normalized`` = entropy /
        log(number of phenotypes), ``prior``) and the overall entropy. The same numbers are
        fields of :meth:`get_transition_matrix`'s result.

        """
        result = self.get_transition_matrix(adata, method=method, batch_size=batch_size)
        return result.entropy, result.entropy_total


def _groups(adata: AnnData, groupby: str | None) -> dict:
    if groupby is None:
        return {None: np.arange(adata.n_obs)}
    check_obs_column(adata, groupby, "groupby")
    col = adata.obs[groupby]
    if col.isna().any():
        raise InvalidInputError(f"adata.obs[{groupby!r}] has missing values; fill or drop them before grouping.")
    col = col.astype("category")
    return {str(c): np.flatnonzero((col == c).to_numpy()) for c in col.cat.categories if (col == c).any()}


def _warn_empty(phenotypes: list[str], sizes: np.ndarray, groupby: str | None, name) -> None:
    empty = [c for c, k in zip(phenotypes, sizes, strict=True) if k == 0]
    if empty:
        where = f" in {groupby}={name!r}" if groupby is not None else ""
        logg.warning(f"No cells of {empty}{where}: their rows are absorbing (1 on the diagonal).")


def _embed_chain(chain: sparse.spmatrix, idx: np.ndarray, n: int) -> sparse.csr_matrix:
    """A chain over the cells ``idx`` placed into an ``n × n`` matrix."""
    coo = chain.tocoo()
    return sparse.csr_matrix((coo.data, (idx[coo.row], idx[coo.col])), shape=(n, n))


def _terminal_not_used(terminal) -> None:
    """Warn that ``annotate(terminal=...)`` writes no fates: there is no directed chain."""
    if terminal is not None:
        warnings.warn(
            f"terminal={terminal!r} is not used: there is no directed chain, so no fates are written. Run "
            "model.compute_transitions(...) first, or pass annotate(direction=...).",
            UserWarning,
            stacklevel=4,
        )
