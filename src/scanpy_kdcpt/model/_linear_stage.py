"""The convex first stage (issue 20): an all-feature multinomial logistic regression fitted to
convergence on the training cells, below the network, and the choice of the network's share.

The regression reads what the module reads (``module.normalize(x)``: library-size normalised
``log1p`` for counts, TF-IDF for regulatory sites), is class-balanced, and its L2 strength is
chosen by inner cross-validation on the training cells. Its coefficients become frozen buffers
of the module (``linear_weight``, ``linear_bias``); the network learns the residual on top
(``logits = linear(x_log) + mix * network``), and ``mix`` is chosen afterwards on the
validation cells. No AnnData is written here.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import sparse

from .. import _expression
from .._constants import REGISTRY_KEYS
from ..calibration import MIX_GRID, choose_mix  # noqa: F401 - the torch-free choice of the share
from ..module import REGULATORY_KEY

#: training cells the regression is fitted on at most (a class-stratified subsample beyond)
MAX_CELLS = 20_000
#: training cells of the inner cross-validation at most
MAX_CV_CELLS = 4_000
#: inverse L2 strengths tried by the inner cross-validation (scikit-learn's ``C``); down to 1e-4
#: since the old lower end, 0.001, was chosen in most runs: on SNARE (23 types) 3e-4 then gave
#: +0.02 held-out macro-F1 in 3 of 3 splits, elsewhere the same choice
#: (``benchmarks/results/first_stage_c.md``)
C_GRID = (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1)
#: values (rows × features) normalised at a time: 16M floats, 64 MB
CHUNK_VALUES = 2**24


@dataclass
class LinearFit:
    """What the first stage's fit found (kept on the model as ``linear_stage_``)."""

    C: float
    cv_macro_f1: dict[float, float]
    n_cells: int
    n_cv_cells: int
    seconds: float
    converged: bool
    mix: float | None = None
    mix_scores: dict[float, float] = field(default_factory=dict)
    #: with ``mix = 0``: refitted on the training and validation cells together (at ``C``)
    refit_with_validation: bool = False

    def to_dict(self) -> dict:
        return {
            "C": self.C,
            "cv_macro_f1": {str(k): v for k, v in self.cv_macro_f1.items()},
            "n_cells": self.n_cells,
            "n_cv_cells": self.n_cv_cells,
            "seconds": self.seconds,
            "converged": self.converged,
            "mix": self.mix,
            "mix_scores": {str(k): v for k, v in self.mix_scores.items()},
            "refit_with_validation": self.refit_with_validation,
        }


def stratified_subsample(codes: np.ndarray, n_max: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of at most ``n_max`` cells, every phenotype kept in proportion (at least
    ``min(count, 5)`` cells of each); sorted.
    """
    n = len(codes)
    if n <= n_max:
        return np.arange(n)
    keep = []
    classes, counts = np.unique(codes, return_counts=True)
    for c, k in zip(classes, counts, strict=True):
        take = int(min(k, max(min(k, 5), round(n_max * k / n))))
        keep.append(rng.choice(np.flatnonzero(codes == c), take, replace=False))
    return np.sort(np.concatenate(keep))


def _normalized_blocks(module, X, rows: np.ndarray, extra=None):
    """Yield ``module.normalize`` of rows ``rows`` of the raw matrix ``X`` (and ``extra``, the
    regulatory sites of a multiome model) as dense numpy blocks of at most :data:`CHUNK_VALUES`
    values.
    """
    chunk = int(max(64, min(4096, CHUNK_VALUES // max(module.n_genes, 1))))
    for s in range(0, len(rows), chunk):
        part = [_expression.read_rows(X, rows[s : s + chunk])]
        if extra is not None:
            part.append(_expression.read_rows(extra, rows[s : s + chunk]))
        dense = np.hstack([p.toarray() if sparse.issparse(p) else np.asarray(p) for p in part])
        with torch.no_grad():
            x_log = module.normalize(torch.as_tensor(dense, dtype=torch.float32, device=_device(module)))
        yield x_log.cpu().numpy()


def normalized_rows(module, X, rows: np.ndarray, extra=None) -> sparse.csr_matrix:
    """``module.normalize`` of rows ``rows`` of ``X`` (and ``extra``), read in blocks and kept
    sparse (zeros stay zero under ``log1p`` and TF-IDF).
    """
    blocks = [sparse.csr_matrix(b) for b in _normalized_blocks(module, X, rows, extra)]
    return sparse.vstack(blocks, format="csr") if blocks else sparse.csr_matrix((0, module.n_genes))


def normalized_max(module, X, extra=None) -> np.ndarray:
    """Each feature's largest ``module.normalize`` value over all rows of ``X`` (and ``extra``),
    read in blocks (backed data stays on disk).
    """
    top = np.zeros(module.n_genes, dtype=np.float32)  # normalised values are ≥ 0
    for block in _normalized_blocks(module, X, np.arange(X.shape[0]), extra):
        np.maximum(top, block.max(0), out=top)
    return top


def _device(module) -> torch.device:
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


def _logreg(C: float, max_iter: int, warm_start: bool = False):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(
        C=C, class_weight="balanced", solver="lbfgs", max_iter=max_iter, tol=1e-4, warm_start=warm_start
    )


def fit(
    X: sparse.csr_matrix,
    y: np.ndarray,
    n_classes: int,
    *,
    seed: int,
    n_folds: int = 3,
    max_iter: int = 1000,
    C: float | None = None,
) -> tuple[np.ndarray, np.ndarray, LinearFit]:
    """Class-balanced multinomial logistic regression on ``X`` (cells × features), its ``C`` chosen
    from :data:`C_GRID` by ``n_folds``-fold stratified cross-validation (mean macro-F1) on at most
    :data:`MAX_CV_CELLS` of the cells (or given: no cross-validation); then refitted on all of
    them with L-BFGS to convergence.

    Returns ``(weight (classes × features), bias (classes,), LinearFit)``. Phenotypes without a
    training cell get the weight 0 and a bias of −30 (never predicted by this stage).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedKFold

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    present = np.unique(y)
    scores: dict[float, float] = {}
    cv = stratified_subsample(y, MAX_CV_CELLS, rng)
    y_cv = y[cv]
    n_splits = int(min(n_folds, np.bincount(y_cv).max(initial=0)))
    if C is None and len(present) >= 2 and n_splits >= 2:
        folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # classes with one cell in a fold, convergence within the grid
            f1: dict[float, list[float]] = {c: [] for c in C_GRID}
            for tr, te in folds.split(np.zeros(len(y_cv)), y_cv):
                if len(np.unique(y_cv[tr])) < 2:
                    continue
                clf = _logreg(C_GRID[0], max_iter=200, warm_start=True)
                for c in C_GRID:  # along the path, each fit starting from the previous one
                    clf.set_params(C=c).fit(X[cv[tr]], y_cv[tr])
                    f1[c].append(f1_score(y_cv[te], clf.predict(X[cv[te]]), average="macro"))
            scores = {c: float(np.mean(v)) if v else float("nan") for c, v in f1.items()}
    finite = {c: s for c, s in scores.items() if np.isfinite(s)}
    # the best macro-F1; within 0.002 of it, the strongest regularisation (smallest C)
    if C is not None:
        pass  # given
    elif finite:
        top = max(finite.values())
        C = min(c for c, s in finite.items() if s >= top - 0.002)
    else:
        C = 0.1
    weight = np.zeros((n_classes, X.shape[1]), dtype=np.float32)
    bias = np.full(n_classes, -30.0, dtype=np.float32)
    converged = True
    if len(present) >= 2:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            clf = _logreg(C, max_iter=max_iter).fit(X, y)
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        weight[clf.classes_] = clf.coef_
        bias[clf.classes_] = clf.intercept_ - clf.intercept_.mean()
    else:  # one phenotype among the training cells: it is predicted
        bias[present] = 0.0
    info = LinearFit(
        C=float(C),
        cv_macro_f1=scores,
        n_cells=int(X.shape[0]),
        n_cv_cells=int(len(cv)),
        seconds=round(time.perf_counter() - t0, 2),
        converged=converged,
    )
    return weight, bias, info


def fit_on_training_cells(model, train_indices: np.ndarray, seed: int, C: float | None = None) -> LinearFit:
    """Fit the first stage on the labelled cells among ``train_indices`` (a class-stratified
    subsample of at most :data:`MAX_CELLS`, read in row blocks: backed data stays on disk) and
    put it into the module's buffers; ``C`` given: no cross-validation.
    """
    module = model.module
    codes = model.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY).ravel().astype(int)
    n_classes = len(model.classes_)
    train = np.sort(np.asarray(train_indices, dtype=int))
    train = train[codes[train] < n_classes]
    rng = np.random.default_rng(seed)
    train = train[stratified_subsample(codes[train], MAX_CELLS, rng)]
    manager = model.adata_manager
    X = manager.get_from_registry(REGISTRY_KEYS.X_KEY)
    extra = manager.get_from_registry(REGULATORY_KEY) if model._inputs.multiome else None
    features = normalized_rows(module, X, train, extra)
    from threadpoolctl import threadpool_limits

    # BLAS threads as many as torch's: on a busy machine more threads than cores made a fit 6× slower
    with threadpool_limits(limits=max(1, torch.get_num_threads())):
        weight, bias, info = fit(features, codes[train], n_classes, seed=seed, C=C)
    module.set_linear_stage(torch.as_tensor(weight), torch.as_tensor(bias))
    return info
