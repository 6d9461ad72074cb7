"""`digits bench`: end-to-end throughput against the model-only ceiling."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from digits.cli.common import JsonOpt, app, fail


@app.command()
def bench(
    data: Annotated[Path | None, typer.Option(help="Kaggle CSV to score.")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 2,
    seed_sample: Annotated[int, typer.Option(help="Images for the origin's per-image loop.")] = 300,
    images: Annotated[
        int,
        typer.Option(
            help="Image mode: score this many generated ~300x300 JPEG scans instead of a CSV."
        ),
    ] = 0,
    draw: Annotated[
        int,
        typer.Option(
            help="Draw mode: p50/p95 latency of this many draw-page predictions after warm-up, "
            "in process and through a started console's HTTP endpoint."
        ),
    ] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Benchmark: end-to-end vs model-only ceiling vs the origin's one-predict-per-image loop."""
    from digits.app.bench import draw_bench, run_bench

    try:
        if draw:
            typer.echo(json.dumps(draw_bench(draw), indent=None if as_json else 2))
            return
        report = run_bench(
            data, workers=workers, seed_sample=seed_sample, quiet=as_json, images=images
        )
    except (ValueError, TimeoutError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(json.dumps(report, indent=None if as_json else 2))
