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


# ---------------------------------------------------------------- digits.toml (issue 21 item 3)
def config_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A current folder and a user config folder of our own (returned: where each
    digits.toml goes); no DIGITS_* variable set."""
    for key in list(os.environ):
        if key.startswith("DIGITS_") and not key.startswith("DIGITS_TEST_"):
            monkeypatch.delenv(key)
    here = tmp_path / "here"
    user = tmp_path / "xdg" / "digits"
    here.mkdir()
    user.mkdir(parents=True)
    monkeypatch.chdir(here)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return here / "digits.toml", user / "digits.toml"


@pytest.mark.parametrize(
    ("env", "cwd_file", "user_file", "expected"),
    [
        (None, None, None, 1000),
        (None, None, 300, 300),
        (None, 200, 300, 200),
        (None, 200, None, 200),
        ("100", 200, 300, 100),
        ("100", None, 300, 100),
    ],
)
def test_settings_precedence_env_then_current_folder_then_user_config_then_default(
    env: str | None,
    cwd_file: int | None,
    user_file: int | None,
    expected: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from digits.core.settings import Settings

    here, user = config_dirs(tmp_path, monkeypatch)
    if env is not None:
        monkeypatch.setenv("DIGITS_CHUNK_SIZE", env)
    if cwd_file is not None:
        here.write_text(f"chunk_size = {cwd_file}\n")
    if user_file is not None:
        user.write_text(f"chunk_size = {user_file}\nworkers = 3\n")
    settings = Settings()
    assert settings.chunk_size == expected
    assert settings.workers == (3 if user_file is not None else 2)  # files merge key by key


def test_relative_paths_in_a_config_file_are_relative_to_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """So `home = "state"` in ~/.config/digits/digits.toml names one place, whatever the
    current folder; `~` is the user's home."""
    from digits.core.settings import Settings

    here, user = config_dirs(tmp_path, monkeypatch)
    user.write_text('home = "state"\ninbox = "~/drop"\n')
    settings = Settings()
    assert settings.home == user.parent / "state"
    assert settings.inbox == Path.home() / "drop"
    here.write_text('home = "var2"\n')
    assert Settings().home == here.parent / "var2"


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("chunk_sise = 5\n", "unknown key 'chunk_sise' (did you mean 'chunk_size'?)"),
        ("DIGITS_HOME = '/x'\n", "unknown key 'DIGITS_HOME' (did you mean 'home'?)"),
        ("chunk_size = 0\n", "chunk_size: Input should be greater than or equal to 1"),
        (
            "workers = 'many'\n",
            ("workers: Input should be a valid integer, unable to parse string as an integer"),
        ),
        ("home = \n", "not valid TOML: Invalid value (at line 1, column 8)"),
        ("[export]\nhour = 3\n", "unknown key 'export' (did you mean 'export_dir'?)"),
    ],
)
def test_a_bad_config_file_is_one_line_naming_the_file_and_key(
    text: str, said: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here, _ = config_dirs(tmp_path, monkeypatch)
    here.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "digits.cli", "status"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        cwd=here.parent,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"error: {here}: {said}\n"
