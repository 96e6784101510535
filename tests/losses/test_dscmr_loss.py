"""DSCMR loss terms: a literal reference, hand-computed 2x2 values, gradcheck, batch-order invariance."""

from __future__ import annotations

import math

import pytest
import torch

from dscmr.losses import (
    DSCMRLoss,
    discrimination_loss,
    label_space_loss,
    modality_invariance_loss,
)
from dscmr.models import DSCMROutput


def reference_terms(u, v, pu, pv, y, norm):
    """A deliberately literal, loop-based reading of the paper's formulas."""
    n = u.shape[0]

    def mnorm(m):
        if norm == "mean_l2":
            return sum(math.sqrt(sum(float(x) ** 2 for x in row)) for row in m) / n
        return math.sqrt(sum(float(x) ** 2 for row in m for x in row)) / n

    j1 = mnorm(pu - y) + mnorm(pv - y)

    def cos(a, b):
        return float(a @ b) / max(float(a.norm()) * float(b.norm()), 1e-6)

    j2 = 0.0
    for a_set, b_set in ((u, u), (u, v), (v, v)):
        s = 0.0
        for i in range(n):
            for j in range(n):
                g = 0.5 * cos(a_set[i], b_set[j])
                sim = 1.0 if float(y[i] @ y[j]) > 0 else 0.0
                s += math.log(1 + math.exp(g)) - sim * g
        j2 += s / (n * n)
    j3 = mnorm(u - v)
    return j1, j2, j3


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    n, d, c = 6, 5, 3
    u = torch.randn(n, d, generator=g, dtype=torch.float64)
    v = torch.randn(n, d, generator=g, dtype=torch.float64)
    pu = torch.randn(n, c, generator=g, dtype=torch.float64)
    pv = torch.randn(n, c, generator=g, dtype=torch.float64)
    y = (torch.rand(n, c, generator=g) > 0.6).double()
    y[y.sum(1) == 0, 0] = 1.0  # every sample has a label
    return u, v, pu, pv, y


@pytest.mark.parametrize("norm", ["mean_l2", "frobenius"])
def test_against_literal_reference(batch, norm):
    u, v, pu, pv, y = batch
    j1, j2, j3 = reference_terms(u, v, pu, pv, y, norm)
    assert label_space_loss(pu, pv, y, norm=norm).item() == pytest.approx(j1, rel=1e-10)
    assert discrimination_loss(u, v, y).item() == pytest.approx(j2, rel=1e-10)
    assert modality_invariance_loss(u, v, norm=norm).item() == pytest.approx(j3, rel=1e-10)
    out = DSCMROutput(u, v, pu, pv)
    terms = DSCMRLoss(alpha=0.3, beta=0.7, norm=norm)(out, y)
    assert terms.total.item() == pytest.approx(j1 + 0.3 * j2 + 0.7 * j3, rel=1e-10)


def test_hand_computed_2x2():
    # u = v = identity rows, labels: sample 0 class 0, sample 1 class 1.
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    # Same-label pairs (diagonal): G = 1/2, S = 1 -> log(1 + e^0.5) - 0.5; off-diagonal: G = 0 -> log 2.
    per_matrix = (2 * (math.log(1 + math.exp(0.5)) - 0.5) + 2 * math.log(2)) / 4
    assert discrimination_loss(u, v, y).item() == pytest.approx(3 * per_matrix, rel=1e-12)
    # Perfect predictions give J1 = 0; predictions off by (1, 1) per row give sqrt(2) per row, per modality.
    assert label_space_loss(y, y, y).item() == 0.0
    assert label_space_loss(y + 1, y + 1, y, norm="mean_l2").item() == pytest.approx(2 * math.sqrt(2))
    # Frobenius: ||ones(2,2)||_F / 2 = 1 per modality.
    assert label_space_loss(y + 1, y + 1, y, norm="frobenius").item() == pytest.approx(2.0)
    # J3 with v = u shifted by (3, 4): every row differs by 5.
    assert modality_invariance_loss(u, u + torch.tensor([3.0, 4.0], dtype=torch.float64)).item() == pytest.approx(5.0)


def test_gradcheck_float64(batch):
    u, v, pu, pv, y = (t.clone().requires_grad_(t is not batch[4]) for t in batch)
    y = y.detach()
    for norm in ("mean_l2", "frobenius"):
        assert torch.autograd.gradcheck(lambda a, b, norm=norm: label_space_loss(a, b, y, norm=norm), (pu, pv))
        assert torch.autograd.gradcheck(lambda a, b, norm=norm: modality_invariance_loss(a, b, norm=norm), (u, v))
    assert torch.autograd.gradcheck(lambda a, b: discrimination_loss(a, b, y), (u, v))


def test_invariant_to_batch_order(batch):
    u, v, pu, pv, y = batch
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    loss = DSCMRLoss(alpha=1.0, beta=1.0)
    a = loss(DSCMROutput(u, v, pu, pv), y)
    b = loss(DSCMROutput(u[perm], v[perm], pu[perm], pv[perm]), y[perm])
    for x, z in zip(a[:4], b[:4], strict=True):
        assert x.item() == pytest.approx(z.item(), rel=1e-12)


def test_discrimination_rewards_label_agreement():
    y = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    aligned = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    scrambled = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0]])
    assert discrimination_loss(aligned, aligned, y) < discrimination_loss(scrambled, scrambled, y)


def test_hash_terms_only_with_codes(batch):
    u, v, pu, pv, y = batch
    plain = DSCMRLoss()(DSCMROutput(u, v, pu, pv), y)
    assert plain.hash_discrimination is None and plain.quantization is None
    hu, hv = torch.tanh(u), torch.tanh(v)
    hashed = DSCMRLoss()(DSCMROutput(u, v, pu, pv, hu, hv), y)
    assert hashed.quantization is not None and hashed.quantization.item() > 0
    assert hashed.total.item() > plain.total.item()
