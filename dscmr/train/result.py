"""What a training run returns and writes to its ``metrics.json`` (shared by single runs and seed ensembles)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dscmr.config import Config
from dscmr.data import FeatureDataset
from dscmr.train.run_dir import RunDir

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    """What :func:`train` returns (and writes to the run's metrics file)."""

    run_dir: Path
    best_epoch: int
    val: dict[str, float]
    test: dict[str, float]
    seed: int
    train_seconds: float
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)
    split: str = "test"  # the split ``test`` holds: "val" for a dataset without a test split
    members: list[dict[str, Any]] = field(default_factory=list)  # a seed ensemble's members (dscmr.train.ensemble)

    def summary(self) -> dict[str, Any]:
        """The CLI's ``--json`` object: test (without a test split: val) metrics of the selected epoch."""
        return {
            "img2txt": self.test["img2txt"],
            "txt2img": self.test["txt2img"],
            "avg": self.test["avg"],
            "split": self.split,
            "best_epoch": self.best_epoch,
            "seed": self.seed,
            "train_seconds": round(self.train_seconds, 3),
        }


def write_run_metrics(run: RunDir, cfg: Config, ds: FeatureDataset, result: TrainResult, **extra: Any) -> None:
    """Write a finished run's ``metrics.json``: the summary, val / test metrics, sizes, seeds, history (``extra``
    keys last)."""
    run.write_metrics(
        {
            **result.summary(),
            "val": result.val,
            "test": result.test,
            "k": cfg.eval.k,
            "epochs_run": result.epochs_run,
            "data_source": ds.source,
            "sizes": {"train": len(ds.train), "val": len(ds.val), "test": len(ds.test)},
            "seeds": {"train": cfg.train.seed, "val_split": cfg.data.val_seed},
            "history": result.history,
            **extra,
        },
    )
