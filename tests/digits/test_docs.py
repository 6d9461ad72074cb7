"""The README stays true: its commands run, CI runs its test command, its tables are complete."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from digits.settings import Settings

ROOT = Path(__file__).resolve().parent.parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```bash\n(.*?)\n```", README, re.S)


def test_first_screen_gives_exactly_two_commands() -> None:
    first_screen = README.split("---")[0]
    commands = re.findall(r"```bash\n(.*?)\n```", first_screen, re.S)
    assert len(commands) == 2
    assert "digits run" in commands[0] and "pytest" in commands[1]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert BLOCKS[1] in ci


def test_readme_main_job_scores_the_sample_and_writes_a_submission(home: Path,
                                                                    tmp_path: Path) -> None:
    """The README's first command, minus the install (this environment is installed)."""
    command = BLOCKS[0].split("&& ")[-1].replace(".venv/bin/digits", "").split()
    assert command[:2] == ["run", "digits/samples/sample.csv.gz"]
    out = tmp_path / "submission.csv"
    result = subprocess.run(
        [sys.executable, "-m", "digits.cli", *command[:2], "--out", str(out), "--json"],
        cwd=ROOT, capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert (summary["items"], summary["predicted"], summary["errors"]) == (200, 200, 0)
    assert summary["accuracy"] >= 0.98
    lines = out.read_text().splitlines()
    assert lines[0] == "ImageId,Label" and len(lines) == 201


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_setting_is_documented(name: str) -> None:
    assert f"DIGITS_{name.upper()}" in README


def test_every_command_is_documented() -> None:
    from typer.main import get_command

    from digits.cli import app

    group = get_command(app)
    for name in group.commands:  # type: ignore[attr-defined]
        assert f"digits {name}" in README, name


def _commands() -> list[tuple[str, list[str]]]:
    """Every (command path, one option's long names), subcommands included, from the CLI
    itself; a flag's names are its pair, e.g. ``--scans`` / ``--no-scans``."""
    from typer.main import get_command

    from digits.cli import app

    found: list[tuple[str, list[str]]] = []

    def walk(command: Any, path: str) -> None:  # Typer vendors its own Click: duck-typed
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}")
            return
        for param in command.params:
            names = [o for o in (*param.opts, *param.secondary_opts) if o.startswith("--")]
            if param.param_type_name == "option" and names and "--help" not in names:
                found.append((path, names))

    walk(get_command(app), "digits")
    return found


@pytest.mark.parametrize(("command", "names"), _commands(), ids=lambda v: str(v))
def test_every_option_is_documented(command: str, names: list[str]) -> None:
    """An option the README never mentions is one a user cannot find without --help."""
    assert any(re.search(rf"{re.escape(name)}(?![\w-])", README) for name in names), command
