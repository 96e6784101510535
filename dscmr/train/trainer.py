"""The DSCMR training loop: Adam, shuffled mini-batches, validation-selected epoch, early stopping, resume.

Model selection uses the validation split only (mean of the two retrieval directions); the test split is
evaluated once, with the selected weights, at the end.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dscmr.config import Config, save_config
from dscmr.data import FeatureDataset, Split, load_dataset
from dscmr.errors import CheckpointError, DataError
from dscmr.eval.metrics import cross_modal_map
from dscmr.losses import DSCMRLoss
from dscmr.models import DSCMR
from dscmr.train.checkpoint import (
    METRICS_FILE,
    STATE_FILE,
    STATE_META,
    load_tensors_and_metadata,
    model_meta,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_model,
    save_tensors,
)
from dscmr.train.seed import seed_everything
from dscmr.utils.io import atomic_write_json

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    """What :func:`train` returns (and writes to ``metrics.json``)."""

    run_dir: Path
    best_epoch: int
    val: dict[str, float]
    test: dict[str, float]
    seed: int
    train_seconds: float
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The CLI's ``--json`` object: test metrics of the validation-selected epoch."""
        return {
            "img2txt": self.test["img2txt"],
            "txt2img": self.test["txt2img"],
            "avg": self.test["avg"],
            "split": "test",
            "best_epoch": self.best_epoch,
            "seed": self.seed,
            "train_seconds": round(self.train_seconds, 3),
        }


def build_model_for(cfg: Config, ds: FeatureDataset) -> DSCMR:
    """The DSCMR network for a config and a loaded dataset (dimensions from the data)."""
    return DSCMR(
        ds.img_dim,
        ds.txt_dim,
        ds.num_classes,
        img_hidden=cfg.model.img_hidden,
        txt_hidden=cfg.model.txt_hidden,
        common_dim=cfg.model.common_dim,
        dropout=cfg.model.dropout,
        hash_bits=cfg.model.hash_bits,
    )


@torch.no_grad()
def encode_split(model: DSCMR, split: Split, *, batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Common-space embeddings of a split's images and texts, in eval mode, ``(n, D)`` each."""
    was_training = model.training
    model.eval()
    img = torch.from_numpy(split.img)
    txt = torch.from_numpy(split.txt)
    u = torch.cat([model.encode_image(img[i : i + batch_size]) for i in range(0, len(split), batch_size)])
    v = torch.cat([model.encode_text(txt[i : i + batch_size]) for i in range(0, len(split), batch_size)])
    model.train(was_training)
    return u, v


def evaluate_split(model: DSCMR, split: Split, *, k: int = 0, chunk_size: int = 256) -> dict[str, float]:
    """mAP in both directions (cosine) on one split."""
    if len(split) == 0:
        raise DataError("cannot evaluate an empty split")
    u, v = encode_split(model, split)
    return cross_modal_map(u, v, split.labels, k=k, chunk_size=chunk_size)


def _rng_tensors(gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {"rng.torch": torch.get_rng_state(), "rng.shuffle": gen.get_state()}


def _set_input_stats(model: DSCMR, ds: FeatureDataset) -> None:
    img, txt = torch.from_numpy(ds.train.img), torch.from_numpy(ds.train.txt)
    model.img_norm.set_stats(img.mean(0), img.std(0))
    model.txt_norm.set_stats(txt.mean(0), txt.std(0))


def train(
    cfg: Config,
    run_dir: str | Path,
    *,
    dataset: FeatureDataset | None = None,
    data_root: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch_end: EpochCallback | None = None,
) -> TrainResult:
    """Train DSCMR, select the epoch on validation mAP, evaluate it on test, and write the run folder.

    Args:
        cfg: Resolved experiment config.
        run_dir: Output folder (created). With ``resume`` it must hold a previous run's training state.
        dataset: Pre-loaded dataset (otherwise loaded from ``cfg.data``).
        data_root: Overrides ``cfg.data.root`` (see :func:`dscmr.data.resolve_data_root`).
        resume: Continue from ``train_state.*`` in ``run_dir``; the result equals an uninterrupted run.
        progress: Show a progress bar.
        on_epoch_end: Called with ``(epoch, record)`` after each epoch (used by tests and schedulers).

    Returns:
        The :class:`TrainResult`, also written to ``metrics.json``.
    """
    run_dir = Path(run_dir)
    tc = cfg.train
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    ds = dataset if dataset is not None else load_dataset(cfg.data, data_root)
    if len(ds.val) == 0:
        raise DataError("the validation split is empty; set data.val_fraction > 0 or provide a 'val' split")

    seed_everything(tc.seed)
    model = build_model_for(cfg, ds)
    if cfg.data.standardize:
        _set_input_stats(model, ds)
    loss_fn = DSCMRLoss(
        alpha=cfg.loss.alpha,
        beta=cfg.loss.beta,
        norm=cfg.loss.norm,
        hash_weight=cfg.loss.hash_weight,
        quant_weight=cfg.loss.quant_weight,
    )
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay, fused=True)
    gen = torch.Generator().manual_seed(tc.seed)

    start_epoch, best_epoch, best_val, bad_epochs = 1, 0, -1.0, 0
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    history: list[dict[str, float]] = []
    elapsed_before = 0.0
    if resume:
        state_meta_path = run_dir / STATE_META
        if not state_meta_path.is_file():
            raise CheckpointError(f"nothing to resume in {run_dir}: {STATE_META} is missing; train without --resume")
        st = json.loads(state_meta_path.read_text())
        tensors, tensor_meta = load_tensors_and_metadata(run_dir / STATE_FILE)
        if tensor_meta.get("epoch") != str(st["epoch"]):
            raise CheckpointError(
                f"the training state in {run_dir} is inconsistent (the run was killed while saving it); "
                f"delete {STATE_FILE} and {STATE_META} and train again"
            )
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        best_state = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        optimizer_from_tensors(opt, tensors, st["optimizer"])
        torch.set_rng_state(tensors["rng.torch"])
        gen.set_state(tensors["rng.shuffle"])
        random.setstate((st["py_rng"][0], tuple(st["py_rng"][1]), st["py_rng"][2]))
        start_epoch, best_epoch, best_val = st["epoch"] + 1, st["best_epoch"], st["best_val"]
        bad_epochs, history, elapsed_before = st["bad_epochs"], st["history"], st["train_seconds"]
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir)

    img = torch.from_numpy(ds.train.img)
    txt = torch.from_numpy(ds.train.txt)
    labels = torch.from_numpy(ds.train.labels)
    n = img.shape[0]
    meta = model_meta(model, cfg, {"class_names": list(ds.class_names) if ds.class_names else None})

    def save_state(epoch: int, seconds: float) -> None:
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        tensors.update({f"best.{k}": v for k, v in best_state.items()})
        opt_tensors, opt_meta = optimizer_to_tensors(opt)
        tensors.update(opt_tensors)
        tensors.update(_rng_tensors(gen))
        save_tensors(run_dir / STATE_FILE, tensors, metadata={"epoch": str(epoch)})  # checked against the JSON
        py_state = random.getstate()
        atomic_write_json(
            run_dir / STATE_META,
            {
                "epoch": epoch,
                "best_epoch": best_epoch,
                "best_val": best_val,
                "bad_epochs": bad_epochs,
                "history": history,
                "train_seconds": seconds,
                "optimizer": opt_meta,
                "py_rng": [py_state[0], list(py_state[1]), py_state[2]],
            },
        )

    t0 = time.perf_counter()
    bar = _progress(progress, total=tc.epochs, completed=start_epoch - 1)
    epoch = start_epoch - 1
    try:
        for epoch in range(start_epoch, tc.epochs + 1):
            model.train()
            perm = torch.randperm(n, generator=gen)
            total = 0.0
            emb_sum = torch.zeros(model.embed_dim)
            for i in range(0, n, tc.batch_size):
                idx = perm[i : i + tc.batch_size]
                out = model(img[idx], txt[idx])
                terms = loss_fn(out, labels[idx])
                opt.zero_grad(set_to_none=True)
                terms.total.backward()
                opt.step()
                total += float(terms.total.detach()) * idx.numel()
                emb_sum += (out.img_common.detach() + out.txt_common.detach()).sum(0)  # (D,)
            if cfg.model.center:
                # Retrieval centre = mean training embedding of this epoch (both modalities), used for validation
                # and saved with the selected weights.
                model.set_center(emb_sum / (2 * n))
            val = evaluate_split(model, ds.val, k=cfg.eval.k, chunk_size=cfg.eval.chunk_size)
            record = {"epoch": epoch, "loss": total / n, **{f"val_{k}": v for k, v in val.items()}}
            history.append(record)
            if val["avg"] > best_val:
                best_val, best_epoch, bad_epochs = val["avg"], epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad_epochs += 1
            bar.advance(
                f"epoch {epoch} loss {record['loss']:.4f} val {val['avg']:.4f} best {best_val:.4f}@{best_epoch}"
            )
            stop = tc.patience > 0 and bad_epochs >= tc.patience
            if epoch % tc.checkpoint_every == 0 or stop or epoch == tc.epochs:
                save_state(epoch, elapsed_before + time.perf_counter() - t0)
            if on_epoch_end is not None:
                on_epoch_end(epoch, record)
            if stop:
                break
    finally:
        bar.close()
    train_seconds = elapsed_before + time.perf_counter() - t0

    model.load_state_dict(best_state)
    model.eval()
    # The selected epoch's validation metrics were computed with these very weights: reuse them.
    val = {key[4:]: v for key, v in history[best_epoch - 1].items() if key.startswith("val_")}
    test = evaluate_split(model, ds.test, k=cfg.eval.k, chunk_size=cfg.eval.chunk_size)
    save_model(run_dir, model, meta, best_state)
    result = TrainResult(run_dir, best_epoch, val, test, tc.seed, train_seconds, epoch, history)
    atomic_write_json(
        run_dir / METRICS_FILE,
        {
            **result.summary(),
            "val": val,
            "test": test,
            "k": cfg.eval.k,
            "epochs_run": epoch,
            "data_source": ds.source,
            "sizes": {"train": len(ds.train), "val": len(ds.val), "test": len(ds.test)},
            "seeds": {"train": tc.seed, "val_split": cfg.data.val_seed},
            "history": history,
        },
    )
    return result


class _Bar:
    """A rich progress bar that can be switched off (``--json``, tests)."""

    def __init__(self, enabled: bool, total: int, completed: int) -> None:
        self._progress = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("train"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.description}"),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("", total=total, completed=completed)

    def advance(self, description: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, description=description)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def _progress(enabled: bool, *, total: int, completed: int) -> _Bar:
    return _Bar(enabled, total, completed)


def seed_from(seed: int) -> np.random.Generator:
    """A numpy generator for auxiliary randomness tied to a run seed."""
    return np.random.default_rng(seed)
