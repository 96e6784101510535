"""A sentence encoder split in two: a frozen bottom whose token states are cached, and a trainable top.

Training the last transformer layers of the sentence encoder on a CPU is affordable when the frozen part
(embeddings and the first ``n_layers - top_layers`` layers) runs once per sentence. :class:`PartialTextEncoder`
is a :class:`~dscmr.encoders.TextEncoder` whose "features" are that bottom's token states, so they go through the
feature cache like sentence vectors, keyed by the same spec plus the cut.

Token rows (the layout :class:`~dscmr.models.text_top.TextTop` reads): a text is ``L`` tokens of width ``H + 1``,
flattened token-major to ``(L * (H + 1),)``: each token's ``H`` hidden values, then its *sentence number* (1 for
the first sentence, 0 for padding). A set of texts is padded to its longest text. A row may hold several sentences
(:func:`stack_sentences`: their tokens one after the other, numbered 1, 2, ...): the top attends within each
sentence only and returns the mean of their sentence embeddings, which is what ``data.multi_caption = mean``
ranks with.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from dscmr.config import DataConfig
from dscmr.encoders.text import TextEncoder, check_texts
from dscmr.errors import ConfigError


def transformer_of(st_model: Any) -> Any:
    """The Hugging Face model inside a ``SentenceTransformer`` (its first module's ``auto_model``)."""
    first = st_model[0]
    model = getattr(first, "auto_model", None) or getattr(first, "model", None)
    if model is None or not hasattr(model, "encoder") or not hasattr(model.encoder, "layer"):
        raise ConfigError("data.text_train_layers needs a BERT-like sentence-transformers model (encoder.layer)")
    return model


def check_pipeline(st_model: Any) -> None:
    """Refuse models whose pipeline is not transformer -> mean pooling [-> normalize] (what the top reproduces)."""
    names = [type(m).__name__ for m in st_model]
    pooling = st_model[1] if len(names) > 1 else None
    mean = getattr(pooling, "pooling_mode", None) == "mean"  # sentence-transformers >= 6
    mean = mean or bool(getattr(pooling, "pooling_mode_mean_tokens", False))  # older releases
    if names[:2] != ["Transformer", "Pooling"] or not mean or names[2:] not in ([], ["Normalize"]):
        raise ConfigError(
            f"data.text_train_layers needs a transformer + mean pooling [+ normalize] text model, got {names}"
        )


def stack_sentences(rows: Sequence[np.ndarray], *, width: int) -> np.ndarray:
    """Token rows of single sentences -> one row holding them all, numbered 1..k (see the module docstring).

    Args:
        rows: Token rows of one sentence each, ``(L_i * width,)``, padded or not.
        width: Token width ``H + 1``.
    """
    tokens = [r.reshape(-1, width) for r in rows]  # (L_i, H + 1) each
    kept = []
    for k, t in enumerate(tokens, start=1):
        t = t[t[:, -1] > 0].copy()  # drop padding
        t[:, -1] = k
        kept.append(t)
    return np.concatenate(kept).reshape(-1)  # (sum L_i * (H + 1),)


def pad_rows(rows: Sequence[np.ndarray]) -> np.ndarray:
    """Flattened token rows of different lengths -> ``(n, max length)`` float32, zero-padded (sentence 0)."""
    out = np.zeros((len(rows), max((len(r) for r in rows), default=0)), dtype=np.float32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


class PartialTextEncoder(TextEncoder):
    """A text encoder whose features are the frozen bottom's token rows ``(n, L * (H + 1))`` (module docstring).

    Args:
        model_name_or_path: As for :class:`~dscmr.encoders.TextEncoder`.
        top_layers: Transformer layers left to the trainable top (1..n_layers).
        **kwargs: As for :class:`~dscmr.encoders.TextEncoder` (``device``, ``model``).
    """

    def __init__(self, model_name_or_path: str = "", *, top_layers: int, **kwargs: Any) -> None:
        super().__init__(model_name_or_path, **kwargs)
        check_pipeline(self.model)
        transformer = transformer_of(self.model)
        self.n_layers = len(transformer.encoder.layer)
        if not 1 <= top_layers <= self.n_layers:
            raise ConfigError(
                f"data.text_train_layers must be in 0..{self.n_layers} for this text model, got {top_layers}"
            )
        self.top_layers = top_layers
        self.hidden = int(transformer.config.hidden_size)
        self.normalize = len(self.model) > 2
        self.dim = self.hidden + 1  # width of one token: hidden values + sentence number
        self.bottom = copy.deepcopy(transformer).eval()
        del self.bottom.encoder.layer[self.n_layers - top_layers :]

    def cache_spec(self) -> dict[str, Any]:
        """The text encoder's spec plus the cut and the token-row layout."""
        return {**super().cache_spec(), "output": f"bottom-tokens-top{self.top_layers}", "layout": "tokens+sentence"}

    def top_layers_module(self) -> nn.ModuleList:
        """The last ``top_layers`` transformer layers, a deep copy with the pretrained weights."""
        layers = transformer_of(self.model).encoder.layer
        return copy.deepcopy(nn.ModuleList(list(layers)[self.n_layers - self.top_layers :]))

    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        advance: Callable[[int], None] | None = None,
        chunk_size: int = 4096,
    ) -> np.ndarray:
        """Sentences -> token rows ``(n, L * (H + 1))`` float32, ``L`` the longest text's tokens.

        Raises:
            QueryError: A text is empty or whitespace-only.
        """
        del chunk_size  # one pass: rows are padded to the longest text of the whole set
        items = check_texts(texts)
        order = np.argsort([-len(t) for t in items], kind="stable")
        rows: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(items)
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            for i, row in zip(idx, self.token_rows([items[i] for i in idx]), strict=True):
                rows[i] = row
            if advance is not None:
                advance(len(idx))
        out = pad_rows(rows)
        return out if items else np.zeros((0, self.dim), dtype=np.float32)

    @torch.inference_mode()
    def token_rows(self, texts: Sequence[str]) -> list[np.ndarray]:
        """One batch of checked texts -> their unpadded token rows ``(L_i * (H + 1),)``."""
        self.calls += 1
        feats = self.model.preprocess(list(texts))
        inputs = {k: v for k, v in feats.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        hidden = self.bottom(**inputs).last_hidden_state.float()  # (B, L, H)
        mask = inputs["attention_mask"]  # (B, L)
        tokens = torch.cat([hidden, mask.unsqueeze(-1).float()], dim=-1)  # (B, L, H + 1)
        return [tokens[b, : int(mask[b].sum())].reshape(-1).numpy().copy() for b in range(len(texts))]


_encoders: dict[tuple[str, int], PartialTextEncoder] = {}


def partial_text_encoder_for(cfg: DataConfig) -> PartialTextEncoder:
    """The (process-wide, memoised) split sentence encoder of a data config (``text_train_layers >= 1``)."""
    if cfg.engine not in ("auto", "torch"):
        raise ConfigError("data.text_train_layers needs data.engine = 'torch' or 'auto'")
    return partial_text_encoder(cfg.text_model, cfg.text_train_layers)


def partial_text_encoder(text_model: str, top_layers: int) -> PartialTextEncoder:
    """The (memoised) split sentence encoder of ``text_model`` ("" = offline all-MiniLM-L6-v2)."""
    key = (text_model, top_layers)
    if key not in _encoders:
        _encoders[key] = PartialTextEncoder(text_model, top_layers=top_layers)
    return _encoders[key]
