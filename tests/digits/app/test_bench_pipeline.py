"""`digits bench --null-model` (issue 24): the pipeline's own ceiling, measured with real
workers and a model that costs nothing, in a deployment of its own that it removes."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from sqlalchemy import func, select

from digits.app.bench_pipeline import null_bench, worker_counts
from digits.core.db import session
from digits.core.schema import Batch
from digits.core.settings import NULL_BENCH_MARK
from tests.conftest import PG_ADMIN, SAMPLE

RUN_FIELDS = {
    "workers",
    "items",
    "predictions",
    "items_predicted",
    "exactly_once",
    "seconds",
    "enqueue_seconds",
    "items_per_s",
    "cpu_cores",
    "drain",
    "isolation",
}


@pytest.mark.parametrize(("text", "counts"), [("2", [2]), ("2,4,8", [2, 4, 8]), ("1, 3", [1, 3])])
def test_sweep_takes_worker_counts(text: str, counts: list[int]) -> None:
    assert worker_counts(text) == counts


@pytest.mark.parametrize("text", ["", "0", "2,x", "-1"])
def test_sweep_refuses_what_is_not_worker_counts(text: str) -> None:
    with pytest.raises(ValueError, match="--sweep"):
        worker_counts(text)


@pytest.mark.slow
def test_the_null_model_bench_writes_every_item_once_in_a_deployment_of_its_own(
    backend: str, home: Path
) -> None:
    """Real workers (1 and 2 processes) score the shipped sample with the null model: every
    item written exactly once, the report has its fields, and nothing reaches the configured
    database; the throwaway home (and PostgreSQL database) is gone afterwards. The one-core
    model-only rate (TensorFlow in this process) only on the embedded run, to keep it short."""
    ceiling_rows = 200 if backend == "embedded" else 0
    report = null_bench(SAMPLE, [1, 2], ceiling_rows=ceiling_rows, timeout=240)

    assert report["mode"] == "null-model"
    assert report["items"] == 200
    assert report["deployment"]["database"] == ("sqlite" if backend == "embedded" else "postgresql")
    assert [run["workers"] for run in report["runs"]] == [1, 2]
    for run in report["runs"]:
        assert set(run) >= RUN_FIELDS
        assert run["items"] == run["predictions"] == run["items_predicted"] == 200
        assert run["exactly_once"] is True
        assert run["items_per_s"] > 0
        assert {"workers", "bench_process", "postgres", "redis-server"} == set(run["cpu_cores"])
        drain = run["drain"]
        assert drain["items"] == drain["predictions"] == drain["items_predicted"] == 200
        assert drain["exactly_once"] is True
        assert drain["items_per_s"] > 0
    if ceiling_rows:
        assert report["model_only_per_core"]["rows"] == ceiling_rows
        assert report["model_only_per_core"]["images_per_s"] > 0
        assert all(run["cores_fed"] > 0 for run in report["runs"])
        assert all(run["drain"]["cores_fed"] > 0 for run in report["runs"])
        assert report["best"]["cores_fed"] > 0

    with session() as sess:  # the configured database saw none of it
        assert sess.scalar(select(func.count()).select_from(Batch)) == 0
    for run in report["runs"]:
        isolation = run["isolation"]
        assert NULL_BENCH_MARK in isolation
        if backend == "embedded":  # "SQLite in /tmp/digits_null_bench_…/var, removed after"
            assert not Path(isolation.split(" in ", 1)[1].split(",")[0]).parent.exists()
        else:  # "throwaway database digits_null_bench_… on 127.0.0.1, dropped after"
            name = isolation.split()[2]
            with psycopg.connect(PG_ADMIN) as conn:
                found = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
                ).fetchall()
            assert found == []
