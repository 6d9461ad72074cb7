"""The registry's numbering across the bundled and the trained roots."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from model_store.registry import default_version, get_version, list_versions, shadowed_versions


def test_a_trained_version_with_a_bundled_number_is_reported_not_silently_swapped(
    home: Path,
) -> None:
    """A newer release bundling a number the user already trained under keeps the bundled one
    (every installation agrees on what vN is) and says which trained folder it hides."""
    bundled = default_version()
    clash = home / "models" / f"v{bundled.version}"
    shutil.copytree(bundled.path, clash)
    assert shadowed_versions() == [clash]
    assert get_version(bundled.version).bundled
    assert [v.version for v in list_versions()].count(bundled.version) == 1
    result = subprocess.run(
        [sys.executable, "-m", "digits.cli", "models", "list"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (
        f"warning: {clash} is hidden: this release bundles its own v{bundled.version}"
        in result.stderr
    )


def test_no_warning_without_a_clash(home: Path) -> None:
    assert shadowed_versions() == []


def test_the_package_bundles_exactly_one_model(home: Path) -> None:
    """One bundled model keeps the package small (each is 3-7 MB); the versions it replaced
    live in git history, and docs/models.md's table says how each was made."""
    bundled = [v for v in list_versions() if v.bundled]
    assert [v.version for v in bundled] == [default_version().version]
    assert bundled[0].model_file.stat().st_size < 10 * 2**20
