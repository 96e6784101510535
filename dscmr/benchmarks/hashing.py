"""Hashing benchmark: cross-modal mAP of binary codes next to the float mAP they come from.

For each code length B and each method:

- ``sign`` / ``itq``: fitted on the float run's training-split embeddings (both modalities), applied to the test
  split; queries and database are ranked by Hamming distance (ties by index).
- ``learned``: one DSCMR model per B trained with the hash layer on (``model.hash_bits = B``), same config and
  epochs; codes are the signs of its hash layer.

Runs are kept in ``out`` under a hash of their config and reused by a rerun with the same config.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dscmr.config import Config, to_dict
from dscmr.data import load_dataset
from dscmr.eval.metrics import cross_modal_map
from dscmr.indexing.from_run import learned_layer
from dscmr.indexing.hashing import fit_hasher, hamming_codes
from dscmr.train import RunDir, encode_split, load_run, train

BITS = (16, 32, 64, 128)
METHODS = ("sign", "itq", "learned")

log = logging.getLogger(__name__)


def _train_or_load(cfg: Config, folder: Path, name: str) -> Any:
    """Train (or reuse) the run of ``cfg`` in ``folder/<name>-<config hash>``: a changed config never reuses a run."""
    digest = hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()[:10]
    run_dir = folder / f"{name}-{digest}"
    if not RunDir(run_dir).finished:
        log.info(f"training {run_dir.name} ({cfg.train.epochs} epochs, hash_bits={cfg.model.hash_bits})")
        train(cfg, run_dir, progress=False)
    return load_run(run_dir)


def _map(img: np.ndarray, txt: np.ndarray, labels: np.ndarray, metric: str) -> dict[str, float]:
    return {k: round(v, 4) for k, v in cross_modal_map(img, txt, labels, metric=metric).items()}


def bench_hashing(
    cfg: Config,
    out: str | Path,
    *,
    bits: tuple[int, ...] = BITS,
    methods: tuple[str, ...] = METHODS,
    epochs: int | None = None,
) -> dict[str, Any]:
    """Float and binary test mAP for every (method, bits).

    Args:
        cfg: Experiment config (``model.hash_bits`` is overridden per run).
        out: Folder for the trained runs.
        bits: Code lengths.
        methods: Subset of ``sign``, ``itq``, ``learned``.
        epochs: Overrides ``train.epochs`` (keep it modest: one model per learned code length).

    Returns:
        ``{"float": {...}, "results": [{"method", "bits", "img2txt", "txt2img", "avg", "ratio"}], ...}``; ``ratio``
        is the binary avg mAP over the float avg mAP of the same float run (for ``learned``, the float mAP of the
        float run too, so every ratio has the same denominator).
    """
    out = Path(out)
    if epochs:
        cfg = replace(cfg, train=replace(cfg.train, epochs=epochs))
    base_cfg = replace(cfg, model=replace(cfg.model, hash_bits=0))
    ds = load_dataset(cfg.data)
    test = ds.test
    run = _train_or_load(base_cfg, out, "float")
    u_tr, v_tr = encode_split(run.model, ds.train)
    u, v = (t.numpy() for t in encode_split(run.model, test))
    flt = _map(u, v, test.labels, "cosine")
    log.info(f"float mAP: {flt}")
    train_emb = torch.cat([u_tr, v_tr]).numpy()
    results: list[dict[str, Any]] = []
    for b in bits:
        for method in methods:
            if method == "learned":
                hcfg = replace(cfg, model=replace(cfg.model, hash_bits=b))
                hrun = _train_or_load(hcfg, out, f"learned{b}")
                hasher = learned_layer(hrun)
                hu, hv = (t.numpy() for t in encode_split(hrun.model, test))
                zi, zt = hamming_codes(hasher, hu), hamming_codes(hasher, hv)
                own_float = _map(hu, hv, test.labels, "cosine")
            else:
                hasher = fit_hasher(method, train_emb, b, seed=cfg.train.seed)
                zi, zt = hamming_codes(hasher, u), hamming_codes(hasher, v)
                own_float = flt
            m = _map(zi, zt, test.labels, "hamming")
            row = {"method": method, "bits": b, **m, "ratio": round(m["avg"] / flt["avg"], 4), "model_float": own_float}
            log.info(f"{method:8s} {b:4d} bits: avg {m['avg']:.4f} ({row['ratio']:.1%} of float)")
            results.append(row)
    return {"float": flt, "epochs": cfg.train.epochs, "results": results, "runs": str(out)}
