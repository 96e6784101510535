"""Image classification with the MobileNets on an ImageFolder layout (``root/<class>/<image>``).

Used to fine-tune a backbone (optionally from ImageNet weights) before using it as an image encoder. Images
are
resized to a square, normalised with the ImageNet statistics and flipped at random during training.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dscmr.errors import ConfigError, DataError
from dscmr.train.run_dir import RunDir
from dscmr.utils.io import atomic_write_json
from dscmr.vision import create_model
from dscmr.vision_tasks.denoise import IMAGE_SUFFIXES
from dscmr.vision_tasks.hsi import stratified_split
from dscmr.vision_tasks.runs import (
    ProgressFn,
    no_progress,
    save_metrics,
    save_weights,
    seed_everything,
    set_threads,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ClassifyDataConfig:
    """ImageFolder data.

    Attributes:
        root: Folder with one sub-folder of images per class.
        image_size: Side of the square network input.
        val_fraction: Stratified fraction held out for validation (0 disables).
    """

    root: str = ""
    image_size: int = 96
    val_fraction: float = 0.2


@dataclass(frozen=True)
class ClassifyModelConfig:
    """Classifier.

    Attributes:
        name: Registered MobileNet (``mobilenet_v1_100``, ``mobilenet_v2_100``, ...).
        pretrained: Start from ImageNet weights (``mobilenet_v2_100`` only).
        drop_rate: Dropout before the classifier.
    """

    name: str = "mobilenet_v2_100"
    pretrained: bool = False
    drop_rate: float = 0.2


@dataclass(frozen=True)
class ClassifyTrainConfig:
    """Optimisation.

    Attributes:
        epochs: Passes over the training images.
        batch_size: Images per mini-batch.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        seed: Seed of the split, the init and the data order.
        threads: torch intra-op threads (0 leaves torch's default).
    """

    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    threads: int = 0


@dataclass(frozen=True)
class ClassifyConfig:
    """An image classification run."""

    data: ClassifyDataConfig = field(default_factory=ClassifyDataConfig)
    model: ClassifyModelConfig = field(default_factory=ClassifyModelConfig)
    train: ClassifyTrainConfig = field(default_factory=ClassifyTrainConfig)

    def __post_init__(self) -> None:
        if not 0.0 <= self.data.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.data.val_fraction}")
        if self.data.image_size < 16:
            raise ConfigError(f"data.image_size must be at least 16, got {self.data.image_size}")
        if self.train.epochs <= 0 or self.train.batch_size <= 0:
            raise ConfigError("train.epochs and train.batch_size must be positive")


def scan_image_folder(root: str | Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """Image paths, their class indices and the sorted class names of an ImageFolder layout.

    Raises:
        DataError: Missing folder, fewer than two classes, or a class without images.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}; check --data")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"{root} must hold one sub-folder per class (found {len(classes)})")
    paths: list[Path] = []
    labels: list[int] = []
    for i, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"class folder {root / name} holds no images")
        paths += files
        labels += [i] * len(files)
    return paths, np.asarray(labels, dtype=np.int64), classes


def load_image_tensor(path: Path, size: int) -> torch.Tensor:
    """RGB image resized to ``size x size`` and normalised: (3, size, size).

    Raises:
        DataError: Unreadable (corrupt) image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path} ({exc}); replace or remove the file") from None
    x = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, S, S)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (x - mean) / std


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 64) -> float:
    """Top-1 accuracy (0..100) in eval mode."""
    model.eval()
    correct = 0
    for s in range(0, len(x), batch_size):
        correct += int((model(x[s : s + batch_size]).argmax(1) == y[s : s + batch_size]).sum())
    return 100.0 * correct / max(len(x), 1)


def train_classifier(cfg: ClassifyConfig, out_dir: str | Path, *, progress: ProgressFn = no_progress) -> dict[str, Any]:
    """Fine-tune / train a MobileNet on an ImageFolder and write the run folder.

    Files: ``model.safetensors``, ``config.toml``/``config.json``, ``metrics.json``, ``classes.json``.
    """
    if not cfg.data.root:
        raise ConfigError("no data folder; pass --data DIR (one sub-folder per class)")
    if not cfg.model.name.startswith("mobilenet"):
        raise ConfigError(f"classify trains MobileNets (mobilenet_v1_*, mobilenet_v2_*), got {cfg.model.name!r}")
    out_dir = Path(out_dir)
    set_threads(cfg.train.threads)
    gen = seed_everything(cfg.train.seed)
    paths, labels, classes = scan_image_folder(cfg.data.root)
    x = torch.stack([load_image_tensor(p, cfg.data.image_size) for p in paths])  # (N, 3, S, S)
    y = torch.from_numpy(labels)
    if cfg.data.val_fraction > 0:
        tr, va = stratified_split(labels, 1.0 - cfg.data.val_fraction, seed=cfg.train.seed)
    else:
        tr, va = np.arange(len(labels)), np.empty(0, dtype=np.int64)
    model = create_model(cfg.model.name, pretrained=cfg.model.pretrained, drop_rate=cfg.model.drop_rate)
    model.reset_classifier(len(classes))  # type: ignore[operator]
    out_dir.mkdir(parents=True, exist_ok=True)
    RunDir(out_dir).save_config(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    steps = -(-len(tr) // cfg.train.batch_size)
    history = []
    start = time.perf_counter()
    for epoch in range(cfg.train.epochs):
        model.train()
        order = torch.from_numpy(tr)[torch.randperm(len(tr), generator=gen)]
        total = 0.0
        for step in range(steps):
            idx = order[step * cfg.train.batch_size : (step + 1) * cfg.train.batch_size]
            xb = x[idx]  # (b, 3, S, S)
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            progress(epoch * steps + step + 1, cfg.train.epochs * steps, f"epoch {epoch + 1}")
        history.append(total / len(tr))
    train_seconds = time.perf_counter() - start
    vi = torch.from_numpy(va)
    metrics: dict[str, Any] = {
        "train_acc": accuracy(model, x[torch.from_numpy(tr)], y[torch.from_numpy(tr)]),
        "val_acc": accuracy(model, x[vi], y[vi]) if len(va) else None,
        "n_train": len(tr),
        "n_val": len(va),
        "train_seconds": round(train_seconds, 2),
        "loss_history": history,
        "seed": cfg.train.seed,
    }
    save_weights(model, out_dir)
    save_metrics(metrics, out_dir)
    atomic_write_json(out_dir / "classes.json", classes)
    return metrics
