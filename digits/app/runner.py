"""`digits run`: enqueue inputs, make sure workers exist, wait with progress, summarise.

Waiting also sweeps, so a run finishes even when a worker was killed under it and no
scheduler service is running (the embedded default has none).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from digits.app.supervision import plural, start_workers, stop_workers
from digits.core.queries import BatchProgress, batch_progress, connected_workers
from digits.core.settings import get_settings
from scheduler.batches import SourceError, enqueue_planned
from scheduler.export import ExportError, export_batch
from scheduler.inputs import Planned
from worker.heartbeat import sweeper_beat
from worker.sweeper import sweep


@dataclass
class RunSummary:
    batches: list[BatchProgress]
    seconds: float
    problems: list[str] = field(default_factory=list)
    submissions: list[str] = field(default_factory=list)
    #: inputs refused before any batch (scheduler/inputs.py): said when the run started
    refused: list[str] = field(default_factory=list)

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
    deadline = time.monotonic() + timeout
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
        time.sleep(0.2)


def enqueue_progress(bar: Any, task: Any, name: str) -> Any:
    def update(items: int) -> None:
        bar.update(task, description=f"enqueueing {name}: {items} items")

    return update


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
    proc = None
    log_dir = settings.home / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)

    def ensure_workers() -> None:
        nonlocal proc
        if proc is not None and proc.poll() is not None:
            proc = start_workers(workers or settings.workers, log_dir / "worker.log")

    if not connected_workers():
        proc = start_workers(workers or settings.workers, log_dir / "worker.log")
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
    try:
        with bar:
            task = bar.add_task("enqueueing", total=None)
            for batch in planned:
                try:
                    done = enqueue_planned(
                        batch, model, progress=enqueue_progress(bar, task, batch.name)
                    )
                except SourceError as exc:
                    problems.append(str(exc))
                    continue
                batch_ids.append(done.batch_id)

            def show(state: list[BatchProgress]) -> None:
                total = sum(b.items for b in state)
                finished = sum(b.predicted + b.errors + b.duplicates for b in state)
                bar.update(task, total=total, completed=finished, description="scoring")

            state = wait_for(batch_ids, timeout, show, ensure_workers) if batch_ids else []
    finally:
        if proc is not None:
            stop_workers(proc)
    summary = RunSummary(state, time.monotonic() - started, problems, refused=refused or [])
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
