"""The DSCMR training loop: Adam, shuffled mini-batches, validation-selected epoch, early stopping, resume.

Model selection uses the validation split only (mean of the two retrieval directions); the test split is
evaluated once, with the selected weights, at the end. :func:`train` reads as its steps: load the data, build the
model and optimizer (or restore them with ``resume``), fit epoch by epoch, then select, test and write the run
folder (:class:`dscmr.train.RunDir`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from dscmr.config import Config
from dscmr.data import FeatureDataset, load_dataset, resolve_data_root
from dscmr.errors import ConfigError, DataError
from dscmr.losses import DSCMRLoss
from dscmr.models import DSCMR, DSCMROutput, DSCMRSpec
from dscmr.train.checkpoint import model_meta, save_model
from dscmr.train.distributed import DistContext, context, main_then_broadcast, seed_rank_epoch, sharded_forward
from dscmr.train.ensemble import train_ensemble
from dscmr.train.evaluate import evaluate_split
from dscmr.train.finetune import batch_inputs, init_image_top, param_groups, set_input_stats
from dscmr.train.result import EpochCallback, TrainResult, write_run_metrics
from dscmr.train.run_dir import RunDir
from dscmr.train.seed import seed_everything
from dscmr.train.state import TrainState, load_state, save_state
from dscmr.utils.progress import Progress, no_progress, resolve_progress


def model_spec(cfg: Config, ds: FeatureDataset) -> DSCMRSpec:
    """The network shape for a config and a loaded dataset (input dimensions and classes from the data)."""
    m = cfg.model
    return DSCMRSpec(
        ds.img_dim,
        _text_input_width(cfg, ds),
        ds.num_classes,
        img_hidden=m.img_hidden,
        txt_hidden=m.txt_hidden,
        common_dim=m.common_dim,
        dropout=m.dropout,
        hash_bits=m.hash_bits,
        img_top=cfg.data.image_backbone if cfg.data.image_train_blocks else "",
        img_top_blocks=cfg.data.image_train_blocks,
        txt_top=cfg.data.text_model if cfg.data.text_train_layers else "",
        txt_top_layers=cfg.data.text_train_layers,
    )


def _text_input_width(cfg: Config, ds: FeatureDataset) -> int:
    """The model's ``txt_dim``: the data's text width, or one token's width with a text top (token rows)."""
    if not cfg.data.text_train_layers:
        return ds.txt_dim
    from dscmr.encoders.text_partial import partial_text_encoder_for

    width = partial_text_encoder_for(cfg.data).dim
    if ds.txt_dim % width:
        raise ConfigError(
            f"data.text_train_layers needs token rows of the sentence encoder (width a multiple of {width}), "
            f"but the dataset's text features are {ds.txt_dim}-d; use a folder or built-in dataset"
        )
    return width


@dataclass
class _Session:
    """What one training session works with (built fresh, or restored on resume)."""

    cfg: Config
    ds: FeatureDataset
    run: RunDir
    model: DSCMR
    opt: torch.optim.Optimizer
    gen: torch.Generator
    loss_fn: DSCMRLoss
    dist: DistContext  # this process's rank and world size (:mod:`dscmr.train.distributed`)
    forward: Callable[[torch.Tensor, torch.Tensor], DSCMROutput]  # global batch -> outputs (DDP: sharded)


def train(
    cfg: Config,
    run_dir: str | Path,
    *,
    dataset: FeatureDataset | None = None,
    data_root: str | Path | None = None,
    resume: bool = False,
    progress: Progress | bool | None = None,
    on_epoch_end: EpochCallback | None = None,
) -> TrainResult:
    """Train DSCMR, select the epoch on validation mAP, evaluate it on test, and write the run folder.

    Args:
        cfg: Resolved experiment config (:func:`dscmr.train.config_for_run` gives it for a resumed run).
        run_dir: Output folder (created). With ``resume`` it must hold a previous run's training state.
        dataset: Pre-loaded dataset (otherwise loaded from ``cfg.data``).
        data_root: Overrides ``cfg.data.root`` (see :func:`dscmr.data.resolve_data_root`). The data root used
            (this, or ``$DSCMR_DATA``) is recorded in the run's saved config, so later commands find the data.
        resume: Continue from the run's training state; the result equals an uninterrupted run.
        progress: Hears ``(epoch, epochs, "epoch E loss L val V best B@E")`` after each epoch (default: the
            current reporter, :mod:`dscmr.utils.progress`; ``False``: none).
        on_epoch_end: Called with ``(epoch, record)`` after each epoch (used by tests and schedulers).

    Returns:
        The :class:`TrainResult`, also written to the run's metrics file.

    Under ``torchrun`` (an initialised process group) every rank calls this: each runs its part of every batch,
    rank 0 alone validates, reports and writes, and every rank returns rank 0's result
    (:mod:`dscmr.train.distributed`). With ``train.ensemble > 1`` or ``model.project_dim > 0`` it trains a seed
    ensemble instead (:func:`dscmr.train.ensemble.train_ensemble`; one process only).
    """
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    cfg, ds = _load_data(cfg, dataset, data_root)
    ctx = context()  # under torchrun, one rank of a DDP job: only rank 0 reports and writes
    if cfg.trains_ensemble():

        def one(mcfg: Config, folder: Path, again: bool, report: Progress, hook: EpochCallback | None) -> TrainResult:
            return _train_one(mcfg, ds, folder, ctx, resume=again, progress=report, on_epoch_end=hook)

        return train_ensemble(
            cfg, ds, run_dir, ctx, train_one=one, resume=resume, progress=progress, on_epoch_end=on_epoch_end
        )
    return _train_one(cfg, ds, run_dir, ctx, resume=resume, progress=progress, on_epoch_end=on_epoch_end)


def _train_one(
    cfg: Config,
    ds: FeatureDataset,
    run_dir: str | Path,
    ctx: DistContext,
    *,
    resume: bool,
    progress: Progress | bool | None,
    on_epoch_end: EpochCallback | None,
) -> TrainResult:
    """One network: build (or restore), fit, select on val, test and write the run folder."""
    session = _new_session(cfg, ds, RunDir(run_dir), ctx)
    if resume:
        state = load_state(session.run, session.model, session.opt, session.gen)
    else:
        state = TrainState()
    if ctx.is_main:
        session.run.create()
        session.run.save_config(cfg)
    _fit(session, state, progress=resolve_progress(progress) if ctx.is_main else no_progress, on_epoch_end=on_epoch_end)
    return main_then_broadcast(lambda: _finish(session, state), ctx)


def _load_data(
    cfg: Config, dataset: FeatureDataset | None, data_root: str | Path | None
) -> tuple[Config, FeatureDataset]:
    """The dataset, and the config with the data root that was used (``--data-root`` or ``$DSCMR_DATA``)."""
    if dataset is None:
        dataset = load_dataset(cfg.data, data_root)
        if data_root or os.environ.get("DSCMR_DATA"):
            root = resolve_data_root(cfg.data, data_root).resolve()
            cfg = replace(cfg, data=replace(cfg.data, root=str(root)))
    if len(dataset.val) == 0:
        raise DataError("the validation split is empty; set data.val_fraction > 0 or provide a 'val' split")
    return cfg, dataset


def _new_session(cfg: Config, ds: FeatureDataset, run: RunDir, ctx: DistContext) -> _Session:
    """Seed everything, then build the model (inputs standardised on the training split), loss and optimizer."""
    tc = cfg.train
    gen = seed_everything(tc.seed)
    model = model_spec(cfg, ds).build()
    init_image_top(model, cfg)  # a trainable image top starts from the backbone's weights
    if cfg.data.standardize:
        set_input_stats(model, ds)
    lc = cfg.loss
    loss_fn = DSCMRLoss(
        alpha=lc.alpha, beta=lc.beta, norm=lc.norm, hash_weight=lc.hash_weight, quant_weight=lc.quant_weight
    )
    groups = param_groups(model, cfg)
    opt = torch.optim.Adam(groups, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay, fused=True)
    return _Session(cfg, ds, run, model, opt, gen, loss_fn, ctx, sharded_forward(model, ctx))


def _fit(s: _Session, state: TrainState, *, progress: Progress, on_epoch_end: EpochCallback | None) -> None:
    """Run epochs from ``state.epoch + 1``: train, validate, keep the best weights, checkpoint, stop early."""
    tc = s.cfg.train
    t0, seconds_before = time.perf_counter(), state.train_seconds
    progress(state.epoch, tc.epochs, "train")
    for epoch in range(state.epoch + 1, tc.epochs + 1):
        seed_rank_epoch(tc.seed, epoch, s.dist)  # DDP: each rank its own dropout masks
        loss = _train_epoch(s)
        val = main_then_broadcast(  # DDP: rank 0 validates, every rank takes the same decisions
            lambda: evaluate_split(s.model, s.ds.val, k=s.cfg.eval.k, chunk_size=s.cfg.eval.chunk_size), s.dist
        )
        record = {"epoch": epoch, "loss": loss, **{f"val_{k}": v for k, v in val.items()}}
        state.end_epoch(record, s.model)
        state.train_seconds = seconds_before + time.perf_counter() - t0
        progress(
            epoch,
            tc.epochs,
            f"epoch {epoch} loss {loss:.4f} val {val['avg']:.4f} best {state.best_val:.4f}@{state.best_epoch}",
        )
        stop = tc.patience > 0 and state.bad_epochs >= tc.patience
        if s.dist.is_main and (epoch % tc.checkpoint_every == 0 or stop or epoch == tc.epochs):
            save_state(s.run, state, s.model, s.opt, s.gen)
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
        if stop:
            break


def _train_epoch(s: _Session) -> float:
    """One pass over the shuffled training split; sets the retrieval centre; returns the mean loss."""
    tc, model = s.cfg.train, s.model
    img, txt = torch.from_numpy(s.ds.train.img), torch.from_numpy(s.ds.train.txt)
    labels = torch.from_numpy(s.ds.train.labels)
    n = img.shape[0]
    model.train()
    perm = torch.randperm(n, generator=s.gen)
    total = 0.0
    emb_sum = torch.zeros(model.embed_dim)
    for i in range(0, n, tc.batch_size):
        idx = perm[i : i + tc.batch_size]
        out = s.forward(*batch_inputs(s.ds, img, txt, idx, s.gen))  # a random view / sentence per row, if any
        terms = s.loss_fn(out, labels[idx])
        s.opt.zero_grad(set_to_none=True)
        terms.total.backward()
        s.opt.step()
        total += float(terms.total.detach()) * idx.numel()
        emb_sum += (out.img_common.detach() + out.txt_common.detach()).sum(0)  # (D,)
    if s.cfg.model.center:
        # Retrieval centre = mean training embedding of this epoch (both modalities), used for validation and
        # saved with the selected weights.
        model.set_center(emb_sum / (2 * n))
    return total / n


def _finish(s: _Session, state: TrainState) -> TrainResult:
    """Restore the selected epoch's weights, evaluate them on test, write the model and the metrics."""
    cfg, ds, model = s.cfg, s.ds, s.model
    model.load_state_dict(state.best_weights)
    model.eval()
    val = state.best_val_metrics()  # computed with these very weights: reused
    # A dataset without a test split (train and val only) reports the selected epoch's val metrics instead.
    held_out = "test" if len(ds.test) else "val"
    test = evaluate_split(model, ds.test, k=cfg.eval.k, chunk_size=cfg.eval.chunk_size) if len(ds.test) else val
    classes = list(ds.class_names) if ds.class_names else None
    save_model(s.run, model, model_meta(model, class_names=classes, data_format=cfg.data.format), state.best_weights)
    result = TrainResult(
        s.run.path,
        state.best_epoch,
        val,
        test,
        cfg.train.seed,
        state.train_seconds,
        state.epoch,
        state.history,
        held_out,
    )
    write_run_metrics(s.run, cfg, ds, result)
    return result
