"""Upload (/upload): files dropped into the browser become batches by the inbox's route, are
scored by real workers, and the page follows them; every limit refuses the whole upload."""

from __future__ import annotations

import gzip
import re
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from webserver import WebServer, start_web

from digits.core.synthetic_scans import render_scan
from digits.web import security

ROOT = Path(__file__).resolve().parents[3]
SAMPLE = ROOT / "digits" / "samples" / "sample.csv.gz"
DOCS_IMG = ROOT / "docs" / "img"
XSS = "<img src=x onerror=alert(1)>.png"
TOKEN = secrets.token_urlsafe(16)  # a fresh token per run: no literal secret in the repository


def scans(count: int, seed: int = 0) -> tuple[list[tuple[str, bytes]], list[int]]:
    """Realistic scans (pen on paper, JPEG/PNG…) of the shipped sample's held-out rows."""
    from digits.core.csv_input import read_labelled

    pixels, labels = read_labelled(SAMPLE)
    rng = np.random.default_rng(seed)
    files = []
    for i in range(count):
        data, ext = render_scan(pixels[i], rng, size=200)
        files.append((f"scan-{i:02d}{ext}", data))
    return files, [int(x) for x in labels[:count]]


def post_files(client: httpx.Client, files: list[tuple[str, bytes]], csrf: bool = True) -> Any:
    client.get("/healthz")
    headers = {security.CSRF_HEADER: client.cookies[security.CSRF_COOKIE]} if csrf else {}
    return client.post(
        "/upload", files=[("files", (name, data)) for name, data in files], headers=headers
    )


def uploads(home: Path) -> list[Path]:
    folder = home / "uploads"
    return sorted(folder.iterdir()) if folder.exists() else []


def test_an_upload_becomes_batches_by_the_inbox_route(web: WebServer, home: Path) -> None:
    """Images: one folder batch, each file under a safe name on disk and its own name (the XSS
    one too, as text) as its item's source; a CSV: a CSV batch. Without a worker the page and
    the progress answer say so."""
    from digits.core.queries import results

    images, _ = scans(3)
    with gzip.open(SAMPLE) as fh:
        csv = fh.read()
    with web.client() as client:
        page = client.get("/upload").text
        assert "No worker is connected" in page
        assert re.search(r'id="no-worker"[^>]*hidden', page) is None  # shown
        made = post_files(client, [(XSS, images[0][1]), *images[1:], ("sample.csv", csv)])
        assert made.status_code == 200, made.text
        body = made.json()
        ids = [b["batch_id"] for b in body["batches"]]
        progress = client.get("/upload/progress", params={"batch": ids}).json()
    assert body["workers"] == 0 and progress["workers"] == 0
    [folder_batch, csv_batch] = body["batches"]
    assert (folder_batch["kind"], folder_batch["items"], folder_batch["errors"]) == ("images", 3, 0)
    assert folder_batch["name"] == f"{XSS} and 2 more"
    assert (csv_batch["kind"], csv_batch["items"], csv_batch["name"]) == ("csv", 200, "sample.csv")
    assert [b["status"] for b in progress["batches"]] == ["running", "running"]
    rows = results(folder_batch["batch_id"])
    assert [r["source"] for r in rows] == [XSS, images[1][0], images[2][0]]
    [folder] = uploads(home)[:1]
    on_disk = sorted(p.name for p in folder.iterdir())
    assert on_disk == [
        "0001-_img_src_x_onerror_alert_1_.png",
        f"0002-{images[1][0]}",
        f"0003-{images[2][0]}",
        "0004-sample.csv",
    ]


@pytest.mark.parametrize(
    ("files", "csrf", "status", "words"),
    [
        ([("a.png", b"x")], False, 403, "CSRF"),
        ([(f"s{i}.png", b"x") for i in range(4)], True, 413, "DIGITS_MAX_UPLOAD_FILES"),
        ([("big.png", b"x" * 5000)], True, 413, "big.png: larger than DIGITS_MAX_FILE_BYTES"),
        ([("a.png", b"x"), ("notes.txt", b"hello")], True, 415, "notes.txt: neither an image"),
        ([("photo.pdf", b"%PDF-1.4")], True, 415, "photo.pdf: neither an image"),
        ([], True, 400, "no files"),
    ],
)
def test_refused_uploads_create_nothing(
    home: Path, files: list[tuple[str, bytes]], csrf: bool, status: int, words: str
) -> None:
    from digits.core.db import upgrade
    from digits.core.queries import batch_progress

    upgrade()
    env = {"DIGITS_MAX_FILE_BYTES": "4000", "DIGITS_MAX_UPLOAD_FILES": "3"}
    server = start_web(home, env=env)
    try:
        with server.client() as client:
            answer = post_files(client, files, csrf=csrf)
    finally:
        server.stop()
    assert answer.status_code == status, answer.text
    assert words in answer.json()["detail"]
    assert batch_progress() == []
    assert uploads(home) == []  # the upload's folder is removed with what it held


def test_with_a_token_an_upload_needs_it(home: Path) -> None:
    from digits.core.db import upgrade

    upgrade()
    images, _ = scans(1)
    server = start_web(home, env={"DIGITS_WEB_TOKEN": TOKEN})
    try:
        with server.client() as client:
            assert post_files(client, images).status_code == 401
            bearer = {"authorization": f"Bearer {TOKEN}"}
            made = client.post("/upload", files=[("files", images[0])], headers=bearer)
            assert made.status_code == 200, made.text
    finally:
        server.stop()


def test_an_upload_is_scored_by_real_workers(
    web: WebServer, worker_factory: Any, home: Path
) -> None:
    """On both deployments: the scans are scored and the progress answer reaches ``done``."""
    worker_factory(concurrency=1).wait_ready()
    images, truth = scans(8, seed=3)
    with web.client() as client:
        made = post_files(client, images).json()
        [batch] = made["batches"]
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            progress = client.get("/upload/progress", params={"batch": batch["batch_id"]}).json()
            if progress["batches"][0]["finished"]:
                break
            time.sleep(0.5)
    [state] = progress["batches"]
    assert progress["workers"] >= 1
    assert (state["status"], state["predicted"], state["errors"]) == ("done", 8, 0)
    from digits.core.queries import results

    labels = [r["label"] for r in results(batch["batch_id"])]
    assert sum(a == b for a, b in zip(labels, truth, strict=True)) >= 7


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_uploading_scans_in_the_browser_and_watching_the_batch_finish(
    backend: str, home: Path, page: Any, worker_factory: Any, tmp_path: Path
) -> None:
    """A real Chromium picks a folder's scans (one named like an XSS attack) in the file
    input; the page shows the batch and follows it to ``done`` with real workers; the hostile
    name is text, never markup."""
    worker_factory(concurrency=2).wait_ready()
    images, truth = scans(12, seed=5)
    folder = tmp_path / "scans"
    folder.mkdir()
    names = [XSS] + [name for name, _ in images[1:]]  # a hostile name is a legal file name
    for name, (_, data) in zip(names, images, strict=True):
        (folder / name).write_bytes(data)
    server = start_web(home)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    try:
        page.goto(f"{server.url}/upload")
        assert page.locator("#no-worker").is_hidden()
        page.set_input_files("#files", [folder / name for name in names])
        page.wait_for_selector("body[data-upload-done='1']", timeout=240_000)
        row = page.locator("#uploaded tbody tr").first
        assert row.locator(".status").text_content() == "done"
        assert row.locator(".predicted").text_content() == "12"
        assert row.locator(".progress").text_content().strip() == "100%"
        assert f"{XSS} and 11 more" in row.text_content()
        assert page.locator("#uploaded img").count() == 0 and dialogs == []
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS_IMG / "upload.png"), full_page=True)
        batch_id = int(row.get_attribute("data-batch"))
    finally:
        server.stop()
    from digits.core.queries import results

    labels = [r["label"] for r in results(batch_id)]
    assert sum(a == b for a, b in zip(labels, truth, strict=True)) >= 11
