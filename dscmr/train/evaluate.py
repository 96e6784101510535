"""Encoding and scoring a dataset split with a DSCMR model or seed ensemble (eval mode, batched)."""

from __future__ import annotations

import torch

from dscmr.data import Split
from dscmr.errors import DataError
from dscmr.eval.metrics import cross_modal_map
from dscmr.models import RetrievalModel


@torch.no_grad()
def encode_split(model: RetrievalModel, split: Split, *, batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Common-space embeddings of a split's images and texts, in eval mode, ``(n, D)`` each.

    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    img = torch.from_numpy(split.img)
    txt = torch.from_numpy(split.txt)
    u = torch.cat([model.encode_image(img[i : i + batch_size]) for i in range(0, len(split), batch_size)])
    v = torch.cat([model.encode_text(txt[i : i + batch_size]) for i in range(0, len(split), batch_size)])
    model.train(was_training)
    return u, v


def evaluate_split(model: RetrievalModel, split: Split, *, k: int = 0, chunk_size: int = 256) -> dict[str, float]:
    """mAP in both directions (cosine) on one split: ``{"img2txt", "txt2img", "avg"}``.

    Raises:
        DataError: The split is empty.
    """
    if len(split) == 0:
        raise DataError("cannot evaluate an empty split")
    u, v = encode_split(model, split)
    return cross_modal_map(u, v, split.labels, k=k, chunk_size=chunk_size)
