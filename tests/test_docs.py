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


# --------------------------------------------------------------------------------------------
# outputs.md against _keys.py
# --------------------------------------------------------------------------------------------
#
# outputs.md holds one table per place (a "## `.obs` ..." heading, and so on) whose first
# column, headed "key", names keys in backticks (several per cell are fine). A key defined in
# _keys.py must be named in the table of its place; a key named in a table must come from
# _keys.py, or be listed here with the reason it is not there.

OUTPUTS = DOCS / "outputs.md"
UNS_ENTRIES = '.uns["kdcpt"]'  # heading of the table of the entries inside .uns[key_added]

#: keys outputs.md names that _keys.py does not define, and who writes them
NOT_IN_KEYS = {
    f"{_constants.LABELS_COPY_PREFIX}<labels_key>": "setup_anndata / setup_mudata: private copy of the labels",
    "kdcpt_prior_tf": "kdcpt run --species (cli.py)",
    "_scvi_uuid": "scvi-tools' setup",
    "_scvi_manager_uuid": "scvi-tools' setup",
    "linked_gene": "setup_mudata(link_key=...) / multiome.link_peaks_to_genes(key_added=...)",
}


def _documented() -> dict[str, set[str]]:
    """Place (the first backticked text of a ``##`` heading) → keys named in its "key" tables."""
    out: dict[str, set[str]] = {}
    place, header, in_key_table = None, False, False
    for line in OUTPUTS.read_text().splitlines():
        if line.startswith("#"):
            m = re.search(r"`([^`]+)`", line) if line.startswith("## ") else None
            if line.startswith("## "):
                place = m.group(1) if m else line[3:].strip()
            in_key_table = False
            continue
        if not line.startswith("|"):
            in_key_table = header = False
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not header:  # the header row of a table
            header, in_key_table = True, cells[0] == "key"
            continue
        if in_key_table and not set(cells[0]) <= set("-: "):
            out.setdefault(place, set()).update(re.findall(r"`([^`]+)`", cells[0]))
    return out


def _defined() -> dict[str, tuple[str, ...]]:
    """Key (for ``key_added="kdcpt"``) → its places, from _keys.py.

    ``Keys`` properties and methods are placed by the ``# .obs`` / ``# .var`` ... comment above
    them (``# .obs / .obsm ...``: either), or by their docstring when it starts with the place
    (a docstring such as "``.obs`` column: ..."); the ``UNS_*`` constants are entries of ``.uns[key_added]``.
    """
    keys = _keys.Keys("kdcpt")
    places, out = (), {}
    for line in inspect.getsource(_keys.Keys).splitlines():
        m = re.match(r"\s*# (\.\w+(?:\s*/\s*\.\w+)*)", line)
        if m:
            places = tuple(re.findall(r"\.\w+", m.group(1)))
            continue
        m = re.match(r"\s*def (\w+)\((.*)\)", line)
        if not m or m.group(1).startswith("_"):
            continue
        attr = getattr(_keys.Keys, m.group(1))
        func = attr.fget if isinstance(attr, property) else attr
        doc = re.match(r"``(\.\w+)``", inspect.getdoc(func) or "")
        if isinstance(attr, property):
            value = getattr(keys, m.group(1))
        else:  # e.g. proba(phenotype): the documented form names the argument in angle brackets
            params = [p for p in inspect.signature(attr).parameters if p != "self"]
            value = getattr(keys, m.group(1))(*(f"<{p}>" for p in params))
        out[value] = (doc.group(1),) if doc else places
    for name, value in vars(_keys).items():
        if name.startswith("UNS_"):
            out[value] = (UNS_ENTRIES,)
    return out


def test_outputs_page_has_the_places():
    places = set(_documented())
    assert {".obs", ".var", ".obsp", ".obsm", ".uns", UNS_ENTRIES} <= places


def test_outputs_names_every_key_of_keys_py():
    documented = _documented()
    everywhere = set().union(*documented.values())
    missing = []
    for key, places in sorted(_defined().items()):
        if key.endswith("_"):  # a prefix (proba_prefix): some documented key must start with it
            if not any(k.startswith(key) for k in everywhere):
                missing.append(f"{key}… ({' or '.join(places)})")
            continue
        if not places:
            if key not in everywhere:
                missing.append(key)
        elif not any(key in documented.get(place, set()) for place in places):
            missing.append(f"{key} (in the table under the heading with `{' or '.join(places)}`)")
    assert not missing, (
        "docs/outputs.md does not name these keys of src/scanpy_kdcpt/_keys.py: "
        + "; ".join(missing)
        + ". Add a row | `key` | written by | what it holds | to the table of that place."
    )


def test_outputs_names_only_keys_the_package_writes():
    defined = set(_defined())
    extra = set().union(*_documented().values()) - defined - set(NOT_IN_KEYS)
    assert not extra, (
        f"docs/outputs.md names keys that _keys.py does not define: {sorted(extra)}. Remove them, add "
        "them to _keys.py, or list them in NOT_IN_KEYS of tests/test_docs.py with who writes them."
    )


def test_outputs_places_multiome_keys():
    # the MuData keys of issue 21: the regulatory modality's flag and the rankings of mdata.uns
    documented = _documented()
    assert "kdcpt_key_site" in documented[".var"]
    assert {"key_sites", "key_features", "knockout_fate", "knockout_flux"} <= documented[UNS_ENTRIES]
    text = OUTPUTS.read_text()
    for column in ("qval", "null_mean", "null_low", "null_high", "null_pool", "fate_base", "flux_ko"):
        assert f"`{column}`" in text, column


# --------------------------------------------------------------------------------------------
# concepts and references
# --------------------------------------------------------------------------------------------


def test_concepts_cover_multiomics_grn_and_fates():
    text = (DOCS / "concepts.md").read_text()
    headings = re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)
    for wanted in ("Multi-omics", "Fate probabilities", "Propagation through a regulatory network"):
        assert any(h.startswith(wanted) for h in headings), wanted
    for term in ("TF-IDF", "linked gene", 'propagate="grn"', "knockout_fate", "no direction"):
        assert term in text, term


@pytest.mark.parametrize(
    "authors",
    [
        "Chen S, Lake BB, Zhang K",  # SNARE-seq
        "Weiler P",  # CellRank 2
        "Lange M, Bergen V",  # CellRank
        "Bergen V, Lange M",  # scVelo
        "Gulati GS",  # CytoTRACE
        "Kamimoto K",  # CellOracle
        "Garcia-Alonso L",  # DoRothEA
        "Stuart T",  # Signac
        "Bastidas-Ponce A",  # pancreas
        "Paul F",  # paul15
        "Kang HM",  # Kang et al. 2018
        "Krumsiek J",
        "Zheng GXY",
        "Lambert SA",
    ],
)
def test_references_cite(authors):
    assert authors in (DOCS / "references.md").read_text()


# --------------------------------------------------------------------------------------------
# tutorials that need ../shared data
# --------------------------------------------------------------------------------------------

TUTORIALS = ROOT / "tutorials"
SHARED = re.compile(r"shared/data/(\w+)")


def _needing_shared() -> dict[str, set[str]]:
    """Notebook → the ``shared/data/<dataset>`` folders its code cells read."""
    out = {}
    for path in sorted(TUTORIALS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        found = {m for c in nb.cells if c.cell_type == "code" for m in SHARED.findall(c.source)}
        if found:
            out[path.name] = found
    return out


def test_some_tutorial_needs_shared_data():
    assert "snare.ipynb" in _needing_shared()


@pytest.mark.parametrize("name", sorted(_needing_shared()))
def test_tutorial_says_it_needs_shared_data_first(name):
    nb = nbformat.read(TUTORIALS / name, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "markdown"
    for dataset in _needing_shared()[name]:
        assert f"shared/data/{dataset}" in first.source, f"{name}: the first cell does not name {dataset}"
    code = next(c for c in nb.cells if c.cell_type == "code")
    assert "raise SystemExit" in code.source, f"{name}: the first code cell does not stop without the data"


def test_snare_tutorial_stops_cleanly_without_the_data(tmp_path):
    # the first code cell, run as a script without the data: a one-line reason, no traceback
    import os
    import subprocess

    nb = nbformat.read(TUTORIALS / "snare.ipynb", as_version=4)
    code = next(c for c in nb.cells if c.cell_type == "code").source
    env = {**os.environ, "KDCPT_SNARE_PATH": str(tmp_path / "absent.h5mu"), "MPLBACKEND": "Agg"}
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 1
    assert "needs the SNARE-seq cortex data" in run.stderr and "KDCPT_SNARE_PATH" in run.stderr
    assert "Traceback" not in run.stderr


def test_docs_build_never_executes_tutorials_needing_shared_data():
    conf = (DOCS / "conf.py").read_text()
    assert re.search(r'^nb_execution_mode = "off"$', conf, flags=re.MULTILINE)
    excluded = re.search(r"^nb_execution_excludepatterns = \[(.*)\]$", conf, flags=re.MULTILINE)
    assert excluded is not None
    for name in _needing_shared():
        assert f'"tutorials/{name}"' in excluded.group(1), name
