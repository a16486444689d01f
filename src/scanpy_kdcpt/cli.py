"""Command line: ``kdcpt run [INPUT.h5ad] --labels KEY --out DIR`` runs the whole job."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

EXIT_USAGE = 2

_DESCRIPTION = """\
Train KD-CPT on an AnnData file and write everything it finds:
an annotated .h5ad (phenotype probabilities, confidence and uncertainty in .obs, key genes in
.var, the transition matrix, entropies and knockout results in .uns), the saved model, PNG
figures and a Markdown report. With no INPUT it runs on scanpy's bundled PBMC data
(700 cells, labels 'bulk_labels', human TF prior).
"""


class _UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdcpt", description="KD-CPT for AnnData (scverse).")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="train, annotate, screen knockouts, draw figures, write a report", description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("input", nargs="?", help="an .h5ad file (default: the bundled PBMC data)")
    run.add_argument("--labels", help="obs column with each cell's phenotype (required with INPUT)")
    run.add_argument("--layer", help="layer with counts or log-normalised values (default: X)")
    run.add_argument("--embedding", help="obsm key of a pretrained cell embedding (default: internal PCA encoder)")
    prior = run.add_mutually_exclusive_group()
    prior.add_argument("--prior", help="var column (boolean or [0, 1]) of prior regulators")
    prior.add_argument(
        "--species", choices=["human", "mouse"], help="use the shipped transcription-factor list as the prior"
    )
    run.add_argument("--epochs", type=int, default=None, help="maximum training epochs (default: by data size)")
    run.add_argument("--knockout-top", type=int, default=10, help="knock out the N top key genes (0: none)")
    run.add_argument("--seed", type=int, default=0, help="random seed (scvi.settings.seed)")
    run.add_argument("--out", required=True, help="output folder (created)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _load_input(args):
    import anndata as ad

    from . import datasets

    if args.input is None:
        adata = datasets.pbmc68k_reduced()
        args.labels = args.labels or "bulk_labels"
        if args.prior is None and args.species is None:
            args.species = "human"
        return adata, "bundled pbmc68k_reduced"
    path = Path(args.input)
    if not path.exists():
        raise _UsageError(f"input file not found: {path}")
    if args.labels is None:
        raise _UsageError("--labels is required with an input file (the obs column with phenotypes)")
    try:
        adata = ad.read_h5ad(path)
    except Exception as err:  # noqa: BLE001 - any reader failure is the user's file
        raise _UsageError(f"cannot read {path} as .h5ad: {err}") from err
    return adata, str(path)


def run(args) -> int:
    import scvi

    from . import datasets
    from .model import KDCPT
    from .report import write_report

    out = Path(args.out)
    adata, source = _load_input(args)
    if args.labels not in adata.obs:
        raise _UsageError(f"--labels {args.labels!r} is not an obs column; columns: {list(adata.obs.columns)}")
    prior_key = args.prior
    if args.species is not None:
        prior_key = "kdcpt_prior_tf"
        adata.var[prior_key] = datasets.is_transcription_factor(adata.var_names, species=args.species)
    scvi.settings.seed = args.seed
    t0 = time.time()
    try:
        KDCPT.setup_anndata(
            adata, labels_key=args.labels, layer=args.layer, embedding_key=args.embedding, prior_key=prior_key
        )
    except (KeyError, ValueError) as err:
        raise _UsageError(str(err).strip("'\"")) from err
    model = KDCPT(adata)
    model.train(max_epochs=args.epochs, enable_progress_bar=not args.quiet)
    model.annotate()
    out.mkdir(parents=True, exist_ok=True)
    model.save(str(out / "model"), overwrite=True)
    adata.write_h5ad(out / "annotated.h5ad")
    report = write_report(adata, out, source=source, seconds=time.time() - t0)
    print(f"wrote {out / 'annotated.h5ad'}, {out / 'model'}, {report}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``kdcpt`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        return run(args)
    except _UsageError as err:
        print(f"kdcpt: error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
