"""What a new user trips over (issue 21 items 8, 10, 11): `status` columns and `--batch`,
which model is in production and why, `--version`, shell completion, and the order of
`digits --help`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import version as installed_version
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from digits.cli import app
from digits.core.db import session, upgrade
from digits.core.schema import Chunk
from model_store.registry import default_version
from scheduler.batches import enqueue_csv
from tests.conftest import write_csv

runner = CliRunner()
DIGITS = Path(sys.executable).with_name("digits")


def score_in_process(batch_id: int) -> None:
    from worker.chunks import process_chunk

    with session() as sess:
        ids = sess.scalars(select(Chunk.id).where(Chunk.batch_id == batch_id)).all()
    assert [process_chunk(c) for c in ids] == ["done"] * len(ids)


def cli(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_status_shows_elapsed_accuracy_flagged_and_only_the_batchs_exports(
    home: Path, tmp_path: Path, sample_rows: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from scheduler.export import export_batch

    monkeypatch.setenv("DIGITS_CONFIDENCE_THRESHOLD", "0.999")
    from digits.core.settings import get_settings

    get_settings.cache_clear()
    upgrade()
    labelled = enqueue_csv(write_csv(tmp_path / "labelled.csv", sample_rows[:21]))
    unlabelled_lines = [sample_rows[0].split(",", 1)[1]] + [
        line.split(",", 1)[1] for line in sample_rows[21:26]
    ]
    unlabelled = enqueue_csv(write_csv(tmp_path / "unlabelled.csv", unlabelled_lines))
    for batch in (labelled, unlabelled):
        score_in_process(batch.batch_id)
        export_batch(batch.batch_id, tmp_path / f"sub-{batch.batch_id}.csv")
    [first, second] = __import__("digits.core.queries").core.queries.batch_progress()
    table = cli("status")
    header = next(line for line in table.splitlines() if "batch" in line and "status" in line)
    for column in ("elapsed", "flagged", "accuracy"):
        assert column in header, header
    row = {
        b: next(line for line in table.splitlines() if re.match(rf"\W*{b}\W", line))
        for b in (labelled.batch_id, unlabelled.batch_id)
    }
    assert f"{first.correct / first.labelled:.1%}" in row[labelled.batch_id]
    assert re.search(rf"│ +{first.flagged} +│", row[labelled.batch_id]), row
    assert re.search(rf"│ +{second.flagged} +│", row[unlabelled.batch_id]), row
    assert "│ -" in row[unlabelled.batch_id]  # no labels: no accuracy
    only = cli("status", "--batch", str(labelled.batch_id))
    exports = [line for line in only.splitlines() if line.startswith("export:")]
    assert exports and all(f"batch {labelled.batch_id} " in line for line in exports), only
    data = __import__("json").loads(cli("status", "--json"))
    assert [b["flagged"] for b in data["batches"]] == [first.flagged, second.flagged]
    assert data["batches"][0]["accuracy"] == pytest.approx(first.correct / first.labelled)
    assert data["batches"][1]["accuracy"] is None


def test_production_is_said_plainly_when_no_alias_is_set(home: Path) -> None:
    """Every batch uses the bundled default while `production` was never set: list, show,
    history and status say so, instead of `aliases -` and "never set"."""
    upgrade()
    v = default_version().version
    listing = cli("models", "list")
    lines = listing.splitlines()
    assert lines[0].split()[:2] == ["version", "aliases"], listing
    assert any(line.startswith(f"* v{v}") for line in lines), listing
    legend = lines[-1]
    assert legend.startswith("* in production"), listing
    assert f"v{v}" in legend and "bundled default" in legend and "no production alias" in legend
    shown = cli("models", "show", str(v))
    assert re.search(rf"production +yes: new batches use v{v}, the bundled default", shown), shown
    history = cli("models", "history")
    assert f"production has never been set: new batches use v{v}, the bundled default" in history
    status = cli("status")
    assert f"production model: v{v} (the bundled default; no production alias is set)" in status


def test_production_names_the_alias_once_it_is_set(home: Path) -> None:
    from model_store.aliases import set_alias

    upgrade()
    v = default_version().version
    set_alias("production", v, "pinned on purpose")
    legend = cli("models", "list").splitlines()[-1]
    assert legend.startswith("* in production") and "production alias" in legend
    assert "bundled default" not in legend
    shown = cli("models", "show", str(v))
    assert re.search(
        rf"production +yes: new batches use v{v}, named by the production alias", shown
    )
    assert f"production model: v{v} (named by the production alias)" in cli("status")
    assert cli("models", "history").splitlines()[0] == (
        f"new batches use v{v} (named by the production alias)"
    )


def test_version_flag_prints_the_installed_version(home: Path) -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"digits {installed_version('digits')}"


def test_shell_completion_is_available(home: Path) -> None:
    """Typer's --install-completion and --show-completion are switched on."""
    help_text = cli("--help")
    assert "--install-completion" in help_text and "--show-completion" in help_text
    script = subprocess.run(
        [str(DIGITS), "--show-completion", "bash"],
        capture_output=True,
        text=True,
        # Typer looks for a shell among the process's ancestors first and, finding none (a
        # test run started with nohup or setsid), no longer takes the shell named here:
        # "Shell  not supported". Its own switch makes it take the name, as in a terminal.
        env=dict(os.environ) | {"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"},
        timeout=60,
    )
    assert script.returncode == 0, script.stderr
    assert "_DIGITS_COMPLETE" in script.stdout and "complete " in script.stdout


def test_help_lists_the_everyday_commands_first(home: Path) -> None:
    text = cli("--help")
    names = re.findall(r"^│ (\w[\w-]*) ", text, re.M)
    assert names[:4] == ["run", "status", "results", "export"], names
    assert text.index("Everyday") < text.index("Service") < text.index("Maintenance")
