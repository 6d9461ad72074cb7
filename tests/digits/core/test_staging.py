"""The staging store (digits/core/staging.py): both stores on SQLite and PostgreSQL, and the
references it refuses."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import delete, func, select, text

from digits.core import staging
from digits.core.db import session, upgrade
from digits.core.schema import Batch, ChunkPayload
from digits.core.settings import get_settings
from digits.core.staging import StagingError
from tests.conftest import reset_caches


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "postgresql":
        monkeypatch.setenv("DIGITS_DATABASE_URL", request.getfixturevalue("pg_url"))
        reset_caches()
    upgrade()
    return str(request.param)


def use_store(monkeypatch: pytest.MonkeyPatch, store: str) -> None:
    monkeypatch.setenv("DIGITS_STAGING", store)
    get_settings.cache_clear()


def new_batch() -> int:
    with session(write=True) as sess:
        batch = Batch(source="x.csv", kind="csv", model_version=1, model_sha256="0" * 64)
        sess.add(batch)
        sess.flush()
        return batch.id


def rows(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 784), dtype=np.uint8)


def payload_rows(batch_id: int) -> int:
    with session() as sess:
        found = sess.scalar(
            select(func.count()).select_from(ChunkPayload).where(ChunkPayload.batch_id == batch_id)
        )
    return int(found or 0)


@pytest.mark.parametrize(
    ("store", "ref_of"),
    [("folder", lambda b, s: f"b{b}/c{s}.npy"), ("database", lambda b, s: f"db:{b}/{s}")],
)
def test_round_trip_replace_and_drop(
    database: str, monkeypatch: pytest.MonkeyPatch, store: str, ref_of: Any
) -> None:
    use_store(monkeypatch, store)
    batch_id = new_batch()
    first, second = rows(7), rows(3, seed=1)
    ref = staging.put(batch_id, 1, first)
    assert ref == ref_of(batch_id, 1)
    other = staging.put(batch_id, 2, second)
    got = staging.get(ref)
    assert got.dtype == np.uint8 and np.array_equal(got, first)
    # a resumed ingestion stages the same chunk again: it replaces, it does not add
    assert staging.put(batch_id, 1, second) == ref
    assert np.array_equal(staging.get(ref), second)
    in_folder = (get_settings().staging_dir / f"b{batch_id}").exists()
    assert in_folder == (store == "folder")
    assert payload_rows(batch_id) == (2 if store == "database" else 0)
    staging.drop(batch_id)
    for gone in (ref, other):
        with pytest.raises(StagingError, match="not in"):
            staging.get(gone)
    assert payload_rows(batch_id) == 0
    assert not (get_settings().staging_dir / f"b{batch_id}").exists()


def test_a_reference_is_read_by_its_form_not_by_todays_setting(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Switching DIGITS_STAGING leaves batches staged before the switch readable."""
    batch_id = new_batch()
    use_store(monkeypatch, "folder")
    in_folder = staging.put(batch_id, 1, rows(2))
    use_store(monkeypatch, "database")
    in_database = staging.put(batch_id, 2, rows(2, seed=1))
    assert np.array_equal(staging.get(in_folder), rows(2))
    use_store(monkeypatch, "folder")
    assert np.array_equal(staging.get(in_database), rows(2, seed=1))


def test_deleting_a_batch_deletes_its_payloads(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_store(monkeypatch, "database")
    kept, removed = new_batch(), new_batch()
    staging.put(kept, 1, rows(2))
    staging.put(removed, 1, rows(2))
    with session(write=True) as sess:
        sess.execute(delete(Batch).where(Batch.id == removed))
    assert (payload_rows(kept), payload_rows(removed)) == (1, 0)


def test_postgresql_compresses_payloads_with_lz4_when_built_with_it(
    home: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pglz, the default, made staging 28,000 rows cost a second more (docs/benchmark.md)."""
    monkeypatch.setenv("DIGITS_DATABASE_URL", pg_url)
    reset_caches()
    upgrade()
    with session() as sess:
        built_in = sess.scalar(
            text(
                "SELECT 'lz4' = ANY(enumvals) FROM pg_settings "
                "WHERE name = 'default_toast_compression'"
            )
        )
        method = sess.scalar(
            text(
                "SELECT attcompression FROM pg_attribute "
                "WHERE attrelid = 'chunk_payloads'::regclass AND attname = 'data'"
            )
        )
    assert method == ("l" if built_in else "")


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("../../../../../../../../etc/passwd", "outside the staging folder"),
        ("b1/../../outside.npy", "outside the staging folder"),
        ("/etc/passwd", "outside the staging folder"),
        ("b1/link.npy", "outside the staging folder"),  # a link out of the folder
        ("db:../1", "not a database staging reference"),
        ("db:1/2/../../3", "not a database staging reference"),
        ("db:1/x", "not a database staging reference"),
        ("db:/etc/passwd", "not a database staging reference"),
        ("db:1/2\n", "not a database staging reference"),
    ],
)
def test_hostile_references_are_refused(
    home: Path, monkeypatch: pytest.MonkeyPatch, ref: str, reason: str
) -> None:
    """A reference comes from the database: none may read a file out of the staging folder
    (``outside.npy`` is a real array beside it, so a read would succeed), and a ``db:``
    reference never reaches the filesystem at all."""
    upgrade()
    use_store(monkeypatch, "database")
    root = get_settings().staging_dir
    (root / "b1").mkdir(parents=True)
    np.save(root.parent / "outside.npy", rows(1))
    os.symlink(root.parent / "outside.npy", root / "b1" / "link.npy")
    with pytest.raises(StagingError, match=reason):
        staging.get(ref)


def test_a_missing_folder_payload_says_why_and_what_avoids_it(home: Path) -> None:
    """What a worker on a machine without the shared staging folder records."""
    with pytest.raises(StagingError, match="DIGITS_STAGING=database") as raised:
        staging.get("b1/c1.npy")
    assert str(get_settings().staging_dir) in str(raised.value)


@pytest.mark.parametrize(
    ("kind", "reason"), [("pickled", "allow_pickle=False"), ("npz", "not an array")]
)
def test_a_payload_that_is_not_a_plain_array_is_refused(
    database: str, tmp_path: Path, kind: str, reason: str
) -> None:
    """Bytes in the table are never unpickled (unpickling the array would create
    ``marker``), and an ``.npz`` archive is not a chunk."""
    batch_id = new_batch()
    marker = tmp_path / "unpickled"
    buffer = io.BytesIO()
    if kind == "pickled":
        np.save(buffer, np.array([Marker(marker)], dtype=object), allow_pickle=True)
    else:
        np.savez(buffer, rows=rows(2))
    with session(write=True) as sess:
        sess.add(ChunkPayload(batch_id=batch_id, seq=1, data=buffer.getvalue()))
    with pytest.raises(ValueError, match=reason):
        staging.get(f"db:{batch_id}/1")
    assert not marker.exists()


class Marker:
    """Unpickling this creates ``path``: proof that a pickle was (or was not) deserialised."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))
