"""Aliases move with an audit trail, and a rollback restores what was there before."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from model_store.aliases import (
    AliasChange,
    AliasError,
    alias_target,
    all_aliases,
    history,
    resolve_active,
    rollback,
    rollback_target,
    set_alias,
)
from model_store.registry import (
    ModelError,
    ModelVersion,
    default_version,
    register,
)
from tests.conftest import SAMPLE


def copy_of_default() -> ModelVersion:
    bundled = default_version()
    return register(
        bundled.model_file,
        {k: v for k, v in bundled.card.items() if k not in ("sha256", "version")},
    )


def moves(alias: str = "production") -> list[tuple[int | None, int, str]]:
    return [(m.from_version, m.to_version, m.reason) for m in history(alias)]


def test_history_records_every_move_and_rollback_restores_the_previous_version(
    backend: str,
) -> None:
    base = default_version().version
    two, three = copy_of_default().version, copy_of_default().version
    assert alias_target("production") is None and resolve_active().version == base

    first = set_alias("production", two, "candidate looked good")
    set_alias("production", three, "retrained")
    assert first.from_version == base  # the bundled default was what production served
    assert resolve_active().version == three
    assert moves() == [(two, three, "retrained"), (base, two, "candidate looked good")]
    assert all(m.created_at is not None for m in history("production"))

    back = rollback("production")
    assert (back.from_version, back.to_version, back.reason) == (three, two, "rollback")
    assert resolve_active().version == two
    assert rollback("production").to_version == base  # a second rollback goes further back
    assert resolve_active().version == base
    assert moves()[:2] == [(two, base, "rollback"), (three, two, "rollback")]
    with pytest.raises(AliasError, match="no earlier version to roll back to"):
        rollback("production")
    assert len(history("production")) == 4 and alias_target("production") == base


def test_unknown_version_is_refused_and_nothing_is_recorded(backend: str) -> None:
    two = copy_of_default().version
    set_alias("production", two, "first")
    with pytest.raises(AliasError, match=r"model version 999 does not exist \(known: .*"):
        set_alias("production", 999, "typo")
    assert alias_target("production") == two and len(history("production")) == 1


def test_aliases_are_independent_and_same_version_is_a_no_op(backend: str) -> None:
    two, three = copy_of_default().version, copy_of_default().version
    set_alias("candidate", three, "trial")
    set_alias("production", two, "release")
    assert set_alias("production", two, "again").moved is False
    assert moves("candidate") == [(None, three, "trial")]  # only production falls back
    assert len(history("production")) == 1
    assert all_aliases() == {two: ["production"], three: ["candidate"]}
    with pytest.raises(AliasError, match="never been set"):
        rollback("staging")
    with pytest.raises(AliasError, match="invalid alias name"):
        set_alias("prod uction", two)


def test_reading_aliases_before_the_schema_exists_is_empty(home: Path) -> None:
    assert alias_target("production") is None
    assert history("production") == [] and all_aliases() == {}


def move(src: int | None, dst: int, reason: str = "promote") -> AliasChange:
    return AliasChange("production", src, dst, reason, None)


@pytest.mark.parametrize(
    ("newest_first", "target"),
    [
        ([move(1, 2)], 1),
        ([move(2, 3), move(1, 2)], 2),
        ([move(3, 2, "rollback"), move(2, 3), move(1, 2)], 1),
        ([move(2, 1, "rollback"), move(3, 2, "rollback"), move(2, 3), move(1, 2)], None),
        ([move(2, 4), move(3, 2, "rollback"), move(2, 3), move(1, 2)], 2),
        ([move(None, 1)], None),
    ],
    ids=[
        "one-move",
        "two-moves",
        "after-a-rollback",
        "all-undone",
        "move-after-rollback",
        "first-set",
    ],
)
def test_rollback_undoes_moves_like_a_stack(
    newest_first: list[AliasChange], target: int | None
) -> None:
    assert rollback_target(newest_first) == target


def test_an_alias_naming_a_version_no_longer_installed_says_how_to_fix_it(backend: str) -> None:
    """A release drops an old bundled version (or someone deletes a trained one) that the
    production alias still names: scoring stops with the fix spelled out, not a bare lookup."""
    gone = copy_of_default()
    set_alias("production", gone.version, "release")
    shutil.rmtree(gone.path)
    with pytest.raises(
        ModelError,
        match=(
            rf"the production alias names version {gone.version}, which is not installed .*"
            rf"digits models promote {default_version().version}$"
        ),
    ):
        resolve_active()
    cli = [sys.executable, "-m", "digits.cli"]
    listed = subprocess.run(
        [*cli, "models", "list"], capture_output=True, text=True, env=dict(os.environ), timeout=60
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "warning: the production alias names" in listed.stderr, listed.stderr[-2000:]
    refused = subprocess.run(
        [*cli, "enqueue", str(SAMPLE)],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=60,
    )
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith("error: the production alias names version")
