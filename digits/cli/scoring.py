"""Getting work done: `enqueue`, `run`, `resume`, `cancel`, `worker`, `scheduler`, `up`."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from digits.cli.common import (
    LOG_FORMAT,
    JsonOpt,
    QuietOpt,
    app,
    console,
    db_problem,
    fail,
    require_data,
    stop_with_parent,
)


@app.command()
def enqueue(
    paths: Annotated[list[Path], typer.Argument(help="CSV files, folders of images, image files.")],
    model: Annotated[int | None, typer.Option(help="Pin this model version.")] = None,
) -> None:
    """Turn inputs into batches and queue them for the workers; prints one batch id per batch
    (all image files given are one batch; each CSV and each folder is one)."""
    planned, refused = checked_inputs(paths)
    from sqlalchemy.exc import DBAPIError

    from digits.core.db import upgrade
    from scheduler.batches import SourceError, enqueue_planned

    upgrade()
    failed = bool(refused)
    batch_ids: list[int] = []
    with interruptible(batch_ids):
        for batch in planned:
            try:
                done = enqueue_planned(batch, model)
            except SourceError as exc:
                typer.secho(f"error: {exc}", fg="red", err=True)
                failed = True
                continue
            except DBAPIError as exc:
                _report_left_behind(batch_ids)
                raise fail(db_problem(exc)) from exc
            batch_ids.append(done.batch_id)
            typer.echo(done.batch_id)
            if done.failed:
                typer.secho(f"batch {done.batch_id} failed: {done.failed}", fg="red", err=True)
                failed = True
    if failed:
        raise typer.Exit(1)


def checked_inputs(paths: list[Path]) -> tuple[list[Any], list[str]]:
    """The batches to make and the refused inputs' lines, each refusal said on stderr before
    anything exists (no database, no worker); exit 2 when no input is left to run."""
    from scheduler.inputs import plan_inputs

    planned, refused = plan_inputs(paths)
    for line in refused:
        typer.secho(f"error: {line}", fg="red", err=True)
    if not planned:
        raise typer.Exit(2)
    return planned, refused


@app.command()
def worker(
    concurrency: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
    exit_with_parent: Annotated[
        int | None,
        typer.Option(
            help="Warm shutdown once process PID is no longer this worker's parent (what "
            "`digits run` and `digits up` pass, so their workers never outlive them)."
        ),
    ] = None,
) -> None:
    """Run a Celery worker (prefork) that scores chunks."""
    from digits.core.settings import get_settings
    from worker.celery_app import QUEUE
    from worker.celery_app import app as celery_app

    if exit_with_parent is not None:
        stop_with_parent(exit_with_parent)
    n = concurrency or get_settings().workers
    if get_settings().preload_runtime:
        from worker.warmup import import_runtime

        import_runtime()
    # A node name per process (Celery's default is celery@<host> for all): `digits up` and
    # `digits run` start several workers on one host, and remote control (`celery inspect`)
    # must be able to tell them apart. Same host:pid as the heartbeat `digits status` shows.
    node = f"digits-{os.getpid()}@%h"
    celery_app.worker_main(
        [
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            str(n),
            "-Q",
            QUEUE,
            "--hostname",
            node,
            "--loglevel",
            loglevel,
            "--without-gossip",
            "--without-mingle",
        ]
    )


@app.command()
def scheduler(
    beat: Annotated[bool, typer.Option(help="Also run Celery beat (nightly export).")] = True,
) -> None:
    """Watch the inbox, sweep expired leases, and schedule the nightly export (foreground)."""
    import logging
    import threading

    from digits.core.db import upgrade
    from scheduler.service import install_stop_handlers, run_scheduler

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    quiet_libraries()
    upgrade()
    stop = threading.Event()
    install_stop_handlers(stop)
    run_scheduler(stop, beat=beat)


@app.command()
def up(
    workers: Annotated[int | None, typer.Option(help="Local worker processes.")] = None,
    web: Annotated[
        bool, typer.Option("--web", help="Also serve the web console (`digits web`).")
    ] = False,
    web_port: Annotated[
        int | None,
        typer.Option(
            help="Port of the web console [default: DIGITS_WEB_PORT, 8000]", min=1, max=65535
        ),
    ] = None,
) -> None:
    """Service mode on this machine: scheduler + beat + N workers (and the web console with
    --web); Ctrl-C stops cleanly."""
    import logging

    from digits.app.supervision import up as run_up
    from digits.core.db import upgrade
    from digits.core.settings import get_settings

    settings = get_settings()
    if web:
        from digits.web.security import bind_problem

        problem = bind_problem(settings.web_host, settings.web_token)
        if problem:
            raise fail(problem, 2)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    quiet_libraries()
    upgrade()
    typer.echo(
        f"digits up: inbox {settings.inbox_dir}, exports {settings.exports_dir}, "
        f"{workers or settings.workers} workers; logs in {settings.home / 'logs'} "
        "(worker.log: every chunk and item error); Ctrl-C to stop"
    )
    if web:
        typer.echo(
            f"web console on http://{settings.web_host}:{web_port or settings.web_port}/ "
            "(log: web.log)"
        )
    run_up(workers, announce=lambda line: typer.echo(line), web=web, web_port=web_port)


def quiet_libraries() -> None:
    """Keep library chatter off a service's console: Alembic says INFO for every plugin and
    migration step it sets up (nine lines before the banner); our own INFO lines stay. (kombu's
    hostname warning had a cause, fixed in worker/fs_broker.py; its other warnings, such as a
    lost broker connection, are worth seeing.)"""
    import logging

    logging.getLogger("alembic").setLevel(logging.WARNING)


@app.command()
def run(
    paths: Annotated[list[Path], typer.Argument(help="CSV files, folders of images, image files.")],
    out: Annotated[Path | None, typer.Option(help="Also write the Kaggle submission here.")] = None,
    workers: Annotated[int | None, typer.Option(help="Local worker processes to start.")] = None,
    timeout: Annotated[
        float, typer.Option(help="Give up waiting after this many seconds.")
    ] = 3600.0,
    model: Annotated[int | None, typer.Option(help="Pin this model version.")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Score inputs now: enqueue, start local workers if none is connected, wait, summarise.
    All image files given are one batch; each CSV and each folder is one."""
    planned, refused = checked_inputs(paths)
    from sqlalchemy.exc import DBAPIError

    from digits.app.runner import run_paths
    from digits.core.db import upgrade

    upgrade()
    created: list[int] = []
    try:
        with interruptible(created):
            summary = run_paths(
                planned,
                workers=workers,
                timeout=timeout,
                model=model,
                out=out,
                show_progress=not (quiet or as_json),
                console=console(),
                created=created,
                refused=refused,
            )
    except (ValueError, TimeoutError) as exc:
        raise fail(str(exc)) from exc
    except DBAPIError as exc:
        _report_left_behind(created)
        raise fail(db_problem(exc)) from exc
    if as_json:
        typer.echo(json.dumps(summary.as_json()))
    else:
        summary.print(console())
    if not summary.ok:
        raise typer.Exit(1)


@app.command()
def resume(
    batch: Annotated[int, typer.Argument(help="The interrupted batch.")],
    quiet: QuietOpt = False,
) -> None:
    """Finish ingesting a batch whose `digits run`/`enqueue` was interrupted, from where it
    stopped (workers then score it as usual)."""
    from rich.progress import Progress, TextColumn, TimeElapsedColumn

    require_data()  # before importing the broker's module, which creates its folders
    from scheduler.ingestion import IngestionError, resume_batch

    try:
        with Progress(
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console(),
            disable=quiet,
            transient=True,
        ) as bar:
            task = bar.add_task(f"resuming batch {batch}", total=None)

            def progress(rows: int) -> None:
                bar.update(task, description=f"batch {batch}: {rows:,} rows in")

            done, after = resume_batch(batch, progress)
    except IngestionError as exc:
        raise fail(str(exc)) from exc
    if done.failed:
        raise fail(f"batch {batch} failed: {done.failed}")
    typer.echo(
        f"batch {batch}: resumed after row {after:,}; {done.items:,} items in "
        f"{done.chunks} chunks ({done.errors} refused), queued for the workers"
    )


@app.command()
def cancel(
    batch: Annotated[int, typer.Argument(help="The batch to stop.")],
) -> None:
    """Stop a batch: its chunks stop, it is marked cancelled, what was scored stays."""
    require_data()  # before importing the broker's module, which creates its folders
    from scheduler.ingestion import IngestionError, cancel_batch

    try:
        done = cancel_batch(batch)
    except IngestionError as exc:
        raise fail(str(exc)) from exc
    typer.echo(
        f"batch {batch} cancelled (was {done.was}): {done.predicted:,} predictions "
        f"kept, {done.unscored:,} items not scored"
    )


def _report_left_behind(batch_ids: list[int]) -> None:
    from scheduler.ingestion import left_behind

    try:
        for batch in left_behind(batch_ids):
            typer.secho(batch.line(), fg="yellow", err=True)
    except Exception as exc:  # the database itself may be why we stopped
        typer.secho(f"cannot list what is left: {db_problem(exc)}", fg="red", err=True)


@contextmanager
def interruptible(batch_ids: list[int]) -> Iterator[None]:
    """Ctrl-C or SIGTERM while enqueueing or waiting: say what is left behind (a batch half
    ingested: resume or cancel it; batches queued: a worker finishes them) and exit 130,
    instead of a traceback and a batch that looks complete."""
    import signal

    def terminate(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    except KeyboardInterrupt:
        typer.secho("interrupted", fg="red", err=True)
        _report_left_behind(batch_ids)
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
