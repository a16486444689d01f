"""The convex first stage (issue 20): an all-feature multinomial logistic regression fitted to
convergence on the training cells, below the network, and the choice of the network's share.

The regression itself (fit, ``C`` rule, subsample) is the torch-free :mod:`scanpy_kdcpt.linear`;
here the cells are normalised as the module reads them and the result is put into the module.
The regression reads what the module reads (``module.normalize(x)``: library-size normalised
``log1p`` for counts, TF-IDF for regulatory sites), is class-balanced, and its L2 strength is
chosen by inner cross-validation on the training cells. Its coefficients become frozen buffers
of the module (``linear_weight``, ``linear_bias``); the network learns the residual on top
(``logits = linear(x_log) + mix * network``), and ``mix`` is chosen afterwards on the
validation cells. No AnnData is written here.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import sparse

from .. import _expression
from .._constants import REGISTRY_KEYS
from ..calibration import MIX_GRID, choose_mix  # noqa: F401 - the torch-free choice of the share
from ..linear import C_GRID, MAX_CV_CELLS, LinearFit, fit, stratified_subsample  # noqa: F401 - the torch-free core
from ..module import REGULATORY_KEY

#: training cells the regression is fitted on at most (a class-stratified subsample beyond)
MAX_CELLS = 20_000
#: values (rows × features) normalised at a time: 16M floats, 64 MB
CHUNK_VALUES = 2**24


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


def normalized_mean(module, X, extra=None) -> np.ndarray:
    """Each feature's mean ``module.normalize`` value over all rows of ``X`` (and ``extra``),
    clipped at ``module.input_max`` as the forward pass clips, read in blocks.
    """
    total = np.zeros(module.n_genes)
    cap = module.input_max.detach().cpu().numpy()
    for block in _normalized_blocks(module, X, np.arange(X.shape[0]), extra):
        total += np.minimum(block, cap).sum(0)
    return total / max(X.shape[0], 1)


def _device(module) -> torch.device:
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


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
        scheme = model.init_params_["non_kwargs"]["linear_scheme"]  # a model saved before it existed: the default
        weight, bias, info = fit(features, codes[train], n_classes, seed=seed, C=C, scheme=scheme)
    module.set_linear_stage(torch.as_tensor(weight), torch.as_tensor(bias))
    return info
