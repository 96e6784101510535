"""Small shared utilities (atomic file writes)."""

from dscmr.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text, file_sha256

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_text", "file_sha256"]
