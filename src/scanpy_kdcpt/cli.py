"""Command line: ``kdcpt run [INPUT.h5ad] --labels KEY --out DIR`` runs the whole job."""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import time
import warnings
from pathlib import Path

from ._errors import KDCPTError
from ._utils import without_library_noise as _without_library_noise

EXIT_USAGE = 2

_DESCRIPTION = """\
Train KD-CPT on an AnnData file and write everything it finds into --out:

  annotated.h5ad  phenotype probabilities, confidence and uncertainty (.obs),
                  key genes (.var), transition matrix, entropies, metrics,
                  calibration and knockout results (.uns["kdcpt"])
  model/          the trained model (kdcpt.KDCPT.load)
  figures/        PNG figures
  report.md       a Markdown report with the tables and the figures

With no INPUT it runs on scanpy's bundled PBMC data (700 cells, labels
'bulk_labels', human TF prior): that is `make demo`.
"""

_EPILOG = """\
exit status: 0 on success, 2 for a bad path, a missing key or an unreadable file.
example: kdcpt run data.h5ad --labels cell_type --species mouse --out results/mine
"""


class _UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdcpt", description="KD-CPT for AnnData (scverse).")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="train, annotate, screen knockouts, draw figures, write a report",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("input", nargs="?", help="an .h5ad file (default: the bundled PBMC data)")
    run.add_argument("--labels", help="obs column with each cell's phenotype (required with INPUT)")
    run.add_argument(
        "--layer", help="layer with counts or log-normalised values (default: X); counts are normalised inside"
    )
    run.add_argument("--embedding", help="obsm key of a pretrained cell embedding (default: internal PCA encoder)")
    prior = run.add_mutually_exclusive_group()
    prior.add_argument("--prior", help="var column (boolean or [0, 1]) of prior regulators")
    prior.add_argument(
        "--species", choices=["human", "mouse"], help="use the shipped transcription-factor list as the prior"
    )
    run.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="maximum training epochs (default: by data size, 30-60; early stopping may end sooner)",
    )
    run.add_argument(
        "--knockout-top",
        type=int,
        default=10,
        help="knock out the N top key genes one at a time (default: 10; 0: none)",
    )
    run.add_argument(
        "--direction",
        choices=["posterior", "auto", "velocity", "pseudotime", "time", "cytotrace", "none"],
        default=None,
        help="direction of the phenotype transitions: a directed cell chain (CellRank 2 kernels; 'auto': velocity "
        "with spliced/unspliced layers, else pseudotime with --time-key/--root, else CytoTRACE) or 'posterior' "
        "(undirected similarity). Default: 'auto' when --time-key or --root is given, else 'posterior'",
    )
    run.add_argument("--time-key", help="obs column of a pseudotime or of experimental time points")
    run.add_argument("--root", help="root phenotype for diffusion pseudotime")
    run.add_argument("--seed", type=int, default=0, help="random seed, scvi.settings.seed (default: 0)")
    run.add_argument("--out", required=True, help="output folder (created; existing files are replaced)")
    run.add_argument("--quiet", action="store_true", help="no progress bars or progress messages")
    return parser


def _symbol_species(var_names) -> str | None:
    """``"human"`` when nearly all gene symbols with letters are upper case (CD3E), ``"mouse"`` when
    nearly all have lower-case letters (Cd3e); ``None`` when it is not that clear (IDs, mixed).
    """
    symbols = [str(g) for g in var_names if sum(c.isalpha() for c in str(g)) >= 2]
    if len(symbols) < 20 or any(s.startswith(("ENSG", "ENSMUSG")) for s in symbols[:50]):
        return None
    upper = sum(s == s.upper() for s in symbols) / len(symbols)
    return "human" if upper >= 0.9 else "mouse" if upper <= 0.1 else None


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
    if path.suffix == ".h5mu":
        raise _UsageError(
            f"{path} is a MuData file: the command line reads .h5ad (one AnnData) only. For RNA + ATAC use "
            "the Python API (kdcpt.KDCPT.setup_mudata), or pass the RNA modality as .h5ad "
            "(mdata['rna'].write_h5ad(...))."
        )
    try:
        adata = ad.read_h5ad(path)
    except Exception as err:  # noqa: BLE001 - any reader failure is the user's file
        raise _UsageError(f"cannot read {path} as .h5ad: {err}") from err
    return adata, str(path)


#: figures of ``kdcpt run``: (file stem, title, ``kdcpt.pl`` function, keyword arguments)
FIGURES = (
    ("transition_matrix", "Transition matrix", "transition_matrix", {}),
    ("transition_graph", "Transition graph", "transition_graph", {}),
    ("transition_stream", "Cell chain on the embedding", "transition_stream", {}),
    ("fate_probabilities", "Fate probabilities", "fate_probabilities", {"kind": "phenotype"}),
    ("entropy", "Entropy per phenotype", "entropy", {}),
    ("reliability", "Reliability diagram", "reliability", {}),
    ("key_genes", "Key genes per phenotype", "key_genes", {}),
    ("knockout_effects", "Knockout effects", "knockout_effects", {}),
    ("knockout", "Knockout changes of the transition matrix", "knockout", {}),
    ("training_history", "Training history", "training_history", {}),
)


def draw_figures(adata, out: Path, *, labels_key: str | None = None) -> list[tuple[str, str]]:
    """Draw every figure the AnnData's keys allow into ``out``; return ``(title, relative path)`` pairs.

    A figure whose keys are absent (e.g. knockout plots with ``--knockout-top 0``) is skipped.
    Key genes are shown per known phenotype (``labels_key``) when given.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scanpy import logging as logg

    from . import _keys, pl

    uns = adata.uns.get(_keys.DEFAULT_KEY, {})
    needs = {
        "knockout_effects": _keys.UNS_KNOCKOUT_SUMMARY,
        "knockout": _keys.UNS_KNOCKOUT,
        "fate_probabilities": _keys.UNS_FATE,
    }
    out.mkdir(parents=True, exist_ok=True)
    drawn = []
    for stem, title, name, kwargs in FIGURES:
        func = getattr(pl, name, None)
        if func is None or (name in needs and needs[name] not in uns):
            continue
        if name == "transition_stream" and (_keys.Keys().transitions not in adata.obsp or "X_umap" not in adata.obsm):
            continue
        if name == "key_genes" and labels_key is not None:
            kwargs = {**kwargs, "groupby": labels_key}
        try:
            fig = func(adata, show=False, return_fig=True, **kwargs)
        except (KeyError, ValueError) as err:  # a figure the data cannot support is left out
            logg.warning(f"figure {stem} skipped: {err}")
            plt.close("all")
            continue
        fig = fig if hasattr(fig, "savefig") else fig.figure
        path = out / f"{stem}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        drawn.append((title, f"{out.name}/{path.name}"))
    return drawn


def check_out(out: Path) -> None:
    """Fail before any training when ``out`` cannot hold the results (a file, unwritable, ...)."""
    if out.exists() and not out.is_dir():
        raise _UsageError(f"--out {out} is a file, not a folder: pass a folder path")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".kdcpt_write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise _UsageError(f"--out {out} cannot be written ({err.strerror or err}): pass a writable folder") from err


def _remove_stale_figures(figures: Path) -> None:
    """Figures of an earlier run in the same --out would pass for this run's: remove ours only."""
    for stem, *_ in FIGURES:
        (figures / f"{stem}.png").unlink(missing_ok=True)


@contextlib.contextmanager
def _silenced(quiet: bool):
    """--quiet: Lightning's banners (GPU available, tips, model summary) and library warnings off,
    restored afterwards (``main`` may run inside a larger Python process).
    """
    if not quiet:
        yield
        return
    import warnings

    names = ("lightning", "lightning.pytorch", "lightning.fabric", "scvi")
    levels = {n: logging.getLogger(n).level for n in names}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for n in names:
                logging.getLogger(n).setLevel(logging.ERROR)
            yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


def _check_direction_args(args, adata) -> None:
    """The chain's arguments, checked against the data before any training."""
    import pandas as pd

    phenotypes = sorted(set(adata.obs[args.labels].dropna().astype(str)))
    if args.root is not None and str(args.root) not in phenotypes:
        raise _UsageError(
            f"--root {args.root!r} is not a phenotype of --labels {args.labels!r}; phenotypes: {phenotypes}"
        )
    if args.time_key is not None and args.time_key not in adata.obs:
        raise _UsageError(f"--time-key {args.time_key!r} is not an obs column; columns: {list(adata.obs.columns)}")
    if args.direction == "pseudotime" and args.root is None and args.time_key is None:
        raise _UsageError("--direction pseudotime needs --root (a phenotype) or --time-key (an obs column)")
    if args.direction == "time" and args.time_key is None:
        raise _UsageError("--direction time needs --time-key (the obs column of the time points)")
    if args.direction == "velocity":
        missing = [k for k in ("spliced", "unspliced") if k not in adata.layers]
        if missing:
            raise _UsageError(
                f"--direction velocity needs the layers 'spliced' and 'unspliced' (missing: {missing}; layers: "
                f"{list(adata.layers.keys())}); use --root or --time-key for a pseudotime, or --direction cytotrace"
            )
    if args.time_key is not None and args.direction not in ("posterior", "velocity", "cytotrace", "none"):
        col = adata.obs[args.time_key]
        ordered = pd.api.types.is_numeric_dtype(col) or (isinstance(col.dtype, pd.CategoricalDtype) and col.cat.ordered)
        if not ordered:
            raise _UsageError(
                f"--time-key {args.time_key!r} holds {col.dtype} values, which have no order: write numeric time "
                "points (e.g. 0, 1, 2) or a pseudotime into the column"
            )
        if col.isna().any():
            raise _UsageError(f"--time-key {args.time_key!r} has {int(col.isna().sum())} missing values")


def run(args) -> int:
    out = Path(args.out)
    if args.input is not None and (out / "annotated.h5ad").resolve() == Path(args.input).resolve():
        raise _UsageError(
            f"--out {out} would write annotated.h5ad over the input file {args.input}: pass another --out folder"
        )
    created = not out.exists()
    check_out(out)
    try:
        return _run_checked(args, out)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a run that failed leaves no empty --out folder behind
        raise


def _run_checked(args, out: Path) -> int:
    """:func:`run` once ``--out`` is known to be writable."""
    import scvi

    from . import datasets
    from .model import KDCPT
    from .report import write_report

    adata, source = _load_input(args)
    if args.labels not in adata.obs:
        raise _UsageError(f"--labels {args.labels!r} is not an obs column; columns: {list(adata.obs.columns)}")
    if args.knockout_top < 0:
        raise _UsageError("--knockout-top must be 0 or more")
    if args.epochs is not None and args.epochs < 1:
        raise _UsageError("--epochs must be 1 or more")
    _check_direction_args(args, adata)  # before training, not after it
    prior_key = args.prior
    if args.species is not None:
        prior_key = "kdcpt_prior_tf"
        looks = _symbol_species(adata.var_names)
        if looks is not None and looks != args.species:  # the list is matched case-insensitively: say it here
            raise _UsageError(
                f"--species {args.species}, but the gene symbols look {looks} (e.g. {list(adata.var_names[:3])}; "
                f"human symbols are upper case, mouse ones capitalised): pass --species {looks}"
            )
        flags = datasets.is_transcription_factor(adata.var_names, species=args.species)
        if not any(flags):
            raise _UsageError(
                f"--species {args.species}: no gene of the data is on the shipped {args.species} transcription-factor "
                f"list (var_names e.g. {list(adata.var_names[:3])}; the list holds gene symbols): give --prior, "
                "or leave the prior out"
            )
        adata.var[prior_key] = flags
    scvi.settings.seed = args.seed
    scvi.settings.progress_bar_style = "tqdm"
    t0 = time.time()
    try:
        KDCPT.setup_anndata(
            adata, labels_key=args.labels, layer=args.layer, embedding_key=args.embedding, prior_key=prior_key
        )
    except (KeyError, ValueError) as err:
        raise _UsageError(str(err).strip("'\"")) from err
    model = KDCPT(adata)
    _say(args, f"training on {adata.n_obs} cells x {adata.n_vars} genes ({source})")
    quiet = {"enable_model_summary": False} if args.quiet else {}
    # scvi-tools prints its early-stopping reason to stdout: --quiet means that too
    with contextlib.redirect_stdout(io.StringIO()) if args.quiet else contextlib.nullcontext():
        model.train(max_epochs=args.epochs, enable_progress_bar=not args.quiet, **quiet)
    if model.validation_indices is not None and len(model.validation_indices):
        _say(args, "calibrating on the held-out cells")
        model.calibrate()
    direction = args.direction or ("auto" if (args.time_key or args.root) else "posterior")
    if direction != "posterior":
        _say(args, f"building the directed cell chain (direction {direction!r})")
        try:
            model.compute_transitions(
                direction=None if direction == "none" else direction,
                time_key=args.time_key,
                root=args.root,
                inplace=False,
            )
        except (KeyError, ValueError) as err:
            raise _UsageError(str(err).strip("'\"")) from err
    _say(args, "annotating")
    model.annotate(direction="stored" if direction != "posterior" else "posterior")
    if args.knockout_top > 0:
        _say(args, f"knocking out the {args.knockout_top} top key genes")
        if direction != "posterior" and prior_key is None:
            _say(args, "no --prior or --species: no GRN to simulate shifts with, knockouts change the memberships only")
        _knockout(model, args.knockout_top, progress=not args.quiet)
    out.mkdir(parents=True, exist_ok=True)
    model.save(str(out / "model"), overwrite=True)
    adata.write_h5ad(out / "annotated.h5ad")
    _say(args, "drawing figures")
    _remove_stale_figures(out / "figures")
    figures = draw_figures(adata, out / "figures", labels_key=args.labels)
    report = write_report(adata, out, source=source, seconds=time.time() - t0, figures=figures)
    print(f"wrote {out / 'annotated.h5ad'}, {out / 'model'}, {out / 'figures'}, {report}")
    return 0


def _knockout(model, n_top: int, *, progress: bool) -> None:
    with warnings.catch_warnings():  # without a prior there is no GRN: said by the CLI, not in Python terms
        warnings.filterwarnings("ignore", message=r"knockout\(simulate='auto'\)")
        model.knockout("key", n_top=n_top, progress=progress)


def _say(args, message: str) -> None:
    if not args.quiet:
        print(f"kdcpt: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``kdcpt`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with _without_library_noise(), _silenced(args.quiet):
            return run(args)
    except _UsageError as err:
        print(f"kdcpt: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KDCPTError as err:  # bad input found by the package: one line, not a traceback
        print(f"kdcpt: error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
