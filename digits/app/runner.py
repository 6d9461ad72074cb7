"""`digits run`: enqueue inputs, make sure workers exist, wait with progress, summarise.

Waiting also sweeps, so a run finishes even when a worker was killed under it and no
scheduler service is running (the embedded default has none).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from digits.app.supervision import plural, start_workers, stop_workers
from digits.core.processes import started_at
from digits.core.queries import BatchProgress, batch_progress, connected_workers
from digits.core.settings import get_settings
from scheduler.batches import SourceError, enqueue_planned
from scheduler.export import ExportError, export_batch
from scheduler.inputs import Planned
from worker.heartbeat import sweeper_beat, worker_gone
from worker.sweeper import sweep


@dataclass
class Phases:
    """Where a run's wall time went (epoch seconds; ``as_json`` gives the durations).

    The phases overlap on purpose: local workers start before the inputs are read, so their
    TensorFlow import and model load run while a CSV is being enqueued. ``workers_ready``
    ends at the first claim of one of this run's chunks (the database's clock), so it
    includes the model load of a cold start and nothing of a warm one."""

    process: float = field(default_factory=started_at)
    run: float = 0.0  # inputs checked, database migrated: run_paths begins
    workers: float = 0.0  # local workers started, or found running
    reused: bool = False
    processes: int = 0  # worker processes started by this run (0: reused)
    enqueue: float = 0.0
    enqueued: float = 0.0
    finished: float = 0.0  # every batch seen finished
    stopped: float = 0.0  # local workers told to stop (they finish shutting down alone)

    def as_json(self, first_claim: float | None, last_write: float | None) -> dict[str, Any]:
        def span(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None or not a or not b else round(max(0.0, b - a), 3)

        return {
            "startup": span(self.process, self.run),
            "workers": "reused" if self.reused else f"started {self.processes}",
            "workers_ready": span(self.workers, first_claim),
            "enqueue": span(self.enqueue, self.enqueued),
            "scoring": span(first_claim, last_write),
            "finish": span(last_write, self.finished),
            "shutdown": span(self.finished, self.stopped),
            "total": span(self.process, self.stopped or self.finished),
        }


@dataclass
class RunSummary:
    batches: list[BatchProgress]
    seconds: float
    problems: list[str] = field(default_factory=list)
    submissions: list[str] = field(default_factory=list)
    #: inputs refused before any batch (scheduler/inputs.py): said when the run started
    refused: list[str] = field(default_factory=list)
    phases: Phases | None = None

    @property
    def items(self) -> int:
        return sum(b.items for b in self.batches)

    @property
    def predicted(self) -> int:
        return sum(b.predicted for b in self.batches)

    @property
    def errors(self) -> int:
        return sum(b.errors for b in self.batches)

    @property
    def flagged(self) -> int:
        return sum(b.flagged for b in self.batches)

    @property
    def scoring_seconds(self) -> float | None:
        """From the first claim of any of the batches' chunks to the last write, from the
        database: the rate then says how fast workers score, not how long they took to start."""
        firsts = [b.first_claim for b in self.batches if b.first_claim]
        lasts = [b.last_write for b in self.batches if b.last_write]
        if not firsts or not lasts:
            return None
        return max(0.0, (max(lasts) - min(firsts)).total_seconds())

    def _claim_and_write(self) -> tuple[float | None, float | None]:
        firsts = [b.first_claim for b in self.batches if b.first_claim]
        lasts = [b.last_write for b in self.batches if b.last_write]
        return (
            min(firsts).timestamp() if firsts else None,
            max(lasts).timestamp() if lasts else None,
        )

    @property
    def items_per_second(self) -> float | None:
        scoring = self.scoring_seconds
        return self.items / scoring if scoring else None

    @property
    def ok(self) -> bool:
        return (
            not self.problems
            and not self.refused
            and all(b.status == "done" and b.errors == 0 for b in self.batches)
        )

    def as_json(self) -> dict[str, Any]:
        labelled = sum(b.labelled for b in self.batches)
        return {
            "batch_ids": [b.batch_id for b in self.batches],
            "items": self.items,
            "predicted": self.predicted,
            "errors": self.errors,
            "flagged": self.flagged,
            "duplicates": sum(b.duplicates for b in self.batches),
            "seconds": round(self.seconds, 3),
            "scoring_seconds": None
            if self.scoring_seconds is None
            else round(self.scoring_seconds, 3),
            "items_per_second": None
            if self.items_per_second is None
            else round(self.items_per_second, 1),
            "accuracy": round(sum(b.correct for b in self.batches) / labelled, 5)
            if labelled
            else None,
            "failed_batches": [b.batch_id for b in self.batches if b.status == "failed"],
            "problems": self.problems,
            "refused": self.refused,
            "submissions": self.submissions,
            "phases": self.phases.as_json(*self._claim_and_write()) if self.phases else None,
        }

    def print(self, console: Any) -> None:
        for b in self.batches:
            line = (
                f"batch {b.batch_id} ({b.status}) {Path(b.source).name}: "
                f"{plural(b.items, 'item')}, {b.predicted} predicted, "
                f"{plural(b.errors, 'error')}, {b.flagged} flagged for review"
            )
            if b.duplicates:
                line += f", {b.duplicates} duplicates"
            if b.labelled:
                line += f"; accuracy {b.correct / b.labelled:.2%} on {b.labelled} labelled rows"
            console.print(line + f" (model v{b.model_version})")
            if b.error:
                console.print(f"  [red]{b.error}[/red]")
        for problem in self.problems:
            console.print(f"[red]{problem}[/red]")
        for path in self.submissions:
            console.print(f"submission written: {path}")
        totals = (
            f"{plural(self.items, 'item')}, {plural(self.errors, 'error')}, "
            f"{self.flagged} flagged for review; "
        )
        scoring, rate = self.scoring_seconds, self.items_per_second
        if scoring is not None and rate is not None:
            totals += f"scored in {scoring:.1f} s ({rate:,.{0 if rate >= 10 else 1}f} items/s), "
        console.print(totals + f"{self.seconds:.1f} s in all")


def wait_for(
    batch_ids: list[int], timeout: float, progress: Any = None, keep_alive: Any = None
) -> list[BatchProgress]:
    """Poll until every batch is done or failed; sweep as we go; keep local workers alive."""
    from sqlalchemy.exc import DBAPIError

    settings = get_settings()
    begun = time.monotonic()
    deadline = begun + timeout
    next_sweep = time.monotonic() + settings.sweep_seconds
    sweeper_beat()  # this wait sweeps: local workers need not
    while True:
        try:
            state = batch_progress(batch_ids)
        except DBAPIError as exc:  # database briefly down: keep waiting until the deadline
            if time.monotonic() > deadline:
                raise TimeoutError(f"batches {batch_ids}: database unreachable: {exc}") from exc
            logging.getLogger("digits.run").warning("cannot read progress, will retry: %s", exc)
            time.sleep(1.0)
            continue
        if progress:
            progress(state)
        if all(b.finished for b in state):
            return state
        if time.monotonic() > deadline:
            raise TimeoutError(f"batches {batch_ids} not finished after {timeout:.0f} s")
        if time.monotonic() >= next_sweep:
            sweeper_beat()
            try:
                sweep()
            except Exception as exc:  # broker or database briefly down: sweep again later
                logging.getLogger("digits.run").warning("sweep failed, will retry: %s", exc)
            next_sweep = time.monotonic() + settings.sweep_seconds
        if keep_alive:
            keep_alive()
        # a photo scored by a running service is done in tens of milliseconds: look often at
        # first, then every 0.2 s (a query per look)
        time.sleep(0.05 if time.monotonic() - begun < 3.0 else 0.2)


def enqueue_progress(bar: Any, task: Any, name: str) -> Any:
    def update(items: int) -> None:
        bar.update(task, description=f"enqueueing {name}: {items} items")

    return update


def chunks_upper_bound(planned: list[Planned]) -> int:
    """At most how many chunks these inputs make, known before reading them: files are
    counted (up to what would keep every worker busy), CSV rows estimated from the file's
    size on the generous side (a gzipped Kaggle row takes ~210 bytes, a plain one ~1,600;
    a blank row compresses further), so a big input never gets too few workers."""
    settings = get_settings()
    enough = settings.workers * max(settings.chunk_size, settings.image_chunk_size) + 1
    chunks = 0
    for batch in planned:
        if batch.kind == "csv":
            size = batch.paths[0].stat().st_size
            rows = size // 50 if batch.paths[0].suffix == ".gz" else size // 800
            chunks += -(-max(1, rows) // settings.chunk_size)
        else:
            files = len(batch.paths) if batch.kind == "files" else 0
            if batch.kind == "folder":
                files = _count_files(batch.paths[0], enough)
            chunks += -(-max(1, files) // settings.image_chunk_size)
    return max(1, chunks)


def _count_files(folder: Path, limit: int) -> int:
    """Files below ``folder``, counted up to ``limit`` (a huge inbox is not walked twice)."""
    count = 0
    for _, _, names in os.walk(folder):
        count += len(names)
        if count >= limit:
            return limit
    return count


def run_paths(
    planned: list[Planned],
    workers: int | None = None,
    timeout: float = 3600.0,
    model: int | None = None,
    out: Path | None = None,
    show_progress: bool = True,
    console: Any = None,
    created: list[int] | None = None,
    refused: list[str] | None = None,
) -> RunSummary:
    """Make the ``planned`` batches (scheduler/inputs.py ``plan_inputs``, which also gave the
    ``refused`` inputs' lines), make sure workers run, wait for exactly these batches, export.
    ``created`` (the caller's list) receives each batch id as soon as it exists, so a caller
    interrupted half-way can say what it leaves behind."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    settings = get_settings()
    started = time.monotonic()
    phases = Phases(run=time.time())
    proc = None
    log_dir = settings.home / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    # a small input gets fewer processes: each one imports TensorFlow and loads the model,
    # on the same cores, before the one chunk of a photo or a 200-row CSV can be scored
    count = workers or min(settings.workers, chunks_upper_bound(planned))

    def ensure_workers() -> None:
        nonlocal proc
        if proc is not None and proc.poll() is not None:
            proc = start_workers(count, log_dir / "worker.log")

    if connected_workers():
        phases.reused = True  # `digits up` or `digits worker` runs: no start-up at all
    else:
        proc = start_workers(count, log_dir / "worker.log")
        phases.processes = count
    phases.workers = time.time()
    problems: list[str] = []
    batch_ids: list[int] = created if created is not None else []
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not show_progress,
        transient=False,
    )
    finished = False
    try:
        with bar:
            task = bar.add_task("enqueueing", total=None)
            phases.enqueue = time.time()
            for batch in planned:
                try:
                    done = enqueue_planned(
                        batch, model, progress=enqueue_progress(bar, task, batch.name)
                    )
                except SourceError as exc:
                    problems.append(str(exc))
                    continue
                batch_ids.append(done.batch_id)
            phases.enqueued = time.time()

            def show(state: list[BatchProgress]) -> None:
                total = sum(b.items for b in state)
                finished = sum(b.predicted + b.errors + b.duplicates for b in state)
                bar.update(task, total=total, completed=finished, description="scoring")

            state = wait_for(batch_ids, timeout, show, ensure_workers) if batch_ids else []
            phases.finished = time.time()
            finished = True
    finally:
        if proc is not None:
            # every chunk is committed: tell the workers to stop and let them finish their
            # warm shutdown alone (3-7 s of the pool's and the broker's drain); they hold no
            # work, and their heartbeat is gone at once so the next run does not count them.
            # Interrupted or failed, wait for them as before.
            stop_workers(proc, wait=not finished)
            if finished:
                worker_gone(proc.pid)
        phases.stopped = time.time()
    summary = RunSummary(
        state, time.monotonic() - started, problems, refused=refused or [], phases=phases
    )
    if out is not None:
        for b in state:
            if b.status != "done":
                continue
            target = (
                out
                if len(state) == 1
                else out.with_name(f"{out.stem}-batch{b.batch_id}{out.suffix}")
            )
            try:
                # `digits run --out FILE` asks for this run's result in FILE, whatever it held
                path, _, _ = export_batch(
                    b.batch_id, target, manifest=b.kind == "images", partial=True, force=True
                )
                summary.submissions.append(str(path))
            except ExportError as exc:
                problems.append(str(exc))
    return summary
