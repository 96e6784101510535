"""HybridSN and its variants: layer layout, batch-size independent reshape, paper parameter count."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dscmr.errors import ConfigError
from dscmr.vision import create_model


def test_paper_parameter_count_and_conv_layout() -> None:
    model = create_model("hybridsn", num_classes=16)
    assert sum(p.numel() for p in model.parameters()) == 5_122_176  # Table in Roy et al. (2019)
    convs = [m for m in model.conv3d if isinstance(m, nn.Conv3d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(8, (7, 3, 3)), (16, (5, 3, 3)), (32, (3, 3, 3))]
    # every 3D conv is followed by a ReLU
    layers = list(model.conv3d)
    assert all(isinstance(layers[i + 1], nn.ReLU) for i, m in enumerate(layers) if isinstance(m, nn.Conv3d))
    drops = [m.p for m in model.fc if isinstance(m, nn.Dropout)]
    assert drops == [0.4, 0.4]


@pytest.mark.parametrize("name", ["hybridsn", "hybridsn_dsc", "hybridsn_2d3d"])
@pytest.mark.parametrize("batch", [1, 3])
def test_reshape_uses_the_actual_batch_size(name: str, batch: int) -> None:
    model = create_model(name, num_classes=4).eval()
    x = torch.randn(batch, 30, 25, 25)
    with torch.no_grad():
        assert model.forward_features(x).shape == (batch, 64, 17, 17)
        out = model(x)
        assert out.shape == (batch, 4)
        assert torch.allclose(model(x.unsqueeze(1)), out)  # (B, 1, K, P, P) input is accepted too
    if batch == 3:  # a sample's output does not depend on the rest of the batch in eval mode
        with torch.no_grad():
            assert torch.allclose(model(x[1:2]), out[1:2], atol=1e-5)


def test_dsc_variant_layers() -> None:
    model = create_model("hybridsn_dsc")
    dw, pw = model.conv2d[0], model.conv2d[1]
    assert dw.conv.groups == 576 and dw.conv.weight.shape == (576, 1, 3, 3)
    assert isinstance(dw[1], nn.BatchNorm2d) and isinstance(dw[2], nn.ReLU)
    assert pw.conv.weight.shape == (64, 576, 1, 1)
    assert isinstance(pw[1], nn.BatchNorm2d) and isinstance(pw[2], nn.ReLU)


def test_2d3d_variant_starts_with_a_2d_conv() -> None:
    model = create_model("hybridsn_2d3d")
    assert isinstance(model.pre[0], nn.Conv2d) and model.pre[0].in_channels == 30
    assert isinstance(create_model("hybridsn").pre, nn.Identity)


def test_other_patch_sizes_and_too_small_inputs() -> None:
    model = create_model("hybridsn", num_classes=3, in_bands=16, patch_size=11)
    assert model(torch.randn(2, 16, 11, 11)).shape == (2, 3)
    with pytest.raises(ConfigError, match="bands"):
        create_model("hybridsn", in_bands=10)
