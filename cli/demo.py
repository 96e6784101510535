"""``dscmr demo`` (the end-to-end demo on built-in data) and ``dscmr bench encoders``."""

from __future__ import annotations

from pathlib import Path

import typer

from dscmr.cli._common import cli_errors, print_json


@cli_errors
def demo_cmd(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Output folder (run, index bundles, contact sheet)."),
    dataset: str = typer.Option("shapes", "--dataset", help="Built-in dataset: shapes (default) or digits."),
    cache_dir: str = typer.Option("", "--cache-dir", help="Generated data and cached features [~/.cache/dscmr]."),
    threads: int = typer.Option(
        1, "--threads", help="torch threads (0 = torch's default; 1 is safest on a busy 2-core machine)."
    ),
    quick: bool = typer.Option(False, "--quick", hidden=True, help="Tiny version for tests (100 pictures, 4 epochs)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object, nothing else."),
    serve_after: bool = typer.Option(False, "--serve", help="Then serve the demo's bundles (search page on --port)."),
    port: int = typer.Option(8080, "--port", help="With --serve: the loopback port."),
) -> None:
    """Run the end-to-end demo: data, training, indexes, example queries, mAP, contact sheet.

    The step-by-step report is logged (stderr); ``--json`` prints only the result object on stdout.
    """
    from dscmr.demo import run_demo

    result = run_demo(
        out,
        dataset=dataset,
        quick=quick,
        cache_dir=cache_dir,
        threads=threads,
        progress=not json_out,
    )
    if json_out:
        print_json(result.to_dict())
    if serve_after:
        from dscmr.serve.server import serve

        bundles = [result.out / "bundles" / "images", result.out / "bundles" / "texts"]
        serve(result.run_dir, list(bundles), port=port, say=(lambda s: None) if json_out else typer.echo)


@cli_errors
def bench_encoders_cmd(
    threads: int = typer.Option(1, "--threads", help="torch threads for both sides."),
    n_texts: int = typer.Option(1000, "--texts", help="Sentences to encode."),
    n_images: int = typer.Option(64, "--images", help="Images to encode."),
    image_size: int = typer.Option(160, "--image-size", help="Input side of the image encoder."),
    rounds: int = typer.Option(3, "--rounds", help="Interleaved rounds (the best one is reported)."),
    engine: str = typer.Option("", "--engine", help="Also measure these engines, e.g. torch,onnx,onnx-int8."),
    map_: bool = typer.Option(False, "--map", help="With --engine: mAP of the shapes and digits demo runs per engine."),
    cache_dir: str = typer.Option("", "--cache-dir", help="ONNX files, features and the --map runs [~/.cache/dscmr]."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object, nothing else."),
) -> None:
    """Encoder throughput vs SentenceTransformer.encode and torchvision's mobilenet_v2 (and ONNX engines)."""
    from dscmr.benchmarks.encoders import bench_encoders, builtin_runs
    from dscmr.encoders.engine import check_engine

    engines = [check_engine(e.strip()) for e in engine.split(",") if e.strip()]
    runs = None
    if map_ and engines:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            runs = builtin_runs(cache_dir)
        finally:
            torch.set_num_threads(before)
    res = bench_encoders(
        threads=threads, n_texts=n_texts, n_images=n_images, image_size=image_size, rounds=rounds, engines=engines,
        cache_dir=cache_dir, map_runs=runs,
    )  # fmt: skip
    if json_out:
        print_json(res)
        return
    t, i = res["text"], res["image"]
    typer.echo(f"threads {res['threads']}")
    typer.echo(
        f"text  ({t['n']} sentences, batch {t['batch_size']}): "
        + ", ".join(f"{k} {v:.1f}/s" for k, v in t["items_per_s"].items())
        + f"  ratio {t['ratio']:.3f}"
    )
    typer.echo(f"image ({i['n']} images, {i['image_size']} px, batch {i['batch_size']}):")
    for k, v in i["items_per_s"].items():
        ratio = i["ratio_vs_torchvision"].get(k)
        typer.echo(f"  {k:38s} {v:8.1f}/s" + (f"  x{ratio:.3f}" if ratio is not None else ""))
    typer.echo(f"  files (decode+transform+backbone) ratio vs torchvision: x{i['files_ratio']:.3f}")
    for e in engines:
        for side, ref in (("image", "torchvision"), ("text", "sentence_transformers")):
            r, base = res[side][e], res[side][ref]
            maps = "".join(f"  {k} {v:.4f}" for k, v in r.items() if k.startswith("map_"))
            typer.echo(
                f"{side:5s} {e:10s} {r['items_per_s']:8.1f}/s (x{r['items_per_s'] / base['items_per_s']:.2f} {ref})  "
                f"batch 1: {r['batch1_ms']:.2f} ms (x{r['batch1_ms'] / base['batch1_ms']:.2f}){maps}"
            )


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``demo`` and ``bench encoders``."""
    app.command("demo")(demo_cmd)
    bench_app.command("encoders")(bench_encoders_cmd)
