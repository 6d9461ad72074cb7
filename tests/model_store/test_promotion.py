"""Checked promotion: tampered or worse models never reach production by accident, better or
equal ones do, and a live worker switches versions between batches without a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from digits.core.db import session
from digits.core.schema import Batch, Chunk, Item, Prediction
from model_store.aliases import alias_target, history, resolve_active
from model_store.promotion import DEFAULT_TOLERANCE, PromotionError, promote
from model_store.registry import ModelVersion, default_version, register
from tests.conftest import write_csv


@pytest.fixture
def db(home: Path) -> Path:
    """The embedded deployment, migrated (promotion needs no services)."""
    from digits.core.db import upgrade

    upgrade()
    return home


def copy_of_default() -> ModelVersion:
    bundled = default_version()
    return register(
        bundled.model_file,
        {k: v for k, v in bundled.card.items() if k not in ("sha256", "version")},
    )


def untrained_mlp(tmp: Path) -> ModelVersion:
    """The origin's MLP with seeded random weights: loads fine, scores near chance."""
    import keras

    from model_store.architectures import build_mlp

    keras.utils.set_random_seed(0)
    path = tmp / "untrained.keras"
    build_mlp().save(path)
    return register(path, {"architecture": "mlp", "validation": {"accuracy": 0.1}})


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("force", [False, True], ids=["plain", "forced"])
def test_tampered_model_is_refused_even_with_force(force: bool, db: Path) -> None:
    version = copy_of_default()
    flip_byte(version.model_file)
    with pytest.raises(PromotionError, match="sha256 mismatch"):
        promote(version.version, force=force)
    assert alias_target("production") is None and history("production") == []


def test_worse_model_is_refused_unless_forced(db: Path, tmp_path: Path) -> None:
    worse = untrained_mlp(tmp_path).version
    base = default_version().version
    with pytest.raises(
        PromotionError,
        match=rf"golden accuracy .* is below production "
        rf"v{base}'s .* use --force",
    ):
        promote(worse)
    assert resolve_active().version == base and history("production") == []

    result = promote(worse, force=True, reason="emergency test")
    assert result.forced and result.moved and result.previous == base
    assert result.baseline_accuracy is not None and result.accuracy < result.baseline_accuracy
    assert resolve_active().version == worse
    [entry] = history("production")
    assert (entry.from_version, entry.to_version) == (base, worse)
    assert entry.reason.startswith("emergency test") and entry.reason.endswith("[forced]")


@pytest.mark.parametrize(
    "start", ["default", "worse"], ids=["equal-to-production", "better-than-production"]
)
def test_equal_or_better_model_moves_the_alias(start: str, db: Path, tmp_path: Path) -> None:
    if start == "worse":
        promote(untrained_mlp(tmp_path).version, force=True)
    before = resolve_active().version
    candidate = copy_of_default().version
    result = promote(candidate, tolerance=0.0)
    assert result.moved and not result.forced and result.previous == before
    assert result.golden_rows == 200
    assert result.baseline_accuracy is not None and result.accuracy >= result.baseline_accuracy
    assert resolve_active().version == candidate
    assert history("production")[0].to_version == candidate


def test_unknown_version_and_other_alias(db: Path) -> None:
    with pytest.raises(PromotionError, match="model version 999 does not exist"):
        promote(999)
    candidate = copy_of_default().version
    result = promote(candidate, alias="candidate")
    assert result.previous is None and result.baseline_accuracy is None  # nothing to regress
    assert alias_target("candidate") == candidate and alias_target("production") is None


def default_with_held_out_errors(extra: int, **card: Any) -> ModelVersion:
    """The bundled model registered again under a card that claims ``extra`` more held-out
    errors than the bundled card (and any other ``card`` fields): the held-out gate reads
    cards, and the golden gate sees the same model, so only the held-out gate can differ."""
    bundled = default_version()
    validation = bundled.card["validation"]
    errors = validation["errors"] + extra
    return register(
        bundled.model_file,
        {
            **{k: v for k, v in bundled.card.items() if k not in ("sha256", "version")},
            "validation": {
                **validation,
                "errors": errors,
                "accuracy": 1 - errors / validation["count"],
            },
            **card,
        },
    )


def test_held_out_gate_refuses_a_card_below_the_target_unless_forced(db: Path) -> None:
    base = default_version()
    rows = base.card["validation"]["count"]
    beyond = int(DEFAULT_TOLERANCE * rows) + 1  # one error more than the tolerance allows
    worse = default_with_held_out_errors(beyond)
    claimed = worse.card["validation"]["accuracy"]
    with pytest.raises(PromotionError) as refused:
        promote(worse.version)
    message = str(refused.value)
    assert "held-out accuracy" in message and "use --force" in message
    assert f"{claimed:.2%}" in message and f"{base.card['validation']['accuracy']:.2%}" in message
    assert history("production") == []

    result = promote(worse.version, force=True, reason="held-out test")
    assert result.moved and result.forced and result.overridden == ("held-out",)
    assert result.accuracy == result.baseline_accuracy  # the same model on the golden set
    assert result.held_out_accuracy == claimed and result.held_out_rows == rows
    assert result.baseline_held_out_accuracy == base.card["validation"]["accuracy"]
    assert history("production")[0].reason.endswith("[forced]")


def test_held_out_gate_within_tolerance_and_when_not_comparable(db: Path) -> None:
    base = default_version()
    within = default_with_held_out_errors(int(DEFAULT_TOLERANCE * base.card["validation"]["count"]))
    result = promote(within.version)
    assert result.moved and not result.forced and result.note == ""
    assert result.held_out_accuracy == within.card["validation"]["accuracy"]
    assert result.baseline_held_out_accuracy == base.card["validation"]["accuracy"]

    other_file = default_with_held_out_errors(
        100, training_data={**base.card["training_data"], "sha256": "0" * 64}
    )
    result = promote(other_file.version)
    assert result.moved and not result.forced and result.baseline_held_out_accuracy is None
    assert result.note.startswith("no held-out comparison:") and "different files" in result.note


runner = CliRunner()


def test_cli_refusal_is_one_red_line_without_traceback(db: Path, tmp_path: Path) -> None:
    from digits.cli import app

    tampered = copy_of_default()
    flip_byte(tampered.model_file)
    worse = untrained_mlp(tmp_path).version
    for args in (
        ["models", "promote", str(tampered.version), "--force"],
        ["models", "promote", str(worse)],
        ["models", "promote", str(default_with_held_out_errors(100).version)],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "refusing to promote" in errors[0], result.stderr
        assert "Traceback" not in result.output and result.stdout == ""


def test_cli_promote_history_rollback_show_and_list(db: Path) -> None:
    from digits.cli import app

    base = default_version().version
    candidate = copy_of_default().version
    promoted = runner.invoke(app, ["models", "promote", str(candidate), "--reason", "release"])
    assert promoted.exit_code == 0, promoted.output
    assert f"production → v{candidate} (was v{base})" in promoted.stdout
    listed = runner.invoke(app, ["models", "list"])
    [row] = [line for line in listed.stdout.splitlines() if line.startswith(f"* v{candidate} ")]
    assert row.split()[2] == "production", listed.stdout
    shown = runner.invoke(app, ["models", "show", str(candidate)])
    assert shown.exit_code == 0 and "integrity         ok" in shown.stdout
    assert "per-class acc." in shown.stdout and "validation        accuracy" in shown.stdout
    training = default_version().card["training"]
    assert f"augmentation      {training['augmentation']}" in shown.stdout
    smoothing = training.get("label_smoothing")  # named only when the model was trained with it
    assert (f"label smoothing {smoothing}, " in shown.stdout) == bool(smoothing)
    hist = runner.invoke(app, ["models", "history"])
    assert f"v{base} → v{candidate}" in hist.stdout and "release" in hist.stdout
    back = runner.invoke(app, ["models", "rollback"])
    assert back.exit_code == 0 and f"v{candidate} → v{base} (rollback)" in back.stdout
    assert resolve_active().version == base
    again = runner.invoke(app, ["models", "rollback"])
    assert again.exit_code == 1 and "no earlier version" in again.stderr
    missing = runner.invoke(app, ["models", "show", "999"])
    assert missing.exit_code == 1 and "does not exist" in missing.stderr


def version_counts(batch_id: int) -> dict[int, int]:
    with session() as sess:
        return dict(
            sess.execute(
                select(Prediction.model_version, func.count())
                .join(Item, Item.id == Prediction.item_id)
                .where(Item.batch_id == batch_id)
                .group_by(Prediction.model_version)
            ).all()
        )


def test_hot_swap_with_a_live_worker(
    backend: str, worker_factory: Any, sample_rows: list[str], tmp_path: Path
) -> None:
    """Promote between two batches: each keeps its pinned version, the same process serves
    both (one prefork child, so the swap happens inside it), nothing fails or restarts."""
    from digits.app.runner import wait_for
    from scheduler.batches import enqueue_csv

    source = write_csv(tmp_path / "digits.csv", sample_rows[:121])
    version_a = resolve_active().version
    version_b = copy_of_default().version
    worker = worker_factory(concurrency=1)
    worker.wait_ready()
    children = worker.children()

    first = enqueue_csv(source, chunk_size=40)
    assert promote(version_b).moved
    second = enqueue_csv(source, chunk_size=40)
    states = wait_for([first.batch_id, second.batch_id], timeout=180)

    assert [s.status for s in states] == ["done", "done"], worker.tail()
    assert [(s.predicted, s.errors, s.pending) for s in states] == [(120, 0, 0)] * 2
    assert [s.model_version for s in states] == [version_a, version_b]
    assert version_counts(first.batch_id) == {version_a: 120}
    assert version_counts(second.batch_id) == {version_b: 120}
    with session() as sess:
        chunks = sess.execute(
            select(Chunk.state, Chunk.attempts)
            .join(Batch)
            .where(Batch.id.in_([first.batch_id, second.batch_id]))
        ).all()
    assert {tuple(c) for c in chunks} == {("done", 1)}  # no failed or retried chunk
    assert worker.proc.poll() is None and worker.children() == children, worker.tail()
