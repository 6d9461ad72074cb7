"""Security: what an attacker who can write to the broker, the inbox or the database rows can
and cannot make the system do; no secrets in the repository or in the logs.

Covered elsewhere and only referenced here:

* a model whose file does not match its card's sha256 is refused at load:
  tests/model_store/test_loading.py::test_safe_loading_refuses[tampered-hash] (and a Lambda
  layer, an HDF5 file posing as .keras, a wrong signature); the pipeline-level version of it
  (a batch pinned to a tampered model is quarantined) is below;
* docker compose publishes no Redis/PostgreSQL port and keeps no password:
  tests/test_deploy.py::test_data_services_publish_no_ports_and_have_healthchecks,
  tests/test_deploy.py::test_no_secret_in_compose.
"""

from __future__ import annotations

import builtins
import os
import re
import secrets
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select, update

from digits.app.runner import wait_for
from digits.core.db import session
from digits.core.schema import Chunk, Item, ItemError, Prediction
from model_store.aliases import resolve_active
from model_store.registry import default_version, register
from scheduler.batches import (
    add_chunk,
    create_batch,
    enqueue_csv,
    enqueue_files,
    finish_enqueue,
    image_files,
    stage,
)
from tests.conftest import write_csv
from tests.faultkit import (
    PrivateRedis,
    discard,
    outcome,
    reload_settings,
    report,
    setup_backend,
    wait_until,
    write_scans,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["embedded", "services"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """embedded (SQLite + filesystem broker) or services (PostgreSQL + a private Redis)."""
    return setup_backend(request.param, request, monkeypatch)


class Payload:
    """Unpickling this creates ``path``: proof that a pickle was (or was not) deserialised."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.open, (self.path, "w"))


def unsent_chunk(sample_rows: list[str], tmp_path: Path) -> int:
    """A real queued CSV chunk whose message was never sent (only an attacker will send one)."""
    batch_id = create_batch(str(tmp_path / "x.csv"), "csv", resolve_active(), None)
    pixels = np.array(
        [[int(v) for v in row.split(",")[1:]] for row in sample_rows[1:11]], dtype=np.uint8
    )
    ref = stage(batch_id, 1, pixels)
    chunk_id = add_chunk(
        batch_id, 1, ref, [{"position": i, "source_ref": f"x.csv:{i}"} for i in range(1, 11)], []
    )
    assert chunk_id is not None
    finish_enqueue(batch_id, 10, 0, 1)
    return chunk_id


def publish_raw(body: Any, serializer: str, task_id: str) -> None:
    """Publish a Celery-protocol-2 message with kombu itself, to the `digits` queue."""
    from kombu import Exchange, Producer, Queue

    from worker.celery_app import QUEUE, TASK_SCORE, sending_app

    exchange = Exchange(QUEUE, "direct")
    with sending_app().connection_for_write() as conn:
        producer = Producer(conn)
        producer.publish(
            body,
            serializer=serializer,
            exchange=exchange,
            routing_key=QUEUE,
            declare=[Queue(QUEUE, exchange, routing_key=QUEUE)],
            headers={
                "lang": "py",
                "task": TASK_SCORE,
                "id": task_id,
                "root_id": task_id,
                "parent_id": None,
                "group": None,
                "retries": 0,
                "eta": None,
                "expires": None,
                "argsrepr": "",
                "kwargsrepr": "",
                "origin": "attacker",
            },
        )


REFUSAL = "Received invalid task message: Refusing to deserialize untrusted content of type pickle"


def test_pickled_messages_are_refused_and_nothing_runs(
    backend: str,
    worker_factory: type,
    sample_rows: list[str],
    tmp_path: Path,
) -> None:
    """Someone who can write to the broker publishes pickle-serialised tasks: one naming a real
    chunk, one whose body would run code when unpickled. The worker accepts JSON only: both
    are refused before deserialisation; nothing is scored, nothing is created. A JSON message
    for the same chunk, sent afterwards, is scored: the worker was listening all along."""
    chunk_id = unsent_chunk(sample_rows, tmp_path)
    marker = tmp_path / "pwned-by-pickle"
    probe = tmp_path / "payload-is-live"
    import pickle

    pickle.loads(pickle.dumps(Payload(probe)))  # the payload works when unpickled ...
    assert probe.exists()
    worker = worker_factory()
    worker.wait_ready()
    publish_raw(([chunk_id], {}, {}), "pickle", str(uuid.uuid4()))
    publish_raw(([Payload(marker)], {}, {}), "pickle", str(uuid.uuid4()))
    wait_until(
        lambda: worker.log.read_text().count(REFUSAL) >= 2,
        30,
        what="two refusals in the worker log",
    )
    time.sleep(1)
    with session() as sess:
        assert sess.scalar(select(Chunk.state).where(Chunk.id == chunk_id)) == "queued"
        assert sess.scalars(select(Prediction.id)).all() == []
    assert not marker.exists()  # ... but the worker never unpickled it
    from worker.publish import send_chunks

    send_chunks([chunk_id])  # a legitimate JSON message for the same chunk
    wait_until(lambda: session_chunk_state(chunk_id) == "done", 60, what="the JSON message")
    log = worker.log.read_text()
    discard(worker)
    refusals = re.findall(re.escape(REFUSAL), log)
    assert len(refusals) == 2, log[-3000:]
    assert not marker.exists()
    report(
        f"pickle-message[{backend}]",
        pickle_messages=2,
        refused=len(refusals),
        chunks_changed=0,
        code_executed=False,
    )


def session_chunk_state(chunk_id: int) -> str | None:
    with session() as sess:
        return sess.scalar(select(Chunk.state).where(Chunk.id == chunk_id))


def test_hostile_paths_and_references_are_refused_with_a_reason(
    backend: str,
    worker_factory: type,
    sample_rows: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rows in the database, messages in the broker and files in the inputs that try to make
    a worker read outside its folders or load a forged model: each is refused with a recorded
    reason, the rest of the work goes on, and nothing loops."""
    monkeypatch.setenv("DIGITS_MAX_ATTEMPTS", "2")
    reload_settings()
    from digits.core.settings import get_settings

    settings = get_settings()
    # 1. a CSV chunk whose staging reference climbs out of the staging folder
    csv = write_csv(tmp_path / "rows.csv", sample_rows[:41])
    climb = enqueue_csv(csv, chunk_size=20)
    # 2. a CSV chunk whose staged file is a pickled object array (code if unpickled)
    pickled = enqueue_csv(write_csv(tmp_path / "rows2.csv", sample_rows[:21]), chunk_size=20)
    marker = tmp_path / "pwned-by-npy"
    with session() as sess:
        climb_ref = sess.scalar(
            select(Chunk.id).where(Chunk.batch_id == climb.batch_id, Chunk.seq == 2)
        )
        npy_ref = sess.scalar(select(Chunk.ref).where(Chunk.batch_id == pickled.batch_id))
    np.save(
        settings.staging_dir / str(npy_ref),
        np.array([Payload(marker)], dtype=object),
        allow_pickle=True,
    )
    with session(write=True) as sess:
        sess.execute(
            update(Chunk).where(Chunk.id == climb_ref).values(ref="../" * 12 + "etc/passwd")
        )
    # 3. an image batch: one item's path rewritten to /etc/passwd, one file a symlink out
    folder = tmp_path / "scans"
    write_scans(folder, sample_rows, 4)
    (folder / "link.png").symlink_to("/etc/hostname")
    images = enqueue_files(
        folder.resolve(), image_files(folder.resolve()), chunk_size=10, send=False
    )
    with session(write=True) as sess:
        sess.execute(
            update(Item)
            .where(Item.batch_id == images.batch_id, Item.source_ref == "scan00.png")
            .values(path="/etc/passwd")
        )
    from worker.publish import send_chunks

    send_chunks(images.chunk_ids)
    # 4. a batch pinned to a model version whose file no longer matches its card
    bundled = default_version()
    forged = register(
        bundled.model_file,
        {k: v for k, v in bundled.card.items() if k not in ("sha256", "version")},
    )
    data = bytearray(forged.model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    forged.model_file.write_bytes(bytes(data))
    tampered = enqueue_csv(
        write_csv(tmp_path / "rows3.csv", sample_rows[:21]),
        model_version=forged.version,
        chunk_size=20,
    )
    # 5. a message whose chunk id is a path
    from worker.celery_app import QUEUE, TASK_SCORE, sending_app

    sending_app().send_task(TASK_SCORE, args=["../../etc/shadow"], queue=QUEUE)

    worker = worker_factory()
    batch_ids = [climb.batch_id, pickled.batch_id, images.batch_id, tampered.batch_id]
    states = wait_for(batch_ids, timeout=120)
    assert all(s.status == "done" for s in states), [
        (s.batch_id, s.status, s.error) for s in states
    ]
    time.sleep(2)  # time for the path-like message to be retried, if it were
    log = worker.log.read_text()
    discard(worker)
    with session() as sess:
        chunk_errors = dict(
            sess.execute(select(Chunk.id, Chunk.error).where(Chunk.state == "quarantined")).all()
        )
        reasons = dict(
            sess.execute(
                select(Item.source_ref, ItemError.reason)
                .join(ItemError, ItemError.item_id == Item.id)
                .where(Item.batch_id == images.batch_id)
            ).all()
        )
    assert "outside the staging folder" in chunk_errors.pop(climb_ref), chunk_errors
    assert not marker.exists()
    errors = list(chunk_errors.values())
    assert sum("Object arrays cannot be loaded when allow_pickle=False" in e for e in errors) == 1
    assert sum("sha256 mismatch" in e for e in errors) == 1, errors
    assert reasons == {
        "scan00.png": "file path outside the batch's folders",
        "link.png": "symbolic link: refused, links are never followed (points to /etc/hostname)",
    }, reasons
    figures = outcome(batch_ids)
    assert figures["lost"] == 0 and figures["duplicates"] == 0
    assert figures["predicted"] == 20 + 3  # the sound CSV chunk and the 3 sound scans
    refused = "refused a message whose chunk id is not an integer: '../../etc/shadow'"
    assert log.count(refused) == 1, log[-4000:]
    assert log.count("etc/shadow") == 1, log[-4000:]  # refused once, never retried
    # 6. exports write exactly the submission and its manifest, where they were asked to
    from scheduler.export import export_batch

    out = tmp_path / "export" / "submission.csv"
    export_batch(images.batch_id, out, partial=True, manifest=True)
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "submission.csv",
        "submission.manifest.json",
    ]
    report(
        f"hostile-references[{backend}]",
        chunk_ref_climb="quarantined",
        pickled_npy="quarantined",
        code_executed=False,
        forged_model="quarantined",
        item_path_outside="item error",
        symlink_out="item error",
        path_as_chunk_id="refused, not retried",
        lost=0,
        duplicates=0,
    )


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_inbox_content_is_never_executed(
    backend: str,
    worker_factory: type,
    tmp_path: Path,
    sample_rows: list[str],
) -> None:
    """Scripts, executables and shell-metacharacter names dropped into the inbox are data:
    refused by type or by content, never run, and the names are stored as they are."""
    from digits.core.settings import get_settings
    from scheduler.inbox import Inbox

    inbox = Inbox(get_settings().inbox_dir, settle=0.0)
    marker = tmp_path / "pwned"
    touch = f"touch {marker}"
    hostile = {  # names are run through no shell; contents are never executed
        "run.sh": f"#!/bin/sh\n{touch}\n",
        "evil.py": f"import os; os.system({touch!r})\n",
        "$(touch pwned).png": "text 1",
        "`touch pwned`.jpg": "text 2",
        "; touch pwned #.png": "text 3",
        "-rf .png": "text 4",
        "x.npy": "",
    }
    for name, content in hostile.items():
        path = inbox.root / name
        path.write_text(content)
        path.chmod(0o755)
    np.save(inbox.root / "x.npy", np.array([Payload(marker)], dtype=object), allow_pickle=True)
    write_scans(inbox.root, sample_rows, 1, prefix="fine")
    old = time.time() - 5
    for p in inbox.root.iterdir():
        if p.is_file():
            os.utime(p, (old, old))
    worker = worker_factory()
    [ingested] = inbox.scan()
    worker.wait_ready()
    [state] = wait_for([ingested.batch_id], timeout=60)
    discard(worker)
    with session() as sess:
        reasons = dict(
            sess.execute(
                select(Item.source_ref, ItemError.reason)
                .join(ItemError, ItemError.item_id == Item.id)
                .where(Item.batch_id == ingested.batch_id)
            ).all()
        )
    assert state.predicted == 1 and state.errors == len(hostile)
    assert sorted(reasons) == sorted(hostile)
    for name, reason in reasons.items():
        image = Path(name).suffix in (".png", ".jpg")
        assert reason == (
            "not an image" if image else f"not an accepted image type: {Path(name).suffix}"
        ), (name, reason)
    assert not marker.exists()
    for where in (Path.cwd(), inbox.root, get_settings().home):
        assert not (where / "pwned").exists()
    report(
        "inbox-never-executed[embedded]",
        hostile_files=len(hostile),
        executed=0,
        refused=len(reasons),
        scored=1,
    )


def tracked_files() -> list[Path]:
    """The repository's own files (what .gitignore/.dockerignore leave in), without git."""
    skip = {
        ".git",
        ".venv",
        "var",
        "__pycache__",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
        "build",
        "dist",
    }
    out = []
    for path in ROOT.rglob("*"):
        parts = path.relative_to(ROOT).parts
        if any(p in skip or p.endswith(".egg-info") for p in parts) or not path.is_file():
            continue
        if path.suffix in (".keras", ".gz", ".npy", ".png", ".jpg") or path.name == ".env":
            continue
        out.append(path)
    return out


#: a secret-named variable or key given a literal: password = "…", "api_key": '…'
CODE_SECRET = re.compile(
    r"""(?i)\b\w*(?:password|passwd|secret|token|api_?key|access_?key)\w*["']?\s*[:=]\s*"""
    r"""[rbf]?["']([^"'\s]{4,})["']"""
)
#: the same in env files, compose, TOML, shell: POSTGRES_PASSWORD=…, API_KEY: …
ENV_SECRET = re.compile(
    r"(?im)^[ \t#]*(?:export\s+|-\s+)?\w*(?:PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY)\w*"
    r"\s*[:=]\s*([^\s#]+)"
)
#: a URL carrying a password in its user-info part
URL_SECRET = re.compile(r"""\b[a-z][a-z0-9+.-]*://[^\s/:@'"]*:([^@\s/'"]+)@""")
KEY_MATERIAL = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----|\bAKIA[0-9A-Z]{16}\b")
PLACEHOLDERS = {"change-me", "**", "...", "…"}


def secret_findings(name: str, text: str) -> list[str]:
    patterns = [CODE_SECRET, URL_SECRET] + ([] if name.endswith(".py") else [ENV_SECRET])
    found = []
    for pattern in patterns:
        for match in pattern.finditer(text):
            value = match.group(1)
            if value in PLACEHOLDERS or value.startswith(("${", "{")):
                continue  # compose's ${POSTGRES_PASSWORD:?…}, f-string fields, placeholders
            found.append(f"{name}: {match.group(0).strip()[:80]}")
    found += [f"{name}: {m.group(0)}" for m in KEY_MATERIAL.finditer(text)]
    return found


def test_no_secrets_in_the_repository() -> None:
    """Password-like assignments, URLs with a password and key material, in every file of
    the repository (git is not used: the walk skips what .gitignore ignores). Allowed:
    compose's ``${POSTGRES_PASSWORD:?…}`` and the ``change-me`` placeholder in .env.example.
    The patterns are checked against planted secrets first, so a pass is not vacuous."""
    planted = {  # spelt in pieces so that this file does not contain them
        "settings.py": 'db_password = "' + "hunter2" * 2 + '"',
        "conf.yml": "  REDIS_PASSWORD: " + "s3cr3t-value",
        "app.env": "API_KEY=" + "abcdef123456",
        "run.py": 'url = "postgresql://digits:' + 's3cr3t@db:5432/digits"',
        "id_rsa": "-----BEGIN OPENSSH " + "PRIVATE KEY-----",
    }
    for name, text in planted.items():
        assert secret_findings(name, text), f"the scan misses {text!r}"
    files = tracked_files()
    found = []
    for path in files:
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        found += secret_findings(str(path.relative_to(ROOT)), text)
    assert found == [], found
    example = (ROOT / ".env.example").read_text()
    assert re.search(r"(?m)^POSTGRES_PASSWORD=change-me$", example)
    report(
        "no-secrets-in-repo", files_scanned=len(files), findings=0, planted_detected=len(planted)
    )


def test_passwords_never_reach_the_logs(
    home: Path,
    worker_factory: type,
    sample_rows: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pg_url: str,
) -> None:
    """A worker on a password-protected Redis and a PostgreSQL URL carrying a password (the
    test server trusts 127.0.0.1, so any password is accepted): neither password appears in
    the worker's log, including the reconnect errors of a Redis outage, nor in the output of
    `digits db upgrade` and `digits status`."""
    import subprocess
    import sys

    redis_password = "r" + secrets.token_hex(12)
    pg_password = "p" + secrets.token_hex(12)
    broker = PrivateRedis(tmp_path / "redis", password=redis_password)
    broker.start()
    try:
        user, rest = pg_url.split("://", 1)[1].split("@", 1)
        monkeypatch.setenv(
            "DIGITS_DATABASE_URL", f"postgresql+psycopg://{user}:{pg_password}@{rest}"
        )
        monkeypatch.setenv("DIGITS_BROKER_URL", broker.url(0))
        reload_settings()
        cli = [sys.executable, "-m", "digits.cli"]
        outputs = [
            subprocess.run(
                [*cli, "db", "upgrade"],
                capture_output=True,
                text=True,
                env=dict(os.environ),
                timeout=120,
            )
        ]
        worker = worker_factory()
        worker.wait_ready()
        done = enqueue_csv(write_csv(tmp_path / "rows.csv", sample_rows[:21]), chunk_size=10)
        wait_for([done.batch_id], timeout=60)
        broker.kill()  # reconnect errors print the broker URL
        wait_until(
            lambda: "Cannot connect to redis" in worker.log.read_text(),
            30,
            what="a reconnect error",
        )
        broker.start()
        wait_until(
            lambda: worker.log.read_text().count("Connected to redis") >= 2,
            30,
            what="the reconnect",
        )
        outputs.append(
            subprocess.run(
                [*cli, "status"], capture_output=True, text=True, env=dict(os.environ), timeout=60
            )
        )
        worker.stop()
        text = worker.log.read_text() + "".join(o.stdout + o.stderr for o in outputs)
    finally:
        broker.stop()
    assert "redis://:**@127.0.0.1" in text  # the URL is logged, masked
    assert redis_password not in text and pg_password not in text
    report(
        "passwords-in-logs[services]",
        log_bytes=len(text),
        redis_password_seen=0,
        pg_password_seen=0,
        masked_urls=text.count(":**@"),
    )
