"""The issue's "done when", in one real browser: a user runs `digits up --web`, opens the
page, uploads scans, reviews the flagged ones with the keyboard, downloads a submission that
carries the corrections, and sees the estimated accuracy with its interval."""

from __future__ import annotations

import csv
import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect
from webserver import free_port

ROOT = Path(__file__).resolve().parents[3]
SAMPLE = ROOT / "digits" / "samples" / "sample.csv.gz"


def scans(folder: Path, count: int) -> list[Path]:
    """Realistic scans of the shipped sample's rows (pen on paper, PNG/JPEG)."""
    import numpy as np

    from digits.core.csv_input import read_labelled
    from digits.core.synthetic_scans import render_scan

    pixels, _ = read_labelled(SAMPLE)
    rng = np.random.default_rng(7)
    folder.mkdir()
    paths = []
    for i in range(count):
        data, ext = render_scan(pixels[i], rng, size=200)
        path = folder / f"scan-{i:02d}{ext}"
        path.write_bytes(data)
        paths.append(path)
    return paths


@pytest.mark.slow
def test_upload_review_with_the_keyboard_download_and_see_the_estimate(
    backend: str, home: Path, page: Any, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        # a strict threshold and half of the confident items audited: a short queue of both
        "DIGITS_CONFIDENCE_THRESHOLD": "0.999",
        "DIGITS_AUDIT_SHARE": "0.5",
    }
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "digits.cli",
            "up",
            "--workers",
            "1",
            "--web",
            "--web-port",
            str(port),
        ],
        stdout=(tmp_path / "up.log").open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert up.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
            try:
                workers = httpx.get(f"{url}/api/dashboard", timeout=2).json()["workers"]
                if workers:
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.5)
        else:
            raise AssertionError((tmp_path / "up.log").read_text()[-3000:])

        # upload 16 scans and watch the batch finish
        page.goto(f"{url}/upload")
        page.set_input_files("#files", scans(tmp_path / "scans", 16))
        page.wait_for_selector("body[data-upload-done='1']", timeout=240_000)
        row = page.locator("#uploaded tbody tr").first
        assert row.locator(".status").text_content() == "done"
        batch = int(row.get_attribute("data-batch"))

        # review every waiting item with the keyboard only: the first is corrected, the
        # first audit item is contradicted, the rest confirmed
        page.goto(f"{url}/review?batch={batch}")
        waiting = int(page.locator("#count-flagged").inner_text()) + int(
            page.locator("#count-audit").inner_text()
        )
        assert waiting > 0
        corrected: dict[str, int] = {}
        contradicted_audit = False
        for n in range(waiting):
            expect(page.locator("#item-label")).not_to_have_text("–")
            position = page.locator("#item-position").inner_text()
            model = int(page.locator("#item-label").inner_text())
            audit = page.locator("#item-kind").inner_text().strip().lower() == "audit"
            if n == 0 or (audit and not contradicted_audit):
                label = (model + 1) % 10
                corrected[position] = label
                contradicted_audit = contradicted_audit or audit
                page.keyboard.press(str(label))
            else:
                page.keyboard.press("Enter")
            if n + 1 < waiting:  # after the last one the card gives way to "all decided"
                expect(page.locator("#session-decided")).to_have_text(str(n + 1))
        page.wait_for_selector("#review-empty:not([hidden])", timeout=30_000)
        # decisions are saved in the background: the page says when all are in
        page.wait_for_selector("body[data-pending='0']", timeout=30_000)
        assert page.locator("#saving").inner_text() == "all saved"

        # the submission downloaded from the batch page carries the corrections
        page.goto(f"{url}/batches/{batch}")
        with page.expect_download() as download:
            page.click("#download-submission")
        text = Path(download.value.path()).read_text()
        labels = {r["ImageId"]: int(r["Label"]) for r in csv.DictReader(io.StringIO(text))}
        assert len(labels) == 16
        for position, label in corrected.items():
            assert labels[position] == label

        # the dashboard shows the estimated accuracy with its interval
        page.goto(f"{url}/")
        estimate = page.locator("#estimate-text").inner_text()
        assert contradicted_audit, "no audit item came up: the estimate was not exercised"
        found = re.search(r"(\d+\.\d) % \(95 % CI \d+\.\d–\d+\.\d %, (\d+) audited\)", estimate)
        assert found, estimate
        audited = int(found.group(2))
        assert float(found.group(1)) == pytest.approx(100 * (audited - 1) / audited, abs=0.05)
    finally:
        os.killpg(up.pid, signal.SIGINT)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
