"""Training on 2 gloo processes: the same loss and gradients as one process, and the same run folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dscmr.config import load_config
from dscmr.losses import DSCMRLoss
from dscmr.models import DSCMR, DSCMRSpec
from dscmr.train import train
from dscmr.train.distributed import ShardedForward, context, gather_rows, local_slice, shard_sizes
from tests.conftest import make_clustered_features

# (name, global batch, norm, dtype): an even and an uneven split, both norms, float32 and float64
CASES = [
    ("even-mean_l2", 100, "mean_l2", torch.float32),
    ("uneven-frobenius", 101, "frobenius", torch.float32),
    ("even-mean_l2-f64", 100, "mean_l2", torch.float64),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _case(
    n: int, norm: str, dtype: torch.dtype, *, hash_bits: int = 0
) -> tuple[DSCMR, DSCMRLoss, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A seeded model, loss and batch (multi-hot labels, so J2's similarities are not just class equality)."""
    torch.manual_seed(0)
    spec = DSCMRSpec(16, 8, 5, img_hidden=(32,), txt_hidden=(32,), common_dim=12, hash_bits=hash_bits)
    model = spec.build().to(dtype)
    g = torch.Generator().manual_seed(1)
    img = torch.randn(n, 16, generator=g, dtype=dtype)
    txt = torch.randn(n, 8, generator=g, dtype=dtype)
    labels = (torch.rand(n, 5, generator=g) < 0.3).to(dtype)
    labels[torch.arange(n), torch.randint(5, (n,), generator=g)] = 1  # every row has a label
    return model, DSCMRLoss(alpha=0.5, beta=0.1, norm=norm), img, txt, labels


def _loss_and_grads(forward, model: DSCMR, loss_fn: DSCMRLoss, img, txt, labels) -> dict[str, torch.Tensor]:
    model.train()
    terms = loss_fn(forward(img, txt), labels)
    terms.total.backward()
    out = {"loss": terms.total.detach(), "j2": terms.discrimination.detach()}
    out.update({f"grad.{k}": p.grad.detach().clone() for k, p in model.named_parameters()})
    return out


def _worker(rank: int, world: int, port: int, out_dir: str, config: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {}
        for name, n, norm, dtype in CASES:
            model, loss_fn, img, txt, labels = _case(n, norm, dtype)
            forward = ShardedForward(model, context())
            results[name] = _loss_and_grads(forward, model, loss_fn, img, txt, labels)
        model, loss_fn, img, txt, labels = _case(100, "mean_l2", torch.float32, hash_bits=8)
        results["hash"] = _loss_and_grads(ShardedForward(model, context()), model, loss_fn, img, txt, labels)
        x = torch.arange(float(3 + rank)).unsqueeze(1).requires_grad_()  # 3 rows on rank 0, 4 on rank 1
        gathered = gather_rows(x, [3, 4])
        (gathered.squeeze(1) * torch.arange(7.0)).sum().backward()  # every rank's loss weighs row j by j
        results["gather"] = {"rows": gathered.detach(), "grad": x.grad}
        res = train(load_config(config), Path(out_dir) / f"run{rank}", progress=False)  # each rank its own --out
        results["train"] = {"best_epoch": res.best_epoch, "val": res.val, "history": res.history}
        results["resumed"] = _killed_and_resumed(load_config(config), Path(out_dir) / "killed")
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


TINY_TOML = """
[data]
format = "npz"
root = "{root}"
[model]
img_hidden = [32]
txt_hidden = [32]
common_dim = 16
dropout = 0.3
[train]
epochs = 3
checkpoint_every = 1
batch_size = 32
lr = 3e-3
threads = 1
"""


class Killed(Exception):
    pass


def _killed_and_resumed(cfg, run_dir: Path) -> list[dict[str, float]]:
    """Train (both ranks, one folder), stop every rank after epoch 2, resume: the resumed run's history."""

    def kill_after_2(epoch: int, record: dict[str, float]) -> None:
        if epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, run_dir, progress=False, on_epoch_end=kill_after_2)
    dist.barrier()  # as a relaunch would: rank 0 has written the state before anyone reads it
    return train(cfg, run_dir, progress=False, resume=True).history


@pytest.fixture(scope="module")
def ddp_out(tmp_path_factory) -> Path:
    """The folder the 2 spawned ranks wrote into: their results, and rank 0's run folder."""
    out = tmp_path_factory.mktemp("ddp")
    img, txt, labels = make_clustered_features(240, 4)
    np.savez(out / "tiny.npz", img=img, txt=txt, labels=labels, split=["train"] * 160 + ["val"] * 30 + ["test"] * 50)
    (out / "tiny.toml").write_text(TINY_TOML.format(root=out / "tiny.npz"))
    mp.spawn(_worker, args=(2, _free_port(), str(out), str(out / "tiny.toml")), nprocs=2, join=True)
    return out


@pytest.fixture(scope="module")
def ddp_results(ddp_out) -> list[dict[str, dict[str, Any]]]:
    return [torch.load(ddp_out / f"rank{r}.pt") for r in range(2)]


def test_shard_sizes_cover_the_batch_in_order():
    assert shard_sizes(101, 2) == [51, 50] and shard_sizes(3, 4) == [1, 1, 1, 0]
    sizes = shard_sizes(10, 3)
    rows = [list(range(10))[local_slice(sizes, r)] for r in range(3)]
    assert sum(rows, []) == list(range(10)) and sizes == [4, 3, 3]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_two_ranks_equal_one_process(ddp_results, case):
    name, n, norm, dtype = case
    model, loss_fn, img, txt, labels = _case(n, norm, dtype)
    single = _loss_and_grads(model, model, loss_fn, img, txt, labels)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    for rank in range(2):
        got = ddp_results[rank][name]
        assert got.keys() == single.keys()
        for key, want in single.items():
            torch.testing.assert_close(got[key], want, atol=tol, rtol=0, msg=f"rank {rank} {name} {key}")
    # the check can fail: half the batch alone gives another loss and gradient
    half_model, _, _, _, _ = _case(n, norm, dtype)
    half = _loss_and_grads(half_model, half_model, loss_fn, img[: n // 2], txt[: n // 2], labels[: n // 2])
    assert abs(float(half["j2"] - single["j2"])) > 1e-3


def test_hash_layer_trains_in_step_on_both_ranks(ddp_results):
    # BatchNorm statistics are per rank (no SyncBatchNorm on CPU), so no equality with one process; but DDP
    # still gives every parameter, the hash layer's included, the same averaged gradient on both ranks.
    a, b = ddp_results[0]["hash"], ddp_results[1]["hash"]
    grads = [k for k in a if k.startswith("grad.hash")]
    assert grads and all(torch.equal(a[k], b[k]) for k in a if k.startswith("grad."))
    assert torch.isfinite(a["loss"]) and a["loss"] == b["loss"]


def test_gather_rows_backward_sums_every_rank(ddp_results):
    for rank, (lo, hi) in enumerate([(0, 3), (3, 7)]):
        got = ddp_results[rank]["gather"]
        assert torch.equal(got["rows"].squeeze(1), torch.tensor([0.0, 1, 2, 0, 1, 2, 3]))
        assert torch.equal(got["grad"].squeeze(1), 2 * torch.arange(lo, hi, dtype=torch.float32))  # 2 ranks


def test_only_rank_0_writes_and_every_rank_gets_the_result(ddp_out, ddp_results):
    # each rank was given its own run folder: rank 1's must not exist
    assert not (ddp_out / "run1").exists()
    assert {"metrics.json", "model.safetensors", "train_state.json"} <= set(_listing(ddp_out / "run0"))
    metrics = json.loads((ddp_out / "run0" / "metrics.json").read_text())
    for rank in range(2):
        got = ddp_results[rank]["train"]
        assert got["best_epoch"] == metrics["best_epoch"] and got["history"] == metrics["history"]


def test_ddp_resume_matches_uninterrupted(ddp_results):
    # dropout on: every rank's masks come from (seed, rank, epoch), so a resumed run draws the same ones
    for rank in range(2):
        assert ddp_results[rank]["resumed"] == ddp_results[rank]["train"]["history"]


def _listing(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir())


def test_ddp_run_folder_matches_single_process(tmp_path, tiny_config):
    overrides = ["train.epochs=4", "train.checkpoint_every=2"]
    single = train(load_config(tiny_config, overrides), tmp_path / "one", progress=False)
    cmd = [sys.executable, "-m", "dscmr.cli.main", "train", "--ddp", "2", "--config", str(tiny_config)]
    cmd += ["--out", str(tmp_path / "two"), "--json"] + [a for o in overrides for a in ("--set", o)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "DSCMR_PROGRESS": "0"})
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)  # rank 0 alone prints: one JSON object
    assert _listing(tmp_path / "two") == _listing(tmp_path / "one")
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["best_epoch"] == summary["best_epoch"] == single.best_epoch
    assert metrics["val"]["avg"] == pytest.approx(single.val["avg"], abs=1e-3)
    losses = [h["loss"] for h in metrics["history"]]
    assert losses == pytest.approx([h["loss"] for h in single.history], abs=1e-4)
    assert json.loads((tmp_path / "two" / "config.json").read_text())["train"]["epochs"] == 4


def _bad_config(tmp_path: Path, tiny_config: Path) -> Path:
    bad = tmp_path / "bad.toml"
    bad.write_text(tiny_config.read_text().replace("tiny.npz", "missing.npz"))
    return bad


@pytest.mark.parametrize("ddp", ["2", "-1"])
def test_cli_ddp_user_error_is_one_line_before_launching(tmp_path, tiny_config, ddp):
    from typer.testing import CliRunner

    from dscmr.cli.main import app

    args = ["train", "--ddp", ddp, "--config", str(_bad_config(tmp_path, tiny_config)), "--out", str(tmp_path / "r")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert ("missing.npz" if ddp == "2" else "--ddp") in lines[0]
    assert not (tmp_path / "r").exists()


def test_torchrun_rank_error_is_printed_once(tmp_path, tiny_config):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "dscmr.train"]
    cmd += ["--config", str(_bad_config(tmp_path, tiny_config)), "--out", str(tmp_path / "r")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "missing.npz" in errors[0], proc.stderr  # rank 0 only
    assert not (tmp_path / "r").exists()


def test_module_entry_without_torchrun_trains_in_one_process(tmp_path, tiny_config, capsys):
    from dscmr.train.__main__ import main

    code = main(["--config", str(tiny_config), "--out", str(tmp_path / "r"), "--set", "train.epochs=2", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["best_epoch"] == summary["best_epoch"]
    assert main(["--config", str(tiny_config), "--out", str(tmp_path / "r")]) == 2  # a finished run: one error
    assert capsys.readouterr().err.startswith("error: ") and not dist.is_initialized()
