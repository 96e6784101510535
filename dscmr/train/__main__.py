"""``python -m dscmr.train``: one training process, the entry point ``torchrun`` starts on every rank.

    torchrun --standalone --nproc-per-node 2 -m dscmr.train --config configs/wikipedia.toml --out runs/wiki-ddp

Under ``torchrun`` each process joins the gloo process group and trains its shard of every batch
(:mod:`dscmr.train.distributed`); rank 0 alone reports, writes the run folder and prints the result. Started
plainly it trains in one process, like ``dscmr train``. ``dscmr train --ddp N`` runs this through
``torch.distributed.run``. Errors a user can cause print one ``error:`` line (rank 0) and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence

from dscmr.errors import DscmrError

EXIT_USER_ERROR = 2
_QUIET_EXIT_DELAY_S = 2.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dscmr.train", description="Train DSCMR (one rank of a DDP job).")
    p.add_argument("--config", "-c", required=True, help="Experiment TOML file (see configs/).")
    p.add_argument("--out", required=True, help="Run folder (written by rank 0).")
    p.add_argument("--data-root", default=None, help="Data folder; overrides $DSCMR_DATA and the config.")
    p.add_argument("--seed", type=int, default=None, help="Seed for init and data order (overrides train.seed).")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value (repeatable).")
    p.add_argument("--resume", action="store_true", help="Continue a killed run in --out.")
    p.add_argument("--json", dest="json_out", action="store_true", help="Print one JSON object, nothing else.")
    return p


def _print_epoch(done: int, total: int, description: str) -> None:
    if description.startswith("epoch"):
        sys.stderr.write(f"[{done}/{total}] {description}\n")
        sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, join the process group (under torchrun), train, and print the result on rank 0."""
    args = _parser().parse_args(argv)
    logger = logging.getLogger("dscmr")  # the library's messages on stderr (INFO and up; warnings with --json)
    handler = None if logger.handlers else logging.StreamHandler()
    level = logger.level
    if handler is not None:
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if args.json_out else logging.INFO)
    try:
        return _train_and_print(args)
    finally:  # called in-process too (tests): leave the logger as it was, not bound to this call's stderr
        if handler is not None:
            logger.removeHandler(handler)
        logger.setLevel(level)


def _train_and_print(args: argparse.Namespace) -> int:
    from dscmr.config import load_config
    from dscmr.train.distributed import destroy_process_group, init_process_group
    from dscmr.train.run_dir import config_for_run
    from dscmr.train.trainer import train

    ctx, finished = None, False
    try:
        ctx = init_process_group()
        overrides = list(args.overrides) + ([f"train.seed={args.seed}"] if args.seed is not None else [])
        cfg = config_for_run(load_config(args.config, overrides), args.out, overrides=overrides, resume=args.resume)
        progress = _print_epoch if ctx.is_main and not args.json_out else False
        result = train(cfg, args.out, data_root=args.data_root, resume=args.resume, progress=progress)
        finished = True
    except DscmrError as exc:
        if ctx is None or ctx.is_main:
            sys.stderr.write(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}\n")
        else:
            time.sleep(_QUIET_EXIT_DELAY_S)  # the launcher stops every rank at the first exit: let rank 0 say why
        return EXIT_USER_ERROR
    finally:
        destroy_process_group(wait_for_all=finished)
    if ctx is not None and ctx.is_main:
        summary = result.summary()
        if args.json_out:
            sys.stdout.write(json.dumps(summary) + "\n")
        else:
            sys.stdout.write(
                f"run folder: {args.out} ({ctx.world_size} process{'es' if ctx.world_size > 1 else ''})\n"
                f"selected epoch (validation mAP): {result.best_epoch} of {result.epochs_run}; "
                f"val avg {result.val['avg']:.4f}\n"
                f"{summary['split']} mAP  img->txt {summary['img2txt']:.4f}  txt->img {summary['txt2img']:.4f}  "
                f"avg {summary['avg']:.4f}  ({summary['train_seconds']:.1f} s)\n"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
