"""PSNR and SSIM."""

from __future__ import annotations

import math

import torch

from dscmr.vision_tasks.image_metrics import psnr, ssim


def test_psnr_hand_computed() -> None:
    ref = torch.zeros(2, 2)
    x = torch.tensor([[0.125, 0.0], [0.0, 0.125]])  # MSE = 2 * 0.125^2 / 4, exact in float32
    assert math.isclose(psnr(x, ref), 10 * math.log10(1 / 0.0078125))
    assert psnr(ref, ref) == math.inf


def test_ssim_identity_and_ordering() -> None:
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 1, 32, 32, generator=g)
    light = (img + 0.05 * torch.randn(img.shape, generator=g)).clamp(0, 1)
    heavy = (img + 0.3 * torch.randn(img.shape, generator=g)).clamp(0, 1)
    assert math.isclose(ssim(img, img), 1.0, abs_tol=1e-12)
    assert 1.0 > ssim(light, img) > ssim(heavy, img) > 0.0
    assert math.isclose(ssim(light, img), ssim(img, light), rel_tol=1e-12)


def test_ssim_constant_images_formula() -> None:
    # constant images: variances vanish, SSIM = (2 a b + C1) / (a^2 + b^2 + C1)
    a, b, c1 = 0.3, 0.5, 0.01**2
    x, y = torch.full((16, 16), a), torch.full((16, 16), b)
    assert math.isclose(ssim(x, y), (2 * a * b + c1) / (a * a + b * b + c1), rel_tol=1e-6)
