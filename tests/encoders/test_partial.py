"""A backbone split into a cached frozen bottom and a trainable top gives the whole backbone's features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dscmr.encoders import FeatureCache
from dscmr.encoders.partial import PartialImageEncoder, random_resized_crop, split_backbone, view_activations
from dscmr.errors import ConfigError
from dscmr.models.image_top import ImageTop
from dscmr.vision import create_model, is_model
from tests.encoders.helpers import TEST_IMAGE_SIZE, save_image

BACKBONES = [b for b in ("mobilenet_v2_100", "efficientnet_lite0") if is_model(b)]


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("top_blocks", [1, 3])
def test_top_on_flattened_bottom_equals_the_whole_backbone(backbone, top_blocks):
    torch.manual_seed(0)
    model = create_model(backbone, pretrained=False).eval()
    x = torch.randn(2, 3, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE)
    bottom, top = split_backbone(model, top_blocks)
    acts = bottom(x)  # (2, C, H, W)
    head = ImageTop.build(backbone, top_blocks, acts[0].numel())
    head.top.load_state_dict(top.state_dict())
    head.train()  # BatchNorm keeps the running statistics even in train mode
    with torch.no_grad():
        want = model.forward_head(model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(top(acts), model.forward_features(x))
        torch.testing.assert_close(head(acts.flatten(1)), want, rtol=1e-5, atol=1e-5)
    assert head.num_features == want.shape[1]


def test_split_out_of_range_is_a_config_error():
    model = create_model("mobilenet_v2_100", pretrained=False)
    with pytest.raises(ConfigError, match="image_train_blocks"):
        split_backbone(model, 99)


def test_random_resized_crop_is_seeded_and_sized():
    img = torch.randint(0, 256, (3, 30, 40), dtype=torch.uint8)
    a = random_resized_crop(img, 16, torch.Generator().manual_seed(3))
    b = random_resized_crop(img, 16, torch.Generator().manual_seed(3))
    c = random_resized_crop(img, 16, torch.Generator().manual_seed(4))
    assert a.shape == (3, 16, 16)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_partial_encoder_views_are_cached_and_reproducible(tmp_path):
    paths = [save_image(tmp_path / f"im{i}.png", seed=i) for i in range(3)]
    enc = PartialImageEncoder("mobilenet_v2_100", top_blocks=1, image_size=TEST_IMAGE_SIZE)
    evals = enc.encode_paths(paths)
    assert evals.shape == (3, int(np.prod(enc.act_shape)))
    cache = FeatureCache(tmp_path / "cache")
    views = view_activations(paths, encoder=enc, cache=cache, views=2)
    assert views.shape == (2, 3, evals.shape[1])
    assert not np.allclose(views[0], views[1])  # two different random crops
    calls = enc.calls
    again = view_activations(paths, encoder=enc, cache=cache, views=2)
    assert enc.calls == calls and cache.hits == 2  # served from the cache
    np.testing.assert_array_equal(views, again)
    assert np.array_equal(enc.encode_paths(paths), evals)  # the eval view is untouched by the views
