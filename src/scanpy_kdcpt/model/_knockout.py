"""Key genes from the Cell Learner and in-silico knockouts (methods mixed into KDCPT)."""

from __future__ import annotations


class KnockoutMixin:
    """Key genes and in-silico knockouts."""

    def _write_key_genes(self, adata, keys) -> None:
        """Write key-gene scores into ``.var`` / ``.uns`` (filled in by the knockout work)."""
