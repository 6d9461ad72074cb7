"""The JSON API under /api/ on both deployments, its OpenAPI schema, and the offline API docs
page in a real browser."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fill import csv_batch, rescore
from webserver import WebServer

from digits.core import reviews
from digits.web import data
from digits.web.api import openapi_30
from digits.web.app import create_app


def test_the_openapi_schema_describes_every_read_endpoint() -> None:
    """Typed response models make the generated schema useful: each endpoint names its
    model, and the models carry the review columns."""
    schema = create_app().openapi()
    paths = schema["paths"]
    expected = {
        "/api/batches": "BatchOut",
        "/api/batches/{batch_id}": "BatchDetail",
        "/api/results": "ResultsPage",
        "/api/items/{item_id}": "ItemOut",
        "/api/reviews": "ReviewsPage",
    }
    for path, model in expected.items():
        assert model in str(paths[path]["get"]["responses"]["200"]), path
    params = {p["name"] for p in paths["/api/results"]["get"]["parameters"]}
    assert params == {"batch", "label", "below", "needs_review", "errors", "limit", "offset"}
    row = schema["components"]["schemas"]["ResultRow"]["properties"]
    assert {"reviewed_label", "final_label"} <= row.keys()
    assert not any(p.startswith(("/batches", "/items")) for p in paths)  # pages stay out


def ok(answer: Any) -> Any:
    """The JSON of a 200 answer (anything else fails with the answer's text, not a decode
    error)."""
    assert answer.status_code == 200, f"{answer.request.url}: {answer.status_code} {answer.text}"
    return answer.json()


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        ({"anyOf": [{"type": "integer"}, {"type": "null"}]}, {"type": "integer", "nullable": True}),
        (
            {"anyOf": [{"$ref": "#/c/X"}, {"type": "null"}], "description": "d"},
            {"allOf": [{"$ref": "#/c/X"}], "description": "d", "nullable": True},
        ),
        (
            {"type": "number", "exclusiveMinimum": 0},
            {"type": "number", "minimum": 0, "exclusiveMinimum": True},
        ),
        (
            {"prefixItems": [{"type": "integer"}, {"type": "number"}], "type": "array"},
            {"items": {"anyOf": [{"type": "integer"}, {"type": "number"}]}, "type": "array"},
        ),
        ({"const": "a"}, {"enum": ["a"]}),
        ({"openapi": "3.1.0"}, {"openapi": "3.0.3"}),
    ],
)
def test_the_docs_page_reads_the_schema_as_openapi_3_0(
    node: dict[str, Any], expected: dict[str, Any]
) -> None:
    """The pinned Swagger UI (4.15) renders OpenAPI 3.0 only."""
    assert openapi_30(node) == expected


def test_the_whole_schema_downgrades_without_3_1_constructs() -> None:
    text = json.dumps(openapi_30(create_app().openapi()))
    assert '"openapi": "3.0.3"' in text
    assert '{"type": "null"}' not in text and "prefixItems" not in text
    assert '"exclusiveMinimum": 0' not in text


def test_the_api_serves_batches_results_items_and_reviews(web: WebServer, home: Path) -> None:
    filled = csv_batch(30, wrong_every=7, errors={4: "row 5: bad pixel value"})
    other = csv_batch(5)
    b, ids = filled.batch_id, filled.item_ids
    rescore(ids[0], 2, 8, 0.97)
    reviews.record(ids[0], 3, "ana", share=0.0)
    reviews.record(ids[0], 5, "bo", share=0.0)  # supersedes ana's
    reviews.record(ids[1], None, "bo", share=0.0)  # a withdrawal (no current label)
    with web.client() as client:
        listed = ok(client.get("/api/batches"))
        assert [x["batch_id"] for x in listed] == [other.batch_id, b]
        assert listed[1]["items"] == 30 and listed[1]["errors"] == 1

        detail = ok(client.get(f"/api/batches/{b}"))
        assert sum(detail["label_counts"]) == detail["predicted"] == 29
        assert len(detail["confidence_bins"]) == data.CONFIDENCE_BINS
        every = ok(client.get("/api/results", params={"batch": b}))["items"]
        expected = [0] * data.CONFIDENCE_BINS
        for r in every:
            if r["confidence"] is not None:
                expected[min(int(r["confidence"] * data.CONFIDENCE_BINS), 19)] += 1
        assert detail["confidence_bins"] == expected and sum(expected) == 29
        assert sum(map(sum, detail["confusion"])) == detail["labelled"] == 29
        assert detail["reviewed"] == 1 and detail["estimate"]["text"] == "no audited items yet"
        assert client.get("/api/batches/999").status_code == 404

        page = ok(client.get("/api/results", params={"batch": b, "limit": 10, "offset": 10}))
        assert page["total"] == 30 and [r["image_id"] for r in page["items"]] == list(range(11, 21))
        first = ok(client.get("/api/results", params={"batch": b, "limit": 2}))["items"]
        assert first[0]["reviewed_label"] == 5 and first[0]["final_label"] == 5
        assert first[1]["reviewed_label"] is None
        assert first[1]["final_label"] == first[1]["label"] is not None
        failed = ok(client.get("/api/results", params={"batch": b, "errors": True}))
        assert failed["total"] == 1 and failed["items"][0]["error"] == "row 5: bad pixel value"
        assert failed["items"][0]["final_label"] is None
        threes = ok(client.get("/api/results", params={"batch": b, "label": 3}))["items"]
        assert threes and {r["label"] for r in threes} == {3}
        flagged = ok(
            client.get("/api/results", params={"batch": b, "needs_review": True, "below": 0.8})
        )
        assert all(r["needs_review"] and r["confidence"] < 0.8 for r in flagged["items"])
        assert ok(client.get("/api/results"))["total"] == 35  # every batch
        assert client.get("/api/results", params={"label": 12}).status_code == 422
        assert client.get("/api/results", params={"limit": 5000}).status_code == 422
        assert client.get("/api/results", params={"batch": 999}).status_code == 404

        item = ok(client.get(f"/api/items/{ids[0]}"))
        assert [p["model_version"] for p in item["predictions"]] == [1, 2]
        assert [p["pinned"] for p in item["predictions"]] == [True, False]
        assert item["predictions"][1]["label"] == 8
        assert [r["reviewer"] for r in item["reviews"]] == ["ana", "bo"]
        assert item["reviewed_label"] == 5 and item["final_label"] == 5
        assert item["model_input_url"] == f"/items/{ids[0]}/model.png"
        assert len(item["probabilities"]) == 10
        assert client.get("/api/items/99999").status_code == 404

        decisions = ok(client.get("/api/reviews", params={"batch": b}))
        assert decisions["total"] == 3
        assert [(r["reviewer"], r["label"], r["current"]) for r in decisions["items"]] == [
            ("bo", None, True),
            ("bo", 5, True),
            ("ana", 3, False),
        ]
        assert ok(client.get("/api/reviews", params={"batch": other.batch_id}))["total"] == 0
        assert client.get("/api/reviews", params={"batch": 999}).status_code == 404

        assert client.get("/api/docs").status_code == 200
        assert ok(client.get("/api/docs/openapi.json"))["openapi"] == "3.0.3"
        bundle = client.get("/api/docs/assets/swagger-ui-bundle.js")
        assert bundle.status_code == 200 and "SwaggerUIBundle" in bundle.text[:400]
        for name in ("..%2f..%2fapi.py", "index.html", "swagger-initializer.js"):
            assert client.get(f"/api/docs/assets/{name}").status_code == 404


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_the_api_docs_load_offline_in_a_real_browser(web: WebServer, page: Any) -> None:
    """Swagger UI from the vendored package, under the console's CSP (no inline script, no
    CDN): the page lists the operations."""
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    outside: list[str] = []
    page.on(
        "request",
        lambda r: outside.append(r.url) if not r.url.startswith((web.url, "data:")) else None,
    )
    page.goto(f"{web.url}/api/docs")
    page.get_by_text("/api/results", exact=True).wait_for()
    page.get_by_text("/api/items/{item_id}", exact=True).wait_for()
    assert page.locator(".opblock-get").count() >= 5
    assert outside == []
    assert not [p for p in problems if "Content Security Policy" in p], problems
