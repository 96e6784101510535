"""Squeeze-and-excitation (Hu et al., 2018, "Squeeze-and-Excitation Networks").

``y = x * gate(W2 act(W1 avgpool(x) + b1) + b2)``: a global average pool squeezes each channel to one number,
a
bottleneck of two 1x1 convolutions (reduction ``rd_ratio``) produces one gate per channel, and the input is
rescaled channel-wise.
"""

from __future__ import annotations

import torch
from torch import nn


def make_divisible(value: float, divisor: int = 8, *, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` without going more than 10% below it."""
    min_value = min_value or divisor
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


class SEModule(nn.Module):
    """Channel attention by squeeze (global average pool) and excitation (bottleneck + gate).

    Args:
        channels: Channels of the input (and output).
        rd_ratio: Reduction ratio of the bottleneck: ``rd_channels = channels * rd_ratio`` (rounded, at least
        8).
        act_layer: Activation inside the bottleneck.
        gate_layer: Gate applied to the excitation (sigmoid in the paper).
        rd_divisor: The bottleneck width is rounded to a multiple of this.
    """

    def __init__(
        self,
        channels: int,
        rd_ratio: float = 0.25,
        act_layer: type[nn.Module] = nn.ReLU,
        gate_layer: type[nn.Module] = nn.Sigmoid,
        *,
        rd_divisor: int = 8,
    ) -> None:
        super().__init__()
        self.rd_channels = make_divisible(channels * rd_ratio, rd_divisor)
        self.fc1 = nn.Conv2d(channels, self.rd_channels, 1, bias=True)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(self.rd_channels, channels, 1, bias=True)
        self.gate = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rescale each channel of ``x`` (B, C, H, W) by its gate in (0, 1)."""
        s = x.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        s = self.fc2(self.act(self.fc1(s)))  # (B, C, 1, 1)
        return x * self.gate(s)
