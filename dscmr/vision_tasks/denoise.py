"""Gaussian denoising with DnCNN: training on random patches, seeded evaluation, applying to one image.

Training follows Zhang et al. (2017): random 40x40 patches of the training images (with flips and rotations),
additive white Gaussian noise of a fixed ``sigma`` (or a blind range), Adam, and the MSE between the predicted
and the true noise (residual learning). Evaluation adds seeded noise to every image of a folder, so figures
repeat exactly, and reports PSNR and SSIM of the denoised (clipped) images.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dscmr.config import from_dict
from dscmr.errors import CheckpointError, ConfigError, DataError
from dscmr.train.run_dir import RunDir
from dscmr.utils.io import atomic_write_with
from dscmr.vision import create_model, load_state_dict_file
from dscmr.vision.dncnn import DnCNN, is_reference_state_dict, load_dncnn_state_dict
from dscmr.vision_tasks.image_metrics import psnr, ssim
from dscmr.vision_tasks.runs import (
    WEIGHTS_FILE,
    ProgressFn,
    no_progress,
    read_run_config,
    save_metrics,
    save_weights,
    seed_everything,
    set_threads,
    shared_data_dir,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class DenoiseDataConfig:
    """Training data and noise.

    Attributes:
        train_dir: Folder of clean training images ("" = the shared Train400 folder).
        val_dir: Folder evaluated after training ("" = none).
        patch_size: Side of the random square training patches.
        sigma: Noise standard deviation on the 0..255 scale (training and evaluation).
        sigma_max: Blind training: sigma drawn uniformly from [sigma, sigma_max] per patch (0 = fixed sigma).
        eval_seed: Seed of the evaluation noise.
    """

    train_dir: str = ""
    val_dir: str = ""
    patch_size: int = 40
    sigma: float = 25.0
    sigma_max: float = 0.0
    eval_seed: int = 0


@dataclass(frozen=True)
class DenoiseModelConfig:
    """Denoiser shape.

    Attributes:
        name: Registered model name.
        depth: Convolution layers.
        width: Hidden channels.
    """

    name: str = "dncnn"
    depth: int = 17
    width: int = 64


@dataclass(frozen=True)
class DenoiseTrainConfig:
    """Optimisation.

    Attributes:
        epochs: Epochs of ``steps_per_epoch`` mini-batches.
        steps_per_epoch: Mini-batches per epoch.
        batch_size: Patches per mini-batch.
        lr: Adam learning rate (cosine-annealed to 1% over the planned steps).
        seed: Seed of the weights init and the patch sampling.
        threads: torch intra-op threads (0 leaves torch's default).
        max_minutes: Stop training after this many minutes (0 = no limit).
    """

    epochs: int = 50
    steps_per_epoch: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    threads: int = 0
    max_minutes: float = 0.0


@dataclass(frozen=True)
class DenoiseConfig:
    """A DnCNN denoising run."""

    data: DenoiseDataConfig = field(default_factory=DenoiseDataConfig)
    model: DenoiseModelConfig = field(default_factory=DenoiseModelConfig)
    train: DenoiseTrainConfig = field(default_factory=DenoiseTrainConfig)

    def __post_init__(self) -> None:
        if self.data.sigma <= 0 or (self.data.sigma_max and self.data.sigma_max < self.data.sigma):
            raise ConfigError("data.sigma must be > 0 and data.sigma_max either 0 or >= data.sigma")
        if self.data.patch_size < 8:
            raise ConfigError(f"data.patch_size must be at least 8, got {self.data.patch_size}")
        if self.train.epochs <= 0 or self.train.steps_per_epoch <= 0 or self.train.batch_size <= 0:
            raise ConfigError("train.epochs, train.steps_per_epoch and train.batch_size must be positive")


# ----------------------------------------------------------------------------------------------------------
# Images


def list_images(folder: str | Path) -> list[Path]:
    """Sorted image files of ``folder``.

    Raises:
        DataError: The folder is missing or holds no image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}; check --data")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def read_gray(path: str | Path) -> np.ndarray:
    """Read an image as grayscale float32 (H, W) in [0, 1].

    Raises:
        DataError: Missing or unreadable (corrupt) file.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path} ({exc}); replace or remove the file") from None
    return arr


def write_gray(path: str | Path, image: np.ndarray) -> Path:
    """Write a [0, 1] grayscale array as an 8-bit PNG, atomically."""
    from PIL import Image

    im = Image.fromarray(np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8), mode="L")
    return atomic_write_with(path, lambda p: im.save(p, format="PNG"))


def seeded_noise(shape: tuple[int, ...], sigma: float, *, seed: int, index: int) -> np.ndarray:
    """AWGN of std ``sigma / 255`` for image ``index``, reproducible from ``(seed, index)``."""
    rng = np.random.default_rng([seed, index])
    return (rng.standard_normal(shape) * (sigma / 255.0)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# Weights


def load_denoiser(path: str | Path) -> DnCNN:
    """A DnCNN in eval mode from one of our run folders or a weights file (ours or the reference layout).

    Raises:
        CheckpointError: Missing path, or weights that do not fit a DnCNN.
    """
    path = Path(path)
    if path.is_dir():
        cfg = from_dict(DenoiseConfig, read_run_config(path), source=str(RunDir(path).config_json))
        weights = path / WEIGHTS_FILE
        if not weights.is_file():
            raise CheckpointError(f"run folder {path} has no {WEIGHTS_FILE}; was training interrupted?")
        model = create_model(cfg.model.name, depth=cfg.model.depth, width=cfg.model.width)
        state = load_state_dict_file(weights)
    elif path.is_file():
        state = load_state_dict_file(path)
        model = _dncnn_for_state(state, path)
    else:
        raise CheckpointError(f"weights not found: {path}; pass a run folder or a .safetensors file")
    if not isinstance(model, DnCNN):
        raise CheckpointError(f"{path} does not describe a DnCNN model")
    load_dncnn_state_dict(model, state)
    return model.eval()


def _dncnn_for_state(state: dict[str, torch.Tensor], path: Path) -> DnCNN:
    """Build a DnCNN whose depth/width/channels fit the keys of ``state``."""
    if is_reference_state_dict(state):
        first = state.get("dncnn.0.weight")
        n_layers = len({k.split(".")[1] for k in state if k.endswith(".weight") and state[k].dim() == 4})
    else:
        first = state.get("stem.0.weight")
        n_layers = len({k.split(".")[1] for k in state if k.startswith("blocks.")}) + 2
    if first is None or first.dim() != 4:
        raise CheckpointError(f"{path} is not a DnCNN checkpoint (no first conv weight found)")
    return DnCNN(in_chans=int(first.shape[1]), width=int(first.shape[0]), depth=n_layers)


# ----------------------------------------------------------------------------------------------------------
# Evaluation and application


@torch.no_grad()
def evaluate_denoiser(
    model: DnCNN,
    folder: str | Path,
    *,
    sigma: float,
    seed: int = 0,
    limit: int = 0,
    progress: ProgressFn = no_progress,
) -> dict[str, Any]:
    """Denoise every image of ``folder`` corrupted with seeded AWGN; mean PSNR/SSIM before and after.

    Args:
        model: Denoiser (switched to eval mode here).
        folder: Folder of clean images.
        sigma: Noise std on the 0..255 scale.
        seed: Seed of the noise (image ``i`` gets noise from ``(seed, i)``).
        limit: Evaluate only the first ``limit`` images (0 = all).
        progress: Progress callback.

    Returns:
        ``{"psnr", "ssim", "noisy_psnr", "n", "per_image": [{"image", "psnr", "ssim", "noisy_psnr"}]}``.
    """
    model.eval()
    files = list_images(folder)[: limit or None]
    rows = []
    for i, path in enumerate(files):
        clean = read_gray(path)
        noisy = clean + seeded_noise(clean.shape, sigma, seed=seed, index=i)
        x = torch.from_numpy(noisy)[None, None]  # (1, 1, H, W)
        out = model.denoise(x).clamp(0.0, 1.0)[0, 0]  # (H, W)
        ref = torch.from_numpy(clean)
        rows.append(
            {
                "image": path.name,
                "psnr": psnr(out, ref),
                "ssim": ssim(out, ref),
                "noisy_psnr": psnr(torch.from_numpy(noisy), ref),
            }
        )
        progress(i + 1, len(files), "evaluating")
    return {
        "psnr": float(np.mean([r["psnr"] for r in rows])),
        "ssim": float(np.mean([r["ssim"] for r in rows])),
        "noisy_psnr": float(np.mean([r["noisy_psnr"] for r in rows])),
        "n": len(rows),
        "per_image": rows,
    }


@torch.no_grad()
def apply_denoiser(model: DnCNN, image: str | Path, out: str | Path, *, add_noise: float = 0.0, seed: int = 0) -> Path:
    """Denoise one image (optionally after adding seeded noise of std ``add_noise``) and save it as PNG."""
    arr = read_gray(image)
    if add_noise > 0:
        arr = arr + seeded_noise(arr.shape, add_noise, seed=seed, index=0)
    model.eval()
    den = model.denoise(torch.from_numpy(arr)[None, None]).clamp(0.0, 1.0)[0, 0].numpy()
    return write_gray(out, den)


# ----------------------------------------------------------------------------------------------------------
# Training


class PatchSampler:
    """Random ``patch x patch`` crops of in-memory images with one of the 8 flips/rotations."""

    def __init__(self, images: list[np.ndarray], patch: int, *, seed: int) -> None:
        small = [i for i, im in enumerate(images) if min(im.shape) < patch]
        if small:
            raise DataError(f"{len(small)} training images are smaller than the {patch}x{patch} patch size")
        self.images = images
        self.patch = patch
        self.rng = np.random.default_rng(seed)

    def sample(self, n: int) -> np.ndarray:
        """(n, 1, patch, patch) float32 clean patches."""
        out = np.empty((n, 1, self.patch, self.patch), dtype=np.float32)
        idx = self.rng.integers(len(self.images), size=n)
        for j, i in enumerate(idx):
            im = self.images[i]
            top = self.rng.integers(im.shape[0] - self.patch + 1)
            left = self.rng.integers(im.shape[1] - self.patch + 1)
            crop = im[top : top + self.patch, left : left + self.patch]
            mode = self.rng.integers(8)
            crop = np.rot90(crop, k=int(mode % 4))
            out[j, 0] = crop[:, ::-1] if mode >= 4 else crop
        return out


def train_denoiser(cfg: DenoiseConfig, out_dir: str | Path, *, progress: ProgressFn = no_progress) -> dict[str, Any]:
    """Train a DnCNN and write the run folder (weights, config, metrics).

    Returns:
        Metrics: final loss, steps, ``train_seconds`` and, when ``data.val_dir`` is set, the evaluation
        figures.
    """
    out_dir = Path(out_dir)
    set_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    train_dir = Path(cfg.data.train_dir) if cfg.data.train_dir else shared_data_dir() / "denoise" / "Train400"
    images = [read_gray(p) for p in list_images(train_dir)]
    sampler = PatchSampler(images, cfg.data.patch_size, seed=cfg.train.seed)
    noise_rng = torch.Generator().manual_seed(cfg.train.seed + 1)
    model = create_model(cfg.model.name, depth=cfg.model.depth, width=cfg.model.width)
    if not isinstance(model, DnCNN):
        raise ConfigError(f"denoising trains a DnCNN, got model {cfg.model.name!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    RunDir(out_dir).save_config(cfg)
    total = cfg.train.epochs * cfg.train.steps_per_epoch
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=cfg.train.lr * 0.01)
    start = time.perf_counter()
    deadline = start + cfg.train.max_minutes * 60 if cfg.train.max_minutes > 0 else math.inf
    history: list[float] = []
    step = 0
    model.train()
    for _epoch in range(cfg.train.epochs):
        losses = []
        for _ in range(cfg.train.steps_per_epoch):
            clean = torch.from_numpy(sampler.sample(cfg.train.batch_size))  # (B, 1, P, P)
            sigma = torch.full((clean.shape[0], 1, 1, 1), cfg.data.sigma)
            if cfg.data.sigma_max > cfg.data.sigma:
                sigma = cfg.data.sigma + (cfg.data.sigma_max - cfg.data.sigma) * torch.rand(
                    sigma.shape, generator=noise_rng
                )
            noise = torch.randn(clean.shape, generator=noise_rng) * sigma / 255.0
            loss = F.mse_loss(model(clean + noise), noise)  # residual learning: predict the noise
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            step += 1
            progress(step, total, "training")
            if time.perf_counter() > deadline:
                break
        history.append(float(np.mean(losses)))
        if time.perf_counter() > deadline:
            break
    train_seconds = time.perf_counter() - start
    save_weights(model, out_dir)
    metrics: dict[str, Any] = {
        "steps": step,
        "patches_seen": step * cfg.train.batch_size,
        "train_seconds": round(train_seconds, 2),
        "loss_history": history,
        "final_loss": history[-1],
    }
    if cfg.data.val_dir:
        ev = evaluate_denoiser(
            model, cfg.data.val_dir, sigma=cfg.data.sigma, seed=cfg.data.eval_seed, progress=progress
        )
        metrics.update({k: ev[k] for k in ("psnr", "ssim", "noisy_psnr", "n")})
    save_metrics(metrics, out_dir)
    return metrics


__all__ = [
    "DenoiseConfig",
    "DenoiseDataConfig",
    "DenoiseModelConfig",
    "DenoiseTrainConfig",
    "apply_denoiser",
    "evaluate_denoiser",
    "load_denoiser",
    "train_denoiser",
]
