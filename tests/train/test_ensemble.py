"""Seed ensembles (``train.ensemble``): members are plain runs, the saved model is their normalised concatenation,
and every run-level command uses it."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dscmr.cli.main import app
from dscmr.config import load_config
from dscmr.data import load_dataset
from dscmr.errors import CheckpointError, ConfigError
from dscmr.eval import cross_modal_map
from dscmr.models import DSCMR, DSCMREnsemble, EnsembleSpec
from dscmr.train import encode_split, load_run, train
from dscmr.train.ensemble import member_config, member_seed

pytestmark = pytest.mark.usefixtures("one_torch_thread")

runner = CliRunner()
EPOCHS = ["train.epochs=4"]


class Killed(Exception):
    pass


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Plain runs with seeds 0 and 1000 and an ensemble of 2 with seed 0, on one tiny npz (trained once)."""
    tmp = tmp_path_factory.mktemp("ensemble")
    torch.set_num_threads(1)
    from tests.indexing.conftest import make_tiny_run

    make_tiny_run(tmp, epochs=4)  # writes tmp/tiny.toml on tmp/tiny.npz (and a run we reuse as plain seed 0)
    cfg_path = tmp / "tiny.toml"
    out = {"config": cfg_path, "plain0": tmp / "run"}
    train(load_config(cfg_path, ["train.seed=1000"]), tmp / "plain1000", progress=False)
    train(load_config(cfg_path, ["train.ensemble=2"]), tmp / "ens", progress=False)
    train(load_config(cfg_path, ["train.ensemble=2", "model.project_dim=8"]), tmp / "proj", progress=False)
    train(load_config(cfg_path, ["train.ensemble=2", "model.project_dim=32"]), tmp / "proj32", progress=False)
    out.update(plain1000=tmp / "plain1000", ens=tmp / "ens", proj=tmp / "proj", proj32=tmp / "proj32")
    return out


def test_ensemble_one_is_todays_plain_run(tmp_path, tiny_config):
    plain = train(load_config(tiny_config, EPOCHS), tmp_path / "plain", progress=False)
    one = train(load_config(tiny_config, [*EPOCHS, "train.ensemble=1"]), tmp_path / "one", progress=False)
    assert one.val == plain.val and one.test == plain.test and one.history == plain.history and not one.members
    a, b = _metrics(tmp_path / "plain"), _metrics(tmp_path / "one")
    a.pop("train_seconds"), b.pop("train_seconds")
    assert a == b and "ensemble" not in b
    for name in ("model.safetensors", "model.json"):
        assert _sha(tmp_path / "plain" / name) == _sha(tmp_path / "one" / name)
    assert not (tmp_path / "one" / "members").exists()
    assert isinstance(load_run(tmp_path / "one").model, DSCMR)


def test_member_seeds_and_member_zero_is_the_plain_run(runs):
    ens = runs["ens"]
    assert [member_seed(0, j) for j in range(3)] == [0, 1000, 2000]
    seeds = [json.loads((ens / "members" / str(j) / "config.json").read_text())["train"]["seed"] for j in (0, 1)]
    assert seeds == [0, 1000]
    # Member j is bit for bit the plain run of its seed.
    assert _sha(ens / "members" / "0" / "model.safetensors") == _sha(runs["plain0"] / "model.safetensors")
    assert _sha(ens / "members" / "1" / "model.safetensors") == _sha(runs["plain1000"] / "model.safetensors")
    assert _sha(runs["plain0"] / "model.safetensors") != _sha(runs["plain1000"] / "model.safetensors")
    m = _metrics(ens)
    assert m["ensemble"]["size"] == 2
    members = m["ensemble"]["members"]
    assert [r["seed"] for r in members] == [0, 1000]
    for r, plain in zip(members, (runs["plain0"], runs["plain1000"]), strict=True):
        pm = _metrics(plain)
        assert r["best_epoch"] == pm["best_epoch"] and r["val"] == pm["val"]
    assert m["best_epoch"] == max(r["best_epoch"] for r in members)
    assert m["seed"] == 0 and m["split"] == "test" and m["history"] == []


def test_ensemble_embedding_is_the_normalised_concatenation(runs):
    cfg = load_config(runs["config"])
    ds = load_dataset(cfg.data)
    ens = load_run(runs["ens"])
    assert isinstance(ens.model, DSCMREnsemble) and not ens.model.training
    assert ens.model.embed_dim == 2 * cfg.model.common_dim
    parts = [encode_split(load_run(runs[name]).model, ds.test) for name in ("plain0", "plain1000")]
    by_hand = [
        torch.cat([torch.nn.functional.normalize(p[side], dim=1) for p in parts], dim=1) / math.sqrt(2)
        for side in (0, 1)
    ]  # (n, 2D) images, texts
    u, v = encode_split(ens.model, ds.test)
    assert u.shape == (len(ds.test), 32)
    torch.testing.assert_close(u, by_hand[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(v, by_hand[1], atol=1e-6, rtol=0)
    torch.testing.assert_close(u.norm(dim=1), torch.ones(len(u)), atol=1e-6, rtol=0)
    # Cosine = mean of the members' cosines; the saved test mAP is the ensemble's.
    cos = [torch.nn.functional.normalize(p[0], dim=1) @ torch.nn.functional.normalize(p[1], dim=1).T for p in parts]
    torch.testing.assert_close(u @ v.T, (cos[0] + cos[1]) / 2, atol=1e-6, rtol=0)
    expected = cross_modal_map(by_hand[0], by_hand[1], ds.test.labels)
    assert _metrics(runs["ens"])["test"]["avg"] == pytest.approx(expected["avg"], abs=1e-6)


def test_saved_ensemble_evaluates_indexes_and_searches(runs, tmp_path):
    ens = runs["ens"]
    ev = runner.invoke(app, ["eval", str(ens), "--json"])
    assert ev.exit_code == 0, ev.output
    assert json.loads(ev.stdout)["avg"] == pytest.approx(_metrics(ens)["test"]["avg"], abs=1e-9)
    bundle = tmp_path / "img"
    res = runner.invoke(
        app,
        ["index", "build", "--run", str(ens), "--modality", "image", "--out", str(bundle), "--binary", "itq",
         "--bits", "16", "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["count"] == 50
    res = runner.invoke(
        app, ["search", "text", "--query-id", "190", "--run", str(ens), "--index", str(bundle), "-k", "3", "--json"]
    )
    assert res.exit_code == 0, res.output
    hits = json.loads(res.stdout)["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    # The top hit is the nearest test image to that text under the hand-made ensemble embedding.
    ds = load_dataset(load_config(runs["config"]).data)
    row = list(ds.test.txt_items).index("190")
    parts = [encode_split(load_run(runs[name]).model, ds.test) for name in ("plain0", "plain1000")]
    u = torch.cat([torch.nn.functional.normalize(p[0], dim=1) for p in parts], dim=1)  # (n, 2D)
    v = torch.cat([torch.nn.functional.normalize(p[1][row : row + 1], dim=1) for p in parts], dim=1)  # (1, 2D)
    assert hits[0]["item"] == ds.test.img_items[int((u @ v.T).argmax())]
    res = runner.invoke(app, ["index", "build", "--run", str(ens), "--modality", "image", "--out",
                              str(tmp_path / "l"), "--binary", "learned"])  # fmt: skip
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "no hash layer" in res.output


def _principal_cosines(model, ds, split: str, k: int) -> torch.Tensor:
    """Image-text cosines of ``split`` after projecting ``model``'s L2-normalised embeddings onto the first k
    principal axes of its train embeddings (numpy SVD, computed here independently of the model's own fit)."""

    def unit(split_rows) -> tuple[torch.Tensor, torch.Tensor]:
        u, v = encode_split(model, split_rows)
        return torch.nn.functional.normalize(u, dim=1).double(), torch.nn.functional.normalize(v, dim=1).double()

    joined = torch.cat(unit(ds.train)).numpy()
    _, _, vt = np.linalg.svd(joined - joined.mean(axis=0), full_matrices=False)
    u, v = (torch.nn.functional.normalize(x @ torch.from_numpy(vt[:k].T), dim=1) for x in unit(getattr(ds, split)))
    return u @ v.T


def test_projected_ensemble_ranks_by_its_principal_axes(runs):
    proj = load_run(runs["proj"])
    assert isinstance(proj.model, DSCMREnsemble) and proj.model.embed_dim == 8
    assert json.loads((runs["proj"] / "model.json").read_text())["dim"] == 8
    w = proj.model.projection
    assert w is not None and w.shape == (32, 8)
    torch.testing.assert_close(w.T @ w, torch.eye(8), atol=1e-5, rtol=0)  # orthonormal axes
    ds = load_dataset(load_config(runs["config"]).data)
    u, v = encode_split(proj.model, ds.test)
    assert u.shape == (len(ds.test), 8)
    torch.testing.assert_close(u.norm(dim=1), torch.ones(len(u)), atol=1e-6, rtol=0)
    ens = load_run(runs["ens"]).model  # the same members (same seeds): only the projection differs
    expected = _principal_cosines(ens, ds, "test", 8)
    torch.testing.assert_close((u @ v.T).double(), expected, atol=1e-4, rtol=0)
    assert _metrics(runs["proj"])["test"]["avg"] == pytest.approx(cross_modal_map(u, v, ds.test.labels)["avg"])
    ev = runner.invoke(app, ["eval", str(runs["proj"]), "--json"])
    assert ev.exit_code == 0 and json.loads(ev.stdout)["avg"] == pytest.approx(_metrics(runs["proj"])["test"]["avg"])


def test_one_network_with_a_projection_is_a_projected_one_member_ensemble(runs, tmp_path):
    cfg = load_config(runs["config"], ["model.project_dim=8"])
    result = train(cfg, tmp_path / "one", progress=False)
    assert [m["seed"] for m in result.members] == [0]
    member = tmp_path / "one" / "members" / "0"
    assert _sha(member / "model.safetensors") == _sha(runs["plain0"] / "model.safetensors")  # the plain run
    model = load_run(tmp_path / "one").model
    assert isinstance(model, DSCMREnsemble) and model.embed_dim == 8 and model.spec.size == 1
    ds = load_dataset(cfg.data)
    expected = _principal_cosines(load_run(runs["plain0"]).model, ds, "test", 8)
    pu, pv = encode_split(model, ds.test)
    torch.testing.assert_close((pu @ pv.T).double(), expected, atol=1e-4, rtol=0)
    assert _metrics(tmp_path / "one")["test"]["avg"] == pytest.approx(cross_modal_map(pu, pv, ds.test.labels)["avg"])


def test_a_full_width_projection_keeps_every_cosine(runs):
    ds = load_dataset(load_config(runs["config"]).data)
    u, v = encode_split(load_run(runs["ens"]).model, ds.test)
    pu, pv = encode_split(load_run(runs["proj32"]).model, ds.test)  # 32 = 2 x 16 axes: a rotation
    torch.testing.assert_close(pu @ pv.T, u @ v.T, atol=1e-5, rtol=0)


def test_projected_ensemble_indexes_and_searches(runs, tmp_path):
    bundle = tmp_path / "img"
    res = runner.invoke(app, ["index", "build", "--run", str(runs["proj"]), "--modality", "image", "--out",
                              str(bundle), "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["dim"] == 8
    res = runner.invoke(app, ["search", "text", "--query-id", "190", "--run", str(runs["proj"]), "--index",
                              str(bundle), "-k", "1", "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    ds = load_dataset(load_config(runs["config"]).data)
    row = list(ds.test.txt_items).index("190")
    top = int(_principal_cosines(load_run(runs["ens"]).model, ds, "test", 8)[:, row].argmax())
    assert json.loads(res.stdout)["hits"][0]["item"] == ds.test.img_items[top]


def test_projection_misuse_is_refused():
    member = DSCMR(img_dim=4, txt_dim=3, num_classes=2, img_hidden=(8,), txt_hidden=(8,), common_dim=4)
    with pytest.raises(ValueError, match="no projection"):
        DSCMREnsemble([member, member]).fit_projection(torch.zeros(5, 4), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="needs at least 6 training rows"):
        DSCMREnsemble([member, member], dim=6).fit_projection(torch.zeros(2, 4), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="dim must be an integer from 0 to 8"):
        DSCMREnsemble([member, member], dim=9)
    # A model description written before projections existed (no "dim") still loads, unprojected.
    old = DSCMREnsemble([member, member]).spec.to_dict()
    del old["dim"]
    assert EnsembleSpec.from_dict(old).dim == 0


def test_a_projection_wider_than_the_training_rows_is_refused_before_training(tmp_path, tiny_config):
    cfg = load_config(
        tiny_config, ["model.common_dim=32", "train.ensemble=16", "model.project_dim=321"]
    )  # 160 train pairs: 320 rows
    with pytest.raises(ConfigError, match="needs at least 321 training rows.*gives 320"):
        train(cfg, tmp_path / "r", progress=False)
    assert not (tmp_path / "r" / "members").exists()


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["model.project_dim=17"], "wider than the embedding's 1 x 16 = 16 dimensions"),
        (["train.ensemble=2", "model.project_dim=33"], "wider than the embedding's 2 x 16 = 32 dimensions"),
        (["train.ensemble=2", "model.project_dim=-1"], "must be an integer >= 0"),
        (["model.project_dim=4", "model.hash_bits=16"], "model.project_dim > 0 has no learned hash layer"),
        (["model.project_dim=4", "data.text_train_layers=1"], "model.project_dim > 0 does not support trainable"),
    ],
)
def test_bad_projections_are_one_line(tmp_path, tiny_config, overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(tiny_config, overrides)
    args = ["train", "--config", str(tiny_config), "--out", str(tmp_path / "r")]
    res = runner.invoke(app, [*args, *[a for o in overrides for a in ("--set", o)]])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and res.output.startswith("error: ")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("train.ensemble=0", "train.ensemble must be an integer from 1 to 16"),
        ("train.ensemble=17", "train.ensemble must be an integer from 1 to 16"),
        ("train.ensemble=true", "expected an integer"),
        ("train.ensemble=1.5", "expected an integer"),
    ],
)
def test_bad_ensemble_values_are_one_line(tmp_path, tiny_config, override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(tiny_config, [override])
    res = runner.invoke(app, ["train", "--config", str(tiny_config), "--out", str(tmp_path / "r"), "--set", override])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["data.image_train_blocks=1"], "trainable encoder tops"),
        (["data.text_train_layers=1"], "trainable encoder tops"),
        (["model.hash_bits=16"], "no learned hash layer"),
    ],
)
def test_unsupported_combinations_are_refused(tiny_config, overrides, match):
    load_config(tiny_config, overrides)  # fine with one model
    with pytest.raises(ConfigError, match=match):
        load_config(tiny_config, [*overrides, "train.ensemble=2"])


def test_ddp_with_an_ensemble_is_refused(tmp_path, tiny_config):
    args = ["train", "--config", str(tiny_config), "--out", str(tmp_path / "r"), "--ddp", "2"]
    res = runner.invoke(app, [*args, "--set", "train.ensemble=2"])
    assert res.exit_code == 2 and res.output.strip().startswith("error: --ddp trains one model")


def test_resume_keeps_finished_members_and_matches_uninterrupted(tmp_path, tiny_config):
    cfg = load_config(tiny_config, [*EPOCHS, "train.ensemble=2", "train.checkpoint_every=1"])
    full = train(cfg, tmp_path / "full", progress=False)

    def kill(epoch, record):
        if record["member"] == 1 and epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, tmp_path / "killed", progress=False, on_epoch_end=kill)
    killed = tmp_path / "killed"
    assert not (killed / "metrics.json").exists() and not (killed / "model.safetensors").exists()
    assert (killed / "members" / "0" / "metrics.json").is_file()
    assert not (killed / "members" / "0" / "train_state.json").exists()  # finished: its state is deleted
    assert (killed / "members" / "1" / "train_state.json").is_file()
    member0 = _sha(killed / "members" / "0" / "model.safetensors")
    seen: list[tuple[int, int]] = []
    resumed = train(cfg, killed, progress=False, resume=True, on_epoch_end=lambda e, r: seen.append((r["member"], e)))
    assert seen == [(1, 3), (1, 4)]  # member 0 kept, member 1 resumed after its epoch 2
    assert _sha(killed / "members" / "0" / "model.safetensors") == member0
    assert resumed.val == full.val and resumed.test == full.test
    assert [m["best_epoch"] for m in resumed.members] == [m["best_epoch"] for m in full.members]
    assert _sha(killed / "model.safetensors") == _sha(tmp_path / "full" / "model.safetensors")


def test_resume_errors_and_fresh_restart(tmp_path, tiny_config):
    cfg = load_config(tiny_config, [*EPOCHS, "train.ensemble=2"])
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(cfg, tmp_path / "none", progress=False, resume=True)

    def kill(epoch, record):
        if record["member"] == 1:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, tmp_path / "r", progress=False, on_epoch_end=kill)
    stale = tmp_path / "r" / "members" / "9"
    stale.mkdir()  # left by an earlier attempt: a fresh start clears members/
    train(cfg, tmp_path / "r", progress=False)
    assert not stale.exists() and _metrics(tmp_path / "r")["ensemble"]["size"] == 2
    # A finished member whose config is not this run's member config is refused on resume.
    (tmp_path / "r" / "metrics.json").unlink()
    other = load_config(tiny_config, [*EPOCHS, "train.lr=0.01", "train.ensemble=2"])
    with pytest.raises(CheckpointError, match="another config"):
        train(other, tmp_path / "r", progress=False, resume=True)
    assert member_config(cfg, 1).train.seed == 1000 and member_config(cfg, 1).train.ensemble == 1


def test_cli_train_reports_the_members(tmp_path, tiny_config):
    out = tmp_path / "r"
    args = ["train", "--config", str(tiny_config), "--out", str(out), "--set", "train.epochs=2"]
    res = runner.invoke(app, [*args, "--set", "train.ensemble=2"])
    assert res.exit_code == 0, res.output
    members = _metrics(out)["ensemble"]["members"]
    epochs = ", ".join(str(m["best_epoch"]) for m in members)
    assert f"ensemble of 2: selected epochs {epochs}; member val avg" in res.stdout
    assert f"ensemble val avg {_metrics(out)['val']['avg']:.4f}" in res.stdout
    res = runner.invoke(app, [*args, "--set", "train.ensemble=2"])  # a finished run is not overwritten
    assert res.exit_code == 2 and "already holds a finished run" in res.output
