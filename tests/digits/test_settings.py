"""The one settings object refuses combinations that would make the pipeline lose work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"DIGITS_LEASE_SECONDS": "1"},
            "DIGITS_LEASE_SECONDS must be above DIGITS_TASK_TIME_LIMIT (a chunk's lease must "
            "outlive its longest allowed run); got 1 and 50",
        ),
        ({"DIGITS_LEASE_SECONDS": "50"}, "got 50 and 50"),
        ({"DIGITS_LEASE_SECONDS": "20", "DIGITS_TASK_TIME_LIMIT": "30"}, "got 20 and 30"),
        (
            {"DIGITS_TASK_TIME_LIMIT": "400", "DIGITS_LEASE_SECONDS": "500"},
            "DIGITS_TASK_TIME_LIMIT must be below DIGITS_VISIBILITY_TIMEOUT; got 400 and 300",
        ),
    ],
)
def test_a_lease_that_would_expire_under_a_live_chunk_is_refused(
    env: dict[str, str], message: str, home: Path
) -> None:
    """Before: DIGITS_LEASE_SECONDS=1 was accepted and every chunk of a big batch ended
    quarantined as "lease expired: worker lost" while its worker was still scoring it."""
    result = subprocess.run(
        [sys.executable, "-m", "digits.cli", "status"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("lease", "limit"), [("6", "5"), ("60", "50"), ("51", "50")])
def test_a_lease_above_the_time_limit_is_accepted(
    lease: str, limit: str, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from digits.core.settings import Settings

    monkeypatch.setenv("DIGITS_LEASE_SECONDS", lease)
    monkeypatch.setenv("DIGITS_TASK_TIME_LIMIT", limit)
    assert Settings().lease_seconds == float(lease)
