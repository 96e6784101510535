"""`dscmr demo --quick`: the whole end-to-end path on a tiny built-in set, through the CLI."""

from __future__ import annotations

import json

import torch
from PIL import Image
from typer.testing import CliRunner

from dscmr.cli.main import app

runner = CliRunner()


def test_demo_quick_prints_map_and_writes_contact_sheet(tmp_path):
    before = torch.get_num_threads()
    out = tmp_path / "demo"
    args = ["demo", "--quick", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--threads", "1"]
    try:
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        assert "5. test mAP   float: img->txt" in res.output and "Hamming: img->txt" in res.output
        for q in ("a large red circle", "a blue square above a green triangle", "two yellow triangles"):
            assert f'"{q}"' in res.output
        assert "image -> text" in res.output and "dscmr search text" in res.output
        with Image.open(out / "contact_sheet.png") as im:
            assert im.size[0] > 600 and im.size[1] > 400
        page = (out / "contact_sheet.html").read_text()
        assert page.count("data:image/png;base64,") == 3 * 5 + 1
        assert (out / "run" / "model.safetensors").is_file()

        res = runner.invoke(app, [*args, "--json"])  # features now come from the cache
        assert res.exit_code == 0, res.output
        payload = json.loads(res.stdout)
        assert set(payload["map"]) == {"float", "hamming16"} and 0 < payload["chance_map"] <= 1
        for part in payload["map"].values():
            assert 0.0 < part["img2txt"] <= 1.0 and 0.0 < part["txt2img"] <= 1.0
        assert len(payload["text_to_image"]) == 3 and all(len(q["hits"]) == 5 for q in payload["text_to_image"])
        assert payload["image_to_text"]["hits"] and payload["seconds"]["total"] > 0
    finally:
        torch.set_num_threads(before)


def test_demo_rejects_unknown_dataset(tmp_path):
    res = runner.invoke(app, ["demo", "--quick", "--dataset", "mnist", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "unknown demo dataset" in res.output
