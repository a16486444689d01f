"""propagate="grn": a regulator's knockout moves its prior targets; direct and propagated side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import scanpy_kdcpt as kdcpt
from scanpy_kdcpt.perturb._grn import edges_matrix, fit_propagation

DOROTHEA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tf_target_prior_dorothea"


def planted_grn(adata) -> pd.DataFrame:
    regs = adata.uns["synthetic"]["regulators"]
    rows = [(reg, f"Tgt_{ph}_{j}") for ph, reg in regs.items() for j in range(6)]
    return pd.DataFrame(rows, columns=["tf", "target"])


def test_propagation_matrix_follows_the_data():
    rng = np.random.default_rng(0)
    tf = rng.gamma(2.0, 1.0, 500)
    X = np.column_stack([tf, 0.8 * tf + rng.normal(0, 0.1, 500), rng.gamma(2.0, 1.0, 500)])
    A = edges_matrix(pd.DataFrame({"tf": ["a", "c"], "target": ["b", "b"]}), ["a", "b", "c"])
    (P,) = fit_propagation(X, A, [(0,)], n_steps=1, alpha=1e-4)
    assert P.shape == (1, 3) and P[0, 1] == pytest.approx(0.8, abs=0.05) and P[0, 0] == 0 and P[0, 2] == 0


def test_grn_propagation_adds_target_effect(transition_model):
    grn = planted_grn(transition_model.adata)
    with pytest.warns(UserWarning, match="no prior targets.*Gene_7"):
        res = transition_model.knockout(["Reg_P1", "Gene_7"], propagate="grn", grn=grn, inplace=False, progress=False)
    s = res.summary.set_index("gene")
    assert {"effect_direct", "frac_changed_direct"} <= set(s.columns) and "delta_direct" in res.table
    # the regulator's targets go down with it: the effect grows; a gene without targets is unchanged
    assert s.loc["Reg_P1", "effect"] > s.loc["Reg_P1", "effect_direct"]
    # (the two are separate passes over the cells: equal up to float32 rounding)
    assert s.loc["Gene_7", "effect"] == pytest.approx(s.loc["Gene_7", "effect_direct"], rel=1e-4)
    plain = transition_model.knockout(["Reg_P1"], inplace=False, progress=False)
    assert s.loc["Reg_P1", "effect_direct"] == pytest.approx(plain.summary["effect"].iloc[0])
    assert res.params["propagate"] == "grn"


def test_grn_targets_are_left_out_of_the_null(transition_model):
    grn = planted_grn(transition_model.adata)
    res = transition_model.knockout("Reg_P2", n_null=10, grn=grn, null_max_corr=1.0, inplace=False, progress=False)
    assert not res.null["null_gene"].str.startswith("Tgt_P2_").any()
    assert res.summary["null_excluded_targets"].iloc[0] == 6


def test_grn_errors(transition_model):
    with pytest.raises(ValueError, match="needs grn"):
        transition_model.knockout("Reg_P1", propagate="grn", inplace=False, progress=False)
    with pytest.raises(ValueError, match="propagate"):
        transition_model.knockout("Reg_P1", propagate="net", inplace=False, progress=False)
    with pytest.raises(KeyError, match="target"):
        transition_model.knockout("Reg_P1", grn=pd.DataFrame({"tf": ["Reg_P1"]}), inplace=False, progress=False)


@pytest.mark.skipif(not DOROTHEA.exists(), reason=f"{DOROTHEA} is absent")
def test_tf_target_prior_reads_dorothea():
    edges = kdcpt.datasets.tf_target_prior(DOROTHEA / "dorothea_mm.tsv.gz", confidence="A")
    assert set(edges["confidence"]) == {"A"} and {"tf", "target", "mor"} <= set(edges.columns)
    assert (edges["tf"] == "Gata1").any()
    with pytest.raises(FileNotFoundError):
        kdcpt.datasets.tf_target_prior(DOROTHEA / "nope.tsv")
    lower = kdcpt.datasets.tf_target_prior(DOROTHEA / "dorothea_mm.tsv.gz", confidence=["a"])  # any case
    assert len(lower) == len(edges)
    with pytest.raises(ValueError, match="none of its levels \\['HIGH'\\] is in the table"):
        kdcpt.datasets.tf_target_prior(DOROTHEA / "dorothea_mm.tsv.gz", confidence=["high"])  # was 0 edges, silently
