"""The model registry: names, patterns, duplicates, overrides."""

from __future__ import annotations

import pytest
from torch import nn

from dscmr.errors import ConfigError
from dscmr.vision import create_model, list_models, register_model


def test_all_families_registered() -> None:
    names = list_models()
    for expected in (
        "mobilenet_v1_100",
        "mobilenet_v1_se",
        "mobilenet_v2_100",
        "mobilenet_v2_se",
        "hybridsn",
        "hybridsn_dsc",
        "hybridsn_2d3d",
        "dncnn",
    ):
        assert expected in names
    assert names == sorted(names)


def test_list_models_pattern_uses_fnmatch() -> None:
    assert list_models("hybridsn*") == ["hybridsn", "hybridsn_2d3d", "hybridsn_dsc"]
    assert list_models("*_se") == ["mobilenet_v1_se", "mobilenet_v2_se"]
    assert list_models("nothing*") == []


def test_duplicate_registration_is_an_error() -> None:
    def hybridsn(pretrained: bool = False) -> nn.Module:
        return nn.Identity()

    with pytest.raises(ValueError, match="already registered"):
        register_model(hybridsn)


def test_unknown_model_and_bad_override() -> None:
    with pytest.raises(ConfigError, match="unknown vision model"):
        create_model("resnet_9000")
    with pytest.raises(ConfigError, match="no_such_option"):
        create_model("mobilenet_v1_050", no_such_option=1)


def test_overrides_reach_the_constructor() -> None:
    model = create_model("mobilenet_v2_050", num_classes=7)
    assert model.num_classes == 7
    assert model.classifier[1].out_features == 7
