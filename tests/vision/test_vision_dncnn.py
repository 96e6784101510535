"""DnCNN: layout, residual learning API, reference weights (key mapping and published PSNR)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dscmr.errors import CheckpointError
from dscmr.vision import create_model
from dscmr.vision.dncnn import DnCNN, convert_reference_state_dict, load_dncnn_state_dict


def _reference_layout(model: DnCNN) -> dict[str, torch.Tensor]:
    """Our weights renamed to the reference nn.Sequential layout (written independently of the converter)."""
    seq = [model.stem[0], model.stem[1]]
    for block in model.blocks:
        seq += [block[0], block[1], block[2]]
    seq.append(model.tail)
    return {f"dncnn.{k}": v for k, v in nn.Sequential(*seq).state_dict().items() if "num_batches" not in k}


def test_layout() -> None:
    model = create_model("dncnn")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 17 and len(bns) == 15
    assert convs[0].bias is not None and all(c.bias is None for c in convs[1:])
    assert all(c.out_channels == 64 for c in convs[:-1]) and convs[-1].out_channels == 1
    assert all(b.eps == 1e-4 for b in bns)


def test_denoise_is_input_minus_predicted_noise() -> None:
    model = create_model("dncnn", depth=5).eval()
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model.denoise(x), x - model(x))


def test_reference_key_mapping_round_trip() -> None:
    torch.manual_seed(0)
    src = create_model("dncnn")
    for m in src.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_()
            m.running_var.uniform_(0.5, 1.5)
    ref = _reference_layout(src)
    assert "dncnn.47.weight" in ref and "dncnn.3.running_var" in ref
    dst = create_model("dncnn")
    load_dncnn_state_dict(dst, ref)
    for k, v in src.state_dict().items():
        if "num_batches" not in k:
            assert torch.equal(dst.state_dict()[k], v), k
    assert set(convert_reference_state_dict(ref)) <= set(dst.state_dict())


def test_mismatched_weights_are_a_checkpoint_error() -> None:
    with pytest.raises(CheckpointError):
        load_dncnn_state_dict(create_model("dncnn", depth=5), _reference_layout(create_model("dncnn")))


def test_reference_weights_reach_published_psnr(denoise_data: Path) -> None:
    from dscmr.vision_tasks.denoise import evaluate_denoiser, load_denoiser

    weights = denoise_data / "dncnn_s_sigma25_reference.safetensors"
    if not weights.is_file():
        pytest.skip(f"reference weights not found at {weights}")
    model = load_denoiser(weights)
    result = evaluate_denoiser(model, denoise_data / "Set12", sigma=25, seed=0)
    assert result["n"] == 12
    assert result["psnr"] >= 30.3, result["psnr"]
    assert 20.0 < result["noisy_psnr"] < 20.4  # sigma = 25 gives ~20.17 dB
