"""Image checks for the service: safe decoding of uploads and cached JPEG thumbnails of indexed images.

Clients never send paths. A thumbnail is asked for by bundle and id; the item's stored path must resolve (symlinks
followed) inside one of the dataset folders the bundle was built from, or it is refused.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path

from dscmr.errors import QueryError


class PayloadTooLargeError(QueryError):
    """An upload or request body is over the size limit (HTTP 413)."""


class UnsupportedImageError(QueryError):
    """An upload is not a decodable image (HTTP 415)."""


class ItemNotFoundError(QueryError):
    """A bundle has no item with the requested id, or the item has no image (HTTP 404)."""


def check_image_bytes(data: bytes, *, max_bytes: int, max_pixels: int) -> tuple[int, int]:
    """Check that ``data`` is one image of at most ``max_bytes`` bytes and ``max_pixels`` pixels, without decoding
    more than its header first (a decompression bomb is refused before it is expanded).

    Returns:
        The image's ``(width, height)``.

    Raises:
        PayloadTooLargeError: Too many bytes.
        UnsupportedImageError: Not an image, a truncated one, or too many pixels.
    """
    from PIL import Image, UnidentifiedImageError

    if len(data) > max_bytes:
        raise PayloadTooLargeError(f"the image has {len(data)} bytes, the limit is {max_bytes}; send a smaller file")
    if not data:
        raise UnsupportedImageError("the upload is empty; send a JPEG, PNG, GIF, BMP or WebP image")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise UnsupportedImageError(
                    f"the image is {w}x{h} pixels, the limit is {max_pixels} pixels; send a smaller image"
                )
            im.verify()
    except Image.DecompressionBombError:
        raise UnsupportedImageError(
            f"the image has far more pixels than the {max_pixels} allowed (a decompression bomb?); send a smaller image"
        ) from None
    except UnidentifiedImageError as exc:
        raise UnsupportedImageError(f"the upload is not a readable image ({type(exc).__name__}); send a JPEG, "
                                    "PNG, GIF, BMP or WebP file") from None  # fmt: skip
    except (OSError, SyntaxError, ValueError) as exc:
        raise UnsupportedImageError(f"the upload is a broken image ({exc}); send an intact file") from None
    return w, h


def resolve_inside(item: str, roots: tuple[Path, ...]) -> Path:
    """The real path of indexed image ``item``, which must lie inside one of ``roots``.

    Raises:
        ItemNotFoundError: No dataset folder is known, or the path leaves every one of them, or it is gone.
    """
    p = Path(item)
    real = p.resolve()
    if not any(real.is_relative_to(r) for r in roots):
        raise ItemNotFoundError("the item's image is outside the dataset folder the bundle was built from")
    if not real.is_file():
        raise ItemNotFoundError("the item's image file is gone from the dataset folder; rebuild the bundle")
    return real


class ThumbnailCache:
    """An in-memory LRU of JPEG thumbnails keyed by ``(bundle, version, id, size)``.

    Args:
        max_items: Thumbnails kept (each a few kB).
        max_pixels: Source images larger than this are refused rather than decoded.
    """

    def __init__(self, *, max_items: int = 4096, max_pixels: int = 40_000_000) -> None:
        self.max_items = max_items
        self.max_pixels = max_pixels
        self._items: OrderedDict[tuple[str, int, int, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int, int, int], path: Path) -> bytes:
        """The JPEG for ``key``, made from ``path`` on a miss."""
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
                return data
        data = make_thumbnail(path, size=key[3], max_pixels=self.max_pixels)
        with self._lock:
            self._items[key] = data
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return data


def make_thumbnail(path: Path, *, size: int, max_pixels: int) -> bytes:
    """A JPEG of ``path`` fitted into ``size`` x ``size`` (aspect kept)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise UnsupportedImageError(f"the indexed image is {w}x{h} pixels, over the {max_pixels} limit")
            im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale
            rgb = im.convert("RGB")
            rgb.thumbnail((size, size))
    except (OSError, Image.DecompressionBombError) as exc:
        raise UnsupportedImageError(f"the indexed image cannot be decoded ({type(exc).__name__})") from None
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=85)
    return buf.getvalue()
