"""Docstring fragments shared by the model's methods (scvi-tools' ``DocstringProcessor`` pattern).

Write ``%(param_adata)s`` (etc.) on a line of its own in a numpy docstring and decorate the
method with ``@model_dsp.dedent``; the fragment is indented to match. One wording for one
parameter across the model, so the API reference says the same thing everywhere.
"""

from __future__ import annotations

from scvi.utils._docstrings import DocstringProcessor

from .._errors import InvalidInputError

param_adata = """\
adata
    The registered AnnData (default) or a query: its genes are aligned to the model's by name
    (missing genes zero-filled with a warning); it is never modified except by the keys written."""

param_batch_size = """\
batch_size
    Cells per forward pass (default 512)."""

param_key_added = """\
key_added
    Prefix of every key written (default ``"kdcpt"``)."""

param_copy = """\
copy
    Write into a copy of ``adata`` and return the copy; ``adata`` itself is left unchanged."""

param_inplace = """\
inplace
    Write the result into ``adata`` (default). ``False``: write nothing, only return the result
    (``copy`` and ``inplace=False`` together are refused)."""

param_predictions = """\
predictions
    Predictions of ``adata`` from :meth:`get_predictions` (skips rerunning the network)."""

model_dsp = DocstringProcessor(
    param_adata=param_adata,
    param_batch_size=param_batch_size,
    param_key_added=param_key_added,
    param_copy=param_copy,
    param_inplace=param_inplace,
    param_predictions=param_predictions,
)


def output_target(adata, *, inplace: bool = True, copy: bool = False):
    """Where a writing method writes: ``adata``, a copy of it, or nowhere (``None``).

    The one ``inplace`` / ``copy`` convention of :meth:`~scanpy_kdcpt.KDCPT.annotate`,
    :meth:`~scanpy_kdcpt.KDCPT.compute_transitions` and :meth:`~scanpy_kdcpt.KDCPT.knockout`:
    ``copy=True`` writes into a copy that the method returns; ``inplace=False`` writes nothing
    and the method returns its result; otherwise the method writes into ``adata`` and returns
    its result (``None`` for ``annotate``).
    """
    if copy and not inplace:
        raise InvalidInputError(
            "copy=True writes into a copy, inplace=False writes nothing: pass one of them, not both."
        )
    if copy:
        return adata.copy()
    return adata if inplace else None
