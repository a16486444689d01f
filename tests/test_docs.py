"""The documentation keeps up with the code: every public name is in the API reference, every
AnnData key the package writes is in ``docs/outputs.md``, and the tutorials that need the
project's ``../shared`` data say so and stop cleanly without it.

No Sphinx here (``make docs`` builds the pages); these read the sources the build reads.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import sys
from pathlib import Path

import nbformat
import pytest

import scanpy_kdcpt as kdcpt
from scanpy_kdcpt import _constants, _keys

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS))

import _apigen  # noqa: E402  (docs/_apigen.py: what conf.py writes into api.md)

# --------------------------------------------------------------------------------------------
# API reference
# --------------------------------------------------------------------------------------------


def _public_modules() -> list[str]:
    """The package's public modules, found independently of ``_apigen``: every module in
    ``scanpy_kdcpt.__all__``, and every other non-private submodule that declares ``__all__``.
    """
    names = {n for n in kdcpt.__all__ if inspect.ismodule(getattr(kdcpt, n))}
    for info in pkgutil.iter_modules(kdcpt.__path__):
        if info.name.startswith("_") or info.name in _apigen.NOT_API:
            continue
        module = importlib.import_module(f"scanpy_kdcpt.{info.name}")
        if hasattr(module, "__all__"):
            names.add(info.name)
    return sorted(names)


def _api_entries() -> set[str]:
    """Every autosummary entry of the generated API page (relative to ``scanpy_kdcpt``)."""
    text = _apigen.api_text()
    entries = set()
    for block in re.findall(r"\.\. autosummary::\n(.*?)```", text, flags=re.DOTALL):
        for line in block.splitlines():
            line = line.strip()
            if line and not line.startswith(":"):
                entries.add(line.lstrip("~"))
    return entries


def test_public_modules_include_the_known_ones():
    # the discovery above would otherwise hide a module it failed to find
    known = {"calibration", "datasets", "directed", "markov", "metrics", "multiome", "pl", "module"}
    known |= {"results", "stats", "writers"}
    assert known <= set(_public_modules())


def test_no_placeholder_left():
    text = _apigen.api_text()
    assert not re.findall(r"^%[A-Z_]+%$", text, flags=re.MULTILINE)


def test_api_reference_lists_every_public_name():
    entries = _api_entries()
    top = {id(getattr(kdcpt, n)): n for n in kdcpt.__all__ if not inspect.ismodule(getattr(kdcpt, n))}
    missing = []
    for name in kdcpt.__all__:
        if not name.startswith("__") and not inspect.ismodule(getattr(kdcpt, name)) and name not in entries:
            missing.append(name)
    for mod in _public_modules():
        module = importlib.import_module(f"scanpy_kdcpt.{mod}")
        for name in _apigen.public_names(module):
            obj = getattr(module, name)
            if f"{mod}.{name}" in entries or top.get(id(obj)) in entries:
                continue
            missing.append(f"{mod}.{name}")
    assert not missing, (
        f"public names missing from the API reference: {missing}. Add a section with a %MODULE% line "
        "to docs/_api.md.in for a new module (see docs/_apigen.py)."
    )


def test_api_entries_exist():
    # an entry whose object is gone would only show up as a warning of the docs build
    for entry in _api_entries():
        obj = kdcpt
        for part in entry.split("."):
            obj = getattr(obj, part)
