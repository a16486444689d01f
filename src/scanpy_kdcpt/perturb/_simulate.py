"""Knockouts that move cells (``knockout(simulate="grn")``): the GRN, the shift, the perturbed chain.

The maths is :mod:`scanpy_kdcpt.simulation` (CellOracle's simulation on this package's directed
chain); this room gathers what it needs from the model — log expression of the genes smoothed
over the chain's kNN graph, each cell's phenotype, a PCA basis for the cosines — and runs it per
knockout: ``Δx`` through the GRN, the chain ``T_ko`` biased by it, the perturbation score and its
null of row-shuffled shifts.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scanpy import logging as logg
from scipy import sparse

from .. import _expression, _keys, markov, simulation
from .._errors import InvalidInputError, KeyNotFoundError
from ..simulation._grn import _block_rows
from ._fate import resolve_chain
from ._grn import edges_matrix

if TYPE_CHECKING:
    from ..model._base import KDCPTLike

#: components of the PCA basis the cosines of the perturbed chain are taken in (measured in
#: ``benchmarks/knockout_genetics_core.py``: the same signs as gene space, ~20× faster)
N_BASIS = 30


class GRNMixin:
    """The gene regulatory network that knockouts are simulated through."""

    #: set by :meth:`fit_grn` (kept in memory, not saved with the model)
    grn_: simulation.GRN | None = None
    #: the model's chain (``transitions_``) when the GRN was fitted: its graph smooths, its stage adjusts
    _grn_state = None
    #: what the GRN's stage adjustment was (``knockout_params["grn_stage"]``)
    _grn_stage_note = "none"

    def fit_grn(
        self: KDCPTLike,
        *,
        regulators: str | Sequence[str] | np.ndarray | None = "prior",
        base: pd.DataFrame | None = None,
        alpha: float = 0.02,
        min_z: float = 3.0,
        min_cells: int = 30,
        stage: str | np.ndarray | None = "auto",
        terminal: Sequence[str] | None = None,
        n_neighbors: int = 30,
    ) -> simulation.GRN:
        """Fit the GRN that :meth:`knockout` simulates shifts through (on the registered cells).

        Per phenotype (each cell's known phenotype, else its prediction), each gene's log
        expression, smoothed over the kNN graph of :meth:`compute_transitions` (or of the
        encoder representation when no chain was computed), is a ridge regression on its
        candidate regulators (:func:`scanpy_kdcpt.simulation.fit_grn`), as CellOracle fits
        cluster-specific networks. Coefficients with ``|β| / se < min_z`` are pruned.

        Parameters
        ----------
        regulators
            ``"prior"`` (default): the genes flagged by the model's ``prior_key`` (e.g.
            transcription factors); ``None``: every gene; or gene names / a boolean mask over
            the model's genes.
        base
            A TF → target table (columns ``tf``, ``target``, e.g. DoRothEA via
            :func:`scanpy_kdcpt.datasets.tf_target_prior`): each target's regulators are then
            restricted to its base regulators.
        alpha
            Ridge penalty per cell, on unstandardised log expression (``0.02``: CellOracle's
            ``alpha=10`` at ~500 cells per phenotype).
        min_z
            Coefficients below this ``|β| / se`` are set to 0 (keeps the network sparse). The
            ``se`` treats the cells as independent, but the expression is averaged over ~30
            neighbours first, so ``z`` is inflated and weak links pass: on the synthetic data
            the TFs without any target keep as many links at 3 as the planted regulators and
            move cells as far; at 8 they keep almost none while the planted regulators keep
            their effect (``benchmarks/results/grn_min_z.md``). On pancreas and Paul 2015 (with
            the default ``stage``), 5 and 8 raised the share of published knockout directions
            beyond random TFs from 25 % to 35 % and 40 % but lowered the share beyond
            randomised shifts from 65 % to 60 % and 45 %, the fate changes shrinking
            (``knockout_genetics_minz5.md``, ``_minz8.md``). A standard error that accounts for the smoothing
            is only 1.4–1.9× larger, and with it the targetless TFs still keep as many links
            at 3 (``grn_z_smoothing.md``), so the default stays 3: compare a knockout with
            ``n_regulator_null`` before reading it as specific to the gene.
        min_cells
            Phenotypes with fewer cells use the coefficients fitted on all cells.
        stage
            Each cell's developmental stage, partialled out of every gene within each phenotype
            before the regressions (with its square): ``"chain"`` — the expected number of steps
            of the directed chain of :meth:`compute_transitions` before it reaches a terminal
            state (the absorbing cells of the fates, :func:`scanpy_kdcpt.markov.terminal_states`;
            :func:`scanpy_kdcpt.simulation.chain_stage`) —, an
            ``.obs`` column (e.g. a pseudotime), or one value per registered cell. Along a
            lineage a TF that merely rises with the stage otherwise gets links to every gene
            that falls with it, and its knockout sends cells back along the lineage (see
            :func:`scanpy_kdcpt.simulation.fit_grn`). ``"auto"`` (default): ``"chain"`` when
            the model has a directed chain of the registered cells with terminal phenotypes,
            otherwise no adjustment (said in the log). ``None``: no adjustment. Measured
            (``benchmarks/results/knockout_genetics_stage-chain.md`` against
            ``knockout_genetics_stage-none.md``, 3 seeds of pancreas and Paul 2015): the same
            published signs (70 %) and the same share beyond randomised shifts (65 %), and
            more directions beyond random TFs knocked out alike (25 % against 10 %; Pax4's β
            loss −0.29 against −0.09); on krumsiek11's known wiring 18 right-sign edges either
            way, 13 more links outside it (82 against 69).
        terminal
            With ``stage="chain"`` (or ``"auto"``): the terminal phenotypes (default: as for
            fates, those named with :meth:`annotate`, else the sinks of the net flux). Pass the
            ones the knockouts will use; :meth:`knockout` passes its own when it fits the GRN.
        n_neighbors
            Neighbours of the smoothing graph when no chain has been computed.

        Returns
        -------
        :class:`~scanpy_kdcpt.simulation.GRN`, also kept as ``model.grn_`` for :meth:`knockout`.

        """
        self._check_if_trained(warn=True)
        X, codes = _simulation_inputs(self, n_neighbors)
        return _fit(
            self,
            X,
            codes,
            regulators=regulators,
            base=base,
            alpha=alpha,
            min_z=min_z,
            min_cells=min_cells,
            stage=stage,
            terminal=terminal,
        )


def _fit(
    model, X: np.ndarray, codes: np.ndarray, *, regulators, base, alpha, min_z, min_cells, stage=None, terminal=None
) -> simulation.GRN:
    """:meth:`GRNMixin.fit_grn` on expression already smoothed; sets ``model.grn_``."""
    genes = model.var_names_[: _n_genes(model)]
    mask = _regulator_mask(model, regulators, genes)
    A = edges_matrix(base, genes) if base is not None else None
    s, note = _stage(model, stage, X.shape[0], terminal)
    grn = simulation.fit_grn(
        X,
        codes,
        regulators=mask,
        base=A,
        graph=None,  # X is smoothed already
        alpha=alpha,
        n_phenotypes=len(model.classes_),
        min_cells=min_cells,
        min_z=min_z,
        genes=genes,
        covariates=None if s is None else np.column_stack([s, s**2]),
    )
    model.grn_, model._grn_state = grn, model.transitions_
    model._grn_stage_note = note
    n_links = [int(W.nnz) for W in grn.coef]
    logg.info(f"KDCPT: GRN with {len(grn.regulators)} regulators, {min(n_links)}–{max(n_links)} links per phenotype.")
    return grn


@dataclass
class ShiftSimulator:
    """What every simulated knockout of one :meth:`knockout` call shares."""

    T: sparse.csr_matrix  # the unperturbed chain
    X: np.ndarray  # smoothed log expression of the genes, cells × genes
    codes: np.ndarray  # each cell's phenotype
    grn: simulation.GRN
    basis: np.ndarray  # genes × N_BASIS PCA loadings (cosines, and Z for the score)
    Z: np.ndarray  # cells × N_BASIS coordinates of X on the basis
    n_propagation: int = 3
    sigma: float = 0.25
    n_genes: int = field(init=False)

    def __post_init__(self):
        self.n_genes = self.X.shape[1]

    @classmethod
    def build(
        cls, model: KDCPTLike, T, *, n_propagation: int, sigma: float, terminal: Sequence[str] | None = None
    ) -> ShiftSimulator:
        X, codes = _simulation_inputs(model, 30)  # once: for the GRN (when not fitted yet) and the shifts
        if model.grn_ is None:  # fit_grn's defaults, the stage to the knockout's terminals
            _fit(model, X, codes, **(_fit_grn_defaults() | {"terminal": terminal}))
        elif model._grn_state is not model.transitions_:
            warnings.warn(
                "model.grn_ was fitted before the current chain (compute_transitions was run since): the knockouts "
                "use the GRN as fitted then, smoothed and staged on the chain it had. Refit it on the current chain "
                "with model.fit_grn(...) (or set model.grn_ = None to fit it with the defaults on first use).",
                UserWarning,
                stacklevel=4,
            )
        basis, Z = _pca_basis(X)
        return cls(T, X, codes, model.grn_, basis, Z, n_propagation, sigma)

    def shift(self, unit: Sequence[int], value: float = 0.0) -> np.ndarray:
        """``Δx`` of a knockout (cells × genes); regulatory sites of the unit are not simulated."""
        genes = [g for g in unit if g < self.n_genes]
        if not genes:
            return np.zeros_like(self.X)
        return simulation.simulate_shift(
            self.X, self.codes, self.grn, genes, value=value, n_propagation=self.n_propagation
        )

    def _chain_kwargs(self, unit: Sequence[int]) -> dict:
        return {"sigma": self.sigma, "basis": self.basis, "ignore": [g for g in unit if g < self.n_genes]}

    def chain(self, unit: Sequence[int], shift: np.ndarray) -> sparse.csr_matrix:
        """``T_ko``: each cell's move biased towards neighbours its shift points to."""
        return simulation.perturbed_chain(self.T, self.X, shift, **self._chain_kwargs(unit))

    def score(self, T_ko: sparse.csr_matrix) -> np.ndarray:
        """Perturbation score per cell: the shift's vector against the chain's developmental drift."""
        return simulation.perturbation_score(self.T, self.Z, simulation.embed_shift(self.T, T_ko, self.Z))

    def pvalues(
        self,
        unit: Sequence[int],
        shift: np.ndarray,
        T_ko: sparse.csr_matrix,
        observed: float,
        n: int,
        seed: int,
        fates: Callable[[sparse.csr_matrix], np.ndarray] | None = None,
    ) -> tuple[float, np.ndarray | None]:
        """Two-sided p of the mean perturbation score, and of each fate change, against ``n``
        randomised shifts: each gene's shift permuted across cells with random signs (velocyto's /
        CellOracle's randomisation), the same draws for both.

        ``fates(T_chain)`` gives what is tested of a chain (the fates, then the net fluxes over the
        horizon, flat, :meth:`FateDeltas.tested`; the knockout's memberships fixed); the change
        tested is ``fates(T_ko) − fates(T)`` against ``fates(T_null) − fates(T)``: does the
        direction of the simulated shift change the fates (and fluxes) more than the same genes
        moved by the same amounts in random directions.
        """
        if n < 1 or not np.any(shift):
            return np.nan, None
        if fates is None:

            def statistic(T_chain):
                return np.r_[self.score(T_chain).mean()]
        else:
            fates = _quiet(fates)  # its notes on the memberships are given once, by the knockout's own fates
            base = fates(self.T)
            fate_ko = fates(T_ko) - base

            def statistic(T_chain):
                return np.r_[self.score(T_chain).mean(), (fates(T_chain) - base).ravel()]

        null = simulation.randomized_shift_null(
            self.T, self.X, shift, statistic, n_permutations=n, seed=seed, mode="entries", **self._chain_kwargs(unit)
        )
        p_score = float(simulation.empirical_pvalue(observed, null[:, 0]))
        if fates is None:
            return p_score, None
        p_fate = np.asarray(simulation.empirical_pvalue(fate_ko.ravel(), null[:, 1:])).reshape(fate_ko.shape)
        still = np.abs(fate_ko) < 1e-9  # no change (round-off): no evidence of one
        p_fate[still] = 1.0
        # a fate no shift can change (a terminal's own, a single terminal's 1): nothing to test,
        # and left out of the q-values
        p_fate[still & (np.abs(null[:, 1:]) < 1e-9).all(0).reshape(fate_ko.shape)] = np.nan
        p_fate[~np.isfinite(fate_ko)] = np.nan  # a source with no reachable terminal
        return p_score, p_fate


def _stage(model, stage, n_cells: int, terminal: Sequence[str] | None = None) -> tuple[np.ndarray | None, str]:
    """Each registered cell's stage for :meth:`GRNMixin.fit_grn` (``None``: no adjustment), and
    what it is, in words (``knockout_params["grn_stage"]``).
    """
    if stage is None:
        return None, "none"
    if isinstance(stage, str) and stage in ("auto", "chain"):
        return _chain_stage(model, terminal, required=stage == "chain")
    if isinstance(stage, str):
        if stage not in model.adata.obs:
            raise KeyNotFoundError(
                f"stage={stage!r} is neither 'chain' nor a column of .obs "
                f"(columns: {list(model.adata.obs.columns)[:10]})."
            )
        values, note = model.adata.obs[stage].to_numpy(), f"obs column {stage!r}"
    else:
        values, note = np.asarray(stage), "values given"
    try:
        values = np.asarray(values, dtype=float).ravel()
    except (TypeError, ValueError):
        dtype = np.asarray(values).dtype
        raise InvalidInputError(f"stage must be numeric (one value per cell), got dtype {dtype}.") from None
    if values.shape != (n_cells,):
        raise InvalidInputError(f"stage must have one value per registered cell ({n_cells}), got {values.shape}.")
    if not np.isfinite(values).all():
        raise InvalidInputError(
            f"stage has {int((~np.isfinite(values)).sum())} NaN or infinite values: fill or drop those cells first."
        )
    return values, note


def _chain_stage(model, terminal: Sequence[str] | None, *, required: bool) -> tuple[np.ndarray | None, str]:
    """The chain's stage for ``stage="chain"`` (``required``: a missing chain or terminal is an
    error) or ``"auto"`` (then no adjustment, said in the log).
    """
    state = model.transitions_
    if state is None or not state.registered or not state.covers(model.adata):
        if required:
            raise InvalidInputError(
                "fit_grn(stage='chain') needs the directed chain of the registered cells: run "
                "model.compute_transitions() first, or pass stage= an .obs column (e.g. a pseudotime)."
            )
        logg.info("KDCPT: GRN fitted without stage adjustment (no directed chain of the registered cells).")
        return None, "none (no directed chain)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        T, terminal = resolve_chain(model, None, terminal, model.adata)
    if T is None:
        if required:
            raise InvalidInputError(
                "fit_grn(stage='chain') needs terminal phenotypes and the chain has none: name them with "
                "model.annotate(terminal=[...]), or pass stage= an .obs column."
            )
        logg.info("KDCPT: GRN fitted without stage adjustment (the chain has no terminal phenotypes).")
        return None, "none (no terminal phenotypes)"
    # the absorbing cells the fates use (a terminal phenotype without a confident cell falls back, warned)
    codes = [list(model.classes_).index(t) for t in terminal]
    absorbing, _ = markov.terminal_states(state.memberships, np.asarray(codes), names=list(model.classes_))
    logg.info(f"KDCPT: GRN with the stage partialled out: the chain's expected steps to {terminal}.")
    return simulation.chain_stage(T, absorbing), f"chain: expected steps to {list(terminal)}"


def _quiet(fn: Callable) -> Callable:
    """``fn`` with its ``UserWarning``s silenced."""

    def quiet(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return fn(*args, **kwargs)

    return quiet


def _n_genes(model) -> int:
    """Gene columns of the model's features (the RNA genes; sites follow them with setup_mudata)."""
    return int(getattr(model.module, "n_rna", len(model.var_names_)))


def _phenotype_codes(model) -> np.ndarray:
    """Each registered cell's phenotype: its label where known, else its prediction."""
    codes, labelled = model.labels_(None)
    if labelled.all():
        return codes
    pred = model.get_predictions().proba.to_numpy().argmax(1)
    return np.where(labelled, codes, pred)


def _fit_grn_defaults() -> dict:
    """The defaults of :meth:`GRNMixin.fit_grn` (declared once, in its signature)."""
    params = inspect.signature(GRNMixin.fit_grn).parameters
    return {k: p.default for k, p in params.items() if k not in ("self", "n_neighbors")}


def _simulation_inputs(model, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """The smoothed log expression of the genes and each cell's phenotype (the GRN's and the shifts' inputs)."""
    return _smoothed_expression(model, n_neighbors), _phenotype_codes(model)


def _smoothed_expression(model, n_neighbors: int) -> np.ndarray:
    """Log expression of the genes, averaged over each cell's kNN neighbours (the chain's graph when there is one)."""
    state = model.transitions_
    if state is not None and state.covers(model.adata) and state.connectivities is not None:
        graph = state.connectivities
    else:
        graph = markov.knn_graph(model.get_encoder_representation(), n_neighbors)[1]
    X = model._inputs.registered_matrix(model.adata)
    in_memory = isinstance(X, np.ndarray) or sparse.issparse(X)
    if X.shape[1] > _n_genes(model) or not in_memory:  # sites follow the genes (setup_mudata); backed: read
        X = X[:, : _n_genes(model)]
    X = _expression.log_normalize(X, model.data_type_)
    return simulation.smooth_expression(X, graph)  # float32


def _pca_basis(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.decomposition import PCA

    k = int(min(N_BASIS, X.shape[0] - 1, X.shape[1] - 1))
    pca = PCA(n_components=k, svd_solver="randomized", random_state=0).fit(X)
    basis = pca.components_.T.astype(np.float64)
    Z, step = np.empty((X.shape[0], k)), _block_rows(X.shape[1])
    for a in range(0, X.shape[0], step):  # one block of cells at a time: no float64 copy of X
        Z[a : a + step] = (X[a : a + step] - pca.mean_) @ basis
    return basis, Z


def _regulator_mask(model, regulators, genes: list[str]) -> np.ndarray | None:
    if regulators is None:
        return None
    if isinstance(regulators, str) and regulators == "prior":
        if not has_prior_regulators(model):
            raise InvalidInputError(
                "fit_grn(regulators='prior') needs the model's prior_key (e.g. transcription factors): "
                "set up with prior_key=..., or pass regulators=None (every gene) or a list of regulator names."
            )
        return model.module.prior.detach().cpu().numpy()[: len(genes)] > 0.5
    arr = np.asarray(regulators)
    if arr.dtype == bool:
        if arr.shape != (len(genes),):
            raise InvalidInputError(
                f"regulators as a mask must have one entry per gene ({len(genes)}), got {arr.shape}."
            )
        return arr
    lookup = {g: i for i, g in enumerate(genes)}
    names = [str(g) for g in np.atleast_1d(arr)]
    missing = [g for g in names if g not in lookup]
    if missing:
        raise KeyNotFoundError(f"regulators {missing[:5]} are not among the model's genes.")
    mask = np.zeros(len(genes), bool)
    mask[[lookup[g] for g in names]] = True
    return mask


@dataclass
class SimulatedShifts:
    """Per simulated knockout: the perturbed chain, the shift, the perturbation score and its test."""

    chains: dict[str, sparse.csr_matrix]
    shifts: dict[str, np.ndarray]  # Δx, cells × genes, float32 (never written over X); only with keep_shift
    shift_mean: dict[str, pd.DataFrame]  # mean Δx per phenotype, phenotypes × genes
    scores: pd.DataFrame  # cells × knockouts
    summary: pd.DataFrame  # gene, score, score_pval, score_qval, shift_norm, n_shifted
    fate_pval: dict[str, np.ndarray] = field(default_factory=dict)  # flat: fates, then horizon fluxes (with a null)


def simulate_units(
    sim: ShiftSimulator,
    units: dict[str, tuple[int, ...]],
    *,
    mode: str,
    quantile: float,
    n_shift_null: int,
    random_state: int,
    obs_names,
    phenotypes: Sequence[str],
    genes: Sequence[str],
    keep_shift: bool = False,
    fates: Callable[[str], Callable[[sparse.csr_matrix], np.ndarray]] | None = None,
) -> SimulatedShifts:
    """Shift, perturbed chain, score and score p-value of every knockout (see :class:`ShiftSimulator`).

    With ``fates`` (per knockout name, a function from a chain to its fates, sources ×
    outcomes) and ``n_shift_null > 0`` each fate change is tested against the same randomised
    shifts as the score (:meth:`ShiftSimulator.pvalues`).

    The cells × genes shifts are dense (a regulator's propagated shift reaches nearly every gene
    of the cells that express it: 96 % non-zero on the synthetic tests), so only their mean per
    phenotype is kept unless ``keep_shift``.
    """
    from .. import stats

    chains, shifts, means, scores, rows, fate_pval = {}, {}, {}, {}, [], {}
    counts = np.bincount(sim.codes[sim.codes >= 0], minlength=len(phenotypes))
    member = sparse.csc_matrix(
        (np.ones(int((sim.codes >= 0).sum())), (sim.codes[sim.codes >= 0], np.flatnonzero(sim.codes >= 0))),
        shape=(len(phenotypes), len(sim.codes)),
    )
    for k, (name, unit) in enumerate(units.items()):
        value = 0.0 if mode == "delete" else _overexpression_level(sim.X, unit, quantile, sim.n_genes)
        S = sim.shift(unit, value)
        T_ko = sim.chain(unit, S)
        score = sim.score(T_ko)
        observed = float(score.mean())
        norm, moved = _propagated_size(S, [g for g in unit if g < sim.n_genes])
        p_score, p_fate = sim.pvalues(
            unit, S, T_ko, observed, n_shift_null, random_state + k, fates=None if fates is None else fates(name)
        )
        if p_fate is not None:
            fate_pval[name] = p_fate
        rows.append(
            {
                "gene": name,
                "score": observed,
                "score_pval": p_score,
                "n_shift_null": int(n_shift_null),  # per gene: a later call may test others against more or fewer
                "shift_norm": float(norm.mean()),
                "n_shifted": int(moved.sum()),
                "chain_tv": float(0.5 * np.abs((T_ko - sim.T).data).sum() / max(sim.T.shape[0], 1)),
            }
        )
        chains[name], scores[name] = T_ko, score
        mean = _phenotype_sums(member, S) / np.maximum(counts, 1)[:, None]
        means[name] = pd.DataFrame(mean.astype(np.float32), index=list(phenotypes), columns=list(genes[: sim.n_genes]))
        if keep_shift:
            shifts[name] = S.astype(np.float32, copy=False)
    summary = pd.DataFrame(rows)
    still = summary.loc[summary["n_shifted"] == 0, "gene"].tolist()
    if still:
        why, fix = (
            (
                "n_propagation=0: the shift is not propagated, and a knocked-out gene's own loss is left out of the "
                "chain",
                "Use n_propagation of 1 or more (default 3)",
            )
            if sim.n_propagation == 0
            else (
                "no targets among its fitted edges, or no cell expresses them",
                "Fit the GRN with these genes among the regulators (model.fit_grn(regulators=...))",
            )
        )
        warnings.warn(
            f"{len(still)} knockout(s) shift no other gene through the GRN ({still[:10]}: {why}): their cell chain "
            "is unchanged, so any fate change reported for them comes only from the phenotype memberships the "
            f"classifier gives the knocked-out cells (terminal_states='knockout'). {fix} to simulate their effect.",
            UserWarning,
            stacklevel=3,
        )
    summary["score_qval"] = stats.benjamini_hochberg(summary["score_pval"].to_numpy(float))
    return SimulatedShifts(chains, shifts, means, pd.DataFrame(scores, index=obs_names), summary, fate_pval)


def _phenotype_sums(member: sparse.csc_matrix, S: np.ndarray) -> np.ndarray:
    """``member @ S`` in float64, one block of cells at a time (scipy would copy a float32 ``S``
    whole into float64 for the product).
    """
    out, step = np.zeros((member.shape[0], S.shape[1])), _block_rows(S.shape[1])
    for a in range(0, S.shape[0], step):
        out += member[:, a : a + step] @ np.asarray(S[a : a + step], dtype=np.float64)
    return out


def _propagated_size(S: np.ndarray, own: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per cell, the norm of the shift without the knocked-out genes' own loss (not a shift of
    the cell) and whether any other gene moved; one block of cells at a time (no copy of ``S``).
    """
    norm, moved, step = np.empty(S.shape[0]), np.empty(S.shape[0], bool), _block_rows(S.shape[1])
    for a in range(0, S.shape[0], step):
        block = S[a : a + step].copy()
        block[:, own] = 0.0
        norm[a : a + step] = np.linalg.norm(block, axis=1)
        moved[a : a + step] = (block != 0).any(1)
    return norm, moved


def regulator_null_pvalues(
    sim: ShiftSimulator,
    fd,
    draws: dict[str, list],
    memberships: Callable[[tuple], np.ndarray],
    fate: pd.DataFrame,
    *,
    mode: str,
    quantile: float,
) -> tuple[np.ndarray, np.ndarray]:
    """``pval_regulators`` and ``qval_regulators`` of each row of the fate table ``fate``: the
    knockout's fate change against those of its expression-matched regulators (``draws``, see
    :func:`~scanpy_kdcpt.perturb._nulls.regulator_draws`), each knocked out the same way —
    memberships from the classifier (``memberships(unit)``), shift through the GRN, perturbed
    chain. ``p = (1 + #|Δ_null| ≥ |Δ|) / (1 + n)``; NaN where neither the knockout nor any
    draw changes the fate (nothing to test; left out of the Benjamini–Hochberg q-values).
    """
    from .. import stats

    cache: dict[tuple, np.ndarray] = {}

    def change(unit: tuple) -> np.ndarray:
        if unit not in cache:
            value = 0.0 if mode == "delete" else _overexpression_level(sim.X, unit, quantile, sim.n_genes)
            T_ko = sim.chain(unit, sim.shift(unit, value))
            cache[unit] = (fd.fates(T_ko, memberships(unit)) - fd.fate).ravel()
        return cache[unit]

    pval = np.full(len(fate), np.nan)
    genes = fate["gene"].astype(str).to_numpy()
    for name, units in draws.items():
        rows = np.flatnonzero(genes == name)
        delta = np.abs(fate["delta"].to_numpy(float)[rows])
        null = np.abs(np.stack([change(u) for u in units]))  # draws × rows, the fate table's order
        with np.errstate(invalid="ignore"):  # ties within round-off count as as extreme
            p = np.atleast_1d(simulation.empirical_pvalue(delta - 1e-12, null, alternative="greater"))
        nothing = (delta < 1e-9) & (null < 1e-9).all(0)
        p[nothing | ~np.isfinite(delta) | ~np.isfinite(null).all(0)] = np.nan
        pval[rows] = p
    return pval, stats.benjamini_hochberg(pval)


def _overexpression_level(X: np.ndarray, unit: Sequence[int], quantile: float, n_genes: int) -> np.ndarray:
    """Per gene of the unit, the ``quantile`` of its (smoothed) log expression among expressing cells."""
    out = []
    for g in (g for g in unit if g < n_genes):
        col = X[:, g]
        col = col[col > 0]
        out.append(float(np.quantile(col, quantile)) if len(col) else 0.0)
    return np.asarray(out, dtype=np.float32)


def check_simulation_args(simulate: str, n_propagation: int, sigma: float, n_shift_null: int) -> None:
    if simulate not in ("auto", "grn", "classifier"):
        raise InvalidInputError(f"simulate must be 'auto', 'grn' or 'classifier', not {simulate!r}.")
    for name, n in (("n_propagation", n_propagation), ("n_shift_null", n_shift_null)):
        if isinstance(n, bool) or not float(n).is_integer() or n < 0:  # 1.5 failed inside range(), 2.5 became 2
            raise InvalidInputError(f"{name} must be a whole number, 0 or more, got {n!r}.")
    if not sigma > 0:  # NaN too: it left every chain unchanged
        raise InvalidInputError(f"sigma must be positive, got {sigma}.")


def resolve_simulate(simulate: str, T, query, model) -> str:
    """``"grn"`` needs the model's directed chain on its registered cells and a GRN (fitted, or
    prior regulators to fit it with); ``"auto"`` takes it when there are both.
    """
    chain = T is not None and query is None
    grn = model.grn_ is not None or has_prior_regulators(model)
    if simulate == "auto":
        if chain and not grn:
            warnings.warn(
                "knockout(simulate='auto'): the model has no prior regulators (prior_key) to fit the GRN with, "
                "so the knockouts change the phenotype probabilities only (simulate='classifier'). For shifts "
                "that move cells on the chain, call model.fit_grn(regulators=None) (every gene a candidate "
                "regulator) or model.fit_grn(regulators=[...]) first.",
                UserWarning,
                stacklevel=3,
            )
        return "grn" if chain and grn else "classifier"
    if simulate == "grn" and not chain:
        raise InvalidInputError(
            "simulate='grn' moves cells on the directed chain of the registered cells: run "
            "model.compute_transitions(...) first (and knock out on the registered AnnData), or pass "
            "simulate='classifier' to change only the phenotype probabilities."
        )
    if simulate == "grn" and not grn:
        raise InvalidInputError(
            "knockout(simulate='grn') fits the GRN on first use with the prior regulators, and this model has "
            "none (set up without prior_key, or no gene flagged): call model.fit_grn(regulators=None) (every "
            "gene a candidate regulator) or model.fit_grn(regulators=[...]) first, or pass simulate='classifier'."
        )
    return simulate


def has_prior_regulators(model) -> bool:
    """Whether the model was set up with a prior that flags some gene (the default GRN's regulators)."""
    if model.adata_manager.registry["setup_args"].get("prior_key") is None:
        return False
    return bool((model.module.prior.detach().cpu().numpy()[: _n_genes(model)] > 0.5).any())


def embed_shifts(adata, T, chains: dict, basis: str | None) -> tuple[dict[str, np.ndarray], str]:
    """Each knockout's change of the cells' expected step on an embedding (for
    :func:`scanpy_kdcpt.pl.knockout_shift`): ``project(T_ko) − project(T)``
    (:func:`scanpy_kdcpt.markov.project_chain`); empty when the embedding is absent.
    """
    if basis is None:
        return {}, "None"
    key = _keys.basis_key(adata.obsm, basis)
    if key not in adata.obsm:
        logg.info(f"KDCPT: no adata.obsm[{key!r}]: the knockouts' shifts are not projected for plotting.")
        return {}, "None"
    X = np.asarray(adata.obsm[key])[:, :2].astype(float)
    base = markov.project_chain(T, X)
    return {name: (markov.project_chain(T_ko, X) - base).astype(np.float32) for name, T_ko in chains.items()}, key
