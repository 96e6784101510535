"""A corpus as shards: the plan, which finished shards a rerun may keep, and encoding one shard.

A shard is ``shard_size`` consecutive rows of one modality (distinct images, or distinct texts). It is the unit of
work of both runners -- the in-process loop and the Ray actors -- which call the same :class:`ShardEncoder`, so the
two give the same features. A shard's features depend only on its own inputs (the image encoder runs in eval mode;
the text encoder's result does not depend on batching), never on which worker ran it or when.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dscmr.config import DataConfig
from dscmr.data.features_dir import FeaturesDir, FeaturesManifest, ShardEntry
from dscmr.encoders import fingerprint_files, fingerprint_texts
from dscmr.errors import ConfigError

IMAGE_BATCH = 32  # default images per backbone call
TEXT_BATCH = 64  # default texts per SentenceTransformer batch


@dataclass(frozen=True)
class ShardTask:
    """A shard to encode: its manifest entry (not yet finished) and its inputs.

    Attributes:
        entry: Rows, file and inputs fingerprint.
        items: Image files or texts, one per row.
    """

    entry: ShardEntry
    items: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps({"entry": self.entry.to_dict(), "items": list(self.items)})

    @classmethod
    def from_json(cls, text: str) -> ShardTask:
        d = json.loads(text)
        return cls(ShardEntry.from_dict(d["entry"]), tuple(d["items"]))


def plan_shards(kind: str, items: Sequence[str], *, shard_size: int) -> list[ShardTask]:
    """Cut ``items`` of one modality into shards of ``shard_size`` rows, fingerprinting each shard's inputs.

    Image shards are fingerprinted by their files' contents, text shards by their texts.
    """
    tasks = []
    for index, start in enumerate(range(0, len(items), shard_size)):
        chunk = tuple(items[start : start + shard_size])
        inputs = fingerprint_files(chunk) if kind == "image" else fingerprint_texts(chunk)
        entry = ShardEntry(kind, index, start, start + len(chunk), inputs, FeaturesDir.shard_file(kind, index))
        tasks.append(ShardTask(entry, chunk))
    return tasks


def _same_spec(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def reusable_shards(
    previous: FeaturesManifest | None,
    folder: FeaturesDir,
    *,
    image_spec: dict[str, Any],
    text_spec: dict[str, Any],
    shard_size: int,
) -> dict[tuple[str, int], ShardEntry]:
    """The finished shards of a previous (possibly killed) run that a rerun may keep, by ``(kind, index)``.

    A shard is kept when the encoders, the shard size and the shard's rows and inputs fingerprint are unchanged
    and its file is intact (the caller compares rows and inputs against the new plan).
    """
    if previous is None or previous.shard_size != shard_size:
        return {}
    kept: dict[tuple[str, int], ShardEntry] = {}
    for entry in previous.shards:
        spec = image_spec if entry.kind == "image" else text_spec
        old_spec = previous.image_encoder if entry.kind == "image" else previous.text_encoder
        if _same_spec(spec, old_spec) and folder.shard_intact(entry):
            kept[(entry.kind, entry.index)] = entry
    return kept


def reuse(task: ShardTask, kept: dict[tuple[str, int], ShardEntry]) -> ShardEntry | None:
    """The kept entry for ``task`` when it covers the same rows with the same inputs, else None."""
    old = kept.get((task.entry.kind, task.entry.index))
    if old is None:
        return None
    same = (old.start, old.stop, old.inputs_sha256, old.file) == (
        task.entry.start,
        task.entry.stop,
        task.entry.inputs_sha256,
        task.entry.file,
    )
    return old if same else None


class ShardEncoder:
    """Holds the image and text encoders and turns a :class:`ShardTask` into a written shard.

    Args:
        folder: The features folder the shards go to.
        image_encoder: An :class:`~dscmr.encoders.ImageEncoder`.
        text_encoder: A :class:`~dscmr.encoders.TextEncoder`.
        batch_size: Inputs per encoder call (default 32 images, 64 texts); it does not change the features.
    """

    def __init__(self, folder: str | Path, *, image_encoder: Any, text_encoder: Any, batch_size: int = 0) -> None:
        self.folder = FeaturesDir(folder)
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.batch_size = batch_size
        self.encoded: list[tuple[str, int]] = []  # (kind, index) of every shard encoded, in order (tests)

    @classmethod
    def from_config(cls, folder: str | Path, cfg: DataConfig, *, batch_size: int = 0) -> ShardEncoder:
        """The encoders a data config describes (``data.image_backbone``, ``image_size``, ``text_model``).

        Raises:
            ConfigError: The config trains an encoder top (its features are activations or token rows, not the
                pooled vectors a features folder holds).
        """
        from dscmr.encoders import image_encoder_for, text_encoder_for

        if cfg.image_train_blocks or cfg.image_train_views or cfg.text_train_layers:
            raise ConfigError(
                "a features folder holds frozen pooled features; set data.image_train_blocks, image_train_views and "
                "text_train_layers to 0 for dscmr encode"
            )

        return cls(
            folder, image_encoder=image_encoder_for(cfg), text_encoder=text_encoder_for(cfg), batch_size=batch_size
        )

    def __call__(self, task: ShardTask) -> ShardEntry:
        """Encode the task's inputs, write the shard atomically and return its finished entry."""
        items = list(task.items)
        if task.entry.kind == "image":
            bs = self.batch_size or IMAGE_BATCH
            feats = self.image_encoder.encode_paths(items, batch_size=bs, on_error="nan")  # (rows, d_img)
        else:
            feats = self.text_encoder.encode(items, batch_size=self.batch_size or TEXT_BATCH)  # (rows, d_txt)
        self.encoded.append((task.entry.kind, task.entry.index))
        return self.folder.write_shard(dataclasses.replace(task.entry, sha256="", nan_rows=()), feats)
