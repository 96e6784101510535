"""A seed ensemble of DSCMR networks, used as one retrieval model.

::

    x -> member 0: encode (centre subtracted) -> L2-normalise -\
    x -> member 1: encode (centre subtracted) -> L2-normalise --> concatenate * 1/sqrt(N) -> (B, N * D), unit norm
    ...                                                        /
                                        (optional) -> @ projection (N * D, K) -> L2-normalise -> (B, K)

Each member keeps its own input standardisation and retrieval centre, applied before its embedding is normalised.
The cosine of two ensemble embeddings is then the mean of the members' cosines, so any cosine index over the
concatenated vectors ranks by the ensemble's mean similarity. An ensemble with ``dim = K > 0`` maps the
concatenation onto its first K principal axes (:meth:`DSCMREnsemble.fit_projection`, fitted once after training on
the training rows of both modalities; no mean is subtracted, since every member's embedding is already centred),
so an index stores K floats per item instead of N * D. The members' label classifiers serve training
only (nothing downstream of a run reads label-space outputs), so the ensemble exposes none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from dscmr.errors import CheckpointError
from dscmr.models.dscmr import DSCMR, DSCMRSpec

MAX_MEMBERS = 16
FIT_ROWS = 4096  # at most this many rows of each modality fit the projection (an exact SVD of <= 8192 rows)


@dataclass(frozen=True)
class EnsembleSpec:
    """Everything needed to rebuild a :class:`DSCMREnsemble`: the members' common shape and their number.

    Attributes:
        member: The shape of every member.
        size: The number of members N, 1 to :data:`MAX_MEMBERS`.
        dim: Width K of the principal-axes projection, 1 to N * common_dim; 0 = no projection (N * common_dim).
    """

    ARCHITECTURE: ClassVar[str] = "dscmr_ensemble"

    member: DSCMRSpec
    size: int
    dim: int = 0

    def __post_init__(self) -> None:
        n = self.size
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_MEMBERS:
            raise ValueError(f"size must be an integer from 1 to {MAX_MEMBERS}, got {n!r}")
        if self.member.hash_bits:
            raise ValueError("ensemble members have no hash layer (hash_bits must be 0)")
        k, width = self.dim, n * self.member.common_dim
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= width:
            raise ValueError(f"dim must be an integer from 0 to {width} (size x common_dim), got {k!r}")

    @property
    def joined_dim(self) -> int:
        """Width of the members' concatenation, before any projection: N * common_dim."""
        return self.size * self.member.common_dim

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description, tagged with the architecture name (the member's tag is its own)."""
        return {"architecture": self.ARCHITECTURE, "size": self.size, "dim": self.dim, "member": self.member.to_dict()}

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "the model description") -> EnsembleSpec:
        """Validate and read a description written by :meth:`to_dict`; other keys are ignored.

        Raises:
            CheckpointError: Not an object, another architecture, a missing or invalid field.
        """
        if not isinstance(data, dict) or data.get("architecture") != cls.ARCHITECTURE:
            raise CheckpointError(f"{source} does not describe a {cls.ARCHITECTURE!r} model; re-run training")
        if "size" not in data or "member" not in data:
            raise CheckpointError(f"{source}: missing size or member; re-run training")
        member = DSCMRSpec.from_dict(data["member"], source=f"{source} (member)")
        try:
            return cls(member, data["size"], data.get("dim", 0))  # files written before projections have no dim
        except ValueError as exc:
            raise CheckpointError(f"{source}: {exc}; re-run training") from None

    def build(self) -> DSCMREnsemble:
        """An ensemble of freshly initialised members of this shape (load weights into it)."""
        return DSCMREnsemble([self.member.build() for _ in range(self.size)], dim=self.dim)


def spec_from_dict(data: Any, *, source: str = "the model description") -> DSCMRSpec | EnsembleSpec:
    """The spec a ``model.json`` describes: an :class:`EnsembleSpec` when tagged so, else a :class:`DSCMRSpec`.

    Raises:
        CheckpointError: The description is damaged (see the two ``from_dict``).
    """
    if isinstance(data, dict) and data.get("architecture") == EnsembleSpec.ARCHITECTURE:
        return EnsembleSpec.from_dict(data, source=source)
    return DSCMRSpec.from_dict(data, source=source)


class DSCMREnsemble(nn.Module):
    """N DSCMR members of one shape whose L2-normalised embeddings are concatenated, each scaled by 1/sqrt(N).

    It has the retrieval interface of :class:`~dscmr.models.DSCMR` (``encode_image``, ``encode_text``,
    ``embed_dim`` = N * common_dim or the projection's K, ``img_dim``, ``txt_dim``, ``num_classes``, ``hash_bits`` = 0,
    ``hash`` = None), so code that loads a run uses it unchanged. It is built from trained members; it is not
    trained as a whole.

    Args:
        members: The trained networks (at least one; same input widths, classes, common width, no hash layer).
        dim: Width K of the principal-axes projection (0 = none). A new ensemble's projection is all zeros until
            :meth:`fit_projection` (or loading a saved state) sets it.

    Raises:
        ValueError: No members, members of different shapes, or a ``dim`` out of range.
    """

    def __init__(self, members: list[DSCMR], *, dim: int = 0) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        spec = members[0].spec
        if any(m.spec != spec for m in members):
            raise ValueError("ensemble members must all have the same shape (DSCMRSpec)")
        self.spec = EnsembleSpec(spec, len(members), dim)  # validates the size, the hash layer and dim
        self.members = nn.ModuleList(members)
        self.img_dim, self.txt_dim, self.num_classes = spec.img_dim, spec.txt_dim, spec.num_classes
        self.embed_dim = dim or self.spec.joined_dim
        self.hash_bits = 0
        self.hash: nn.Linear | None = None  # no learned hash layer: index with sign / itq codes
        self._scale = 1.0 / math.sqrt(len(members))
        self.projection: torch.Tensor | None
        self.register_buffer("projection", torch.zeros(self.spec.joined_dim, dim) if dim else None)

    def _member_models(self) -> list[DSCMR]:
        return [m for m in self.members if isinstance(m, DSCMR)]

    def _join(self, parts: list[torch.Tensor]) -> torch.Tensor:
        unit = [nn.functional.normalize(p, dim=1) for p in parts]  # N x (B, D), each row unit norm
        return torch.cat(unit, dim=1) * self._scale  # (B, N * D), unit norm

    def _project(self, joined: torch.Tensor) -> torch.Tensor:
        if self.projection is None:
            return joined
        return nn.functional.normalize(joined @ self.projection, dim=1)  # (B, K), unit norm

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Image features ``(B, img_dim)`` -> ensemble embeddings ``(B, embed_dim)`` of unit norm."""
        return self._project(self._join([m.encode_image(x) for m in self._member_models()]))

    def encode_text(self, x: torch.Tensor) -> torch.Tensor:
        """Text features ``(B, txt_dim)`` -> ensemble embeddings ``(B, embed_dim)`` of unit norm."""
        return self._project(self._join([m.encode_text(x) for m in self._member_models()]))

    @torch.no_grad()
    def fit_projection(self, img: torch.Tensor, txt: torch.Tensor) -> None:
        """Set the projection to the first ``dim`` principal axes of the members' concatenated embeddings of
        ``img`` ``(n, img_dim)`` and ``txt`` ``(m, txt_dim)`` together (the training rows; call in eval mode).

        At most :data:`FIT_ROWS` evenly spaced rows of each modality are used, so the fit stays a few seconds.

        Raises:
            ValueError: The ensemble has no projection (``dim = 0``), or fewer than ``dim`` rows are given.
        """
        if self.projection is None:
            raise ValueError("this ensemble has no projection (dim = 0)")
        k = self.projection.shape[1]
        rows = fit_rows(len(img), len(txt))
        if rows < k:
            raise ValueError(f"a {k}-wide projection needs at least {k} training rows, got {rows}")
        img, txt = _evenly(img, FIT_ROWS), _evenly(txt, FIT_ROWS)
        members = self._member_models()
        joined = torch.cat(
            [self._join([m.encode_image(img) for m in members]), self._join([m.encode_text(txt) for m in members])]
        ).double()
        _, _, vh = torch.linalg.svd(joined - joined.mean(dim=0), full_matrices=False)  # axes, largest first
        self.projection.copy_(vh[:k].T.to(self.projection.dtype))

    def hash_projection(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Always raises: an ensemble has no learned hash layer (as a DSCMR model with ``hash_bits = 0``)."""
        raise RuntimeError("this model has no hash layer (a seed ensemble; model.hash_bits = 0)")


def fit_rows(n_img: int, n_txt: int) -> int:
    """How many rows :meth:`DSCMREnsemble.fit_projection` fits on, given ``n_img`` image and ``n_txt`` text rows."""
    return min(n_img, FIT_ROWS) + min(n_txt, FIT_ROWS)


def _evenly(x: torch.Tensor, limit: int) -> torch.Tensor:
    """At most ``limit`` rows of ``x``, evenly spaced (all of them when there are few enough)."""
    if len(x) <= limit:
        return x
    return x[torch.linspace(0, len(x) - 1, limit).round().long()]
