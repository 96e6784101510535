"""Training on more than one process: DDP on the gloo backend (CPU), launched by ``torch.distributed.run``.

``torchrun --nproc-per-node N -m dscmr.train ...`` (or ``dscmr train --ddp N``, which calls
:func:`launch`) starts N ranks; each calls :func:`init_process_group` and then :func:`dscmr.train.train`, which
asks :func:`context` whether it runs distributed. How a step equals the single-process step:

- **Data.** Every rank has the same seeds, so the same shuffled order and the same global batch of ``B`` rows.
  Rank ``r`` runs the model on its contiguous part of that batch (:func:`shard_sizes`: ``B // N`` rows, one more
  for the first ``B % N`` ranks), so the ranks' parts, in rank order, are the single-process batch.
- **Loss.** The outputs of every rank are gathered, with gradients (:func:`gather_rows`), so every rank computes
  the *whole* loss of the global batch: every mean is over the ``B`` rows and J2 compares every pair of the
  batch, exactly as one process would. The loss module needs no change.
- **Gradients.** The backward of the gather sums, over the ranks, the gradient each rank's (identical) loss sends
  to a rank's rows; that is ``N`` times the single-process gradient, and DDP's averaging divides by ``N``. So the
  parameter gradient equals the single-process one (up to float summation order).
- **What differs.** Dropout masks are drawn per rank (:func:`seed_rank_epoch`), and a hash layer's BatchNorm
  normalises each rank's rows by their own statistics (gloo has no SyncBatchNorm on CPU), so a DDP run follows a
  close, not an identical, path to the single-process run.
- **Files.** Rank 0 evaluates on validation, selects the epoch, and writes the run folder; it broadcasts each
  validation record (so every rank takes the same early-stopping decision) and the final result.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from dscmr.errors import UsageError
from dscmr.models import DSCMROutput

T = TypeVar("T")

BACKEND = "gloo"


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a training job.

    Attributes:
        rank: This process's rank, 0 to ``world_size - 1``.
        world_size: The number of training processes (1: a plain single-process run).
    """

    rank: int = 0
    world_size: int = 1

    @property
    def active(self) -> bool:
        """Whether more than one process trains (a process group with more than one rank)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and reports progress (rank 0)."""
        return self.rank == 0


def context() -> DistContext:
    """This process's rank and world size; a single-process context unless a process group is initialised."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size())
    return DistContext()


def init_process_group(*, timeout_s: float = 1800.0) -> DistContext:
    """Join the process group that ``torch.distributed.run`` described in the environment (gloo, CPU).

    Reads ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; without ``WORLD_SIZE`` (or with 1) it
    starts nothing and returns a single-process context.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or dist.is_initialized():
        return context()
    dist.init_process_group(BACKEND, timeout=timedelta(seconds=timeout_s))
    return context()


def destroy_process_group(*, wait_for_all: bool = False) -> None:
    """Leave the process group, if one was joined.

    Garbage is collected first, so a finished run's DDP reducer and any gloo work it holds are freed while the
    interpreter is whole: freed later, during interpreter shutdown, they aborted a rank now and then ("terminate
    called without an active exception", exit 250) after a successful run. With ``wait_for_all`` (a run that
    finished on every rank) the ranks also meet at a barrier, so none tears down the group while another still
    uses it. A failing run skips the barrier: its peers may never reach it.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        if wait_for_all:
            dist.barrier()
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------------------
# Splitting and gathering a batch


def shard_sizes(n: int, world_size: int) -> list[int]:
    """Rows of an ``n``-row global batch per rank: ``n // world_size``, one more for the first ``n % world_size``."""
    base, extra = divmod(n, world_size)
    return [base + (1 if r < extra else 0) for r in range(world_size)]


def local_slice(sizes: Sequence[int], rank: int) -> slice:
    """The rows of the global batch that ``rank`` holds (contiguous, in rank order)."""
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


class _GatherRows(torch.autograd.Function):
    """All-gather of row blocks of different sizes; the backward sums every rank's gradient for our rows."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
        rank = dist.get_rank()
        ctx.rows = local_slice(sizes, rank)
        width = max(sizes)
        padded = x.new_zeros((width, *x.shape[1:]))  # gloo gathers equal shapes: pad to the largest block
        padded[: x.shape[0]] = x
        blocks = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(blocks, padded.contiguous())
        return torch.cat([b[:s] for b, s in zip(blocks, sizes, strict=True)])  # (sum(sizes), ...)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)  # every rank's loss depends on our rows
        return total[ctx.rows], None


def gather_rows(x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Concatenate every rank's rows ``x`` (rank ``r`` holds ``sizes[r]`` rows), with gradients.

    The gradient that reaches a rank's ``x`` is the sum over the ranks of what each rank's loss sends to those
    rows. Without a process group it returns ``x``.

    Args:
        x: This rank's rows, ``(sizes[rank], ...)``.
        sizes: Rows per rank, the same list on every rank.

    Returns:
        The global rows in rank order, ``(sum(sizes), ...)``.
    """
    if not (dist.is_available() and dist.is_initialized()) or len(sizes) == 1:
        return x
    if x.shape[0] != sizes[dist.get_rank()]:
        raise ValueError(f"rank {dist.get_rank()} holds {x.shape[0]} rows, expected {sizes[dist.get_rank()]}")
    out: torch.Tensor = _GatherRows.apply(x, tuple(sizes))
    return out


def gather_output(out: DSCMROutput, sizes: Sequence[int]) -> DSCMROutput:
    """Every field of a forward output gathered over the ranks (one collective: the fields travel side by side)."""
    names = [name for name, t in zip(out._fields, out, strict=True) if t is not None]  # no hash layer: no codes
    fields = [getattr(out, name) for name in names]  # each (b, width)
    joined = gather_rows(torch.cat(fields, dim=1), sizes)  # (B, sum(widths))
    parts = torch.split(joined, [t.shape[1] for t in fields], dim=1)
    return out._replace(**dict(zip(names, parts, strict=True)))


class ShardedForward:
    """The global batch's inputs -> the global batch's outputs, the model running on this rank's rows only.

    Wraps the model in :class:`~torch.nn.parallel.DistributedDataParallel`, which averages the gradients.

    Args:
        model: The model, the same (same seed) on every rank.
        ctx: This process's place in the job (an active one).
    """

    def __init__(self, model: nn.Module, ctx: DistContext) -> None:
        self.ctx = ctx
        self.ddp = nn.parallel.DistributedDataParallel(model)

    def __call__(self, img: torch.Tensor, txt: torch.Tensor) -> DSCMROutput:
        sizes = shard_sizes(img.shape[0], self.ctx.world_size)
        rows = local_slice(sizes, self.ctx.rank)
        out: DSCMROutput = self.ddp(img[rows], txt[rows])
        return gather_output(out, sizes)


def sharded_forward(model: nn.Module, ctx: DistContext) -> Callable[[torch.Tensor, torch.Tensor], DSCMROutput]:
    """The trainer's forward: ``model`` itself in a single process, a :class:`ShardedForward` under DDP."""
    return ShardedForward(model, ctx) if ctx.active else model


def seed_rank_epoch(seed: int, epoch: int, ctx: DistContext) -> None:
    """Under DDP, seed torch's global generator (dropout) from ``(seed, rank, epoch)``; a no-op in one process.

    Each rank then draws its own dropout masks, and a resumed run draws the same masks as an uninterrupted one.
    """
    if ctx.active:
        torch.manual_seed(int(np.random.SeedSequence([seed, ctx.rank, epoch]).generate_state(1)[0]))


def main_then_broadcast(fn: Callable[[], T], ctx: DistContext) -> T:
    """Run ``fn`` on rank 0 only and give its (picklable) result to every rank; in one process just run it."""
    if not ctx.active:
        return fn()
    box: list[Any] = [fn() if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    result: T = box[0]
    return result


# ----------------------------------------------------------------------------------------------------------------
# Launching


def train_args(
    config: str | Path,
    run_dir: str | Path,
    *,
    data_root: str | None = None,
    overrides: Sequence[str] = (),
    resume: bool = False,
    json_out: bool = False,
) -> list[str]:
    """The command line of ``python -m dscmr.train`` for these options."""
    args = ["--config", str(config), "--out", str(run_dir)]
    args += ["--data-root", data_root] if data_root else []
    for item in overrides:
        args += ["--set", item]
    args += ["--resume"] if resume else []
    args += ["--json"] if json_out else []
    return args


def launch_train(
    nproc: int,
    config: str | Path,
    run_dir: str | Path,
    *,
    data_root: str | None = None,
    overrides: Sequence[str] = (),
    resume: bool = False,
    json_out: bool = False,
) -> int:
    """``dscmr train --ddp NPROC``: train on ``nproc`` local processes (:func:`launch` with :func:`train_args`).

    The config and the data are loaded here first, once: a user error shows as one exception before any process
    starts, and features a dataset extracts are cached once rather than by every rank at the same time.

    Returns:
        0 when every rank finished, else the exit code of the first rank that failed (rank 0 printed why).

    Raises:
        UsageError: ``nproc`` is below 1, or the config asks for a seed ensemble (``train.ensemble > 1``) or a
            projection (``model.project_dim > 0``).
        DscmrError: The config, the run folder or the data is wrong (as :func:`dscmr.train.train` would raise).
    """
    if nproc < 1:
        raise UsageError(f"--ddp must be a number of processes >= 1, got {nproc}")
    from dscmr.config import load_config
    from dscmr.data import load_dataset
    from dscmr.train.run_dir import config_for_run

    cfg = config_for_run(load_config(config, list(overrides)), run_dir, overrides=list(overrides), resume=resume)
    if cfg.trains_ensemble():
        raise UsageError(
            "--ddp trains one model; train.ensemble > 1 and model.project_dim > 0 train members one after the "
            "other in one process, drop --ddp"
        )
    load_dataset(cfg.data, data_root)
    args = train_args(config, run_dir, data_root=data_root, overrides=overrides, resume=resume, json_out=json_out)
    return launch(nproc, args)


def launch(nproc: int, args: Sequence[str]) -> int:
    """Run ``python -m dscmr.train ARGS`` on ``nproc`` local processes through ``torch.distributed.run``.

    The same as ``torchrun --standalone --nproc-per-node NPROC -m dscmr.train ARGS``; each process uses one
    thread unless ``OMP_NUM_THREADS`` (or ``train.threads``) says otherwise.

    Returns:
        0 when every rank finished, else the exit code of the first rank that failed (rank 0 printed why).

    Raises:
        UsageError: ``nproc`` is below 1.
    """
    if nproc < 1:
        raise UsageError(f"--ddp must be a number of processes >= 1, got {nproc}")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser
    from torch.distributed.run import run as run_elastic

    launch_args = get_args_parser().parse_args(
        ["--standalone", "--nproc-per-node", str(nproc), "--module", "dscmr.train", *args]
    )
    quiet = [logging.getLogger(name) for name in ("torch.distributed.elastic", "torch.distributed.run")]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.CRITICAL)  # a failing rank prints its own one-line error
    threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = threads or "1"
    try:
        run_elastic(launch_args)
    except ChildFailedError as exc:
        _, first = exc.get_first_failure()
        return first.exitcode or 1
    finally:
        for log, level in zip(quiet, levels, strict=True):
            log.setLevel(level)
        if threads is None:
            del os.environ["OMP_NUM_THREADS"]
    return 0
