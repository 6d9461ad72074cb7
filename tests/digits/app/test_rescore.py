"""Re-scoring a finished batch adds the new version's predictions beside the pinned ones and
reports how far the two agree, for CSV and image batches, on both deployments."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from digits.app.rescore import RescoreError, rescore
from digits.core.db import session
from digits.core.schema import Chunk, Item, Prediction
from model_store.registry import ModelVersion, default_version, register
from tests.conftest import SAMPLE, write_csv


@pytest.fixture(autouse=True)
def empty_model_cache() -> Iterator[None]:
    """Version numbers restart in every test's fresh home: never reuse another test's model."""
    from model_store.inference import evict_idle

    evict_idle(max_idle=-1)
    yield
    evict_idle(max_idle=-1)


def fitted_mlp(tmp: Path) -> ModelVersion:
    """A truly different model: the origin's MLP after one epoch on the 200 sample rows."""
    import keras

    from digits.core.csv_input import read_labelled
    from digits.core.preprocess import rows_to_tensor
    from model_store.architectures import build_mlp

    keras.utils.set_random_seed(0)
    pixels, labels = read_labelled(SAMPLE)
    model = build_mlp()
    model.compile("rmsprop", "sparse_categorical_crossentropy")
    model.fit(rows_to_tensor(pixels), labels, epochs=1, batch_size=32, verbose=0)
    path = tmp / "mlp.keras"
    model.save(path)
    return register(path, {"architecture": "mlp", "validation": {"accuracy": 0.0}})


def scored_batch(kind: str, sample_rows: list[str], tmp: Path, rows: int = 120) -> int:
    """A finished batch pinned to the default version, scored in-process chunk by chunk."""
    from scheduler.batches import enqueue_csv, enqueue_files, image_files
    from worker.chunks import process_chunk

    if kind == "csv":
        done = enqueue_csv(write_csv(tmp / "digits.csv", sample_rows[: rows + 1]), chunk_size=50)
    else:
        folder = tmp / "scans"
        folder.mkdir()
        for i, line in enumerate(sample_rows[1 : rows + 1], start=1):
            pixels = np.array(line.split(",")[1:], dtype=np.uint8).reshape(28, 28)
            Image.fromarray(255 - pixels).save(folder / f"scan{i:03}.png")  # dark ink on paper
        done = enqueue_files(folder, image_files(folder), chunk_size=50)
    with session() as sess:
        chunk_ids = sess.scalars(select(Chunk.id).where(Chunk.batch_id == done.batch_id)).all()
    assert [process_chunk(c) for c in chunk_ids] == ["done"] * len(chunk_ids)
    return done.batch_id


def predictions(batch_id: int, version: int) -> dict[int, tuple[int, float]]:
    with session() as sess:
        return {
            r.item_id: (r.label, r.confidence)
            for r in sess.execute(
                select(Prediction.item_id, Prediction.label, Prediction.confidence)
                .join(Item, Item.id == Prediction.item_id)
                .where(Item.batch_id == batch_id, Prediction.model_version == version)
            )
        }


@pytest.mark.parametrize("kind", ["csv", "images"])
def test_rescore_adds_predictions_beside_the_old_ones_and_reports_agreement(
    kind: str,
    backend: str,
    sample_rows: list[str],
    tmp_path: Path,
) -> None:
    old_version = default_version().version
    batch_id = scored_batch(kind, sample_rows, tmp_path)
    before = predictions(batch_id, old_version)
    assert len(before) == 120
    new_version = fitted_mlp(tmp_path).version
    seen: list[tuple[int, int]] = []

    result = rescore(batch_id, new_version, lambda done, total: seen.append((done, total)))

    after_old, new = predictions(batch_id, old_version), predictions(batch_id, new_version)
    assert after_old == before  # the pinned version's rows are untouched
    assert set(new) == set(before) and result.written == 120
    assert (result.old_version, result.new_version) == (old_version, new_version)
    assert result.compared == 120 and result.unreadable == 0
    changed = {item_id for item_id in new if new[item_id][0] != before[item_id][0]}
    assert result.agreeing == 120 - len(changed) and changed  # a weak MLP disagrees somewhere
    assert {c.item_id for c in result.changed} == changed
    for c in result.changed:
        assert (c.old_label, c.new_label) == (before[c.item_id][0], new[c.item_id][0])
        assert c.old_confidence == pytest.approx(before[c.item_id][1])
        assert c.new_confidence == pytest.approx(new[c.item_id][1])
    assert [c.position for c in result.changed] == sorted(c.position for c in result.changed)
    assert result.agreement == pytest.approx(result.agreeing / 120)
    if kind == "csv":
        assert result.labelled == 120 and result.old_correct > result.new_correct
    assert seen[0] == (0, 120) and seen[-1] == (120, 120)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)

    again = rescore(batch_id, new_version)  # idempotent: nothing added, same verdict
    assert again.written == 0 and again.as_dict() | {"written": 120} == result.as_dict()


def test_missing_image_is_reported_not_fatal(
    home: Path, sample_rows: list[str], tmp_path: Path
) -> None:
    from digits.core.db import upgrade

    upgrade()
    batch_id = scored_batch("images", sample_rows, tmp_path, rows=20)
    (tmp_path / "scans" / "scan007.png").unlink()
    result = rescore(batch_id, fitted_mlp(tmp_path).version)
    assert (result.compared, result.unreadable, result.written) == (19, 1, 19)


def test_rescore_refuses_what_it_cannot_compare(
    home: Path, sample_rows: list[str], tmp_path: Path
) -> None:
    from digits.core.db import upgrade
    from scheduler.batches import enqueue_csv

    upgrade()
    old_version = default_version().version
    batch_id = scored_batch("csv", sample_rows, tmp_path, rows=10)
    unfinished = enqueue_csv(write_csv(tmp_path / "later.csv", sample_rows[:6])).batch_id
    other = fitted_mlp(tmp_path).version
    cases = [
        (999, other, "batch 999 does not exist"),
        (batch_id, old_version, f"scored by v{old_version} already"),
        (unfinished, other, f"batch {unfinished} is running"),
        (batch_id, 999, "model version 999 does not exist"),
    ]
    for batch, version, message in cases:
        with pytest.raises(RescoreError, match=message):
            rescore(batch, version)


def test_cli_rescore_prints_agreement_and_changed_items(
    home: Path, sample_rows: list[str], tmp_path: Path
) -> None:
    import json

    from typer.testing import CliRunner

    from digits.cli import app
    from digits.core.db import upgrade

    upgrade()
    batch_id = scored_batch("csv", sample_rows, tmp_path, rows=40)
    version = fitted_mlp(tmp_path).version
    runner = CliRunner()
    text = runner.invoke(
        app, ["rescore", "--batch", str(batch_id), "--model", str(version), "--quiet"]
    )
    assert text.exit_code == 0, text.output
    assert f"batch {batch_id}: v{default_version().version} vs v{version}:" in text.stdout
    assert "items agree" in text.stdout and "accuracy on 40 labelled items" in text.stdout
    data = json.loads(
        runner.invoke(
            app, ["rescore", "--batch", str(batch_id), "--model", str(version), "--json"]
        ).stdout
    )
    assert data["compared"] == 40 and data["written"] == 0
    assert len(data["changed"]) == 40 - data["agreeing"]
    assert sum(line.startswith("  item ") for line in text.stdout.splitlines()) == min(
        50, len(data["changed"])
    )
    refused = runner.invoke(app, ["rescore", "--batch", "999", "--model", str(version)])
    assert refused.exit_code == 1 and "error: batch 999 does not exist" in refused.stderr
