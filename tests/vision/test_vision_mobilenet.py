"""MobileNetV1/V2 specifics: depthwise convs, parameter counts, torchvision weight compatibility."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dscmr.vision import create_model
from dscmr.vision._pretrained import MOBILENET_V2_FILE, OFFLINE_PACKAGE, offline_package_file
from dscmr.vision.mobilenet_v1 import DepthwiseSeparableConv
from dscmr.vision.mobilenet_v2 import InvertedResidual


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_depthwise_conv_weight_shape() -> None:
    block = DepthwiseSeparableConv(32, 64)
    assert block.conv_dw.conv.weight.shape == (32, 1, 3, 3)
    assert block.conv_dw.conv.groups == 32
    assert block.conv_pw.conv.weight.shape == (64, 32, 1, 1)
    assert isinstance(block.conv_dw[1], nn.BatchNorm2d) and isinstance(block.conv_dw[2], nn.ReLU)


def test_grouped_conv_channels_depend_only_on_their_group() -> None:
    conv = nn.Conv2d(6, 6, 1, groups=3)
    assert conv.weight.shape == (6, 2, 1, 1)
    x = torch.randn(1, 6, 4, 4)
    base = conv(x)
    for g in range(3):
        x2 = x.clone()
        x2[:, 2 * g : 2 * g + 2] += 1.0  # perturb the inputs of group g only
        changed = (conv(x2) - base).abs().amax(dim=(0, 2, 3)) > 0
        assert changed.tolist() == [j // 2 == g for j in range(6)]


def test_mobilenet_v1_parameter_count() -> None:
    n = _n_params(create_model("mobilenet_v1_100", num_classes=1000))
    assert 4.20e6 < n < 4.26e6  # 4.2M in the paper
    assert _n_params(create_model("mobilenet_v1_050")) < n / 2.5  # width multiplier shrinks ~alpha^2


def test_mobilenet_v2_blocks() -> None:
    model = create_model("mobilenet_v2_100")
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    assert len(blocks) == 17
    for block in blocks:
        assert isinstance(block.conv[-1], nn.BatchNorm2d)  # linear bottleneck: no activation after projection
        acts = [m for m in block.modules() if isinstance(m, nn.ReLU | nn.ReLU6)]
        assert all(isinstance(a, nn.ReLU6) for a in acts)
    assert sum(b.use_res_connect for b in blocks) == 10
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    assert model.forward_features(x).shape == (2, 1280, 2, 2)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 1280)


def test_mobilenet_v2_state_dict_matches_torchvision_keys() -> None:
    import torchvision

    ours = create_model("mobilenet_v2_100").state_dict()
    theirs = torchvision.models.mobilenet_v2().state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_pretrained_logits_equal_torchvision() -> None:
    path = offline_package_file(OFFLINE_PACKAGE, MOBILENET_V2_FILE)
    if path is None:
        pytest.skip(f"{OFFLINE_PACKAGE} (with weights/{MOBILENET_V2_FILE}) is not installed")
    import torchvision

    ours = create_model("mobilenet_v2_100", pretrained=True).eval()
    ref = torchvision.models.mobilenet_v2()
    ref.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    ref.eval()
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x), atol=1e-4, rtol=1e-4)
        feats = ours.forward_head(ours.forward_features(x), pre_logits=True)
    assert feats.shape == (2, 1280)


def test_pretrained_path_override_and_new_head(tmp_path) -> None:
    from safetensors.torch import save_file

    src = create_model("mobilenet_v2_100")
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "w.safetensors"))
    model = create_model("mobilenet_v2_100", pretrained=True, pretrained_path=tmp_path / "w.safetensors", num_classes=4)
    assert torch.equal(model.features[3].conv[1][0].weight, src.features[3].conv[1][0].weight)
    assert model.classifier[1].out_features == 4


def test_pretrained_bad_file_is_a_checkpoint_error(tmp_path) -> None:
    from dscmr.errors import CheckpointError

    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        create_model("mobilenet_v2_100", pretrained=True, pretrained_path=tmp_path / "bad.pth")
