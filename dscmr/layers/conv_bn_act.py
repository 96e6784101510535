"""Convolution -> BatchNorm -> activation, the building block of every MobileNet."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


class ConvBnAct(nn.Sequential):
    """``Conv2d`` (no bias) followed by ``BatchNorm2d`` and an optional activation.

    The children are named ``0`` (conv), ``1`` (norm) and ``2`` (activation), like torchvision's
    ``Conv2dNormActivation``, so state-dict keys stay compatible with torchvision checkpoints.

    Args:
        in_chs: Input channels.
        out_chs: Output channels.
        kernel_size: Square kernel size.
        stride: Convolution stride.
        padding: Convolution padding; ``None`` keeps the spatial size at stride 1 (``kernel_size // 2``).
        groups: Convolution groups (``groups=in_chs`` gives a depthwise convolution).
        act_layer: Activation class, or ``None`` for a linear (activation-free) block.
        norm_layer: Normalisation class (or factory) taking the channel count.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        act_layer: type[nn.Module] | None = nn.ReLU,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_chs,
                out_chs,
                kernel_size,
                stride=stride,
                padding=kernel_size // 2 if padding is None else padding,
                groups=groups,
                bias=False,
            ),
            norm_layer(out_chs),
        ]
        if act_layer is not None:
            layers.append(act_layer(inplace=True) if _accepts_inplace(act_layer) else act_layer())
        super().__init__(*layers)
        self.in_chs = in_chs
        self.out_chs = out_chs

    @property
    def conv(self) -> nn.Conv2d:
        """The convolution (child ``0``)."""
        conv = self[0]
        assert isinstance(conv, nn.Conv2d)
        return conv


def _accepts_inplace(act_layer: type[nn.Module]) -> bool:
    return act_layer in (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU)
