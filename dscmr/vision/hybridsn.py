"""HybridSN (Roy et al., 2019, "HybridSN: Exploring 3-D-2-D CNN Feature Hierarchy for Hyperspectral Image
Classification") and two variants.

Input: a patch of ``K`` spectral bands (after PCA) around the pixel to classify, ``(B, K, P, P)`` (or
``(B, 1, K, P, P)``). Three 3D convolutions (8@7x3x3, 16@5x3x3, 32@3x3x3, each followed by ReLU) learn
spectral-spatial features; their spectral and channel axes are merged into channels for one 2D convolution
(64@3x3, ReLU); a head of fully connected layers 256 -> 128 -> classes with dropout 0.4 classifies.

Variants:
    * ``hybridsn_dsc``: the 2D convolution is depthwise separable (depthwise 3x3 with ``groups`` = merged
      channels, BN, ReLU, then pointwise 1x1 to 64, BN, ReLU).
    * ``hybridsn_2d3d``: a 2D convolution (K -> K, 3x3, same padding, ReLU) on the bands first, then the 3D
      convolutions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dscmr.errors import ConfigError
from dscmr.layers import ConvBnAct
from dscmr.vision._registry import register_model

# (out channels, spectral kernel) of the three 3D convolutions; spatial kernels are 3x3.
_CONV3D: tuple[tuple[int, int], ...] = ((8, 7), (16, 5), (32, 3))


class HybridSN(nn.Module):
    """HybridSN hyperspectral patch classifier.

    Args:
        num_classes: Number of land-cover classes; 0 gives an identity head (128-d features).
        in_bands: Spectral bands of the input patch (30 PCA components in the paper).
        patch_size: Spatial size of the square input patch (25 in the paper).
        conv2d: ``"standard"`` (the paper's 3x3 conv), ``"dsc"`` (depthwise separable) for the 2D stage.
        pre_2d: Apply a 2D convolution on the bands before the 3D convolutions (the 2D-3D variant).
        drop_rate: Dropout after each hidden fully connected layer (0.4 in the paper).
    """

    def __init__(
        self,
        num_classes: int = 16,
        *,
        in_bands: int = 30,
        patch_size: int = 25,
        conv2d: str = "standard",
        pre_2d: bool = False,
        drop_rate: float = 0.4,
    ) -> None:
        super().__init__()
        spectral = in_bands - sum(k - 1 for _, k in _CONV3D)
        spatial = patch_size - 2 * (len(_CONV3D) + 1)
        if spectral < 1 or spatial < 1:
            raise ConfigError(
                f"HybridSN needs at least {sum(k - 1 for _, k in _CONV3D) + 1} bands and a patch of at least "
                f"{2 * (len(_CONV3D) + 1) + 1} pixels, got {in_bands} bands and patch {patch_size}"
            )
        self.num_classes = num_classes
        self.in_bands = in_bands
        self.patch_size = patch_size
        self.pretrained_cfg = {"input_size": (in_bands, patch_size, patch_size)}
        self.pretrained_cfg["test_input_size"] = self.pretrained_cfg["input_size"]

        self.pre: nn.Module = (
            nn.Sequential(nn.Conv2d(in_bands, in_bands, 3, padding=1), nn.ReLU(inplace=True))
            if pre_2d
            else nn.Identity()
        )
        convs: list[nn.Module] = []
        in_chs = 1
        for out_chs, k in _CONV3D:
            convs += [nn.Conv3d(in_chs, out_chs, (k, 3, 3)), nn.ReLU(inplace=True)]
            in_chs = out_chs
        self.conv3d = nn.Sequential(*convs)
        merged = in_chs * spectral  # 32 * 18 = 576 channels at 30 bands
        if conv2d == "standard":
            self.conv2d: nn.Module = nn.Sequential(nn.Conv2d(merged, 64, 3), nn.ReLU(inplace=True))
        elif conv2d == "dsc":
            self.conv2d = nn.Sequential(
                ConvBnAct(merged, merged, 3, padding=0, groups=merged),  # valid 3x3, like the standard conv
                ConvBnAct(merged, 64, 1),
            )
        else:
            raise ConfigError(f"conv2d must be 'standard' or 'dsc', got {conv2d!r}")
        flat = 64 * spatial * spatial
        self.fc = nn.Sequential(
            nn.Linear(flat, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(256, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
        )
        self.num_features = 128
        self.classifier: nn.Module = nn.Linear(128, num_classes) if num_classes > 0 else nn.Identity()

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one of ``num_classes`` outputs (0: identity)."""
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K, P, P) or (B, 1, K, P, P) patches -> (B, 64, P - 8, P - 8) feature map."""
        if x.dim() == 5:
            x = x.squeeze(1)  # (B, K, P, P)
        x = self.pre(x)  # (B, K, P, P)
        x = self.conv3d(x.unsqueeze(1))  # (B, 32, K - 12, P - 6, P - 6)
        b, c, d, h, w = x.shape
        x = x.reshape(b, c * d, h, w)  # (B, 32 * (K - 12), P - 6, P - 6)
        return self.conv2d(x)  # (B, 64, P - 8, P - 8)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Flatten and apply the FC layers: (B, 128) with ``pre_logits``, else (B, num_classes)."""
        x = self.fc(x.flatten(1))  # (B, 128)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K, P, P) patches -> (B, num_classes) logits."""
        return self.forward_head(self.forward_features(x))


def _create(pretrained: bool, **kwargs: Any) -> HybridSN:
    if pretrained:
        raise ConfigError("HybridSN models have no pretrained weights; use pretrained=False")
    return HybridSN(**kwargs)


@register_model
def hybridsn(pretrained: bool = False, **kwargs: Any) -> HybridSN:
    """HybridSN as in the paper (30 bands, 25x25 patches)."""
    return _create(pretrained, **kwargs)


@register_model
def hybridsn_dsc(pretrained: bool = False, **kwargs: Any) -> HybridSN:
    """HybridSN whose 2D convolution is depthwise separable (depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN +
    ReLU).
    """
    return _create(pretrained, **{"conv2d": "dsc", **kwargs})


@register_model
def hybridsn_2d3d(pretrained: bool = False, **kwargs: Any) -> HybridSN:
    """HybridSN with a 2D convolution on the input bands before the 3D convolutions."""
    return _create(pretrained, **{"pre_2d": True, **kwargs})
