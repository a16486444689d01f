"""The convex first stage's torch-free core (issue 20): the class-balanced multinomial logistic
regression on all features, its ``C`` chosen by inner cross-validation, and the class-stratified
subsample it is fitted on. The model (``KDCPT(linear_stage=True)``) normalises the cells and puts
the coefficients into its module; benchmarks call these functions directly.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field, fields

import numpy as np
from scipy import sparse

from ._errors import InvalidInputError

__all__ = ["LinearFit", "choose_C", "coefficients", "fit", "logistic_regression", "stratified_subsample"]

#: training cells of the inner cross-validation at most
MAX_CV_CELLS = 4_000
#: inverse L2 strengths tried by the inner cross-validation (scikit-learn's ``C``); down to 1e-4
#: since the old lower end, 0.001, was chosen in most runs: on SNARE (23 types) 3e-4 then gave
#: +0.02 held-out macro-F1 in 3 of 3 splits, elsewhere the same choice
#: (``benchmarks/results/first_stage_c.md``)
C_GRID = (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1)
#: the first stage's ways of fitting several phenotypes (:func:`logistic_regression`)
SCHEMES = ("multinomial", "ovr")


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

    @classmethod
    def from_dict(cls, record: dict) -> LinearFit:
        """The fit back from :meth:`to_dict` (a saved model's ``extra_["linear_stage"]``)."""
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in record.items() if k in names}
        for k in ("cv_macro_f1", "mix_scores"):
            kwargs[k] = {float(c): v for c, v in kwargs.get(k, {}).items()}
        return cls(**kwargs)


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


def logistic_regression(
    C: float,
    max_iter: int,
    warm_start: bool = False,
    class_weight: str | None = "balanced",
    scheme: str = "multinomial",
):
    """The first stage's estimator: scikit-learn's L2 ``LogisticRegression`` (L-BFGS, ``tol=1e-4``),
    class-balanced unless ``class_weight=None`` (then weights go to ``fit``'s ``sample_weight``).
    ``scheme="multinomial"``: one softmax over the phenotypes; ``"ovr"``: one binary regression of
    each phenotype against the rest (``OneVsRestClassifier``; balanced within each binary problem),
    as CellTypist fits.
    """
    from sklearn.linear_model import LogisticRegression

    if scheme not in SCHEMES:
        raise InvalidInputError(f"scheme must be one of {SCHEMES}, not {scheme!r}.")
    clf = LogisticRegression(
        C=C, class_weight=class_weight, solver="lbfgs", max_iter=max_iter, tol=1e-4, warm_start=warm_start
    )
    if scheme == "ovr":
        from sklearn.multiclass import OneVsRestClassifier

        return OneVsRestClassifier(clf)
    return clf


def coefficients(clf) -> tuple[np.ndarray, np.ndarray]:
    """``(coef (classes × features), intercept)`` of a fitted :func:`logistic_regression`: the
    logits whose argmax is its prediction, one row per class in ``clf.classes_``.

    A binary fit has one row in scikit-learn (the log-odds of the second class); here each
    class gets half of it, with opposite signs, so their softmax is the fitted probability.
    """
    if hasattr(clf, "estimators_"):  # one-vs-rest: each phenotype's log-odds against the rest
        coef = np.vstack([e.coef_ for e in clf.estimators_])
        intercept = np.concatenate([e.intercept_ for e in clf.estimators_])
    else:
        coef, intercept = clf.coef_, clf.intercept_
    if len(clf.classes_) == 2 and coef.shape[0] == 1:
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.r_[-intercept / 2, intercept / 2]
    return coef, intercept


def choose_C(scores: dict[float, float], tolerance: float = 0.002) -> float | None:
    """The package's rule for ``C``: the best mean cross-validated macro-F1 and, within
    ``tolerance`` of it, the strongest regularisation (smallest ``C``); ``None`` when no score
    is finite.
    """
    finite = {c: s for c, s in scores.items() if np.isfinite(s)}
    if not finite:
        return None
    top = max(finite.values())
    return min(c for c, s in finite.items() if s >= top - tolerance)


def fit(
    X: sparse.csr_matrix,
    y: np.ndarray,
    n_classes: int,
    *,
    seed: int,
    n_folds: int = 3,
    max_iter: int = 1000,
    C: float | None = None,
    scheme: str = "multinomial",
) -> tuple[np.ndarray, np.ndarray, LinearFit]:
    """Class-balanced logistic regression on ``X`` (cells × features; ``scheme``: multinomial or
    one-vs-rest, see :func:`logistic_regression`), its ``C`` chosen
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
                clf = logistic_regression(C_GRID[0], max_iter=200, warm_start=True, scheme=scheme)
                for c in C_GRID:  # along the path, each fit starting from the previous one (multinomial)
                    clf.set_params(**{"estimator__C" if scheme == "ovr" else "C": c}).fit(X[cv[tr]], y_cv[tr])
                    f1[c].append(f1_score(y_cv[te], clf.predict(X[cv[te]]), average="macro"))
            scores = {c: float(np.mean(v)) if v else float("nan") for c, v in f1.items()}
    if C is None:  # the best macro-F1; within 0.002 of it, the strongest regularisation
        C = choose_C(scores)
    if C is None:  # no cross-validation was possible
        C = 0.1
    weight = np.zeros((n_classes, X.shape[1]), dtype=np.float32)
    bias = np.full(n_classes, -30.0, dtype=np.float32)
    converged = True
    if len(present) >= 2:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            clf = logistic_regression(C, max_iter=max_iter, scheme=scheme).fit(X, y)
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        coef, intercept = coefficients(clf)
        weight[clf.classes_] = coef
        bias[clf.classes_] = intercept - intercept.mean()
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
