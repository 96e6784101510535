"""Vision models: MobileNetV1/V2 (+ SE), EfficientNet-Lite0/1/2, HybridSN and variants, DnCNN, all created by name.

Example:
    >>> from dscmr.vision import create_model, list_models
    >>> model = create_model("mobilenet_v2_100", num_classes=10)
    >>> list_models("hybridsn*")
    ['hybridsn', 'hybridsn_2d3d', 'hybridsn_dsc']
"""

from __future__ import annotations

from dscmr.vision import dncnn, efficientnet_lite, hybridsn, mobilenet_v1, mobilenet_v2  # noqa: F401 - registers
from dscmr.vision._pretrained import load_state_dict_file, mobilenet_v2_imagenet_state_dict
from dscmr.vision._registry import create_model, is_model, list_models, model_entrypoint, register_model

__all__ = [
    "create_model",
    "is_model",
    "list_models",
    "load_state_dict_file",
    "mobilenet_v2_imagenet_state_dict",
    "model_entrypoint",
    "register_model",
]
