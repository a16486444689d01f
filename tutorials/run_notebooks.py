"""Execute tutorial notebooks in place with nbclient (``make tutorials``).

Usage: ``python run_notebooks.py [--no-write] NOTEBOOK.ipynb ...`` from this folder. The epoch
budget of every notebook is read from ``KDCPT_TUTORIAL_EPOCHS`` (unset: each notebook's own).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def execute(path: str | os.PathLike, *, write: bool = True, timeout: int = 1800) -> nbformat.NotebookNode:
    """Run every cell of the notebook at ``path`` (in its own folder); save outputs when ``write``."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent.resolve())}}
    )
    client.execute()
    if write:
        nbformat.write(nb, path)
    return nb


def main(argv: list[str]) -> int:
    write = "--no-write" not in argv
    for name in [a for a in argv if not a.startswith("--")]:
        t0 = time.time()
        execute(name, write=write)
        print(f"{name}: executed in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
