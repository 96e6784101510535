"""Training loop, checkpoints and seeding."""

from dscmr.train.checkpoint import LoadedRun, build_model, load_run, load_tensors, save_tensors
from dscmr.train.seed import seed_everything
from dscmr.train.trainer import TrainResult, build_model_for, encode_split, evaluate_split, train

__all__ = [
    "LoadedRun",
    "TrainResult",
    "build_model",
    "build_model_for",
    "encode_split",
    "evaluate_split",
    "load_run",
    "load_tensors",
    "save_tensors",
    "seed_everything",
    "train",
]
