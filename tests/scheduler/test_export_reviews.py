"""Corrections reach the outputs: `digits results` and the export write the final label (a
person's current decision, else the model's), the manifest counts overrides, and the nightly
export writes a batch again, as a new revision, only when reviews changed its labels."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from scored_batch import make_batch
from sqlalchemy import select

from digits.core import queries, reviews
from digits.core.db import session
from digits.core.schema import Export
from scheduler.export import export_batch, export_pending


def submission(path: Path) -> dict[int, int]:
    with path.open() as fh:
        return {int(r["ImageId"]): int(r["Label"]) for r in csv.DictReader(fh)}


def test_results_carry_the_reviewed_and_the_final_label(backend: str) -> None:
    batch_id, ids = make_batch(10)
    reviews.record(ids[4], 2, "ana", share=0.0)  # item 5 was predicted 4
    reviews.record(ids[6], 3, "ana", share=0.0)
    reviews.undo_last("ana")  # item 7 back to the model's label
    rows = {r["image_id"]: r for r in queries.results(batch_id)}
    assert (rows[5]["label"], rows[5]["reviewed_label"], rows[5]["final_label"]) == (4, 2, 2)
    assert (rows[7]["label"], rows[7]["reviewed_label"], rows[7]["final_label"]) == (6, None, 6)
    assert rows[1]["reviewed_label"] is None and rows[1]["final_label"] == 0


def test_the_export_writes_final_labels_and_the_manifest_counts_overrides(
    backend: str, tmp_path: Path
) -> None:
    batch_id, ids = make_batch(20)
    out = tmp_path / "submission.csv"
    export_batch(batch_id, out, manifest=True)
    before = submission(out)
    reviews.record(ids[0], 9, "ana", share=0.0)  # override
    reviews.record(ids[1], 1, "ana", share=0.0)  # confirmation (predicted 1)
    export_batch(batch_id, out, manifest=True)
    after = submission(out)
    assert after == {**before, 1: 9}
    manifest = json.loads(out.with_name("submission.manifest.json").read_text())
    assert manifest["reviews"] == {"reviewed": 2, "overrides": 1}
    assert manifest["revision"] == 2
    assert manifest["estimated_accuracy"]["reviewed"] == 0


def test_the_nightly_export_writes_a_new_revision_only_when_reviews_change_labels(
    backend: str,
) -> None:
    batch_id, ids = make_batch(20)
    first = export_pending()
    assert [(e.batch_id, e.submission.parent.name) for e in first] == [
        (batch_id, f"batch-{batch_id}")
    ]
    assert export_pending() == []  # nothing changed: nothing written
    reviews.record(ids[1], 1, "ana", share=0.0)  # a confirmation changes no label
    assert export_pending() == []
    reviews.record(ids[2], 7, "ana", share=0.0)  # predicted 2: a correction
    second = export_pending()
    assert [e.submission.parent.name for e in second] == [f"batch-{batch_id}-r2"]
    assert submission(second[0].submission)[3] == 7
    manifest = json.loads(second[0].manifest.read_text())
    assert manifest["revision"] == 2 and manifest["reviews"]["overrides"] == 1
    assert export_pending() == []
    with session() as sess:
        revisions = sess.scalars(
            select(Export.revision).where(Export.batch_id == batch_id).order_by(Export.id)
        ).all()
    assert revisions == [1, 2]
