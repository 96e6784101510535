"""Multi-seed runner: results per seed, resume without rerunning finished seeds, config checks, parallel jobs."""

from __future__ import annotations

import json

import pytest

from dscmr.config import load_config
from dscmr.errors import ConfigError
from dscmr.experiments import multiseed
from dscmr.experiments.multiseed import bench_map, threads_per_job


class _Stop(Exception):
    pass


def _counting_train(monkeypatch):
    calls = []
    real = multiseed.train

    def counted(cfg, run_dir, **kw):
        calls.append(cfg.train.seed)
        return real(cfg, run_dir, **kw)

    monkeypatch.setattr(multiseed, "train", counted)
    return calls


def test_resume_does_not_rerun_finished_seeds(tmp_path, tiny_config, monkeypatch):
    cfg = load_config(tiny_config)
    out = tmp_path / "bench"
    calls = _counting_train(monkeypatch)
    finished = []

    def kill_after_two(task, result):
        finished.append(result["seed"])
        if len(finished) == 2:
            raise _Stop  # what a kill after the second seed leaves behind

    with pytest.raises(_Stop):
        bench_map(cfg, out, seeds=4, on_result=kill_after_two)
    assert calls == [0, 1]
    stamps = {s: (out / "results" / f"seed-{s}.json").stat().st_mtime_ns for s in (0, 1)}
    assert not (out / "results" / "seed-2.json").exists()

    calls.clear()
    report = bench_map(cfg, out, seeds=4)
    assert calls == [2, 3]  # seeds 0 and 1 were not trained again
    assert {s: (out / "results" / f"seed-{s}.json").stat().st_mtime_ns for s in (0, 1)} == stamps
    assert report["seeds"] == [0, 1, 2, 3] and report["metrics"]["avg"]["n"] == 4

    calls.clear()
    again = bench_map(cfg, out, seeds=4)
    assert calls == [] and again["metrics"] == report["metrics"]


def test_interrupted_training_resumes_from_checkpoint(tmp_path, tiny_config, monkeypatch):
    cfg = load_config(tiny_config)
    out = tmp_path / "bench"
    resumed = []
    real = multiseed.train

    def crash_mid_run(cfg, run_dir, **kw):
        if not kw.get("resume"):

            def stop(epoch, record):
                if epoch == 3:
                    raise _Stop

            return real(cfg, run_dir, on_epoch_end=stop, **kw)
        resumed.append(cfg.train.seed)
        return real(cfg, run_dir, **kw)

    monkeypatch.setattr(multiseed, "train", crash_mid_run)
    with pytest.raises(_Stop):
        bench_map(cfg, out, seeds=1, write_report=False)
    report = bench_map(cfg, out, seeds=1, write_report=False)
    assert resumed == [0] and report["runs"][0]["epochs_run"] == 6

    monkeypatch.setattr(multiseed, "train", real)
    fresh = bench_map(cfg, tmp_path / "fresh", seeds=1, write_report=False)
    assert fresh["metrics"]["avg"]["values"] == pytest.approx(report["metrics"]["avg"]["values"])


def test_result_records_seeds_and_refuses_other_config(tmp_path, tiny_config):
    cfg = load_config(tiny_config)
    out = tmp_path / "bench"
    report = bench_map(cfg, out, seeds=2, vary_split=True, write_report=False)
    r = json.loads((out / "results" / "seed-1.json").read_text())
    assert r["seeds"] == {"train": 1, "val_split": 1} and r["config"]["train"]["seed"] == 1
    assert (out / "runs" / "seed-1" / "queries.npz").is_file()
    assert report["runs"][1]["seeds"] == {"train": 1, "val_split": 1}
    other = load_config(tiny_config, ["train.lr=0.01"])
    with pytest.raises(ConfigError, match="train.lr"):
        bench_map(other, out, seeds=2, vary_split=True, write_report=False)


def test_hamming_metrics_when_configured(tmp_path, tiny_config):
    cfg = load_config(tiny_config, ["model.hash_bits=8"])
    report = bench_map(cfg, tmp_path / "bench", seeds=2)
    assert set(report["hamming"]) == {"img2txt", "txt2img", "avg"}
    assert (tmp_path / "bench" / "hamming_seeds.png").is_file()
    plain = bench_map(load_config(tiny_config), tmp_path / "plain", seeds=2, write_report=False)
    assert plain["hamming"] is None


@pytest.mark.slow
def test_parallel_jobs_match_serial(tmp_path, tiny_config):
    cfg = load_config(tiny_config)
    serial = bench_map(cfg, tmp_path / "serial", seeds=2, write_report=False)
    parallel = bench_map(cfg, tmp_path / "parallel", seeds=2, jobs=2, write_report=False)
    assert parallel["metrics"]["avg"]["values"] == pytest.approx(serial["metrics"]["avg"]["values"], abs=1e-5)


def test_threads_per_job():
    assert threads_per_job(1, cores=8) == 8
    assert threads_per_job(3, cores=8) == 2
    assert threads_per_job(16, cores=8) == 1
