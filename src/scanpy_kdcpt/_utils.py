"""Small helpers shared by the model, the writers and the plots (no torch, no model state)."""

from __future__ import annotations

import contextlib
import difflib
import logging
from collections.abc import Iterable, Sequence

import numpy as np

from ._errors import KeyNotFoundError


def default_palette(n: int) -> list[str]:
    """Scanpy's default categorical palette for ``n`` categories (20, 28 or 102 colours)."""
    from scanpy.plotting import palettes

    pal = palettes.default_20 if n <= 20 else palettes.default_28 if n <= 28 else palettes.default_102
    return [pal[i % len(pal)] for i in range(n)]


def is_mudata(obj) -> bool:
    """Whether ``obj`` is a MuData (False when mudata is not installed)."""
    try:
        from mudata import MuData
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, MuData)


def closest_names(names: Iterable[str], universe: Sequence[str], n: int = 3) -> dict[str, list[str]]:
    """For each name, the closest names in ``universe`` (an exact case-insensitive match first)."""
    universe = list(map(str, universe))
    upper = {u.upper(): u for u in universe}
    out = {}
    for name in names:
        if str(name).upper() in upper:
            out[name] = [upper[str(name).upper()]]
        else:
            out[name] = difflib.get_close_matches(str(name), universe, n=n)
    return out


def did_you_mean(names: Iterable[str], universe: Sequence[str]) -> str:
    """``"'Gata': did you mean ['Gata1']?; ..."`` for a KeyError message."""
    close = closest_names(names, universe)
    return "; ".join(f"{g!r}: did you mean {c}?" if c else f"{g!r}: no close name" for g, c in close.items())


def label_text(v) -> str:
    """A label as text, whole numbers as integers first (``1.0`` → ``"1"``: integer labels with a
    missing value arrive as floats and must still equal ``1``).
    """
    if isinstance(v, float | np.floating) and np.isfinite(v) and float(v).is_integer():
        return str(int(v))
    return str(v)


def find_label(lookup: dict, v, default=None):
    """``lookup[str(v)]``, else ``lookup[label_text(v)]`` (a label ``1.0`` finds ``"1"``), else ``default``."""
    return lookup.get(str(v), lookup.get(label_text(v), default))


def each_pair_once(flux, base: str):
    """Rows of a tidy ``source`` → ``target`` flux table (``knockout_flux``), each pair of
    phenotypes once: in the direction of its net flux ``base`` before the knockout (``> 0``; at
    0 the direction whose source name sorts first; NaN rows left out).
    """
    b = flux[base].to_numpy(float)
    first = flux["source"].astype(str).to_numpy() < flux["target"].astype(str).to_numpy()
    return flux[(b > 0) | ((b == 0) & first)]


def chain_fingerprint(chain) -> str:
    """A short digest of a cells × cells chain (its sparsity pattern and float32 values): tells
    whether results computed on a chain (knockout fate deltas) belong to the one now written.
    """
    import hashlib

    from scipy import sparse

    T = sparse.csr_matrix(chain, dtype=np.float32, copy=True)
    T.sum_duplicates()
    T.sort_indices()
    digest = hashlib.sha1(np.asarray(T.shape, dtype=np.int64).tobytes())
    for part in (T.indptr.astype(np.int64), T.indices.astype(np.int64), T.data):
        digest.update(np.ascontiguousarray(part).tobytes())
    return digest.hexdigest()[:16]


def codes_of(labels, phenotypes: Sequence[str]) -> np.ndarray:
    """Integer code of each label among ``phenotypes``; ``-1`` for missing or unknown labels
    (a label ``1.0`` is the phenotype ``"1"``, see :func:`label_text`).
    """
    import pandas as pd

    lookup = {str(c): i for i, c in enumerate(phenotypes)}

    def code(x) -> int:
        return find_label(lookup, x, -1) if pd.notna(x) else -1

    return pd.Series(np.asarray(labels, dtype=object)).map(code).to_numpy(int)


def check_obs_column(data, key: str, what: str, where: str = "adata") -> None:
    """A KeyError naming the columns when ``key`` is not a column of ``data.obs``."""
    if key not in data.obs:
        raise KeyNotFoundError(f"{what} {key!r} is not a column of {where}.obs (columns: {list(data.obs.columns)}).")


def import_cellrank():
    """Import CellRank, keeping the caller's warning filters.

    Importing CellRank imports pygpcca, which sets ``warnings.simplefilter("always", UserWarning)``
    for the whole process: a user's (or a notebook's) filters would be lost on the first
    ``compute_transitions``. The filters are restored after the import.
    """
    import warnings

    with warnings.catch_warnings():
        import cellrank

    return cellrank


#: library messages that are noise on a user's console (matched at the start of the message)
_NOISE_LOGS = ("💡 Tip:",)  # Lightning's advertising for its cloud services
_NOISE_WARNINGS = (
    # torch's deprecation of a class Lightning's pytree helper still uses: nothing a user can change
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    # Lightning's advice to log more often than once per epoch: small data sets have few batches
    (Warning, r"The number of training batches \(\d+\) is smaller than the logging interval"),
)
#: loggers that carry Lightning's ``rank_zero_info`` messages
_LIGHTNING_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning_utilities.core.rank_zero",
)


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).lstrip().startswith(self.prefixes)


@contextlib.contextmanager
def dropping_log_messages(logger_names: Iterable[str], prefixes: tuple[str, ...]):
    """Log records of ``logger_names`` whose message starts with one of ``prefixes`` are dropped
    while the block runs; every other record still passes, and the filter is removed afterwards.
    """
    drop = _DropMessages(prefixes)
    loggers = [logging.getLogger(name) for name in logger_names]
    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)


@contextlib.contextmanager
def without_library_noise():
    """Lightning's advertising tips and the known deprecation noise of its dependencies off
    while the block runs (``KDCPT.train``, ``kdcpt run``): the progress bar, Lightning's device
    lines and the package's own warnings stay; restored afterwards, so nothing changes for the
    rest of the Python process.
    """
    import warnings

    with dropping_log_messages(_LIGHTNING_LOGGERS, _NOISE_LOGS), warnings.catch_warnings():
        for category, message in _NOISE_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield
