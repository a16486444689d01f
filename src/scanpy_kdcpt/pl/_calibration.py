"""Reliability diagram (from ``.uns[key]["calibration"]`` or ``.obs`` probabilities)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .. import _keys
from .._errors import InvalidInputError, KeyNotFoundError
from .._utils import codes_of
from ..calibration import ece_floor_from_table, ece_from_table, reliability_table
from . import _read
from ._docs import doc_params

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _from_obs(adata: AnnData, key: str, labels_key: str | None, n_bins: int) -> tuple[pd.DataFrame, str]:
    """Reliability table of the labelled cells from ``.obs`` probability columns."""
    keys = _keys.Keys(key)
    names = _read.classes(adata, key)
    cols = [keys.proba(c) for c in names]
    missing = [c for c in cols if c not in adata.obs]
    if missing:
        raise KeyNotFoundError(f"adata.obs lacks {missing[:3]}: run model.annotate() (key_added={key!r}) first.")
    labels_key = _read.labels_key(adata, key, labels_key)
    codes = codes_of(adata.obs[labels_key], names)
    keep = codes >= 0
    if not keep.any():
        raise InvalidInputError(f"No cell of adata.obs[{labels_key!r}] has a phenotype the model predicts.")
    proba = adata.obs.loc[keep, cols].to_numpy(dtype=float)
    return reliability_table(proba, codes[keep], n_bins), "labelled cells (training included)"  # the title adds n


@doc_params("doc_key", "doc_show_save_ax", "doc_returns")
def reliability(
    adata: AnnData,
    *,
    key: str = _keys.DEFAULT_KEY,
    source: str = "auto",
    labels_key: str | None = None,
    n_bins: int = 15,
    show_before: bool = True,
    title: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    save: str | bool | None = None,
) -> Axes | Figure | None:
    """Reliability diagram: accuracy against confidence in bins, with the ECE in the title.

    Bars are the accuracy of the cells in each confidence bin; the red part is the gap to
    perfect calibration (the diagonal); bar shading follows the number of cells. After
    ``model.calibrate()``, the curve before calibration is drawn in grey. The legend gives the
    ECE a perfectly calibrated model would show on average on this many cells (sampling alone
    puts a binned ECE about that high; :func:`scanpy_kdcpt.calibration.ece_floor_from_table`).

    Parameters
    ----------
    adata
        AnnData annotated by ``model.annotate()``.
    {doc_key}
    source
        ``"uns"``: the held-out cells' table in ``.uns[key]["calibration"]``; ``"obs"``: the
        ``.obs`` probabilities of all labelled cells (training cells included, hence
        optimistic); ``"auto"``: ``"uns"`` when there, else ``"obs"``.
    labels_key
        ``.obs`` column of known phenotypes for ``source="obs"`` (default: the model's).
    n_bins
        Confidence bins for ``source="obs"``.
    show_before
        Draw the pre-calibration curve when stored.
    title
        Axes title (default: the ECE, and the temperature after calibration).
    {doc_show_save_ax}

    {doc_returns}

    """
    if source not in ("auto", "uns", "obs"):
        raise InvalidInputError(f"source must be 'auto', 'uns' or 'obs', not {source!r}.")
    calib = adata.uns.get(key, {}).get(_keys.UNS_CALIBRATION, {})
    before = None
    if source in ("auto", "uns") and "reliability" in calib:
        table = pd.DataFrame(calib["reliability"])
        cells = str(calib.get("cells", "held-out cells"))
        if show_before and "reliability_before" in calib:
            before = pd.DataFrame(calib["reliability_before"])
    elif source == "uns":
        raise KeyNotFoundError(
            f"adata.uns[{key!r}][{_keys.UNS_CALIBRATION!r}] has no reliability table: train with validation cells "
            "(train_size < 1) or call model.calibrate(), then model.annotate()."
        )
    else:
        table, cells = _from_obs(adata, key, labels_key, n_bins)
    ece = ece_from_table(table)
    floor = ece_floor_from_table(table)

    fig, ax = _read.new_axes(ax, (6.6, 4.4))  # the legend beside the axes
    width = (table["upper"] - table["lower"]).to_numpy(float)
    filled = table["count"].to_numpy() > 0
    t = table[filled]
    w = width[filled]
    shade = 0.35 + 0.65 * np.sqrt(t["count"] / t["count"].max()) if len(t) else []
    ax.bar(
        t["lower"],
        t["accuracy"],
        width=w,
        align="edge",
        color=[(0.19, 0.42, 0.70, a) for a in shade],
        edgecolor="black",
        linewidth=0.5,
        label="accuracy",
    )
    gap_low = np.minimum(t["accuracy"], t["confidence"])
    gap = np.abs(t["accuracy"] - t["confidence"])
    ax.bar(
        t["lower"],
        gap,
        bottom=gap_low,
        width=w,
        align="edge",
        color=(0.85, 0.2, 0.2, 0.35),
        edgecolor=(0.7, 0.1, 0.1),
        linewidth=0.6,
        hatch="//",
        label="gap",
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="black", linewidth=1, label="perfect")
    if before is not None:
        b = before[before["count"] > 0]
        ax.plot(
            b["confidence"],
            b["accuracy"],
            marker="o",
            markersize=3,
            color="0.45",
            linewidth=1,
            label=f"before (ECE {ece_from_table(before):.3f})",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (max probability)")
    ax.set_ylabel("accuracy")
    n = int(table["count"].sum())
    legend = ax.legend(  # beside the axes: inside, it covers the bars of under-confident bins
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        fontsize=7,
        frameon=False,
        title=f"{n} {cells}\n(a calibrated model: ECE ≈ {floor:.3f} on this many)",
        title_fontsize=7,
    )
    legend._legend_box.align = "left"
    if title is None:
        title = f"Reliability — ECE {ece:.3f}"
        if "temperature" in calib and source != "obs" and "reliability" in calib:
            title += f", T = {float(calib['temperature']):.2f}"
    ax.set_title(title, fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    return _read.finish(fig, ax, show, return_fig, save)
