"""Execute tutorial notebooks with nbclient (``make tutorials``; ``tests/test_tutorials.py``).

Usage: ``python run_notebooks.py [--no-write] NOTEBOOK.ipynb ...`` from this folder.

The notebooks hold only what a reader would type. What a run needs besides is set up here, in
a cell run before the first one and left out of the saved notebook:

- Lightning's "GPU available" banner and ``UserWarning`` noise are silenced;
- ``KDCPT_TUTORIAL_EPOCHS``: at most this many training epochs (``model.train(max_epochs=...)``);
- ``KDCPT_TUTORIAL_MAX_CELLS``: the bundled data sets (``kdcpt.datasets.*``) subsampled to this
  many cells;
- ``KDCPT_TUTORIAL_MAX_NULL``: at most this many null genes per knockout (``n_null``),
  randomised shifts (``n_shift_null``) and matched regulators (``n_regulator_null``);
- ``KDCPT_PANCREAS_PATH``: the local file ``kdcpt.datasets.pancreas()`` reads (default: the
  project's shared copy when present, else scVelo's download).

The tests run each notebook with a tiny budget in a temporary folder.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

#: the project's copy of the pancreas data (``../../shared/data`` next to the repository)
SHARED_PANCREAS = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "pancreas_endocrinogenesis"
    / "pancreas_bastidas_ponce2019_3696x2000.h5ad"
)

_SETUP = """\
import functools as _functools
import logging as _logging
import warnings as _warnings

import scanpy as _sc
import scanpy_kdcpt as _kdcpt

_logging.getLogger("lightning.pytorch").setLevel(_logging.ERROR)  # no "GPU available: False" banner
_warnings.filterwarnings("ignore", category=UserWarning)
_EPOCHS, _MAX_CELLS, _MAX_NULL, _PANCREAS = {epochs!r}, {max_cells!r}, {max_null!r}, {pancreas!r}


def _capped(func, name, cap, *, default_to_cap=False):
    @_functools.wraps(func)
    def wrapper(*args, **kwargs):
        if cap and kwargs.get(name) is not None:
            kwargs[name] = min(int(kwargs[name]), cap)
        elif cap and default_to_cap:
            kwargs[name] = cap
        return func(*args, **kwargs)

    return wrapper


def _subsampled(loader):
    @_functools.wraps(loader)
    def wrapper(*args, **kwargs):
        adata = loader(*args, **kwargs)
        if _MAX_CELLS and adata.n_obs > _MAX_CELLS:
            _sc.pp.subsample(adata, n_obs=_MAX_CELLS, random_state=0)
        return adata

    return wrapper


_kdcpt.KDCPT.train = _capped(_kdcpt.KDCPT.train, "max_epochs", _EPOCHS, default_to_cap=True)
for _arg in ("n_null", "n_shift_null", "n_regulator_null"):
    _kdcpt.KDCPT.knockout = _capped(_kdcpt.KDCPT.knockout, _arg, _MAX_NULL)
for _name in ("pbmc68k_reduced", "krumsiek11", "pancreas"):
    setattr(_kdcpt.datasets, _name, _subsampled(getattr(_kdcpt.datasets, _name)))
if _PANCREAS:
    _kdcpt.datasets.pancreas = _functools.partial(_kdcpt.datasets.pancreas, _PANCREAS)
"""


def _int_env(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def setup_code() -> str:
    """The harness cell: warning / logging filters and the budget caps from the environment."""
    pancreas = os.environ.get("KDCPT_PANCREAS_PATH") or (str(SHARED_PANCREAS) if SHARED_PANCREAS.exists() else None)
    return _SETUP.format(
        epochs=_int_env("KDCPT_TUTORIAL_EPOCHS"),
        max_cells=_int_env("KDCPT_TUTORIAL_MAX_CELLS"),
        max_null=_int_env("KDCPT_TUTORIAL_MAX_NULL"),
        pancreas=pancreas,
    )


def execute(
    path: str | os.PathLike, *, write: bool = True, timeout: int = 1800, cwd: str | os.PathLike | None = None
) -> nbformat.NotebookNode:
    """Run every cell of the notebook at ``path`` after the harness cell; save outputs when ``write``.

    Cells run in ``cwd`` (default: the notebook's folder). The harness cell is removed again
    and the execution counts renumbered, so the saved notebook starts at ``[1]``.
    """
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(setup_code()))
    workdir = Path(cwd) if cwd is not None else path.parent
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(workdir.resolve())}}
    )
    try:
        client.execute()
    finally:
        harness = nb.cells.pop(0)
        errors = [o for o in harness.get("outputs", []) if o.output_type == "error"]
        if errors:
            raise RuntimeError(f"the harness cell failed: {errors[0].get('evalue')}")
        for cell in nb.cells:
            if cell.cell_type == "code" and cell.get("execution_count"):
                cell.execution_count -= 1
                for out in cell.get("outputs", []):
                    if out.get("execution_count"):
                        out.execution_count -= 1
    if write:
        shrink_images(nb)
        nbformat.write(nb, path)
    return nb


def shrink_images(nb: nbformat.NotebookNode, max_width: int = 900) -> None:
    """Re-encode embedded PNG figures as 256-colour PNGs (wider ones at 2/3 size): notebooks stay ~1 MB.

    The palette is the first of median cut, maximum coverage and octree that keeps every pixel
    near its colour (median cut alone turned a rare category's colour, e.g. a small cluster on
    a UMAP, into its neighbour's); a figure none of them holds is kept in full colour.
    """
    import base64
    import io

    import numpy as np
    from PIL import Image

    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "image/png" not in data:
                continue
            img = Image.open(io.BytesIO(base64.b64decode(data["image/png"]))).convert("RGB")
            if img.width > max_width:
                img = img.resize((img.width * 2 // 3, img.height * 2 // 3), Image.LANCZOS)
            buf = io.BytesIO()
            pixels = np.asarray(img, dtype=int)
            kept = img
            for method in (Image.Quantize.MEDIANCUT, Image.Quantize.MAXCOVERAGE, Image.Quantize.FASTOCTREE):
                small = img.quantize(256, method=method)
                error = np.abs(np.asarray(small.convert("RGB"), dtype=int) - pixels).max(axis=2)
                if (error > 40).mean() <= 1e-4:
                    kept = small
                    break
            kept.save(buf, format="PNG", optimize=True)
            data["image/png"] = base64.b64encode(buf.getvalue()).decode()


def main(argv: list[str]) -> int:
    write = "--no-write" not in argv
    for name in [a for a in argv if not a.startswith("--")]:
        t0 = time.time()
        execute(name, write=write)
        print(f"{name}: executed in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
