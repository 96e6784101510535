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

import functools
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
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
    from dscmr.vision import mobilenet_v2_imagenet_state_dict

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
    engines: list[str] | None = None,
    cache_dir: str | Path = "",
    map_runs: Mapping[str, str | Path] | None = None,
) -> dict[str, Any]:
    """Both comparisons, with ``threads`` torch (and ONNX Runtime) threads.

    Args:
        threads: Intra-op threads for every side.
        n_texts: Sentences to encode.
        n_images: Images to encode.
        image_size: Input side of the image encoder.
        rounds: Interleaved rounds (the best one is reported).
        engines: Also measure these engines (``torch``, ``onnx``, ``onnx-int8``): their figures go under
            ``result["image"][engine]`` and ``result["text"][engine]``.
        cache_dir: Where exported ONNX files and cached features go ("" = ``~/.cache/dscmr``).
        map_runs: ``{"shapes": run_dir, "digits": run_dir}``: report each run's test mAP per engine as
            ``map_<name>`` (and the top-10 overlap with torch as ``top10_overlap_<name>``).
    """
    from dscmr.encoders.cache import default_cache_dir
    from dscmr.encoders.engine import check_engine

    engines = [check_engine(e) for e in engines or []]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        res: dict[str, Any] = {
            "threads": threads,
            "text": bench_text(n=n_texts, rounds=rounds),
            "image": bench_image(n=n_images, image_size=image_size, rounds=rounds),
        }
        if engines:
            cache = default_cache_dir(cache_dir)
            n = max(n_images, 64)
            res["image"].update(
                bench_image_engines(engines, n=n, image_size=image_size, rounds=rounds, cache_dir=cache)
            )
            res["text"].update(bench_text_engines(engines, n=n_texts, rounds=rounds, cache_dir=cache))
            for name, run_dir in (map_runs or {}).items():
                for e, q in engine_quality(run_dir, engines).items():
                    for side in ("image", "text"):
                        res[side][e][f"map_{name}"] = q["map"]
                        res[side][e][f"top10_overlap_{name}"] = q["top10_overlap"]
        return res
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------------------------
# Engines (torch, onnx, onnx-int8): corpus throughput, query latency, retrieval quality


def _mean_call(fn: Callable[[], object], *, calls: int) -> Callable[[], object]:
    """A function that calls ``fn`` ``calls`` times (its best time / ``calls`` is a per-call latency)."""
    return lambda: [fn() for _ in range(calls)]


def _engine_image_encoders(engines: list[str], *, image_size: int, cache_dir: Path) -> dict[str, Any]:
    from dscmr.encoders.engine import OnnxImageEncoder
    from dscmr.encoders.image import ImageEncoder

    return {
        e: ImageEncoder(image_size=image_size)
        if e == "torch"
        else OnnxImageEncoder(engine=e, image_size=image_size, cache_dir=cache_dir)
        for e in engines
    }


def bench_image_engines(
    engines: list[str], *, n: int = 128, image_size: int = 160, batch_size: int = 64, rounds: int = 3, cache_dir: Path
) -> dict[str, Any]:
    """Per engine: images/s at ``batch_size`` (corpus path) and batch-1 latency (query path) vs torchvision eager,
    on preprocessed tensors; and the whole file path (decode + preprocess + network) on ``n`` built-in PNGs."""
    import torchvision

    from dscmr.data.builtin import generate_shapes
    from dscmr.encoders.image import load_image
    from dscmr.vision import mobilenet_v2_imagenet_state_dict

    tv = torchvision.models.mobilenet_v2()
    tv.load_state_dict(mobilenet_v2_imagenet_state_dict())
    tv.eval()
    encs = _engine_image_encoders(engines, image_size=image_size, cache_dir=cache_dir)
    x = torch.randn(n, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))  # (n, 3, S, S)
    batches = [x[i : i + batch_size] for i in range(0, n, batch_size)]
    one = x[:1]

    def tv_call(b: torch.Tensor) -> object:
        with torch.no_grad():
            return tv(b)

    fns: dict[str, Callable[[], object]] = {"torchvision": lambda: [tv_call(b) for b in batches]}
    fns["torchvision/1"] = _mean_call(lambda: tv_call(one), calls=10)
    for e, enc in encs.items():
        fns[e] = functools.partial(lambda en: [en.encode_batch(b) for b in batches], enc)
        fns[f"{e}/1"] = _mean_call(functools.partial(lambda en: en.encode_batch(one), enc), calls=10)
    prep = next(iter(encs.values())).preprocess if encs else None
    with tempfile.TemporaryDirectory() as tmp:
        paths = sorted((generate_shapes(Path(tmp) / "shapes", n=n) / "images").glob("*.png"))
        if prep is not None:
            chunks = [paths[i : i + batch_size] for i in range(0, n, batch_size)]
            fns["files/torchvision"] = lambda: [tv_call(torch.stack([prep(load_image(p)) for p in c])) for c in chunks]
        for e, enc in encs.items():
            fns[f"files/{e}"] = functools.partial(lambda en: en.encode_paths(paths, batch_size=batch_size), enc)
        times = _best(fns, rounds=rounds)
    ref = n / times["torchvision"]
    out: dict[str, Any] = {
        "torchvision": {"items_per_s": round(ref, 1), "batch1_ms": round(times["torchvision/1"] * 100, 2)}
    }
    for e in engines:
        rate, files = n / times[e], n / times[f"files/{e}"]
        out[e] = {
            "items_per_s": round(rate, 1),
            "batch1_ms": round(times[f"{e}/1"] * 100, 2),
            "speedup_vs_torchvision": round(rate / ref, 3),
            "files_items_per_s": round(files, 1),
            "files_speedup_vs_torchvision": round(files * times["files/torchvision"] / n, 3),
        }
    if "files/torchvision" in times:
        out["torchvision"]["files_items_per_s"] = round(n / times["files/torchvision"], 1)
    return out


def bench_text_engines(
    engines: list[str], *, n: int = 1000, batch_size: int = 64, rounds: int = 3, cache_dir: Path
) -> dict[str, Any]:
    """Per engine: sentences/s at ``batch_size`` and batch-1 latency vs ``SentenceTransformer.encode``."""
    from dscmr.data.builtin import shapes_scene
    from dscmr.encoders.engine import OnnxTextEncoder
    from dscmr.encoders.text import TextEncoder

    base = TextEncoder()
    st = base.model
    encs = {e: base if e == "torch" else OnnxTextEncoder(engine=e, cache_dir=cache_dir, model=st) for e in engines}
    texts = [shapes_scene(i, seed=1)[1] for i in range(n)]
    query = ["a large red circle to the left of a small blue square"]

    def st_encode(items: list[str]) -> object:
        return st.encode(items, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)

    fns: dict[str, Callable[[], object]] = {"sentence_transformers": lambda: st_encode(texts)}
    fns["sentence_transformers/1"] = _mean_call(lambda: st_encode(query), calls=10)
    for e, enc in encs.items():
        fns[e] = functools.partial(lambda en: en.encode(texts, batch_size=batch_size), enc)
        fns[f"{e}/1"] = _mean_call(functools.partial(lambda en: en.encode(query), enc), calls=10)
    times = _best(fns, rounds=rounds)
    ref_rate, ref_ms = n / times["sentence_transformers"], times["sentence_transformers/1"] * 100
    out: dict[str, Any] = {"sentence_transformers": {"items_per_s": round(ref_rate, 1), "batch1_ms": round(ref_ms, 2)}}
    for e in engines:
        rate, ms = n / times[e], times[f"{e}/1"] * 100
        out[e] = {
            "items_per_s": round(rate, 1),
            "batch1_ms": round(ms, 2),
            "speedup_vs_sentence_transformers": round(rate / ref_rate, 3),
            "latency_vs_sentence_transformers": round(ms / ref_ms, 3),
        }
    return out


def topk_overlap(a_q: np.ndarray, a_db: np.ndarray, b_q: np.ndarray, b_db: np.ndarray, *, k: int = 10) -> float:
    """Mean fraction of shared items in the cosine top-``k`` lists of two embeddings of the same queries/database."""

    def top(q: np.ndarray, db: np.ndarray) -> np.ndarray:
        qn = q / np.linalg.norm(q, axis=1, keepdims=True).clip(1e-12)
        dn = db / np.linalg.norm(db, axis=1, keepdims=True).clip(1e-12)
        kk = min(k, len(db))
        return np.argsort(-(qn @ dn.T), axis=1, kind="stable")[:, :kk]  # (nq, k)

    ta, tb = top(a_q, a_db), top(b_q, b_db)
    shared = [len(set(x.tolist()) & set(y.tolist())) / ta.shape[1] for x, y in zip(ta, tb, strict=True)]
    return float(np.mean(shared)) if shared else 1.0


def engine_quality(run_dir: str | Path, engines: list[str], *, k: int = 10) -> dict[str, dict[str, float]]:
    """Per engine: the run's test mAP (avg of both directions) with features from that engine, and the mean
    top-``k`` overlap of its rankings (text->image and image->text) with the torch engine's."""
    from dataclasses import replace

    from dscmr.data import load_dataset
    from dscmr.train import encode_split, evaluate_split, load_run

    run = load_run(run_dir)
    ref: tuple[np.ndarray, np.ndarray] | None = None
    out: dict[str, dict[str, float]] = {}
    for e in ["torch", *[e for e in engines if e != "torch"]]:
        cfg = replace(run.config.data, engine=e)
        split = load_dataset(cfg).split("test")
        u_t, v_t = encode_split(run.model, split)
        u, v = u_t.detach().numpy(), v_t.detach().numpy()
        res: dict[str, float] = {"map": round(float(evaluate_split(run.model, split)["avg"]), 4)}
        ref = ref or (u, v)
        res["top10_overlap"] = round(
            (topk_overlap(ref[1], ref[0], v, u, k=k) + topk_overlap(ref[0], ref[1], u, v, k=k)) / 2, 4
        )
        if e in engines:
            out[e] = res
    return out


def builtin_runs(cache_dir: str | Path = "", *, datasets: tuple[str, ...] = ("shapes", "digits")) -> dict[str, Path]:
    """The demo's ``shapes`` and ``digits`` runs (torch features, the demo's config), trained once into
    ``<cache_dir>/bench-runs/<dataset>`` and reused: the runs whose mAP :func:`bench_encoders` reports per engine."""
    from dscmr.demo import demo_config
    from dscmr.encoders.cache import default_cache_dir
    from dscmr.train import RunDir, train

    root = default_cache_dir(cache_dir) / "bench-runs"
    out = {}
    for name in datasets:
        run_dir = root / name
        if not RunDir(run_dir).finished:
            cfg = demo_config(dataset=name, cache_dir=str(cache_dir), threads=torch.get_num_threads())
            train(cfg, run_dir, progress=False)
        out[name] = run_dir
    return out
