"""Squeeze-and-excitation module and the SE variants."""

from __future__ import annotations

import torch
from torch import nn

from dscmr.layers import SEModule
from dscmr.vision import create_model


def test_zero_weights_and_bias_give_half_the_input() -> None:
    se = SEModule(64, rd_ratio=0.25)
    for p in se.parameters():
        nn.init.zeros_(p)
    x = torch.randn(2, 64, 5, 7)
    y = se(x)
    assert y.shape == x.shape
    assert torch.equal(y, 0.5 * x)


def test_gate_scales_each_channel() -> None:
    torch.manual_seed(0)
    se = SEModule(16, rd_ratio=0.5, act_layer=nn.ReLU, gate_layer=nn.Sigmoid)
    x = torch.rand(1, 16, 4, 4) + 0.1
    ratio = se(x) / x  # (1, 16, 4, 4): constant per channel, in (0, 1)
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio), atol=1e-6)
    assert ((ratio > 0) & (ratio < 1)).all()


def test_parameter_count() -> None:
    se = SEModule(64, rd_ratio=0.25)
    assert se.rd_channels == 16
    assert sum(p.numel() for p in se.parameters()) == 64 * 16 + 16 + 16 * 64 + 64


def test_se_variants_contain_se_modules() -> None:
    v1 = create_model("mobilenet_v1_se")
    v2 = create_model("mobilenet_v2_se")
    assert sum(isinstance(m, SEModule) for m in v1.modules()) == 13
    assert sum(isinstance(m, SEModule) for m in v2.modules()) == 17
    assert sum(p.numel() for p in v1.parameters()) > sum(
        p.numel() for p in create_model("mobilenet_v1_100").parameters()
    )
