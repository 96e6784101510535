"""The trainable top of an image backbone: its last blocks, head convolution and global pooling.

It takes the frozen bottom's activations, flattened as the feature cache stores them (``(B, C * H * W)``, see
:mod:`dscmr.encoders.partial`), and returns pooled features ``(B, num_features)``, the same vector the whole
backbone's ``forward_head(pre_logits=True)`` gives. BatchNorm layers keep the backbone's running statistics (they
stay in eval mode when the module trains): with a few hundred images, batch statistics would only add noise.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dscmr.encoders.partial import split_backbone


class ImageTop(nn.Module):
    """Last backbone blocks + head conv + global average pool on flattened activations.

    Args:
        top: The backbone's top, ``(B, C, H, W) -> (B, num_features, h, w)``.
        act_shape: ``(C, H, W)`` of its input.
        num_features: Channels of its output.
    """

    def __init__(self, top: nn.Module, act_shape: tuple[int, int, int], num_features: int) -> None:
        super().__init__()
        self.top = top
        self.act_shape = tuple(act_shape)
        self.num_features = num_features

    @classmethod
    def build(cls, backbone: str, top_blocks: int, in_dim: int) -> ImageTop:
        """The top of a registered backbone (freshly initialised), for flattened inputs of width ``in_dim``.

        Raises:
            ValueError: ``in_dim`` is not ``C * H * H`` for the top's input channels ``C``.
        """
        from dscmr.vision import create_model

        model = create_model(backbone, pretrained=False)
        _, top = split_backbone(model, top_blocks)
        channels = next(m.in_channels for m in top.modules() if isinstance(m, nn.Conv2d))
        side = math.isqrt(in_dim // channels)
        if channels * side * side != in_dim:
            raise ValueError(f"image input width {in_dim} is not {channels} x H x H for the top of {backbone}")
        return cls(top, (channels, side, side), int(getattr(model, "num_features")))  # noqa: B009

    def train(self, mode: bool = True) -> ImageTop:
        """Train mode for everything but BatchNorm, which keeps the backbone's running statistics."""
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened activations ``(B, C * H * W)`` -> pooled features ``(B, num_features)``."""
        x = x.float().view(x.shape[0], *self.act_shape)  # (B, C, H, W)
        return self.top(x).mean(dim=(2, 3))  # (B, num_features)
