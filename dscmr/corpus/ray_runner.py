"""Run shard tasks on a Ray cluster: Ray Data ``map_batches`` over an actor pool whose actors hold the encoders.

Each task (one shard) is one row of a Ray dataset. An actor builds the image and text encoders once, from the data
config, with ``threads`` torch threads, and runs the same :class:`~dscmr.corpus.shards.ShardEncoder` as the
in-process path: it reads the shard's images (or takes its texts), encodes them, writes the shard file atomically
into the features folder and returns the finished manifest entry. The driver only records entries. So the inputs
and the features folder must be on storage every node sees (on one machine, any local folder).

No scheduler, RPC or worker pool of our own: Ray Data schedules the rows, streams results and restarts actors.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dscmr.config import DataConfig, from_dict, to_dict
from dscmr.corpus.shards import ShardEncoder, ShardTask
from dscmr.data.features_dir import ShardEntry
from dscmr.errors import DscmrError, UsageError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0  # reaching a cluster address before handing it to ray.init (which retries for minutes)


class ShardActor:
    """A Ray Data actor: holds a :class:`ShardEncoder` and maps batches of ``{"task": json}`` rows to entries.

    Args:
        cfg: The data config as a dict (:func:`~dscmr.config.to_dict`).
        folder: The features folder.
        threads: torch intra-op threads of this actor.
        batch_size: Inputs per encoder call (0 = defaults).
    """

    def __init__(self, cfg: dict[str, Any], folder: str, threads: int, batch_size: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.encoder = ShardEncoder.from_config(folder, from_dict(DataConfig, cfg), batch_size=batch_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        entries = [self.encoder(ShardTask.from_json(str(t))) for t in batch["task"]]
        return {"entry": np.array([_entry_json(e) for e in entries])}


def _entry_json(entry: ShardEntry) -> str:
    import json

    return json.dumps(entry.to_dict())


def check_ray(address: str) -> None:
    """Check, before any work, that Ray Data is installed and that a cluster address is well-formed and reachable.

    Raises:
        UsageError: Ray is missing, or ``address`` is not ``local``, ``auto`` or a reachable ``[ray://]HOST:PORT``.
    """
    try:
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError("--ray needs Ray Data; install it with: pip install 'dscmr[distributed]'") from None
    if address in ("local", "auto"):
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--ray {address!r}: use local, auto or a cluster address HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise UsageError(
            f"cannot reach a Ray cluster at {address} ({exc.strerror or exc}); start one with `ray start --head` "
            "or check the address"
        ) from None


def connect(address: str) -> bool:
    """Initialise Ray (unless it already is); returns whether this call started it (and must shut it down)."""
    check_ray(address)
    import ray

    if ray.is_initialized():
        return False
    try:
        if address == "local":
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(
            f"cannot connect to the Ray cluster at {address!r} ({first}); start one with `ray start --head`"
        ) from None
    return True


def user_error(exc: BaseException) -> DscmrError | None:
    """The project error inside a Ray exception chain (an actor's ConfigError, DataError, ...), if any."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, DscmrError):
            return e
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    return None


def run_on_ray(
    tasks: list[ShardTask],
    cfg: DataConfig,
    folder: Path,
    *,
    address: str,
    workers: int,
    threads: int,
    batch_size: int,
    on_done: Callable[[ShardEntry], None],
) -> tuple[int, int]:
    """Encode ``tasks`` in a pool of Ray actors; ``on_done`` hears each finished entry (in completion order).

    Returns:
        ``(workers, threads)``: the actor-pool size and torch threads per actor used.

    Raises:
        UsageError: Ray is not installed or the cluster cannot be reached.
    """
    import ray

    started = connect(address)
    try:
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        threads = threads or max(1, cpus // workers if workers else 1)
        workers = workers or max(1, cpus // threads)
        if not tasks:
            return workers, threads
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
        ds = ray.data.from_items([{"task": t.to_json()} for t in tasks], override_num_blocks=len(tasks))
        results = ds.map_batches(
            ShardActor,
            fn_constructor_kwargs={
                "cfg": to_dict(cfg),
                "folder": str(folder),
                "threads": threads,
                "batch_size": batch_size,
            },
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=min(workers, len(tasks))),
            num_cpus=threads,
            batch_format="numpy",
        )
        try:
            for row in results.iter_rows():
                import json

                on_done(ShardEntry.from_dict(json.loads(str(row["entry"]))))
        except Exception as exc:  # Ray wraps an actor's exception; surface a user error as itself
            err = user_error(exc)
            if err is not None:
                raise err from None
            raise
        return workers, threads
    finally:
        if started:
            ray.shutdown()
