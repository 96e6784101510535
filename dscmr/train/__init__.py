"""Training: the loop, the run folder, checkpoints, the resumable state, split evaluation and seeding."""

from dscmr.train.checkpoint import LoadedRun, load_run, load_tensors, save_tensors
from dscmr.train.evaluate import encode_split, evaluate_split
from dscmr.train.run_dir import RunDir, config_for_run
from dscmr.train.seed import seed_everything
from dscmr.train.state import TrainState
from dscmr.train.trainer import TrainResult, model_spec, train

__all__ = [
    "LoadedRun",
    "RunDir",
    "TrainResult",
    "TrainState",
    "config_for_run",
    "encode_split",
    "evaluate_split",
    "load_run",
    "load_tensors",
    "model_spec",
    "save_tensors",
    "seed_everything",
    "train",
]
