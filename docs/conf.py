"""Sphinx configuration of scanpy-kdcpt: builds offline, warnings are errors (``make docs``)."""

from __future__ import annotations

import os
import sys
from datetime import date
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "src"))
os.environ.setdefault("MPLBACKEND", "Agg")

import scanpy_kdcpt  # noqa: E402

project = "scanpy-kdcpt"
author = "scanpy-kdcpt developers"
copyright = f"{date.today().year}, {author}"
release = version = scanpy_kdcpt.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_autodoc_typehints",
]

# offline: no intersphinx (it would fetch inventories over the network)
templates_path = ["_templates"]
exclude_patterns = [
    "_build",
    "Thumbs.db",
    ".DS_Store",
    "**.ipynb_checkpoints",
    "tutorials/run_notebooks.py",
    "tutorials/README.md",
    "tutorials/.test_*",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"

# notebooks are committed executed (``make tutorials`` re-runs them): never execute here
nb_execution_mode = "off"
# tutorials that read data not shipped with the package (the project's ../shared/data, or a
# download): never executed by a docs build, whatever the mode above, so a build without the data
# renders their committed outputs instead of failing
nb_execution_excludepatterns = ["tutorials/snare.ipynb", "tutorials/pancreas.ipynb"]
nb_merge_streams = True
nb_output_stderr = "remove"  # warnings and Lightning banners: noise in rendered tutorials
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

autosummary_generate = True


def _own_members(cls) -> list[str]:
    """Public methods of ``cls`` defined in this package (its mixins included, scvi-tools' not)."""
    import inspect

    names = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("scanpy_kdcpt"):
            continue
        for name, obj in vars(klass).items():
            if name.startswith("_"):
                continue
            func = obj.__func__ if isinstance(obj, (classmethod, staticmethod)) else obj
            if inspect.isfunction(func) or isinstance(obj, property):
                names.add(name)
    return sorted(names)


# classes that derive from scvi-tools / Lightning / torch classes, by the name autosummary gives them
_CLASSES = {
    "scanpy_kdcpt.KDCPT": scanpy_kdcpt.KDCPT,
    "scanpy_kdcpt.KDCPTModule": scanpy_kdcpt.KDCPTModule,
    "scanpy_kdcpt.KDCPTTrainingPlan": scanpy_kdcpt.KDCPTTrainingPlan,
    "scanpy_kdcpt.module.KDCPTMultiomeModule": scanpy_kdcpt.module.KDCPTMultiomeModule,
}
autosummary_context = {
    # methods listed in a class's summary table
    "kdcpt_members": {name: _own_members(c) for name, c in _CLASSES.items()},
    # base classes of other packages (scvi-tools, Lightning, torch) whose members are not documented here
    "kdcpt_foreign_bases": {
        name: ", ".join(sorted({k.__name__ for k in c.__mro__ if not k.__module__.startswith("scanpy_kdcpt")}))
        for name, c in _CLASSES.items()
    },
}
autodoc_member_order = "groupwise"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
napoleon_use_param = True
typehints_defaults = "braces"
always_document_param_types = False
# scvi-tools and lightning are heavy and their docstrings are not ours: keep them importable but
# do not let their formatting warnings fail our build
suppress_warnings = ["myst.header", "autosummary.import_cycle"]

html_theme = "sphinx_book_theme"
html_title = "scanpy-kdcpt"
html_static_path = ["_static"]
html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2}
# MathJax is loaded by the browser (from its CDN) when a page is opened; the build itself is offline.
# For reading the docs without a network, point KDCPT_DOCS_MATHJAX at a local MathJax (e.g. Debian's
# libjs-mathjax: /usr/share/javascript/mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML).
if os.environ.get("KDCPT_DOCS_MATHJAX"):
    mathjax_path = os.environ["KDCPT_DOCS_MATHJAX"]
    if "MathJax.js" in mathjax_path:  # MathJax 2 reads its configuration differently
        myst_update_mathjax = False
        mathjax2_config = {"tex2jax": {"inlineMath": [["\\(", "\\)"]], "displayMath": [["\\[", "\\]"]]}}


# --- generated parts of pages ------------------------------------------------------------
# ``api.md`` from ``_api.md.in``: every public name of every public module is listed without
# editing a page (``_apigen.py``; ``tests/test_docs.py`` checks the result)
sys.path.insert(0, str(HERE))
from _apigen import write_api_page  # noqa: E402

write_api_page()


from docutils import nodes  # noqa: E402
from sphinx.util.docutils import SphinxDirective  # noqa: E402


class KdcptHelp(SphinxDirective):
    """``.. kdcpt-help::`` — the ``kdcpt run --help`` text, straight from the argument parser."""

    def run(self):
        from scanpy_kdcpt.cli import build_parser

        os.environ["COLUMNS"] = "88"  # argparse wraps the help to the terminal's width
        parser = build_parser()
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        text = sub.choices["run"].format_help()
        return [nodes.literal_block(text, text, language="text")]


def setup(app):
    app.add_directive("kdcpt-help", KdcptHelp)
