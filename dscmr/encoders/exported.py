"""A run exported to ONNX by ``dscmr export onnx``: its folder layout, manifest and runner.

Layout of an export folder::

    manifest.json        ExportManifest: what each file is, its inputs and outputs, preprocessing, versions
    image.onnx           pixels float32 (B, 3, S, S), normalised -> embedding float32 (B, D)
    text.onnx            input_ids, attention_mask int64 (B, L) -> embedding float32 (B, D)
    text.int8.onnx       the text graph with dynamically quantized int8 weights (``--int8`` only; the manifest's
                         int8 image graph is image.onnx, see dscmr.encoders.engine)
    tokenizer/           the text model's tokenizer (``save_pretrained``); tokenisation stays in Python

Each graph is a full query path: the frozen encoder (image backbone with pooling; sentence-transformers model with
pooling and normalisation) followed by the run's DSCMR subnet, shared common-space layer and retrieval centre, so
its output is the run's common-space embedding (what ``model.encode_image`` / ``encode_text`` return). The batch
axis (and the text length) is dynamic; the image side is fixed at the run's ``data.image_size``.

:class:`ExportedRun` runs such a folder with ONNX Runtime and no torch model: decode and preprocess images as
:class:`~dscmr.encoders.ImageEncoder` does, tokenize as ``SentenceTransformer.encode`` does.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dscmr.encoders.image import build_transform, load_image
from dscmr.encoders.onnx_graphs import make_session, tokenize
from dscmr.encoders.text import check_texts
from dscmr.errors import CheckpointError

MANIFEST_FILE = "manifest.json"
TOKENIZER_DIR = "tokenizer"
EXPORT_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ImageGraph:
    """The image query path: file names, input size and normalisation."""

    file: str
    file_int8: str
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    backbone: str
    fit: str = "crop"
    input: str = "pixels"
    output: str = "embedding"


@dataclass(frozen=True)
class TextGraph:
    """The text query path: file names, tokenizer folder and maximum length."""

    file: str
    file_int8: str
    tokenizer: str
    max_seq_length: int
    text_model: str
    inputs: tuple[str, ...] = ("input_ids", "attention_mask")
    output: str = "embedding"


@dataclass(frozen=True)
class ExportManifest:
    """``manifest.json`` of an export folder (see the module docstring)."""

    run: str
    checkpoint_sha256: str
    embed_dim: int
    image: ImageGraph
    text: TextGraph
    opset: int
    versions: dict[str, str] = field(default_factory=dict)
    format_version: int = EXPORT_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExportManifest:
        img, txt = dict(d["image"]), dict(d["text"])
        img["mean"], img["std"] = tuple(img["mean"]), tuple(img["std"])
        txt["inputs"] = tuple(txt.get("inputs", ("input_ids", "attention_mask")))
        rest = {k: v for k, v in d.items() if k not in ("image", "text")}
        return cls(image=ImageGraph(**img), text=TextGraph(**txt), **rest)

    @classmethod
    def read(cls, folder: str | Path) -> ExportManifest:
        """Read ``folder/manifest.json``.

        Raises:
            CheckpointError: The folder or manifest is missing, unreadable or from a newer format.
        """
        path = Path(folder) / MANIFEST_FILE
        if not path.is_file():
            raise CheckpointError(f"{folder} is not an ONNX export ({MANIFEST_FILE} missing); run `dscmr export onnx`")
        try:
            d = json.loads(path.read_text())
            manifest = cls.from_dict(d)
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{path} is corrupt ({exc}); export the run again") from None
        if manifest.format_version > EXPORT_FORMAT_VERSION:
            raise CheckpointError(f"{path} has format {manifest.format_version}; upgrade dscmr to read it")
        return manifest


class ExportedRun:
    """Common-space embeddings from an export folder, with ONNX Runtime only.

    Args:
        folder: The ``--out`` folder of ``dscmr export onnx``.
        int8: Use the int8 graphs (exported with ``--int8``).
        threads: Intra-op threads (0 = torch's current count).

    Raises:
        CheckpointError: Not an export folder, or the int8 graphs were not exported.
    """

    def __init__(self, folder: str | Path, *, int8: bool = False, threads: int = 0) -> None:
        self.folder = Path(folder)
        self.manifest = ExportManifest.read(self.folder)
        m = self.manifest
        files = (m.image.file_int8, m.text.file_int8) if int8 else (m.image.file, m.text.file)
        for name in files:
            if not name or not (self.folder / name).is_file():
                what = "int8 graphs (export with --int8)" if int8 else "ONNX graphs"
                raise CheckpointError(f"{self.folder} lacks its {what}; export the run again")
        self.image_session = make_session(self.folder / files[0], threads=threads)
        self.text_session = make_session(self.folder / files[1], threads=threads)
        self.transform = build_transform(m.image.image_size, mean=m.image.mean, std=m.image.std, fit=m.image.fit)
        self._tokenizer: Any = None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(self.folder / self.manifest.text.tokenizer))
        return self._tokenizer

    def encode_pixels(self, x: np.ndarray) -> np.ndarray:
        """Preprocessed images ``(B, 3, S, S)`` float32 -> embeddings ``(B, D)``."""
        feed = {self.manifest.image.input: np.ascontiguousarray(x, dtype=np.float32)}
        return self.image_session.run(None, feed)[0]

    def encode_image_paths(self, paths: Sequence[str | Path], *, batch_size: int = 32) -> np.ndarray:
        """Image files -> embeddings ``(n, D)``; raises :class:`~dscmr.encoders.ImageDecodeError` on a bad file."""
        import torch

        out = [np.zeros((0, self.manifest.embed_dim), np.float32)]
        for s in range(0, len(paths), batch_size):
            x = torch.stack([self.transform(load_image(p)) for p in paths[s : s + batch_size]])  # (B, 3, S, S)
            out.append(self.encode_pixels(x.numpy()))
        return np.concatenate(out)

    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """Sentences -> embeddings ``(n, D)``; raises :class:`~dscmr.errors.QueryError` on an empty text."""
        items = check_texts(texts)
        out = [np.zeros((0, self.manifest.embed_dim), np.float32)]
        for s in range(0, len(items), batch_size):
            feed = tokenize(self.tokenizer, items[s : s + batch_size], max_length=self.manifest.text.max_seq_length)
            out.append(self.text_session.run(None, feed)[0])
        return np.concatenate(out)
