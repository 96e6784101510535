"""The DSCMR network (Zhen et al., "Deep Supervised Cross-Modal Retrieval", CVPR 2019).

::

    image features -> img_net (Linear+ReLU)* -\
                                               > common (shared Linear) -> u, v  -> classifier (shared Linear)
    text features  -> txt_net (Linear+ReLU)* -/                                  -> hash (optional tanh(W u))

The common-space layer and the label classifier are **the same modules** for both modalities; only the subnets
are modality-specific. Per-feature input standardisation (fitted on the training split) lives in buffers, so a
saved model encodes raw features on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from dscmr.errors import CheckpointError
from dscmr.models.image_top import ImageTop
from dscmr.models.text_top import TextTop


class DSCMROutput(NamedTuple):
    """Everything one forward pass over a batch of image-text pairs produces.

    Attributes:
        img_common: Image embeddings in the common space, ``(B, D)``.
        txt_common: Text embeddings in the common space, ``(B, D)``.
        img_logits: Label predictions from the image embeddings, ``(B, C)``.
        txt_logits: Label predictions from the text embeddings, ``(B, C)``.
        img_hash: Relaxed image hash codes in (-1, 1), ``(B, bits)``, or None without a hash layer.
        txt_hash: Relaxed text hash codes, ``(B, bits)``, or None.
    """

    img_common: torch.Tensor
    txt_common: torch.Tensor
    img_logits: torch.Tensor
    txt_logits: torch.Tensor
    img_hash: torch.Tensor | None = None
    txt_hash: torch.Tensor | None = None


def make_subnet(in_dim: int, hidden: tuple[int, ...], *, dropout: float = 0.0) -> nn.Sequential:
    """A modality-specific subnet: ``(Linear -> ReLU [-> Dropout])`` per entry of ``hidden``."""
    layers: list[nn.Module] = []
    d = in_dim
    for width in hidden:
        layers += [nn.Linear(d, width), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        d = width
    return nn.Sequential(*layers)


class InputNorm(nn.Module):
    """Fixed per-feature standardisation ``(x - mean) / std``; identity until :meth:`set_stats` is called."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def set_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std.clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@dataclass(frozen=True)
class DSCMRSpec:
    """Everything needed to rebuild a :class:`DSCMR` network: the one description of its shape.

    A run folder's ``model.json`` holds :meth:`to_dict` (plus run facts such as the class names); :meth:`from_dict`
    validates it, so a damaged file is a clear :class:`~dscmr.errors.CheckpointError`, never a crash.

    Attributes:
        img_dim: Input image-feature dimension.
        txt_dim: Input text-feature dimension.
        num_classes: Number of labels C.
        img_hidden: Widths of the image subnet layers.
        txt_hidden: Widths of the text subnet layers (the last width must match the image subnet's).
        common_dim: Width of the common space.
        dropout: Dropout after each subnet layer, in [0, 1).
        hash_bits: Width of the learned hash layer; 0 disables it, otherwise a multiple of 8.
        img_top: Registered backbone whose last ``img_top_blocks`` blocks (and head conv) run on the image input
            (flattened activations of its frozen part, :class:`~dscmr.models.image_top.ImageTop`); "" = none.
        img_top_blocks: Blocks in that top (0 = no top: the image input is pooled features).
        txt_top: Sentence-transformers model (as ``data.text_model``; "" = offline all-MiniLM-L6-v2) whose last
            ``txt_top_layers`` transformer layers run on the text input (token rows of its frozen part,
            :class:`~dscmr.models.text_top.TextTop`); then ``txt_dim`` is the width of one token (hidden + 1).
        txt_top_layers: Layers in that top (0 = no top: the text input is sentence vectors).
    """

    ARCHITECTURE: ClassVar[str] = "dscmr"

    img_dim: int
    txt_dim: int
    num_classes: int
    img_hidden: tuple[int, ...] = (2048,)
    txt_hidden: tuple[int, ...] = (2048,)
    common_dim: int = 1024
    dropout: float = 0.0
    hash_bits: int = 0
    img_top: str = ""
    img_top_blocks: int = 0
    txt_top: str = ""
    txt_top_layers: int = 0

    def __post_init__(self) -> None:
        for name in ("img_dim", "txt_dim", "num_classes", "common_dim"):
            _check_int(name, getattr(self, name), low=1)
        for name in ("img_hidden", "txt_hidden"):
            widths = getattr(self, name)
            if not isinstance(widths, tuple | list):
                raise ValueError(f"{name} must be a list of positive integers, got {widths!r}")
            for width in widths:
                _check_int(name, width, low=1)
            object.__setattr__(self, name, tuple(widths))
        _check_int("hash_bits", self.hash_bits, low=0)
        _check_int("img_top_blocks", self.img_top_blocks, low=0)
        _check_int("txt_top_layers", self.txt_top_layers, low=0)
        if not isinstance(self.txt_top, str):
            raise ValueError(f"txt_top must be a text model name or path, got {self.txt_top!r}")
        if self.img_top_blocks and not (isinstance(self.img_top, str) and self.img_top):
            raise ValueError(f"img_top must name a backbone when img_top_blocks > 0, got {self.img_top!r}")
        if self.hash_bits % 8:
            raise ValueError(f"hash_bits must be a multiple of 8 (0 disables), got {self.hash_bits}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if self.img_hidden[-1:] != self.txt_hidden[-1:]:
            raise ValueError("the last subnet widths must match: both feed the same shared layer")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description, tagged with the architecture name."""
        return {
            "architecture": self.ARCHITECTURE,
            **{f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)},
        }

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "the model description") -> DSCMRSpec:
        """Validate and read a description written by :meth:`to_dict`; keys other than the spec's are ignored.

        Raises:
            CheckpointError: Not an object, another architecture, a missing field or an invalid value.
        """
        if not isinstance(data, dict):
            raise CheckpointError(f"{source} does not describe a model (got {type(data).__name__}); re-run training")
        arch = data.get("architecture", cls.ARCHITECTURE)
        if arch != cls.ARCHITECTURE:
            raise CheckpointError(f"{source}: unknown architecture {arch!r} (expected {cls.ARCHITECTURE!r})")
        names = {f.name for f in fields(cls)}
        missing = [n for n in ("img_dim", "txt_dim", "num_classes") if n not in data]
        if missing:
            raise CheckpointError(f"{source}: missing {', '.join(missing)}; re-run training")
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except ValueError as exc:
            raise CheckpointError(f"{source}: {exc}; re-run training") from None

    def build(self) -> DSCMR:
        """A freshly initialised network of this shape."""
        return DSCMR(
            self.img_dim,
            self.txt_dim,
            self.num_classes,
            img_hidden=self.img_hidden,
            txt_hidden=self.txt_hidden,
            common_dim=self.common_dim,
            dropout=self.dropout,
            hash_bits=self.hash_bits,
            img_top=self.img_top,
            img_top_blocks=self.img_top_blocks,
            txt_top=self.txt_top,
            txt_top_layers=self.txt_top_layers,
        )


def _check_int(name: str, value: Any, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


class DSCMR(nn.Module):
    """Two modality subnets, a weight-shared common-space layer and a shared linear label classifier.

    Args:
        img_dim: Input image-feature dimension.
        txt_dim: Input text-feature dimension.
        num_classes: Number of labels C.
        img_hidden: Widths of the image subnet layers (paper: ``(2048,)``).
        txt_hidden: Widths of the text subnet layers (paper: ``(2048,)``).
        common_dim: Width of the common space (paper: 1024).
        dropout: Dropout after each subnet layer.
        hash_bits: Width of the optional learned hash layer ``tanh(W u)``; 0 disables it.
        img_top: Backbone whose trainable top runs first on the image input ("" = none; see :class:`DSCMRSpec`).
        img_top_blocks: Blocks in that top.
        txt_top: Text model whose trainable top runs first on the text input (see :class:`DSCMRSpec`).
        txt_top_layers: Transformer layers in that top (0 = none).
    """

    def __init__(
        self,
        img_dim: int,
        txt_dim: int,
        num_classes: int,
        *,
        img_hidden: tuple[int, ...] = (2048,),
        txt_hidden: tuple[int, ...] = (2048,),
        common_dim: int = 1024,
        dropout: float = 0.0,
        hash_bits: int = 0,
        img_top: str = "",
        img_top_blocks: int = 0,
        txt_top: str = "",
        txt_top_layers: int = 0,
    ) -> None:
        super().__init__()
        self.spec = DSCMRSpec(
            img_dim,
            txt_dim,
            num_classes,
            img_hidden=tuple(img_hidden),
            txt_hidden=tuple(txt_hidden),
            common_dim=common_dim,
            dropout=dropout,
            hash_bits=hash_bits,
            img_top=img_top,
            img_top_blocks=img_top_blocks,
            txt_top=txt_top,
            txt_top_layers=txt_top_layers,
        )  # validates the shape
        self.img_dim, self.txt_dim, self.num_classes = img_dim, txt_dim, num_classes
        self.img_top = ImageTop.build(img_top, img_top_blocks, img_dim) if img_top_blocks else None
        self.txt_top = TextTop.build(txt_top, txt_top_layers, txt_dim) if txt_top_layers else None
        feat_dim = self.img_top.num_features if self.img_top is not None else img_dim  # the subnet's input
        txt_feat = self.txt_top.num_features if self.txt_top is not None else txt_dim
        self.img_norm = InputNorm(feat_dim)
        self.txt_norm = InputNorm(txt_feat)
        self.img_net = make_subnet(feat_dim, tuple(img_hidden), dropout=dropout)
        self.txt_net = make_subnet(txt_feat, tuple(txt_hidden), dropout=dropout)
        subnet_out = img_hidden[-1] if img_hidden else feat_dim
        self.common = nn.Linear(subnet_out, common_dim)  # shared by both modalities
        self.classifier = nn.Linear(common_dim, num_classes)  # shared label classifier
        self.hash = nn.Linear(common_dim, hash_bits) if hash_bits else None
        # Per-bit batch normalisation before tanh: common-space embeddings share a large offset (their mean is
        # most of their norm), which saturates tanh(W u) to one code for every item; centring each bit keeps
        # the relaxed codes in tanh's linear range so the discrimination loss can spread them.
        self.hash_norm = nn.BatchNorm1d(hash_bits) if hash_bits else None
        self.embed_dim = common_dim
        self.hash_bits = hash_bits
        # Retrieval centre: the mean training embedding, subtracted by encode_image/encode_text. Zero while
        # training (forward never uses it); the trainer sets it so cosine ranks around the data, not the origin.
        self.center: torch.Tensor
        self.register_buffer("center", torch.zeros(common_dim))

    def _image_hidden(self, x: torch.Tensor) -> torch.Tensor:
        if self.img_top is not None:
            x = self.img_top(x)  # (B, num_features), from the frozen part's activations
        return self.img_net(self.img_norm(x))  # (B, H), the image subnet's output

    def _text_hidden(self, x: torch.Tensor) -> torch.Tensor:
        if self.txt_top is not None:
            x = self.txt_top(x)  # (B, hidden), sentence vectors from the frozen part's token rows
        return self.txt_net(self.txt_norm(x))  # (B, H)

    def _image_common(self, x: torch.Tensor) -> torch.Tensor:
        return self.common(self._image_hidden(x))  # (B, D), uncentred

    def _text_common(self, x: torch.Tensor) -> torch.Tensor:
        return self.common(self._text_hidden(x))  # (B, D), uncentred

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Image features ``(B, img_dim)`` -> common-space retrieval embeddings ``(B, D)`` (minus the centre)."""
        return self._image_common(x) - self.center

    def encode_text(self, x: torch.Tensor) -> torch.Tensor:
        """Text features ``(B, txt_dim)`` (with a text top: token rows ``(B, L * txt_dim)``) -> common-space
        retrieval embeddings ``(B, D)`` (minus the centre)."""
        return self._text_common(x) - self.center

    def set_center(self, center: torch.Tensor | None) -> None:
        """Set (or, with None, clear) the retrieval centre subtracted by :meth:`encode_image` / :meth:`encode_text`."""
        self.center.copy_(torch.zeros_like(self.center) if center is None else center.detach())

    def hash_codes(self, u: torch.Tensor) -> torch.Tensor:
        """Relaxed hash codes ``tanh(BN(W u + b))`` in (-1, 1), ``(B, bits)``; take the sign for binary codes.

        Args:
            u: Embeddings as returned by :meth:`encode_image` / :meth:`encode_text` (the centre is added back).
        """
        return self._hash_uncentred(u + self.center)

    @torch.no_grad()
    def hash_projection(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The eval-mode hash layer folded into one affine map on retrieval embeddings, in float64.

        ``sign(hash_codes(u)) == sign(u @ W.T + b)`` for embeddings ``u`` from :meth:`encode_image` /
        :meth:`encode_text`: the centre is added back into ``b``, and the batch norm's running statistics and
        affine weights are folded into ``W`` and ``b`` (tanh keeps signs).

        Returns:
            ``W`` ``(bits, D)`` and ``b`` ``(bits,)``.

        Raises:
            RuntimeError: The model has no hash layer.
        """
        if self.hash is None or self.hash_norm is None:
            raise RuntimeError("this model has no hash layer (model.hash_bits = 0)")
        W = self.hash.weight.detach().double()  # (B, D)
        b = self.hash.bias.detach().double() + W @ self.center.double()  # (B,), centred inputs
        bn = self.hash_norm
        mean, var = bn.running_mean, bn.running_var
        assert mean is not None and var is not None  # track_running_stats is on
        scale = bn.weight.detach().double() / torch.sqrt(var.double() + bn.eps)  # (B,)
        b = (b - mean.double()) * scale + bn.bias.detach().double()
        return W * scale[:, None], b

    def _hash_uncentred(self, u: torch.Tensor) -> torch.Tensor:
        if self.hash is None or self.hash_norm is None:
            raise RuntimeError("this model has no hash layer (model.hash_bits = 0)")
        h = self.hash(u)  # (B, bits)
        bn = self.hash_norm
        if self.training and h.shape[0] == 1:  # batch statistics need two rows: use the running ones
            h = nn.functional.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        else:
            h = bn(h)
        return torch.tanh(h)

    def forward(self, img: torch.Tensor, txt: torch.Tensor) -> DSCMROutput:
        """Training forward: uncentred common-space embeddings, label logits and relaxed hash codes."""
        # The shared layers see both modalities as one (2B, .) batch: one GEMM each instead of two half-size ones.
        b = img.shape[0]
        common = self.common(torch.cat([self._image_hidden(img), self._text_hidden(txt)]))
        logits = self.classifier(common)  # (2B, C)
        u, v = common[:b], common[b:]  # (B, D) each
        hu = self._hash_uncentred(u) if self.hash is not None else None
        hv = self._hash_uncentred(v) if self.hash is not None else None
        return DSCMROutput(u, v, logits[:b], logits[b:], hu, hv)
