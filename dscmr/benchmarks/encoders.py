"""Encoder throughput against the references (``dscmr bench encoders``).

- Text: :class:`~dscmr.encoders.TextEncoder` vs calling ``SentenceTransformer.encode`` directly, on the same model
  object, sentences, batch size and threads.
- Image: our frozen backbone (``forward_features`` + ``forward_head(pre_logits=True)``) vs torchvision's
  ``mobilenet_v2`` (same ImageNet weights, eval, ``torch.no_grad``), on the same preprocessed batches and input size;
  plus the variants that tell what helped (``no_grad`` vs ``inference_mode``, contiguous vs ``channels_last``), and
  the whole file -> feature path (decode + transforms + backbone).

Runs are interleaved (every variant once per round) and the best round is reported, so a load spike on a shared
machine hits all variants alike.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def _best(fns: dict[str, Callable[[], object]], *, rounds: int) -> dict[str, float]:
    """Best wall time of each function over ``rounds`` interleaved rounds (after one warm-up call each)."""
    for fn in fns.values():
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def bench_text(*, n: int = 1000, batch_size: int = 64, rounds: int = 3) -> dict[str, Any]:
    """Sentences/s of :class:`TextEncoder` and of ``SentenceTransformer.encode`` on the same inputs."""
    from dscmr.data.builtin import shapes_scene
    from dscmr.encoders.text import TextEncoder

    enc = TextEncoder()
    texts = [shapes_scene(i, seed=1)[1] for i in range(n)]
    st = enc.model
    times = _best(
        {
            "sentence_transformers": lambda: st.encode(
                texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
            ),
            "dscmr": lambda: enc.encode(texts, batch_size=batch_size),
        },
        rounds=rounds,
    )
    rate = {k: n / v for k, v in times.items()}
    return {
        "n": n,
        "batch_size": batch_size,
        "items_per_s": {k: round(v, 1) for k, v in rate.items()},
        "ratio": round(rate["dscmr"] / rate["sentence_transformers"], 3),
    }


def bench_image(*, n: int = 64, image_size: int = 160, batch_size: int = 32, rounds: int = 3) -> dict[str, Any]:
    """Images/s of our backbone variants and of torchvision's ``mobilenet_v2`` on the same batches."""
    import torchvision

    from dscmr.data.builtin import generate_shapes
    from dscmr.encoders.image import ImageEncoder, load_image
    from dscmr.vision._pretrained import mobilenet_v2_imagenet_state_dict

    tv = torchvision.models.mobilenet_v2()
    tv.load_state_dict(mobilenet_v2_imagenet_state_dict())
    tv.eval()
    ours_cl = ImageEncoder(image_size=image_size, channels_last=True)
    ours = ImageEncoder(image_size=image_size, channels_last=False)
    with tempfile.TemporaryDirectory() as tmp:
        folder = generate_shapes(Path(tmp) / "shapes", n=n)
        paths = sorted((folder / "images").glob("*.png"))
        x = torch.stack([ours.preprocess(load_image(p)) for p in paths])  # (n, 3, S, S)
        batches = [x[i : i + batch_size] for i in range(0, n, batch_size)]

        def run_tv() -> None:
            with torch.no_grad():
                for b in batches:
                    tv(b)

        def run_ours_no_grad() -> None:
            with torch.no_grad():
                for b in batches:
                    ours.model.forward_head(ours.model.forward_features(b), pre_logits=True)  # type: ignore[operator]

        def run_ours(enc: ImageEncoder) -> Callable[[], object]:
            return lambda: [enc.encode_batch(b) for b in batches]

        def run_files(enc: ImageEncoder) -> Callable[[], object]:
            return lambda: enc.encode_paths(paths, batch_size=batch_size)

        def run_tv_files() -> None:
            for i in range(0, n, batch_size):
                b = torch.stack([ours.preprocess(load_image(p)) for p in paths[i : i + batch_size]])
                with torch.no_grad():
                    tv(b)

        times = _best(
            {
                "torchvision_mobilenet_v2": run_tv,
                "dscmr_no_grad": run_ours_no_grad,
                "dscmr_inference_mode": run_ours(ours),
                "dscmr_inference_mode_channels_last": run_ours(ours_cl),
                "files_torchvision": run_tv_files,
                "files_dscmr": run_files(ours_cl),
            },
            rounds=rounds,
        )
    rate = {k: n / v for k, v in times.items()}
    ref = rate["torchvision_mobilenet_v2"]
    return {
        "n": n,
        "image_size": image_size,
        "batch_size": batch_size,
        "items_per_s": {k: round(v, 1) for k, v in rate.items()},
        "ratio_vs_torchvision": {k: round(v / ref, 3) for k, v in rate.items() if not k.startswith("files")},
        "files_ratio": round(rate["files_dscmr"] / rate["files_torchvision"], 3),
    }


def bench_encoders(
    *,
    threads: int = 1,
    n_texts: int = 1000,
    n_images: int = 64,
    image_size: int = 160,
    rounds: int = 3,
) -> dict[str, Any]:
    """Both comparisons, with ``threads`` torch threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return {
            "threads": threads,
            "text": bench_text(n=n_texts, rounds=rounds),
            "image": bench_image(n=n_images, image_size=image_size, rounds=rounds),
        }
    finally:
        torch.set_num_threads(before)
