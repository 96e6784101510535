"""The end-to-end demo behind ``dscmr demo`` / ``make demo``: raw pictures and sentences in, ranked hits out.

Steps: build the built-in ``shapes`` dataset (generated, no download); train DSCMR on cached frozen features
(MobileNetV2 for images, all-MiniLM-L6-v2 for texts); build a float + 64-bit binary (ITQ on the common space)
index of the test images and a float index of the test captions; run three text->image queries and one
image->text query; report test mAP both ways, float (cosine) and Hamming; write a contact sheet (PNG and HTML)
of the text->image results.

``shapes`` is the default because its captions describe what is in each picture (colours, shapes, sizes,
positions), so text queries are free sentences whose hits a person can check at a glance; ``digits`` (real
handwriting, single-label) is available with ``--dataset digits``.

The binary codes are ITQ codes fitted on the training embeddings rather than DSCMR's learned hash layer: on
``shapes``, whose multi-label relevance ("shares a colour or a shape") holds for most pairs, the learned layer
collapses to a handful of codes, while ITQ keeps the float ranking's quality (see docs/end_to_end.md).
"""

from __future__ import annotations

import base64
import html
import io
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dscmr.config import Config, DataConfig, EvalConfig, LossConfig, ModelConfig, TrainConfig
from dscmr.data import FeatureDataset
from dscmr.utils.progress import Progress

log = logging.getLogger(__name__)

TEXT_QUERIES = {
    "shapes": ("a large red circle", "a blue square above a green triangle", "two yellow triangles"),
    "digits": ("a handwritten seven", "the digit 3 written by hand", "a messy zero"),
}
K = 5


@dataclass
class DemoResult:
    """What the demo measured and wrote (``--json`` prints :meth:`to_dict`)."""

    out: Path
    run_dir: Path
    dataset: str
    sizes: dict[str, int]
    map_float: dict[str, float]
    map_hamming: dict[str, float]
    hash_bits: int
    chance_map: float
    text_queries: list[dict[str, Any]]
    image_query: dict[str, Any]
    contact_sheet: Path
    contact_html: Path
    seconds: dict[str, float]
    next_commands: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "run": str(self.run_dir),
            "dataset": self.dataset,
            "sizes": self.sizes,
            "map": {"float": self.map_float, f"hamming{self.hash_bits}": self.map_hamming},
            "chance_map": self.chance_map,
            "text_to_image": self.text_queries,
            "image_to_text": self.image_query,
            "contact_sheet": str(self.contact_sheet),
            "contact_html": str(self.contact_html),
            "seconds": self.seconds,
            "next": self.next_commands,
        }


def demo_config(*, dataset: str = "shapes", quick: bool = False, cache_dir: str = "", threads: int = 0) -> Config:
    """The demo's experiment config (``configs/shapes.toml`` / ``configs/digits.toml`` hold the same settings)."""
    if dataset not in TEXT_QUERIES:
        from dscmr.errors import UsageError

        raise UsageError(f"unknown demo dataset {dataset!r}; use shapes or digits")
    data = DataConfig(format=dataset, root="", image_size=64 if quick else 128, cache_dir=cache_dir, standardize=True)
    if quick:
        model = ModelConfig(img_hidden=(64,), txt_hidden=(64,), common_dim=32)
        train = TrainConfig(epochs=4, batch_size=32, lr=1e-3, patience=0, threads=threads, checkpoint_every=100)
    else:
        # No retrieval centre on shapes: most pairs share a label there, and centring cost 1.2 mAP points
        # (0.986 vs 0.999, seed 0); on digits it is neutral.
        model = ModelConfig(img_hidden=(1024,), txt_hidden=(1024,), common_dim=256, center=dataset != "shapes")
        train = TrainConfig(epochs=60, batch_size=64, lr=2e-4, patience=15, threads=threads, checkpoint_every=100)
    return Config(data=data, model=model, loss=LossConfig(), train=train, eval=EvalConfig())


def run_demo(
    out: str | Path,
    *,
    dataset: str = "shapes",
    quick: bool = False,
    cache_dir: str = "",
    threads: int = 0,
    progress: Progress | bool | None = None,
) -> DemoResult:
    """Run the whole demo into ``out`` (see the module docstring).

    Each step logs its lines of the human-readable report (``logging``, logger ``dscmr.demo``, level INFO); the
    CLI prints them on stderr.

    Args:
        out: Output folder (run, bundles, contact sheet).
        dataset: ``shapes`` (default) or ``digits``.
        quick: A tiny version (100 pictures, 64 px, 4 epochs) for tests and smoke checks.
        cache_dir: Where generated data and cached features go ("" = ``~/.cache/dscmr``).
        threads: torch intra-op threads (0 = torch's default).
        progress: Feature-extraction and training progress (default: the current reporter,
            :mod:`dscmr.utils.progress`; ``False``: none).
    """
    import torch

    from dscmr.train import load_run

    if threads > 0:
        torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    cfg = demo_config(dataset=dataset, quick=quick, cache_dir=cache_dir, threads=threads)
    bits = 16 if quick else 64
    seconds: dict[str, float] = {}

    with _timed(seconds, "data"):
        cfg, ds = _load_data(cfg, dataset, quick=quick, cache_dir=cache_dir, progress=progress)
    with _timed(seconds, "train"):
        run_dir = _train(cfg, ds, out / "run", progress=progress)
    run = load_run(run_dir)
    with _timed(seconds, "index"):
        img_bundle, txt_bundle = _build_indexes(run, out / "bundles", bits=bits)
    with _timed(seconds, "queries"):
        text_queries, image_query = _example_queries(run, ds, img_bundle, txt_bundle, dataset=dataset)
    map_float, map_ham, chance = _test_map(run, ds, img_bundle, bits=bits)
    sheet = write_contact_sheet(out / "contact_sheet.png", text_queries)
    page = write_contact_html(out / "contact_sheet.html", text_queries, image_query)
    log.info(f"6. contact sheet: {sheet}  (and {page.name})")

    seconds["total"] = time.perf_counter() - t_start
    seconds = {k: round(v, 2) for k, v in seconds.items()}
    next_commands = next_steps(run_dir, out, dataset=dataset)
    log.info(f"7. done in {seconds['total']:.0f} s. Next:")
    for c in next_commands:
        log.info(f"   {c}")
    sizes = {"train": len(ds.train), "val": len(ds.val), "test": len(ds.test)}
    return DemoResult(
        out,
        run_dir,
        dataset,
        sizes,
        map_float,
        map_ham,
        bits,
        chance,
        text_queries,
        image_query,
        sheet,
        page,
        seconds,
        next_commands,
    )


def _load_data(
    cfg: Config, dataset: str, *, quick: bool, cache_dir: str, progress: Progress | bool | None
) -> tuple[Config, FeatureDataset]:
    """Step 1: generate the built-in folder (once) and encode it (once, cached); a quick run's reduced set is an
    ordinary folder dataset, so the returned config says ``format = "folder"`` for it."""
    from dataclasses import replace

    from dscmr.data.builtin import builtin_folder
    from dscmr.data.folder import load_folder

    n = 100 if quick else None
    folder = builtin_folder(dataset, cache_dir, n=n if dataset == "shapes" else (200 if quick else None))
    if quick:
        cfg = replace(cfg, data=replace(cfg.data, format="folder", root=str(folder)))
    log.info(f"1. data: {dataset} at {folder}")
    t0 = time.perf_counter()
    ds = load_folder(folder, cfg.data, progress=progress)
    log.info(
        f"   {len(ds.train)} train / {len(ds.val)} val / {len(ds.test)} test pairs, {ds.num_classes} labels; "
        f"features {ds.img_dim}-d image (frozen {cfg.data.image_backbone} @ {cfg.data.image_size}px), "
        f"{ds.txt_dim}-d text; {time.perf_counter() - t0:.1f} s"
    )
    return cfg, ds


@contextmanager
def _timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    """Record the wall time of the ``with`` block as ``seconds[name]``."""
    t0 = time.perf_counter()
    yield
    seconds[name] = time.perf_counter() - t0


def _train(cfg: Config, ds: FeatureDataset, run_dir: Path, *, progress: Progress | bool | None) -> Path:
    """Step 2: train DSCMR on the cached features into ``run_dir`` (a finished earlier run there is replaced)."""
    import shutil

    from dscmr.train import RunDir, train

    if RunDir(run_dir).finished:
        shutil.rmtree(run_dir)
    log.info(f"2. training DSCMR ({cfg.train.epochs} epochs max) on cached features -> {run_dir}")
    t0 = time.perf_counter()
    result = train(cfg, run_dir, dataset=ds, progress=progress)
    log.info(f"   selected epoch {result.best_epoch} of {result.epochs_run}; {time.perf_counter() - t0:.1f} s")
    return run_dir


def _build_indexes(run: Any, folder: Path, *, bits: int) -> tuple[Any, Any]:
    """Step 3: a float + ``bits``-bit ITQ bundle of the test images and a float bundle of the test captions."""
    from dscmr.indexing import BuildSpec, build_from_run

    img_bundle = build_from_run(run, folder / "images", modality="image", spec=BuildSpec(binary="itq", bits=bits))
    txt_bundle = build_from_run(run, folder / "texts", modality="text", spec=BuildSpec())
    log.info(
        f"3. indexes: {img_bundle.count} test images (float Flat + {bits}-bit ITQ BFlat), "
        f"{txt_bundle.count} test captions (float Flat)"
    )
    return img_bundle, txt_bundle


def _example_queries(
    run: Any, ds: FeatureDataset, img_bundle: Any, txt_bundle: Any, *, dataset: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Step 4: the dataset's text queries against the images (cosine and Hamming), one test image against the
    captions. Returns the text->image rows and the image->text result."""
    from dscmr.indexing import Retriever

    captions_of: dict[str, list[str]] = {}
    for path, text in zip(ds.test.img_items or (), ds.test.txt_items or (), strict=True):
        captions_of.setdefault(path, []).append(text)
    img_retriever = Retriever(run, img_bundle)
    queries = list(TEXT_QUERIES[dataset])
    float_hits = img_retriever.search_texts(queries, k=K, metric="cosine")
    ham_hits = img_retriever.search_texts(queries, k=K, metric="hamming")
    log.info("4. text -> image (top hits; cosine, then Hamming)")
    text_queries = []
    for q, fh, hh in zip(queries, float_hits, ham_hits, strict=True):
        log.info(f'   "{q}"')
        rows = []
        for h in fh:
            cap = captions_of.get(h.item, [""])[0]
            log.info(f"     {h.rank}. {h.score:+.3f}  {Path(h.item).name}  ({cap})")
            rows.append({"rank": h.rank, "score": h.score, "image": h.item, "caption": cap})
        log.info("     hamming: " + ", ".join(f"{Path(h.item).name} (d={h.score})" for h in hh))
        hamming_rows = [{"rank": h.rank, "distance": h.score, "image": h.item} for h in hh]
        text_queries.append({"query": q, "hits": rows, "hamming_hits": hamming_rows})
    query_image = (ds.test.img_items or ("",))[0]
    txt_hits = Retriever(run, txt_bundle).search_images([query_image], k=K, metric="cosine")[0]
    truth = captions_of.get(query_image, [""])[0]
    log.info(f"   image -> text: {Path(query_image).name} (its caption: {truth})")
    for h in txt_hits:
        log.info(f"     {h.rank}. {h.score:+.3f}  {h.item}")
    hits = [{"rank": h.rank, "score": h.score, "text": h.item} for h in txt_hits]
    return text_queries, {"image": query_image, "caption": truth, "hits": hits}


def _test_map(
    run: Any, ds: FeatureDataset, img_bundle: Any, *, bits: int
) -> tuple[dict[str, float], dict[str, float], float]:
    """Step 5: test mAP both ways, float (cosine) and Hamming on the image bundle's codes, and the chance level."""
    from dscmr.eval.metrics import cross_modal_map
    from dscmr.indexing.hashing import hamming_codes
    from dscmr.train import encode_split

    u, v = encode_split(run.model, ds.test)
    map_float = cross_modal_map(u, v, ds.test.labels)
    assert img_bundle.hasher is not None
    bu, bv = (hamming_codes(img_bundle.hasher, x.numpy()) for x in (u, v))  # (n, bits) +-1
    map_ham = cross_modal_map(bu, bv, ds.test.labels, metric="hamming")
    chance = chance_map(ds.test.labels)
    log.info(
        f"5. test mAP   float: img->txt {map_float['img2txt']:.4f}  txt->img {map_float['txt2img']:.4f}  "
        f"avg {map_float['avg']:.4f}"
    )
    log.info(
        f"              {bits}-bit Hamming: img->txt {map_ham['img2txt']:.4f}  "
        f"txt->img {map_ham['txt2img']:.4f}  avg {map_ham['avg']:.4f}"
    )
    log.info(f"              (a random ranking scores about {chance:.4f}: the share of relevant pairs)")
    return map_float, map_ham, chance


def chance_map(labels: np.ndarray) -> float:
    """Expected mAP of a random ranking, about the mean share of database items relevant to a query."""
    lab = np.asarray(labels, dtype=np.float32)
    return float(((lab @ lab.T) > 0).mean())


def next_steps(run_dir: Path, out: Path, *, dataset: str) -> list[str]:
    """The commands to try after the demo."""
    img, txt = out / "bundles" / "images", out / "bundles" / "texts"
    return [
        f'dscmr search text "a small green circle" --run {run_dir} --index {img} -k 5',
        f"dscmr search image path/to/picture.png --run {run_dir} --index {txt} -k 5",
        f"dscmr train --config configs/{dataset}.toml --out runs/{dataset}",
        f"dscmr eval runs/{dataset}",
        f"dscmr index build --run runs/{dataset} --modality image --out bundles/{dataset}-img --binary itq",
        "dscmr train --config configs/folder_example.toml --data-root path/to/your/folder   # your own data",
        serve_command(run_dir, out),
    ]


def serve_command(run_dir: Path, out: Path) -> str:
    """The ``dscmr serve`` command for the demo's bundles (its search page is at http://127.0.0.1:8080/)."""
    return f"dscmr serve --run {run_dir} --index {out / 'bundles' / 'images'} --index {out / 'bundles' / 'texts'}"


# ----------------------------------------------------------------------------------------------------------------
# Contact sheet


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1
        return ImageFont.load_default()


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width=width) or [""]


def write_contact_sheet(path: Path, text_queries: list[dict[str, Any]], *, thumb: int = 128) -> Path:
    """A PNG grid: one row per text query (the query, then its top hits with rank, score and true caption)."""
    from PIL import Image, ImageDraw

    from dscmr.utils.io import atomic_write_bytes

    label_w, cap_h, pad = 220, 44, 8
    k = max((len(q["hits"]) for q in text_queries), default=0)
    row_h = thumb + cap_h + 2 * pad
    sheet = Image.new("RGB", (label_w + k * (thumb + pad) + pad, row_h * len(text_queries) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    big, small = _font(15), _font(10)
    for r, q in enumerate(text_queries):
        y = pad + r * row_h
        for i, line in enumerate(_wrap(f'"{q["query"]}"', 24)[:6]):
            draw.text((pad, y + 4 + 18 * i), line, fill="black", font=big)
        for j, hit in enumerate(q["hits"]):
            x = label_w + j * (thumb + pad)
            try:
                with Image.open(hit["image"]) as im:
                    tile = im.convert("RGB").resize((thumb, thumb))
            except OSError:
                tile = Image.new("RGB", (thumb, thumb), (200, 200, 200))
            sheet.paste(tile, (x, y))
            draw.rectangle((x, y, x + thumb - 1, y + thumb - 1), outline=(160, 160, 160))
            draw.text((x, y + thumb + 2), f"#{hit['rank']}  {hit['score']:+.3f}", fill=(0, 0, 160), font=small)
            for i, line in enumerate(_wrap(hit["caption"], 26)[:2]):
                draw.text((x, y + thumb + 14 + 12 * i), line, fill=(60, 60, 60), font=small)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return path


def _data_uri(path: str, size: int = 128) -> str:
    from PIL import Image

    try:
        with Image.open(path) as im:
            tile = im.convert("RGB").resize((size, size))
    except OSError:
        return ""
    buf = io.BytesIO()
    tile.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def write_contact_html(path: Path, text_queries: list[dict[str, Any]], image_query: dict[str, Any]) -> Path:
    """A self-contained HTML page (thumbnails embedded) of the text->image and image->text results."""
    from dscmr.utils.io import atomic_write_text

    esc = html.escape
    parts = [
        "<!doctype html><meta charset='utf-8'><title>dscmr demo</title>",
        "<style>body{font-family:sans-serif}td{vertical-align:top;padding:4px;font-size:12px;max-width:140px}"
        "img{border:1px solid #aaa}</style><h1>dscmr demo: text &rarr; image</h1><table>",
    ]
    for q in text_queries:
        parts.append(f"<tr><td><b>{esc(q['query'])}</b></td>")
        for h in q["hits"]:
            parts.append(
                f"<td><img src='{_data_uri(h['image'])}' width=128 height=128><br>#{h['rank']} "
                f"{h['score']:+.3f}<br>{esc(h['caption'])}</td>"
            )
        parts.append("</tr>")
    parts.append("</table><h1>image &rarr; text</h1>")
    parts.append(
        f"<p><img src='{_data_uri(image_query['image'])}' width=128 height=128><br>"
        f"its caption: {esc(image_query['caption'])}</p><ol>"
    )
    parts += [f"<li>{esc(h['text'])} ({h['score']:+.3f})</li>" for h in image_query["hits"]]
    parts.append("</ol>")
    atomic_write_text(path, "\n".join(parts) + "\n")
    return path


__all__ = ["DemoResult", "demo_config", "next_steps", "run_demo", "write_contact_html", "write_contact_sheet"]
