"""Building blocks of the KD-CPT network: gene tokens, latent-query encoder, Cell Learner,
prediction branch and the cross-function fusion module (CFFM). Pure torch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .._errors import InvalidInputError


def log_normalize(x: torch.Tensor, target_sum: float) -> torch.Tensor:
    """Library-size normalise counts to ``target_sum`` and apply ``log1p``."""
    lib = x.sum(dim=-1, keepdim=True).clamp_min(1.0)
    return torch.log1p(x / lib * target_sum)


def token_grid(n_tokens: int) -> tuple[int, int]:
    """Shape ``(h, w)`` with ``h * w == n_tokens`` and ``h`` the largest divisor ≤ sqrt(n)."""
    h = int(math.isqrt(n_tokens))
    while n_tokens % h:
        h -= 1
    return h, n_tokens // h


def stable_topk(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk`` along the last axis with ties broken by position (the earlier one wins).

    ``torch.topk`` picks among tied values arbitrarily (and differently on CPU and GPU); a
    stable descending sort keeps tied entries in their original order.
    """
    values, idx = torch.sort(x, dim=-1, descending=True, stable=True)
    return values[..., :k], idx[..., :k]


class GeneTokenizer(nn.Module):
    """Per cell, the ``n_tokens`` most expressed genes as tokens.

    token = gene-identity embedding + value embedding. Genes with zero expression are masked.
    Ties in expression (frequent: counts and their logs take few distinct values) are broken
    deterministically by gene order (the earlier gene wins), through a stable sort: so
    setting a gene that is not a token to zero never changes the token set.
    With ``modality`` (one code per feature, e.g. 0 = gene, 1 = regulatory site), a modality
    embedding is added too, so that genes and sites share one token pool.
    """

    def __init__(self, n_genes: int, d_model: int, n_tokens: int, modality: torch.Tensor | None = None):
        super().__init__()
        self.n_tokens = min(n_tokens, n_genes)
        self.gene_embedding = nn.Embedding(n_genes, d_model)
        self.value_embedding = nn.Linear(1, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.modality_embedding = None
        if modality is not None:
            self.register_buffer("modality", torch.as_tensor(modality, dtype=torch.long))
            self.modality_embedding = nn.Embedding(int(self.modality.max()) + 1, d_model)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(tokens, gene_idx, values, mask)``; ``mask`` is True for real (expressed) tokens."""
        values, gene_idx = stable_topk(x, self.n_tokens)
        mask = values > 0
        tokens = self.gene_embedding(gene_idx) + self.value_embedding(values.unsqueeze(-1))
        if self.modality_embedding is not None:
            tokens = tokens + self.modality_embedding(self.modality[gene_idx])
        tokens = self.norm(tokens) * mask.unsqueeze(-1)
        return tokens, gene_idx, values, mask


class LatentCrossAttentionLayer(nn.Module):
    """A few learned latent queries (the first is CLS) attend over all gene tokens.

    Linear in the number of tokens (Perceiver-style). Keys and values of the tokens are
    computed once by the caller and shared by all layers. Returns the updated latents and the
    attention weights ``(batch, heads, n_latents, n_tokens)``.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        if d_model % n_heads:
            raise InvalidInputError(f"d_model={d_model} must be divisible by n_heads={n_heads}.")
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.norm_q = nn.LayerNorm(d_model)
        self.q = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        self.ff = nn.Sequential(
            nn.LayerNorm(d_model),
            nn.Linear(d_model, 2 * d_model),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(2 * d_model, d_model),
        )

    def forward(
        self, latents: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``keys``/``values``: ``(batch, tokens, heads, d_head)``; ``mask``: True for real tokens."""
        b, n_q, d = latents.shape
        q = self.q(self.norm_q(latents)).view(b, n_q, self.n_heads, self.d_head)
        logits = torch.einsum("bqhd,bthd->bhqt", q, keys) / math.sqrt(self.d_head)
        logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
        attn = torch.nan_to_num(torch.softmax(logits, dim=-1), nan=0.0)  # cells with no expressed gene
        out = torch.einsum("bhqt,bthd->bqhd", attn, values).reshape(b, n_q, d)
        latents = latents + self.out(out)
        latents = latents + self.ff(latents)
        return latents, attn


class CellLearner(nn.Module):
    """Screening branch: score gene tokens by CLS attention guided by a prior, keep the top k.

    The attention is the CLS-row attention aggregated over layers and heads (mean or learned
    weights) and rescaled to [0, 1] within each cell (``attention`` in the output: the
    prior-free score). With ``prior_mode="bias"`` (default) the prior is a bias on the
    log-attention: ``score ∝ attention * exp(β * prior)`` with ``β = -log(1 - prior_weight)``
    (a prior gene's attention is multiplied by ``1 / (1 - λ)``; a gene the network does not
    attend to stays unselected, whatever its prior), rescaled to [0, 1]. With
    ``prior_mode="blend"`` (the paper's form) ``score = (1 - λ) * attention + λ * prior``: as
    typical attention is small (≈ 0.02 of the cell's maximum), λ = 0.3 selects every
    expressed prior gene in every cell. Ties in the selection are broken by token order.
    The top ``n_selected`` tokens, weighted by their
    normalised scores (so that selection stays differentiable), pass through full
    self-attention among themselves and form ``E_t``.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_layers: int,
        n_latents: int,
        n_selected: int,
        prior_weight: float,
        aggregation: str,
        dropout: float,
        use_attention: bool = True,
        prior_mode: str = "bias",
    ):
        super().__init__()
        if prior_mode not in ("bias", "blend"):
            raise InvalidInputError(f"prior_mode must be 'bias' or 'blend', not {prior_mode!r}.")
        self.n_selected = n_selected
        self.prior_weight = prior_weight
        self.prior_mode = prior_mode
        self.aggregation = aggregation
        self.use_attention = use_attention
        self.latents = nn.Parameter(torch.randn(n_latents, d_model) * 0.02)
        self.n_heads = n_heads
        self.norm_kv = nn.LayerNorm(d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.layers = nn.ModuleList([LatentCrossAttentionLayer(d_model, n_heads, dropout) for _ in range(n_layers)])
        self.layer_head_logits = nn.Parameter(torch.zeros(n_layers * n_heads))
        self.selected_encoder = nn.TransformerEncoderLayer(
            d_model, n_heads, dim_feedforward=2 * d_model, dropout=dropout, batch_first=True
        )
        self.cls_norm = nn.LayerNorm(d_model)

    def aggregate(self, attn: torch.Tensor) -> torch.Tensor:
        """``(batch, layers, heads, tokens)`` → ``(batch, tokens)``."""
        b, n_l, n_h, n_t = attn.shape
        if self.aggregation == "learned":
            w = torch.softmax(self.layer_head_logits, dim=0)
            return (attn.reshape(b, n_l * n_h, n_t) * w[None, :, None]).sum(1)
        return attn.mean(dim=(1, 2))

    def blend(self, attention: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """Scores from the prior-free attention (in [0, 1] per cell) and the prior of each token."""
        lam = float(self.prior_weight)
        if lam <= 0:
            return attention
        if self.prior_mode == "blend":
            return (1 - lam) * attention + lam * prior
        beta = -math.log(max(1.0 - lam, 1e-6))
        scores = attention * torch.exp(beta * prior)
        return scores / scores.amax(dim=-1, keepdim=True).clamp_min(1e-12)

    def forward(
        self, tokens: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, prior: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        b = tokens.shape[0]
        if self.use_attention:
            latents = self.latents.unsqueeze(0).expand(b, -1, -1)
            keys, vals = self.kv(self.norm_kv(tokens)).view(b, tokens.shape[1], 2 * self.n_heads, -1).chunk(2, dim=2)
            cls_rows = []
            for layer in self.layers:
                latents, attn = layer(latents, keys, vals, mask)
                cls_rows.append(attn[:, :, 0, :])
            attention = self.aggregate(torch.stack(cls_rows, dim=1))
            cls = self.cls_norm(latents[:, 0])
        else:  # ablation: tokens chosen by expression rank
            attention = values
            cls = tokens.new_zeros(b, tokens.shape[-1])
        attention = attention * mask
        attention = attention / attention.amax(dim=-1, keepdim=True).clamp_min(1e-12)
        scores = self.blend(attention, prior) * mask

        k = min(self.n_selected, tokens.shape[1])
        ranking = scores.masked_fill(~mask, -1.0)
        sel_scores, sel_pos = stable_topk(ranking, k)
        sel_mask = sel_scores > -1.0
        sel_scores = sel_scores.clamp_min(0.0) * sel_mask
        n_valid = sel_mask.sum(-1, keepdim=True).clamp_min(1)
        weights = sel_scores / sel_scores.sum(-1, keepdim=True).clamp_min(1e-12) * n_valid
        selected = torch.gather(tokens, 1, sel_pos.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        selected = selected * weights.unsqueeze(-1) + cls.unsqueeze(1)
        # a cell whose selection is empty would make the attention all -inf: keep one slot open
        pad = ~sel_mask
        pad[:, 0] = False
        e_t = self.selected_encoder(selected, src_key_padding_mask=pad) * sel_mask.unsqueeze(-1)
        return {
            "attention": attention,
            "scores": scores,
            "selected_pos": sel_pos,
            "selected_mask": sel_mask,
            "e_t": e_t,
            "cls": cls,
        }


class WidePath(nn.Module):
    """Linear logits over every registered gene's log-normalised value ("wide" path).

    A bias-free ``n_genes → n_classes`` linear map, initialised at zero, so that the
    prediction branch is never weaker than a (L2-regularised, see ``penalty``) linear model on
    the same genes. It reads the module's input directly: a knockout that zeroes a gene in
    ``x`` reaches it. The minibatch is dense, so this is one dense matmul.
    """

    def __init__(self, n_genes: int, n_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_classes, n_genes))

    def forward(self, x_log: torch.Tensor) -> torch.Tensor:
        return x_log @ self.weight.t()

    def penalty(self) -> torch.Tensor:
        """``0.5 * ||W||²`` (ridge penalty, scaled by the module's ``wide_l2``)."""
        return 0.5 * self.weight.pow(2).sum()


class PredictionBranch(nn.Module):
    """Cell embedding → 3-layer MLP with ReLU → logits; the last hidden state reshaped to ``E_p``.

    With ``n_genes`` given, a :class:`WidePath` over all genes' log-normalised values is added
    to the MLP's logits (wide & deep); call it as ``branch(embedding, x_log)``.
    """

    def __init__(
        self,
        n_input: int,
        n_hidden: int,
        n_classes: int,
        n_selected: int,
        d_model: int,
        dropout: float,
        n_genes: int | None = None,
    ):
        super().__init__()
        self.n_selected = n_selected
        self.d_model = d_model
        self.wide = WidePath(n_genes, n_classes) if n_genes else None
        self.mlp = nn.Sequential(
            nn.Linear(n_input, n_hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(n_hidden, n_hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
        )
        self.head = nn.Linear(n_hidden, n_classes)
        self.to_tokens = nn.Linear(n_hidden, n_selected * d_model)

    def forward(self, embedding: torch.Tensor, x_log: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.mlp(embedding)
        e_p = self.to_tokens(h).view(-1, self.n_selected, self.d_model)
        logits = self.head(h)
        if self.wide is not None:
            if x_log is None:
                raise InvalidInputError("This prediction branch has a wide path and needs the genes' values x_log.")
            logits = logits + self.wide(x_log)
        return logits, e_p


class GridDepthwiseConv(nn.Module):
    """Depthwise ``kernel × kernel`` convolution (or its transpose) on a small ``h × w`` token grid.

    Exactly :func:`torch.nn.functional.conv2d` with ``groups=channels`` and ``padding=kernel//2``
    (or ``conv_transpose2d`` with ``transpose=True``), computed as one ``(h·w) × (h·w)`` matrix
    per channel gathered from the kernel: on grids of a few dozen tokens this is several times
    faster on CPU than the convolution kernels.
    Input and output: ``(batch, tokens, channels)`` with ``tokens = h * w`` in row-major order.
    """

    def __init__(self, channels: int, grid: tuple[int, int], kernel_size: int = 7, transpose: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.transpose = transpose
        h, w = grid
        r = kernel_size // 2
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        ys, xs = ys.reshape(-1), xs.reshape(-1)
        dy = ys[None, :] - ys[:, None]  # input row - output row
        dx = xs[None, :] - xs[:, None]
        valid = (dy.abs() <= r) & (dx.abs() <= r)
        # conv2d is a cross-correlation: out[p] = sum_q weight[dy + r, dx + r] * in[q]
        self.register_buffer("flat_index", ((dy + r).clamp(0, 2 * r) * kernel_size + (dx + r).clamp(0, 2 * r)))
        self.register_buffer("valid", valid.float())

    def matrix(self) -> torch.Tensor:
        """``(channels, out_tokens, in_tokens)`` matrix of the convolution."""
        w = self.weight.flatten(1)[:, self.flat_index] * self.valid
        return w.transpose(1, 2) if self.transpose else w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("cpq,bqc->bpc", self.matrix(), x) + self.bias


class CFFM(nn.Module):
    """Cross-function fusion module.

    ``E_p`` and ``E_t`` (``k × c`` each) are laid out as ``h × w`` token grids with ``c``
    channels. Q/K/V of ``E_p`` come from a 1×1 convolution (global, per token), of ``E_t``
    from a 7×7 convolution (local, across neighbouring tokens of the score-ordered grid;
    depthwise then pointwise to keep it cheap on CPU). The two are concatenated along the
    token axis, Q and K are layer-normalised, and multi-head attention with scale
    ``sqrt(c / n_heads)`` mixes them; a feed-forward block, a transposed convolution and a
    projection map back, with a residual to the inputs. Mean pooling gives the fused state.
    """

    def __init__(self, d_model: int, n_heads: int, n_selected: int, dropout: float):
        super().__init__()
        self.grid = token_grid(n_selected)
        self.n_heads = n_heads
        c = d_model
        # 1x1 convolutions are per-token linear maps
        self.qkv_p = nn.Linear(c, 3 * c)
        self.qkv_t_local = GridDepthwiseConv(c, self.grid, 7)
        self.qkv_t = nn.Linear(c, 3 * c)
        self.norm_q = nn.LayerNorm(c)
        self.norm_k = nn.LayerNorm(c)
        self.attn_out = nn.Linear(c, c)
        self.ff = nn.Sequential(
            nn.LayerNorm(c), nn.Linear(c, 2 * c), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * c, c)
        )
        self.deconv_p = nn.Linear(c, c)  # a 1x1 transposed convolution
        self.deconv_t = GridDepthwiseConv(c, self.grid, 7, transpose=True)
        self.proj = nn.Linear(c, c)
        self.out_norm = nn.LayerNorm(c)

    def forward(self, e_p: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
        b, k, c = e_p.shape
        qkv = torch.cat(
            [self.qkv_p(e_p), self.qkv_t(self.qkv_t_local(e_t))],
            dim=1,
        )  # (b, 2k, 3c)
        q, key, v = qkv.chunk(3, dim=-1)
        q, key = self.norm_q(q), self.norm_k(key)
        heads = lambda t: t.view(b, 2 * k, self.n_heads, c // self.n_heads).transpose(1, 2)  # noqa: E731
        # scaled_dot_product_attention scales by 1 / sqrt(c / n_heads)
        y = F.scaled_dot_product_attention(heads(q), heads(key), heads(v))
        y = self.attn_out(y.transpose(1, 2).reshape(b, 2 * k, c))
        y = y + self.ff(y)
        y_p = self.deconv_p(y[:, :k])
        y_t = self.deconv_t(y[:, k:])
        z = torch.cat([e_p, e_t], dim=1) + self.proj(torch.cat([y_p, y_t], dim=1))
        return self.out_norm(z.mean(dim=1))
