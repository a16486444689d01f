"""Docstring fragments shared by every ``kdcpt.pl`` function (scanpy's ``_doc_params`` pattern).

Write ``{doc_key}``, ``{doc_show_save_ax}``, ``{doc_wrap_title}`` or ``{doc_returns}`` (the
whole Returns section) on a line of its own in a numpy docstring and decorate the function
with ``@doc_params(...)``; only the placeholders named are replaced, so other braces in the
docstring (``{key}_pred``) stay as written.
"""

from __future__ import annotations

import re
from textwrap import dedent, indent
from typing import TypeVar

from .._errors import InvalidInputError

_F = TypeVar("_F")

doc_key = """\
key
    The ``key_added`` the results were written under (default ``"kdcpt"``)."""

doc_show_save_ax = """\
ax
    Draw into this :class:`~matplotlib.axes.Axes` (default: a new figure).
show
    Show the figure (default ``scanpy.settings.autoshow``).
save
    Save the figure into ``scanpy.settings.figdir``, as scanpy does: ``True`` writes
    ``{plot}{settings.plot_suffix}.{settings.file_format_figs}`` (``{plot}`` is the function's
    name, e.g. ``transition_matrix``); a string is appended to that name and may end with
    the format (``save="_pbmc.pdf"`` writes ``transition_matrix_pbmc.pdf``). Default
    ``scanpy.settings.autosave``.
return_fig
    Return the :class:`~matplotlib.figure.Figure` instead of the Axes."""

doc_returns = """\
Returns
-------
The :class:`~matplotlib.axes.Axes` (``None`` when shown; the
:class:`~matplotlib.figure.Figure` with ``return_fig=True``)."""

doc_wrap_title = """\
wrap
    Break phenotype names longer than this over lines (at most two; a longer name is cut with
    "…", so that the names of neighbouring rows do not run into each other: a wider ``wrap``
    shows more of it).
title
    Axes title."""

_FRAGMENTS = {
    "doc_key": doc_key,
    "doc_show_save_ax": doc_show_save_ax,
    "doc_returns": doc_returns,
    "doc_wrap_title": doc_wrap_title,
}


def doc_params(*names: str, **replacements: str):
    """Fill ``{name}`` placeholders of a docstring with the shared fragments (indented to fit).

    ``names`` pick fragments of this module by name; ``replacements`` add others.
    """
    fragments = {**{n: _FRAGMENTS[n] for n in names}, **replacements}

    def decorate(obj: _F) -> _F:
        doc = obj.__doc__
        assert doc, f"{obj!r} has no docstring"
        for name, text in fragments.items():
            pattern = re.compile(rf"^([ \t]*)\{{{name}\}}[ \t]*$", re.MULTILINE)
            if not pattern.search(doc):
                raise InvalidInputError(f"The docstring of {obj.__name__} has no line {{{name}}}.")
            doc = pattern.sub(lambda m, t=text: indent(dedent(t), m.group(1)), doc)
        obj.__doc__ = doc
        return obj

    return decorate
