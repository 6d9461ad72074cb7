"""The docs stay true: the README's commands run and CI runs its test command; the README stays
a short front door; docs/cli.md and docs/configuration.md cover every command, option and
setting; every relative link resolves; every section that left the README says where it went."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from digits.core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```bash\n(.*?)\n```", README, re.S)
CLI_DOC = (ROOT / "docs" / "cli.md").read_text()
CONFIG_DOC = (ROOT / "docs" / "configuration.md").read_text()
#: Every Markdown page a reader reaches from the README.
PAGES = sorted(
    [
        "README.md",
        "CONTRIBUTING.md",
        "CHANGELOG.md",
        *(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")),
    ]
)


def test_first_screen_gives_exactly_two_commands() -> None:
    first_screen = README.split("---")[0]
    commands = re.findall(r"```bash\n(.*?)\n```", first_screen, re.S)
    assert len(commands) == 2
    assert "digits run" in commands[0] and "pytest" in commands[1]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert BLOCKS[1] in ci


@pytest.mark.slow
def test_readme_main_job_scores_the_sample_and_writes_a_submission(
    home: Path, tmp_path: Path
) -> None:
    """The README's first command, minus the install (this environment is installed)."""
    command = BLOCKS[0].split("&& ")[-1].replace(".venv/bin/digits", "").split()
    assert command[:2] == ["run", "digits/samples/sample.csv.gz"]
    out = tmp_path / "submission.csv"
    result = subprocess.run(
        [sys.executable, "-m", "digits.cli", *command[:2], "--out", str(out), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert (summary["items"], summary["predicted"], summary["errors"]) == (200, 200, 0)
    assert summary["accuracy"] >= 0.98
    lines = out.read_text().splitlines()
    assert lines[0] == "ImageId,Label" and len(lines) == 201


def test_readme_is_a_short_front_door() -> None:
    """Issue 20: what it is, two commands, a tour, the inputs, the model, links; the rest is
    in docs/."""
    lines = len(README.splitlines())
    assert lines <= 200, f"README.md has {lines} lines; move details to docs/"


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_setting_is_documented(name: str) -> None:
    """In a row of docs/configuration.md's table, not just mentioned somewhere."""
    rows = [line for line in CONFIG_DOC.splitlines() if line.startswith("|")]
    assert any(f"`DIGITS_{name.upper()}`" in row for row in rows), name


def _cli_sections() -> dict[str, str]:
    """docs/cli.md's text under each ``### digits NAME`` heading, up to the next heading."""
    parts = re.split(r"^#{2,3} (.*)$", CLI_DOC, flags=re.M)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def test_every_command_is_documented() -> None:
    from typer.main import get_command

    from digits.cli import app

    names = list(get_command(app).commands)  # type: ignore[attr-defined]
    sections = _cli_sections()
    for name in names:
        assert f"digits {name}" in sections, f"docs/cli.md has no '### digits {name}'"
        assert f"digits {name}" in README, f"README's Commands table lacks digits {name}"
    documented = {t for t in sections if t.startswith("digits ")}
    assert documented <= {f"digits {n}" for n in names}, "docs/cli.md names an unknown command"


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
    """An option docs/cli.md never mentions is one a user cannot find without --help; it must be
    in its own command's section (``digits models show``'s in ``### digits models``)."""
    section = _cli_sections().get(" ".join(command.split()[:2]), "")
    assert any(re.search(rf"{re.escape(name)}(?![\w-])", section) for name in names), command


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but ``-`` and ``_`` dropped."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    return {_anchor(h) for h in re.findall(r"^#+ (.*)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_resolves(page: str) -> None:
    """Every ``[text](target)`` outside code blocks that is not a URL names a file that exists,
    and its ``#anchor``, if any, a heading of that file."""
    path = ROOT / page
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    broken = []
    for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        missing_anchor = (
            bool(anchor)
            and linked.suffix == ".md"
            and linked.exists()
            and anchor not in _anchors(linked)
        )
        if not linked.exists() or missing_anchor:
            broken.append(target)
    assert not broken, f"{page}: {broken}"


#: Where each section of the README of before issue 20 went: (its old heading, the file it
#: moved to, the heading it has there). Sections still in the README point at README.md.
MOVED = [
    (
        "## What happens when you run it",
        "docs/architecture.md",
        "## Data flow: what happens when you run it",
    ),
    (
        "### Embedded default vs distributed",
        "docs/operations.md",
        "## Embedded default vs distributed",
    ),
    ("## Commands", "docs/cli.md", "# Command line: every command and option"),
    ("## Commands", "README.md", "## Commands"),
    ("## Inputs", "README.md", "## Inputs"),
    ("## Model", "docs/models.md", "## The bundled version"),
    ("## Model", "docs/models.md", "## Training runs"),
    ("## Model", "README.md", "## The model"),
    (
        "**Why more members have not helped.**",
        "docs/models.md",
        "## Why more members have not helped",
    ),
    (
        "**Wall times depend on the CPU far more than on the core count.**",
        "docs/models.md",
        "## Wall times depend on the CPU far more than on the core count",
    ),
    ("**Validation split**", "docs/models.md", "## Validation split"),
    ("**Confidence**", "docs/models.md", "## Confidence"),
    ("## Performance", "docs/benchmark.md", "## Performance"),
    (
        "## Service mode, compose, nightly export",
        "docs/operations.md",
        "## Service mode, compose, nightly export",
    ),
    ("**Compose.**", "docs/operations.md", "### Compose"),
    ("### Nightly export", "docs/operations.md", "### Nightly export"),
    ("### Metrics", "docs/operations.md", "### Metrics"),
    ("### Reports", "docs/operations.md", "### Reports"),
    ("## Configuration", "docs/configuration.md", "# Configuration"),
    ("## Testing", "CONTRIBUTING.md", "## The full suite"),
    ("## Layout", "docs/architecture.md", "## Layers"),
]


@pytest.mark.parametrize(("old", "page", "heading"), MOVED, ids=lambda v: str(v))
def test_each_moved_section_has_its_new_home(old: str, page: str, heading: str) -> None:
    assert heading in (ROOT / page).read_text().splitlines(), f"{old!r} should be {page}: {heading}"


def test_the_readme_model_table_is_the_bundled_card() -> None:
    """The README's figures for the bundled version come from its card, not from memory."""
    cards = sorted(
        (ROOT / "model_store" / "versions").glob("v*/card.json"),
        key=lambda p: int(p.parent.name[1:]),
    )
    card = json.loads(cards[-1].read_text())
    clean, scans = card["validation"], card["scan_validation"]
    assert f"**v{card['version']}**" in README
    assert f"{clean['accuracy'] * 100:.2f} % ({clean['errors']} errors)" in README
    assert f"{scans['accuracy'] * 100:.2f} %" in README
    assert f"{card['parameters']:,} parameters" in README
    retrain = re.sub(r"--data \S+", "--data train.csv.gz", card["command"])
    assert f"`{retrain}`" in README
