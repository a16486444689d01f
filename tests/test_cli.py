"""The ``kdcpt run`` command: the whole job on bundled data, and clear errors for bad input."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

import scanpy_kdcpt as kdcpt
from scanpy_kdcpt import _keys, cli


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """``kdcpt run`` on the bundled PBMC data with a tiny epoch budget."""
    out = tmp_path_factory.mktemp("cli") / "pbmc"
    code = cli.main(["run", "--epochs", "1", "--knockout-top", "2", "--quiet", "--out", str(out)])
    return code, out


def test_run_writes_annotated_model_and_report(demo_run):
    code, out = demo_run
    assert code == 0
    adata = ad.read_h5ad(out / "annotated.h5ad")
    assert "kdcpt_pred" in adata.obs and "kdcpt_uncertainty" in adata.obs
    assert "kdcpt" in adata.uns and "metrics" in adata.uns["kdcpt"]
    # the scvi-tools registry of this process still knows the AnnData the run trained on (same uuid):
    # drop the uuids, as a fresh session would not have that registry
    for k in ("_scvi_uuid", "_scvi_manager_uuid"):
        adata.uns.pop(k, None)
    model = kdcpt.KDCPT.load(str(out / "model"), adata=adata)
    # the saved model gives the probabilities written into annotated.h5ad (temperature included)
    proba = model.predict(soft=True)
    written = adata.obs[[_keys.Keys("kdcpt").proba(c) for c in model.classes_]].to_numpy()
    np.testing.assert_allclose(proba.to_numpy(), written, atol=1e-5)
    assert (adata.obs["kdcpt_pred"].astype(str).to_numpy() == proba.idxmax(1).to_numpy()).all()
    report = (out / "report.md").read_text()
    assert report.startswith("# KD-CPT report")
    assert "shades into *j* (no direction: the posterior form)" in report
    for section in ("## Metrics", "## Transition matrix", "## Entropy", "## Top key genes", "## Strongest knockouts"):
        assert section in report, section
    uns = adata.uns["kdcpt"]
    assert len(uns["knockout_summary"]) == 2  # --knockout-top 2
    for gene in uns["knockout_summary"]["gene"]:
        assert f"| {gene} |" in report


def test_report_shows_every_figure_it_drew(demo_run):
    _, out = demo_run
    report = (out / "report.md").read_text()
    pngs = sorted((out / "figures").glob("*.png"))
    names = {p.stem for p in pngs}
    expected = {"transition_matrix", "transition_graph", "entropy", "reliability", "key_genes", "knockout_effects"}
    assert expected <= names, names
    for png in pngs:
        assert png.stat().st_size > 1000, png
        assert f"figures/{png.name})" in report, png.name


def _error(capsys, argv):
    code = cli.main(argv)
    err = capsys.readouterr().err
    return code, err


def test_bad_path_exits_2(tmp_path, capsys):
    code, err = _error(capsys, ["run", str(tmp_path / "nope.h5ad"), "--labels", "x", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "not found" in err and "nope.h5ad" in err


def test_chain_arguments_and_mudata_input_are_refused_before_training(tmp_path, capsys, monkeypatch):
    from scanpy_kdcpt.model import KDCPT

    def no_training(*args, **kwargs):
        raise AssertionError("trained before the arguments were checked")

    monkeypatch.setattr(KDCPT, "train", no_training)
    path = tmp_path / "small.h5ad"
    kdcpt.datasets.synthetic(n_cells=60, seed=0).write_h5ad(path)
    base = ["run", str(path), "--labels", "phenotype", "--out"]
    code, err = _error(capsys, [*base, str(tmp_path / "o1"), "--root", "Foo"])
    assert code == 2 and "--root 'Foo' is not a phenotype" in err and "P0" in err
    code, err = _error(capsys, [*base, str(tmp_path / "o2"), "--direction", "pseudotime"])
    assert code == 2 and "needs --root" in err
    code, err = _error(capsys, [*base, str(tmp_path / "o3"), "--time-key", "nope"])
    assert code == 2 and "'nope' is not an obs column" in err
    code, err = _error(capsys, [*base, str(tmp_path / "o5"), "--direction", "velocity"])
    assert code == 2 and "needs the layers 'spliced' and 'unspliced'" in err
    stages = kdcpt.datasets.synthetic(n_cells=60, seed=0)
    stages.obs["day"] = np.where(np.arange(60) < 30, "day0", "day7")  # text: no order the CLI could know
    stages.var_names = [f"ENSG{i:011d}" for i in range(stages.n_vars)]  # IDs, not symbols
    stages.write_h5ad(tmp_path / "stages.h5ad")
    base = ["run", str(tmp_path / "stages.h5ad"), "--labels", "phenotype", "--out"]
    code, err = _error(capsys, [*base, str(tmp_path / "o6"), "--time-key", "day"])
    assert code == 2 and "--time-key 'day' holds category values, which have no order" in err
    code, err = _error(capsys, [*base, str(tmp_path / "o7"), "--species", "human"])
    assert code == 2 and "no gene of the data is on the shipped human transcription-factor list" in err
    mu = tmp_path / "paired.h5mu"
    mu.write_bytes(b"")
    code, err = _error(capsys, ["run", str(mu), "--labels", "phenotype", "--out", str(tmp_path / "o4")])
    assert code == 2 and "MuData" in err and "setup_mudata" in err


def test_quiet_run_prints_no_training_chatter(tmp_path, capsys, monkeypatch):
    from scanpy_kdcpt.model import KDCPT

    train = KDCPT.train

    def loud_train(self, *args, **kwargs):  # as scvi-tools' early stopping does on teardown
        out = train(self, *args, **kwargs)
        print("Monitored metric validation_loss did not improve in the last 45 records. Signaling Trainer to stop.")
        return out

    monkeypatch.setattr(KDCPT, "train", loud_train)
    path = tmp_path / "small.h5ad"
    kdcpt.datasets.synthetic(n_cells=120, seed=0).write_h5ad(path)
    argv = ["run", str(path), "--labels", "phenotype", "--epochs", "1", "--knockout-top", "0"]
    assert cli.main([*argv, "--quiet", "--out", str(tmp_path / "quiet")]) == 0
    out, err = capsys.readouterr()
    assert "Monitored metric" not in out + err
    assert cli.main([*argv, "--out", str(tmp_path / "loud")]) == 0  # without --quiet it is shown
    assert "Monitored metric" in capsys.readouterr().out


def test_a_directed_run_without_a_prior_writes_its_knockouts(tmp_path, capsys):
    path = tmp_path / "small.h5ad"
    kdcpt.datasets.synthetic(n_cells=150, seed=0).write_h5ad(path)
    argv = ["run", str(path), "--labels", "phenotype", "--root", "P0", "--epochs", "1", "--knockout-top", "2"]
    assert cli.main([*argv, "--out", str(tmp_path / "o")]) == 0  # no --prior: it used to fail after training
    assert "knockouts change the memberships only" in capsys.readouterr().err
    back = ad.read_h5ad(tmp_path / "o" / "annotated.h5ad")
    assert len(back.uns["kdcpt"]["knockout_summary"]) == 2 and "knockout_fate" in back.uns["kdcpt"]
    # the report reads the matrix of a directed chain as one, and says which matrix each knockout table is of
    report = (tmp_path / "o" / "report.md").read_text()
    assert "moves to *j* in one step of the directed cell chain" in report
    assert "posterior-form matrix of the classifier's memberships" in report and "### Directed chain" in report


def test_missing_labels_key_exits_2(tmp_path, capsys):
    path = tmp_path / "small.h5ad"
    kdcpt.datasets.synthetic(n_cells=60, seed=0).write_h5ad(path)
    code, err = _error(capsys, ["run", str(path), "--labels", "cell_type", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "'cell_type'" in err and "phenotype" in err  # names the missing key and the existing columns
    assert not (tmp_path / "o").exists()  # the failed run left no empty --out folder behind
    (tmp_path / "mine").mkdir()
    assert _error(capsys, ["run", str(path), "--labels", "cell_type", "--out", str(tmp_path / "mine")])[0] == 2
    assert (tmp_path / "mine").is_dir()  # a folder the user had stays


def test_labels_required_with_input(tmp_path, capsys):
    path = tmp_path / "small.h5ad"
    kdcpt.datasets.synthetic(n_cells=60, seed=0).write_h5ad(path)
    code, err = _error(capsys, ["run", str(path), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "--labels" in err


def test_unreadable_file_exits_2(tmp_path, capsys):
    path = tmp_path / "broken.h5ad"
    path.write_text("this is not an HDF5 file")
    code, err = _error(capsys, ["run", str(path), "--labels", "x", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "cannot read" in err and "broken.h5ad" in err


def test_missing_prior_key_exits_2(tmp_path, capsys):
    path = tmp_path / "small.h5ad"
    kdcpt.datasets.synthetic(n_cells=60, seed=0).write_h5ad(path)
    argv = ["run", str(path), "--labels", "phenotype", "--prior", "no_such_column", "--out", str(tmp_path / "o")]
    code, err = _error(capsys, argv)
    assert code == 2
    assert "no_such_column" in err


def test_help_lists_every_option(capsys):
    parser = cli.build_parser()
    run = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices["run"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    options = [s for a in run._actions for s in a.option_strings if s.startswith("--")]
    assert {"--labels", "--layer", "--embedding", "--prior", "--species", "--epochs", "--knockout-top", "--out"} <= set(
        options
    )
    for opt in options:
        assert opt in text, opt
    for action in run._actions:
        assert action.help, action.dest  # every option is explained


def test_a_run_never_writes_over_its_input(tmp_path, capsys):
    # `kdcpt run out/annotated.h5ad --out out` replaced the user's input file
    path = tmp_path / "annotated.h5ad"
    kdcpt.datasets.synthetic(n_cells=60, seed=0).write_h5ad(path)
    before = path.read_bytes()
    code, err = _error(capsys, ["run", str(path), "--labels", "phenotype", "--out", str(tmp_path)])
    assert code == 2 and "over the input file" in err and "another --out" in err
    assert path.read_bytes() == before


def test_a_species_the_gene_symbols_contradict_is_refused(tmp_path, capsys):
    # the TF list is matched case-insensitively, so --species mouse on human symbols ran without comment
    path = tmp_path / "pbmc.h5ad"
    kdcpt.datasets.pbmc68k_reduced().write_h5ad(path)
    argv = ["run", str(path), "--labels", "bulk_labels", "--species", "mouse", "--out", str(tmp_path / "o")]
    code, err = _error(capsys, argv)
    assert code == 2 and "--species mouse, but the gene symbols look human" in err and "--species human" in err
