"""Issue 21 item 3: a command that only reads never creates state.

Run from a folder with no digits data, `digits status` used to say `cannot read the database
((sqlite3.OperationalError) no such table: batches)` and leave a `var/digits.db` behind.
Each read command now says where it looked and what to do, exits 1, and the folder stays
empty. Commands that describe model files (`models list`, `models show`) still work there,
without a database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def clean_env(tmp: Path) -> dict[str, str]:
    """No DIGITS_* variable and an empty user config folder: only the defaults apply."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGITS_")}
    env["XDG_CONFIG_HOME"] = str(tmp / "config")
    return env


def run_in(folder: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "digits.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=folder,
        timeout=60,
    )


READ_COMMANDS = [
    ["status"],
    ["status", "--batch", "1"],
    ["results"],
    ["export", "--batch", "1"],
    ["export", "--since-last"],
    ["report", "--batch", "1"],
    ["models", "history"],
    ["db", "check"],
    ["resume", "1"],
    ["cancel", "1"],
]


@pytest.mark.parametrize("args", READ_COMMANDS, ids=" ".join)
def test_a_read_command_in_an_empty_folder_creates_nothing_and_says_where_it_looked(
    args: list[str], tmp_path: Path
) -> None:
    here = tmp_path / "elsewhere"
    here.mkdir()
    done = run_in(here, clean_env(tmp_path), *args)
    assert done.returncode == 1, done.stderr
    assert done.stderr == (
        f"error: no digits data here (looked in {here / 'var' / 'digits.db'}); "
        "run `digits run …` or set DIGITS_HOME\n"
    )
    assert list(here.iterdir()) == []
    assert not (tmp_path / "config").exists()


@pytest.mark.parametrize("args", [["models", "list"], ["models", "show", "4"]], ids=" ".join)
def test_model_listings_work_without_a_database_and_create_nothing(
    args: list[str], tmp_path: Path
) -> None:
    here = tmp_path / "elsewhere"
    here.mkdir()
    done = run_in(here, clean_env(tmp_path), *args)
    assert done.returncode == 0, done.stderr
    assert "v4" in done.stdout
    assert list(here.iterdir()) == []


def test_status_finds_the_home_named_in_the_user_config_file(tmp_path: Path) -> None:
    """`home` in `$XDG_CONFIG_HOME/digits/digits.toml`: `digits status` from any folder
    reads that home (here not created yet: the message names it, and it stays absent)."""
    env = clean_env(tmp_path)
    config = tmp_path / "config" / "digits"
    config.mkdir(parents=True)
    (config / "digits.toml").write_text(f'home = "{tmp_path / "state"}"\n')
    here = tmp_path / "elsewhere"
    here.mkdir()
    done = run_in(here, env, "status")
    assert f"(looked in {tmp_path / 'state' / 'digits.db'})" in done.stderr, done.stderr
    assert list(here.iterdir()) == [] and not (tmp_path / "state").exists()
    assert run_in(here, env, "db", "upgrade").returncode == 0
    done = run_in(here, env, "status")
    assert done.returncode == 0, done.stderr
    assert "queue: 0 chunks queued" in done.stdout
    assert list(here.iterdir()) == [] and (tmp_path / "state" / "digits.db").is_file()
