"""The CLI: every command has help, the fast commands start fast, errors are clear."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from digits.cli import app

runner = CliRunner()
COMMANDS = [
    "db upgrade",
    "db check",
    "train",
    "models list",
    "enqueue",
    "run",
    "worker",
    "status",
    "results",
    "export",
    "bench",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = runner.invoke(app, [*command.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and len(result.output.splitlines()) > 3


def run_cli(
    *args: str, env: dict[str, str] | None = None
) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "digits.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )
    return time.perf_counter() - started, result


# What a command that reads the results table cannot avoid importing: the database layer, the
# settings object, the CLI framework and its console. That floor is the machine's (0.55-1.1 s
# on a noisy 2-core AVX2-only VM, varying minute to minute), so the test bounds what the
# command adds on top of it, timed interleaved with it.
LIBRARIES = "import sqlalchemy.orm, pydantic_settings, typer, rich.console"


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["status"],
        ["results", "--limit", "5"],
        ["export", "--batch", "1", "--out", "x.csv"],
    ],
)
def test_fast_commands_answer_in_well_under_a_second(args: list[str], home: Path) -> None:
    """Best of 4: at most 0.5 s beyond importing its libraries (no TensorFlow, Celery or
    Alembic import, no slow query); the absolute figures are printed (``-s``)."""
    run_cli("db", "upgrade")
    libraries, command = [], []
    for _ in range(4):
        libraries.append(_timed([sys.executable, "-c", LIBRARIES]))
        command.append(run_cli(*args)[0])
    print(f"{args}: {min(command):.2f} s; importing the libraries alone {min(libraries):.2f} s")
    assert min(command) - min(libraries) < 0.5, (min(command), min(libraries))


def _timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, timeout=60)
    return time.perf_counter() - started


@pytest.mark.parametrize("args", [["--help"], ["status"], ["results"], ["export", "--batch", "1"]])
def test_fast_commands_do_not_import_tensorflow_or_celery(args: list[str], home: Path) -> None:
    code = (
        "import sys; from digits.cli import app\n"
        f"try:\n    app({args!r})\nexcept SystemExit:\n    pass\n"
        "bad = [m for m in ('tensorflow', 'keras', 'celery') if m in sys.modules]\n"
        "print('HEAVY', bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=60,
    ).stdout
    assert "HEAVY []" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "does-not-exist.csv"], "does-not-exist.csv: no such file or folder"),
        (["export", "--batch", "999"], "batch 999 does not exist"),
        (["train", "--data", "nope.csv"], "nope.csv: no such file"),
        (["results", "--format", "xml"], "--format must be table, csv or json"),
    ],
)
def test_errors_are_one_clear_line(args: list[str], message: str, home: Path) -> None:
    run_cli("db", "upgrade")
    _, result = run_cli(*args)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr


def _enqueue_named(tmp: Path, name: str, sample_rows: list[str], rows: int) -> None:
    from scheduler.batches import enqueue_csv

    path = tmp / name
    path.write_text("\n".join(sample_rows[: rows + 1]) + "\n")
    enqueue_csv(path)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--source", "%"], []),
        (["--source", "_"], ["under_score.csv:1", "under_score.csv:2"]),
        (["--source", "plain.csv:1"], ["plain.csv:1"]),
        (["--source", "\\"], []),
        (["--limit", "1"], ["plain.csv:1"]),
    ],
)
def test_results_source_is_literal_text(
    args: list[str], expected: list[str], backend: str, tmp_path: Path, sample_rows: list[str]
) -> None:
    """``--source`` matches text, not a LIKE pattern: ``%`` and ``_`` are characters."""
    _enqueue_named(tmp_path, "plain.csv", sample_rows, 3)
    _enqueue_named(tmp_path, "under_score.csv", sample_rows, 2)
    _, result = run_cli("results", "--format", "csv", *args)
    assert result.returncode == 0, result.stderr
    sources = [line.split(",")[3] for line in result.stdout.splitlines()[1:]]
    assert sources == expected


@pytest.mark.parametrize("limit", ["-1", "0"])
def test_results_refuses_a_limit_below_one(limit: str, backend: str) -> None:
    _, result = run_cli("results", "--limit", limit)
    assert result.returncode != 0
    assert f"--limit must be at least 1, not {limit}" in result.stderr
    assert "db upgrade" not in result.stderr and "Traceback" not in result.stderr


def test_a_missing_schema_suggests_db_upgrade(home: Path) -> None:
    """A database file without digits' tables (no database at all is "no digits data
    here", tests/digits/cli/test_read_commands.py)."""
    import sqlite3

    home.mkdir(parents=True)
    with sqlite3.connect(home / "digits.db") as conn:
        conn.execute("CREATE TABLE other (x INTEGER)")
    _, missing = run_cli("results")
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert "no such table" in missing.stderr and "run `digits db upgrade` first" in missing.stderr


def test_an_older_schema_suggests_db_upgrade(backend: str) -> None:
    """A column the code reads but the database lacks (an upgrade not applied) is a schema
    problem on both backends: SQLite says "no such column", PostgreSQL "column … does not
    exist" (SQLSTATE 42703)."""
    from sqlalchemy import text

    from digits.core.db import get_engine

    with get_engine().begin() as conn:
        conn.execute(text("ALTER TABLE predictions DROP COLUMN margin"))
    _, behind = run_cli("results")
    assert behind.returncode != 0 and "Traceback" not in behind.stderr
    assert "margin" in behind.stderr and "run `digits db upgrade` first" in behind.stderr


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("postgresql+psycopg://root@127.0.0.1:1/nowhere", "127.0.0.1"),
        (
            "postgresql+psycopg://nosuchrole@127.0.0.1:5432/postgres",
            'role "nosuchrole" does not exist',
        ),
        ("postgresql+psycopg://root@127.0.0.1:5432/nosuchdb", 'database "nosuchdb" does not exist'),
    ],
    ids=["server-down", "unknown-role", "no-such-database"],
)
def test_a_database_error_gives_its_own_reason(url: str, said: str, home: Path) -> None:
    """Only a missing or older schema suggests `digits db upgrade`; another failure says what
    it is in the driver's own words (its first line, no SQL statement)."""
    _, down = run_cli("results", env={"DIGITS_DATABASE_URL": url})
    assert down.returncode != 0 and "Traceback" not in down.stderr
    assert "cannot read the database" in down.stderr and "db upgrade" not in down.stderr
    assert said in down.stderr and "SELECT" not in down.stderr
    assert len(down.stderr.splitlines()) == 1, down.stderr


def test_enqueue_records_a_huge_value_as_a_row_error_and_goes_on(
    backend: str, tmp_path: Path, sample_rows: list[str]
) -> None:
    """Issue 19 item 3: one value of 2**64 used to raise OverflowError out of the parser,
    leaving the batch `enqueueing` and never enqueueing the next file on the command line."""
    from sqlalchemy import select

    from digits.core.db import session
    from digits.core.schema import Batch, Item, ItemError

    huge = sample_rows[2].split(",")
    huge[6] = str(2**64)  # label first, so field 6 is pixel5
    first = tmp_path / "huge.csv"
    first.write_text(
        "\n".join([sample_rows[0], sample_rows[1], ",".join(huge), sample_rows[3]]) + "\n"
    )
    second = tmp_path / "next.csv"
    second.write_text("\n".join(sample_rows[:3]) + "\n")
    _, result = run_cli("enqueue", str(first), str(second))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    ids = [int(line) for line in result.stdout.split()]
    assert len(ids) == 2
    with session() as sess:
        batches = {
            b.id: (b.status, b.item_count, b.error_count)
            for b in sess.scalars(select(Batch).where(Batch.id.in_(ids)))
        }
        reasons = sess.execute(
            select(Item.batch_id, Item.source_ref, ItemError.reason).join(
                ItemError, ItemError.item_id == Item.id
            )
        ).all()
    assert [tuple(r) for r in reasons] == [
        (ids[0], "huge.csv:2", "row 2: pixel5 out of range 0–255: 18446744073709551616")
    ]
    assert batches[ids[0]][1:] == (3, 1) and batches[ids[1]][1:] == (2, 0)
    assert all(status != "enqueueing" for status, _, _ in batches.values()), batches


@pytest.mark.parametrize("command", ["worker", "web"])
def test_exit_with_parent_refuses_a_pid_that_is_not_the_parent(home: Path, command: str) -> None:
    """`--exit-with-parent PID` names the process that started this one; any other PID (here
    1, init) would leave a worker or console that never stops with its starter: refused in one
    line, before a worker or server starts."""
    result = subprocess.run(
        [sys.executable, "-m", "digits.cli", command, "--exit-with-parent", "1"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --exit-with-parent 1: that is not this process's parent (already gone?)"
    )
    assert "Traceback" not in result.stderr
