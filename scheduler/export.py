"""Kaggle submissions: ``ImageId,Label`` in source row order, validated, written atomically.

The same batch and model version always give byte-identical files (fixed order, fixed line
endings, no timestamps inside), so a re-run can be compared with ``cmp``.

Every written submission is recorded in ``exports`` (trigger ``manual`` or ``nightly``). The
nightly export (:func:`export_since_last`) writes each finished batch that has no such row yet,
so it is idempotent and a batch exported by hand is not exported again.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session, aliased

from digits.core.db import session
from digits.core.reviews import current_ids, estimate
from digits.core.schema import Batch, Export, Item, ItemError, Prediction, Review
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
    # ImageId -> (confidence, needs_review) of each labelled item, for ``--with-files``
    scores: dict[int, tuple[float, bool]] = field(default_factory=dict)
    reviewed: int = 0  # labels that come from a person's decision (digits.core.reviews)
    overrides: int = 0  # of those, labels that differ from the model's


def collect(batch_id: int, model_version: int | None = None) -> Submission:
    """Read a batch's final labels: a person's current decision where there is one (reviews
    never edit predictions), else the model's; duplicates take the label of the item they
    repeat."""
    original = aliased(Item)
    decision = aliased(Review)
    newest = current_ids().subquery()
    with session() as sess:
        batch = sess.get(Batch, batch_id)
        if batch is None:
            raise ExportError(f"batch {batch_id} does not exist")
        if batch.status != "done":
            raise ExportError(f"batch {batch_id} is {batch.status}, not done: nothing exported")
        version = model_version or batch.model_version
        rows = sess.execute(
            select(
                Item.position,
                Item.source_ref,
                Prediction.label,
                ItemError.reason,
                Prediction.confidence,
                Prediction.needs_review,
                decision.label,
            )
            .outerjoin(original, original.id == Item.duplicate_of)
            .outerjoin(
                Prediction,
                (Prediction.item_id == func.coalesce(original.id, Item.id))
                & (Prediction.model_version == version),
            )
            .outerjoin(ItemError, ItemError.item_id == Item.id)
            .outerjoin(newest, newest.c.item_id == func.coalesce(original.id, Item.id))
            .outerjoin(decision, decision.id == newest.c.review_id)
            .where(Item.batch_id == batch_id)
            .order_by(Item.position)
        ).all()
    out: list[tuple[int, int]] = []
    files: list[tuple[int, str]] = []
    missing: list[tuple[int, str]] = []
    scores: dict[int, tuple[float, bool]] = {}
    reviewed = overrides = 0
    for position, ref, label, reason, confidence, review, decided in rows:
        files.append((position, ref))
        if label is None:
            missing.append((position, reason or f"no prediction by model version {version}"))
            continue
        if decided is not None:
            reviewed += 1
            overrides += int(decided != label)
            label = decided
        out.append((position, int(label)))
        scores[position] = (float(confidence), bool(review))
    return Submission(batch_id, version, out, files, missing, scores, reviewed, overrides)


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
    *,
    with_files: bool = False,
    force: bool = False,
) -> tuple[Path, int, str]:
    """Write the batch's submission to ``out``; returns (path, rows, sha256).

    ``out`` may already hold this batch's export (rewritten, byte-identical unless the model
    changed); it is not overwritten with another batch's unless ``force`` (see
    :func:`check_overwrite`). ``with_files`` also writes :func:`files_path` (``<out>.files.csv``).
    """
    sub = collect(batch_id, model_version)
    if not force:
        check_overwrite(out, batch_id)
    sha = atomic_write(out, submission_lines(sub, partial))
    with session() as sess:
        revision = next_revision(sess, batch_id, sha)
    if manifest:
        write_manifest(out.with_name(out.stem + ".manifest.json"), sub, sha, {"revision": revision})
    if with_files:
        atomic_write(files_path(out), files_lines(sub))
    with session(write=True) as sess:  # `digits status` shows it; the nightly run skips it
        sess.add(
            Export(
                batch_id=batch_id,
                path=str(out.resolve()),
                trigger="manual",
                rows=len(sub.rows),
                sha256=sha,
                revision=revision,
            )
        )
    return out, len(sub.rows), sha


def held_batch(path: Path) -> int | None:
    """Which batch's export the file at ``path`` holds: the ``exports`` row whose sha256 is the
    file's (the last one recorded for this path first; a copy moved elsewhere is still known),
    else a manifest beside it (``<stem>.manifest.json`` or the nightly ``manifest.json``)
    naming the file's sha256; None when nothing says."""
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    with session() as sess:
        held = sess.scalar(
            select(Export.batch_id)
            .where(Export.sha256 == sha)
            .order_by((Export.path == str(path.resolve())).desc(), Export.id.desc())
            .limit(1)
        )
    if held is not None:
        return int(held)
    for manifest in (path.with_name(path.stem + ".manifest.json"), path.with_name("manifest.json")):
        try:
            info = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (
            isinstance(info, dict)
            and info.get("submission_sha256") == sha
            and isinstance(info.get("batch_id"), int)
        ):
            return int(info["batch_id"])
    return None


def check_overwrite(out: Path, batch_id: int) -> None:
    """Refuse to replace a file that holds another batch's export, or that no export record or
    manifest describes (someone's own file): re-exporting the same batch is fine."""
    if not out.exists():
        return
    if out.is_dir():
        raise ExportError(f"{out} is a folder: give a file name to --out")
    held = held_batch(out)
    if held == batch_id:
        return
    what = (
        "exists and is not an export digits knows of"
        if held is None
        else f"holds the export of batch {held}"
    )
    raise ExportError(f"{out} {what}: pass --force to overwrite it with batch {batch_id}")


def files_path(out: Path) -> Path:
    """The companion of a submission written with ``--with-files``: ``submission.files.csv``."""
    return out.with_name(out.stem + ".files.csv")


FILES_COLUMNS = ("ImageId", "file", "label", "confidence", "needs_review")


def files_lines(sub: Submission) -> Iterator[str]:
    """``ImageId,file,label,confidence,needs_review`` for every item in ImageId order; an item
    without a label (its reason is in the manifest and `digits results`) has the last three
    empty. The file is a scan's name, or ``file.csv:row`` for a CSV batch."""
    labels = dict(sub.rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FILES_COLUMNS)
    for image_id, ref in sub.files:
        label = labels.get(image_id)
        if label is None:
            writer.writerow((image_id, ref, "", "", ""))
        else:
            confidence, review = sub.scores[image_id]
            writer.writerow((image_id, ref, label, repr(confidence), review))
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()


def _sorted_keys(value: Any) -> Any:
    """What ``json.dumps(sort_keys=True)`` would order, applied beforehand."""
    if isinstance(value, dict):
        return {k: _sorted_keys(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted_keys(v) for v in value]
    return value


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
            # labels a person decided, and how many of those differ from the model's
            "reviews": {"reviewed": sub.reviewed, "overrides": sub.overrides},
            # accuracy of the unflagged predictions, from the reviewed audit sample
            "estimated_accuracy": estimate(sub.batch_id).as_dict(),
        }
    info = _sorted_keys({**info, **(extra or {})})
    if batch.kind == "images":
        # ImageId order: sort_keys would put "10" before "2"
        info["files"] = {str(i): ref for i, ref in sorted(sub.files)}
    info = dict(sorted(info.items()))
    atomic_write(path, [json.dumps(info, indent=2) + "\n"])


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


def next_revision(sess: Session, batch_id: int, sha: str) -> int:
    """The revision a submission with this sha256 is: the last one's when the labels are the
    same, one more when they changed (reviews), 1 for a batch's first export."""
    last = sess.execute(
        select(Export.revision, Export.sha256)
        .where(Export.batch_id == batch_id)
        .order_by(Export.id.desc())
        .limit(1)
    ).first()
    if last is None:
        return 1
    return int(last.revision) if last.sha256 == sha else int(last.revision) + 1


def _reviewed_since_export() -> Any:
    """SQL: a decision on one of the batch's items was made after its newest export."""
    newest_export = (
        select(func.max(Export.created_at)).where(Export.batch_id == Batch.id).scalar_subquery()
    )
    return (
        exists()
        .where(Review.item_id == Item.id, Item.batch_id == Batch.id)
        .where(Review.created_at > newest_export)
    )


def pending_batches() -> list[int]:
    """Finished batches (CSV and images) never exported, or whose reviews changed after their
    newest export, oldest first."""
    with session() as sess:
        return list(
            sess.scalars(
                select(Batch.id)
                .where(
                    Batch.status == "done",
                    Batch.kind.in_(("csv", "images")),
                    ~exists().where(Export.batch_id == Batch.id) | _reviewed_since_export(),
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
    """Export one batch unless some run already did; None when it was already exported and
    no review changed its labels since (then it is written again as the next revision, in
    ``batch-<id>-r<revision>``; reviews that change no label write nothing).

    The claim is a lock on the batch row held across "is there an Export row?", writing the
    files and inserting the row: ``SELECT … FOR UPDATE`` on PostgreSQL, the database write
    lock (``BEGIN IMMEDIATE``) on SQLite. A concurrent run waits, then sees the committed row
    and skips, so two runs never both export a batch (``exports.batch_id`` has no unique
    constraint to rely on). If the process dies after the files are written but before the
    commit, the next run simply writes them again (atomically, same bytes).
    """
    with session(write=True) as sess:
        batch = sess.get(Batch, batch_id, with_for_update=True)
        if batch is None or batch.status != "done":
            return None
        exported = sess.scalar(select(Export.id).where(Export.batch_id == batch_id).limit(1))
        if exported and not sess.scalar(
            select(_reviewed_since_export()).where(Batch.id == batch_id)
        ):
            return None  # another run (or a manual export) got there first
        sub = collect(batch_id)
        validate_partial(sub)
        lines = submission_lines(sub, partial=True)
        sha = hashlib.sha256("".join(lines).encode()).hexdigest()
        last_sha = sess.scalar(
            select(Export.sha256)
            .where(Export.batch_id == batch_id)
            .order_by(Export.id.desc())
            .limit(1)
        )
        if exported and last_sha == sha:
            return None  # reviews since, but the same labels: nothing new to write
        revision = next_revision(sess, batch_id, sha)
        name = f"batch-{batch_id}" if revision == 1 else f"batch-{batch_id}-r{revision}"
        folder = get_settings().exports_dir / day.isoformat() / name
        submission = folder / "submission.csv"
        sha = atomic_write(submission, lines)
        manifest = folder / "manifest.json"
        write_manifest(
            manifest,
            sub,
            sha,
            {
                "submission": submission.name,
                "trigger": trigger,
                "revision": revision,
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
                revision=revision,
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
