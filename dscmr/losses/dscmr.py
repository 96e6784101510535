"""DSCMR loss terms (Zhen et al., CVPR 2019, Sec. 3.2), as pure functions of tensors.

Notation: ``u`` image and ``v`` text embeddings in the common space, ``(n, D)``; ``P`` the shared classifier, so
the predicted labels are ``P^T u`` (``(n, C)``); ``Y`` the multi-hot labels, ``(n, C)``.

Total objective: ``J = J1 + alpha * J2 + beta * J3``.

Norms: the paper writes Frobenius norms divided by n, ``||M||_F / n``; the authors' released code averages the
per-sample L2 norms, ``mean_i ||M_i||_2``. Both are available through ``norm="frobenius"`` / ``norm="mean_l2"``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("mean_l2", "frobenius")


def _matrix_norm(m: torch.Tensor, norm: str) -> torch.Tensor:
    """``mean_i ||m_i||_2`` (``mean_l2``) or ``||m||_F / n`` (``frobenius``) for ``m`` of shape ``(n, d)``."""
    if norm == "mean_l2":
        return torch.linalg.vector_norm(m, dim=1).mean()
    if norm == "frobenius":
        return torch.linalg.vector_norm(m) / m.shape[0]
    raise ValueError(f"unknown norm {norm!r}; use one of {NORMS}")


def label_space_loss(
    img_pred: torch.Tensor, txt_pred: torch.Tensor, labels: torch.Tensor, *, norm: str = "mean_l2"
) -> torch.Tensor:
    """J1, the label-space loss: ``||P^T U - Y|| + ||P^T V - Y||`` (each norm as chosen, divided by n).

    Args:
        img_pred: Label predictions from image embeddings, ``(n, C)``.
        txt_pred: Label predictions from text embeddings, ``(n, C)``.
        labels: Multi-hot labels ``Y``, ``(n, C)``.
        norm: ``mean_l2`` or ``frobenius``.

    Returns:
        Scalar loss.
    """
    return _matrix_norm(img_pred - labels, norm) + _matrix_norm(txt_pred - labels, norm)


def label_similarity(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """``S_ij = 1`` when sample i of ``a`` and sample j of ``b`` share at least one label, else 0; ``(n, m)``."""
    return (labels_a @ labels_b.t() > 0).to(labels_a.dtype)


def half_cosine(a: torch.Tensor, b: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """``Gamma_ij = 1/2 cos(a_i, b_j)`` for ``a`` ``(n, D)`` and ``b`` ``(m, D)``; returns ``(n, m)``."""
    na = torch.linalg.vector_norm(a, dim=1, keepdim=True)  # (n, 1)
    nb = torch.linalg.vector_norm(b, dim=1, keepdim=True)  # (m, 1)
    return 0.5 * (a @ b.t()) / (na @ nb.t()).clamp_min(eps)


def pair_nll(a: torch.Tensor, b: torch.Tensor, sim: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the pairwise similarities: ``mean_ij log(1 + e^G_ij) - S_ij G_ij``.

    ``G = 1/2 cos(a, b)``; ``softplus`` computes ``log(1 + e^G)`` stably.
    """
    gamma = half_cosine(a, b)  # (n, m)
    return (F.softplus(gamma) - sim * gamma).mean()


def discrimination_loss(
    u: torch.Tensor, v: torch.Tensor, labels_u: torch.Tensor, labels_v: torch.Tensor | None = None
) -> torch.Tensor:
    """J2, the common-space discrimination loss over image-image, image-text and text-text pairs.

    ``J2 = 1/n^2 sum_ij [l(u_i, u_j) + l(u_i, v_j) + l(v_i, v_j)]`` with
    ``l(a, b) = log(1 + e^G) - S G``, ``G = 1/2 cos(a, b)`` and ``S`` from shared labels.

    Args:
        u: Image embeddings ``(n, D)``.
        v: Text embeddings ``(m, D)`` (``m == n`` for paired batches).
        labels_u: Multi-hot labels of ``u``, ``(n, C)``.
        labels_v: Multi-hot labels of ``v``; defaults to ``labels_u`` (paired data).

    Returns:
        Scalar loss.
    """
    labels_v = labels_u if labels_v is None else labels_v
    return (
        pair_nll(u, u, label_similarity(labels_u, labels_u))
        + pair_nll(u, v, label_similarity(labels_u, labels_v))
        + pair_nll(v, v, label_similarity(labels_v, labels_v))
    )


def modality_invariance_loss(u: torch.Tensor, v: torch.Tensor, *, norm: str = "mean_l2") -> torch.Tensor:
    """J3, the modality-invariance loss: ``||U - V||`` between paired image and text embeddings, divided by n.

    Args:
        u: Image embeddings ``(n, D)``.
        v: Text embeddings of the same pairs ``(n, D)``.
        norm: ``mean_l2`` or ``frobenius``.
    """
    return _matrix_norm(u - v, norm)


def quantization_loss(h: torch.Tensor) -> torch.Tensor:
    """``mean_i ||h_i - sign(h_i)||^2`` for relaxed codes ``h`` ``(n, bits)``: pushes codes towards +-1."""
    return (h - torch.sign(h).detach()).pow(2).sum(dim=1).mean()


class LossTerms(NamedTuple):
    """The total loss and every term, for logging and ablations."""

    total: torch.Tensor
    label: torch.Tensor
    discrimination: torch.Tensor
    invariance: torch.Tensor
    hash_discrimination: torch.Tensor | None = None
    quantization: torch.Tensor | None = None


class DSCMRLoss(nn.Module):
    """``J1 + alpha J2 + beta J3`` (+ ``hash_weight * J2(codes) + quant_weight * Q`` with a hash layer).

    Args:
        alpha: Weight of the discrimination loss (paper: 1e-3).
        beta: Weight of the modality-invariance loss (paper: 1e-1).
        norm: ``mean_l2`` or ``frobenius`` for J1 and J3.
        hash_weight: Weight of the discrimination loss on relaxed hash codes.
        quant_weight: Weight of the quantization loss on relaxed hash codes.
    """

    def __init__(
        self,
        *,
        alpha: float = 1e-3,
        beta: float = 1e-1,
        norm: str = "mean_l2",
        hash_weight: float = 1.0,
        quant_weight: float = 0.1,
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; use one of {NORMS}")
        self.alpha, self.beta, self.norm = alpha, beta, norm
        self.hash_weight, self.quant_weight = hash_weight, quant_weight

    def forward(self, out, labels: torch.Tensor) -> LossTerms:
        """Compute all terms from a :class:`~dscmr.models.DSCMROutput` and multi-hot ``labels`` ``(n, C)``."""
        j1 = label_space_loss(out.img_logits, out.txt_logits, labels, norm=self.norm)
        j2 = discrimination_loss(out.img_common, out.txt_common, labels)
        j3 = modality_invariance_loss(out.img_common, out.txt_common, norm=self.norm)
        total = j1 + self.alpha * j2 + self.beta * j3
        hd = q = None
        if out.img_hash is not None and out.txt_hash is not None:
            hd = discrimination_loss(out.img_hash, out.txt_hash, labels)
            q = quantization_loss(out.img_hash) + quantization_loss(out.txt_hash)
            total = total + self.hash_weight * hd + self.quant_weight * q
        return LossTerms(total, j1, j2, j3, hd, q)
