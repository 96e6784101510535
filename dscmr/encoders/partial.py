"""A backbone split in two: a frozen bottom whose activations are cached, and a trainable top.

Fine-tuning the last blocks of the image backbone on a CPU is affordable when the frozen part runs once per image
(and per augmented view) instead of once per epoch. :func:`split_backbone` cuts a registered backbone into
``bottom`` (stem and all but the last ``top_blocks`` blocks) and ``top`` (those blocks and the head convolution),
with ``top(bottom(x)) == forward_features(x)``. :class:`PartialImageEncoder` is an
:class:`~dscmr.encoders.ImageEncoder` whose "features" are the bottom's activations, flattened to
``(n, C * H * W)``; they go through the feature cache like pooled features, keyed by the same spec plus the cut.

Training views are random resized crops with random horizontal flips, drawn from a generator seeded by
``(seed, view)``, so view ``i`` of a dataset is the same every time (and cacheable); the evaluation view is the
encoder's deterministic preprocessing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dscmr.config import DataConfig
from dscmr.encoders.cache import FeatureCache, fingerprint_files
from dscmr.encoders.image import ImageEncoder
from dscmr.errors import ConfigError

AUGMENT_SCALE = (0.35, 1.0)  # area fraction of a random resized crop
AUGMENT_RATIO = (3 / 4, 4 / 3)  # aspect ratio range of a random resized crop


def split_backbone(model: nn.Module, top_blocks: int) -> tuple[nn.Module, nn.Sequential]:
    """``(bottom, top)`` of a backbone, sharing its modules: ``top(bottom(x)) == model.forward_features(x)``.

    Works for models with a ``split(n)`` method (EfficientNet-Lite) and for a ``features`` sequential whose first
    module is the stem and last the head convolution (MobileNetV2).

    Raises:
        ConfigError: ``top_blocks`` out of range or a backbone that cannot be split.
    """
    split = getattr(model, "split", None)
    if callable(split):
        try:
            bottom, top = split(top_blocks)
        except ValueError as exc:
            raise ConfigError(f"data.image_train_blocks: {exc}") from None
        return bottom, top
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential):
        raise ConfigError(f"backbone {type(model).__name__} cannot be split; use data.image_train_blocks = 0")
    n_blocks = len(features) - 2  # stem and head conv excluded
    if not 0 <= top_blocks <= n_blocks:
        raise ConfigError(f"data.image_train_blocks must be in 0..{n_blocks} for this backbone, got {top_blocks}")
    cut = len(features) - 1 - top_blocks
    return features[:cut], nn.Sequential(*features[cut:])


def random_resized_crop(
    x: torch.Tensor, size: int, gen: torch.Generator, *, scale: tuple[float, float] = AUGMENT_SCALE
) -> torch.Tensor:
    """A random crop of ``x`` ``(3, H, W)`` (area ``scale``, aspect 3/4..4/3), resized to ``(3, size, size)``,
    mirrored with probability 1/2; every draw comes from ``gen``."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    h, w = x.shape[-2:]
    u = torch.rand(4, generator=gen).tolist()
    i0, j0, ch, cw = 0, 0, h, w
    for _ in range(10):
        area = h * w * (scale[0] + (scale[1] - scale[0]) * u[0])
        log_r = math.log(AUGMENT_RATIO[0]) + (math.log(AUGMENT_RATIO[1]) - math.log(AUGMENT_RATIO[0])) * u[1]
        cw = int(round(math.sqrt(area * math.exp(log_r))))
        ch = int(round(math.sqrt(area / math.exp(log_r))))
        if 0 < cw <= w and 0 < ch <= h:
            i0, j0 = int(u[2] * (h - ch + 1)), int(u[3] * (w - cw + 1))
            break
        u = torch.rand(4, generator=gen).tolist()
    else:  # fall back to the centre square
        ch = cw = min(h, w)
        i0, j0 = (h - ch) // 2, (w - cw) // 2
    out = TF.resized_crop(x, i0, j0, ch, cw, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    if float(torch.rand(1, generator=gen)) < 0.5:
        out = out.flip(-1)
    return out


class PartialImageEncoder(ImageEncoder):
    """An image encoder whose features are the frozen bottom's activations, flattened: ``(n, C * H * W)``.

    Args:
        backbone: Registered vision model name.
        top_blocks: Blocks of the backbone left to the trainable top (>= 1); the head convolution is always in it.
        **kwargs: As for :class:`~dscmr.encoders.ImageEncoder` (``image_size``, ``fit``, ``weights``, ``model``).
    """

    def __init__(self, backbone: str = "mobilenet_v2_100", *, top_blocks: int, **kwargs: Any) -> None:
        super().__init__(backbone, **{"channels_last": False, **kwargs})
        if self.views != "one":
            raise ConfigError("data.image_views must be 'one' with data.image_train_blocks or image_train_views")
        self.top_blocks = top_blocks
        self.bottom: nn.Module | None = None  # None: the whole backbone, pooled (top_blocks = 0)
        if top_blocks > 0:
            self.bottom, _ = split_backbone(self.model, top_blocks)
            with torch.inference_mode():
                probe = self.bottom(torch.zeros(1, 3, self.image_size, self.image_size))
            self.act_shape: tuple[int, ...] = tuple(probe.shape[1:])  # (C, H, W)
            self.num_features = int(np.prod(self.act_shape))
        self.view: int | None = None  # None: the deterministic eval view; i >= 0: augmented training view i
        self.view_seed = 0
        self._gen = torch.Generator()

    def cache_spec(self) -> dict[str, Any]:
        """The image encoder's spec plus the cut, and the augmentation of a training view."""
        spec = super().cache_spec()
        if self.top_blocks > 0:
            spec["pool"] = f"bottom-activations-top{self.top_blocks}"
        if self.view is not None:
            spec["augment"] = {
                "kind": "random-resized-crop-flip",
                "scale": list(AUGMENT_SCALE),
                "ratio": list(AUGMENT_RATIO),
                "view": self.view,
                "seed": self.view_seed,
            }
        return spec

    def preprocess_views(self, image: torch.Tensor) -> torch.Tensor:
        """The eval view (the encoder's preprocessing) or, for a training view, a random resized crop: (1, 3, S, S)."""
        if self.view is None:
            return super().preprocess_views(image)
        crop = random_resized_crop(image, self.image_size, self._gen)
        return self.normalise(crop).unsqueeze(0)

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        """``uint8 (3, S, S)`` -> normalised float32."""
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (image.float() / 255.0 - mean) / std

    @torch.inference_mode()
    def encode_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed images ``(B, 3, S, S)`` -> flattened bottom activations ``(B, C * H * W)``."""
        if self.bottom is None:
            return super().encode_batch(x)
        self.calls += 1
        return self.bottom(x).float().flatten(1)

    def top_module(self) -> nn.Sequential:
        """The trainable top, a deep copy with the backbone's weights (the encoder keeps its own, frozen)."""
        import copy

        _, top = split_backbone(self.model, self.top_blocks)
        return copy.deepcopy(top)


_encoders: dict[tuple[Any, ...], PartialImageEncoder] = {}


def partial_encoder_for(cfg: DataConfig) -> PartialImageEncoder:
    """The (process-wide, memoised) split encoder of a data config (``image_train_blocks`` may be 0)."""
    if cfg.engine not in ("auto", "torch"):
        raise ConfigError("data.image_train_blocks and image_train_views need data.engine = 'torch' or 'auto'")
    key: tuple[Any, ...] = (cfg.image_backbone, cfg.image_size, cfg.image_fit, cfg.image_views)
    key += (cfg.image_backbone_weights, cfg.image_train_blocks)
    if key not in _encoders:
        _encoders[key] = PartialImageEncoder(
            cfg.image_backbone,
            top_blocks=cfg.image_train_blocks,
            image_size=cfg.image_size,
            fit=cfg.image_fit,
            views=cfg.image_views,
            weights=cfg.image_backbone_weights or None,
        )
    return _encoders[key]


def view_activations(
    paths: Sequence[str | Path],
    *,
    encoder: PartialImageEncoder,
    cache: FeatureCache | None,
    views: int,
    seed: int = 0,
    advance: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Bottom activations of ``views`` augmented training views of each image: ``(views, n, C * H * W)`` float16.

    View ``i`` is drawn from a generator seeded by ``(seed, i)`` in the order of ``paths``, and cached under the
    encoder spec with the view and seed, so a second call computes nothing. Unreadable images give NaN rows.
    """
    out = np.zeros((views, len(paths), encoder.num_features), dtype=np.float16)
    fingerprint = fingerprint_files(paths) if cache is not None else ""
    for i in range(views):
        encoder.view, encoder.view_seed = i, seed
        encoder._gen.manual_seed(seed * 1_000_003 + i)

        def compute() -> np.ndarray:
            return encoder.encode_paths(paths, on_error="nan", advance=advance)

        try:
            if cache is None:
                acts = compute()
            else:
                spec = encoder.cache_spec()
                acts = cache.get_or_compute(spec, fingerprint, len(paths), compute, description=f"view {i}")
        finally:
            encoder.view = None
        out[i] = acts
    return out
