"""Every tutorial notebook runs from top to bottom (tiny epoch budget, subsampled cells).

The committed notebooks are executed with a realistic budget by ``make tutorials``; here each is
executed in a scratch copy with ``KDCPT_TUTORIAL_EPOCHS=1`` so that an API change that breaks a
tutorial fails the tests. Deselect with ``-m "not tutorials"``.
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
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    # executed in a copy inside the tutorials folder (relative data paths stay valid), not written back
    copy = TUTORIALS / f".test_{name}"
    shutil.copy(TUTORIALS / name, copy)
    try:
        nb = execute(copy, write=False, timeout=600)
    finally:
        copy.unlink(missing_ok=True)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors


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
