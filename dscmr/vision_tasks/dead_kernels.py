"""Dead depthwise kernels: the fraction of depthwise filters whose L2 norm has collapsed.

A depthwise convolution has one ``k x k`` filter per channel (weight shape ``(C, 1, k, k)``). A filter is
*dead* when its L2 norm is below ``rel_threshold x`` the median norm of its layer (default), or below an
absolute threshold. Also a small benchmark that trains MobileNetV1 and V2 briefly on the same data
(sklearn's 8x8 digits, upscaled) and reports both fractions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dscmr.errors import CheckpointError, ConfigError
from dscmr.vision import create_model, load_state_dict_file
from dscmr.vision_tasks.runs import WEIGHTS_FILE, ProgressFn, no_progress, seed_everything, set_threads


@dataclass(frozen=True)
class DeadKernelReport:
    """Dead depthwise kernels of one model.

    Attributes:
        dead: Dead kernels over all depthwise layers.
        total: Depthwise kernels over all layers.
        layers: Per layer: ``{"name", "kernels", "dead", "threshold", "median_norm"}``.
        rule: How the threshold was set (``"relative 0.01 x median"`` or ``"absolute 1e-3"``).
    """

    dead: int
    total: int
    layers: list[dict[str, Any]]
    rule: str

    @property
    def fraction(self) -> float:
        """Dead kernels / depthwise kernels (0 when there are none)."""
        return self.dead / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary."""
        return {
            "fraction": self.fraction,
            "dead": self.dead,
            "total": self.total,
            "rule": self.rule,
            "layers": self.layers,
        }


def depthwise_weights(source: nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Depthwise convolution weights ``(C, 1, k, k)`` by state-dict key.

    For a model, these are the ``Conv2d`` layers with ``groups == in_channels > 1``. A bare state dict has no
    ``groups``, so a weight counts when it has depthwise shape (``C > 1``, ``k > 1``) and is not the first
    convolution (a stem on a one-channel image has the same shape).
    """
    if isinstance(source, nn.Module):
        return {
            f"{name}.weight": m.weight
            for name, m in source.named_modules()
            if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels and m.weight[0].numel() > 1
        }
    convs = [k for k, v in source.items() if k.endswith("weight") and v.dim() == 4]
    return {
        k: source[k]
        for k in convs[1:]
        if source[k].shape[1] == 1 and source[k].shape[0] > 1 and source[k][0].numel() > 1
    }


def dead_kernel_report(
    source: nn.Module | dict[str, torch.Tensor],
    *,
    rel_threshold: float = 0.01,
    abs_threshold: float | None = None,
) -> DeadKernelReport:
    """Count dead depthwise kernels of a model or state dict.

    Args:
        source: Model or state dict.
        rel_threshold: A kernel is dead when its L2 norm is below ``rel_threshold`` x its layer's median norm.
        abs_threshold: If given, use this absolute norm threshold instead.
    """
    if abs_threshold is None and rel_threshold <= 0:
        raise ConfigError(f"the relative threshold must be positive, got {rel_threshold}")
    layers = []
    dead = total = 0
    for name, w in depthwise_weights(source).items():
        norms = w.detach().float().flatten(1).norm(dim=1)  # (C,)
        median = float(norms.median())
        thr = abs_threshold if abs_threshold is not None else rel_threshold * median
        n_dead = int((norms < thr).sum())
        layers.append(
            {
                "name": name,
                "kernels": int(norms.numel()),
                "dead": n_dead,
                "threshold": thr,
                "median_norm": median,
            }
        )
        dead += n_dead
        total += int(norms.numel())
    rule = f"absolute {abs_threshold:g}" if abs_threshold is not None else f"relative {rel_threshold:g} x median"
    return DeadKernelReport(dead=dead, total=total, layers=layers, rule=rule)


def load_weights_for_report(path: str | Path) -> dict[str, torch.Tensor]:
    """State dict of a run folder (``model.safetensors``) or a weights file.

    Raises:
        CheckpointError: Missing files or no depthwise convolution in the weights.
    """
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
        if not path.is_file():
            raise CheckpointError(f"{path.parent} has no {WEIGHTS_FILE}; pass a run folder or a weights file")
    state = load_state_dict_file(path)
    if not depthwise_weights(state):
        raise CheckpointError(f"{path} has no depthwise convolution weights (shape (C, 1, k, k))")
    return state


def digits_dataset(image_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's 8x8 digits upscaled (bilinear) to ``image_size``, 3 channels, standardised: (N, 3, S, S),
    (N,).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8)
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = ((x - x.mean()) / x.std()).expand(-1, 3, -1, -1).contiguous()  # (N, 3, S, S)
    return x, torch.from_numpy(digits.target.astype(np.int64))


def dead_kernel_benchmark(
    *,
    models: tuple[str, ...] = ("mobilenet_v1_100", "mobilenet_v2_100"),
    epochs: int = 3,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 4e-5,
    image_size: int = 32,
    seed: int = 0,
    rel_threshold: float = 0.01,
    abs_threshold: float | None = None,
    threads: int = 0,
    limit: int = 0,
    progress: ProgressFn = no_progress,
) -> dict[str, Any]:
    """Train each model briefly on the same upscaled digits (same seed, order and optimiser) and report its
    dead-kernel fraction and training accuracy.

    Args:
        models: Registered model names to compare.
        epochs: Training epochs of each model.
        batch_size: Images per mini-batch.
        lr: Adam learning rate.
        weight_decay: Adam (L2) weight decay.
        image_size: Side the 8x8 digits are upscaled to.
        seed: Seed of the init and the data order (the same for every model).
        rel_threshold: Relative dead-kernel threshold (x layer median norm).
        abs_threshold: Absolute threshold used instead, if given.
        threads: torch intra-op threads (0 leaves the default).
        limit: Use only the first ``limit`` digits (0 = all 1797).
        progress: Progress callback.

    Returns:
        ``{"models": {name: {"fraction", "dead", "total", "train_acc", "seconds"}}, "epochs", "seed",
        "rule"}``.
    """
    set_threads(threads)
    x, y = digits_dataset(image_size)
    if limit > 0:
        x, y = x[:limit], y[:limit]
    out: dict[str, Any] = {"epochs": epochs, "seed": seed, "image_size": image_size, "n": len(x), "models": {}}
    for name in models:
        seed_everything(seed)
        gen = torch.Generator().manual_seed(seed)
        model = create_model(name, num_classes=10)
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        start = time.perf_counter()
        steps = -(-len(x) // batch_size)
        correct = 0
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(x), generator=gen)
            correct = 0
            for step in range(steps):
                idx = order[step * batch_size : (step + 1) * batch_size]
                logits = model(x[idx])
                loss = F.cross_entropy(logits, y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                correct += int((logits.argmax(1) == y[idx]).sum())
                progress(epoch * steps + step + 1, epochs * steps, name)
        report = dead_kernel_report(model, rel_threshold=rel_threshold, abs_threshold=abs_threshold)
        out["rule"] = report.rule
        out["models"][name] = {
            "fraction": report.fraction,
            "dead": report.dead,
            "total": report.total,
            "train_acc": 100.0 * correct / len(x),
            "seconds": round(time.perf_counter() - start, 2),
        }
    return out
