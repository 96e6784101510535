"""Shared helpers for the encoder and folder-dataset tests: small images and tiny folder datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TEST_IMAGE_SIZE = 64  # small input so the real MobileNetV2 runs fast on CPU


def save_image(path: Path, *, seed: int = 0, mode: str = "RGB", size: tuple[int, int] = (40, 30)) -> Path:
    """Write a random image in PIL ``mode`` (RGB, L, RGBA, CMYK, P, ...) to ``path``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    im = Image.fromarray(arr, mode="RGB")
    if mode != "RGB":
        im = im.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    im.save(path, format=fmt)
    return path


def write_folder(root: Path, records: list[dict], *, images: dict[str, int] | None = None, csv: bool = False) -> Path:
    """A folder dataset: the given images (name -> seed) under ``root`` and the records as jsonl (or csv)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, seed in (images or {}).items():
        save_image(root / name, seed=seed)
    if csv:
        import csv as _csv

        with open(root / "captions.csv", "w", newline="", encoding="utf-8") as fh:
            fields = ["image", "text", "labels"] + (["split"] if any("split" in r for r in records) else [])
            w = _csv.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            for r in records:
                row = dict(r)
                row["labels"] = "|".join(r["labels"]) if isinstance(r.get("labels"), list) else r.get("labels")
                w.writerow(row)
    else:
        (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return root


def small_records() -> tuple[list[dict], dict[str, int]]:
    """12 images, 16 records (some images with two captions), multi-label, explicit splits."""
    images = {f"images/im{i:02d}.png": i for i in range(12)}
    colours = ["red", "blue", "green"]
    records = []
    for i in range(12):
        split = "test" if i % 4 == 0 else "val" if i % 4 == 1 else "train"
        labels = [colours[i % 3]] + (["square"] if i % 2 else [])
        records.append(
            {
                "image": f"images/im{i:02d}.png",
                "text": f"picture {i} in {colours[i % 3]}",
                "labels": labels,
                "split": split,
            }
        )
        if i < 4:
            records.append(
                {
                    "image": f"images/im{i:02d}.png",
                    "text": f"another caption of picture {i}",
                    "labels": labels,
                    "split": split,
                }
            )
    return records, images
