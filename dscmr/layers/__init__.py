"""Small shared blocks used by the vision models."""

from __future__ import annotations

from dscmr.layers.conv_bn_act import ConvBnAct
from dscmr.layers.se import SEModule, make_divisible

__all__ = ["ConvBnAct", "SEModule", "make_divisible"]
