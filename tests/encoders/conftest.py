"""Encoders shared by the encoder tests (loaded once per session: real MobileNetV2 and all-MiniLM-L6-v2)."""

from __future__ import annotations

import pytest

from tests.encoders.helpers import TEST_IMAGE_SIZE


@pytest.fixture(scope="session")
def image_encoder():
    from dscmr.encoders import ImageEncoder

    return ImageEncoder("mobilenet_v2_100", image_size=TEST_IMAGE_SIZE)


@pytest.fixture(scope="session")
def text_encoder():
    from dscmr.encoders import TextEncoder

    return TextEncoder()


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread: on a shared 2-core machine more threads spin against each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
