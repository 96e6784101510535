"""One seed for python, numpy and torch."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed python's ``random``, numpy's global generator and torch (CPU and CUDA).

    Returns:
        A CPU generator seeded with ``seed``, for the data order (shuffling, batch sampling).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
