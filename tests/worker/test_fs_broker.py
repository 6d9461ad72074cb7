"""The embedded broker writes each message whole, under a name only the finished file has."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.mark.parametrize("count", [1, 20])
def test_embedded_broker_messages_appear_whole(home: Path, count: int) -> None:
    from worker.celery_app import make_app

    with make_app().connection_for_write() as conn:
        channel = conn.default_channel
        assert type(channel).__module__ == "worker.fs_broker"
        for i in range(count):
            channel._put("digits", {"body": "x" * 1000, "n": i})
        folder = Path(channel.data_folder_out)
        files = sorted(folder.iterdir())
        assert [f.name.endswith(".digits.msg") for f in files] == [True] * count  # no temp left
        assert sorted(json.loads(f.read_text())["n"] for f in files) == list(range(count))
        got = [channel._get("digits")["n"] for _ in range(count)]  # same-ms: uuid order
        assert sorted(got) == list(range(count))


def test_embedded_broker_connects_without_a_hostname_warning(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A folder broker has no host: kombu's default 'localhost' made every connection warn
    "No hostname was supplied", on `digits up`'s console too (issue 21 item 9)."""
    from worker.celery_app import make_app

    with caplog.at_level("WARNING"), make_app().connection_for_write() as conn:
        conn.default_channel._put("digits", {"n": 1})
        conn.clone().info()  # what Celery does on start-up and for every producer pool
    assert not [r for r in caplog.records if "hostname" in r.getMessage()], caplog.text
