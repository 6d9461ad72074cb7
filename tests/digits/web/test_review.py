"""The review queue over HTTP, on both deployments: the page, the queue as JSON, decisions,
undo and bulk accept as rows of ``reviews``, and the refusals (CSRF, token)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from flagged import confidence_of, flagged_batch
from sqlalchemy import select, update
from webserver import WebServer, start_web

from digits.core.db import session, upgrade
from digits.core.reviews import audit_draw
from digits.core.schema import Prediction, Review
from digits.web import security

TOKEN = secrets.token_urlsafe(16)  # a fresh token per run: no literal secret in the repository


@contextmanager
def writer_client(web: WebServer) -> Iterator[tuple[httpx.Client, dict[str, str]]]:
    """A client that loaded a page (so it holds the CSRF cookie) and the header to send."""
    with web.client() as client:
        client.get("/review")
        yield client, {security.CSRF_HEADER: client.cookies[security.CSRF_COOKIE]}


def rows() -> list[tuple[int, int | None, int, str, str]]:
    with session() as sess:
        return [
            (r.item_id, r.label, r.model_label, r.kind, r.reviewer)
            for r in sess.scalars(select(Review).order_by(Review.id))
        ]


def test_the_queue_json_pages_flagged_items_least_confident_first(
    web: WebServer, sample_rows: list[str]
) -> None:
    batch = flagged_batch(sample_rows, 30)
    reason = "several digit-sized marks on the page"
    with session(write=True) as sess:
        sess.execute(
            update(Prediction)
            .where(Prediction.item_id == batch.item_ids[1])
            .values(review_reason=reason)
        )
    with web.client() as client:
        first = client.get("/review/queue.json", params={"batch": batch.batch_id, "limit": 10})
        assert first.status_code == 200
        data = first.json()
        assert data["counts"] == {"flagged": 30, "audit": 0}
        assert [i["item_id"] for i in data["items"]] == batch.item_ids[:10]
        item = data["items"][0]
        assert item["source"] == "flagged.csv:1" and item["kind"] == "flagged"
        assert item["input_url"] == f"/items/{item['item_id']}/input.png"
        assert item["model_url"] == f"/items/{item['item_id']}/model.png"
        assert item["label"] == batch.predicted[0] and len(item["top3"]) == 3
        assert item["top3"][0][0] == item["label"]
        # why the digit finder doubted the page, for the person deciding
        assert [i["review_reason"] for i in data["items"][:3]] == [None, reason, None]
        second = client.get(
            "/review/queue.json", params={"batch": batch.batch_id, "offset": 10, "limit": 10}
        ).json()
        assert [i["item_id"] for i in second["items"]] == batch.item_ids[10:20]
        everywhere = client.get("/review/queue.json").json()
        assert len(everywhere["items"]) == 25  # a page
        rest = client.get("/review/queue.json", params={"offset": 25}).json()
        assert [i["item_id"] for i in rest["items"]] == batch.item_ids[25:]
        assert client.get("/review/queue.json", params={"limit": 0}).status_code == 422


def test_the_page_shows_counts_legend_and_a_name_field(
    web: WebServer, sample_rows: list[str]
) -> None:
    batch = flagged_batch(sample_rows, 12)
    with web.client() as client:
        page = client.get("/review", params={"batch": batch.batch_id})
        assert page.status_code == 200
        text = page.text
        assert 'id="count-flagged">12<' in text and 'id="count-audit">0<' in text
        assert f'data-batch="{batch.batch_id}"' in text
        for key in ("0–9", "Enter", "s", "←", "→", "u"):
            assert f"<kbd>{key}</kbd>" in text
        assert 'id="reviewer-name"' in text
        assert '<script src="/static/review.js" defer></script>' in text
        assert "style=" not in text and "onclick" not in text
        assert client.get("/static/review.js").status_code == 200
        assert client.get("/review", params={"batch": 999}).status_code == 404


def test_an_empty_queue_says_so_and_links_to_the_dashboard(web: WebServer) -> None:
    with web.client() as client:
        text = client.get("/review").text
        assert "Nothing waiting for review" in text and 'href="/"' in text


def test_decisions_undo_and_bulk_accept_are_rows_of_reviews(
    web: WebServer, sample_rows: list[str]
) -> None:
    """A decision is a row; a second one on the same item is another row; undo is a row with
    no label for the reviewer's last decision; bulk accept confirms the flagged items at or
    above the threshold (kind ``bulk``). The reviewer's name comes from the page's cookie."""
    batch = flagged_batch(sample_rows, 20)
    a, b, c = batch.item_ids[:3]
    with writer_client(web) as (client, csrf):
        client.cookies.set("digits_reviewer", "ana%20lima")
        answer = client.post("/review/decide", json={"item_id": a, "label": 7}, headers=csrf)
        assert answer.status_code == 200, answer.text
        assert answer.json() | {"review_id": 0} == {
            "review_id": 0,
            "item_id": a,
            "label": 7,
            "model_label": batch.predicted[0],
            "kind": "flagged",
            "reviewer": "ana lima",
        }
        client.post("/review/decide", json={"item_id": a, "label": 4}, headers=csrf)
        client.post(
            "/review/decide", json={"item_id": b, "label": batch.predicted[1]}, headers=csrf
        )
        undone = client.post("/review/undo", json={"batch_id": batch.batch_id}, headers=csrf).json()
        assert undone["item_id"] == b and undone["counts"]["flagged"] == 19
        assert (
            client.post(
                "/review/decide", json={"item_id": a, "label": 10}, headers=csrf
            ).status_code
            == 422
        )
        missing = client.post("/review/decide", json={"item_id": 10**6, "label": 1}, headers=csrf)
        assert missing.status_code == 404 and "does not exist" in missing.json()["detail"]
        threshold = confidence_of(15, 20)  # items 15..20
        accepted = client.post(
            "/review/accept",
            json={"batch_id": batch.batch_id, "threshold": threshold},
            headers=csrf,
        ).json()
        assert accepted["accepted"] == 6 and accepted["counts"]["flagged"] == 13
    got = rows()
    p = batch.predicted
    assert got[:4] == [
        (a, 7, p[0], "flagged", "ana lima"),
        (a, 4, p[0], "flagged", "ana lima"),
        (b, p[1], p[1], "flagged", "ana lima"),
        (b, None, p[1], "flagged", "ana lima"),
    ]
    assert {r[0] for r in got[4:]} == set(batch.item_ids[14:20])
    assert {(r[3], r[4]) for r in got[4:]} == {("bulk", "ana lima")}
    assert c not in {r[0] for r in got}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/review/decide", {"item_id": 1, "label": 3}),
        ("/review/undo", {}),
        ("/review/accept", {"batch_id": 1, "threshold": 0.5}),
    ],
)
def test_a_write_without_the_csrf_token_is_refused(
    web: WebServer, sample_rows: list[str], path: str, body: dict[str, Any]
) -> None:
    flagged_batch(sample_rows, 3)
    with writer_client(web) as (client, _):
        assert client.post(path, json=body).status_code == 403
        forged = client.post(path, json=body, headers={security.CSRF_HEADER: "guess"})
        assert forged.status_code == 403 and "CSRF" in forged.json()["detail"]
    assert rows() == []


def test_with_a_token_decisions_need_it_and_bearer_or_login_gives_it(
    home: Path, sample_rows: list[str]
) -> None:
    upgrade()
    batch = flagged_batch(sample_rows, 5)
    server = start_web(home, env={"DIGITS_WEB_TOKEN": TOKEN})
    try:
        with writer_client(server) as (client, csrf):
            assert client.get("/review").status_code == 200  # reads on loopback stay open
            body = {"item_id": batch.item_ids[0], "label": 2}
            refused = client.post("/review/decide", json=body, headers=csrf)
            assert refused.status_code == 401 and "token" in refused.json()["detail"]
            bearer = {"authorization": f"Bearer {TOKEN}"}
            assert client.post("/review/decide", json=body, headers=bearer).status_code == 200
            wrong = {"authorization": "Bearer nope"}
            assert client.post("/review/undo", json={}, headers=wrong).status_code == 401
            page = client.get("/login")
            form_csrf = client.cookies[security.CSRF_COOKIE]
            assert page.status_code == 200
            login = client.post(
                "/login", data={"csrf": form_csrf, "token": TOKEN, "name": "bea", "next": "/"}
            )
            assert login.status_code == 303
            body2 = {"item_id": batch.item_ids[1], "label": 5}
            assert client.post("/review/decide", json=body2, headers=csrf).status_code == 200
    finally:
        server.stop()
    assert [(r[0], r[1], r[4]) for r in rows()] == [
        (batch.item_ids[0], 2, "api"),
        (batch.item_ids[1], 5, "bea"),
    ]


def test_audit_items_are_marked_and_never_bulk_accepted(
    backend: str, home: Path, sample_rows: list[str]
) -> None:
    """Confident items whose draw falls in the audit share (0.5 here, so there are some)
    come after the flagged ones, marked ``audit``; a decision on one is an ``audit`` row; bulk
    accept at threshold 0 takes every flagged item and leaves the audit items waiting."""
    batch = flagged_batch(sample_rows, 20)
    confident = batch.item_ids[10:]
    with session(write=True) as sess:
        sess.execute(
            update(Prediction)
            .where(Prediction.item_id.in_(confident))
            .values(needs_review=False, confidence=0.99)
        )
    audit = [i for i in confident if audit_draw(i) < 0.5]
    assert audit, "no audit item among the confident ones: choose other ids"
    server = start_web(home, env={"DIGITS_AUDIT_SHARE": "0.5"})
    try:
        with writer_client(server) as (client, csrf):
            queue = client.get("/review/queue.json", params={"batch": batch.batch_id}).json()
            kinds = [(i["item_id"], i["kind"]) for i in queue["items"]]
            assert kinds == [(i, "flagged") for i in batch.item_ids[:10]] + [
                (i, "audit") for i in audit
            ]
            assert queue["counts"] == {"flagged": 10, "audit": len(audit)}
            page = client.get("/review", params={"batch": batch.batch_id}).text
            assert f'id="count-audit">{len(audit)}<' in page
            body = {"item_id": audit[0], "label": 3}
            assert client.post("/review/decide", json=body, headers=csrf).status_code == 200
            accepted = client.post(
                "/review/accept", json={"batch_id": batch.batch_id, "threshold": 0}, headers=csrf
            ).json()
            assert accepted == {
                "accepted": 10,
                "counts": {"flagged": 0, "audit": len(audit) - 1},
            }
    finally:
        server.stop()
    kinds_written = {(r[0], r[3]) for r in rows()}
    assert (audit[0], "audit") in kinds_written
    assert {k for i, k in kinds_written if i != audit[0]} == {"bulk"}
