"""In-silico knockouts (methods mixed into KDCPT).

A knockout zeroes (or overexpresses) a gene in the input of the cells that express it, reruns
the network on those cells only, and compares the phenotype transition matrix before and after.
The steps: resolve the genes (:func:`resolve_units`), draw expression-matched nulls (:func:`null_draws`),
plan and stream the perturbed cells (:class:`Perturbation`, :meth:`KnockoutMixin._rerun`),
then assemble the tidy result (:func:`assemble`). Maths from :mod:`scanpy_kdcpt.markov` and
:mod:`scanpy_kdcpt.stats`; writing by :func:`scanpy_kdcpt.writers.write_knockout`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from .. import _expression, _keys, writers
from .._errors import InvalidInputError
from .._utils import chain_fingerprint
from ..model._docs import model_dsp, output_target
from ..results import KnockoutResult
from ._assemble import assemble, fate_deltas, first_order_effects, unit_cells, with_first_order
from ._embed import Reembedder, make_reembedder
from ._engine import Deltas, Perturbation
from ._fate import FateDeltas, resolve_chain
from ._grn import edges_matrix, fit_propagation, warn_without_targets
from ._nulls import match_features, null_draws, regulator_draws
from ._simulate import (
    ShiftSimulator,
    _n_genes,
    check_simulation_args,
    embed_shifts,
    regulator_null_pvalues,
    resolve_simulate,
    simulate_units,
)
from ._units import Baseline, Mode, baseline, check_args, resolve_units, warn_fixed_embedding

if TYPE_CHECKING:
    from anndata import AnnData

    from ..model._base import KDCPTLike


class KnockoutMixin:
    """In-silico knockouts and overexpression."""

    @model_dsp.dedent
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
        copy: bool = False,
        key_added: str = _keys.DEFAULT_KEY,
        random_state: int = 0,
        progress: bool = True,
        embed_fn: Callable | object | None = None,
        screen: Literal["auto", "exact", "first_order"] = "auto",
        n_exact: int = 50,
        chain=None,
        terminal: Sequence[str] | None = None,
        terminal_states: Literal["knockout", "base"] = "knockout",
        null_max_corr: float = 0.15,
        propagate: Literal["grn"] | None = None,
        grn: pd.DataFrame | None = None,
        n_steps: int = 1,
        simulate: Literal["auto", "grn", "classifier"] = "auto",
        n_propagation: int = 3,
        sigma: float = 0.25,
        n_shift_null: int = 0,
        n_regulator_null: int = 0,
        basis: str | None = "umap",
        keep_shift: bool = False,
    ) -> KnockoutResult:
        """Simulate gene knockouts (or overexpression) and compare transition matrices.

        A knocked-out gene is set to zero in the model's input: the convex first stage reads the
        zero, its token drops out of the Cell Learner and, with the internal PCA encoder, the
        prediction branch sees the zero too. With an external ``embedding_key``, pass
        ``embed_fn`` (the model that made the embedding, or a function) so the perturbed cells
        are embedded again and the knockout reaches the prediction branch; without it only the
        first stage and the gene-token branch see the knockout (a warning says so once, unless
        the prediction is the first stage's alone, and ``params["prediction_branch_fixed"]`` is
        True).
        Only the cells that express the gene change, so only they are rerun
        (``only_expressing``); the others keep their base probabilities. The data in
        ``adata`` are never modified.

        Parameters
        ----------
        genes
            A gene name, a list of names (knocked out one at a time), a dict
            ``{name: [genes]}`` of gene sets (each knocked out together), ``"key"`` (the
            ``n_top`` highest-ranked key genes) or ``"all"`` (every gene). On a query, a gene it
            does not measure is refused (the model zero-fills it, so its knockout would show no
            effect); ``"key"`` and ``"all"`` leave such genes out, with a warning.
        %(param_adata)s
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
            ``2 * n_null`` remain); with ``setup_mudata``, a site's null is drawn from the
            sites and a gene's from the genes. ``pval = (1 + #null effects ≥ effect) / (1 + n_null)``
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
        %(param_batch_size)s
        %(param_inplace)s
        %(param_copy)s
        %(param_key_added)s
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
        terminal_states
            Which cells absorb the chain under a knockout. ``"knockout"`` (default): the cells
            whose membership of a terminal phenotype is ≥ 0.5 *after* the knockout, so a
            knockout that makes the classifier stop recognising terminal cells (Arx: α cells)
            removes them as endpoints. ``"base"``: the cells that absorb without the knockout,
            held fixed, so fates change only through the chain (``simulate="grn"``) — with
            ``simulate="classifier"`` the chain does not change, and neither do the fates.
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
        simulate
            How a knockout reaches the cell chain. ``"grn"``: the knockout is simulated through
            the gene regulatory network of :meth:`fit_grn` (fitted with its defaults on first
            use, the developmental stage to this call's ``terminal``) into an expression shift
            ``Δx`` per cell (``n_propagation`` steps, clipped at zero, the knocked-out genes
            held), and each cell's move on the directed chain is
            biased towards the neighbours its shift points to,
            ``T_ko[i, j] ∝ T[i, j] · exp(cos(Δz_i, z_j − z_i) / σ)`` (cosines in a 30-component
            PCA basis of the smoothed expression; the bias scaled by the shift's size relative to
            the cell's steps); fates and flux then come from ``T_ko``. ``"classifier"``: only the
            phenotype probabilities change (the chain stays ``T``), so fate deltas stay small.
            ``"auto"`` (default): ``"grn"`` when the model has a directed chain on the registered
            cells (:meth:`compute_transitions`), else ``"classifier"``; also ``"classifier"``,
            with a warning, when there is no GRN to fit: no ``model.grn_`` and no prior
            regulators (``prior_key``) — then call :meth:`fit_grn` with ``regulators=`` first.
        n_propagation
            GRN propagation steps of the shift (CellOracle's default 3).
        sigma
            Temperature of the bias of the perturbed chain (smaller: the shift decides more).
            Measured at 0.5 against the default 0.25 (``benchmarks/results/knockout_genetics_sigma0.5.md``,
            3 seeds of pancreas and Paul 2015): as many published signs (14 of 20), fate changes
            a third to three quarters smaller (Arx α −0.10 against −0.16, Pax4 β −0.08 against
            −0.29), 12 of the 20 directions beyond randomised shifts against 13.
        n_shift_null
            Randomised shifts (each gene's shift permuted across cells, with random signs) for
            the two-sided p-value of the mean perturbation score (``score_pval``; BH
            ``score_qval``) and, with a directed chain, of each fate change (``pval``, ``qval`` in
            ``knockout_fate``: the change under the simulated shift against the changes under the
            randomised ones, the knockout's memberships the same; it asks whether the direction
            the GRN gives the shift matters, not whether the gene matters more than another
            regulator would). The smallest p is ``1 / (1 + n_shift_null)``. Off by default (``0``:
            NaN): each randomised shift costs a perturbed chain, its score and its fates, ~1.2 s
            on 3,700 cells (a 10-gene pancreas knockout took 60 s with 19 against 13 s without;
            ``benchmarks/results/knockout_genetics.md``), and on pancreas both tests reached
            their smallest p for nearly every gene, Nkx2-2's tiny shift included — the random-TF
            comparison of that benchmark (``n_regulator_null``) is the more telling null.
        n_regulator_null
            With ``simulate="grn"``: for each knockout, this many other GRN regulators matched to
            the gene in expression (mean and fraction of cells expressing, as ``n_null``; genes
            of this call never drawn), each knocked out the same way — memberships from the
            classifier, shift through the GRN, perturbed chain, fates. Each fate row gets
            ``pval_regulators = (1 + #|Δ_null| ≥ |Δ|) / (1 + n_regulator_null)`` and its
            Benjamini–Hochberg ``qval_regulators`` (over the call's tested rows; NaN where no
            knockout changes the fate). It asks whether the gene changes the fate more than
            another regulator of its expression does: on pancreas and Paul 2015 only 10 of 30
            published knockout directions pass it (``benchmarks/results/knockout_genetics.md``),
            so read a fate change beside it. The drawn genes are in
            ``params["regulator_null"]``. Each draw costs one simulated knockout (about 2 s on
            3,700 cells); the smallest p is ``1 / (1 + n_regulator_null)``, so 39 or more for a p (and
            a BH q) that can fall below 0.05. Off by default (``0``).
        basis
            Embedding (``.obsm["X_" + basis]``) the shifts are projected on for
            :func:`scanpy_kdcpt.pl.knockout_shift` (``None``: none).
        keep_shift
            Keep each knockout's full shift ``Δx`` (cells × genes, float32) in
            ``result.shift``. Off by default: a regulator's shift reaches nearly every gene of
            the cells expressing it, so it is as large as the expression matrix per knockout
            (1.6 GB for 200,000 cells × 2,000 genes); ``result.shift_mean`` (mean per phenotype)
            is always kept.

        Returns
        -------
        :class:`~scanpy_kdcpt.results.KnockoutResult` (the written copy with ``copy=True``) (``table``, ``summary``,
        ``transition_matrix``, ``null``, ``params``). With ``inplace=True`` also sets

        - ``.uns[key]["knockout"]``: the tidy ``table``;
        - ``.uns[key]["knockout_summary"]``: the ``summary``;
        - ``.uns[key]["knockout_params"]``: the parameters;
        - ``.var["{key}_knockout_effect"]``: effect of each single-gene deletion (NaN where
          not screened, or estimated to first order only).

        ``effect`` (summary and ``.var``) and the ``table`` are the classifier's side: the total
        variation between the knockout's and the base phenotype-probability matrix ``P`` of the
        cells (:func:`scanpy_kdcpt.pl.knockout` draws it). A knockout can move cells on the chain
        (``simulate="grn"``: the summary's ``chain_tv``, ``score`` and the fate table below)
        while barely changing what the classifier calls them, so read the fates for where cells
        go.

        With ``simulate="grn"`` also ``.obs["{key}_ko_score_<gene>"]`` (perturbation score per
        cell: the shift's change of the expected step against the chain's drift; negative: pushed
        back against development) and ``.obsm["{key}_ko_shift_<gene>"]`` (the shift on ``basis``).
        With a directed chain also ``.uns[key]["knockout_fate"]`` (``gene``, ``source``,
        ``terminal``, ``fate_base``, ``fate_ko``, ``delta``; a phenotype's fate in a terminal is
        its cells' probability of eventually ending there, averaged with their memberships, as in
        :meth:`get_fate_probabilities`; the extra outcome ``"not reached"`` is the mass that has
        reached no terminal within the chain's horizon (``knockout_params["fate_horizon"]``
        steps), where a knockout that blocks progenitors shows; ``source="all"``: the mean over
        all cells) and ``.uns[key]["knockout_flux"]`` (``gene``, ``source``, ``target``, ``p_base``,
        ``p_ko`` of the directed chain, ``flux_base``, ``flux_ko``, ``delta``: the net flux of one
        step of the observed cells; ``flux_horizon_base``, ``flux_horizon_ko``,
        ``delta_horizon``: the net flux, in cells, of the non-terminal cells' mass while it moves
        for the horizon's steps, :func:`scanpy_kdcpt.simulation.horizon_flux`. A block lowers the
        flux over the horizon downstream of it, where the one-step flux can rise because cells
        stop returning to the blocked state). With ``n_shift_null > 0`` the fate table also has
        ``pval`` and ``qval`` (Benjamini–Hochberg over the tested rows of the call; NaN where no
        shift can change the fate, e.g. a terminal phenotype's own) and the flux table
        ``pval_horizon`` and ``qval_horizon`` (the change over the horizon against the same
        randomised shifts; one q per pair of phenotypes); with ``n_regulator_null > 0``,
        ``pval_regulators`` and ``qval_regulators``.

        """
        self._check_if_trained(warn=True)
        check_args(mode, floor, fraction, quantile, n_null)
        check_simulation_args(simulate, n_propagation, sigma, n_shift_null)
        if int(n_regulator_null) != n_regulator_null or n_regulator_null < 0:
            raise InvalidInputError(f"n_regulator_null must be 0 or a positive integer, got {n_regulator_null!r}.")
        if terminal_states not in ("knockout", "base"):
            raise InvalidInputError(f"terminal_states must be 'knockout' or 'base', not {terminal_states!r}.")
        if screen not in ("auto", "exact", "first_order"):
            raise InvalidInputError(f"screen must be 'auto', 'exact' or 'first_order', not {screen!r}.")
        if n_exact < 1:
            raise InvalidInputError(f"n_exact must be 1 or more, got {n_exact}.")
        if propagate not in (None, "grn"):
            raise InvalidInputError(f"propagate must be None or 'grn', not {propagate!r}.")
        if propagate == "grn" and grn is None:
            raise InvalidInputError(
                "propagate='grn' needs grn=, a TF → target table (columns 'tf', 'target'), e.g. "
                "kdcpt.datasets.tf_target_prior('dorothea_mm.tsv.gz', genes=adata.var_names)."
            )
        if n_steps < 1:
            raise InvalidInputError(f"n_steps must be 1 or more, got {n_steps}.")
        edges = edges_matrix(grn, self.var_names_) if grn is not None else None
        target = self.adata if adata is None else adata
        query = None if target is self.adata else target
        units = resolve_units(self, genes, target, _keys.Keys(key_added), n_top)
        embedder = make_reembedder(self, embed_fn, target)
        if embedder is None:
            warn_fixed_embedding(self)
        prepared = self._prepare_adata(query)
        T, terminal = resolve_chain(self, chain, terminal, target)
        simulate = resolve_simulate(simulate, T, query, self)
        X = self._inputs.registered_matrix(prepared)  # genes (+ regulatory sites with setup_mudata)
        base = baseline(self, target, query, groupby, batch_size)
        first_order = None
        single = all(len(u) == 1 for u in units.values())
        if screen == "first_order" and (mode != "delete" or not single):
            raise InvalidInputError("screen='first_order' estimates single-gene deletions only; use screen='exact'.")
        if screen == "first_order" or (screen == "auto" and mode == "delete" and single and len(units) > n_exact):
            first_order = first_order_effects(self, prepared, base, units, batch_size, progress)
            keep = first_order.nlargest(min(n_exact, len(first_order)), keep="first").index
            units = {name: units[name] for name in keep}
        pool: dict = {}
        # one pass over X for both nulls' matching (only the draws that are made need it)
        features = match_features(X) if n_null or (simulate == "grn" and n_regulator_null) else None
        null = null_draws(
            X,
            units,
            n_null,
            np.random.default_rng(random_state),
            targets=edges,
            max_corr=null_max_corr,
            pool=pool,
            features=features,
            n_genes=_n_genes(self),
        )
        sim = regulator_null = None
        if simulate == "grn":
            sim = ShiftSimulator.build(self, T, n_propagation=n_propagation, sigma=sigma, terminal=terminal)
            rng = np.random.default_rng([random_state, 1])  # apart from the draws of n_null
            regulator_null = regulator_draws(
                X, units, sim.grn.regulators, n_regulator_null, rng, n_genes=sim.n_genes, features=features
            )
        elif n_regulator_null:
            warnings.warn(
                f"n_regulator_null={n_regulator_null} is not used: it tests simulated knockouts (simulate='grn', "
                "which needs a directed chain from model.compute_transitions()); use n_null for the classifier's "
                "effects.",
                UserWarning,
                stacklevel=2,
            )
        nulls = [*null.values(), *(regulator_null or {}).values()]
        run_list = list(dict.fromkeys([*units.values(), *(d for draws in nulls for d in draws)]))
        plan = Perturbation.plan(X, run_list, mode, quantile, only_expressing, self.data_type_ == "counts")
        silent = [name for name, u in units.items() if not any(plan.n_expressing[g] for g in u)]
        if silent:  # an effect of 0 would read as "no effect", not "nothing to perturb"
            warnings.warn(
                f"{len(silent)} perturbation(s) reach no cell: {silent[:10]} {'is' if len(silent) == 1 else 'are'} "
                f"expressed in no cell of the data, so {'deleting' if mode == 'delete' else 'overexpressing'} "
                "changes no input and the reported effect 0 is not a measured absence of effect.",
                UserWarning,
                stacklevel=2,
            )
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
            "model_id": str((getattr(self, "extra_", None) or {}).get("model_id")),
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
        params.update(simulate=simulate, n_propagation=int(n_propagation), sigma=float(sigma))
        shifts = fd = None
        if T is not None:
            fd = FateDeltas(T, base.proba, list(self.classes_), terminal, terminal_states=terminal_states)
        if simulate == "grn":

            def fates_of(name: str):  # the unit's fates and horizon fluxes of any chain, its memberships fixed
                M = fd.memberships(*unit_cells(plan, deltas, run_list, units[name]))
                return lambda chain: fd.tested(chain, M)

            shifts = simulate_units(
                sim,
                units,
                mode=mode,
                quantile=quantile,
                n_shift_null=n_shift_null,
                random_state=random_state,
                obs_names=target.obs_names,
                phenotypes=list(self.classes_),
                genes=list(self.var_names_),
                keep_shift=keep_shift,
                fates=fates_of if fd is not None else None,
            )
            params.update(
                n_shift_null=int(n_shift_null),
                grn_regulators=int(len(sim.grn.regulators)),
                grn_stage=self._grn_stage_note,
            )
        result = assemble(self, units, null, run_list, base, deltas, X.shape[0], params)
        if direct is not None:
            plain = assemble(self, units, null, run_list, base, direct, X.shape[0], params)
            by_gene = plain.summary.set_index("gene")
            for col in ("effect", "frac_changed"):
                result.summary[f"{col}_direct"] = result.summary["gene"].map(by_gene[col]).to_numpy()
            result.table["delta_direct"] = plain.table["delta"].to_numpy()
        if pool:
            for col in ("null_pool", "null_excluded_targets", "null_excluded_correlated"):
                result.summary[col] = result.summary["gene"].map({k: v[col] for k, v in pool.items()})
        if first_order is not None:
            result.summary = with_first_order(result.summary, first_order, params["mode"])
        if T is not None:
            chains = shifts.chains if shifts is not None else None
            result.fate, result.flux, horizon = fate_deltas(
                fd,
                plan,
                deltas,
                units,
                run_list,
                chains=chains,
                pvals=shifts.fate_pval if shifts is not None else None,
            )
            for frame in (result.fate, result.flux):  # a gene deleted and overexpressed keeps both
                frame.insert(1, "mode", params["mode"])
            params.update(
                chain=chain_fingerprint(T),  # write_transitions drops these deltas when another chain is written
                terminal=np.asarray(terminal, dtype=object),
                fate_horizon=int(horizon),
                terminal_states=terminal_states,
            )
            if regulator_null:
                result.fate["pval_regulators"], result.fate["qval_regulators"] = regulator_null_pvalues(
                    sim,
                    fd,
                    regulator_null,
                    lambda unit: fd.memberships(*unit_cells(plan, deltas, run_list, unit)),
                    result.fate,
                    mode=mode,
                    quantile=quantile,
                )
                params["regulator_null"] = {
                    name: np.asarray(["+".join(self.var_names_[g] for g in d) for d in draws], dtype=object)
                    for name, draws in regulator_null.items()
                }
            params["n_regulator_null"] = int(n_regulator_null) if regulator_null is not None else 0
        if shifts is not None:
            result.summary = result.summary.merge(shifts.summary, on="gene", how="left")
            result.shift, result.shift_score, result.chains = shifts.shifts, shifts.scores, shifts.chains
            result.shift_mean = shifts.shift_mean
            result.shift_embedding, params["shift_basis"] = embed_shifts(target, T, shifts.chains, basis)
        out = output_target(target, inplace=inplace, copy=copy)
        if out is not None:
            writers.write_knockout(out, result, key_added=key_added)
        return out if copy else result

    def _rerun(
        self: KDCPTLike,
        prepared: AnnData,
        plan: Perturbation,
        base: Baseline,
        batch_size: int | None,
        progress: bool,
        embedder: Reembedder | None = None,
        keep_cells: bool = False,
    ) -> Deltas:
        """Rerun the perturbed cells of every unit in one stream of minibatches."""
        n_units, n_groups, n_cls = len(plan.units), len(base.row_names), base.proba.shape[1]
        out = Deltas(np.zeros((n_units, n_groups, n_cls)), np.zeros(n_units), plan.n_rerun)
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
