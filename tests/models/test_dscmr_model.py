from __future__ import annotations

import torch

from dscmr.models import DSCMR, DSCMROutput


def test_shared_layers_are_one_module():
    m = DSCMR(16, 8, 4, img_hidden=(32,), txt_hidden=(32,), common_dim=12)
    names = [n for n, _ in m.named_parameters()]
    assert sum(n.startswith("common.") for n in names) == 2  # one weight, one bias for both modalities
    assert sum(n.startswith("classifier.") for n in names) == 2
    x, t = torch.randn(3, 16), torch.randn(3, 8)
    # Both encoders end in the very same Linear: perturbing it changes both modalities' embeddings.
    before = (m.encode_image(x).detach(), m.encode_text(t).detach())
    with torch.no_grad():
        m.common.bias.add_(1.0)
    assert torch.allclose(m.encode_image(x), before[0] + 1, atol=1e-6)
    assert torch.allclose(m.encode_text(t), before[1] + 1, atol=1e-6)


def test_forward_returns_named_output_with_shapes():
    m = DSCMR(16, 8, 4, img_hidden=(32, 24), txt_hidden=(20, 24), common_dim=12, hash_bits=16, dropout=0.1)
    out = m(torch.randn(5, 16), torch.randn(5, 8))
    assert isinstance(out, DSCMROutput)
    assert out.img_common.shape == (5, 12) and out.txt_common.shape == (5, 12)
    assert out.img_logits.shape == (5, 4) and out.txt_logits.shape == (5, 4)
    assert out.img_hash.shape == (5, 16) and out.img_hash.abs().max() < 1
    assert m.embed_dim == 12


def test_default_shape_is_the_papers():
    m = DSCMR(128, 10, 10)
    assert m.img_net[0].out_features == 2048 and m.txt_net[0].out_features == 2048
    assert m.common.in_features == 2048 and m.common.out_features == 1024
    assert m.classifier.out_features == 10 and m.hash is None


def test_embedding_does_not_depend_on_batch_in_eval_mode():
    torch.manual_seed(0)
    m = DSCMR(16, 8, 4, img_hidden=(32,), txt_hidden=(32,), common_dim=12, dropout=0.5).eval()
    x = torch.randn(64, 16)
    full = m.encode_image(x)
    singles = torch.cat([m.encode_image(x[i : i + 1]) for i in range(64)])
    sevens = torch.cat([m.encode_image(x[i : i + 7]) for i in range(0, 64, 7)])
    assert torch.allclose(full, singles, atol=1e-5) and torch.allclose(full, sevens, atol=1e-5)


def test_input_norm_standardises():
    m = DSCMR(3, 2, 2, img_hidden=(4,), txt_hidden=(4,), common_dim=2)
    m.img_norm.set_stats(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 2.0, 2.0]))
    assert torch.allclose(m.img_norm(torch.tensor([[3.0, 2.0, 1.0]])), torch.tensor([[1.0, 0.0, -1.0]]))


def test_centre_is_subtracted_for_retrieval_only():
    m = DSCMR(6, 4, 3, img_hidden=(8,), txt_hidden=(8,), common_dim=5, hash_bits=8).eval()
    x, t = torch.randn(2, 6), torch.randn(2, 4)
    before_fwd = m(x, t)
    before_codes = m.hash_codes(m.encode_image(x))
    m.set_center(torch.ones(5))
    assert torch.allclose(m.encode_image(x), before_fwd.img_common - 1)
    assert torch.allclose(m(x, t).img_logits, before_fwd.img_logits)  # training forward unchanged
    assert torch.allclose(m.hash_codes(m.encode_image(x)), before_codes, atol=1e-6)
