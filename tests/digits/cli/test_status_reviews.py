"""`digits status` says how many items wait for review and the estimated accuracy of the
unflagged predictions, from the reviewed audit sample (issue 22 item 5)."""

from __future__ import annotations

import json
from pathlib import Path

from scored_batch import make_batch
from typer.testing import CliRunner

from digits.cli import app
from digits.core import reviews
from digits.core.db import upgrade

runner = CliRunner()


def test_status_gives_the_review_queue_and_the_audit_estimate(home: Path) -> None:
    upgrade()
    batch_id, _ = make_batch(2000)
    before = runner.invoke(app, ["status"])
    assert before.exit_code == 0, before.output
    assert "estimated accuracy of unflagged predictions: no audited items yet" in before.stdout
    audit = reviews.review_queue(batch_id, share=0.02, limit=100, kind="audit")
    for n, item in enumerate(audit[:20]):
        reviews.record(item.item_id, item.label if n else (item.label + 1) % 10, "ana", 0.02)
    shown = runner.invoke(app, ["status"])
    expected = reviews.estimate(batch_id)
    assert (expected.reviewed, expected.correct) == (20, 19)
    assert f"estimated accuracy of unflagged predictions: {expected.text()}" in shown.stdout
    assert "95.0 % (95 % CI" in shown.stdout
    assert f"review: 400 flagged and {len(audit) - 20} audit items waiting" in shown.stdout
    data = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert data["estimated_accuracy"]["reviewed"] == 20
    assert data["estimated_accuracy"]["low"] == expected.low
    assert data["review"] == {"flagged": 400, "audit": len(audit) - 20}
