"""A seed ensemble of DSCMR networks, used as one retrieval model.

::

    x -> member 0: encode (centre subtracted) -> L2-normalise -\
    x -> member 1: encode (centre subtracted) -> L2-normalise --> concatenate * 1/sqrt(N) -> (B, N * D), unit norm
    ...                                                        /

Each member keeps its own input standardisation and retrieval centre, applied before its embedding is normalised.
The cosine of two ensemble embeddings is then the mean of the members' cosines, so any cosine index over the
concatenated vectors ranks by the ensemble's mean similarity. The members' label classifiers serve training
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


@dataclass(frozen=True)
class EnsembleSpec:
    """Everything needed to rebuild a :class:`DSCMREnsemble`: the members' common shape and their number.

    Attributes:
        member: The shape of every member.
        size: The number of members N, 1 to :data:`MAX_MEMBERS`.
    """

    ARCHITECTURE: ClassVar[str] = "dscmr_ensemble"

    member: DSCMRSpec
    size: int

    def __post_init__(self) -> None:
        n = self.size
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_MEMBERS:
            raise ValueError(f"size must be an integer from 1 to {MAX_MEMBERS}, got {n!r}")
        if self.member.hash_bits:
            raise ValueError("ensemble members have no hash layer (hash_bits must be 0)")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description, tagged with the architecture name (the member's tag is its own)."""
        return {"architecture": self.ARCHITECTURE, "size": self.size, "member": self.member.to_dict()}

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
            return cls(member, data["size"])
        except ValueError as exc:
            raise CheckpointError(f"{source}: {exc}; re-run training") from None

    def build(self) -> DSCMREnsemble:
        """An ensemble of freshly initialised members of this shape (load weights into it)."""
        return DSCMREnsemble([self.member.build() for _ in range(self.size)])


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
    ``embed_dim`` = N * common_dim, ``img_dim``, ``txt_dim``, ``num_classes``, ``hash_bits`` = 0, ``hash`` = None),
    so code that loads a run uses it unchanged. It is built from trained members; it is not trained as a whole.

    Args:
        members: The trained networks (at least one; same input widths, classes, common width, no hash layer).

    Raises:
        ValueError: No members, or members of different shapes.
    """

    def __init__(self, members: list[DSCMR]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        spec = members[0].spec
        if any(m.spec != spec for m in members):
            raise ValueError("ensemble members must all have the same shape (DSCMRSpec)")
        self.spec = EnsembleSpec(spec, len(members))  # validates the size and the hash layer
        self.members = nn.ModuleList(members)
        self.img_dim, self.txt_dim, self.num_classes = spec.img_dim, spec.txt_dim, spec.num_classes
        self.embed_dim = len(members) * spec.common_dim
        self.hash_bits = 0
        self.hash: nn.Linear | None = None  # no learned hash layer: index with sign / itq codes
        self._scale = 1.0 / math.sqrt(len(members))

    def _member_models(self) -> list[DSCMR]:
        return [m for m in self.members if isinstance(m, DSCMR)]

    def _join(self, parts: list[torch.Tensor]) -> torch.Tensor:
        unit = [nn.functional.normalize(p, dim=1) for p in parts]  # N x (B, D), each row unit norm
        return torch.cat(unit, dim=1) * self._scale  # (B, N * D), unit norm

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Image features ``(B, img_dim)`` -> ensemble embeddings ``(B, N * D)`` of unit norm."""
        return self._join([m.encode_image(x) for m in self._member_models()])

    def encode_text(self, x: torch.Tensor) -> torch.Tensor:
        """Text features ``(B, txt_dim)`` -> ensemble embeddings ``(B, N * D)`` of unit norm."""
        return self._join([m.encode_text(x) for m in self._member_models()])

    def hash_projection(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Always raises: an ensemble has no learned hash layer (as a DSCMR model with ``hash_bits = 0``)."""
        raise RuntimeError("this model has no hash layer (a seed ensemble; model.hash_bits = 0)")
