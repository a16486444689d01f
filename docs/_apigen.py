"""The API page (``api.md``) generated from ``_api.md.in`` and the package's ``__all__`` lists.

Used by ``conf.py`` (which writes ``api.md`` before Sphinx reads the sources, so autosummary
generates a page for every name) and by ``tests/test_docs.py`` (which checks that every public
name of the package is listed).

In ``_api.md.in`` a line ``%NAME%`` inside an ``autosummary`` block stands for every public name
of the module ``scanpy_kdcpt.name``: its ``__all__`` (or, without one, the functions it
defines), less the objects exported at the top level (``KDCPT``, ``KDCPTModule``, ...), which
are listed once, in the "Model" section.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

HERE = Path(__file__).parent
PACKAGE = "scanpy_kdcpt"
PLACEHOLDER = re.compile(r"^%([A-Z_]+)%$", re.MULTILINE)

#: submodules with an ``__all__`` that are not API modules of their own, and why
NOT_API = {
    "model": "the implementation of KDCPT, documented as scanpy_kdcpt.KDCPT",
    "perturb": "the knockout methods of KDCPT, documented as scanpy_kdcpt.KDCPT.knockout",
}


def public_names(module) -> list[str]:
    """The public names of ``module``: its ``__all__``, or the functions it defines."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [
            n
            for n, obj in vars(module).items()
            if not n.startswith("_") and inspect.isfunction(obj) and obj.__module__ == module.__name__
        ]
    return sorted(n for n in names if not n.startswith("__"))


def public_modules() -> list[str]:
    """Names of the package's public modules: those in its ``__all__``, and every other submodule
    that is not private (``_name``) and declares an ``__all__`` (less :data:`NOT_API`).
    """
    package = importlib.import_module(PACKAGE)
    names = {n for n in package.__all__ if inspect.ismodule(getattr(package, n, None))}
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_") or info.name in NOT_API or info.name in names:
            continue
        try:
            module = importlib.import_module(f"{PACKAGE}.{info.name}")
        except ImportError:
            continue
        if hasattr(module, "__all__"):
            names.add(info.name)
    return sorted(names)


def top_level_objects() -> dict[int, str]:
    """``id(obj) → name`` of the objects the package exports at its top level."""
    package = importlib.import_module(PACKAGE)
    return {id(getattr(package, n)): n for n in package.__all__ if not inspect.ismodule(getattr(package, n))}


def module_entries(name: str) -> list[str]:
    """Autosummary entries (relative to ``scanpy_kdcpt``) of the public names of one module."""
    module = importlib.import_module(f"{PACKAGE}.{name}")
    top = top_level_objects()
    return [f"{name}.{n}" for n in public_names(module) if id(getattr(module, n)) not in top]


def api_text(template: str | None = None) -> str:
    """``_api.md.in`` with each ``%NAME%`` line replaced by the entries of module ``name``."""
    text = (HERE / "_api.md.in").read_text() if template is None else template

    def block(match: re.Match) -> str:
        return "\n".join(f"   {e}" for e in module_entries(match.group(1).lower()))

    return PLACEHOLDER.sub(block, text)


def write_api_page() -> None:
    """Write ``api.md`` (only when its text changes, so Sphinx does not re-read it needlessly)."""
    text = api_text()
    target = HERE / "api.md"
    if not target.exists() or target.read_text() != text:
        target.write_text(text)
