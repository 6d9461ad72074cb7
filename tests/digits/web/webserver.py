"""Helpers of the web tests: a real `digits web` (uvicorn) process on a free loopback port,
and where Debian's chromium is."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class WebServer:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    def tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_web(home: Path, *args: str, env: dict[str, str] | None = None) -> WebServer:
    """`digits web` with the test's settings (its environment), ready when /healthz answers."""
    port = free_port()
    log = home.parent / f"web-{port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "digits.cli", "web", "--port", str(port), *args],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    server = WebServer(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"digits web exited {proc.returncode}: {server.tail()}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop()
    raise AssertionError(f"digits web did not answer: {server.tail()}")


def chromium_path() -> str:
    path = os.environ.get("DIGITS_TEST_CHROMIUM") or shutil.which("chromium")
    if not path:
        raise AssertionError(
            "the browser tests need Debian's chromium (.ci/run installs it: "
            "apt-get install chromium)"
        )
    return path
