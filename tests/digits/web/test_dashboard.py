"""The dashboard: batches with live progress (refreshed without a reload), queue depth,
workers, the production model, the last exports, the review queue and the audit estimate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from scored_batch import make_batch
from webserver import WebServer

from digits.core import reviews
from scheduler.export import export_batch

ROOT = Path(__file__).resolve().parents[3]


def test_the_dashboard_shows_batches_reviews_estimate_and_exports(
    web: WebServer, tmp_path: Path
) -> None:
    batch_id, _ = make_batch(500)
    audit = reviews.review_queue(batch_id, share=0.02, limit=50, kind="audit")
    for item in audit[:5]:
        reviews.record(item.item_id, item.label, "ana", share=0.02)
    export_batch(batch_id, tmp_path / "sub.csv")
    with web.client() as client:
        page = client.get("/").text
        data = client.get("/api/dashboard").json()
    assert f'href="/batches/{batch_id}"' in page
    assert data["batches"][0]["batch_id"] == batch_id
    assert data["review"] == reviews.queue_counts(share=0.02)
    assert data["estimate"]["reviewed"] == 5 and data["estimate"]["correct"] == 5
    assert "100.0 % (95 % CI 56.6–100.0 %, 5 audited)" in page
    assert data["model"]["version"] == 4 and "bundled default" in data["model"]["why"]
    assert data["exports"][0]["batch_id"] == batch_id and "sub.csv" in page
    assert data["workers"] == [] and data["queue"] == {}


@pytest.mark.slow
def test_the_dashboard_refreshes_without_a_reload(web: WebServer, page: Any) -> None:
    """A batch created after the page loaded appears in its table within a few seconds, while
    the page itself is never reloaded (a marker set on window survives)."""
    first, _ = make_batch(200)
    page.goto(web.url + "/")
    page.evaluate("window.loadedOnce = true")
    assert page.locator(f'#batches tr[data-batch="{first}"]').count() == 1
    second, _ = make_batch(300)
    page.wait_for_selector(f'#batches tr[data-batch="{second}"]', timeout=15_000)
    assert page.evaluate("window.loadedOnce") is True
    assert page.locator(f'#batches tr[data-batch="{second}"] .items').inner_text() == "300"
    page.screenshot(path=str(ROOT / "docs" / "img" / "dashboard.png"), full_page=True)
