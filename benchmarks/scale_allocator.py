"""Memory of repeated ``predict`` passes over the same backed cells (issue 13, scale notes).

Untrained weights (the encoder fit is skipped): the point is memory, not predictions. Needs the
5,000-cell file of ``python benchmarks/scale.py --cells 5000``. Compare::

    python benchmarks/scale_allocator.py
    MALLOC_MMAP_THRESHOLD_=131072 MALLOC_TRIM_THRESHOLD_=131072 python benchmarks/scale_allocator.py

Prints, per pass: seconds, peak RSS (``ru_maxrss``) and resident size now (``/proc/self/statm``), in MB.
"""

from __future__ import annotations

import resource
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

import anndata as ad  # noqa: E402
import torch  # noqa: E402

import scanpy_kdcpt as kdcpt  # noqa: E402

FILE = Path(__file__).resolve().parent / "_work" / "scale_5000.h5ad"


def _peak() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _now() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 1e6


def main(passes: int = 5) -> None:
    torch.set_num_threads(1)
    adata = ad.read_h5ad(FILE, backed="r")
    kdcpt.KDCPT.setup_anndata(adata, labels_key="phenotype")
    kdcpt.KDCPT._fit_encoder_on_init = False
    model = kdcpt.KDCPT(adata)
    model.is_trained_ = True
    print("start", round(_peak()), round(_now()), flush=True)
    for i in range(passes):
        t0 = time.time()
        model.predict()
        print(i, round(time.time() - t0), "peak", round(_peak()), "current", round(_now()), flush=True)


if __name__ == "__main__":
    main()
