"""Image quality metrics: PSNR and SSIM (Wang et al., 2004) for images in [0, data_range]."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def psnr(x: torch.Tensor, ref: torch.Tensor, *, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio ``10 log10(data_range^2 / MSE)`` in dB over all elements.

    Args:
        x: Estimate, any shape.
        ref: Reference of the same shape.
        data_range: Peak value (1 for images in [0, 1]).
    """
    mse = torch.mean((x.double() - ref.double()) ** 2).item()
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # (1, 1, size, size)


def ssim(
    x: torch.Tensor,
    ref: torch.Tensor,
    *,
    data_range: float = 1.0,
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> float:
    """Mean structural similarity with an 11x11 Gaussian window (sigma 1.5), valid region only.

    ``SSIM = ((2 mu_x mu_y + C1)(2 s_xy + C2)) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2))`` with
    ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2``, averaged over positions and channels.

    Args:
        x: Estimate (H, W), (C, H, W) or (B, C, H, W).
        ref: Reference of the same shape.
        data_range: Peak value ``L``.
        win_size: Gaussian window size.
        sigma: Gaussian window standard deviation.
        k1: Luminance constant.
        k2: Contrast constant.
    """
    if x.shape != ref.shape:
        raise ValueError(f"ssim: shapes differ {tuple(x.shape)} vs {tuple(ref.shape)}")
    while x.dim() < 4:
        x, ref = x.unsqueeze(0), ref.unsqueeze(0)
    b, c, h, w = x.shape
    x = x.double().reshape(b * c, 1, h, w)  # (B*C, 1, H, W)
    ref = ref.double().reshape(b * c, 1, h, w)
    win = _gaussian_window(win_size, sigma, torch.float64)
    mu_x, mu_y = F.conv2d(x, win), F.conv2d(ref, win)
    sxx = F.conv2d(x * x, win) - mu_x**2
    syy = F.conv2d(ref * ref, win) - mu_y**2
    sxy = F.conv2d(x * ref, win) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return float((num / den).mean().item())
