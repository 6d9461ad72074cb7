"""The layers point one way: an import-linter contract (pyproject.toml) checked in CI, shown to
fail on a deliberate back-import, and no import cycle between files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["digits", "model_store", "worker", "scheduler", "migrations"]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(root), "PATH": ""},
    )


def test_the_layer_contract_is_kept() -> None:
    """lint-imports also follows imports inside functions: the contract covers them all."""
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "back_import", "broken"),
    [
        ("digits/core/settings.py", "import digits.cli", "digits.core.settings -> digits.cli"),
        ("worker/chunks.py", "import scheduler.batches", "worker.chunks -> scheduler.batches"),
        ("model_store/registry.py", "import worker.chunks", "model_store.registry -> worker"),
        ("worker/chunks.py", "import digits.app.runner", "worker.chunks -> digits.app.runner"),
    ],
)
def test_a_back_import_breaks_the_contract(
    module: str, back_import: str, broken: str, tmp_path: Path
) -> None:
    """The contract is not vacuous: one lower layer importing a higher one fails it."""
    for name in [*PACKAGES, "pyproject.toml"]:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(
                source,
                tmp_path / name,
                ignore=shutil.ignore_patterns("__pycache__", "*.keras", "*.csv.gz"),
            )
        else:
            shutil.copy(source, tmp_path / name)
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{back_import}  # deliberate back-import\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and broken in result.stdout, result.stdout[-3000:]
