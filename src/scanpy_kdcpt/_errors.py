"""Exceptions with messages meant for people."""

from __future__ import annotations


class KeyNotFoundError(KeyError):
    """A :class:`KeyError` whose message prints as written (``KeyError`` would quote it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
