"""Registry-driven tests: every registered model gets the same checks on a tiny CPU input."""

from __future__ import annotations

import pytest
import torch

from dscmr.vision import create_model, list_models

BATCH = 2


def _tiny(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    kwargs = {"num_classes": 5} if not name.startswith("dncnn") else {}
    model = create_model(name, **kwargs)
    x = torch.randn(BATCH, *model.pretrained_cfg["test_input_size"])
    return model, x


@pytest.mark.parametrize("name", list_models())
def test_forward_shape_gradients_and_pre_logits(name: str) -> None:
    model, x = _tiny(name)
    model.train()
    out = model(x)
    assert out.shape[:2] == (BATCH, model.num_classes)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing[:5]}"

    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        logits = model.forward_head(feats)
    assert pre.shape[:2] == (BATCH, model.num_features)
    assert torch.allclose(logits, model(x), atol=1e-5)


@pytest.mark.parametrize("name", list_models())
def test_reset_classifier(name: str) -> None:
    model, x = _tiny(name)
    model.reset_classifier(3)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape[:2] == (BATCH, 3)
    assert model.num_classes == 3
