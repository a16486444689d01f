"""Key genes per phenotype: a scanpy dotplot of their expression."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .. import _keys
from .._errors import InvalidInputError, KeyNotFoundError
from .._expression import detect_data_type, log_normalize
from .._utils import is_mudata
from . import _read
from ._docs import doc_params

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


@doc_params("doc_key", "doc_show_save_ax", "doc_returns")
def key_genes(
    adata: AnnData,
    *,
    n_genes: int = 5,
    key: str = _keys.DEFAULT_KEY,
    groupby: str | None = None,
    phenotypes: Sequence[str] | None = None,
    layer: str | None = None,
    normalize: bool | None = None,
    standard_scale: str | None = "var",
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    save: str | bool | None = None,
    **kwds,
) -> Axes | Figure | None:
    """Dotplot of the expression of each phenotype's top key genes.

    Genes come from ``.uns[key]["key_genes"]`` (written by
    :meth:`~scanpy_kdcpt.KDCPT.annotate`); each phenotype gets its ``n_genes`` best-ranked genes
    not already shown for an earlier phenotype. Cells are grouped by ``{key}_pred``.
    Drawn with :func:`scanpy.pl.dotplot`: dot size = fraction of cells expressing the gene,
    colour = mean expression (scaled per gene with ``standard_scale="var"``).

    Parameters
    ----------
    adata
        AnnData annotated by ``model.annotate()`` (a re-read ``.h5ad`` works; no model needed).
    n_genes
        Genes per phenotype.
    {doc_key}
    groupby
        ``.obs`` column grouping the cells (default ``{key}_pred``).
    phenotypes
        Phenotypes whose key genes are shown (default all).
    layer
        Layer to plot instead of ``X``.
    normalize
        Library-size normalise + ``log1p`` before plotting; default: when the values are counts.
    standard_scale
        Passed to :func:`scanpy.pl.dotplot` (``"var"``, ``"group"`` or ``None``).
    {doc_show_save_ax}
    **kwds
        More keyword arguments for :func:`scanpy.pl.dotplot`.

    {doc_returns}
    With ``ax``, the dotplot's main Axes is drawn inside it.

    """
    import anndata as ad
    import scanpy as sc
    from scipy import sparse

    if n_genes < 1:
        raise InvalidInputError(f"n_genes must be 1 or more, got {n_genes}.")
    ranking = _read.uns_entry(adata, key, _keys.UNS_KEY_GENES, "model.annotate()")
    if not isinstance(ranking, pd.DataFrame) or not {"phenotype", "gene", "rank"} <= set(ranking.columns):
        raise InvalidInputError(f"adata.uns[{key!r}]['key_genes'] is not a key-gene ranking; rerun model.annotate().")
    keys = _keys.Keys(key)
    groupby = keys.pred if groupby is None else groupby
    mdata = None
    if is_mudata(adata):  # the modality holding the genes, cells grouped by mdata.obs
        mdata, adata = adata, _gene_modality(adata, ranking)
    if mdata is not None and groupby in mdata.obs:
        adata = ad.AnnData(
            X=adata.X,
            obs=pd.DataFrame({groupby: mdata.obs[groupby].reindex(adata.obs_names)}, index=adata.obs_names),
            var=adata.var,
            layers=dict(adata.layers),
            uns={k: v for k, v in mdata.uns.items() if k == f"{groupby}_colors"},
        )
    if groupby not in adata.obs:
        raise KeyNotFoundError(
            f"{groupby!r} is not a column of adata.obs: run model.annotate() (it writes {keys.pred!r}) "
            "or pass groupby=."
        )
    order = (
        list(ranking["phenotype"].cat.categories)
        if hasattr(ranking["phenotype"], "cat")
        else list(dict.fromkeys(ranking["phenotype"].astype(str)))
    )
    if phenotypes is not None:
        phenotypes = [phenotypes] if isinstance(phenotypes, str) else list(phenotypes)  # one name, not its letters
        unknown = [p for p in phenotypes if p not in order]
        if unknown:
            raise KeyNotFoundError(f"Unknown phenotype(s) {unknown}; phenotypes: {order}.")
        order = list(phenotypes)
    var_names = set(map(str, adata.var_names))
    shown: set[str] = set()
    groups: dict[str, list[str]] = {}
    for ph in order:
        rows = ranking[ranking["phenotype"].astype(str) == ph].sort_values("rank")
        genes = []
        for g in rows["gene"].astype(str):
            if g in shown or g not in var_names:
                continue
            genes.append(g)
            shown.add(g)
            if len(genes) == n_genes:
                break
        if genes:
            groups[ph] = genes
    if not groups:
        raise InvalidInputError("No key gene of the ranking is among adata.var_names.")

    # a light AnnData with only the plotted genes (the user's object is not touched)
    genes = [g for gs in groups.values() for g in gs]
    X = adata.layers[layer] if layer is not None else adata.X
    cols = adata.var_names.get_indexer(genes)
    sub = X[:, cols]
    sub = sub.toarray() if sparse.issparse(sub) else np.asarray(sub)
    sub = sub.astype(np.float32)
    if normalize is None:
        normalize = detect_data_type(X) == "counts"
    if normalize:  # library size of all genes, as the model normalises counts
        sub = log_normalize(sub, "counts", library=np.asarray(X.sum(1)).ravel())
    obs = pd.DataFrame({groupby: pd.Categorical(adata.obs[groupby].astype("category"))}, index=adata.obs_names)
    # a phenotype no cell is assigned to would be an empty group, which the dotplot cannot average
    obs[groupby] = obs[groupby].cat.remove_unused_categories()
    cats = [c for c in order if c in set(obs[groupby].astype(str))]
    rest = [c for c in obs[groupby].cat.categories if c not in cats]
    obs[groupby] = obs[groupby].cat.reorder_categories(cats + rest)
    tmp = ad.AnnData(X=sub, obs=obs, var=pd.DataFrame(index=pd.Index(genes)))
    colors = adata.uns.get(f"{groupby}_colors")
    if colors is not None and len(colors) == len(adata.obs[groupby].astype("category").cat.categories):
        lookup = dict(zip(adata.obs[groupby].astype("category").cat.categories, colors, strict=True))
        tmp.uns[f"{groupby}_colors"] = [lookup[c] for c in tmp.obs[groupby].cat.categories]

    colorbar_title = kwds.pop(
        "colorbar_title", "mean expression\nscaled per gene" if standard_scale == "var" else "mean expression"
    )
    title = kwds.pop("title", None)
    dp = sc.pl.dotplot(
        tmp,
        var_names=groups,
        groupby=groupby,
        standard_scale=standard_scale,
        ax=ax,
        show=False,
        return_fig=True,
        **kwds,
    )
    dp.legend(colorbar_title=colorbar_title, width=2.2)  # wide enough that the size labels do not touch
    dp.make_figure()
    axes = dp.get_axes()
    if title:  # above the rotated phenotype labels (scanpy's own title sits among them)
        fig = dp.fig
        renderer = _read.renderer(fig)
        top = max(
            [t.get_window_extent(renderer).y1 for a in fig.axes for t in a.texts + [a.title] if t.get_text()]
            + [fig.bbox.y1]
        )
        fig.suptitle(title, y=fig.transFigure.inverted().transform((0, top))[1] + 0.02, va="bottom")
    if ax is None:
        _read.grow_to_fit(dp.fig)
    return _read.finish(dp.fig, axes["mainplot_ax"], show, return_fig, save)


def _gene_modality(mdata, ranking: pd.DataFrame):
    """The modality of a MuData whose features hold the most of the ranking's genes (the RNA one)."""
    genes = set(ranking["gene"].astype(str))
    hits = {name: len(genes & set(map(str, mod.var_names))) for name, mod in mdata.mod.items()}
    best = max(hits, key=hits.get) if hits else None
    if best is None or hits[best] == 0:
        raise InvalidInputError(f"No modality of the MuData holds the key genes (modalities: {list(mdata.mod)}).")
    return mdata.mod[best]
