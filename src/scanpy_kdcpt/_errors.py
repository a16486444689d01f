"""The package's exceptions: one hierarchy, with messages meant for people.

Every error the package raises on bad input is a :class:`KDCPTError`; each also subclasses
the built-in exception a caller would expect (``ValueError``, ``KeyError``), so
``except ValueError`` keeps working. Each message names the problem and the fix.
"""

from __future__ import annotations


class KDCPTError(Exception):
    """Base class of every error raised by scanpy-kdcpt on bad input or misuse."""


class KeyNotFoundError(KDCPTError, KeyError):
    """A key (``.obs`` column, layer, ``.uns`` entry, gene) is missing.

    A :class:`KeyError` whose message prints as written (``KeyError`` would quote it).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidInputError(KDCPTError, ValueError):
    """Input the package cannot use (values, names, shapes, settings)."""


class NotTrainedError(KDCPTError, ValueError):
    """A model that has not been trained was asked for results."""


class ModelFileError(KDCPTError, ValueError):
    """A saved model folder is missing files, corrupt, or does not fit the data."""


class OutputPathError(KDCPTError, ValueError):
    """An output location cannot be written."""


__all__ = [
    "InvalidInputError",
    "KDCPTError",
    "KeyNotFoundError",
    "ModelFileError",
    "NotTrainedError",
    "OutputPathError",
]
