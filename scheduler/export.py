"""Kaggle submissions: ``ImageId,Label`` in source row order, validated, written atomically.

The same batch and model version always give byte-identical files (fixed order, fixed line
endings, no timestamps inside), so a re-run can be compared with ``cmp``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import aliased

from digits.db import session
from digits.schema import Batch, Item, ItemError, Prediction


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
            .outerjoin(Prediction, (Prediction.item_id == func.coalesce(original.id, Item.id))
                       & (Prediction.model_version == version))
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


def export_batch(batch_id: int, out: Path, model_version: int | None = None,
                 partial: bool = False, manifest: bool = False) -> tuple[Path, int, str]:
    """Write the batch's submission to ``out``; returns (path, rows, sha256)."""
    sub = collect(batch_id, model_version)
    sha = atomic_write(out, submission_lines(sub, partial))
    if manifest:
        write_manifest(out.with_name(out.stem + ".manifest.json"), sub, sha)
    return out, len(sub.rows), sha


def write_manifest(path: Path, sub: Submission, sha: str) -> None:
    with session() as sess:
        batch = sess.get_one(Batch, sub.batch_id)
        info = {
            "batch_id": batch.id, "source": batch.source, "kind": batch.kind,
            "source_sha256": batch.source_sha256, "model_version": sub.model_version,
            "model_sha256": batch.model_sha256, "rows": len(sub.rows),
            "errors": [{"image_id": i, "reason": r} for i, r in sub.missing],
            "submission_sha256": sha,
        }
    if batch.kind == "images":
        info["files"] = {str(i): ref for i, ref in sub.files}
    atomic_write(path, [json.dumps(info, indent=2, sort_keys=True) + "\n"])


def export_since_last() -> list[Path]:
    """Nightly export (filled in by the operations work)."""
    return []
