"""Markov chains between cells and phenotypes: the torch-free numerical core.

Every function takes and returns numpy arrays (or scipy sparse matrices) and knows nothing of
AnnData or torch; the model, the writers, the plots and the benchmarks all use these.

Notation: ``T`` is a cell-level chain (cells × cells, row-stochastic), ``M`` the soft
phenotype memberships (cells × phenotypes, rows sum to 1), ``P`` a phenotype-level chain
(phenotypes × phenotypes, row-stochastic), ``π`` a distribution over phenotypes.
"""

from ._chains import (
    check_stochastic,
    coarse_grain,
    entropy,
    knn,
    knn_graph,
    knn_transition_matrix,
    memberships,
    net_flux,
    posterior_transition_matrix,
    project_chain,
    row_normalize,
    stationary_distribution,
    symmetrized,
    terminated_transitions,
    total_variation,
)
from ._fates import (
    absorption_probabilities,
    fate_probabilities,
    mean_fate,
    reaches,
    solve_transient,
    terminal_phenotypes,
    terminal_states,
)

__all__ = [
    "absorption_probabilities",
    "check_stochastic",
    "coarse_grain",
    "entropy",
    "fate_probabilities",
    "knn",
    "knn_graph",
    "knn_transition_matrix",
    "mean_fate",
    "memberships",
    "net_flux",
    "posterior_transition_matrix",
    "project_chain",
    "reaches",
    "row_normalize",
    "solve_transient",
    "terminal_states",
    "stationary_distribution",
    "symmetrized",
    "terminal_phenotypes",
    "terminated_transitions",
    "total_variation",
]
