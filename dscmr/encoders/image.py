"""Image encoder: decode any picture to RGB, preprocess with torchvision transforms v2, pool backbone features.

A registered vision backbone (default ``mobilenet_v2_100`` with ImageNet weights from the offline package; the
``efficientnet_lite0/1/2`` backbones likewise) runs in eval mode under :func:`torch.inference_mode`; its globally
pooled features (``forward_head(pre_logits=True)``, 1280-d for both families) are the inputs of the DSCMR image
subnet. BatchNorm uses its running statistics, so an image's features do not depend on what else is in its batch.
Each backbone brings its own input size (``image_size=0``) and normalisation (``pretrained_cfg``).

Preprocessing, all deterministic: the picture is *fitted* to the square input (``fit``: ``crop`` = shorter side
resized and the centre cropped; ``pad`` = the whole picture, longer side resized, padded to a square with the mean
colour; ``stretch`` = the whole picture resized to the square), and the features of several *views* may be
averaged (``views``: ``one``; ``flip`` = the picture and its mirror; ``five`` = centre and corner crops of the
picture fitted at ``image_size / 0.875``; ``ten`` = those five and their mirrors).

Decoding goes through PIL so that every mode is handled the same way: greyscale and palette images are expanded to
RGB, CMYK is converted, and transparency (RGBA, LA, palette with a transparent colour) is composited onto white, so
that a transparent background looks like the white page it is usually shown on. EXIF orientation is applied.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dscmr.errors import CheckpointError, ConfigError, DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Bump when decoding or preprocessing changes in a way that changes features (invalidates cached features).
IMAGE_PIPELINE_VERSION = 1
FIT_CHOICES = ("crop", "pad", "stretch")
VIEW_CHOICES = ("one", "flip", "five", "ten")
MULTI_CROP_RATIO = 0.875  # ``five``/``ten``: crops of side S from the picture fitted at S / 0.875


class ImageDecodeError(DataError):
    """An image file is missing, not an image, or truncated."""


def load_image(path: str | Path) -> torch.Tensor:
    """Decode an image file to an RGB ``uint8`` tensor ``(3, H, W)``.

    Greyscale, palette, CMYK and 16-bit images are converted to RGB; transparency is composited onto white.

    Raises:
        ImageDecodeError: The file is missing, is not an image, or is truncated/corrupt.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as src:
            src.load()
            rgb = to_rgb(ImageOps.exif_transpose(src))
    except FileNotFoundError:
        raise ImageDecodeError(f"image not found: {path}; check the path") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageDecodeError(f"cannot decode image {path} ({msg}); replace or remove the file") from None
    arr = np.asarray(rgb, dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()  # (3, H, W)


def to_rgb(im: Any) -> Any:
    """A PIL image in RGB mode: alpha composited onto white, CMYK/greyscale/palette/16-bit converted."""
    from PIL import Image

    has_alpha = im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit greyscale: scale to 8 bits
        arr = np.asarray(im, dtype=np.float64)
        hi = float(arr.max()) if arr.size else 1.0
        scale = 255.0 / (65535.0 if hi > 255 else 255.0)
        return Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8)).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def build_transform(
    image_size: int,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    fit: str = "crop",
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Deterministic preprocessing: ``uint8 (3, H, W)`` -> normalised ``float32 (3, S, S)``.

    Args:
        image_size: Output side ``S``.
        mean: Per-channel mean of the backbone (on the 0..1 scale).
        std: Per-channel std of the backbone.
        fit: ``crop`` (shorter side -> S, centre crop), ``pad`` (longer side -> S, then zero padding after
            normalisation, i.e. the mean colour, centred) or ``stretch`` (resize to S x S). Resizing is bilinear
            and antialiased.

    Raises:
        ConfigError: Unknown ``fit``.
    """
    from torchvision.transforms import v2

    if fit not in FIT_CHOICES:
        raise ConfigError(f"image fit must be one of {', '.join(FIT_CHOICES)}, got {fit!r}")
    bilinear = v2.InterpolationMode.BILINEAR
    normalise = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    if fit == "crop":
        return v2.Compose(
            [v2.Resize(image_size, interpolation=bilinear, antialias=True), v2.CenterCrop(image_size)] + normalise
        )
    if fit == "stretch":
        return v2.Compose([v2.Resize((image_size, image_size), interpolation=bilinear, antialias=True)] + normalise)
    return _PadToSquare(image_size, v2.Compose(normalise))


class _PadToSquare:
    """The whole picture: longer side resized to ``size`` (aspect kept), normalised, zero-padded (centred)."""

    def __init__(self, size: int, normalise: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.size = size
        self.normalise = normalise

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        h, w = image.shape[-2:]
        scale = self.size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        x = self.normalise(TF.resize(image, [nh, nw], interpolation=InterpolationMode.BILINEAR, antialias=True))
        top, left = (self.size - nh) // 2, (self.size - nw) // 2
        return nn.functional.pad(x, [left, self.size - nw - left, top, self.size - nh - top])  # (3, S, S)


def make_views(x: torch.Tensor, views: str, size: int) -> torch.Tensor:
    """A fitted image ``(3, L, L)`` -> its views ``(V, 3, size, size)`` (see the module docstring).

    ``one`` and ``flip`` expect ``L == size``; ``five`` and ``ten`` expect ``L >= size`` and crop.
    """
    from torchvision.transforms.v2 import functional as TF

    if views in ("one", "flip"):
        out = [x]
    else:
        out = list(TF.five_crop(x, [size, size]))  # centre and corners
        out = [out[4], *out[:4]]  # centre first
    if views in ("flip", "ten"):
        out += [TF.horizontal_flip(v) for v in out]
    return torch.stack(out)  # (V, 3, size, size)


def state_dict_sha256(module: nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes and bytes), independent of storage layout."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load_backbone(name: str, *, weights: str | Path | None = None) -> nn.Module:
    """A registered vision model as a frozen feature extractor (eval mode, no gradients).

    Args:
        name: Registered vision model (``dscmr.vision.list_models()``), e.g. ``mobilenet_v2_100``.
        weights: Optional fine-tuned weights (``model.safetensors`` from ``dscmr vision classify``); their classifier
            is ignored. Without it the model's pretrained (ImageNet) weights are used.

    Raises:
        ConfigError: Unknown backbone.
        CheckpointError: Weights missing or not matching the backbone.
    """
    from dscmr.vision import create_model

    if weights:
        from dscmr.vision import load_state_dict_file

        model = create_model(name, pretrained=False)
        state = {k: v for k, v in load_state_dict_file(weights).items() if not k.startswith("classifier.")}
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatch
            missing, unexpected = [str(exc).splitlines()[1:2][0].strip() if "\n" in str(exc) else str(exc)], []
        missing = [k for k in missing if not k.startswith("classifier.")]
        if missing or unexpected:
            bad = (missing or unexpected)[0]
            raise CheckpointError(
                f"{weights} does not match backbone {name!r} (first mismatching key: {bad}); "
                "pass weights trained with the same data.image_backbone"
            )
    else:
        model = create_model(name, pretrained=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class ImageEncoder:
    """Frozen backbone + preprocessing: image files or decoded tensors -> pooled features ``(n, num_features)``.

    Args:
        backbone: Registered vision model name.
        image_size: Square input side fed to the backbone; 0 = the backbone's own (``pretrained_cfg``, else 224).
        fit: How a picture becomes the square input: ``crop``, ``pad`` or ``stretch`` (:func:`build_transform`).
        views: Views whose features are averaged: ``one``, ``flip``, ``five`` or ``ten`` (:func:`make_views`).
        weights: Optional fine-tuned backbone weights (see :func:`load_backbone`).
        channels_last: Run the backbone on channels-last tensors (faster convolutions on CPU).
        model: An already built backbone to use instead of building ``backbone`` (tests, benchmarks).

    Raises:
        DataError: ``image_size`` below 32 (and not 0).
        ConfigError: Unknown backbone, ``fit`` or ``views``.
    """

    def __init__(
        self,
        backbone: str = "mobilenet_v2_100",
        *,
        image_size: int = 0,
        fit: str = "crop",
        views: str = "one",
        weights: str | Path | None = None,
        channels_last: bool = True,
        model: nn.Module | None = None,
    ) -> None:
        if image_size != 0 and image_size < 32:
            raise DataError(f"data.image_size must be at least 32 (or 0 for the backbone's own), got {image_size}")
        if views not in VIEW_CHOICES:
            raise ConfigError(f"image views must be one of {', '.join(VIEW_CHOICES)}, got {views!r}")
        self.backbone_name = backbone
        self.fit = fit
        self.views = views
        self.weights = str(weights) if weights else ""
        self.channels_last = channels_last
        self.model = model if model is not None else load_backbone(backbone, weights=weights)
        self.model.eval()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        cfg = getattr(self.model, "pretrained_cfg", {}) or {}
        self.image_size = image_size or int(cfg.get("input_size", (3, 224, 224))[-1])
        self.mean = tuple(cfg.get("mean", IMAGENET_MEAN))
        self.std = tuple(cfg.get("std", IMAGENET_STD))
        self.fit_size = self.image_size if views in ("one", "flip") else round(self.image_size / MULTI_CROP_RATIO)
        self.transform = build_transform(self.fit_size, mean=self.mean, std=self.std, fit=fit)
        self.num_features = int(getattr(self.model, "num_features", 0))
        self.calls = 0  # backbone forward passes (the feature cache tests count them)
        self._weights_sha: str | None = None

    @property
    def weights_sha256(self) -> str:
        """Hash of the backbone weights (part of the feature-cache key); computed once."""
        if self._weights_sha is None:
            self._weights_sha = state_dict_sha256(self.model)
        return self._weights_sha

    def cache_spec(self) -> dict[str, Any]:
        """Everything that determines a feature vector besides the image: backbone, weights, preprocessing."""
        return {
            "kind": "image",
            "backbone": self.backbone_name,
            "weights_sha256": self.weights_sha256,
            "preprocess": self._preprocess_spec(),
            "pool": "forward_head(pre_logits=True)",
        }

    def _preprocess_spec(self) -> dict[str, Any]:
        # The default (crop, one view) is spelled as before these options existed, so its cache keys are unchanged.
        s, f = self.image_size, self.fit_size
        resize = {"crop": f"shorter-{f}", "pad": f"longer-{f}", "stretch": f"square-{f}"}[self.fit]
        crop = {"crop": f"center-{f}", "pad": f"pad-mean-{f}", "stretch": "none"}[self.fit]
        spec: dict[str, Any] = {
            "version": IMAGE_PIPELINE_VERSION,
            "decode": "pil-rgb-alpha-on-white-exif",
            "resize": f"{resize}-bilinear-antialias",
            "crop": crop,
            "mean": list(self.mean),
            "std": list(self.std),
        }
        if self.views != "one":
            spec["views"] = f"{self.views}-{s}-mean"
        return spec

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """``uint8 (3, H, W)`` -> the first (centre) view, normalised ``float32 (3, S, S)``."""
        return self.preprocess_views(image)[0]

    def preprocess_views(self, image: torch.Tensor) -> torch.Tensor:
        """``uint8 (3, H, W)`` -> every view, normalised ``float32 (V, 3, S, S)``."""
        x = self.transform(image)
        return x.unsqueeze(0) if self.views == "one" else make_views(x, self.views, self.image_size)

    def encode_views(self, views: Sequence[torch.Tensor], *, batch_size: int = 32) -> torch.Tensor:
        """Per-image views ``[(V, 3, S, S), ...]`` -> view-averaged features ``(B, num_features)``.

        The backbone sees at most ``batch_size`` views per call (the result does not depend on it).
        """
        x = torch.cat(list(views))  # (B * V, 3, S, S)
        feats = torch.cat([self.encode_batch(x[s : s + batch_size]) for s in range(0, len(x), batch_size)])
        return feats.reshape(len(views), -1, feats.shape[-1]).mean(dim=1)  # (B, D)

    @torch.inference_mode()
    def encode_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed images ``(B, 3, S, S)`` -> pooled features ``(B, num_features)``."""
        self.calls += 1
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats = self.model.forward_features(x)  # type: ignore[operator]
        return self.model.forward_head(feats, pre_logits=True).float()  # type: ignore[operator]

    def encode_images(self, images: Sequence[torch.Tensor], *, batch_size: int = 32) -> np.ndarray:
        """Decoded ``uint8 (3, H, W)`` images -> features ``(n, num_features)`` float32."""
        out = []
        for s in range(0, len(images), batch_size):
            views = [self.preprocess_views(im) for im in images[s : s + batch_size]]
            out.append(self.encode_views(views, batch_size=batch_size).numpy())
        return _stack(out, self.num_features)

    def encode_paths(
        self,
        paths: Sequence[str | Path],
        *,
        batch_size: int = 32,
        on_error: str = "raise",
        advance: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Image files -> features ``(n, num_features)`` float32.

        Args:
            paths: Image files.
            batch_size: Images per backbone call (does not change the result).
            on_error: ``raise`` an :class:`ImageDecodeError` on the first unreadable file, or ``nan`` to leave a
                row of NaN for it (the folder loader then reports or drops those rows).
            advance: Called with the number of images done after each batch (progress bars).
        """
        if on_error not in ("raise", "nan"):
            raise ValueError(f"on_error must be 'raise' or 'nan', got {on_error!r}")
        out = np.full((len(paths), self.num_features), np.nan, dtype=np.float32)
        for s in range(0, len(paths), batch_size):
            rows, tensors = [], []
            for i in range(s, min(s + batch_size, len(paths))):
                try:
                    tensors.append(self.preprocess_views(load_image(paths[i])))
                    rows.append(i)
                except ImageDecodeError:
                    if on_error == "raise":
                        raise
            if tensors:
                out[rows] = self.encode_views(tensors, batch_size=batch_size).numpy()
            if advance is not None:
                advance(min(batch_size, len(paths) - s))
        return out


def _stack(chunks: list[np.ndarray], dim: int) -> np.ndarray:
    if not chunks:
        return np.zeros((0, dim), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(chunks).astype(np.float32, copy=False))
