"""The package version, in one place (read by the model's writers and its save files)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("scanpy-kdcpt")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"
