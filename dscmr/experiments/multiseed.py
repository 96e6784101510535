"""Multi-seed runs: train and evaluate one config once per seed, resumably, optionally in parallel processes.

Layout of an output folder (``bench map``; ``compare`` and ``ablate`` nest one per variant or cell)::

    out/
      config.toml/.json             the resolved base config (:meth:`dscmr.train.RunDir.save_config`)
      runs/seed-<s>/                the training run folder of seed s (``dscmr train`` layout)
      results/seed-<s>.json         the finished seed's result; written atomically, last: it marks the seed done
      runs/seed-<s>/queries.npz     per-query test APs of both directions (for the bootstrap over queries)
      report.json, report.md, *.png

The seed drives weight initialisation and data order (``train.seed``) and, with ``vary_split``, the validation
split (``data.val_seed``); every result records both. A rerun skips seeds whose result file exists and resumes a
seed whose training was interrupted from its last checkpoint. A result written for a different config is an error,
never silently mixed in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dscmr.config import Config, to_dict
from dscmr.data import FeatureDataset, load_dataset
from dscmr.errors import CheckpointError, ConfigError, UsageError
from dscmr.eval.metrics import average_precisions, cross_modal_map, pr_curve
from dscmr.experiments.stats import summarize
from dscmr.train import RunDir, encode_split, load_run, train
from dscmr.utils.io import atomic_write_json, atomic_write_with

DIRECTIONS = ("img2txt", "txt2img")
METRIC_NAMES = ("img2txt", "txt2img", "avg")
QUERIES_FILE = "queries.npz"

log = logging.getLogger(__name__)

ResultCallback = Callable[["SeedTask", dict[str, Any]], None]


@dataclass(frozen=True)
class SeedTask:
    """One training + evaluation to run (picklable, so it can go to a worker process).

    Attributes:
        cfg: The resolved config of this run (``train.seed`` and ``data.val_seed`` already set).
        run_dir: Training run folder.
        result_path: Result JSON; its existence marks the task finished.
        data_root: Overrides ``cfg.data.root``.
        label: Human-readable name for progress lines (``seed 3``, ``cell 2 seed 1``).
        progress: Show the training progress bar.
    """

    cfg: Config
    run_dir: Path
    result_path: Path
    data_root: str | None = None
    label: str = ""
    progress: bool = False


def seed_config(cfg: Config, seed: int, *, vary_split: bool = False) -> Config:
    """``cfg`` with ``train.seed = seed`` and, with ``vary_split``, ``data.val_seed = seed``."""
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))
    if vary_split:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, val_seed=seed))
    return cfg


def seed_list(cfg: Config, n: int) -> list[int]:
    """The ``n`` seeds of a bench: ``train.seed, train.seed + 1, ...``."""
    if n < 1:
        raise UsageError(f"--seeds must be at least 1, got {n}")
    return [cfg.train.seed + i for i in range(n)]


def _result_config(cfg: Config) -> dict[str, Any]:
    """The config as recorded with a result: everything that can change it (``train.threads`` excluded)."""
    return to_dict(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=0)))


def config_fingerprint(cfg: Config) -> str:
    """SHA-256 (16 hex digits) of everything in ``cfg`` that can change a result (``train.threads`` excluded)."""
    return hashlib.sha256(json.dumps(_result_config(cfg), sort_keys=True).encode()).hexdigest()[:16]


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(stored: dict[str, Any], cfg: Config) -> list[str]:
    """Keys whose value differs between a stored result's config and ``cfg``.

    Keys present on one side only (a field added to or removed from the config schema since the result was
    written) are not differences, so results survive a new config option.
    """
    a, b = _flatten(stored), _flatten(_result_config(cfg))
    return sorted(k for k in a.keys() & b.keys() if a[k] != b[k])


def seed_tasks(
    cfg: Config,
    out_dir: Path,
    seeds: Sequence[int],
    *,
    vary_split: bool = False,
    data_root: str | None = None,
    label: str = "",
    progress: bool = False,
) -> list[SeedTask]:
    """The tasks of one config over ``seeds`` in ``out_dir`` (see the module docstring for the layout)."""
    prefix = f"{label} " if label else ""
    return [
        SeedTask(
            cfg=seed_config(cfg, s, vary_split=vary_split),
            run_dir=out_dir / "runs" / f"seed-{s}",
            result_path=out_dir / "results" / f"seed-{s}.json",
            data_root=data_root,
            label=f"{prefix}seed {s}",
            progress=progress,
        )
        for s in seeds
    ]


# ----------------------------------------------------------------------------------------------------------------
# One seed (runs in the main process with jobs=1, in a worker process otherwise)

_DATASETS: dict[tuple[str, str | None], FeatureDataset] = {}


def _dataset(cfg: Config, data_root: str | None) -> FeatureDataset:
    key = (json.dumps(to_dict(cfg.data), sort_keys=True), data_root)
    if key not in _DATASETS:
        if len(_DATASETS) >= 4:
            _DATASETS.clear()
        _DATASETS[key] = load_dataset(cfg.data, data_root)
    return _DATASETS[key]


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    atomic_write_with(path, lambda p: p.write_bytes(buf.getvalue()))


def load_query_aps(result: dict[str, Any], *, hamming: bool = False) -> dict[str, np.ndarray]:
    """Per-query test APs ``{"img2txt": (nq,), "txt2img": (nq,)}`` of a finished seed's result."""
    with np.load(Path(result["run_dir"]) / QUERIES_FILE) as z:
        prefix = "hamming_" if hamming else ""
        return {d: z[prefix + d] for d in DIRECTIONS}


@torch.no_grad()
def run_seed(task: SeedTask) -> dict[str, Any]:
    """Train (or resume, or reuse a finished run folder) and evaluate one seed; write and return its result."""
    cfg = task.cfg
    ds = _dataset(cfg, task.data_root)
    run_dir = task.run_dir
    folder = RunDir(run_dir)
    if not folder.finished or not _same_config(run_dir, cfg):
        resume = folder.resumable and _same_config(run_dir, cfg)
        with torch.enable_grad():
            train(cfg, run_dir, dataset=ds, resume=resume, progress=task.progress)
    metrics = folder.read_metrics()
    run = load_run(run_dir)
    k, chunk = cfg.eval.k, cfg.eval.chunk_size
    held_out = ds.test if len(ds.test) else ds.val  # a dataset without a test split reports val
    u, v = encode_split(run.model, held_out)  # (n, D) each
    labels = held_out.labels
    arrays = {
        "img2txt": average_precisions(u, v, labels, labels, k=k, chunk_size=chunk),
        "txt2img": average_precisions(v, u, labels, labels, k=k, chunk_size=chunk),
    }
    test = {d: float(arrays[d].mean()) for d in DIRECTIONS}
    test["avg"] = (test["img2txt"] + test["txt2img"]) / 2
    pr = {
        "img2txt": pr_curve(u, v, labels, labels, chunk_size=chunk).to_dict(),
        "txt2img": pr_curve(v, u, labels, labels, chunk_size=chunk).to_dict(),
    }
    hamming = None
    if run.model.hash_bits > 0:
        from dscmr.indexing.from_run import learned_layer
        from dscmr.indexing.hashing import hamming_codes

        hasher = learned_layer(run)
        hu, hv = hamming_codes(hasher, u), hamming_codes(hasher, v)  # (n, bits) +-1
        hamming = cross_modal_map(hu, hv, labels, k=k, metric="hamming", chunk_size=chunk)
        arrays["hamming_img2txt"] = average_precisions(hu, hv, labels, labels, k=k, metric="hamming")
        arrays["hamming_txt2img"] = average_precisions(hv, hu, labels, labels, k=k, metric="hamming")
    _write_npz(run_dir / QUERIES_FILE, arrays)
    result = {
        "label": task.label,
        "seed": cfg.train.seed,
        "seeds": {"train": cfg.train.seed, "val_split": cfg.data.val_seed},
        "fingerprint": config_fingerprint(cfg),
        "config": _result_config(cfg),
        "run_dir": str(run_dir),
        "test": test,
        "split": "test" if len(ds.test) else "val",
        "val": metrics.get("val", {}),
        "hamming": hamming,
        "best_epoch": metrics.get("best_epoch"),
        "epochs_run": metrics.get("epochs_run"),
        "train_seconds": metrics.get("train_seconds"),
        "pr": pr,
    }
    atomic_write_json(task.result_path, result)
    return result


def _same_config(run_dir: Path, cfg: Config) -> bool:
    try:
        saved = RunDir(run_dir).read_config_dict()
    except CheckpointError:
        return False
    saved.get("train", {})["threads"] = 0
    return not config_differences(saved, cfg)


def _init_worker(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass


def cpu_count() -> int:
    """CPU cores available to this process."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def threads_per_job(jobs: int, *, cores: int | None = None) -> int:
    """Torch threads for each of ``jobs`` worker processes: ``max(1, cores // jobs)``."""
    return max(1, (cores or cpu_count()) // max(1, jobs))


def load_result(task: SeedTask) -> dict[str, Any] | None:
    """The stored result of a finished task, or None when it has not finished.

    Raises:
        ConfigError: The stored result was produced by a different config or seed.
    """
    if not task.result_path.is_file():
        return None
    try:
        result = json.loads(task.result_path.read_text())
    except json.JSONDecodeError:
        return None  # cannot happen with atomic writes; treat as unfinished
    if isinstance(result.get("config"), dict):
        diff = config_differences(result["config"], task.cfg)
    else:
        diff = [] if result.get("fingerprint") == config_fingerprint(task.cfg) else ["(fingerprint)"]
    if diff:
        raise ConfigError(
            f"{task.result_path} holds a result for a different config (differs in {', '.join(diff[:5])}); "
            "use another --out or delete that folder"
        )
    return result


def run_tasks(
    tasks: Sequence[SeedTask], *, jobs: int = 1, on_result: ResultCallback | None = None
) -> list[dict[str, Any]]:
    """Run every unfinished task and return all results in task order.

    Finished tasks (their result JSON exists) are loaded, not rerun. With ``jobs > 1`` tasks run in ``spawn``
    worker processes, each with ``max(1, cores // jobs)`` torch threads (and at most ``train.threads`` when that
    is set), so the cores are not oversubscribed.

    Args:
        tasks: What to run.
        jobs: Parallel worker processes.
        on_result: Called in the main process with ``(task, result)`` as each new task finishes (after a
            ``task.label: test mAP ...`` line is logged at INFO).
    """
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {jobs}")
    results: dict[int, dict[str, Any]] = {}
    pending: list[int] = []
    for i, task in enumerate(tasks):
        done = load_result(task)
        if done is None:
            pending.append(i)
        else:
            results[i] = done
    if jobs == 1 or len(pending) <= 1:
        for i in pending:
            results[i] = run_seed(tasks[i])
            _finished(tasks[i], results[i], on_result)
    else:
        workers = min(jobs, len(pending))
        threads = threads_per_job(jobs)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(threads,)
        ) as pool:
            futures = {pool.submit(run_seed, _with_threads(tasks[i], threads)): i for i in pending}
            for fut in as_completed(futures):
                i = futures[fut]
                results[i] = fut.result()
                _finished(tasks[i], results[i], on_result)
    return [results[i] for i in range(len(tasks))]


def _finished(task: SeedTask, result: dict[str, Any], on_result: ResultCallback | None) -> None:
    """Log one line for a newly finished task, then call ``on_result``."""
    t = result["test"]
    log.info(
        "%s: test mAP avg %.4f (img->txt %.4f, txt->img %.4f; %.1f s)",
        task.label,
        t["avg"],
        t["img2txt"],
        t["txt2img"],
        result.get("train_seconds") or 0.0,
    )
    if on_result is not None:
        on_result(task, result)


def _with_threads(task: SeedTask, threads: int) -> SeedTask:
    t = min(task.cfg.train.threads, threads) if task.cfg.train.threads > 0 else threads
    cfg = dataclasses.replace(task.cfg, train=dataclasses.replace(task.cfg.train, threads=t))
    return dataclasses.replace(task, cfg=cfg, progress=False)


# ----------------------------------------------------------------------------------------------------------------
# Aggregation


def aggregate(results: Sequence[dict[str, Any]], *, scale: float = 1.0) -> dict[str, Any]:
    """Per-metric summaries (mean, std, t and bootstrap 95% CIs, values) over seeds.

    Returns:
        ``{"metrics": {name: summary}, "hamming": {name: summary} | None}`` with values times ``scale``.
    """
    out: dict[str, Any] = {
        "metrics": {m: summarize([r["test"][m] * scale for r in results]).to_dict() for m in METRIC_NAMES},
        "hamming": None,
    }
    if results and all(r.get("hamming") for r in results):
        out["hamming"] = {m: summarize([r["hamming"][m] * scale for r in results]).to_dict() for m in METRIC_NAMES}
    return out


def bench_map(
    cfg: Config,
    out_dir: str | Path,
    *,
    seeds: int = 5,
    vary_split: bool = False,
    jobs: int = 1,
    data_root: str | None = None,
    config_info: dict[str, Any] | None = None,
    progress: bool = False,
    on_result: ResultCallback | None = None,
    write_report: bool = True,
) -> dict[str, Any]:
    """Train and evaluate ``cfg`` once per seed and summarise test mAP over seeds.

    Args:
        cfg: Resolved base config; seeds are ``cfg.train.seed + i``.
        out_dir: Output folder (see the module docstring); rerunning resumes.
        seeds: Number of seeds.
        vary_split: Also vary the validation split (``data.val_seed = seed``).
        jobs: Parallel worker processes.
        data_root: Overrides ``cfg.data.root``.
        config_info: What to record as the report's ``config`` (e.g. the file and the overrides).
        progress: Show training progress bars (``jobs = 1`` only).
        on_result: Called as each new seed finishes.
        write_report: Write ``report.json``, ``report.md`` and the PNGs.

    Returns:
        The report: ``config``, ``seeds``, ``metrics`` (fractions; mean, std, ci95, ci95_bootstrap, values),
        ``hamming`` (when the model has a hash layer), ``seeds_for_1pt`` and ``runs``.
    """
    from dscmr.experiments.stats import seeds_needed

    out = Path(out_dir)
    seed_values = seed_list(cfg, seeds)
    out.mkdir(parents=True, exist_ok=True)
    RunDir(out).save_config(cfg)
    tasks = seed_tasks(cfg, out, seed_values, vary_split=vary_split, data_root=data_root, progress=progress)
    results = run_tasks(tasks, jobs=jobs, on_result=on_result)
    agg = aggregate(results)
    sd_pts = agg["metrics"]["avg"]["std"] * 100
    report: dict[str, Any] = {
        "config": config_info or {"resolved": to_dict(cfg)},
        "seeds": seed_values,
        "vary_split": vary_split,
        "unit": "mAP as a fraction (0-1); seeds_for_1pt is for 1 mAP point = 0.01",
        **agg,
        # Seeds per variant for a paired t-test to detect +1 mAP point, assuming the paired difference has sd
        # sqrt(2) * the per-seed sd (no correlation between variants; pairing usually does better).
        "seeds_for_1pt": seeds_needed(effect=1.0, sd=sd_pts * 2**0.5) if len(results) > 1 else None,
        "runs": [
            {k: r[k] for k in ("seed", "seeds", "test", "hamming", "best_epoch", "epochs_run", "train_seconds")}
            for r in results
        ],
        "out": str(out),
    }
    if write_report:
        from dscmr.experiments.report import write_bench_report

        write_bench_report(out, report, pr=results[0]["pr"])
    return report
