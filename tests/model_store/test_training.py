"""`digits train` end to end on a small labelled file: a new immutable version with a full card."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from digits.core.clutter_scans import CLUTTER_KINDS
from model_store.evaluation import evaluate
from model_store.registry import INT8_FILE, default_version, list_versions, sha256_file
from tests.conftest import SAMPLE
from tests.faultkit import report

#: real worker processes, signals and servers: the full suite only (CONTRIBUTING.md)
pytestmark = pytest.mark.slow


def test_train_registers_a_version_with_its_card(home: Path) -> None:
    bundled = [v.version for v in list_versions()]
    new = bundled[-1] + 1
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "digits.cli",
            "train",
            "--data",
            str(SAMPLE),
            "--arch",
            "mlp",
            "--epochs",
            "2",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"registered model version {new} (mlp)" in result.stdout
    card = json.loads((home / "models" / f"v{new}" / "card.json").read_text())
    assert card["architecture"] == "mlp" and card["version"] == new
    assert card["command"] == f"digits train --data {SAMPLE} --arch mlp --epochs 2 --quiet"
    assert card["validation"]["count"] == 20 and card["validation_split"]["train_rows"] == 180
    assert len(card["validation"]["per_class_accuracy"]) == 10
    assert len(card["validation"]["confusion_matrix"]) == 10
    assert card["training"]["epochs_run"] == 2 and card["training"]["wall_seconds"] > 0
    assert card["training"]["machine"].count(", ") >= 2  # architecture, cores, CPU model
    assert card["calibration"]["temperature"] > 0
    assert 0 <= card["validation"]["review_threshold"]["coverage"] <= 1
    # the int8 path workers run by default was checked at once: stored, or refused with why
    int8 = card["inference_paths"]["tflite-int8-dynamic"]
    if "refused" in int8:
        assert f"v{new} runs float32: its int8 conversion does not qualify" in result.stdout
        assert int8["refused"] and not (home / "models" / f"v{new}" / INT8_FILE).exists()
    else:
        assert f"v{new} runs tflite-int8-dynamic: {int8['labels_changed']} of 20" in result.stdout
        assert int8["rows"] == 20 and int8["labels_changed"] <= 1
        assert int8["sha256"] == sha256_file(home / "models" / f"v{new}" / INT8_FILE)
    listed = subprocess.run(
        [sys.executable, "-m", "digits.cli", "models", "list", "--json"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=60,
    )
    assert [v["version"] for v in json.loads(listed.stdout)] == [*bundled, new]


def test_train_ensemble_is_one_safely_loadable_version(home: Path) -> None:
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
            "--epochs",
            "1",
            "--elastic",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(ensemble of 2 cnn-lite)" in result.stdout
    # Without a terminal: one line per member epoch, none lost when the last member ends
    # (180 training rows in batches of 128: 2 steps per member epoch, 4 in all).
    lines = [line for line in result.stderr.splitlines() if " steps  member " in line]
    assert sorted(line.split("steps  ")[1].split(":")[0] for line in lines) == [
        "member 1/2 epoch 1/1",
        "member 2/2 epoch 1/1",
    ]
    assert lines[-1].split("] ")[1].startswith("4/4 steps")
    from model_store.loading import load
    from model_store.registry import get_version

    version = get_version(new)
    card = version.card
    assert [m["seed"] for m in card["training"]["members"]] == [0, 1000]
    assert "elastically distorted" in card["training"]["augmentation"]
    assert "thicker strokes" in card["training"]["augmentation"]  # degradations by default
    assert card["training"]["label_smoothing"] == 0.0
    assert all(m["epochs_run"] == 1 for m in card["training"]["members"])
    # Calibration saw the clean held-out rows and the same rows rendered as scans.
    scans = card["scan_validation"]
    assert scans["count"] + scans["refused"] == 20
    assert card["calibration"]["fitted_on_rows"] == 20 + scans["count"]
    model = load(version)  # hash checked, safe_mode on: nested members + Average only
    assert [layer.name for layer in model.layers[1:]] == ["member_1", "member_2", "probabilities"]
    probs = model.predict(np.zeros((3, 28, 28, 1), np.float32), verbose=0)
    assert probs.shape == (3, 10) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_pseudo_labelled_training_teaches_students_on_more_rows(home: Path, tmp_path: Path) -> None:
    """Teachers train first, label an unlabelled file, and the students, trained on the
    labelled rows plus those labels, make the version. The unlabelled file is the sample
    without its label column, so it holds the 20 held-out rows: they must be dropped."""
    unlabelled = tmp_path / "unlabelled.csv"
    with gzip.open(SAMPLE, "rt") as fh:
        unlabelled.write_text("".join(line.split(",", 1)[1] for line in fh))
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
            "--epochs",
            "2",
            "--teacher-epochs",
            "1",
            "--pseudo-label",
            str(unlabelled),
            "--pseudo-threshold",
            "0.1",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # One line per teacher and member epoch; the total counts both rounds' steps (180 rows:
    # 2 steps per teacher epoch; 180 + 180 pseudo-labelled rows: 3 per student epoch).
    lines = [line.split("] ")[1] for line in result.stderr.splitlines() if " steps  " in line]
    assert sorted(line.split("steps  ")[1].split(":")[0] for line in lines) == [
        "member 1/2 epoch 1/2",
        "member 1/2 epoch 2/2",
        "member 2/2 epoch 1/2",
        "member 2/2 epoch 2/2",
        "teacher 1/2 epoch 1/1",
        "teacher 2/2 epoch 1/1",
    ]
    assert lines[-1].startswith("16/16 steps")
    from model_store.loading import load
    from model_store.registry import get_version

    version = get_version(new)
    training = version.card["training"]
    pseudo = training["pseudo_labels"]
    assert pseudo["rows"] == 200 and pseudo["held_out_duplicates_dropped"] == 20
    assert pseudo["kept"] == sum(pseudo["kept_per_class"]) == 180  # all, at threshold 0.1
    assert pseudo["threshold"] == 0.1 and pseudo["teacher_epochs"] == 1
    assert 0 <= pseudo["teacher_validation_errors"] <= 20
    assert [(t["seed"], t["training_rows"]) for t in pseudo["teachers"]] == [(0, 180), (1000, 180)]
    assert [(m["seed"], m["training_rows"]) for m in training["members"]] == [
        (2000, 360),
        (3000, 360),
    ]
    assert version.card["validation_split"]["train_rows"] == 180  # labelled rows only
    model = load(version)  # the students only: the teachers are not part of the version
    assert [layer.name for layer in model.layers[1:]] == ["member_1", "member_2", "probabilities"]
    shown = subprocess.run(
        [sys.executable, "-m", "digits.cli", "models", "show", str(new)],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=60,
    )
    assert (
        f"pseudo-labels     180 of 200 rows of unlabelled.csv (sha256 "
        f"{pseudo['sha256'][:16]}…) labelled at ≥ 0.1 by 2 teachers of 1 epochs"
    ) in shown.stdout


def test_bf16_training_saves_a_float32_model(home: Path) -> None:
    """Mixed bfloat16 is a training speed-up only: the registered model must compute in
    float32 like every other version, or each worker would score in (possibly emulated) bf16."""
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
            "1",
            "--precision",
            "bf16",
            "--quiet",
            "--no-degrade",
            "--label-smoothing",
            "0.1",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    from model_store.loading import load
    from model_store.registry import get_version

    version = get_version(new)
    assert version.card["training"]["precision"].startswith("mixed bfloat16")
    assert "elastic" not in version.card["training"]["augmentation"]  # only when asked
    assert version.card["training"]["augmentation"].endswith("; no scan degradations")
    assert version.card["training"]["label_smoothing"] == 0.1
    model = load(version)
    policies = {layer.dtype_policy.name for member in model.layers[1:3] for layer in member.layers}
    assert policies == {"float32"}
    probs = model.predict(np.zeros((2, 28, 28, 1), np.float32), verbose=0)
    assert probs.dtype == np.float32 and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def _children(pid: int) -> set[int]:
    """Live processes whose parent is ``pid`` (read from Linux's /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("how", ["ctrl-c", "sigint-parent", "sigkill"])
def test_stopping_train_ends_its_member_processes(home: Path, how: str) -> None:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) or a SIGINT to the
    parent alone (`kill -INT`, which the members never see: it once left the parent waiting
    for them forever) ends `digits train` with one clear line and exit 130; SIGKILL of the
    parent alone (the worst case: no handler runs, like an OOM kill) must not leave its members
    training on, orphaned, for an hour."""
    proc = subprocess.Popen(
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
            "2",
            "--epochs",
            "1000",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
        start_new_session=True,  # its own process group, like a command run in a terminal
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # even if CI ignores it
    assert proc.stderr is not None
    for line in proc.stderr:  # without a terminal, one line per member epoch
        if "epoch 1/1000:" in line:
            break
    members = _children(proc.pid)
    assert proc.poll() is None and len(members) >= 2, "members should be training"
    if how != "sigkill":
        signalled = time.monotonic()
        (os.killpg if how == "ctrl-c" else os.kill)(proc.pid, signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait(timeout=30) == 130
        report(f"train_stopped_by_{how}", signal_to_exit_s=round(time.monotonic() - signalled, 2))
        assert rest.splitlines()[-1] == "error: training interrupted; nothing was registered"
        assert "Traceback" not in rest
    else:
        proc.kill()
        proc.wait(timeout=10)
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in members) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in members if _alive(p)]


def test_models_evaluate_re_measures_a_version_on_the_held_out_rows(home: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "digits.cli",
            "models",
            "evaluate",
            str(default_version().version),
            "--data",
            str(SAMPLE),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout)
    clean, scans = measured["clean"], measured["scans"]
    assert measured["version"] == default_version().version
    assert clean["count"] == measured["rows"] == 20
    assert clean["errors"] == round((1 - clean["accuracy"]) * 20)
    assert scans["count"] + scans["refused"] == 20
    assert 0 <= scans["review_threshold"]["coverage"] <= 1
    clutter = measured["clutter"]  # every kind of clutter, on the same 20 held-out rows
    assert list(clutter["kinds"]) == list(CLUTTER_KINDS)
    assert all(k["count"] == 20 for k in clutter["kinds"].values())
    assert clutter["count"] == 20 * len(CLUTTER_KINDS)
    wrong = clutter["count"] - sum(k["right"] for k in clutter["kinds"].values())
    assert 0 <= clutter["confident_wrong"] <= wrong
    members = measured["members"]  # the bundled version is an ensemble
    assert len(members["member_errors"]) == int(default_version().card["architecture"].split()[2])
    assert members["ensemble_errors"] == clean["errors"] == len(members["error_rows"])
    assert 0 <= members["made_by_every_member"] <= min(members["member_errors"])
    missing = subprocess.run(
        [sys.executable, "-m", "digits.cli", "models", "evaluate", "99", "--data", str(SAMPLE)],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=300,
    )
    assert missing.returncode != 0 and "model version 99 does not exist" in missing.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arch", "mlp", "--ensemble", "2"], "--ensemble needs a CNN"),
        (["--arch", "resnet"], "unknown architecture 'resnet': choose one of mlp, cnn, cnn-lite"),
        (["--ensemble", "0"], "Invalid value for '--ensemble'"),
        (["--precision", "fp16"], "unknown precision 'fp16': choose one of float32, bf16"),
        (["--pseudo-label", "missing.csv"], "missing.csv: no such file"),
        (
            ["--pseudo-label", str(SAMPLE), "--pseudo-threshold", "0"],
            "--pseudo-threshold must be above 0 and at most 1, not 0.0",
        ),
        (["--arch", "mlp", "--pseudo-label", str(SAMPLE)], "--pseudo-label needs a CNN"),
        (["--label-smoothing", "1"], "--label-smoothing must be at least 0 and below 1, not 1.0"),
        # The training file itself, passed by mistake: refused before anything trains.
        (
            ["--pseudo-label", str(SAMPLE)],
            "has a label column: pseudo-labelling takes an unlabelled",
        ),
    ],
)
def test_train_refuses_bad_options(home: Path, args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "digits.cli", "train", "--data", str(SAMPLE), *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=60,
    )
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


@pytest.mark.parametrize(("threshold", "coverage"), [(0.0, 1.0), (0.95, 0.5), (1.01, 0.0)])
def test_review_threshold_reports_coverage_and_accuracy(threshold: float, coverage: float) -> None:
    probs = np.array([[0.99] + [0.01 / 9] * 9, [0.5, 0.5] + [0.0] * 8])
    report = evaluate(probs, np.array([0, 1]), 1.0, threshold)["review_threshold"]
    assert report["coverage"] == coverage
    assert report["accuracy_above"] == (None if coverage == 0 else 1.0 if coverage == 0.5 else 0.5)


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_elastic_distortion_bends_strokes_without_losing_ink(share: float) -> None:
    import tensorflow as tf

    from model_store.augmentation import ELASTIC_ALPHA, ELASTIC_SIGMA, _elastic
    from model_store.data import load_split

    images = (load_split(SAMPLE).x_train[:32].reshape(-1, 28, 28, 1) / 255).astype(np.float32)
    tf.random.set_seed(0)
    out = _elastic(tf.constant(images), share, ELASTIC_ALPHA, ELASTIC_SIGMA).numpy()
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    changed = np.abs(out - images).reshape(len(images), -1).max(axis=1) > 0.1
    assert changed.all() if share else not changed.any()
    # MNIST digits sit in a 20x20 box with a 4-pixel margin: a distortion of about a pixel
    # stretches some strokes and squeezes others (one image's ink changes by up to ~40 %) but
    # loses no ink on the whole and leaves every digit most of its strokes.
    ink = out.reshape(len(images), -1).sum(axis=1) / images.reshape(len(images), -1).sum(axis=1)
    assert abs(ink.mean() - 1) < 0.05 and ink.min() > 0.5


@pytest.mark.parametrize("degrade", [True, False])
def test_scan_degradations_are_only_added_when_asked(degrade: bool) -> None:
    """Blank images show what the degradations add: the affine jitter keeps a blank image
    blank, the Gaussian noise (a fifth of the images) does not."""
    import tensorflow as tf

    from model_store.augmentation import augmenter

    blank = tf.zeros((400, 28, 28, 1))
    tf.random.set_seed(0)
    out, labels = augmenter(seed=0, degrade=degrade)(blank, tf.zeros(400, tf.int64))
    noisy = (out.numpy().reshape(400, -1).max(axis=1) > 0).mean()
    assert labels.shape == (400,)
    assert 0.1 < noisy < 0.3 if degrade else noisy == 0


def _slow_square(x: int, fail: bool) -> int:
    time.sleep(0.2)
    if fail:
        raise ValueError("rendering failed")
    return x * x


@pytest.mark.parametrize("fail", [False, True])
def test_background_work_hands_back_its_result_or_its_error(fail: bool) -> None:
    """Training renders the held-out scans on a daemon thread (an exit never waits for it)."""
    from model_store.member_pool import in_background

    result = in_background(_slow_square, 7, fail)
    (thread,) = [t for t in threading.enumerate() if t.name == "_slow_square"]
    assert thread.daemon
    if fail:
        with pytest.raises(ValueError, match="rendering failed"):
            result()
    else:
        assert result() == 49


@pytest.mark.parametrize(
    ("smoothing", "expected"),
    [
        (0.0, 0.0),  # a certain, right prediction costs nothing with plain labels
        # with smoothing the target is 0.91 on the label and 0.01 elsewhere: certainty costs
        (0.1, -(0.91 * np.log(1 - 9e-7) + 9 * 0.01 * np.log(1e-7))),
    ],
)
def test_label_smoothing_penalises_certainty(smoothing: float, expected: float) -> None:
    import keras

    from model_store.fit import _loss_and_metric

    loss, _ = _loss_and_metric(smoothing)
    probs = np.full((1, 10), 1e-7, np.float32)
    probs[0, 3] = 1 - 9e-7
    label = np.array([3]) if not smoothing else np.eye(10, dtype=np.float32)[[3]]
    value = float(np.mean(keras.losses.get(loss)(label, probs)))
    assert value == pytest.approx(expected, abs=1e-3)
