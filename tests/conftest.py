"""Shared fixtures: real services, a fresh home per test, real worker processes.

Two deployments are exercised: ``embedded`` (SQLite + kombu filesystem broker, no servers) and
``services`` (PostgreSQL + Redis on 127.0.0.1, a fresh database per test).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "digits" / "samples" / "sample.csv.gz"
# Kaggle's labelled file, read-only beside the repo (never committed); tests needing it skip.
KAGGLE_TRAIN = ROOT.parent / "shared" / "data" / "digit-recognizer" / "train.csv.gz"
PG_ADMIN = os.environ.get("DIGITS_TEST_PG", "postgresql://root@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("DIGITS_TEST_REDIS", "redis://127.0.0.1:6379")


def reset_caches() -> None:
    from digits.core import db
    from digits.core.settings import get_settings

    get_settings.cache_clear()
    for engine in db._engines.values():
        engine.dispose()
    db._engines.clear()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh DIGITS_HOME with the embedded defaults; settings and engines rebuilt."""
    for key in list(os.environ):
        if key.startswith("DIGITS_") and not key.startswith("DIGITS_TEST_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("DIGITS_HOME", str(tmp_path / "var"))
    monkeypatch.setenv("DIGITS_SWEEP_SECONDS", "1")
    # no user's ~/.config/digits/digits.toml in a test (the folder is never created)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-user-config"))
    reset_caches()
    yield tmp_path / "var"
    reset_caches()


@pytest.fixture
def pg_url() -> Iterator[str]:
    name = f"digits_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    yield f"{base}/{name}"
    from digits.core import db

    for engine in db._engines.values():
        engine.dispose()
    db._engines.clear()
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_url() -> str:
    """A Redis db of our own, flushed. pytest-xdist's workers (gw0, gw1, …) take dbs 1, 2, …
    so they never share one; a run without xdist picks one by pid (8–15), so two such
    sessions on one machine rarely meet."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    db = 1 + int(worker[2:]) if worker.startswith("gw") else 8 + os.getpid() % 8
    url = f"{REDIS_URL}/{db}"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture(params=["embedded", "services"])
def backend(request: pytest.FixtureRequest, home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each pipeline test runs on SQLite + filesystem broker and on PostgreSQL + Redis."""
    if request.param == "services":
        monkeypatch.setenv("DIGITS_DATABASE_URL", request.getfixturevalue("pg_url"))
        monkeypatch.setenv("DIGITS_BROKER_URL", request.getfixturevalue("redis_url"))
        reset_caches()
    from digits.core.db import upgrade

    upgrade()
    return str(request.param)


class WorkerProcess:
    """A real `digits worker` (Celery prefork) in its own process group."""

    def __init__(self, concurrency: int = 2, log: Path | None = None) -> None:
        self.log = log
        if log:
            log.parent.mkdir(parents=True, exist_ok=True)
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "digits.cli", "worker", "--concurrency", str(concurrency)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(os.environ),
        )

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait for *this* worker's heartbeat (named host:pid; `digits worker` runs Celery in
        its own process): any worker's row would let a second worker's wait return while it
        is still importing, and the first would take every chunk before it consumes."""
        from digits.core.queries import connected_workers

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(w["name"].endswith(f":{self.proc.pid}") for w in connected_workers()):
                return
            assert self.proc.poll() is None, f"worker exited: {self.tail()}"
            time.sleep(0.2)
        raise AssertionError(f"worker not ready: {self.tail()}")

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def kill_all(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 30) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill_all()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log and self.log.exists() else ""


@pytest.fixture
def worker_factory(home: Path) -> Iterator[type[WorkerProcess]]:
    started: list[WorkerProcess] = []

    class Factory(WorkerProcess):
        def __init__(self, concurrency: int = 2) -> None:
            super().__init__(concurrency, home / f"worker-{len(started)}.log")
            started.append(self)

    yield Factory
    for w in started:  # the test is over: no need to wait for a warm shutdown
        if w.proc.poll() is None:
            w.kill_all()


@pytest.fixture
def sample_rows() -> list[str]:
    """The shipped sample's lines (header first): 200 labelled rows held out of training."""
    return gzip.open(SAMPLE, "rt").read().splitlines()


def write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


#: Fixtures that start real worker or scheduler processes: a test using one is end to end.
END_TO_END_FIXTURES = {"worker_factory", "scheduler_thread"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The fast lane (`pytest -m "not slow"`, CONTRIBUTING.md) leaves out every test that
    starts real worker processes, besides the files and tests marked ``slow`` by hand (fault,
    training and end-to-end tests): a test cannot forget to be marked."""
    for item in items:
        if END_TO_END_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def digits_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run ``digits ARGS`` as a user would (a new process, this test's environment)."""
    return subprocess.run(
        [sys.executable, "-m", "digits.cli", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=timeout,
    )
