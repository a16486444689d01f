"""Every tutorial notebook runs from top to bottom (tiny epoch budget, subsampled cells).

The committed notebooks are executed with a realistic budget by ``make tutorials``; here each is
executed in a scratch copy in ``tmp_path`` with ``KDCPT_TUTORIAL_EPOCHS=1`` (see
``tutorials/run_notebooks.py``) so that an API change that breaks a tutorial fails the tests.
Deselect with ``-m "not tutorials"``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from conftest import PANCREAS

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
sys.path.insert(0, str(TUTORIALS))

pytestmark = pytest.mark.tutorials


def _execute(name: str, tmp_path: Path, monkeypatch, **env) -> None:
    from run_notebooks import execute

    monkeypatch.setenv("KDCPT_TUTORIAL_EPOCHS", "1")
    monkeypatch.setenv("KDCPT_TUTORIAL_MAX_CELLS", "300")
    monkeypatch.setenv("KDCPT_TUTORIAL_MAX_NULL", "2")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    # a scratch copy run inside tmp_path: nothing is written into tutorials/
    copy = tmp_path / name
    shutil.copy(TUTORIALS / name, copy)
    before = sorted(p.name for p in TUTORIALS.iterdir())
    nb = execute(copy, write=False, timeout=600, cwd=tmp_path)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert sorted(p.name for p in TUTORIALS.iterdir()) == before
    # the reader's notebook starts with its own first cell: the harness cell is not kept
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert first.execution_count == 1 and "filterwarnings" not in first.source


def test_pbmc_tutorial(tmp_path, monkeypatch):
    _execute("pbmc.ipynb", tmp_path, monkeypatch)


def test_krumsiek11_tutorial(tmp_path, monkeypatch):
    _execute("krumsiek11.ipynb", tmp_path, monkeypatch)


@pytest.mark.shared_data
@pytest.mark.skipif(
    not PANCREAS.exists(), reason=f"{PANCREAS} is absent (a user's clone): the pancreas tutorial needs it"
)
def test_pancreas_tutorial(tmp_path, monkeypatch):
    _execute("pancreas.ipynb", tmp_path, monkeypatch, KDCPT_PANCREAS_PATH=str(PANCREAS))


SNARE = PANCREAS.parents[1] / "snare_mouse_cortex" / "snare_mouse_cortex.h5mu"


@pytest.mark.shared_data
@pytest.mark.skipif(not SNARE.exists(), reason=f"{SNARE} is absent (a user's clone): the SNARE tutorial needs it")
def test_snare_tutorial(tmp_path, monkeypatch):
    _execute("snare.ipynb", tmp_path, monkeypatch, KDCPT_SNARE_PATH=str(SNARE))
