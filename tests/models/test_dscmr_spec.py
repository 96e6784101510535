"""DSCMRSpec: the one description of a DSCMR network, its JSON form and its validation."""

from __future__ import annotations

import json

import pytest
import torch

from dscmr.errors import CheckpointError
from dscmr.models import DSCMR, DSCMRSpec


def test_round_trip_and_build():
    spec = DSCMRSpec(16, 8, 4, img_hidden=(32, 24), txt_hidden=(20, 24), common_dim=12, dropout=0.1, hash_bits=16)
    data = json.loads(json.dumps(spec.to_dict()))
    assert data["architecture"] == "dscmr" and data["img_hidden"] == [32, 24]
    assert DSCMRSpec.from_dict(data) == spec
    model = spec.build()
    assert isinstance(model, DSCMR) and model.spec == spec
    assert model.embed_dim == 12 and model.hash_bits == 16
    assert model.img_net[0].in_features == 16 and model.txt_net[0].in_features == 8
    # the same shape built twice holds the same parameter names and shapes
    shapes = {
        k: v.shape
        for k, v in DSCMR(16, 8, 4, img_hidden=(32, 24), txt_hidden=(20, 24), common_dim=12, dropout=0.1, hash_bits=16)
        .state_dict()
        .items()
    }
    assert shapes == {k: v.shape for k, v in model.state_dict().items()}


def test_extra_keys_are_ignored():
    data = {**DSCMRSpec(4, 3, 2, img_hidden=(8,), txt_hidden=(8,), common_dim=4).to_dict(), "class_names": ["a", "b"]}
    assert DSCMRSpec.from_dict(data).num_classes == 2


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"architecture": "evil"}, "unknown architecture"),
        ({"img_hidden": "x"}, "img_hidden"),
        ({"img_hidden": [8, -1]}, "img_hidden"),
        ({"txt_dim": 0}, "txt_dim"),
        ({"num_classes": 2.5}, "num_classes"),
        ({"common_dim": True}, "common_dim"),
        ({"hash_bits": 12}, "multiple of 8"),
        ({"dropout": 1.5}, "dropout"),
        ({"dropout": "x"}, "dropout"),
        ({"txt_hidden": [16]}, "last subnet widths"),
    ],
)
def test_invalid_descriptions_are_checkpoint_errors(change, fragment):
    data = {**DSCMRSpec(4, 3, 2, img_hidden=(8,), txt_hidden=(8,), common_dim=4).to_dict(), **change}
    with pytest.raises(CheckpointError, match=fragment):
        DSCMRSpec.from_dict(data, source="run/model.json")


def test_not_an_object_or_missing_fields():
    with pytest.raises(CheckpointError, match="does not describe a model"):
        DSCMRSpec.from_dict([1])
    with pytest.raises(CheckpointError, match="missing img_dim"):
        DSCMRSpec.from_dict({"txt_dim": 3, "num_classes": 2})


def test_model_rejects_a_bad_shape_directly():
    with pytest.raises(ValueError, match="last subnet widths"):
        DSCMR(4, 3, 2, img_hidden=(8,), txt_hidden=(6,))
    torch.manual_seed(0)
    assert DSCMR(4, 3, 2, img_hidden=(8,), txt_hidden=(8,), common_dim=4).spec.common_dim == 4
