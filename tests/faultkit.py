"""Helpers for the reliability and security tests: private servers to break, figures to report.

The shared PostgreSQL (5432) and Redis (6379) are used by every other test, so faults that stop
a server are injected into *private* instances started here on free loopback ports:

* :class:`PrivateRedis` — ``redis-server --save "" --appendonly no`` (a restart loses every
  message it held, the worst case), optionally with ``--requirepass``.
* :class:`PrivatePostgres` — a throw-away cluster made with ``initdb`` in a temporary folder
  owned by the ``postgres`` OS user (initdb refuses to run as root), trust auth on 127.0.0.1.

:func:`report` prints the measured figures (and appends them as JSON lines to the file named
by ``DIGITS_TEST_FIGURES`` when set), which is where docs/reliability.md's numbers come
from.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from digits.core.db import session
from digits.core.schema import Batch, Chunk, Item, Prediction


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range (32768-60999 by default).

    A server the tests kill and restart on the same port must not get a port the kernel also
    hands out as a client's source port: a client retrying 127.0.0.1:P while nothing listens
    can end up connected to itself from P (TCP simultaneous open), and the restarted server
    then cannot bind P (a Redis-restart test once waited 150 s for a Redis that never came
    back)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, 32_000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


def report(name: str, **figures: Any) -> None:
    """Print one line of figures (visible with ``pytest -s`` / in -rA output) and keep them."""
    line = f"FIGURES {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items())
    print(line)
    target = os.environ.get("DIGITS_TEST_FIGURES")
    if target:
        with open(target, "a") as fh:
            fh.write(json.dumps({"test": name, **figures}) + "\n")


def reload_settings() -> None:
    """Settings and engines are cached per process: rebuild them after changing the env."""
    from tests.conftest import reset_caches

    reset_caches()


# ------------------------------------------------------------------------------ outcome checks
def outcome(batch_ids: list[int]) -> dict[str, int]:
    """Items lost (no prediction, no recorded reason), duplicate predictions (more than one
    for the batch's pinned version), predicted, errors, and chunks claimed more than once."""
    with session() as sess:
        per_item = sess.execute(
            select(Item.id, Item.status, func.count(Prediction.id))
            .join(Batch, Batch.id == Item.batch_id)
            .outerjoin(
                Prediction,
                (Prediction.item_id == Item.id) & (Prediction.model_version == Batch.model_version),
            )
            .where(Item.batch_id.in_(batch_ids))
            .group_by(Item.id, Item.status)
        ).all()
        attempts = sess.scalars(select(Chunk.attempts).where(Chunk.batch_id.in_(batch_ids))).all()
    return {
        "items": len(per_item),
        "predicted": sum(1 for _, status, n in per_item if status == "predicted" and n == 1),
        "errors": sum(1 for _, status, _n in per_item if status == "error"),
        "lost": sum(
            1 for _, status, n in per_item if n == 0 and status not in ("error", "duplicate")
        ),
        "duplicates": sum(n - 1 for _, _status, n in per_item if n > 1),
        "chunks": len(attempts),
        "reclaimed_chunks": sum(1 for a in attempts if a > 1),
    }


def chunk_states(batch_id: int) -> dict[str, int]:
    with session() as sess:
        rows = sess.execute(
            select(Chunk.state, func.count())
            .where(Chunk.batch_id == batch_id)
            .group_by(Chunk.state)
        ).all()
    return {state: int(n) for state, n in rows}


def wait_until(predicate: Any, timeout: float, interval: float = 0.05, what: str = "") -> float:
    """Poll ``predicate`` (exceptions count as False); returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        with contextlib.suppress(Exception):
            if predicate():
                return time.monotonic() - start
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or predicate}")


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


# ------------------------------------------------------------------------------ private Redis
class PrivateRedis:
    """A disposable redis-server on its own loopback port, no persistence at all."""

    def __init__(self, folder: Path, password: str | None = None) -> None:
        self.port = free_port()
        self.folder = folder
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def url(self, db: int = 0) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 10) -> None:
        args = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.folder),
            "--daemonize",
            "no",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        log = open(self.folder / "redis.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        import redis

        client = redis.Redis.from_url(self.url())
        wait_until(lambda: client.ping(), timeout, what=f"redis on port {self.port}")

    def kill(self) -> None:
        """SIGKILL: a crash, nothing saved (and nothing would be: persistence is off)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        self.kill()


# ------------------------------------------------------------------------------ private PostgreSQL
def postgres_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


class PrivatePostgres:
    """A throw-away PostgreSQL cluster owned by the ``postgres`` OS user on a free port."""

    def __init__(self) -> None:
        self.initdb = postgres_bin("initdb")
        self.pg_ctl = postgres_bin("pg_ctl")
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="digits-pg-"))
        self.data = self.folder / "data"
        self.user = "postgres"

    @classmethod
    def unavailable(cls) -> str | None:
        """Why a private cluster cannot be made here (None when it can)."""
        if not postgres_bin("initdb") or not postgres_bin("pg_ctl"):
            return "initdb/pg_ctl not installed"
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "no 'postgres' OS user to run initdb as"
        if os.geteuid() == 0 and not shutil.which("runuser"):
            return "running as root and runuser is missing (initdb refuses root)"
        return None

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = list(args)
        if os.geteuid() == 0:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=True, cwd=self.folder
        )

    def init(self) -> None:
        if os.geteuid() == 0:
            entry = pwd.getpwnam(self.user)
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
        assert self.initdb is not None
        self._run(
            self.initdb,
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            self.user,
            "--no-sync",
            "-E",
            "UTF8",
        )
        conf = self.data / "postgresql.conf"
        with open(conf, "a") as fh:
            fh.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.folder}'\nfsync = off\n"
                "shared_buffers = 16MB\nmax_connections = 60\n"
            )

    def start(self) -> None:
        assert self.pg_ctl is not None
        self._run(
            self.pg_ctl,
            "-D",
            str(self.data),
            "-l",
            str(self.folder / "pg.log"),
            "-w",
            "-t",
            "30",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        assert self.pg_ctl is not None
        self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        admin = self.url().replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


# ------------------------------------------------------------------------------ inputs
def write_scans(
    folder: Path, sample_rows: list[str], n: int, seed: int = 0, prefix: str = "scan"
) -> list[Path]:
    """``n`` realistic PNG scans of the sample's digits, named ``<prefix>NN.png``."""
    import numpy as np

    from digits.core.synthetic_scans import render_scan

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, line in enumerate(sample_rows[1 : n + 1]):
        values = np.array(line.split(","), dtype=np.int64)
        data, ext = render_scan(values[1:].astype(np.uint8), rng, fmt="PNG")
        path = folder / f"{prefix}{i:02d}{ext}"
        path.write_bytes(data)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------ deployments
def setup_backend(kind: str, request: Any, monkeypatch: Any) -> str:
    """Like conftest's ``backend``, but ``services`` gets a *private* Redis.

    The shared Redis db 9 is flushed by every ``services`` test and consumed by the workers of
    any suite running at the same time on this machine: a fault test measuring recovery must
    not have its messages eaten (or its figures skewed) by someone else's worker.
    """
    if kind == "services":
        home = request.getfixturevalue("home")
        broker = PrivateRedis(home.parent / "redis")
        broker.start()
        request.addfinalizer(broker.stop)
        request.node.private_redis = broker  # for tests that break it
        monkeypatch.setenv("DIGITS_DATABASE_URL", request.getfixturevalue("pg_url"))
        monkeypatch.setenv("DIGITS_BROKER_URL", broker.url(0))
        reload_settings()
    else:
        request.getfixturevalue("home")
    from digits.core.db import upgrade

    upgrade()
    return kind


def discard(*workers: Any) -> None:
    """SIGKILL test workers whose job is done (a warm shutdown costs 2-6 s per worker and is
    not what those tests measure; tests/worker/test_reliability.py tests it on its own)."""
    for worker in workers:
        if worker.proc.poll() is None:
            worker.kill_all()
