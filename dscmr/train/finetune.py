"""The trainer's hooks for trainable encoders and training views (:mod:`dscmr.data.views`).

- :func:`init_image_top` loads the backbone's pretrained weights into the model's trainable image top;
- :func:`set_input_stats` fits the input standardisation on what the subnets will see in training (the tops'
  pooled outputs for the eval view; every sentence and image view when the dataset has views);
- :func:`param_groups` gives the image and text tops their own learning rates (``train.image_top_lr``,
  ``train.text_top_lr``); the text top (``data.text_train_layers``) starts from the pretrained layers as built;
- :func:`batch_inputs` draws, for each row of a batch, one of its image views and one of its sentences.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dscmr.config import Config
from dscmr.data import FeatureDataset
from dscmr.models import DSCMR


def init_image_top(model: DSCMR, cfg: Config) -> None:
    """Copy the backbone's weights (ImageNet, or ``data.image_backbone_weights``) into ``model.img_top``."""
    if model.img_top is None:
        return
    from dscmr.encoders.partial import partial_encoder_for

    model.img_top.top.load_state_dict(partial_encoder_for(cfg.data).top_module().state_dict())


@torch.no_grad()
def _pooled(top: torch.nn.Module | None, x: np.ndarray, *, batch_size: int = 256) -> torch.Tensor:
    """What a subnet sees for inputs ``x``: its top's pooled output (eval mode), else ``x``."""
    if top is None:
        return torch.from_numpy(np.asarray(x, dtype=np.float32))
    was_training = top.training
    top.eval()
    out = torch.cat([top(torch.from_numpy(np.asarray(x[i : i + batch_size]))) for i in range(0, len(x), batch_size)])
    top.train(was_training)
    return out


def set_input_stats(model: DSCMR, ds: FeatureDataset) -> None:
    """Standardise the subnets' inputs with the mean and std of the training inputs (views included)."""
    views = getattr(ds, "views", None)
    img_src = ds.train.img if views is None or views.img is None else views.img.reshape(-1, views.img.shape[-1])
    txt_src = ds.train.txt if views is None or views.txt is None else views.txt.reshape(-1, views.txt.shape[-1])
    img = _pooled(model.img_top, img_src)
    txt = _pooled(model.txt_top, txt_src)
    model.img_norm.set_stats(img.mean(0), img.std(0))
    model.txt_norm.set_stats(txt.mean(0), txt.std(0))


def param_groups(model: DSCMR, cfg: Config) -> list[dict[str, Any]]:
    """Adam parameter groups: the image top at ``train.image_top_lr``, the text top at ``train.text_top_lr``
    (0 = ``train.lr``), the rest at ``train.lr``."""
    tops = [(model.img_top, cfg.train.image_top_lr), (model.txt_top, cfg.train.text_top_lr)]
    own = [(list(top.parameters()), lr) for top, lr in tops if top is not None and lr > 0]
    if not own:
        return [{"params": list(model.parameters())}]
    taken = {id(p) for params, _ in own for p in params}
    rest = [p for p in model.parameters() if id(p) not in taken]
    return [{"params": rest}, *({"params": params, "lr": lr} for params, lr in own)]


def batch_inputs(
    ds: FeatureDataset, img: torch.Tensor, txt: torch.Tensor, idx: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The image and text inputs of training rows ``idx``: a random view / sentence per row when there are views."""
    views = getattr(ds, "views", None)
    if views is None:
        return img[idx], txt[idx]
    rows = idx.numpy()
    img_b, txt_b = img[idx], txt[idx]
    if views.img is not None:
        pick = torch.randint(views.img.shape[0], (len(rows),), generator=gen).numpy()
        img_b = torch.from_numpy(np.asarray(views.img[pick, rows], dtype=np.float32))  # (B, d_img)
    if views.txt is not None:
        pick = torch.randint(views.txt.shape[0], (len(rows),), generator=gen).numpy()
        txt_b = torch.from_numpy(np.asarray(views.txt[pick, rows], dtype=np.float32))  # (B, d_txt)
    return img_b, txt_b
