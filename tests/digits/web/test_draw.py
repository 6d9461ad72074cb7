"""Draw a digit (/draw) and POST /api/predict: the production model answers one image through
the inbox's preprocessing and result shaping; TensorFlow stays out of pages that only read."""

from __future__ import annotations

import base64
import io
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw
from webserver import WebServer, start_web

from digits.web import security

ROOT = Path(__file__).resolve().parents[3]
DOCS_IMG = ROOT / "docs" / "img"
TOKEN = secrets.token_urlsafe(16)  # a fresh token per run: no literal secret in the repository


def seven_png(side: int = 280) -> bytes:
    """A 7 drawn like on the page: white pen on black, a top bar and a diagonal down-left."""
    img = Image.new("L", (side, side), 0)
    pen = ImageDraw.Draw(img)
    pen.line([(70, 60), (210, 60)], fill=255, width=22)
    pen.line([(210, 60), (115, 230)], fill=255, width=22)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def csrf_of(client: Any) -> str:
    client.get("/healthz")  # every answer sets the CSRF cookie
    return str(client.cookies[security.CSRF_COOKIE])


def test_read_pages_never_import_tensorflow(home: Path) -> None:
    """The dashboard, draw and upload pages and the read API answer without TensorFlow: only
    a prediction loads the model (checked in a fresh interpreter, through the app itself)."""
    code = """
import sys
from digits.core.db import upgrade
upgrade()
from fastapi.testclient import TestClient
from digits.web.app import create_app
client = TestClient(create_app())
for path in ("/", "/draw", "/upload", "/upload/progress?batch=1", "/api/dashboard", "/login",
             "/healthz", "/api/openapi.json"):
    assert client.get(path).status_code == 200, path
print(sorted(m for m in ("tensorflow", "keras") if m in sys.modules))
"""
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_draw_and_api_predict_answer_like_the_inbox(web: WebServer) -> None:
    """Both routes give the label, the calibrated confidence, the review flag, the top 3 and
    the 28×28 the model saw; the same bytes give the same answer as the worker's shaping."""
    png = seven_png()
    # the first prediction loads TensorFlow and the model: slow on a busy 2-core machine
    with httpx.Client(base_url=web.url, timeout=300) as client:
        assert "<canvas" in client.get("/draw").text
        csrf = csrf_of(client)
        drawn = client.post(
            "/draw/predict",
            content=png,
            headers={"content-type": "image/png", security.CSRF_HEADER: csrf},
        )
        assert drawn.status_code == 200, drawn.text
        answer = drawn.json()
        api = client.post(
            "/api/predict",
            files={"file": ("seven.png", png, "image/png")},
            headers={security.CSRF_HEADER: csrf},
        ).json()
    assert answer["label"] == 7 and api["label"] == 7
    assert answer["probabilities"] == api["probabilities"]
    assert answer["confidence"] == max(answer["probabilities"])
    assert answer["needs_review"] is (answer["confidence"] < 0.9)
    assert answer["top3"][0]["label"] == 7 and len(answer["top3"]) == 3
    assert abs(sum(answer["probabilities"]) - 1) < 1e-4
    seen = Image.open(io.BytesIO(base64.b64decode(answer["seen"].split(",", 1)[1])))
    assert seen.size == (28, 28)
    from digits.core.images import image_to_tensor

    expected = np.rint(image_to_tensor(png)[:, :, 0] * 255)
    assert np.array_equal(np.asarray(seen, np.float64), expected)
    from model_store.aliases import resolve_active

    assert answer["model_version"] == resolve_active().version


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/draw/predict", b"not a png", 422, "not an image"),
        ("/draw/predict", b"", 422, "empty"),
        ("/draw/predict", b"x" * 5000, 413, "DIGITS_MAX_FILE_BYTES"),
        ("/api/predict", b"hello", 422, "not an image"),
        ("/api/predict", b"x" * 5000, 413, "DIGITS_MAX_FILE_BYTES"),
    ],
)
def test_predict_refuses_what_the_inbox_refuses(
    home: Path, path: str, body: bytes, status: int, words: str
) -> None:
    from digits.core.db import upgrade

    upgrade()
    server = start_web(home, env={"DIGITS_MAX_FILE_BYTES": "4000"})
    try:
        with server.client() as client:
            csrf = csrf_of(client)
            headers = {security.CSRF_HEADER: csrf}
            if path == "/draw/predict":
                answer = client.post(path, content=body, headers=headers)
            else:
                answer = client.post(path, files={"file": ("f.png", body)}, headers=headers)
        assert answer.status_code == status, answer.text
        assert words in answer.json()["detail"]
    finally:
        server.stop()


def test_predictions_are_writes_guarded_by_csrf_and_the_token(home: Path) -> None:
    """No CSRF header: refused; with a token set, no token: refused, the bearer token: let
    through (a non-image answers 422, past the guard, without loading the model)."""
    from digits.core.db import upgrade

    upgrade()
    png = seven_png()
    server = start_web(home)
    try:
        with server.client() as client:
            csrf_of(client)
            assert client.post("/draw/predict", content=png).status_code == 403
            no_csrf = client.post("/api/predict", files={"file": ("s.png", png)})
            assert no_csrf.status_code == 403 and "CSRF" in no_csrf.json()["detail"]
    finally:
        server.stop()
    server = start_web(home, env={"DIGITS_WEB_TOKEN": TOKEN})
    try:
        with server.client() as client:
            csrf = csrf_of(client)
            refused = client.post(
                "/api/predict", files={"file": ("s.png", png)}, headers={security.CSRF_HEADER: csrf}
            )
            assert refused.status_code == 401
            drawn = client.post("/draw/predict", content=png, headers={security.CSRF_HEADER: csrf})
            assert drawn.status_code == 401
            bearer = {"authorization": f"Bearer {TOKEN}"}
            passed = client.post("/api/predict", files={"file": ("s.png", b"no")}, headers=bearer)
            assert passed.status_code == 422, passed.text
    finally:
        server.stop()


def test_the_model_follows_the_production_alias(home: Path) -> None:
    """The version is read on every prediction: promoting another version (here a copy of
    the default registered as a new version) moves the very next answer to it."""
    from digits.app.predict import predict_image
    from digits.core.db import upgrade
    from model_store.aliases import set_alias
    from model_store.registry import default_version, register

    upgrade()
    png = seven_png()
    first = predict_image(png)
    default = default_version()
    copy = register(default.model_file, {**default.card, "architecture": "copy for a test"})
    set_alias("production", copy.version, "test")
    moved = predict_image(png)
    assert first.model_version == default.version
    assert moved.model_version == copy.version and moved.label == 7
    set_alias("production", default.version, "test")
    assert predict_image(png).model_version == default.version


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_drawing_a_seven_with_the_mouse_gets_seven(backend: str, home: Path, page: Any) -> None:
    """A real Chromium draws on the canvas with mouse events (top bar, then the diagonal),
    presses Predict and reads 7, its confidence, the top 3 and the 28×28 the model saw; then
    Escape clears the answer."""
    server = start_web(home)
    try:
        page.goto(f"{server.url}/draw")
        box = page.locator("#pad").bounding_box()

        def at(x: float, y: float) -> tuple[float, float]:
            return box["x"] + x * box["width"] / 280, box["y"] + y * box["height"] / 280

        page.mouse.move(*at(70, 60))
        page.mouse.down()
        for x, y in [(110, 60), (160, 60), (210, 60), (180, 115), (150, 170), (115, 230)]:
            page.mouse.move(*at(x, y), steps=5)
        page.mouse.up()
        page.click("#predict")
        page.wait_for_selector("#answer:not([hidden])", timeout=240_000)
        assert page.text_content("#label") == "7"
        assert page.text_content("#confidence").endswith("%")
        assert page.locator("#top3 tr").count() == 3
        assert page.get_attribute("#seen", "src").startswith("data:image/png;base64,")
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS_IMG / "draw.png"), full_page=True)
        page.keyboard.press("Escape")
        assert page.locator("#answer").is_hidden()
        page.keyboard.press("Enter")  # nothing drawn: said, not sent
        assert "Draw a digit first" in page.text_content("#draw-error")
    finally:
        server.stop()
