"""EfficientNet-Lite specifics: structure, TF-SAME padding, strict loading of the packaged weights, parity with the
reference implementation (``efficientnet_lite_pytorch``, a test-only dependency)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dscmr.errors import CheckpointError
from dscmr.vision import create_model, list_models
from dscmr.vision._pretrained import EFFICIENTNET_LITE_FILES, offline_package_file
from dscmr.vision.efficientnet_lite import LiteBlock, pad_same, remap_reference_state_dict

LITES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def _weights_file(name: str):
    package, filename = EFFICIENTNET_LITE_FILES[name]
    path = offline_package_file(package, filename, folder="models")
    if path is None:
        pytest.skip(f"{package.replace('_', '-')} (with models/{filename}) is not installed")
    return path


def test_registered_and_covered_by_the_registry_tests() -> None:
    assert list_models("efficientnet_lite*") == LITES


@pytest.mark.parametrize(
    ("name", "n_blocks", "last_chs", "size"),
    [("efficientnet_lite0", 16, 320, 224), ("efficientnet_lite1", 21, 320, 240), ("efficientnet_lite2", 21, 352, 260)],
)
def test_structure(name: str, n_blocks: int, last_chs: int, size: int) -> None:
    model = create_model(name)
    blocks = list(model.blocks)
    assert len(blocks) == n_blocks and all(isinstance(b, LiteBlock) for b in blocks)
    assert model.stage_ends[-1] == n_blocks and len(model.stage_ends) == 7
    assert model.conv_stem.conv.out_channels == 32  # fixed stem
    assert blocks[-1].out_channels == last_chs
    assert model.num_features == 1280  # fixed head
    assert model.pretrained_cfg["input_size"] == (3, size, size)
    acts = {type(m) for m in model.modules() if isinstance(m, nn.ReLU | nn.ReLU6 | nn.SiLU | nn.Sigmoid)}
    assert acts == {nn.ReLU6}  # ReLU6 only, no swish, no SE gate
    assert all(b.conv_pwl[-1].__class__ is nn.BatchNorm2d for b in blocks)  # linear bottleneck


def test_pad_same_matches_tensorflow_rule() -> None:
    x = torch.ones(1, 1, 8, 7)
    # stride 2, kernel 3: H=8 -> total pad 1, all at the bottom; W=7 -> total pad 2, one each side
    y = pad_same(x, 3, 2)
    assert y.shape == (1, 1, 9, 9)
    assert y[0, 0, -1].abs().sum() == 0 and y[0, 0, 0].abs().sum() > 0
    assert y[0, 0, :, 0].abs().sum() == 0 and y[0, 0, :, -1].abs().sum() == 0
    model = create_model("efficientnet_lite0", num_classes=0).eval()
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 33, 40)).shape == (1, 1280, 2, 2)  # ceil(33/32), ceil(40/32)


def test_split_recomposes_forward_features() -> None:
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", num_classes=0).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        full = model.forward_features(x)
        for n in (0, 2, len(model.blocks)):
            bottom, top = model.split(n)
            assert len(top) == n + 1
            assert torch.allclose(top(bottom(x)), full, atol=1e-6)
    assert model.split(2)[1][0] is model.blocks[-2]  # views share the model's modules
    with pytest.raises(ValueError, match="n_top_blocks"):
        model.split(len(model.blocks) + 1)


def test_drop_path_only_in_training() -> None:
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", num_classes=3, drop_path_rate=0.5, drop_rate=0.0)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))  # training: residual branches dropped at random
        model.eval()
        assert torch.equal(model(x), model(x))
    rates = [b.drop_path_rate for b in model.blocks]
    assert rates[0] == 0 and rates == sorted(rates) and rates[-1] < 0.5


@pytest.mark.parametrize("name", LITES)
def test_packaged_weights_load_strictly(name: str) -> None:
    path = _weights_file(name)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    model = create_model(name, pretrained=True)
    ours = model.state_dict()
    mapped = remap_reference_state_dict(raw)
    assert mapped.keys() == ours.keys()  # every stored tensor used, every parameter and buffer filled
    for key, value in mapped.items():
        assert torch.equal(ours[key], value), key
    fresh = create_model(name, pretrained=True, num_classes=7)
    assert fresh.classifier.out_features == 7
    assert torch.equal(fresh.conv_head.conv.weight, model.conv_head.conv.weight)


def test_wrong_or_foreign_weights_are_checkpoint_errors(tmp_path) -> None:
    path = _weights_file("efficientnet_lite0")
    with pytest.raises(CheckpointError, match="do not match"):  # Lite0's file in Lite2
        create_model("efficientnet_lite2", pretrained=True, pretrained_path=path)
    torch.save({"_blocks.0._se_reduce.weight": torch.zeros(1)}, tmp_path / "se.pth")
    with pytest.raises(CheckpointError, match="unexpected key"):
        create_model("efficientnet_lite0", pretrained=True, pretrained_path=tmp_path / "se.pth")


def test_own_layout_round_trips(tmp_path) -> None:
    from safetensors.torch import save_file

    src = create_model("efficientnet_lite0")
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "w.safetensors"))
    model = create_model("efficientnet_lite0", pretrained_path=tmp_path / "w.safetensors")
    assert torch.equal(model.blocks[5].conv_dw.conv.weight, src.blocks[5].conv_dw.conv.weight)


def _reference(name: str):
    ref = pytest.importorskip(
        "efficientnet_lite_pytorch", reason="efficientnet-lite-pytorch (the reference implementation) not installed"
    )
    return ref.EfficientNet.from_pretrained(name.replace("_", "-"), weights_path=str(_weights_file(name))).eval()


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_logits_equal_the_reference_implementation(name: str) -> None:
    """The reference pads for its fixed native resolution, so the comparison runs at that size."""
    ref = _reference(name)
    ours = create_model(name, pretrained=True).eval()
    size = ours.pretrained_cfg["input_size"][1]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (ours(x) - ref(x)).abs().max().item()
        feats = ours.forward_head(ours.forward_features(x), pre_logits=True)
        ref_feats = ref.extract_features(x).mean(dim=(2, 3))
    assert diff <= 1e-4
    assert torch.allclose(feats, ref_feats, atol=1e-5)
