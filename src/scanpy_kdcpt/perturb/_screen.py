"""First-order (gradient) knockout screen of every gene at the cost of a few backward passes.

Deleting gene ``g`` in cell ``c`` moves the cell's phenotype probabilities by, to first order,

    Δp_c ≈ - x_cg ∂p_c/∂x_cg  (through the prediction branch's encoder)
           - Σ_t t_ct · ∂p_c/∂t_ct  over the gene-token t_ct of g, if g is a token of c

(gradient × input for the expression path, and the gradient of the token itself for the
token that disappears: a first-order proxy of the token dropping out of the Cell Learner).
One forward pass and one backward pass per phenotype per minibatch give these for all genes
and cells at once; summed over the cells of each source phenotype they give the first-order
change of every row of the transition matrix for every gene. The top genes are then
recomputed exactly by :meth:`~scanpy_kdcpt.KDCPT.knockout`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from scvi.utils import track

from .._constants import REGISTRY_KEYS

if TYPE_CHECKING:
    from anndata import AnnData

    from ..model._base import KDCPTLike


def first_order_deltas(
    model: KDCPTLike,
    prepared: AnnData,
    groups: np.ndarray,
    n_groups: int,
    *,
    batch_size: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """First-order change of the summed probabilities per gene × source group × phenotype.

    ``groups`` is each cell's source group (``-1``: none). Returns genes × groups × phenotypes:
    the estimated ``Σ_{c in group} (p_ko(c) - p(c))`` for deleting each gene on its own.
    """
    module = model.module
    module.eval()
    n_genes, n_cls = len(model.var_names_), len(model.classes_)
    out = torch.zeros(n_groups, n_cls, n_genes, dtype=torch.float64)
    captured: dict[str, torch.Tensor] = {}

    def hook(_mod, _inp, output):
        tokens = output[0].detach().requires_grad_(True)
        captured["tokens"] = tokens
        return (tokens, *output[1:])

    handle = module.tokenizer.register_forward_hook(hook)
    dl = model._make_data_loader(
        adata=prepared, indices=np.arange(prepared.n_obs), batch_size=batch_size or 256, shuffle=False
    )
    temperature = float(model.temperature_)
    start = 0
    try:
        it = track(dl, description="first-order screen", disable=not progress, style="tqdm") if progress else dl
        for tensors in it:
            n = tensors[REGISTRY_KEYS.X_KEY].shape[0]
            g = torch.as_tensor(groups[start : start + n])
            start += n
            ok = g >= 0
            if not ok.any():
                continue
            inputs = module._get_inference_input(tensors)
            x = inputs["x"].to(model.device).float().requires_grad_(True)
            inputs["x"] = x
            with torch.enable_grad():
                res = module.inference(**inputs)
                tokens = captured["tokens"]
                proba = torch.softmax(res["logits"].float() / temperature, dim=-1)
                gene_idx, mask = res["gene_idx"], res["token_mask"]
                onehot = torch.zeros(n, n_groups, dtype=torch.float64)
                onehot[ok.nonzero().ravel(), g[ok]] = 1.0
                for j in range(n_cls):
                    gx, gt = torch.autograd.grad(proba[:, j].sum(), [x, tokens], retain_graph=j < n_cls - 1)
                    d = -(x.detach() * gx)  # cells × genes, expression path
                    tok = -(tokens.detach() * gt).sum(-1) * mask  # cells × tokens
                    d = d.scatter_add(1, gene_idx, tok.to(d.dtype))
                    out[:, j] += onehot.T @ d.double().cpu()
    finally:
        handle.remove()
    return out.permute(2, 0, 1).numpy()
