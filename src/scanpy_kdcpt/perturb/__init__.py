"""In-silico perturbations: knockouts and overexpression of genes (or regulatory sites).

:class:`KnockoutMixin` gives :class:`~scanpy_kdcpt.KDCPT` its ``knockout`` method. The rooms:
``_knockout`` (the public method and the minibatch stream), ``_units`` (which genes, which
cells), ``_nulls`` (expression-matched null genes), ``_engine`` (the perturbation applied to
each minibatch), ``_assemble`` (tidy tables, p- and q-values), ``_grn`` (propagation to
targets), ``_embed`` (re-embedding with the model that made an ``.obsm`` embedding),
``_screen`` (first-order genome-wide screen), ``_fate`` (fate and flux deltas on a directed
cell chain) and ``_simulate`` (knockouts that move cells: the GRN fitted on the data, the
expression shift and the perturbed chain, :mod:`scanpy_kdcpt.simulation` for the maths).
"""

from ._knockout import KnockoutMixin
from ._simulate import GRNMixin

__all__ = ["GRNMixin", "KnockoutMixin"]
