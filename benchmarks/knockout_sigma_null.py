"""Knockout simulation on pancreas: the bias temperature σ against a random-TF null (issue 18; exploratory).

Seed 0 of ``knockout_genetics_core.py`` (90 % of the cells, velocity chain, one-hot memberships,
mean fates over Ngn3 high EP + Pre-endocrine). For σ 0.25 / 0.5 / 1.0: the fate deltas of the
table's knockouts, and the median |Δ| over 12 random transcription factors outside the table
(drawn from the 36 closest to the table's genes in mean expression and fraction expressing in the
source cells). One seed: a lead, not a ranking of σ.

    python benchmarks/knockout_sigma_null.py > benchmarks/results/knockout_sigma_null.txt
"""

import sys

import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
import knockout_genetics_core as K

import scanpy_kdcpt as kdcpt
from scanpy_kdcpt import markov
from scanpy_kdcpt import simulation as sim

d = K.prepare(0)
genes, codes, cats, T = d["genes"], d["codes"], d["cats"], d["T"]
# the SCENIC list: the committed results were made with it (before AnimalTFDB became the default)
tf = kdcpt.datasets.is_transcription_factor(genes, species="mouse", source="scenic")
grn = sim.fit_grn(d["Xs"], codes, regulators=tf, genes=genes)
M = markov.memberships(codes, len(cats))
term = np.array([cats.index(t) for t in K.TERMINALS])
src = np.isin(codes, [cats.index(s) for s in K.SOURCES])
F0 = np.nanmean(markov.fate_probabilities(T, M, term)[src], 0)
# expression-matched random TFs: mean and fraction expressing in the source cells
X = d["X"][src]
feat = np.c_[X.mean(0), (X > 0).mean(0)]
table = [g for g in K.EXPECTED]
idx_t = [int(np.flatnonzero(genes == g)[0]) for g in table]
cand = np.flatnonzero(tf & ~np.isin(np.arange(len(genes)), idx_t) & (feat[:, 1] > 0.05))
ref = feat[idx_t].mean(0)
rng = np.random.default_rng(0)
near = cand[np.argsort(np.abs(feat[cand] - ref).sum(1) / feat[cand].std(0).sum())][:36]
nulls = rng.choice(near, 12, replace=False)
for sigma in (0.25, 0.5, 1.0):

    def dfate(g, sigma=sigma):
        S = sim.simulate_shift(d["Xs"], codes, grn, g, n_propagation=3)
        Tk = sim.perturbed_chain(T, d["Xs"], S, sigma=sigma, basis=d["basis"], ignore=[g])
        return np.nanmean(markov.fate_probabilities(Tk, M, term)[src], 0) - F0

    obs = {g: dfate(i) for g, i in zip(table, idx_t, strict=True)}
    nul = np.array([dfate(int(i)) for i in nulls])
    med = np.median(np.abs(nul), 0)
    print(
        f"sigma {sigma}: null median |Δ| A/B/D/E",
        np.round(med, 3),
        "| Arx A",
        round(obs["Arx"][0], 3),
        "Pax4 B",
        round(obs["Pax4"][1], 3),
        "Pax4 A",
        round(obs["Pax4"][0], 3),
        "Nkx6-1 B",
        round(obs["Nkx6-1"][1], 3),
        "Pax6 A",
        round(obs["Pax6"][0], 3),
        "| frac nulls with A<0&B>0",
        round(float(np.mean((nul[:, 0] < 0) & (nul[:, 1] > 0))), 2),
        flush=True,
    )
