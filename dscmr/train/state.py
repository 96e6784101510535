"""The resumable training state: where a run stands after an epoch, saved so that ``--resume`` continues a killed
run exactly as if it had never stopped.

Tensors (model, best weights, optimizer, RNG states) go to the run folder's ``train_state.safetensors``; counters,
history, optimizer scalars and python's RNG state to ``train_state.json``. The tensor file records its epoch, and
both files must agree on it (a kill between the two writes is detected).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch

from dscmr.errors import CheckpointError
from dscmr.models import DSCMR
from dscmr.train.checkpoint import (
    load_tensors_and_metadata,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_tensors,
)
from dscmr.train.run_dir import RunDir
from dscmr.utils.io import atomic_write_json


@dataclass
class TrainState:
    """Where training stands after ``epoch``.

    Attributes:
        epoch: The last finished epoch (0 before the first).
        best_epoch: The validation-selected epoch so far (0: none yet).
        best_val: Its validation mAP (mean of both directions).
        bad_epochs: Epochs since the last improvement (for early stopping).
        history: One record per finished epoch (``epoch``, ``loss``, ``val_*``).
        train_seconds: Training time so far, over every resumed session.
        best_weights: The model's state dict at ``best_epoch``.
    """

    epoch: int = 0
    best_epoch: int = 0
    best_val: float = -1.0
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    best_weights: dict[str, torch.Tensor] = field(default_factory=dict)

    def end_epoch(self, record: dict[str, float], model: DSCMR) -> None:
        """Record a finished epoch; keep the model's weights when its validation mAP is the best so far."""
        self.epoch = int(record["epoch"])
        self.history.append(record)
        if record["val_avg"] > self.best_val:
            self.best_val, self.best_epoch, self.bad_epochs = record["val_avg"], self.epoch, 0
            self.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1

    def best_val_metrics(self) -> dict[str, float]:
        """The selected epoch's validation metrics (computed with the very weights that are kept)."""
        return {key[4:]: v for key, v in self.history[self.best_epoch - 1].items() if key.startswith("val_")}


def save_state(run: RunDir, state: TrainState, model: DSCMR, opt: torch.optim.Optimizer, gen: torch.Generator) -> None:
    """Write the training state after ``state.epoch`` into ``run`` (tensors first, then the JSON)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"best.{k}": v for k, v in state.best_weights.items()})
    opt_tensors, opt_meta = optimizer_to_tensors(opt)
    tensors.update(opt_tensors)
    tensors.update({"rng.torch": torch.get_rng_state(), "rng.shuffle": gen.get_state()})
    save_tensors(run.state, tensors, metadata={"epoch": str(state.epoch)})  # checked against the JSON
    py_state = random.getstate()
    atomic_write_json(
        run.state_meta,
        {
            "epoch": state.epoch,
            "best_epoch": state.best_epoch,
            "best_val": state.best_val,
            "bad_epochs": state.bad_epochs,
            "history": state.history,
            "train_seconds": state.train_seconds,
            "optimizer": opt_meta,
            "py_rng": [py_state[0], list(py_state[1]), py_state[2]],
        },
    )


def load_state(run: RunDir, model: DSCMR, opt: torch.optim.Optimizer, gen: torch.Generator) -> TrainState:
    """Restore the model, optimizer and every RNG from ``run``'s training state, and return the counters.

    Raises:
        CheckpointError: There is no training state, or it is damaged or inconsistent.
    """
    if not run.state_meta.is_file():
        raise CheckpointError(f"nothing to resume in {run}: {run.STATE_META} is missing; train without --resume")
    st = run.read_json(run.state_meta, what="training state")
    tensors, tensor_meta = load_tensors_and_metadata(run.state)
    if tensor_meta.get("epoch") != str(st.get("epoch")):
        raise CheckpointError(
            f"the training state in {run} is inconsistent (the run was killed while saving it); "
            f"delete {run.STATE} and {run.STATE_META} and train again"
        )
    try:
        return _restore(st, tensors, model, opt, gen)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        raise CheckpointError(
            f"the training state in {run} is damaged ({type(exc).__name__}: {exc}); "
            f"delete {run.STATE} and {run.STATE_META} and train again"
        ) from None


def _restore(
    st: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    model: DSCMR,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
) -> TrainState:
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    optimizer_from_tensors(opt, tensors, st["optimizer"])
    torch.set_rng_state(tensors["rng.torch"])
    gen.set_state(tensors["rng.shuffle"])
    random.setstate((st["py_rng"][0], tuple(st["py_rng"][1]), st["py_rng"][2]))
    return TrainState(
        epoch=st["epoch"],
        best_epoch=st["best_epoch"],
        best_val=st["best_val"],
        bad_epochs=st["bad_epochs"],
        history=st["history"],
        train_seconds=st["train_seconds"],
        best_weights={k[5:]: v for k, v in tensors.items() if k.startswith("best.")},
    )
