"""Dead depthwise kernel diagnostic and its benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dscmr.vision import create_model
from dscmr.vision_tasks.dead_kernels import dead_kernel_report


def test_report_counts_zeroed_kernels() -> None:
    model = create_model("mobilenet_v1_050")
    dw = model.blocks[0].conv_dw.conv.weight  # (16, 1, 3, 3)
    with torch.no_grad():
        dw[:4] = 0.0
        dw[4] *= 1e-3
    report = dead_kernel_report(model)
    assert report.dead == 5
    assert report.total == sum(b.conv_dw.conv.weight.shape[0] for b in model.blocks)
    assert report.fraction == pytest.approx(5 / report.total)
    assert dead_kernel_report(model, abs_threshold=1e-9).dead == 4
    assert len(report.layers) == 13  # pointwise and stem convs are not depthwise
    state_report = dead_kernel_report(model.state_dict())
    assert (state_report.dead, state_report.total) == (report.dead, report.total)


def test_single_channel_stem_is_not_depthwise() -> None:
    model = create_model("mobilenet_v1_050", in_chans=1)
    assert dead_kernel_report(model.state_dict()).total == dead_kernel_report(model).total
    assert not dead_kernel_report(create_model("dncnn", depth=4).state_dict()).layers


def test_cli_on_weights_and_bad_input(app, runner, tmp_path: Path) -> None:
    model = create_model("mobilenet_v2_050")
    with torch.no_grad():
        model.features[1].conv[0][0].weight[:2] = 0
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    res = runner.invoke(app, ["vision", "dead-kernels", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["dead"] == 2 and 0 < out["fraction"] < 0.01

    save_file({"w": torch.zeros(3, 3)}, str(tmp_path / "nodw.safetensors"))
    res = runner.invoke(app, ["vision", "dead-kernels", str(tmp_path / "nodw.safetensors")])
    assert res.exit_code == 2 and "no depthwise" in res.stderr


def test_bench_command(app, runner) -> None:
    res = runner.invoke(app, ["bench", "dead-kernels", "--epochs", "1", "--limit", "64", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert set(out["models"]) == {"mobilenet_v1_100", "mobilenet_v2_100"}
    for r in out["models"].values():
        assert 0.0 <= r["fraction"] <= 1.0 and r["total"] > 0
