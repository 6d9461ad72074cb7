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
    cold: Annotated[
        bool,
        typer.Option(
            "--cold",
            help="Cold mode: `digits run` from fresh directories with nothing running (one "
            "photo, the sample, --data if given), with its phases, against one photo through a "
            "running worker and the TensorFlow import + model load.",
        ),
    ] = False,
    null_model: Annotated[
        bool,
        typer.Option(
            "--null-model",
            help="Pipeline mode: workers score --data with a constant model that costs nothing, "
            "in a throwaway database and home; items/s per worker count and how many scoring "
            "cores that feeds (docs/scaling.md).",
        ),
    ] = False,
    sweep: Annotated[
        str | None,
        typer.Option(
            help="With --null-model: worker counts to run, e.g. 2,4,8 (default --workers)."
        ),
    ] = None,
    ceiling_rows: Annotated[
        int,
        typer.Option(help="With --null-model: rows for the one-core model-only rate (0: skip)."),
    ] = 5000,
    as_json: JsonOpt = False,
) -> None:
    """Benchmark: end-to-end vs model-only ceiling vs the origin's one-predict-per-image loop."""
    from digits.app.bench import draw_bench, run_bench

    try:
        if draw:
            typer.echo(json.dumps(draw_bench(draw), indent=None if as_json else 2))
            return
        if cold:
            from digits.app.bench_cold import cold_bench

            typer.echo(json.dumps(cold_bench(data), indent=None if as_json else 2))
            return
        if null_model:
            from digits.app.bench_pipeline import null_bench, worker_counts

            counts = worker_counts(sweep) if sweep else [workers]
            report = null_bench(data, counts, ceiling_rows=ceiling_rows)
            typer.echo(json.dumps(report, indent=None if as_json else 2))
            return
        report = run_bench(
            data, workers=workers, seed_sample=seed_sample, quiet=as_json, images=images
        )
    except (ValueError, TimeoutError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(json.dumps(report, indent=None if as_json else 2))
