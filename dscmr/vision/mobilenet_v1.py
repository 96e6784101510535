"""MobileNetV1 (Howard et al., 2017, "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
Applications").

A 3x3 stem convolution followed by 13 depthwise separable blocks: a depthwise 3x3 convolution
(``groups=in_channels``, one filter per channel) and a pointwise 1x1 convolution mixing channels, each
followed by
BatchNorm and ReLU. The width multiplier scales every layer's channels. The SE variant adds a
squeeze-and-excitation module between the depthwise and the pointwise convolution.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dscmr.errors import ConfigError
from dscmr.layers import ConvBnAct, SEModule, make_divisible
from dscmr.vision._registry import register_model

# (output channels, stride) of the 13 depthwise separable blocks at width 1.0 (Table 1 of the paper).
_V1_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


class DepthwiseSeparableConv(nn.Module):
    """Depthwise 3x3 conv + BN + ReLU, optional SE, then pointwise 1x1 conv + BN + ReLU.

    Args:
        in_chs: Input channels (also the depthwise groups).
        out_chs: Output channels of the pointwise convolution.
        stride: Stride of the depthwise convolution.
        se_ratio: Squeeze-and-excitation reduction ratio; 0 disables SE.
        act_layer: Activation after each convolution.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        *,
        stride: int = 1,
        se_ratio: float = 0.0,
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.conv_dw = ConvBnAct(in_chs, in_chs, 3, stride=stride, groups=in_chs, act_layer=act_layer)
        self.se: nn.Module = SEModule(in_chs, se_ratio) if se_ratio > 0 else nn.Identity()
        self.conv_pw = ConvBnAct(in_chs, out_chs, 1, act_layer=act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chs, H, W) -> (B, out_chs, H / stride, W / stride)."""
        return self.conv_pw(self.se(self.conv_dw(x)))


class MobileNetV1(nn.Module):
    """MobileNetV1 image classifier.

    Args:
        num_classes: Classifier outputs; 0 gives an identity head (pooled features).
        in_chans: Input image channels.
        width_mult: Width multiplier (alpha in the paper) applied to every layer.
        se_ratio: Squeeze-and-excitation ratio inside each block; 0 disables SE.
        drop_rate: Dropout before the classifier.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        in_chans: int = 3,
        width_mult: float = 1.0,
        se_ratio: float = 0.0,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.pretrained_cfg = {"input_size": (in_chans, 224, 224), "test_input_size": (in_chans, 32, 32)}
        stem_chs = make_divisible(32 * width_mult)
        self.stem = ConvBnAct(in_chans, stem_chs, 3, stride=2)
        blocks: list[nn.Module] = []
        chs = stem_chs
        for out, stride in _V1_BLOCKS:
            out_chs = make_divisible(out * width_mult)
            blocks.append(DepthwiseSeparableConv(chs, out_chs, stride=stride, se_ratio=se_ratio))
            chs = out_chs
        self.blocks = nn.Sequential(*blocks)
        self.num_features = chs
        self.drop = nn.Dropout(drop_rate)
        self.classifier: nn.Module = nn.Linear(chs, num_classes) if num_classes > 0 else nn.Identity()
        _init_weights(self)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one of ``num_classes`` outputs (0: identity)."""
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, num_features, H / 32, W / 32) feature map."""
        return self.blocks(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool, then the classifier unless ``pre_logits``: (B, num_features) or (B,
        classes).
        """
        x = x.mean(dim=(2, 3))  # (B, num_features)
        if pre_logits:
            return x
        return self.classifier(self.drop(x))

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


def _create(pretrained: bool, **kwargs: Any) -> MobileNetV1:
    if pretrained:
        raise ConfigError("MobileNetV1 has no pretrained weights here; use pretrained=False (or mobilenet_v2_100)")
    return MobileNetV1(**kwargs)


@register_model
def mobilenet_v1_100(pretrained: bool = False, **kwargs: Any) -> MobileNetV1:
    """MobileNetV1, width 1.0 (4.2M parameters with 1000 classes)."""
    return _create(pretrained, **kwargs)


@register_model
def mobilenet_v1_050(pretrained: bool = False, **kwargs: Any) -> MobileNetV1:
    """MobileNetV1, width 0.5."""
    return _create(pretrained, **{"width_mult": 0.5, **kwargs})


@register_model
def mobilenet_v1_se(pretrained: bool = False, **kwargs: Any) -> MobileNetV1:
    """MobileNetV1, width 1.0, with squeeze-and-excitation (ratio 1/4) after every depthwise convolution."""
    return _create(pretrained, **{"se_ratio": 0.25, **kwargs})
