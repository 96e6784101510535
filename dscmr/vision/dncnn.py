"""DnCNN (Zhang et al., 2017, "Beyond a Gaussian Denoiser: Residual Learning of Deep CNN for Image
Denoising").

Depth 17: conv + ReLU, 15 x (conv + BN + ReLU), conv; 64 channels, 3x3 kernels, same padding. The network is
trained by *residual learning*: ``forward`` predicts the noise ``v`` in ``y = x + v`` and the denoised image
is
``y - forward(y)`` (:meth:`DnCNN.denoise`). Images are in [0, 1].
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from dscmr.errors import CheckpointError, ConfigError
from dscmr.layers import ConvBnAct
from dscmr.vision._registry import register_model

_REF_KEY = re.compile(r"^dncnn\.(\d+)\.(.+)$")


class DnCNN(nn.Module):
    """DnCNN denoiser that predicts the noise residual.

    Args:
        in_chans: Image channels (1 for grayscale).
        depth: Number of convolution layers (17 for DnCNN-S).
        width: Channels of the hidden layers.
        bn_eps: BatchNorm epsilon (1e-4 in the reference implementation).
        num_classes: Output channels of the last conv; defaults to ``in_chans`` (the residual image).
    """

    def __init__(
        self,
        *,
        in_chans: int = 1,
        depth: int = 17,
        width: int = 64,
        bn_eps: float = 1e-4,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if depth < 3:
            raise ConfigError(f"DnCNN depth must be at least 3, got {depth}")
        self.in_chans = in_chans
        self.num_classes = in_chans if num_classes is None else num_classes
        self.num_features = width
        self.pretrained_cfg = {"input_size": (in_chans, 180, 180), "test_input_size": (in_chans, 32, 32)}
        self.stem = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1, bias=True), nn.ReLU(inplace=True))

        def norm(c: int) -> nn.Module:
            return nn.BatchNorm2d(c, eps=bn_eps)

        self.blocks = nn.Sequential(*[ConvBnAct(width, width, 3, norm_layer=norm) for _ in range(depth - 2)])
        self.tail = nn.Conv2d(width, self.num_classes, 3, padding=1, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.orthogonal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the last conv with a fresh one producing ``num_classes`` channels."""
        self.num_classes = num_classes
        self.tail = nn.Conv2d(self.num_features, num_classes, 3, padding=1, bias=False)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) noisy images -> (B, width, H, W) features."""
        return self.blocks(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Last conv: (B, width, H, W) -> (B, C, H, W) predicted noise (identity with ``pre_logits``)."""
        return x if pre_logits else self.tail(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predict the noise residual of noisy images ``x`` (B, C, H, W).

        The clean estimate is ``x - forward(x)`` (see :meth:`denoise`).
        """
        return self.forward_head(self.forward_features(x))

    def denoise(self, x: torch.Tensor) -> torch.Tensor:
        """Denoised images ``x - forward(x)`` (B, C, H, W), not clipped."""
        return x - self(x)


def is_reference_state_dict(state: dict[str, torch.Tensor]) -> bool:
    """Whether ``state`` uses the reference ``nn.Sequential`` layout (``dncnn.<i>.*`` keys)."""
    return bool(state) and all(_REF_KEY.match(k) for k in state)


def convert_reference_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map reference keys ``dncnn.<i>.*`` onto :class:`DnCNN` keys.

    The reference is one ``nn.Sequential``: ``0`` conv (bias), ``1`` ReLU, then ``(conv, BN, ReLU)`` triples
    at
    ``2..3n+1`` and the last conv. Index ``0`` -> ``stem.0``; ``2 + 3j`` -> ``blocks.j.0`` (conv);
    ``3 + 3j`` -> ``blocks.j.1`` (BN); the last index -> ``tail``.

    Raises:
        CheckpointError: A key does not fit the layout.
    """
    indices = sorted({int(m.group(1)) for k in state if (m := _REF_KEY.match(k))})
    if not indices or indices[0] != 0:
        raise CheckpointError("reference DnCNN weights must start with dncnn.0 (the first conv)")
    last = indices[-1]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = _REF_KEY.match(key)
        if m is None:
            raise CheckpointError(f"unexpected key {key!r} in reference DnCNN weights")
        i, rest = int(m.group(1)), m.group(2)
        if i == 0:
            out[f"stem.0.{rest}"] = value
        elif i == last:
            out[f"tail.{rest}"] = value
        elif (i - 2) % 3 in (0, 1):
            out[f"blocks.{(i - 2) // 3}.{(i - 2) % 3}.{rest}"] = value
        else:
            raise CheckpointError(f"unexpected key {key!r} in reference DnCNN weights (an activation has no weights)")
    return out


def load_dncnn_state_dict(model: DnCNN, state: dict[str, torch.Tensor]) -> None:
    """Load our own or reference-layout weights into ``model`` (strict, except BN's ``num_batches_tracked``).

    Raises:
        CheckpointError: Keys or shapes do not match the model.
    """
    if is_reference_state_dict(state):
        state = convert_reference_state_dict(state)
    result_missing = [k for k in model.state_dict() if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in model.state_dict()]
    if result_missing or unexpected:
        raise CheckpointError(
            f"DnCNN weights do not match the model (missing {result_missing[:3]}, "
            f"unexpected {unexpected[:3]}); check depth and channels"
        )
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"DnCNN weights do not match the model: {str(exc).splitlines()[-1].strip()}") from None


@register_model
def dncnn(pretrained: bool = False, **kwargs: Any) -> DnCNN:
    """DnCNN-S: depth 17, 64 channels, grayscale."""
    if pretrained:
        raise ConfigError("dncnn has no bundled weights; load the reference file with `dscmr vision denoise eval`")
    return DnCNN(**kwargs)
