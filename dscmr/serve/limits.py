"""What one request to ``dscmr serve`` may ask for (light: the CLI imports it before anything heavy)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from dscmr.errors import UsageError


def encode_slots(max_encodes: int = 0, *, threads: int = 1) -> int:
    """How many text / image queries ``dscmr serve`` encodes at once: ``max_encodes`` (``--max-encodes``), or with 0
    one per ``threads`` cores, at least one.

    Raises:
        UsageError: ``max_encodes`` below 0.
    """
    if max_encodes < 0:
        raise UsageError(f"--max-encodes must be 0 (one per core) or more, got {max_encodes}")
    return max_encodes or max(1, (os.cpu_count() or 1) // max(1, threads))


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (``dscmr serve`` options set them)."""

    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_text_chars: int = 1000
    max_batch: int = 32
    max_k: int = 1000
    max_shortlist: int = 100_000  # above the default the bundle records for 10M items at 64 bits (about 45,000)

    @property
    def max_body_bytes(self) -> int:
        """A request body may hold the image base64-encoded (4/3) plus the other fields."""
        return self.max_upload_bytes * 4 // 3 + 65_536

    def to_dict(self) -> dict[str, int]:
        return asdict(self)
