"""The learning-rate schedule and its fit to the time limit (``model_store.schedule``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model_store.registry import list_versions
from model_store.schedule import (
    PEAK_LEARNING_RATE,
    fitted_epochs,
    learning_rate,
    member_deadlines,
    pace,
    teacher_share,
)
from tests.conftest import SAMPLE


@pytest.mark.parametrize("step", [0, 1, 149, 295, 296, 297, 1000, 5000, 14799, 15095])
def test_unshortened_schedule_is_keras_cosine_decay_with_warmup(step: int) -> None:
    """Versions 1-3 trained with Keras' CosineDecay; an unshortened schedule is the same."""
    import keras

    steps, epochs = 296, 50  # v3's recipe: 37,800 rows in batches of 128
    keras_schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=steps * epochs, warmup_target=PEAK_LEARNING_RATE, warmup_steps=steps
    )
    assert learning_rate(step, steps, epochs) == pytest.approx(
        float(keras_schedule(step)), rel=1e-5, abs=1e-9
    )


@pytest.mark.parametrize(
    ("done", "pace", "remaining", "expected"),
    [
        (2, 60.0, 48 * 60.0, 50),  # the rest fits exactly: as planned
        (2, 60.0, 100 * 60.0, 50),  # time to spare: never more than planned
        (2, 120.0, 48 * 60.0, 26),  # twice as slow: 24 more epochs fit
        (2, 120.0, 119.0, 2),  # not one more epoch fits: stop now
        (10, 60.0, -5.0, 10),  # past the deadline: stop now
        (20, 130.0, 6 * 125.0, 25),  # slower than expected late on: one epoch less
        (20, 100.0, 60 * 100.0, 50),  # the pace recovered: back to the plan
    ],
)
def test_fitted_epochs(done: int, pace: float, remaining: float, expected: int) -> None:
    assert fitted_epochs(50, done, pace, remaining) == expected


@pytest.mark.parametrize(
    ("ends", "expected"),
    [
        ([], None),
        ([40.0], None),  # the first epoch alone (it also traced the graph): no pace yet
        ([40.0, 70.0], 30.0),
        ([40.0, 85.0, 130.0, 160.0, 190.0, 220.0], 30.0),  # slow start forgotten
        ([40.0, 70.0, 100.0, 160.0], 40.0),  # a slow epoch counts while it is recent
    ],
)
def test_pace_is_measured_over_the_recent_epochs(ends: list[float], expected: float | None) -> None:
    assert pace(ends) == expected


@pytest.mark.parametrize(
    ("members", "jobs", "expected"),
    [
        (1, 1, [60]),
        (2, 2, [60, 60]),  # one wave: the whole limit each
        (4, 2, [30, 30, 60, 60]),  # two waves: half each
        (3, 2, [30, 30, 60]),  # the last wave is not full
        (3, 1, [20, 40, 60]),  # one at a time (in-process training)
        (2, 5, [60, 60]),  # more jobs than members: one wave
    ],
)
def test_member_deadlines_share_the_limit_between_waves(
    members: int, jobs: int, expected: list[int]
) -> None:
    assert member_deadlines(1000.0, 60.0, members, jobs) == pytest.approx(
        [1000.0 + e for e in expected]
    )


@pytest.mark.slow
def test_schedule_shortened_by_the_time_limit_still_anneals(home: Path) -> None:
    """5,000 planned epochs in 30 s: the member ends its schedule when the time is up, at a
    low rate; cutting the 5,000-epoch schedule off there would leave it near the peak.
    (500 epochs of the 180-row sample fitted in 30 s on a 2-core Zen 5 VM: the plan must be
    out of reach on any machine.)"""
    new = list_versions()[-1].version + 1
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "digits.cli",
            "train",
            "--data",
            str(SAMPLE),
            "--arch",
            "cnn-lite",
            "--epochs",
            "5000",
            "--max-minutes",
            "0.5",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    card = json.loads((home / "models" / f"v{new}" / "card.json").read_text())
    training = card["training"]
    (member,) = training["members"]
    assert training["epochs_planned"] == 5000 and training["stopped_by_time_limit"]
    assert 2 <= member["epochs_run"] == member["schedule_epochs"] < 5000
    assert member["final_learning_rate"] < 0.5 * PEAK_LEARNING_RATE
    assert "schedule_epochs" in training["optimizer"]
    # Without a terminal, one line per epoch: its total follows the fitted schedule, so the
    # last line is a full bar (180 training rows in batches of 128: 2 steps per epoch).
    epochs = member["epochs_run"]
    last = [line for line in result.stderr.splitlines() if " steps  epoch " in line][-1]
    assert f"] {2 * epochs}/{2 * epochs} steps  epoch {epochs}/{epochs}: " in last


@pytest.mark.slow
def test_members_beyond_jobs_get_their_share_of_the_time_limit(home: Path) -> None:
    """Two members one at a time under a 60-s limit: each fits its schedule to its 30 s,
    so the second member trains too (with one deadline for both, the first would fit its
    schedule to all 60 s and the second would never start). Not 30 s: on a loaded AVX2 VM
    a member's start-up (TensorFlow import, build, first trace) took most of a 15-s share."""
    new = list_versions()[-1].version + 1
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "digits.cli",
            "train",
            "--data",
            str(SAMPLE),
            "--arch",
            "cnn-lite",
            "--ensemble",
            "2",
            "--jobs",
            "1",
            "--epochs",
            "5000",
            "--max-minutes",
            "1",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    card = json.loads((home / "models" / f"v{new}" / "card.json").read_text())
    training = card["training"]
    assert card["architecture"] == "ensemble of 2 cnn-lite"
    assert [m["member"] for m in training["members"]] == [1, 2]
    for member in training["members"]:
        assert 2 <= member["epochs_run"] == member["schedule_epochs"] < 5000
        assert member["final_learning_rate"] < 0.5 * PEAK_LEARNING_RATE
    assert "equal share" in training["optimizer"]


@pytest.mark.parametrize(
    ("teacher_epochs", "teacher_rows", "student_epochs", "student_rows", "share"),
    [
        (15, 37_800, 50, 65_800, 567 / (567 + 3_290)),  # docs/models.md's pseudo-label run
        (10, 100, 10, 100, 0.5),  # equal work, equal time
        (10, 100, 30, 100, 0.25),
        (10, 100, 10, 300, 0.25),  # more rows for the students weigh like more epochs
    ],
)
def test_teachers_get_their_share_of_the_planned_work(
    teacher_epochs: int, teacher_rows: int, student_epochs: int, student_rows: int, share: float
) -> None:
    assert teacher_share(
        teacher_epochs, teacher_rows, student_epochs, student_rows
    ) == pytest.approx(share)
