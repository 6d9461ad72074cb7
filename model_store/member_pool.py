"""Training K members: in-process, or side by side in "spawn" child processes (one TensorFlow
thread each) that report progress through a queue and exit with the ``digits train`` that
started them. The child entry points are top-level functions here: "spawn" pickles them by
module path.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from digits.core.processes import watch_parent  # the same watcher `digits worker` uses
from model_store.fit import MemberJob, ReportFn, train_member
from model_store.loading import configure_threads

_events: Any = None  # in a member's process: the queue its progress goes to


def _member_init(events: Any, parent: int) -> None:
    """Member-process start-up: one TensorFlow thread (small convolutions scale poorly across
    threads, so K one-thread members side by side beat one member on all cores), the progress
    queue (inherited here: a spawned process cannot receive a plain queue as an argument),
    and an exit as soon as ``parent``, the ``digits train`` that started it, is gone: a parent
    stopped by SIGTERM or SIGKILL cannot shut its pool down, and orphaned members would keep
    both cores busy for up to an hour training models nobody will register."""
    global _events

    # os._exit, not a clean exit: the member holds no state worth saving, and a hung
    # TensorFlow call must not delay it
    watch_parent(parent, lambda: os._exit(1))
    configure_threads(1)
    _events = events


def _member_process(job: MemberJob) -> dict[str, Any] | None:
    """Train one member in a child process, save it to ``job.out``, return its card."""
    result = train_member(job, lambda *event: _events.put(event))
    if result is None:
        return None
    model, card = result
    assert job.out is not None
    model.save(job.out)
    return card


def train_members(
    jobs: list[MemberJob], workers: int, progress: ReportFn, tmp: Path
) -> list[tuple[Any, dict[str, Any]]]:
    """Train the members, in-process (workers == 1) or in ``workers`` child processes."""
    if workers <= 1:
        trained = [train_member(job, progress) for job in jobs]
        return [t for t in trained if t is not None]
    import multiprocessing
    import queue
    from concurrent.futures import ProcessPoolExecutor, wait

    context = multiprocessing.get_context("spawn")  # never fork a process that holds TF
    events = context.Queue()

    def drain() -> None:
        while True:
            try:
                progress(*events.get_nowait())
            except queue.Empty:
                return

    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_member_init, initargs=(events, os.getpid())
    ) as pool:
        futures = [
            pool.submit(_member_process, replace(job, out=tmp / f"model_{job.slot}.keras"))
            for job in jobs
        ]
        pending = set(futures)
        while pending:
            _, pending = wait(pending, timeout=0.5)
            drain()
        cards = [f.result() for f in futures]  # re-raises a member's exception here
    # The pool has shut down: each member flushed its queue before exiting, so its last
    # progress ticks (sent after the drain above) are read here instead of being lost.
    drain()
    import keras

    return [
        (
            keras.saving.load_model(tmp / f"model_{job.slot}.keras", compile=False, safe_mode=True),
            card,
        )
        for job, card in zip(jobs, cards, strict=True)
        if card is not None
    ]
