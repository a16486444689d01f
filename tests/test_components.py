"""Building blocks of the network against their reference definitions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scanpy_kdcpt.module._components import CFFM, GridDepthwiseConv, token_grid
from scanpy_kdcpt.module._module import KDCPTModule


@pytest.mark.parametrize("grid", [(4, 8), (2, 3), (5, 5)])
@pytest.mark.parametrize("transpose", [False, True])
def test_grid_depthwise_conv_equals_torch_convolution(grid, transpose):
    torch.manual_seed(0)
    c = 6
    conv = GridDepthwiseConv(c, grid, 7, transpose=transpose)
    x = torch.randn(3, grid[0] * grid[1], c)
    img = x.transpose(1, 2).reshape(3, c, *grid)
    fn = F.conv_transpose2d if transpose else F.conv2d
    ref = fn(img, conv.weight, conv.bias, padding=3, groups=c).flatten(2).transpose(1, 2)
    torch.testing.assert_close(conv(x), ref, atol=1e-5, rtol=1e-5)


def test_token_grid():
    assert token_grid(32) == (4, 8) and token_grid(16) == (4, 4) and token_grid(7) == (1, 7)


def test_cffm_local_branch_mixes_neighbouring_tokens_only():
    torch.manual_seed(0)
    conv = GridDepthwiseConv(2, (1, 16), 7)
    x = torch.zeros(1, 16, 2)
    x[0, 0] = 1.0
    out = conv(x) - conv.bias
    assert out[0, :4].abs().sum() > 0 and out[0, 4:].abs().sum() == 0  # 7-wide kernel: reach of 3


def test_module_forward_shapes_and_masking():
    torch.manual_seed(0)
    m = KDCPTModule(n_genes=50, n_classes=3, n_embedding=5, n_tokens=20, n_selected=8, d_model=16, n_heads=4)
    x = torch.zeros(4, 50)
    x[0, :30] = torch.rand(30) + 0.1  # more expressed genes than tokens
    x[1, :3] = 1.0  # fewer expressed genes than selected tokens
    x[2, 5] = 2.0
    # x[3]: no expressed gene at all
    out = m.inference(x)
    assert out["logits"].shape == (4, 3) and torch.isfinite(out["logits"]).all()
    assert out["token_mask"].sum(1).tolist() == [20, 3, 1, 0]
    assert out["selected_mask"].sum(1).tolist() == [8, 3, 1, 0]
    assert (out["scores"][~out["token_mask"]] == 0).all()
    cffm = CFFM(16, 4, 8, 0.0)
    assert cffm(torch.randn(2, 8, 16), torch.randn(2, 8, 16)).shape == (2, 16)
