"""The batch page, the item page and the item pictures (served by item id only), over HTTP on
both deployments and in a real browser; the shaping behind them as pure functions."""

from __future__ import annotations

import csv
import io
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fill import csv_batch, image_batch, rescore, sample, scans
from PIL import Image
from sqlalchemy import update
from webserver import WebServer

from digits.core import reviews
from digits.core.db import session
from digits.core.schema import Item
from digits.web import data

ROOT = Path(__file__).resolve().parents[3]
XSS = "<img src=x onerror=alert(1)>.png"
XSS_ESCAPED = "&lt;img src=x onerror=alert(1)&gt;.png"


# ---------------------------------------------------------------- pure shaping
@pytest.mark.parametrize(
    ("params", "expected", "problems"),
    [
        ({}, data.ItemFilter(), 0),
        ({"label": "3", "below": "0.9"}, data.ItemFilter(label=3, below=0.9), 0),
        ({"needs_review": "1", "errors": "on"}, data.ItemFilter(needs_review=True, errors=True), 0),
        ({"label": "", "below": ""}, data.ItemFilter(), 0),  # an empty form field: no filter
        ({"label": "12"}, data.ItemFilter(), 1),
        ({"label": "<b>"}, data.ItemFilter(), 1),
        ({"below": "1.5"}, data.ItemFilter(), 1),
        ({"below": "nan"}, data.ItemFilter(), 1),
        ({"needs_review": "0"}, data.ItemFilter(), 0),
    ],
)
def test_filters_are_read_leniently_from_the_query_string(
    params: dict[str, str], expected: data.ItemFilter, problems: int
) -> None:
    """A page shows what it ignored instead of failing on a hand-edited link."""
    parsed, why = data.parse_filter(params)
    assert parsed == expected
    assert len(why) == problems


def test_a_filter_round_trips_through_its_link() -> None:
    f = data.ItemFilter(label=7, below=0.85, needs_review=True)
    query = f.query(offset=48)
    assert query == "?label=7&below=0.85&needs_review=1&offset=48"
    params = dict(p.split("=") for p in query[1:].split("&"))
    assert data.parse_filter(params)[0] == f
    assert data.ItemFilter().query(offset=0) == ""


@pytest.mark.parametrize(
    ("total", "limit", "offset", "first", "last", "previous", "next_"),
    [
        (100, 48, 0, 1, 48, None, 48),
        (100, 48, 48, 49, 96, 0, 96),
        (100, 48, 96, 97, 100, 48, None),
        (0, 48, 0, 0, 0, None, None),
    ],
)
def test_the_pager_counts_pages(
    total: int,
    limit: int,
    offset: int,
    first: int,
    last: int,
    previous: int | None,
    next_: int | None,
) -> None:
    pager = data.Pager(total, limit, offset)
    assert (pager.first, pager.last, pager.previous, pager.next) == (first, last, previous, next_)


def test_bars_fill_the_chart_and_a_thin_tail_stays_visible() -> None:
    bars = data.column_bars([0, 5, 10], ["a", "b", "c"], ["", "", ""], width=300, height=100)
    assert [b.height for b in bars] == [0, 50, 100]
    assert [b.y for b in bars] == [100, 50, 0]
    assert bars[1].x == pytest.approx(110) and bars[1].width == pytest.approx(80)
    log = data.column_bars([1, 10_000], ["a", "b"], ["", ""], height=100, log=True)
    assert 1 <= log[0].height < 10 and log[1].height == 100


def test_histogram_and_confusion_shaping() -> None:
    assert data.bins_from({0: 2, 19: 3, 20: 4}, bins=20) == [2] + [0] * 18 + [7]
    matrix = data.confusion_from([(3, 3, 5), (3, 8, 2)])
    assert matrix[3][3] == 5 and matrix[3][8] == 2 and sum(map(sum, matrix)) == 7
    assert data.top3([0.1, 0.6, 0.0, 0.3]) == [(1, 0.6), (3, 0.3), (0, 0.1)]
    assert [b.width for b in data.probability_bars([0.5, 1.0], width=200)] == [100, 200]


# ---------------------------------------------------------------- HTTP, both deployments
def tiles(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<li class="tile[^"]*" data-item="(\d+)"', html)]


def test_batch_page_counts_charts_filters_grid_and_downloads(web: WebServer, home: Path) -> None:
    """60 real sample rows, one failed, every ninth predicted wrong: the page's counts,
    charts, filters and pages agree with the data, and the downloads carry the reviews. A
    hostile file name is text; an unknown batch is a 404 page."""
    errors = {5: "row 6: expected 785 fields, got 784"}
    filled = csv_batch(60, wrong_every=9, errors=errors)
    b = filled.batch_id
    first = filled.item_ids[0]
    reviews.record(first, 9, "ana", share=0.0)  # a correction reaches final_label
    rows = {r["item_id"]: r for r in data.iter_filtered(data.ItemFilter(), b)}
    with web.client() as client:
        page = client.get(f"/batches/{b}")
        assert page.status_code == 200, page.text
        html = page.text
        assert re.search(r'id="count-items">60<', html)
        assert re.search(r'id="count-predicted">59<', html)
        assert re.search(r'id="count-errors">1<', html)
        flagged = sum(1 for r in rows.values() if r["needs_review"])
        assert re.search(rf'id="count-flagged">{flagged}<', html)
        correct = sum(1 for r in rows.values() if r["label"] == r["true_label"])
        assert f"{100 * correct / 59:.2f} %" in html and "accuracy on 59 labelled items" in html
        label_chart = html.split('id="label-chart"')[1].split("</svg>")[0]
        assert label_chart.count('<rect class="bar"') == 10
        confidence_chart = html.split('id="confidence-chart"')[1].split("</svg>")[0]
        assert confidence_chart.count("<rect class=") == data.CONFIDENCE_BINS
        assert 'class="threshold"' in confidence_chart
        assert 'id="confusion"' in html
        assert len(tiles(html)) == data.PAGE_SIZE and "1–48 of 60 items" in html
        assert f'href="/batches/{b}?offset=48" rel="next"' in html
        assert len(tiles(client.get(f"/batches/{b}?offset=48").text)) == 12
        assert f'<img src="/items/{first}/input.png"' in html
        for query, want in [
            ("label=3", [i for i, r in rows.items() if r["label"] == 3]),
            ("below=0.6", [i for i, r in rows.items() if (r["confidence"] or 1) < 0.6]),
            ("needs_review=1", [i for i, r in rows.items() if r["needs_review"]]),
            ("errors=1", [filled.item_ids[4]]),
            (
                "label=3&needs_review=1",
                [i for i, r in rows.items() if r["label"] == 3 and r["needs_review"]],
            ),
        ]:
            shown = client.get(f"/batches/{b}?{query}&limit=96").text
            assert tiles(shown) == sorted(want), query
        assert errors[5] in client.get(f"/batches/{b}?errors=1").text
        ignored = client.get(f"/batches/{b}?label=12")
        assert ignored.status_code == 200 and "label must be a digit" in ignored.text

        results = client.get(f"/batches/{b}/results.csv")
        assert results.status_code == 200
        assert "attachment" in results.headers["content-disposition"]
        table = list(csv.DictReader(io.StringIO(results.text)))
        assert len(table) == 60 and table[0]["reviewed_label"] == "9"
        assert table[0]["final_label"] == "9" and table[1]["final_label"] == table[1]["label"]
        filtered = client.get(f"/batches/{b}/results.json?label=3").json()
        assert [r["item_id"] for r in filtered] == sorted(
            i for i, r in rows.items() if r["label"] == 3
        )
        refused = client.get(f"/batches/{b}/submission.csv")
        assert refused.status_code == 409 and "have no label" in refused.text
        partial = client.get(f"/batches/{b}/submission.csv?partial=1")
        assert partial.status_code == 200
        assert (
            partial.text.splitlines()[0] == "ImageId,Label" and len(partial.text.splitlines()) == 60
        )

        complete = csv_batch(12, errors={}).batch_id
        submission = client.get(f"/batches/{complete}/submission.csv")
        assert submission.status_code == 200 and len(submission.text.splitlines()) == 13

        pixels, labels = sample(1)
        hostile = image_batch(home / "inbox" / "xss", {XSS: scans(pixels)[0]}, labels)
        html = client.get(f"/batches/{hostile.batch_id}").text
        assert XSS_ESCAPED in html and "<img src=x" not in html

        missing = client.get("/batches/99999", headers={"accept": "text/html"})
        assert missing.status_code == 404 and "batch 99999 does not exist" in missing.text
        assert client.get("/batches/99999/results.csv").status_code == 404
        assert client.get("/batches/99999/submission.csv").status_code == 404


def png(content: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(content))
    img.load()
    return img


def check_pictures_are_served_by_id_only(web: WebServer, home: Path) -> None:
    """A missing file, a symbolic link (even to a readable image), a file outside the batch's
    folder and a path in the URL all give a placeholder or a 404: never the target's bytes,
    never a traceback."""
    pixels, labels = sample(4)
    good = scans(pixels)
    outside = home.parent / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(good[3])
    folder = home / "inbox" / "links"
    filled = image_batch(
        folder,
        {"ok.png": good[0], "gone.png": None, "link.png": None, "junk.png": b"not an image"},
        labels,
    )
    os.symlink(outside / "secret.png", folder / "link.png")
    escaped = image_batch(outside / "elsewhere", {"x.png": good[1]}, labels[:1])
    with web.client() as client:
        ok, gone, link, junk = filled.item_ids
        assert "x-digits-placeholder" not in client.get(f"/items/{ok}/input.png").headers
        for item_id in (gone, link):
            for kind in ("input", "model"):
                answer = client.get(f"/items/{item_id}/{kind}.png")
                assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
                assert answer.headers["x-digits-placeholder"] == "file missing or refused"
                assert answer.headers["cache-control"] == "no-store"
                assert png(answer.content).size == (56, 56)
        assert client.get(f"/items/{junk}/model.png").headers["x-digits-placeholder"]
        # an item whose recorded path lies outside its batch's folder (outside/elsewhere)
        # and the inbox
        with_path_moved = escaped.item_ids[0]
        with session(write=True) as sess:
            sess.execute(
                update(Item)
                .where(Item.id == with_path_moved)
                .values(path=str(outside / "secret.png"))
            )
        assert client.get(f"/items/{with_path_moved}/input.png").headers["x-digits-placeholder"]
        unknown = client.get("/items/99999/input.png")
        assert unknown.status_code == 404 and unknown.headers["content-type"] == "image/png"
        for path in (
            "/items/..%2f..%2fetc%2fpasswd/input.png",
            "/items/%2e%2e/input.png",
            f"/items/{ok}/..%2f..%2f..%2fetc%2fpasswd",
            "/items/-1/input.png",
            f"/items/{ok}/input.png/../../../../etc/passwd",
        ):
            answer = client.get(path)
            assert answer.status_code in (404, 422), path
            assert b"root:" not in answer.content and "Traceback" not in answer.text
    assert "Traceback" not in web.tail()


def test_item_page_pictures_predictions_and_reviews(web: WebServer, home: Path) -> None:
    """An image item: its file and its 28×28 by id, every version's prediction, every
    decision; a CSV item's pictures are its staged row; pictures are served by id only
    (links and paths refused); a hostile file name is text."""
    pixels, labels = sample(3)
    folder = home / "inbox" / "links"
    filled = image_batch(
        folder, dict(zip(["a.png", "b.png", "c.png"], scans(pixels), strict=True)), labels
    )
    item = filled.item_ids[0]
    rescore(item, 2, labels[0], 0.99)
    reviews.record(item, (labels[0] + 1) % 10, "ana", share=0.0)
    reviews.record(item, labels[0], "bo", share=0.0)  # supersedes ana's
    staged = csv_batch(3)
    with web.client() as client:
        page = client.get(f"/items/{item}")
        assert page.status_code == 200, page.text
        html = page.text
        assert "a.png" in html and f"{1:064x}" in html
        assert f'href="/batches/{filled.batch_id}"' in html
        predictions = html.split('id="predictions"')[1].split("</table>")[0]
        assert "v1 (batch)" in predictions and "v2" in predictions
        history = html.split('id="reviews"')[1].split("</table>")[0]
        assert "ana" in history and "bo" in history and 'class="current"' in history
        chart = html.split('id="probability-chart"')[1].split("</svg>")[0]
        assert chart.count('<rect class="bar') == 10
        assert f'src="/items/{item}/input.png"' in html and f'src="/items/{item}/model.png"' in html
        assert f"/review?batch={filled.batch_id}&amp;item={item}" in html

        original = client.get(f"/items/{item}/input.png")
        assert original.status_code == 200 and original.headers["content-type"] == "image/png"
        assert "max-age" in original.headers["cache-control"]
        assert png(original.content).size == (160, 160)
        seen = client.get(f"/items/{item}/model.png")
        assert png(seen.content).size == (28, 28) and "x-digits-placeholder" not in seen.headers

        row = staged.item_ids[1]
        for kind in ("input", "model"):
            drawn = np.asarray(png(client.get(f"/items/{row}/{kind}.png").content))
            assert (drawn.reshape(784) == pixels[1]).all()
        assert "sample.csv:3" in client.get(f"/items/{row}").text

        missing = client.get("/items/99999", headers={"accept": "text/html"})
        assert missing.status_code == 404 and "item 99999 does not exist" in missing.text

    check_pictures_are_served_by_id_only(web, home)
    pixels, labels = sample(1)
    hostile = image_batch(home / "inbox" / "xss", {XSS: scans(pixels)[0]}, labels)
    with web.client() as client:
        html = client.get(f"/items/{hostile.item_ids[0]}").text
        assert XSS_ESCAPED in html and "<img src=x" not in html
        assert client.get(f"/items/{hostile.item_ids[0]}/input.png").status_code == 200


# ---------------------------------------------------------------- a real browser
def wait_for_images(page: Any, timeout: float = 20) -> None:
    """Every thumbnail loaded (lazy ones too: scrolled into view first). Polled from Python:
    ``wait_for_function`` evaluates a string, which the console's CSP (no eval) refuses."""
    page.evaluate("() => window.scrollTo(0, document.body.scrollHeight)")
    deadline = time.monotonic() + timeout
    script = "() => Array.from(document.querySelectorAll('#grid img')).every(i => i.complete)"
    while not page.evaluate(script):
        assert time.monotonic() < deadline, "thumbnails did not load"
        time.sleep(0.1)
    page.evaluate("() => window.scrollTo(0, 0)")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_browser_filters_the_batch_and_follows_a_thumbnail(
    web: WebServer, home: Path, page: Any
) -> None:
    """Open a batch, filter it to one label, follow a thumbnail to its item page; the
    hostile file name renders as text (no dialog) on both pages. Saves docs/img/batch.png."""
    filled = csv_batch(120, wrong_every=9, errors={7: "row 8: expected 785 fields, got 700"})
    pixels, labels = sample(1)
    hostile = image_batch(home / "inbox" / "xss", {XSS: scans(pixels)[0]}, labels)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)

    page.goto(f"{web.url}/batches/{filled.batch_id}")
    page.wait_for_selector("#grid li img")
    wait_for_images(page)
    page.screenshot(path=str(ROOT / "docs" / "img" / "batch.png"), full_page=True)
    page.select_option("#filter-label", "3")
    page.click("#apply-filters")
    page.wait_for_url(re.compile(r"label=3"))
    digits = page.locator("#grid .digit").all_inner_texts()
    assert digits and set(digits) == {"3"}
    tile = page.locator("#grid li a").first
    href = tile.get_attribute("href")
    tile.click()
    page.wait_for_url(f"{web.url}{href}")
    assert page.locator("#final-label").inner_text().startswith("3")
    natural = page.eval_on_selector("#model-image", "i => [i.naturalWidth, i.naturalHeight]")
    assert natural == [28, 28]

    for path in (f"/batches/{hostile.batch_id}", f"/items/{hostile.item_ids[0]}"):
        page.goto(f"{web.url}{path}")
        page.wait_for_load_state("load")
        assert XSS in page.inner_text("main"), path
        assert page.locator("main img[src='x']").count() == 0
    assert dialogs == []
    assert not [p for p in problems if "Content Security Policy" in p], problems
