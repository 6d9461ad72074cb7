"""Training K members: in-process, or side by side in "spawn" child processes (one TensorFlow
thread each) that report progress through a queue and exit with the ``digits train`` that
started them. The child entry points are top-level functions here: "spawn" pickles them by
module path.

Stopping is the parent's job alone. Members start with SIGINT ignored, and on Ctrl-C (or any
error) the parent kills them instead of waiting for them: a pool's orderly shutdown waits for
every running job, so one member that missed the signal (a plain ``kill -INT`` of the parent,
or a member still starting up when the terminal sent it) kept ``digits train`` waiting on a
1,000-epoch fit. The pool is waited on from a daemon thread, so a KeyboardInterrupt in the main
thread can never land inside ``concurrent.futures.wait`` while it holds a future's lock, which
would leave the pool's own manager thread, and with it the interpreter's exit, stuck.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


def in_background(function: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    """Start ``function(*args)`` on a daemon thread; return a call that waits for its result
    (or raises its error). Daemon, unlike a ThreadPoolExecutor's thread: Ctrl-C must end
    ``digits train`` at once, not after the thread has finished minutes of work."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = function(*args)
        except BaseException as exc:  # handed to the waiting thread
            outcome["error"] = exc

    thread = threading.Thread(
        target=run, name=getattr(function, "__name__", "background"), daemon=True
    )
    thread.start()

    def result() -> Any:
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    return result


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while member processes are spawned: an ignored signal stays ignored
    across exec, so a member never raises KeyboardInterrupt (no half-started member printing
    a traceback, no pool job ending early); the parent stops them all. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _kill_members() -> None:
    """SIGKILL this process's multiprocessing children (the members) and reap them."""
    import multiprocessing

    for child in multiprocessing.active_children():
        child.kill()
    for child in multiprocessing.active_children():
        child.join(5)


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

    with _sigint_ignored():  # ProcessPoolExecutor spawns its processes in submit()
        pool = ProcessPoolExecutor(
            workers, mp_context=context, initializer=_member_init, initargs=(events, os.getpid())
        )
        futures = [
            pool.submit(_member_process, replace(job, out=tmp / f"model_{job.slot}.keras"))
            for job in jobs
        ]

    def collect() -> list[dict[str, Any] | None]:
        with pool:
            pending = set(futures)
            while pending:
                _, pending = wait(pending, timeout=0.5)
                drain()
            cards = [f.result() for f in futures]  # re-raises a member's exception here
        # The pool has shut down: each member flushed its queue before exiting, so its last
        # progress ticks (sent after the drain above) are read here instead of being lost.
        drain()
        return cards

    try:
        cards = in_background(collect)()
    except BaseException:  # Ctrl-C, or a member's error: no member trains on
        _kill_members()
        raise
    import keras

    return [
        (
            keras.saving.load_model(tmp / f"model_{job.slot}.keras", compile=False, safe_mode=True),
            card,
        )
        for job, card in zip(jobs, cards, strict=True)
        if card is not None
    ]
