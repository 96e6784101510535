"""Encoder engines: run the frozen encoders in torch or through ONNX Runtime, in float32 or int8.

An engine is a name:

- ``auto`` (the default): ``onnx`` when ONNX Runtime is installed (it is a dependency), else ``torch``
  (:func:`resolve_engine`); encoders with a trainable top (``data.image_train_blocks``, ``text_train_layers``)
  always run in torch;
- ``torch``: :class:`~dscmr.encoders.ImageEncoder` / :class:`~dscmr.encoders.TextEncoder` as they are;
- ``onnx``: the same networks exported to ONNX (``torch.onnx.export``, TorchScript-based exporter, batch axis
  dynamic, spatial size static) and run by an ONNX Runtime ``InferenceSession`` with full graph optimisation;
- ``onnx-int8``: the text transformer's ``MatMul`` weights dynamically quantized to int8 (per channel, the
  feed-forward output projections excepted: :data:`INT8_TEXT_EXCLUDE`); the image
  path stays float. Dynamic ``ConvInteger`` was 7x slower than float convolutions and moved MobileNetV2 features
  to cosine 0.97, and quantizing a DSCMR head's ``Gemm`` layers flipped centred image embeddings (cosine down to
  -0.6 on a small run), so there is nothing on the image side worth quantizing dynamically (``docs/onnx.md``).

:class:`OnnxImageEncoder` and :class:`OnnxTextEncoder` are drop-in subclasses of the torch encoders: the same
preprocessing and tokenizer, with the network call replaced. Their ``cache_spec()`` adds the engine, so features of
different engines never share a feature-cache entry. The ONNX files they need are exported once per machine and
kept in ``<cache_dir>/onnx/<key>/`` of the machine's cache (``$DSCMR_CACHE`` or ``~/.cache/dscmr``, whatever
``data.cache_dir`` says), where ``key`` hashes the encoder spec (weights hash included) and the library versions.

The graphs themselves (export, quantization, sessions) are built by :mod:`dscmr.encoders.onnx_graphs`, which the
run exporter (``dscmr.export.onnx``) uses too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dscmr.config import ENGINE_CHOICES
from dscmr.encoders.image import ImageDecodeError, ImageEncoder, load_image
from dscmr.encoders.onnx_graphs import (
    INT8_IMAGE_OPS,
    INT8_TEXT_EXCLUDE,
    INT8_TEXT_OPS,
    ONNX_EXPORT_VERSION,
    export_image_features,
    export_text_features,
    make_session,
    onnxruntime_available,
    quantize_int8,
    require_onnxruntime,
    tokenize,
)
from dscmr.encoders.text import TextEncoder
from dscmr.errors import ConfigError

__all__ = [
    "ENGINES",
    "OnnxImageEncoder",
    "OnnxTextEncoder",
    "check_engine",
    "onnxruntime_available",
    "require_onnxruntime",
    "resolve_engine",
    "with_engine",
]

ENGINES = ENGINE_CHOICES  # auto, torch, onnx, onnx-int8


def check_engine(engine: str) -> str:
    """``engine`` if it is one of :data:`ENGINES`; otherwise a :class:`ConfigError` listing them."""
    if engine not in ENGINES:
        raise ConfigError(f"unknown encoder engine {engine!r}; use one of {', '.join(ENGINES)}")
    return engine


def resolve_engine(engine: str) -> str:
    """The engine that runs for ``engine``: ``auto`` is ``onnx`` when ONNX Runtime is installed, else ``torch``.

    ``auto`` is the default because the exported graphs encode the same vectors (cosine >= 0.9999 per row) several
    times faster on a CPU: 4.9x the image corpus throughput and 0.31x the text query latency of torch in
    ``dscmr bench encoders`` (docs/onnx.md). The frozen encoders' first use exports them once per machine.
    """
    if check_engine(engine) != "auto":
        return engine
    return "onnx" if onnxruntime_available() else "torch"


# ----------------------------------------------------------------------------------------------------------------
# Drop-in encoders


def _versions() -> dict[str, Any]:
    import onnxruntime

    return {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "export": ONNX_EXPORT_VERSION}


def compiled_model(
    spec: dict[str, Any], cache_dir: Path, name: str, export: Any, *, int8_ops: Any = None, exclude: str = ""
) -> Path:
    """The cached ONNX file for an encoder spec, exporting (and quantizing) it on first use.

    Args:
        spec: The torch encoder's ``cache_spec()`` (identifies the network and its weights).
        cache_dir: Cache root; files go to ``cache_dir/onnx/<key>/``.
        name: ``image`` or ``text`` (file stem).
        export: Called with the float file's path when it is missing.
        int8_ops: None (or empty: nothing to quantize) for the float model; otherwise the op types to quantize.
        exclude: Node-name pattern kept in float (:func:`quantize_int8`).
    """
    blob = json.dumps({"spec": spec, "versions": _versions()}, sort_keys=True)
    folder = Path(cache_dir).expanduser() / "onnx" / hashlib.sha256(blob.encode()).hexdigest()[:24]
    fp32 = folder / f"{name}.onnx"
    if not fp32.is_file():
        export(fp32)
        (folder / "spec.json").write_text(blob + "\n")
    if not int8_ops:
        return fp32
    q = folder / f"{name}.int8.onnx"
    if not q.is_file():
        quantize_int8(fp32, q, op_types=int8_ops, exclude=exclude)
    return q


class OnnxImageEncoder(ImageEncoder):
    """:class:`ImageEncoder` whose backbone runs in ONNX Runtime (same decoding and preprocessing).

    Args:
        backbone: Registered vision model name.
        engine: ``onnx`` or ``onnx-int8``.
        cache_dir: Where the exported model is kept (``<cache_dir>/onnx/...``).
        threads: ONNX Runtime intra-op threads, and image-decoding threads (0 = torch's current count).
        **kwargs: :class:`ImageEncoder` options (``image_size``, ``weights``, ``model``).
    """

    def __init__(
        self,
        backbone: str = "mobilenet_v2_100",
        *,
        engine: str = "onnx",
        cache_dir: str | Path,
        threads: int = 0,
        **kwargs: Any,
    ) -> None:
        if check_engine(engine) in ("auto", "torch"):
            raise ConfigError("OnnxImageEncoder needs engine onnx or onnx-int8")
        require_onnxruntime()
        kwargs["channels_last"] = False
        super().__init__(backbone, **kwargs)
        self.engine = engine
        int8 = INT8_IMAGE_OPS if engine == "onnx-int8" else None
        path = compiled_model(
            super().cache_spec(), Path(cache_dir), "image", lambda p: export_image_features(self, p), int8_ops=int8
        )
        self.session = make_session(path, threads=threads)
        self.decode_threads = max(1, threads or torch.get_num_threads())

    def cache_spec(self) -> dict[str, Any]:
        return {**super().cache_spec(), "engine": self.engine, "onnx_export": ONNX_EXPORT_VERSION}

    def encode_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed images ``(B, 3, S, S)`` -> pooled features ``(B, num_features)``."""
        self.calls += 1
        feats = self.session.run(None, {"pixels": np.ascontiguousarray(x.numpy(), dtype=np.float32)})[0]
        return torch.from_numpy(feats)

    def encode_paths(
        self,
        paths: Sequence[str | Path],
        *,
        batch_size: int = 32,
        on_error: str = "raise",
        advance: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Image files -> features ``(n, num_features)``, as :meth:`ImageEncoder.encode_paths` computes them.

        Decoding and preprocessing run in a thread pool (``decode_threads``) one batch ahead of the network, so
        the next batch is decoded while ONNX Runtime (which releases the GIL) encodes this one.
        """
        from concurrent.futures import ThreadPoolExecutor

        if on_error not in ("raise", "nan"):
            raise ValueError(f"on_error must be 'raise' or 'nan', got {on_error!r}")

        def load(i: int) -> torch.Tensor | None:
            try:
                return self.preprocess_views(load_image(paths[i]))  # (V, 3, S, S)
            except ImageDecodeError:
                if on_error == "raise":
                    raise
                return None

        out = np.full((len(paths), self.num_features), np.nan, dtype=np.float32)
        starts = range(0, len(paths), batch_size)
        with ThreadPoolExecutor(self.decode_threads) as pool:
            pending = [pool.submit(load, i) for i in range(0, min(batch_size, len(paths)))]
            for s in starts:
                loaded = [(i, f.result()) for i, f in zip(range(s, s + len(pending)), pending, strict=True)]
                nxt = range(s + batch_size, min(s + 2 * batch_size, len(paths)))
                pending = [pool.submit(load, i) for i in nxt]  # decoded while this batch is encoded
                rows = [i for i, v in loaded if v is not None]
                if rows:
                    views = [v for _, v in loaded if v is not None]
                    out[rows] = self.encode_views(views, batch_size=batch_size).numpy()
                if advance is not None:
                    advance(len(loaded))
        return out


class OnnxTextEncoder(TextEncoder):
    """:class:`TextEncoder` whose transformer runs in ONNX Runtime; the tokenizer stays in Python.

    Args:
        model_name_or_path: As for :class:`TextEncoder`.
        engine: ``onnx`` or ``onnx-int8``.
        cache_dir: Where the exported model is kept.
        threads: ONNX Runtime intra-op threads (0 = torch's current count).
        model: An already loaded ``SentenceTransformer``.
    """

    def __init__(
        self,
        model_name_or_path: str = "",
        *,
        engine: str = "onnx",
        cache_dir: str | Path,
        threads: int = 0,
        model: Any = None,
    ) -> None:
        if check_engine(engine) in ("auto", "torch"):
            raise ConfigError("OnnxTextEncoder needs engine onnx or onnx-int8")
        require_onnxruntime()
        super().__init__(model_name_or_path, model=model)
        self.engine = engine
        path = compiled_model(
            super().cache_spec(),
            Path(cache_dir),
            "text",
            lambda p: export_text_features(self, p),
            int8_ops=INT8_TEXT_OPS if engine == "onnx-int8" else None,
            exclude=INT8_TEXT_EXCLUDE,
        )
        self.session = make_session(path, threads=threads)
        self.tokenizer = self.model.tokenizer

    def cache_spec(self) -> dict[str, Any]:
        return {**super().cache_spec(), "engine": self.engine, "onnx_export": ONNX_EXPORT_VERSION}

    def encode_chunk(self, texts: Sequence[str], *, batch_size: int) -> np.ndarray:
        """Checked texts -> vectors ``(n, dim)``, ``batch_size`` at a time, in the given order."""
        self.calls += 1
        out = [
            self.session.run(None, tokenize(self.tokenizer, texts[s : s + batch_size], max_length=self.max_seq_length))[
                0
            ]
            for s in range(0, len(texts), batch_size)
        ]
        return np.concatenate(out).astype(np.float32, copy=False) if out else np.zeros((0, self.dim), np.float32)


def with_engine(run: Any, engine: str | None) -> Any:
    """A loaded run whose raw queries and corpora are encoded with ``engine`` (None keeps the run's own).

    The run's ``data.engine`` (``torch`` unless it was trained with another) is what :func:`image_encoder_for` and
    :func:`text_encoder_for` read; this returns a copy of the run with it replaced.
    """
    import dataclasses

    if engine is None:
        return run
    check_engine(engine)
    data = dataclasses.replace(run.config.data, engine=engine)
    return dataclasses.replace(run, config=dataclasses.replace(run.config, data=data))
