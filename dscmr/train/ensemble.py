"""Seed ensembles (``train.ensemble = N > 1``): N DSCMR members trained one after the other, saved as one model.

Member ``j`` is a plain run (:func:`dscmr.train.train`) of the same config with seed ``train.seed + 1000 * j``, on
the same loaded data, in the run folder's ``members/<j>`` (:meth:`dscmr.train.RunDir.member`): it selects its own
epoch on validation with the usual early stopping, and member 0 *is* the plain run of the run's seed. The members
are then loaded together as a :class:`~dscmr.models.DSCMREnsemble`, evaluated on val and test, and written as the
run's ``model.*`` and ``metrics.json``, which ``dscmr eval``, ``index build --run``, ``search`` and ``serve`` load
like any run's.

``metrics.json`` keeps a plain run's keys, with the ensemble's val / test metrics; ``best_epoch`` and
``epochs_run`` are the largest over the members, ``train_seconds`` their sum and ``history`` is empty (each
member's is in its own folder). ``ensemble`` adds ``size`` and ``members``: each member's seed, selected epoch,
epochs run, seconds and val / test metrics. With ``model.project_dim = K`` the saved model also holds the
projection onto the K principal axes of its training embeddings (:meth:`~dscmr.models.DSCMREnsemble.fit_projection`),
and val / test are measured through it; ``train.ensemble = 1`` with a projection is a one-member ensemble.

Resume (``--resume``): finished members are kept (their saved config must be this run's member config), a killed
member resumes from its training state, the rest train afresh. A finished member's training state is deleted (it
is never resumed), so the folder holds N member models but only the training state of the member in progress. A
fresh start removes the ``members/`` of an earlier, unfinished attempt first, so stale members never mix in.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from dscmr.config import Config, to_dict
from dscmr.data import FeatureDataset
from dscmr.errors import CheckpointError, ConfigError
from dscmr.models import DSCMR, DSCMREnsemble
from dscmr.models.ensemble import fit_rows
from dscmr.train.checkpoint import load_run, model_meta, save_model
from dscmr.train.distributed import DistContext
from dscmr.train.evaluate import evaluate_split
from dscmr.train.result import EpochCallback, TrainResult, write_run_metrics
from dscmr.train.run_dir import RunDir
from dscmr.utils.progress import Progress, resolve_progress

log = logging.getLogger(__name__)

SEED_STRIDE = 1000  # member j's seed is seed + SEED_STRIDE * j: disjoint across runs with seeds 0..999


# Trains one plain run (the trainer's single-network path): (config, folder, resume, progress, on_epoch_end).
TrainOne = Callable[[Config, Path, bool, Progress, EpochCallback | None], TrainResult]


def member_seed(seed: int, index: int) -> int:
    """The training seed of ensemble member ``index`` of a run with seed ``seed``."""
    return seed + SEED_STRIDE * index


def member_config(cfg: Config, index: int) -> Config:
    """The plain-run config member ``index`` trains with: the run's, with the member's seed and no ensemble."""
    train = replace(cfg.train, seed=member_seed(cfg.train.seed, index), ensemble=1)
    return replace(cfg, train=train, model=replace(cfg.model, project_dim=0))


def train_ensemble(
    cfg: Config,
    ds: FeatureDataset,
    run_dir: str | Path,
    ctx: DistContext,
    *,
    train_one: TrainOne,
    resume: bool = False,
    progress: Progress | bool | None = None,
    on_epoch_end: EpochCallback | None = None,
) -> TrainResult:
    """Train the ``cfg.train.ensemble`` members, then evaluate and save them as one model (see the module doc);
    the trainer calls it when :meth:`~dscmr.config.Config.trains_ensemble`.

    Args:
        cfg: Resolved config (its data root already resolved, as :func:`dscmr.train.train` passes it).
        ds: The loaded dataset, shared by every member.
        run_dir: The run folder.
        ctx: The process's distributed context: an ensemble trains in a single process.
        train_one: The trainer's single-network path (:func:`dscmr.train.train` passes it, so this module does
            not import the trainer).
        resume: Keep finished members and resume a killed one.
        progress: As for :func:`dscmr.train.train`; each member's reports are prefixed ``member j/N``.
        on_epoch_end: Called with ``(epoch, record)`` after each member epoch; ``record["member"]`` is ``j``.

    Raises:
        ConfigError: Under DDP (more than one process), or ``model.project_dim`` wider than the training rows.
        CheckpointError: ``resume`` without member folders, or a finished member trained with another config.
    """
    if ctx.active:
        raise ConfigError("train.ensemble > 1 trains its members one after the other in one process; drop --ddp")
    _check_projection_rows(cfg, ds)
    run = RunDir(run_dir)
    if resume and not run.members.is_dir():
        raise CheckpointError(f"nothing to resume in {run}: {run.MEMBERS}/ is missing; train without --resume")
    run.create()
    if not resume and run.members.is_dir():
        shutil.rmtree(run.members)  # an earlier, unfinished attempt: restart cleanly
    run.save_config(cfg)
    report = resolve_progress(progress)
    members = [
        _train_member(cfg, train_one, run, j, resume=resume, progress=report, on_epoch_end=on_epoch_end)
        for j in range(cfg.train.ensemble)
    ]
    return _finish(cfg, ds, run, members)


def _check_projection_rows(cfg: Config, ds: FeatureDataset) -> None:
    """Refuse, before any member trains, a projection wider than the training rows that would fit it."""
    k, rows = cfg.model.project_dim, fit_rows(len(ds.train.img), len(ds.train.txt))
    if k > rows:
        raise ConfigError(
            f"model.project_dim {k} needs at least {k} training rows to fit its axes, and this training split gives "
            f"{rows} (images plus texts); lower model.project_dim"
        )


def _train_member(
    cfg: Config,
    train_one: TrainOne,
    run: RunDir,
    index: int,
    *,
    resume: bool,
    progress: Progress,
    on_epoch_end: EpochCallback | None,
) -> dict[str, Any]:
    """Train (or keep, or resume) member ``index``; return its record for ``metrics.json``."""
    mcfg = member_config(cfg, index)
    folder = run.member(index)
    tag = f"member {index + 1}/{cfg.train.ensemble}"
    if resume and folder.config_json.is_file():
        _check_member_config(folder, mcfg, index)
    if resume and folder.finished:
        log.info(f"{tag}: finished before, kept")
    else:
        again = resume and folder.resumable
        log.info(f"{tag}: seed {mcfg.train.seed}{' (resumed)' if again else ''}")

        def tagged(done: int, total: int, description: str) -> None:
            progress(done, total, f"{tag} {description}")

        callback = None
        if on_epoch_end is not None:
            hook = on_epoch_end

            def callback(epoch: int, record: dict[str, float]) -> None:
                hook(epoch, {**record, "member": index})

        train_one(mcfg, folder.path, again, tagged, callback)
    folder.remove_state()  # a finished member is kept as it is, never resumed: its optimizer state is dead weight
    m = folder.read_metrics()
    keys = ("best_epoch", "epochs_run", "train_seconds", "val", "test")
    return {"member": index, "seed": mcfg.train.seed, **{k: m[k] for k in keys}}


def _check_member_config(folder: RunDir, mcfg: Config, index: int) -> None:
    """A member folder kept on resume must hold this run's member config (data root and threads may differ)."""

    def comparable(cfg: Config) -> dict[str, Any]:
        return to_dict(replace(cfg, data=replace(cfg.data, root=""), train=replace(cfg.train, threads=0)))

    if comparable(folder.load_config(Config)) != comparable(mcfg):
        raise CheckpointError(
            f"{folder} was trained with another config than member {index} of this run; train without --resume"
        )


def _finish(cfg: Config, ds: FeatureDataset, run: RunDir, members: list[dict[str, Any]]) -> TrainResult:
    """Load the members as one ensemble (fitting its projection on train, ``model.project_dim``), evaluate it on
    val and test, write the model and the metrics."""
    model = DSCMREnsemble([_member_model(run.member(j)) for j in range(len(members))], dim=cfg.model.project_dim)
    model.eval()
    if cfg.model.project_dim:
        model.fit_projection(torch.as_tensor(ds.train.img), torch.as_tensor(ds.train.txt))
    k, chunk = cfg.eval.k, cfg.eval.chunk_size
    val = evaluate_split(model, ds.val, k=k, chunk_size=chunk)
    held_out = "test" if len(ds.test) else "val"  # no test split: report val, as a plain run does
    test = evaluate_split(model, ds.test, k=k, chunk_size=chunk) if len(ds.test) else val
    classes = list(ds.class_names) if ds.class_names else None
    save_model(run, model, model_meta(model, class_names=classes, data_format=cfg.data.format))
    result = TrainResult(
        run.path,
        best_epoch=max(int(m["best_epoch"]) for m in members),
        val=val,
        test=test,
        seed=cfg.train.seed,
        train_seconds=sum(float(m["train_seconds"]) for m in members),
        epochs_run=max(int(m["epochs_run"]) for m in members),
        split=held_out,
        members=members,
    )
    write_run_metrics(run, cfg, ds, result, ensemble={"size": len(members), "members": members})
    return result


def _member_model(folder: RunDir) -> DSCMR:
    model = load_run(folder.path).model
    if not isinstance(model, DSCMR):
        raise CheckpointError(f"{folder} does not hold a single DSCMR network; train without --resume")
    return model
