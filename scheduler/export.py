"""Kaggle submissions: ``ImageId,Label`` in source row order, validated, written atomically.

The same batch and model version always give byte-identical files (fixed order, fixed line
endings, no timestamps inside), so a re-run can be compared with ``cmp``.

Every written submission is recorded in ``exports`` (trigger ``manual`` or ``nightly``). The
nightly export (:func:`export_since_last`) writes each finished batch that has no such row yet,
so it is idempotent and a batch exported by hand is not exported again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import exists, func, select
from sqlalchemy.orm import aliased

from digits.core.db import session
from digits.core.schema import Batch, Export, Item, ItemError, Prediction
from digits.core.settings import get_settings

log = logging.getLogger("digits.export")


class ExportError(ValueError):
    """A submission that would be incomplete or invalid: nothing is written."""


@dataclass(frozen=True)
class Submission:
    batch_id: int
    model_version: int
    rows: list[tuple[int, int]]  # (ImageId, Label)
    files: list[tuple[int, str]]  # (ImageId, source reference) for the manifest
    missing: list[tuple[int, str]]  # (ImageId, reason) of items without a label


def collect(batch_id: int, model_version: int | None = None) -> Submission:
    """Read a batch's labels; duplicates take the label of the item they repeat."""
    original = aliased(Item)
    with session() as sess:
        batch = sess.get(Batch, batch_id)
        if batch is None:
            raise ExportError(f"batch {batch_id} does not exist")
        if batch.status != "done":
            raise ExportError(f"batch {batch_id} is {batch.status}, not done: nothing exported")
        version = model_version or batch.model_version
        rows = sess.execute(
            select(Item.position, Item.source_ref, Prediction.label, ItemError.reason)
            .outerjoin(original, original.id == Item.duplicate_of)
            .outerjoin(
                Prediction,
                (Prediction.item_id == func.coalesce(original.id, Item.id))
                & (Prediction.model_version == version),
            )
            .outerjoin(ItemError, ItemError.item_id == Item.id)
            .where(Item.batch_id == batch_id)
            .order_by(Item.position)
        ).all()
    out: list[tuple[int, int]] = []
    files: list[tuple[int, str]] = []
    missing: list[tuple[int, str]] = []
    for position, ref, label, reason in rows:
        files.append((position, ref))
        if label is None:
            missing.append((position, reason or f"no prediction by model version {version}"))
        else:
            out.append((position, int(label)))
    return Submission(batch_id, version, out, files, missing)


def validate(rows: list[tuple[int, int]], expected: int) -> None:
    ids = [image_id for image_id, _ in rows]
    if len(set(ids)) != len(ids):
        raise ExportError("duplicate ImageId in submission")
    if sorted(ids) != list(range(1, expected + 1)):
        raise ExportError(f"ImageIds are not exactly 1..{expected}")
    if any(not 0 <= label <= 9 for _, label in rows):
        raise ExportError("label outside 0–9 in submission")


def atomic_write(path: Path, lines: Iterable[str]) -> str:
    """Write via a temp file in the same folder + fsync + rename; returns the sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            os.fchmod(fh.fileno(), 0o644)  # mkstemp makes 0600: others could not read exports
            for line in lines:
                fh.write(line)
                digest.update(line.encode())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest.hexdigest()


def submission_lines(sub: Submission, partial: bool = False) -> list[str]:
    if sub.missing and not partial:
        shown = ", ".join(f"{i} ({why})" for i, why in sub.missing[:5])
        more = f" and {len(sub.missing) - 5} more" if len(sub.missing) > 5 else ""
        raise ExportError(
            f"batch {sub.batch_id}: {len(sub.missing)} ImageIds have no label: {shown}{more}. "
            "Use --partial to write the labelled rows only."
        )
    if not partial:
        validate(sub.rows, len(sub.files))
    return ["ImageId,Label\n", *(f"{i},{label}\n" for i, label in sub.rows)]


def export_batch(
    batch_id: int,
    out: Path,
    model_version: int | None = None,
    partial: bool = False,
    manifest: bool = False,
) -> tuple[Path, int, str]:
    """Write the batch's submission to ``out``; returns (path, rows, sha256)."""
    sub = collect(batch_id, model_version)
    sha = atomic_write(out, submission_lines(sub, partial))
    if manifest:
        write_manifest(out.with_name(out.stem + ".manifest.json"), sub, sha)
    with session(write=True) as sess:  # `digits status` shows it; the nightly run skips it
        sess.add(
            Export(
                batch_id=batch_id,
                path=str(out.resolve()),
                trigger="manual",
                rows=len(sub.rows),
                sha256=sha,
            )
        )
    return out, len(sub.rows), sha


def write_manifest(
    path: Path, sub: Submission, sha: str, extra: dict[str, Any] | None = None
) -> None:
    with session() as sess:
        batch = sess.get_one(Batch, sub.batch_id)
        info = {
            "batch_id": batch.id,
            "source": batch.source,
            "kind": batch.kind,
            "source_sha256": batch.source_sha256,
            "model_version": sub.model_version,
            "model_sha256": batch.model_sha256,
            "rows": len(sub.rows),
            "errors": [{"image_id": i, "reason": r} for i, r in sub.missing],
            "submission_sha256": sha,
        }
    if batch.kind == "images":
        info["files"] = {str(i): ref for i, ref in sub.files}
    info.update(extra or {})
    atomic_write(path, [json.dumps(info, indent=2, sort_keys=True) + "\n"])


@dataclass(frozen=True)
class Exported:
    """One batch written by :func:`export_pending`."""

    batch_id: int
    submission: Path
    manifest: Path
    rows: int
    items: int
    errors: int
    sha256: str


def export_day(now: datetime | None = None) -> date:
    """The date folder of a run: today in the nightly export's time zone."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        zone = ZoneInfo(get_settings().export_timezone)
    except (ZoneInfoNotFoundError, ValueError):
        log.warning("unknown DIGITS_EXPORT_TIMEZONE %r: using UTC", get_settings().export_timezone)
        zone = ZoneInfo("UTC")
    return (now or datetime.now(zone)).astimezone(zone).date()


def pending_batches() -> list[int]:
    """Finished batches (CSV and images) without any row in ``exports``, oldest first."""
    with session() as sess:
        return list(
            sess.scalars(
                select(Batch.id)
                .where(
                    Batch.status == "done",
                    Batch.kind.in_(("csv", "images")),
                    ~exists().where(Export.batch_id == Batch.id),
                )
                .order_by(Batch.id)
            ).all()
        )


def validate_partial(sub: Submission) -> None:
    """A partial submission still has each ImageId at most once, all of them real, labels 0–9."""
    ids = [image_id for image_id, _ in sub.rows]
    if len(set(ids)) != len(ids):
        raise ExportError(f"batch {sub.batch_id}: duplicate ImageId in submission")
    if not set(ids) <= {i for i, _ in sub.files}:
        raise ExportError(f"batch {sub.batch_id}: ImageId outside the batch's items")
    if any(not 0 <= label <= 9 for _, label in sub.rows):
        raise ExportError(f"batch {sub.batch_id}: label outside 0–9 in submission")


def export_one(batch_id: int, day: date, trigger: str) -> Exported | None:
    """Export one batch unless some run already did; None when it was already exported.

    The claim is a lock on the batch row held across "is there an Export row?", writing the
    files and inserting the row: ``SELECT … FOR UPDATE`` on PostgreSQL, the database write
    lock (``BEGIN IMMEDIATE``) on SQLite. A concurrent run waits, then sees the committed row
    and skips, so two runs never both export a batch (``exports.batch_id`` has no unique
    constraint to rely on). If the process dies after the files are written but before the
    commit, the next run simply writes them again (atomically, same bytes).
    """
    folder = get_settings().exports_dir / day.isoformat() / f"batch-{batch_id}"
    with session(write=True) as sess:
        batch = sess.get(Batch, batch_id, with_for_update=True)
        if batch is None or batch.status != "done":
            return None
        if sess.scalar(select(Export.id).where(Export.batch_id == batch_id).limit(1)):
            return None  # another run (or a manual export) got there first
        sub = collect(batch_id)
        validate_partial(sub)
        submission = folder / "submission.csv"
        sha = atomic_write(submission, submission_lines(sub, partial=True))
        manifest = folder / "manifest.json"
        write_manifest(
            manifest,
            sub,
            sha,
            {
                "submission": submission.name,
                "trigger": trigger,
                "partial": bool(sub.missing),
                "counts": {
                    "items": len(sub.files),
                    "labelled": len(sub.rows),
                    "errors": len(sub.missing),
                },
            },
        )
        sess.add(
            Export(
                batch_id=batch_id,
                path=str(submission),
                trigger=trigger,
                rows=len(sub.rows),
                sha256=sha,
            )
        )
    return Exported(
        batch_id, submission, manifest, len(sub.rows), len(sub.files), len(sub.missing), sha
    )


def export_pending(trigger: str = "nightly") -> list[Exported]:
    """Export every finished batch not exported yet; one failing batch does not stop the rest
    (it is logged and tried again on the next run, since it still has no Export row)."""
    day = export_day()
    written: list[Exported] = []
    for batch_id in pending_batches():
        try:
            done = export_one(batch_id, day, trigger)
        except Exception:
            log.exception("export of batch %s failed; it will be retried next run", batch_id)
            continue
        if done is not None:
            log.info(
                "exported batch %s: %s rows (%s errors) to %s",
                batch_id,
                done.rows,
                done.errors,
                done.submission,
            )
            written.append(done)
    return written


def export_since_last(trigger: str = "nightly") -> list[Path]:
    """The nightly export: ``DIGITS_EXPORT_DIR/<date>/batch-<id>/{submission.csv,
    manifest.json}`` for each finished batch without an export; returns the submissions.
    Idempotent: a second run finds nothing new and writes nothing."""
    return [done.submission for done in export_pending(trigger)]
