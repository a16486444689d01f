"""Constants shared across the package (registry keys, defaults)."""

from __future__ import annotations

from typing import NamedTuple


class _RegistryKeys(NamedTuple):
    X_KEY: str = "X"
    LABELS_KEY: str = "labels"
    BATCH_KEY: str = "batch"
    EMBEDDING_KEY: str = "embedding"


REGISTRY_KEYS = _RegistryKeys()

#: target library size used when counts are normalised inside the model
TARGET_SUM = 1e4
#: placeholder category for cells without a phenotype label
UNLABELED_CATEGORY = "kdcpt_unlabeled"
#: private `.obs` column holding labels when missing values had to be recoded
LABELS_COPY_PREFIX = "_kdcpt_labels_"  # + the labels_key: one copy per labels column
#: `.obs` column of a model-built query AnnData: cells of batches unseen at training
UNSEEN_BATCH_KEY = "_kdcpt_unseen_batch"
