"""Re-embedding perturbed cells for models set up with an external ``.obsm`` embedding.

A knockout changes a cell's expression; with an external embedding (scVI, scGPT, ...) the
prediction branch reads that embedding, so the perturbed cells must be embedded again by the
model that made it. :class:`Reembedder` wraps either a callable ``expression → embedding`` or
any object with ``get_latent_representation(adata)`` (every scvi-tools model), and applies the
*shift* of the embedding to the stored one::

    embedding_ko = embedding_stored + embed(x_ko) - embed(x)

so an embedder that does not reproduce the stored embedding exactly (another seed, a
stochastic encoder, a different preprocessing) moves the cell by the effect of the knockout
only, not by the mismatch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from .._errors import InvalidInputError

if TYPE_CHECKING:
    from anndata import AnnData


class Reembedder:
    """Embeds expression batches (values as registered, genes in the model's order)."""

    def __init__(
        self,
        embed_fn: Any,
        *,
        var_names: list[str],
        obs: pd.DataFrame,
        layer: str | None,
        width: int,
    ):
        self.var_names = list(var_names)
        self.obs = obs
        self.layer = layer
        self.width = int(width)
        if hasattr(embed_fn, "get_latent_representation"):
            self.kind = f"{type(embed_fn).__name__}.get_latent_representation"
            self._fn = self._from_model(embed_fn)
        elif callable(embed_fn):
            self.kind = getattr(embed_fn, "__name__", type(embed_fn).__name__)
            self._fn = embed_fn
        else:
            raise TypeError(
                "embed_fn must be a callable (cells × genes expression → cells × dims embedding) or a model "
                "with get_latent_representation(adata) (e.g. a trained scvi-tools model), "
                f"not {type(embed_fn).__name__}."
            )
        self._base: dict[int, np.ndarray] = {}

    def _from_model(self, model) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        import anndata as ad

        def fn(X: np.ndarray, cells: np.ndarray) -> np.ndarray:
            obs = self.obs.iloc[cells].copy()
            obs.index = [f"ko{i}_{name}" for i, name in enumerate(obs.index)]
            adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(self.var_names)))
            if self.layer is not None:
                adata.layers[self.layer] = X
            return model.get_latent_representation(adata)

        fn.wants_cells = True  # type: ignore[attr-defined]
        return fn

    def embed(self, X: np.ndarray, cells: np.ndarray) -> np.ndarray:
        """Embedding of the rows of ``X`` (cells × genes), checked for shape."""
        out = self._fn(X, cells) if getattr(self._fn, "wants_cells", False) else self._fn(X)
        if isinstance(out, torch.Tensor):
            out = out.detach().cpu().numpy()
        out = np.asarray(out, dtype=np.float32)
        if out.shape != (X.shape[0], self.width):
            raise InvalidInputError(
                f"embed_fn ({self.kind}) returned shape {out.shape} for {X.shape[0]} cells; the model's embedding "
                f"has {self.width} dimensions, so it must return ({X.shape[0]}, {self.width}). Pass the model (or "
                "function) that made the .obsm embedding the model was set up with."
            )
        if not np.isfinite(out).all():
            raise InvalidInputError(f"embed_fn ({self.kind}) returned non-finite values.")
        return out

    def shifted(self, x0: torch.Tensor, x1: torch.Tensor, stored: torch.Tensor, cells: np.ndarray) -> torch.Tensor:
        """``stored + embed(x1) - embed(x0)`` for a batch; ``embed(x0)`` is cached per cell."""
        cells = np.asarray(cells)
        missing = np.array([i for i, c in enumerate(cells) if int(c) not in self._base], dtype=np.int64)
        if len(missing):
            uniq, first = np.unique(cells[missing], return_index=True)
            rows = missing[first]
            base = self.embed(x0[torch.as_tensor(rows, device=x0.device)].float().cpu().numpy(), uniq)
            for c, e in zip(uniq.tolist(), base, strict=True):
                self._base[c] = e
        base = np.stack([self._base[int(c)] for c in cells])
        ko = self.embed(x1.float().cpu().numpy(), cells)
        shift = torch.as_tensor(ko - base, device=stored.device)
        return stored.float() + shift


def make_reembedder(model, embed_fn, target: AnnData) -> Reembedder | None:
    """A :class:`Reembedder` for ``model`` and ``target`` or ``None``; errors for misuse."""
    if embed_fn is None:
        return None
    if not getattr(model.module, "external_embedding", False):
        raise InvalidInputError(
            "embed_fn was given, but this model was set up without embedding_key: its own PCA encoder "
            "already passes knockouts to the prediction branch. Leave embed_fn out."
        )
    setup = model.adata_manager.registry["setup_args"]
    return Reembedder(
        embed_fn,
        var_names=model.var_names_,
        obs=target.obs,
        layer=setup.get("layer"),
        width=int(model.module.embedding_mean.shape[0]),
    )
