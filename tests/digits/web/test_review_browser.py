"""The review queue in a real headless Chromium: a person reviews flagged items with the
keyboard only, and every decision lands in ``reviews`` and in the training export.

The batches are written straight into the database (tests/digits/web/flagged.py): a CSV batch
whose rows are staged in a chunk file as ingestion stages them, or an image batch whose items
are PNG scans on disk, so ``/items/{id}/input.png`` and ``model.png`` serve real pictures."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flagged import Flagged, flagged_batch
from sqlalchemy import select, update
from webserver import WebServer

from digits.core.db import session
from digits.core.schema import Item, Prediction, Review

ROOT = Path(__file__).resolve().parents[3]
XSS = "<img src=x onerror=alert(1)>.png"
REASON = "no clear digit: the mark found is a solid blob"


def review_rows(batch: Flagged) -> list[tuple[int, int | None, str]]:
    with session() as sess:
        return [
            (r.item_id, r.label, r.kind)
            for r in sess.scalars(
                select(Review).where(Review.item_id.in_(batch.item_ids)).order_by(Review.id)
            )
        ]


def wait_rows(batch: Flagged, count: int, timeout: float = 20) -> list[tuple[int, int | None, str]]:
    """The page sends decisions in the background: wait until ``count`` rows are in."""
    deadline = time.monotonic() + timeout
    while True:
        got = review_rows(batch)
        if len(got) >= count or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


SHOWING = """id => {
  const r = document.getElementById('review');
  const a = document.getElementById('input-img'), b = document.getElementById('model-img');
  return r.dataset.item === String(id) && a.complete && a.naturalWidth > 0
    && b.complete && b.naturalWidth > 0 && !document.getElementById('review-card').hidden;
}"""


def showing(page: Any, item_id: int, timeout: float = 20) -> None:
    """Wait until the page shows ``item_id`` with both pictures loaded. Polled from Python:
    ``wait_for_function`` evaluates a string, which the console's CSP (no eval) refuses."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(SHOWING, item_id):
        assert time.monotonic() < deadline, f"item {item_id} not shown: {page.inner_text('main')}"
        time.sleep(0.005)


def wait_text(page: Any, selector: str, text: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while page.text_content(selector) != text:
        assert time.monotonic() < deadline, f"{selector}: {page.text_content(selector)!r}"
        time.sleep(0.05)


@pytest.mark.slow
def test_review_20_flagged_items_with_the_keyboard_only(
    web: WebServer, page: Any, sample_rows: list[str], tmp_path: Path
) -> None:
    """Digits label and advance, Enter confirms the model, s skips, ← goes back (and shows
    the decision made), → comes back, u undoes the last decision (a row with no label) and
    returns to its item. The queue advances, the counts follow, the export carries the
    reviewed labels, and a file name with HTML in it is text."""
    batch = flagged_batch(sample_rows, 120)
    ids, truth, model = batch.item_ids, batch.truth, batch.predicted
    with session(write=True) as sess:
        sess.execute(update(Item).where(Item.id == ids[0]).values(source_ref=XSS))
        sess.execute(
            update(Prediction).where(Prediction.item_id == ids[1]).values(review_reason=REASON)
        )
    alerts: list[str] = []
    page.on("dialog", lambda d: (alerts.append(d.message), d.dismiss()))
    page.goto(f"{web.url}/review?batch={batch.batch_id}")
    showing(page, ids[0])
    assert page.text_content("#item-source") == XSS
    assert page.locator("#review-card img[src='x']").count() == 0
    assert page.text_content("#count-flagged") == "120"
    assert page.text_content("#item-label") == str(model[0])
    assert page.is_visible("#key-legend")
    assert not page.is_visible("#item-reason")  # flagged for low confidence: no finder doubt

    expected: list[tuple[int, int | None, str]] = []
    for k in range(20):
        item = ids[k]
        if k == 1:
            assert page.text_content("#item-reason") == f"why: {REASON}"
        if k == 2:
            page.keyboard.press("s")  # skipped: no row, still waiting
            showing(page, ids[k + 1])
            continue
        if k == 5:
            page.keyboard.press("ArrowLeft")
            showing(page, ids[4])
            assert page.text_content("#item-decided") == f"you said {expected[-1][1]}"
            page.keyboard.press("ArrowRight")
            showing(page, item)
            assert not page.is_visible("#item-decided")
        if k == 8:
            page.keyboard.press(str(truth[k]))
            showing(page, ids[k + 1])
            page.keyboard.press("u")
            showing(page, item)  # back to the undone item
            assert not page.is_visible("#item-decided")
            expected += [(item, truth[k], "flagged"), (item, None, "flagged")]
        if k % 4 == 1:
            page.keyboard.press("Enter")
            expected.append((item, model[k], "flagged"))
        else:
            page.keyboard.press(str(truth[k]))
            expected.append((item, truth[k], "flagged"))
        showing(page, ids[k + 1])

    assert wait_rows(batch, len(expected)) == expected
    wait_text(page, "#count-flagged", "101")
    assert page.text_content("#session-decided") == "19"
    assert alerts == [], "a script ran from an item's name"
    with web.client() as client:
        waiting = client.get("/review/queue.json", params={"batch": batch.batch_id}).json()
    assert waiting["counts"]["flagged"] == 101
    assert [i["item_id"] for i in waiting["items"][:2]] == [ids[2], ids[20]]

    from digits.app.reviewed import export_reviewed
    from digits.core.csv_input import read_labelled

    out = export_reviewed(tmp_path / "reviewed.csv")
    pixels, labels = read_labelled(out.path)
    decided = [k for k in range(20) if k != 2]
    assert labels.tolist() == [model[k] if k % 4 == 1 else truth[k] for k in decided]
    assert np.array_equal(pixels, batch.pixels[decided])


@pytest.mark.slow
def test_accept_all_above_asks_first_and_leaves_the_rest(
    web: WebServer, page: Any, sample_rows: list[str]
) -> None:
    """The bulk form asks with confirm(); dismissed, nothing is written; accepted, the
    flagged items at or above the threshold get a ``bulk`` row and the queue reloads."""
    batch = flagged_batch(sample_rows, 20)
    page.goto(f"{web.url}/review?batch={batch.batch_id}")
    showing(page, batch.item_ids[0])
    page.fill("#accept-form input[name=threshold]", "0.6")
    questions: list[str] = []
    page.once("dialog", lambda d: (questions.append(d.message), d.dismiss()))
    page.click("#accept-form button[type=submit]")
    page.wait_for_timeout(300)
    assert questions and f"batch {batch.batch_id}" in questions[0]
    assert review_rows(batch) == []
    page.once("dialog", lambda d: d.accept())
    page.click("#accept-form button[type=submit]")
    page.wait_for_selector("#review-status:has-text('accepted')")
    above = [i for p, i in enumerate(batch.item_ids, start=1) if 0.40 + 0.45 * p / 21 >= 0.6]
    got = wait_rows(batch, len(above))
    assert sorted(got) == sorted(
        (i, batch.predicted[batch.item_ids.index(i)], "bulk") for i in above
    )
    wait_text(page, "#count-flagged", str(20 - len(above)))
    showing(page, batch.item_ids[0])  # the least confident item is still first


@pytest.mark.slow
def test_reviewing_100_items_with_the_keyboard_takes(
    web: WebServer, page: Any, sample_rows: list[str], backend: str, tmp_path: Path
) -> None:
    """The figure for the note: 100 scans reviewed in the browser with the keyboard, each
    key pressed only once the next item and both of its pictures are on screen. Also the
    screenshot of the queue for the docs (embedded deployment)."""
    folder = tmp_path / "scans"
    folder.mkdir()
    batch = flagged_batch(sample_rows, 130, kind="images", folder=folder)
    ids = batch.item_ids
    with session(write=True) as sess:  # the screenshot's item shows the finder's doubt
        sess.execute(
            update(Prediction)
            .where(Prediction.item_id == ids[2])
            .values(review_reason="several digit-sized marks on the page")
        )
    page.goto(f"{web.url}/review?batch={batch.batch_id}")
    showing(page, ids[0])
    if backend == "embedded":
        page.fill("#reviewer-name", "ana")
        page.press("#reviewer-name", "Enter")
        page.keyboard.press(str(batch.truth[0]))
        showing(page, ids[1])
        page.keyboard.press("Enter")
        showing(page, ids[2])
        (ROOT / "docs" / "img").mkdir(exist_ok=True)
        page.locator("main").screenshot(path=str(ROOT / "docs" / "img" / "review.png"))
        page.keyboard.press("u")
        page.keyboard.press("u")
        showing(page, ids[0])
        wait_rows(batch, 4)
    start = time.perf_counter()
    waits = []
    for k in range(100):
        pressed = time.perf_counter()
        if k % 3 == 0:
            page.keyboard.press(str(batch.truth[k]))
        else:
            page.keyboard.press("Enter")
        showing(page, ids[k + 1])
        waits.append(time.perf_counter() - pressed)
    shown = time.perf_counter() - start
    waits.sort()
    base = 4 if backend == "embedded" else 0
    rows = wait_rows(batch, base + 100, timeout=60)
    saved = time.perf_counter() - start
    assert len(rows) == base + 100
    assert len({r[0] for r in rows[base:]}) == 100
    print(
        f"\n[{backend}] 100 items reviewed with the keyboard in the browser: {shown:.2f} s "
        f"({1000 * shown / 100:.0f} ms per item; key to next item and its pictures on screen: "
        f"p50 {1000 * waits[49]:.0f} ms, p95 {1000 * waits[94]:.0f} ms); "
        f"all 100 decisions saved after {saved:.2f} s"
    )
