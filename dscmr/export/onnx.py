"""``dscmr export onnx``: a trained run's query paths as ONNX graphs, a tokenizer and a manifest.

The folder layout and the manifest type belong to :mod:`dscmr.encoders.exported` (which also runs an export);
this module builds the graphs. Each graph is encoder + DSCMR head in one (see that module's docstring), exported
with the TorchScript-based exporter (:func:`dscmr.encoders.onnx_graphs.export_module`). With ``int8=True`` the text
graph's transformer ``MatMul`` weights are dynamically quantized (per channel); the image path has nothing worth
quantizing dynamically (:mod:`dscmr.encoders.engine`), so the manifest's int8 image graph is ``image.onnx``.

The export is written to a temporary folder next to ``out`` and renamed into place, so an interrupted export
leaves no half-written folder; an existing export at ``out`` is replaced, any other non-empty folder is refused.
"""

from __future__ import annotations

import copy
import os
import shutil
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from dscmr.encoders.exported import MANIFEST_FILE, TOKENIZER_DIR, ExportManifest, ImageGraph, TextGraph
from dscmr.encoders.extract import RAW_FORMATS, image_encoder_for, text_encoder_for
from dscmr.encoders.onnx_graphs import (
    INT8_IMAGE_OPS,
    INT8_TEXT_EXCLUDE,
    INT8_TEXT_OPS,
    OPSET,
    ImageFeatures,
    SentenceEmbedding,
    export_module,
    quantize_int8,
    require_onnxruntime,
    sample_tokens,
)
from dscmr.errors import CheckpointError, UsageError
from dscmr.train import LoadedRun, load_run
from dscmr.utils.io import atomic_write_json


class ImageQueryPath(nn.Module):
    """Preprocessed images ``(B, 3, S, S)`` -> the run's image embeddings ``(B, D)``."""

    def __init__(self, backbone: nn.Module, run_model: nn.Module) -> None:
        super().__init__()
        self.features = ImageFeatures(backbone)
        self.head = run_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.encode_image(self.features(x))  # type: ignore[operator]  # (B, D)


class TextQueryPath(nn.Module):
    """Token ids and mask ``(B, L)`` -> the run's text embeddings ``(B, D)``."""

    def __init__(self, st_model: object, run_model: nn.Module) -> None:
        super().__init__()
        self.features = SentenceEmbedding(st_model)
        self.head = run_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head.encode_text(self.features(input_ids, attention_mask))  # type: ignore[operator]


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_FILE).is_file())):
        raise UsageError(f"{out} exists and is not an ONNX export; pass a new or empty --out folder")


def _check_raw(run: LoadedRun) -> None:
    data = run.config.data
    if data.format not in RAW_FORMATS:
        raise UsageError(
            f"{run.run_dir} was trained on precomputed features (data.format={data.format!r}) and has no raw "
            f"encoders to export; export a run trained on a folder or built-in dataset ({', '.join(RAW_FORMATS)})"
        )
    views, blocks = getattr(data, "image_views", "one"), getattr(data, "image_train_blocks", 0)
    if views != "one" or blocks:
        raise UsageError(
            f"{run.run_dir} uses data.image_views={views!r}, data.image_train_blocks={blocks}; the ONNX export "
            "covers single-view queries through a frozen backbone (image_views='one', image_train_blocks=0)"
        )
    layers = getattr(data, "text_train_layers", 0)
    if layers:
        raise UsageError(
            f"{run.run_dir} trained the last {layers} layer(s) of its sentence encoder (data.text_train_layers); "
            "the ONNX export covers queries through a frozen sentence encoder only (text_train_layers=0)"
        )


def _write_graphs(run: LoadedRun, tmp: Path, *, int8: bool) -> tuple[ImageGraph, TextGraph]:
    """Export both query paths (and their int8 versions) into ``tmp``."""
    data = replace(run.config.data, engine="torch")
    img_enc, txt_enc = image_encoder_for(data), text_encoder_for(data)
    if img_enc.num_features != run.model.img_dim or txt_enc.dim != run.model.txt_dim:
        raise CheckpointError(
            f"{run.run_dir}: the encoders give {img_enc.num_features}/{txt_enc.dim}-d features but the model expects "
            f"{run.model.img_dim}/{run.model.txt_dim}-d; the run's data.* encoder settings do not match its model"
        )
    head = copy.deepcopy(run.model).eval()
    backbone = copy.deepcopy(img_enc.model).to(memory_format=torch.contiguous_format).eval()
    s = img_enc.image_size
    export_module(
        ImageQueryPath(backbone, head),
        (torch.zeros(2, 3, s, s),),
        tmp / "image.onnx",
        input_names=["pixels"],
        output_names=["embedding"],
        dynamic_axes={"pixels": {0: "batch"}, "embedding": {0: "batch"}},
    )
    toks = sample_tokens(txt_enc)
    export_module(
        TextQueryPath(txt_enc.model, head),
        (torch.from_numpy(toks["input_ids"]), torch.from_numpy(toks["attention_mask"])),
        tmp / "text.onnx",
        input_names=["input_ids", "attention_mask"],
        output_names=["embedding"],
        dynamic_axes={k: {0: "batch", 1: "seq"} for k in toks} | {"embedding": {0: "batch"}},
    )
    if int8 and INT8_IMAGE_OPS:
        quantize_int8(tmp / "image.onnx", tmp / "image.int8.onnx", op_types=INT8_IMAGE_OPS)
    if int8:
        quantize_int8(tmp / "text.onnx", tmp / "text.int8.onnx", op_types=INT8_TEXT_OPS, exclude=INT8_TEXT_EXCLUDE)
    txt_enc.model.tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
    image = ImageGraph(
        file="image.onnx",
        file_int8=("image.int8.onnx" if INT8_IMAGE_OPS else "image.onnx") if int8 else "",
        image_size=s,
        mean=tuple(img_enc.mean),
        std=tuple(img_enc.std),
        backbone=img_enc.backbone_name,
        fit=str(getattr(img_enc, "fit", "crop")),
    )
    text = TextGraph(
        file="text.onnx",
        file_int8="text.int8.onnx" if int8 else "",
        tokenizer=TOKENIZER_DIR,
        max_seq_length=txt_enc.max_seq_length,
        text_model=txt_enc.source,
    )
    return image, text


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``, replacing an earlier export there."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def export_onnx(run_dir: str | Path, out: str | Path, *, int8: bool = False) -> ExportManifest:
    """Export a run's image and text query paths to ONNX (see the module docstring).

    Args:
        run_dir: A finished run folder trained on raw data (a folder or built-in dataset).
        out: The export folder to write (new, empty, or an earlier export, which is replaced).
        int8: Also write dynamically quantized int8 graphs.

    Returns:
        The manifest written to ``out/manifest.json``.

    Raises:
        CheckpointError: The run folder is missing or unreadable, or its encoders do not match its model.
        UsageError: The run was trained on precomputed features, or ``out`` holds something else.
        ConfigError: onnxruntime/onnx are not installed, or the text model cannot be exported.
    """
    ort = require_onnxruntime()
    out = Path(out)
    _check_out(out)
    run = load_run(run_dir)
    _check_raw(run)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        image, text = _write_graphs(run, tmp, int8=int8)
        manifest = ExportManifest(
            run=str(Path(run_dir).resolve()),
            checkpoint_sha256=run.checkpoint_sha256,
            embed_dim=int(run.model.embed_dim),
            image=image,
            text=text,
            opset=OPSET,
            versions={"torch": torch.__version__, "onnxruntime": ort.__version__},
        )
        atomic_write_json(tmp / MANIFEST_FILE, manifest.to_dict())
        _swap_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest
