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
