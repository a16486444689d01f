"""Key genes from the Cell Learner's token scores (methods mixed into KDCPT).

Scores are accumulated per phenotype over minibatches (phenotypes × genes sums, never
cells × genes). :class:`KeyGeneAccumulator` lets ``annotate()`` collect them in the same pass
over the data as the predictions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from .._errors import InvalidInputError
from ..results import KeyGenes, rank_overall
from ._docs import model_dsp

if TYPE_CHECKING:
    from anndata import AnnData

    from ._base import KDCPTLike


class KeyGeneAccumulator:
    """Sums of Cell Learner scores and selections per phenotype × gene, fed one minibatch at a time."""

    def __init__(self, phenotypes: list[str], genes: list[str]):
        self.phenotypes, self.genes = list(phenotypes), list(genes)
        n = len(phenotypes) * len(genes)
        self.score_sum = np.zeros(n)
        self.sel_sum = np.zeros(n)
        self.attn_sum = np.zeros(n)
        self.attr_sum: torch.Tensor | None = None  # phenotypes × genes, when outputs carry "attribution"
        self.n_cells = np.zeros(len(phenotypes))

    def add(self, out: dict[str, torch.Tensor], group: np.ndarray) -> None:
        """Add a minibatch's module outputs; ``group`` is each cell's phenotype code."""
        n_genes = len(self.genes)
        group = np.asarray(group, dtype=np.int64)
        self.n_cells += np.bincount(group, minlength=len(self.phenotypes))
        gene_idx = out["gene_idx"]
        mask = out["token_mask"].cpu().numpy()
        flat = (group[:, None] * n_genes + gene_idx.cpu().numpy())[mask]
        scores = out["scores"].float().cpu().numpy()[mask]
        self.score_sum += np.bincount(flat, weights=scores, minlength=self.score_sum.size)
        attention = out["attention"].float().cpu().numpy()[mask]
        self.attn_sum += np.bincount(flat, weights=attention, minlength=self.attn_sum.size)
        sel_genes = torch.gather(gene_idx, 1, out["selected_pos"]).cpu().numpy()
        flat = (group[:, None] * n_genes + sel_genes)[out["selected_mask"].cpu().numpy()]
        self.sel_sum += np.bincount(flat, minlength=self.sel_sum.size)
        if "attribution" in out:  # Σ grad·x and Σ grad per phenotype, Σ x over all cells
            if self.attr_sum is None:
                self.attr_sum = torch.zeros(len(self.phenotypes), n_genes, dtype=torch.float64)
                self.grad_sum = torch.zeros_like(self.attr_sum)
                self.x_sum = torch.zeros_like(self.attr_sum)
            index = torch.as_tensor(group)
            self.attr_sum.index_add_(0, index, out["attribution"].to("cpu", torch.float64))
            self.grad_sum.index_add_(0, index, out["gradient"].to("cpu", torch.float64))
            self.x_sum.index_add_(0, index, out["x_log"].to("cpu", torch.float64))

    def result(self, baseline: np.ndarray | None = None) -> KeyGenes:
        """The key genes; ``baseline``: each gene's reference level for the attributions (default:
        its mean over the cells added).
        """
        shape = (len(self.phenotypes), len(self.genes))
        score_sum, sel_sum = self.score_sum.reshape(shape), self.sel_sum.reshape(shape)
        attn_sum = self.attn_sum.reshape(shape)
        total = max(self.n_cells.sum(), 1)
        genes = pd.Index(self.genes, name="gene")
        overall = pd.DataFrame(
            {
                "score": score_sum.sum(0) / total,
                "selected_frac": sel_sum.sum(0) / total,
                "attention": attn_sum.sum(0) / total,
            },
            index=genes,
        )
        denom = np.maximum(self.n_cells, 1)[:, None]
        attribution = expression = None
        if self.attr_sum is not None:
            # gradient × (input − baseline): relative to the average (training) cell, so that a
            # gene at the same level everywhere (a housekeeping gene, an uninformative TF) gets ≈ 0
            given = baseline is not None
            baseline = torch.as_tensor(baseline, dtype=torch.float64) if given else self.x_sum.sum(0) / total
            attr_sum = (self.attr_sum - baseline[None, :] * self.grad_sum).numpy()
            attribution = pd.DataFrame((attr_sum / denom).T, index=genes, columns=self.phenotypes)
            expression = pd.DataFrame((self.x_sum.numpy() / denom).T, index=genes, columns=self.phenotypes)
            up = expression.to_numpy() > baseline.numpy()[:, None]
            overall["attribution"] = (np.where(up, attribution, np.minimum(attribution, 0)) @ self.n_cells) / total
        result = KeyGenes(
            overall=overall,
            scores=pd.DataFrame((score_sum / denom).T, index=genes, columns=self.phenotypes),
            selected_frac=pd.DataFrame((sel_sum / denom).T, index=genes, columns=self.phenotypes),
            n_cells=pd.Series(self.n_cells.astype(np.int64), index=self.phenotypes, name="n_cells"),
            attention=pd.DataFrame((attn_sum / denom).T, index=genes, columns=self.phenotypes),
            attribution=attribution,
            expression=None if attribution is None else expression,
            baseline=pd.Series(baseline.numpy(), index=genes) if attribution is not None and given else None,
        )
        overall["specificity"] = result.overall_specificity()
        overall["rank"] = rank_overall(overall)
        return result


class KeyGenesMixin:
    """Key genes of each phenotype."""

    @model_dsp.dedent
    def get_key_genes(
        self: KDCPTLike,
        adata: AnnData | None = None,
        *,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        progress: bool = False,
        attribution: bool = True,
    ) -> KeyGenes:
        """Key genes: the Cell Learner's token scores and the whole model's gene attributions.

        For every gene: its mean Cell Learner score (attention guided by the prior) over all
        cells and over the cells of each phenotype (0 in cells where it is not a token), its
        mean prior-free attention (same averaging), the fraction of cells in which it is
        among the selected tokens, and (``attribution=True``) its mean attribution: the gradient
        of each cell's own-phenotype logit margin (its logit minus the mean logit; the
        log-probability would saturate where the model is confident) with respect to the
        log-normalised expression (through both branches and the fusion; one backward pass per minibatch),
        times the gene's expression minus its mean over the model's registered (training) cells
        (gradient × input against the average cell as baseline; for a query or ``indices``
        the training cells' mean too, so that the key genes of cells of one phenotype still
        compare them with the other phenotypes).
        The attribution ranks the genes: it says how much a gene, at its level in the
        phenotype's cells, pushes the model towards the phenotype — on pancreas it ranks known
        markers higher than Wilcoxon does (``benchmarks/results/keygenes_pancreas.md``), and
        uninformative TFs that the prior favours get none. Cells are grouped by their known
        phenotype, else by their prediction.

        Parameters
        ----------
        adata
            The registered AnnData (default) or a query (genes aligned by name).
        indices
            Cells to use (default all).
        %(param_batch_size)s
        progress
            Show a progress bar.
        attribution
            Compute the attributions (about twice the time of a forward pass); without them
            genes are ranked by :attr:`~scanpy_kdcpt.results.KeyGenes.specificity`.

        Returns
        -------
        :class:`~scanpy_kdcpt.results.KeyGenes` with ``overall`` (genes × ``score``,
        ``selected_frac``, ``attention``, ``attribution``, ``rank``), ``scores``,
        ``selected_frac``, ``attention`` and ``attribution`` (genes × phenotypes) and
        ``n_cells`` per phenotype. :func:`scanpy_kdcpt.writers.write_key_genes` writes it
        (``.var["{key}_attention"]`` and ``.var["{key}_attribution"]`` beside
        ``.var["{key}_score"]``).

        """
        self._check_if_trained(warn=True)
        codes, labelled = self.labels_(adata)
        if indices is not None:
            indices = np.asarray(indices)
            codes, labelled = codes[indices], labelled[indices]
        acc = KeyGeneAccumulator(self.classes_, self.var_names_)
        target = np.where(labelled, codes, -1) if attribution else None
        for pos, out in self._iterate(
            adata, indices=indices, batch_size=batch_size, progress=progress, description="key genes", attribute=target
        ):
            pred = out["logits"].argmax(-1).cpu().numpy()
            acc.add(out, np.where(labelled[pos], codes[pos], pred))
        subset = indices is not None or (adata is not None and adata is not self.adata)
        return acc.result(baseline=self._reference_input() if attribution and subset else None)

    def _reference_input(self: KDCPTLike) -> np.ndarray:
        """Each feature's mean input as the module reads it over the registered cells
        (:meth:`_inputs.feature_mean`), cached on the model until it is trained again.
        """
        cached = getattr(self, "_reference_cache", None)
        if cached is None or cached[0] is not self.adata:
            cached = self._reference_cache = (self.adata, self._inputs.feature_mean())
        return cached[1]

    @model_dsp.dedent
    def get_faithfulness(
        self: KDCPTLike,
        key_genes: KeyGenes | None = None,
        adata: AnnData | None = None,
        *,
        ks: Sequence[int] = (5, 10, 25, 50),
        n_random: int = 5,
        indices: Sequence[int] | None = None,
        by: str | None = None,
        batch_size: int | None = None,
        random_state: int = 0,
    ) -> pd.DataFrame:
        """Deletion / insertion faithfulness of the key genes against random genes.

        For each ``k``, every cell keeps **only** the top-``k`` key genes of its phenotype (its
        known phenotype, else its prediction) — the others set to 0 — (``"keep"``, insertion:
        high is faithful) or **loses** them (``"remove"``, deletion: low is faithful); the
        same with ``k`` random genes per phenotype (``n_random`` draws). The data are not
        modified.

        Parameters
        ----------
        key_genes
            From :meth:`get_key_genes` (computed when not given).
        adata
            The registered AnnData (default) or a query.
        ks
            Numbers of genes kept / removed.
        n_random
            Random gene sets per ``k`` and phenotype.
        indices
            Cells to use (default all).
        by
            Ranking of :meth:`~scanpy_kdcpt.results.KeyGenes.top`: ``"attribution"`` (default
            when present), ``"specificity"``, ``"score"`` or ``"attention"``.
        %(param_batch_size)s
        random_state
            Seed of the random genes.

        Returns
        -------
        Tidy DataFrame: ``genes`` (``"key genes"`` or ``"random"``), ``k``, ``perturbation``
        (``"keep"`` / ``"remove"``), ``accuracy`` (against the known phenotypes of labelled
        cells), ``confidence`` (mean probability of each cell's unperturbed prediction), and
        ``accuracy_sd`` / ``confidence_sd`` over the random draws. Nothing is written.

        """
        self._check_if_trained(warn=True)
        ks = sorted({int(k) for k in ks})
        if not ks or ks[0] < 1:
            raise InvalidInputError(f"ks must be positive numbers of genes, got {ks}.")
        if n_random < 1:
            raise InvalidInputError(f"n_random must be 1 or more, got {n_random}.")
        n_genes = len(self.var_names_)
        if ks[-1] >= n_genes:
            raise InvalidInputError(f"ks must be below the number of genes ({n_genes}), got {ks[-1]}.")
        kg = key_genes if key_genes is not None else self.get_key_genes(adata, indices=indices, batch_size=batch_size)
        stat = kg.statistic(by).reindex(columns=self.classes_)
        order = np.argsort(-stat.reindex(self.var_names_).to_numpy(float), axis=0, kind="stable")  # genes × phen.
        codes, labelled = self.labels_(adata)
        cells = np.arange(len(codes)) if indices is None else np.asarray(indices)
        codes, labelled = codes[cells], labelled[cells]
        base = self._softmax(self.get_logits(adata, indices=cells, batch_size=batch_size))
        pred = base.argmax(1)
        group = np.where(labelled, codes, pred)
        rng = np.random.default_rng(random_state)
        rows = []

        def run(mask_keep: np.ndarray) -> dict:
            out = {}
            for pert, m in (("keep", mask_keep), ("remove", ~mask_keep)):
                m_t = torch.as_tensor(m, dtype=torch.float32, device=self.device)
                g_t = torch.as_tensor(group, device=self.device)

                def transform(x, pos, m_t=m_t, g_t=g_t):
                    return x * m_t[g_t[torch.as_tensor(pos, device=x.device)]].to(x.dtype)

                logits = [r["logits"].float().cpu().numpy() for _, r in self._iterate(
                    adata, indices=cells, batch_size=batch_size, transform=transform
                )]  # fmt: skip
                p = self._softmax(np.concatenate(logits))
                acc = float((p.argmax(1)[labelled] == codes[labelled]).mean()) if labelled.any() else np.nan
                out[pert] = (acc, float(p[np.arange(len(pred)), pred].mean()))
            return out

        n_cls = len(self.classes_)
        for k in ks:
            keep = np.zeros((n_cls, n_genes), bool)
            for c in range(n_cls):
                keep[c, order[:k, c]] = True
            res = run(keep)
            for pert, (acc, conf) in res.items():
                rows.append(("key genes", k, pert, acc, conf, 0.0, 0.0))
            draws = {"keep": [], "remove": []}
            for _ in range(n_random):
                keep = np.zeros((n_cls, n_genes), bool)
                for c in range(n_cls):
                    keep[c, rng.choice(n_genes, k, replace=False)] = True
                for pert, v in run(keep).items():
                    draws[pert].append(v)
            for pert, v in draws.items():
                v = np.asarray(v)
                rows.append(("random", k, pert, *v.mean(0), *v.std(0)))
        return pd.DataFrame(
            rows, columns=["genes", "k", "perturbation", "accuracy", "confidence", "accuracy_sd", "confidence_sd"]
        )
