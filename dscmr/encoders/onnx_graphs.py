"""ONNX graphs of the frozen encoders: export, dynamic int8 quantization, ONNX Runtime sessions.

What is exported (:class:`ImageFeatures`: a backbone's pooled features; :class:`SentenceEmbedding`: a
sentence-transformers model without its tokenizer) and how: the TorchScript-based exporter (:func:`export_module`),
per-channel dynamic quantization (:func:`quantize_int8`, the int8 settings and why in :mod:`dscmr.encoders.engine`),
CPU sessions (:func:`make_session`). The engine's encoders (:mod:`dscmr.encoders.engine`) and the run exporter
(:mod:`dscmr.export.onnx`) are built from these.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dscmr.encoders.image import ImageEncoder
from dscmr.encoders.text import TextEncoder
from dscmr.errors import ConfigError
from dscmr.utils.io import atomic_write_with

OPSET = 17
# Bump when the exported graphs change (invalidates exported files in the cache and the feature cache).
ONNX_EXPORT_VERSION = 4  # 4: EfficientNet-Lite's SAME pads as constants (odd sides were wrong)
# Operator types dynamically quantized by the int8 engine; none on the image side (dscmr.encoders.engine says why).
INT8_IMAGE_OPS: tuple[str, ...] = ()
INT8_TEXT_OPS: tuple[str, ...] = ("MatMul",)  # the transformer's MatMuls; not the Gemm layers of a DSCMR head
# Kept in float: each BERT layer's feed-forward output projection, whose GELU inputs have outliers (excluding them
# raised the int8 MiniLM embeddings' mean cosine to float from 0.994 to 0.997).
INT8_TEXT_EXCLUDE = r"layer\.\d+/output/dense/MatMul$"


def require_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or a :class:`ConfigError` saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError(
            "the onnx engines need onnxruntime and onnx; run `pip install onnxruntime onnx` or use --engine torch"
        ) from None
    return onnxruntime


def onnxruntime_available() -> bool:
    """Whether ``onnxruntime`` and ``onnx`` can be imported (tests skip without them)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


# ----------------------------------------------------------------------------------------------------------------
# Export, quantization, sessions


def export_module(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]],
) -> Path:
    """Export an eval-mode module to ``path`` (atomically) with the TorchScript-based exporter.

    The TorchScript exporter (``dynamo=False``) folds BatchNorm into the convolutions and gave 1.5x the throughput
    of the dynamo exporter's graph for MobileNetV2 on ONNX Runtime 1.32 (same outputs to 1e-6).
    """
    require_onnxruntime()
    module = module.eval()

    def write(tmp: Path) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                str(tmp),
                dynamo=False,
                opset_version=OPSET,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_with(path, write)
    return path


def quantize_int8(src: Path, dst: Path, *, op_types: Sequence[str], exclude: str = "") -> Path:
    """Dynamically quantize ``src`` to per-channel int8 weights (``QInt8``) into ``dst`` (atomically).

    Per-channel weights kept the MiniLM embeddings at cosine 0.990 of float (per-tensor: 0.947); quantizing the
    token-embedding ``Gather`` as well cost accuracy and no time, so only ``op_types`` with constant weights are
    quantized.

    Args:
        src: Float ONNX model.
        dst: Where the quantized model goes.
        op_types: Operator types to quantize, e.g. ``("MatMul", "Gemm")``.
        exclude: A regular expression: nodes whose name it matches (``re.search``) stay in float.
    """
    require_onnxruntime()
    import logging
    import re

    import onnx

    skip = [
        n.name
        for n in onnx.load(str(src), load_external_data=False).graph.node
        if exclude and re.search(exclude, n.name)
    ]

    from onnxruntime.quantization import QuantType, quantize_dynamic

    def write(tmp: Path) -> None:
        quantize_dynamic(
            str(src),
            str(tmp),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=list(op_types),
            extra_options={"MatMulConstBOnly": True},
            nodes_to_exclude=skip,
        )

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # the quantizer logs a "consider pre-processing" hint on the root logger
    try:
        atomic_write_with(dst, write)
    finally:
        logging.disable(previous)
    return dst


def make_session(path: str | Path, *, threads: int = 0, optimization: str = "all") -> Any:
    """An ONNX Runtime CPU ``InferenceSession`` for ``path``.

    Args:
        path: ONNX model file.
        threads: Intra-op threads (0 = torch's current thread count, so ``--threads`` applies to both).
        optimization: Graph optimisation level: ``disable``, ``basic``, ``extended`` or ``all``.
    """
    ort = require_onnxruntime()
    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if optimization not in levels:
        raise ConfigError(f"unknown graph optimisation level {optimization!r}; use one of {', '.join(levels)}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads if threads > 0 else torch.get_num_threads()
    so.inter_op_num_threads = 1
    so.graph_optimization_level = levels[optimization]
    so.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


# ----------------------------------------------------------------------------------------------------------------
# What is exported


class ImageFeatures(nn.Module):
    """Export wrapper: preprocessed images ``(B, 3, S, S)`` -> pooled backbone features ``(B, num_features)``."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone.forward_features(x)  # type: ignore[operator]
        return self.backbone.forward_head(feats, pre_logits=True)  # type: ignore[operator]  # (B, F)


class SentenceEmbedding(nn.Module):
    """Export wrapper: token ids and attention mask ``(B, L)`` -> a sentence-transformers embedding ``(B, D)``.

    Rebuilds ``Transformer -> Pooling -> [Normalize]`` from the loaded ``SentenceTransformer``; mean and CLS
    pooling are supported.

    Raises:
        ConfigError: A module layout or pooling mode this wrapper does not reproduce.
    """

    def __init__(self, st_model: Any) -> None:
        super().__init__()
        names = [type(m).__name__ for m in st_model]
        if names not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
            raise ConfigError(f"cannot export text model with modules {names} to ONNX; use --engine torch")
        self.transformer = st_model[0].auto_model
        mode = str(getattr(st_model[1], "pooling_mode", "") or _pooling_mode(st_model[1]))
        if mode not in ("mean", "cls"):
            raise ConfigError(f"cannot export text pooling mode {mode!r} to ONNX; use --engine torch")
        self.mode = mode
        self.normalize = names[-1] == "Normalize"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.transformer(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
        ).last_hidden_state  # (B, L, D)
        if self.mode == "cls":
            emb = h[:, 0]
        else:
            m = attention_mask.unsqueeze(-1).to(h.dtype)  # (B, L, 1)
            emb = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)  # (B, D)
        return nn.functional.normalize(emb, p=2.0, dim=1) if self.normalize else emb


def _pooling_mode(pooling: Any) -> str:
    cfg = pooling.get_config_dict() if hasattr(pooling, "get_config_dict") else {}
    if "pooling_mode" in cfg:
        return str(cfg["pooling_mode"])
    return "mean" if cfg.get("pooling_mode_mean_tokens") else "cls" if cfg.get("pooling_mode_cls_token") else "?"


def tokenize(tokenizer: Any, texts: Sequence[str], *, max_length: int) -> dict[str, np.ndarray]:
    """Tokenize like ``SentenceTransformer.encode``: pad to the longest text, truncate to ``max_length``."""
    enc = tokenizer(list(texts), padding=True, truncation="longest_first", max_length=max_length, return_tensors="np")
    return {
        "input_ids": np.ascontiguousarray(enc["input_ids"], dtype=np.int64),
        "attention_mask": np.ascontiguousarray(enc["attention_mask"], dtype=np.int64),
    }


def export_image_features(encoder: ImageEncoder, path: Path) -> Path:
    """Export ``encoder``'s backbone (pooled features) to ``path``; batch axis dynamic, image size static."""
    dummy = torch.zeros(2, 3, encoder.image_size, encoder.image_size)
    model = copy.deepcopy(encoder.model).to(memory_format=torch.contiguous_format).eval()
    return export_module(
        ImageFeatures(model),
        (dummy,),
        path,
        input_names=["pixels"],
        output_names=["features"],
        dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
    )


def sample_tokens(encoder: TextEncoder) -> dict[str, np.ndarray]:
    """Two texts of different lengths, tokenized: tracing sees real padding, so the mask stays in the graph."""
    return tokenize(
        encoder.model.tokenizer, ["a short text", "a longer text with several more words in it"], max_length=64
    )


def export_text_features(encoder: TextEncoder, path: Path) -> Path:
    """Export ``encoder``'s sentence-transformers model (tokenizer excluded) to ``path``; batch and length dynamic."""
    toks = sample_tokens(encoder)
    return export_module(
        SentenceEmbedding(encoder.model),
        (torch.from_numpy(toks["input_ids"]), torch.from_numpy(toks["attention_mask"])),
        path,
        input_names=["input_ids", "attention_mask"],
        output_names=["embedding"],
        dynamic_axes={
            "input_ids": {0: "batch", 1: "seq"},
            "attention_mask": {0: "batch", 1: "seq"},
            "embedding": {0: "batch"},
        },
    )
