"""``digits train``: fit an architecture on a labelled CSV and register it as a new version.

The validation split is fixed (see ``model_store.data``), seeds are fixed, training is bounded
by ``max_minutes``, and the card records everything needed to trust or reproduce the model.
"""

from __future__ import annotations

import os
import platform
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from digits.core.csv_input import read_unlabelled
from digits.core.preprocess import rows_to_tensor, stack
from model_store.calibration import apply_temperature, expected_calibration_error, fit_temperature
from model_store.choices import PRECISIONS
from model_store.data import SPLIT_SEED, VAL_FRACTION, Split, load_split
from model_store.registry import ModelVersion, register, sha256_file
from model_store.schedule import PEAK_LEARNING_RATE, member_deadlines, teacher_share

ProgressFn = Callable[[int, int, str], None]  # (done steps, total steps, description)


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "cnn-lite"
    epochs: int | None = None  # None: the architecture's default
    seed: int = 0
    batch_size: int = 128
    max_minutes: float = 55.0
    val_fraction: float = VAL_FRACTION
    augment: bool | None = None  # None: on for the CNNs, off for the origin's MLP
    ensemble: int = 1  # members averaged into one version
    precision: str = "float32"  # or "bf16": mixed bfloat16 training; saved models are float32
    elastic: bool = False  # add elastic distortions (Simard et al. 2003) to the augmentation
    degrade: bool = True  # scan-like degradations (stroke width, blur, noise) after the jitter
    # Label smoothing (Szegedy et al. 2016): train towards 1 - s on the label and s / 10 on
    # every class, so a member cannot drive its logits apart on the rows it memorises.
    label_smoothing: float = 0.0
    # Self-training: with an unlabelled CSV, ``ensemble`` teachers train first for
    # ``teacher_epochs``; the rows they label with at least ``pseudo_threshold`` join the
    # training rows of ``ensemble`` new members (the students), which make the version.
    pseudo_label: Path | None = None
    teacher_epochs: int = 15
    pseudo_threshold: float = 0.99

    def resolved_epochs(self) -> int:
        return self.epochs if self.epochs is not None else (10 if self.arch == "mlp" else 30)

    def resolved_augment(self) -> bool:
        return self.augment if self.augment is not None else self.arch != "mlp"

    jobs: int = 0  # members trained side by side; 0: one per core, at most one per member
    command: str | None = None  # the command line that asked for this, kept in the card

    def resolved_jobs(self) -> int:
        if self.ensemble == 1:
            return 1
        return min(self.ensemble, self.jobs or os.cpu_count() or 1)

    def member_seed(self, index: int) -> int:
        """Each member gets its own initialisation, shuffling and augmentation draws."""
        return self.seed + 1000 * index


AFFINE = "rotation ±10°, zoom ±10%, shift ±10%"
DEGRADATIONS = (
    "; per image 10% thicker strokes, 10% thinner, 10% 3x3 blur, 20% Gaussian noise (σ 0.05)"
)
ELASTIC_SHARE, ELASTIC_ALPHA, ELASTIC_SIGMA = 0.5, 34.0, 4.0
ELASTIC = (
    f"; first, {ELASTIC_SHARE:.0%} of images elastically distorted (Simard et al. 2003: "
    f"uniform displacement field, Gaussian σ {ELASTIC_SIGMA:g} px, α {ELASTIC_ALPHA:g})"
)


def _augmentation(config: TrainConfig) -> str | None:
    """The card's words for what ``_augmenter`` does under ``config``."""
    if not config.resolved_augment():
        return None
    return (
        AFFINE
        + (DEGRADATIONS if config.degrade else "; no scan degradations")
        + (ELASTIC if config.elastic else "")
    )


def _elastic(x: Any, share: float, alpha: float, sigma: float) -> Any:
    """Elastic distortion of a batch of (n, 28, 28, 1) images (Simard, Steinkraus and Platt,
    2003): a random displacement field, uniform in [-1, 1] per pixel, smoothed by a Gaussian
    of ``sigma`` pixels and scaled by ``alpha``, moves each pixel; bilinear resampling, ink
    pushed past the border is lost. The distortion every affine map misses: strokes bend
    the way different hands bend them. Applied to a ``share`` of the images."""
    import tensorflow as tf

    n, size = tf.shape(x)[0], x.shape[1]
    radius = int(3 * sigma)
    taps = tf.exp(-tf.square(tf.range(-radius, radius + 1, dtype=tf.float32)) / (2 * sigma**2))
    taps /= tf.reduce_sum(taps)
    field = tf.random.uniform([n, size, size, 2], -1.0, 1.0)
    field = tf.nn.depthwise_conv2d(
        field, tf.tile(taps[None, :, None, None], [1, 1, 2, 1]), [1, 1, 1, 1], "SAME"
    )
    field = (
        tf.nn.depthwise_conv2d(
            field, tf.tile(taps[:, None, None, None], [1, 1, 2, 1]), [1, 1, 1, 1], "SAME"
        )
        * alpha
    )
    grid = tf.cast(
        tf.stack(tf.meshgrid(tf.range(size), tf.range(size), indexing="ij"), -1), tf.float32
    )
    where = tf.clip_by_value(grid[None] + field, -1.0, float(size))  # (n, y, x, [row, col])
    padded = tf.pad(x[..., 0], [[0, 0], [1, 1], [1, 1]])  # a zero border: outside is blank
    low = tf.floor(where)
    frac = where - low
    low = tf.cast(low, tf.int32) + 1  # +1: the border

    def at(dy: int, dx: int) -> Any:
        index = tf.clip_by_value(low + tf.constant([dy, dx]), 0, size + 1)
        return tf.gather_nd(padded, index, batch_dims=1)

    fy, fx = frac[..., 0], frac[..., 1]
    moved = (
        (1 - fy) * ((1 - fx) * at(0, 0) + fx * at(0, 1))
        + fy * ((1 - fx) * at(1, 0) + fx * at(1, 1))
    )[..., None]
    return tf.where(tf.random.uniform([n, 1, 1, 1]) < share, moved, x)


def _augmenter(seed: int, elastic: bool = False, degrade: bool = True) -> Any:
    """Small affine jitter (after an elastic distortion, if asked) plus, unless ``degrade`` is
    off, scan-like degradations (stroke width, blur, noise): what the inbox's preprocessed
    scans differ from clean MNIST rows by. ``degrade`` off exists to measure what they cost on
    clean rows: nothing, they regularise (the README's ``--no-degrade`` row: 17 held-out
    errors where the same seeds with them made 15)."""
    import keras
    import tensorflow as tf

    affine = keras.Sequential(
        [
            keras.layers.RandomRotation(10 / 360, fill_mode="constant", seed=seed),
            keras.layers.RandomZoom(0.1, fill_mode="constant", seed=seed + 1),
            keras.layers.RandomTranslation(0.1, 0.1, fill_mode="constant", seed=seed + 2),
        ]
    )

    def degraded(x: Any) -> Any:
        n = tf.shape(x)[0]
        choice = tf.random.uniform([n, 1, 1, 1])
        thicker = tf.nn.max_pool2d(x, 2, 1, "SAME")
        thinner = -tf.nn.max_pool2d(-x, 2, 1, "SAME")
        blurred = tf.nn.avg_pool2d(x, 3, 1, "SAME")
        x = tf.where(choice < 0.1, thicker, x)
        x = tf.where((choice >= 0.1) & (choice < 0.2), thinner, x)
        x = tf.where((choice >= 0.2) & (choice < 0.3), blurred, x)
        noise = tf.random.normal(tf.shape(x), stddev=0.05)
        x = tf.where(tf.random.uniform([n, 1, 1, 1]) < 0.2, x + noise, x)
        return tf.clip_by_value(x, 0.0, 1.0)

    def apply(x: Any, y: Any) -> tuple[Any, Any]:
        if elastic:
            x = _elastic(x, ELASTIC_SHARE, ELASTIC_ALPHA, ELASTIC_SIGMA)
        x = affine(x, training=True)
        return (degraded(x) if degrade else x), y

    return apply


# (steps just done, description, member index, the epochs that member's schedule now has)
ReportFn = Callable[[int, str, int, int], None]


def _keras_callback(
    report: ReportFn,
    deadline: float,
    member: int,
    prefix: str,
    epochs: int,
    steps_per_epoch: int,
    scheduled: bool,
) -> Any:
    """A Keras callback that reports steps to a plain function (keeps rich out of training)
    and keeps training inside ``deadline`` (wall clock): after every epoch it fits the
    remaining schedule to the time left at the recent pace (``model_store.schedule``)
    and stops when the fitted schedule ends. With ``scheduled`` it also sets the learning rate
    of every step from that schedule (the CNNs); without, only the epoch count is fitted (the
    origin's MLP keeps RMSprop's constant rate)."""
    import keras

    from model_store.schedule import fitted_epochs, learning_rate, pace

    class Callback(keras.callbacks.Callback):
        epochs_run = 0
        schedule_epochs = epochs  # the epochs the schedule now ends at
        pending = 0
        epoch = 0
        last_rate = 0.0

        def __init__(self) -> None:
            super().__init__()
            self.epoch_ends: list[float] = []  # wall-clock time each epoch ended

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.epoch = epoch

        def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            if scheduled:
                self.last_rate = learning_rate(
                    self.epoch * steps_per_epoch + batch, steps_per_epoch, self.schedule_epochs
                )
                self.model.optimizer.learning_rate = self.last_rate

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            self.pending += 1
            if self.pending >= 10:
                report(self.pending, "", member, self.schedule_epochs)
                self.pending = 0

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            logs = logs or {}
            now = time.time()
            self.epochs_run = done = epoch + 1
            self.epoch_ends.append(now)
            seconds = pace(self.epoch_ends)
            if seconds is None:
                # The pace is measured from the second epoch on (the first also traces the
                # graph); the warm-up epoch does not depend on the schedule's length.
                if now >= deadline:
                    self.schedule_epochs = done
            else:
                self.schedule_epochs = fitted_epochs(epochs, done, seconds, deadline - now)
            report(
                self.pending,
                f"{prefix}epoch {done}/{self.schedule_epochs}: loss "
                f"{logs.get('loss', 0):.4f} acc {logs.get('accuracy', 0):.4f}",
                member,
                self.schedule_epochs,
            )
            self.pending = 0
            if done >= self.schedule_epochs:
                self.model.stop_training = True

    return Callback()


def evaluate(
    probs: np.ndarray, labels: np.ndarray, temperature: float, threshold: float = 0.9
) -> dict[str, Any]:
    """Accuracy, per-class accuracy, confusion matrix, ECE before/after scaling, and what the
    review threshold buys: the share of items above it (coverage) and their accuracy."""
    predicted = probs.argmax(axis=1)
    confusion = np.zeros((10, 10), dtype=int)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    scaled = apply_temperature(probs, temperature)
    confident = scaled.max(axis=1) >= threshold
    return {
        "accuracy": float((predicted == labels).mean()),
        "errors": int((predicted != labels).sum()),
        "count": len(labels),
        "per_class_accuracy": [round(float(a), 5) for a in per_class],
        "confusion_matrix": confusion.tolist(),
        "ece_before": round(expected_calibration_error(probs, labels), 5),
        "ece_after": round(expected_calibration_error(scaled, labels), 5),
        "review_threshold": {
            "threshold": threshold,
            "coverage": round(float(confident.mean()), 5),
            "accuracy_above": round(float((predicted[confident] == labels[confident]).mean()), 5)
            if confident.any()
            else None,
        },
    }


@dataclass(frozen=True)
class _MemberJob:
    """Everything one member's training needs; picklable, so it can run in a child process."""

    config: TrainConfig
    index: int
    x_train: NDArray[np.uint8]
    y_train: NDArray[np.int64]
    x_val: NDArray[np.uint8]
    y_val: NDArray[np.int64]
    deadline: float  # time.time() by which this member's schedule must end
    steps_per_epoch: int  # batches per epoch, also the unit of the parent's progress total
    epochs: int  # planned epochs (the schedule may end sooner to fit the deadline)
    teacher: bool = False  # a pseudo-labelling teacher: its own seeds, names and progress slot
    out: Path | None = None  # where a child process saves the member

    @property
    def slot(self) -> int:
        """Index among all the models the run trains (teachers first): progress and files."""
        return self.index + (
            0 if self.teacher or not self.config.pseudo_label else self.config.ensemble
        )


def _train_member(job: _MemberJob, report: ReportFn) -> tuple[Any, dict[str, Any]] | None:
    """Fit one model (Adam, one warm-up epoch, cosine decay fitted to the time limit;
    augmented batches) and score it on the validation rows. Returns None if the time limit
    passed before it could start."""
    import keras
    import tensorflow as tf

    config = job.config
    if time.time() > job.deadline:
        return None
    # The dataset is shuffled by tf.data itself; Keras warns that its own flag is unused.
    warnings.filterwarnings("ignore", message=".*shuffle=True.*was passed")
    started = time.time()
    # Teachers keep the seeds a run without pseudo-labels gives its members; students follow.
    seed = config.member_seed(job.slot)
    keras.utils.set_random_seed(seed)
    x_train = rows_to_tensor(job.x_train)
    epochs = job.epochs
    steps_per_epoch = job.steps_per_epoch
    name = (
        f"teacher_{job.index + 1}"
        if job.teacher
        else f"member_{job.index + 1}"
        if config.ensemble > 1
        else None
    )
    model = _build(config.arch, name, config.precision)
    scheduled = config.arch != "mlp"
    # The CNNs' rate is set before every step by the callback (model_store.schedule).
    optimizer = keras.optimizers.Adam(0.0) if scheduled else keras.optimizers.RMSprop()
    loss, metric = _loss_and_metric(config.label_smoothing)
    model.compile(optimizer, loss=loss, metrics=metric)
    # One endless iterator for the whole fit (reshuffled on every pass): with a finite
    # dataset Keras builds and destroys an iterator per epoch, and on one 2-core VM each
    # teardown left the process idle for up to ~10 s waiting on tf.data's threads
    # (seen with py-spy in ~UnboundedThreadPool::LogicalThreadWrapper).
    dataset = tf.data.Dataset.from_tensor_slices((x_train, job.y_train))
    dataset = dataset.shuffle(len(x_train), seed=seed).batch(config.batch_size).repeat()
    if config.resolved_augment():
        dataset = dataset.map(
            _augmenter(seed, config.elastic, config.degrade), num_parallel_calls=tf.data.AUTOTUNE
        )
    if config.label_smoothing:
        dataset = dataset.map(lambda x, y: (x, tf.one_hot(y, 10)))
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    role = "teacher" if job.teacher else "member"
    one_model = config.ensemble == 1 and not job.teacher
    prefix = "" if one_model else f"{role} {job.index + 1}/{config.ensemble} "
    callback = _keras_callback(
        report, job.deadline, job.slot, prefix, epochs, steps_per_epoch, scheduled
    )
    model.fit(
        dataset, epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=[callback], verbose=0
    )
    if config.precision != "float32":
        model = _as_float32(model, config.arch, name)
    predicted = model.predict(rows_to_tensor(job.x_val), batch_size=1000, verbose=0).argmax(axis=1)
    card = {
        "member": job.index + 1,
        "seed": seed,
        "training_rows": len(job.y_train),
        "epochs_run": callback.epochs_run,
        "stopped_by_time_limit": callback.schedule_epochs < epochs,
        "schedule_epochs": callback.schedule_epochs,
        **({"final_learning_rate": float(f"{callback.last_rate:.3g}")} if scheduled else {}),
        "wall_seconds": round(time.time() - started, 1),
        "validation_accuracy": float((predicted == job.y_val).mean()),
        "validation_errors": int((predicted != job.y_val).sum()),
    }
    return model, card


def _loss_and_metric(label_smoothing: float) -> tuple[Any, list[Any]]:
    """The loss and accuracy metric for ``compile``. Keras' sparse cross-entropy has no
    smoothing, so a smoothed run feeds one-hot labels to the categorical one."""
    import keras

    if not label_smoothing:
        return "sparse_categorical_crossentropy", ["accuracy"]
    return (
        keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        [keras.metrics.CategoricalAccuracy(name="accuracy")],
    )


def _build(arch: str, name: str | None, precision: str) -> Any:
    """Build ``arch`` with its layers computing in ``precision`` ("bf16": mixed bfloat16,
    float32 variables and softmax). Only the model's layers get the policy: the augmentation
    and data pipeline stay float32, and the process-wide default is restored at once."""
    import keras

    from model_store.architectures import build

    if precision == "float32":
        return build(arch, name)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        return build(arch, name)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _as_float32(model: Any, arch: str, name: str | None) -> Any:
    """The same weights in a float32 model. Why: a saved mixed-precision model would score in
    bfloat16 on every worker, which CPUs without AVX512_BF16 only emulate, slowly; its
    variables are float32 already, so the copy is exact."""
    clone = _build(arch, name, "float32")
    clone.set_weights(model.get_weights())
    return clone


_events: Any = None  # in a member's process: the queue its progress goes to


def _member_init(events: Any, parent: int) -> None:
    """Member-process start-up: one TensorFlow thread (small convolutions scale poorly across
    threads, so K one-thread members side by side beat one member on all cores), the progress
    queue (inherited here: a spawned process cannot receive a plain queue as an argument),
    and an exit as soon as ``parent``, the ``digits train`` that started it, is gone: a parent
    stopped by SIGTERM or SIGKILL cannot shut its pool down, and orphaned members would keep
    both cores busy for up to an hour training models nobody will register."""
    global _events
    from digits.core.processes import watch_parent  # the same watcher `digits worker` uses
    from model_store.loading import configure_threads

    # os._exit, not a clean exit: the member holds no state worth saving, and a hung
    # TensorFlow call must not delay it
    watch_parent(parent, lambda: os._exit(1))
    configure_threads(1)
    _events = events


def _member_process(job: _MemberJob) -> dict[str, Any] | None:
    """Train one member in a child process, save it to ``job.out``, return its card."""
    result = _train_member(job, lambda *event: _events.put(event))
    if result is None:
        return None
    model, card = result
    assert job.out is not None
    model.save(job.out)
    return card


def _train_members(
    jobs: list[_MemberJob], workers: int, progress: ReportFn, tmp: Path
) -> list[tuple[Any, dict[str, Any]]]:
    """Train the members, in-process (workers == 1) or in ``workers`` child processes."""
    if workers <= 1:
        trained = [_train_member(job, progress) for job in jobs]
        return [t for t in trained if t is not None]
    import multiprocessing
    import queue
    from concurrent.futures import ProcessPoolExecutor, wait

    context = multiprocessing.get_context("spawn")  # never fork a process that holds TF
    events = context.Queue()

    def drain() -> None:
        while True:
            try:
                progress(*events.get_nowait())
            except queue.Empty:
                return

    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_member_init, initargs=(events, os.getpid())
    ) as pool:
        futures = [
            pool.submit(_member_process, replace(job, out=tmp / f"model_{job.slot}.keras"))
            for job in jobs
        ]
        pending = set(futures)
        while pending:
            _, pending = wait(pending, timeout=0.5)
            drain()
        cards = [f.result() for f in futures]  # re-raises a member's exception here
    # The pool has shut down: each member flushed its queue before exiting, so its last
    # progress ticks (sent after the drain above) are read here instead of being lost.
    drain()
    import keras

    return [
        (
            keras.saving.load_model(tmp / f"model_{job.slot}.keras", compile=False, safe_mode=True),
            card,
        )
        for job, card in zip(jobs, cards, strict=True)
        if card is not None
    ]


def _in_background(function: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    """Start ``function(*args)`` on a daemon thread; return a call that waits for its result
    (or raises its error). Daemon, unlike a ThreadPoolExecutor's thread: Ctrl-C must end
    ``digits train`` at once, not after the thread has finished minutes of work."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = function(*args)
        except BaseException as exc:  # handed to the waiting thread
            outcome["error"] = exc

    thread = threading.Thread(
        target=run, name=getattr(function, "__name__", "background"), daemon=True
    )
    thread.start()

    def result() -> Any:
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    return result


def _steps(rows: int, config: TrainConfig) -> int:
    """Batches per epoch."""
    return int(np.ceil(rows / config.batch_size))


def _pseudo_labelled(
    teachers: list[tuple[Any, dict[str, Any]]],
    split: Split,
    unlabelled: NDArray[np.uint8],
    config: TrainConfig,
) -> tuple[NDArray[np.uint8], NDArray[np.int64], dict[str, Any]]:
    """The students' training rows: the labelled rows plus the unlabelled rows the teachers'
    average labels with at least ``pseudo_threshold`` (never a held-out row), and the card's
    record of how they were made."""
    from model_store.architectures import build_ensemble
    from model_store.pseudo import confident_labels, not_held_out

    models = [model for model, _ in teachers]
    teacher = models[0] if len(models) == 1 else build_ensemble(models)
    fresh = not_held_out(unlabelled, split.x_val)
    rows = unlabelled[fresh]
    keep, labels = confident_labels(
        teacher.predict(rows_to_tensor(rows), batch_size=1000, verbose=0), config.pseudo_threshold
    )
    val = teacher.predict(rows_to_tensor(split.x_val), batch_size=1000, verbose=0).argmax(axis=1)
    assert config.pseudo_label is not None
    record = {
        "path": config.pseudo_label.name,
        "sha256": sha256_file(config.pseudo_label),
        "rows": len(unlabelled),
        "held_out_duplicates_dropped": int((~fresh).sum()),
        "threshold": config.pseudo_threshold,
        "kept": len(keep),
        "kept_per_class": np.bincount(labels, minlength=10).tolist(),
        "teacher_epochs": config.teacher_epochs,
        "teacher_validation_errors": int((val != split.y_val).sum()),
        "teachers": [card for _, card in teachers],
        "method": "the teachers (the same architecture and augmentation, seeds as members "
        "0..K-1) trained on the labelled rows; their averaged probabilities label the "
        "unlabelled rows; rows at or above the threshold join the students' training rows",
    }
    return (
        np.concatenate([split.x_train, rows[keep]]),
        np.concatenate([split.y_train, labels]),
        record,
    )


def train(data: Path, config: TrainConfig, progress: ProgressFn | None = None) -> ModelVersion:
    """Train (one model or an ensemble), validate on the fixed held-out split, calibrate on
    clean and scan-like validation data, and register the result as a new version."""
    if config.ensemble < 1:
        raise ValueError("ensemble must be at least 1")
    if config.ensemble > 1 and config.arch == "mlp":
        raise ValueError("ensembles are built from CNN members, not the origin's MLP")
    if config.precision not in PRECISIONS:
        raise ValueError(
            f"unknown precision {config.precision!r}; choose one of {', '.join(PRECISIONS)}"
        )
    if not 0 < config.pseudo_threshold <= 1:
        raise ValueError("pseudo_threshold must be in (0, 1]")
    if not 0 <= config.label_smoothing < 1:
        raise ValueError("label_smoothing must be in [0, 1)")
    started = time.time()
    split = load_split(data, config.val_fraction)
    unlabelled = read_unlabelled(config.pseudo_label) if config.pseudo_label else None
    epochs = config.resolved_epochs()
    workers = config.resolved_jobs()
    members = config.ensemble
    teachers = members if unlabelled is not None else 0
    limit = config.max_minutes * 60
    # Progress in steps of every model the run trains (teachers first); the total follows
    # their fitted schedules, so a bar's time remaining is what the time limit allows.
    steps = [_steps(len(split.y_train), config)] * teachers + [
        _steps(len(split.y_train) + (len(unlabelled) if unlabelled is not None else 0), config)
    ] * members
    schedules = [config.teacher_epochs] * teachers + [epochs] * members
    done = 0

    def report(taken: int, label: str, slot: int, schedule_epochs: int) -> None:
        nonlocal done
        done += taken
        schedules[slot] = schedule_epochs
        if progress:
            progress(done, sum(s * e for s, e in zip(steps, schedules, strict=True)), label)

    def jobs(
        x: NDArray[np.uint8],
        y: NDArray[np.int64],
        until: float,
        planned: int,
        teacher: bool = False,
    ) -> list[_MemberJob]:
        deadlines = member_deadlines(time.time(), until - time.time(), members, workers)
        return [
            _MemberJob(
                config,
                i,
                x,
                y,
                split.x_val,
                split.y_val,
                deadlines[i],
                _steps(len(y), config),
                planned,
                teacher,
            )
            for i in range(members)
        ]

    # Render the held-out rows as scans while the members train: single-threaded Python
    # (160-280 s for 4,200 rows) that would otherwise run after them, on one core, while the
    # other idles. The members' schedules refit to the pace this costs them at first.
    rendering = _in_background(scan_like_validation, split.x_val, split.y_val)
    x_train, y_train, pseudo = split.x_train, split.y_train, None
    with tempfile.TemporaryDirectory() as tmp:
        if unlabelled is not None:
            share = teacher_share(
                config.teacher_epochs,
                len(split.y_train),
                epochs,
                len(split.y_train) + len(unlabelled),
            )
            taught = _train_members(
                jobs(
                    x_train, y_train, started + limit * share, config.teacher_epochs, teacher=True
                ),
                workers,
                report,
                Path(tmp),
            )
            if not taught:
                raise TimeoutError(f"no teacher finished within max_minutes={config.max_minutes}")
            x_train, y_train, pseudo = _pseudo_labelled(taught, split, unlabelled, config)
            steps[teachers:] = [_steps(len(y_train), config)] * members
        trained = _train_members(
            jobs(x_train, y_train, started + limit, epochs), workers, report, Path(tmp)
        )
    if not trained:
        raise TimeoutError(f"no model finished within max_minutes={config.max_minutes}")
    scans = rendering()

    import keras
    import tensorflow as tf

    from model_store.architectures import build_ensemble

    models = [model for model, _ in trained]
    member_cards = [card for _, card in trained]
    model = models[0] if config.ensemble == 1 else build_ensemble(models)
    probs, scan_probs, scan_labels, refused = _held_out_probs(model, split, rendered=scans)
    temperature = fit_temperature(
        np.concatenate([probs, scan_probs]), np.concatenate([split.y_val, scan_labels])
    )
    from digits.core.settings import get_settings

    threshold = get_settings().confidence_threshold
    metrics = evaluate(probs, split.y_val, temperature, threshold)
    scan_metrics = evaluate(scan_probs, scan_labels, temperature, threshold)
    wall = time.time() - started
    stopped = any(c["stopped_by_time_limit"] for c in member_cards)

    card: dict[str, Any] = {
        "architecture": config.arch
        if config.ensemble == 1
        else f"ensemble of {len(models)} {config.arch}",
        "parameters": int(model.count_params()),
        "input": "28x28x1 float32 in [0, 1], ink bright on dark (MNIST polarity)",
        "output": "10 softmax probabilities"
        + (" (the mean of the members' probabilities)" if config.ensemble > 1 else ""),
        "training_data": {
            "path": data.name,
            "sha256": sha256_file(data),
            "rows": int(len(split.y_train) + len(split.y_val)),
        },
        "validation_split": {
            "method": f"last {config.val_fraction:.0%} of numpy default_rng({SPLIT_SEED})"
            f".permutation(n) over train.csv data rows",
            "rows": len(split.val_rows),
            "train_rows": len(split.y_train),
        },
        "training": {
            "epochs_planned": epochs,
            "epochs_run": min(c["epochs_run"] for c in member_cards),
            "stopped_by_time_limit": stopped or len(models) < config.ensemble,
            "seed": config.seed,
            "batch_size": config.batch_size,
            "precision": "mixed bfloat16 (float32 variables and softmax; saved as float32)"
            if config.precision == "bf16"
            else "float32",
            "augmentation": _augmentation(config),
            "label_smoothing": config.label_smoothing,
            "optimizer": "RMSprop"
            if config.arch == "mlp"
            else f"Adam, 1 warm-up epoch to {PEAK_LEARNING_RATE:g} then cosine decay to 0 over "
            "the member's schedule_epochs (the planned epochs, or fewer if they would not fit "
            "its share of max_minutes: members beyond parallel_jobs train in later waves, and "
            "each wave gets an equal share)",
            "ensemble_planned": config.ensemble,
            "parallel_jobs": workers,
            "members": member_cards,
            **({"pseudo_labels": pseudo} if pseudo else {}),
            "max_minutes": config.max_minutes,
            "wall_seconds": round(wall, 1),
            "machine": _machine(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
        "validation": metrics,
        "scan_validation": {
            "method": "the same held-out rows rendered as scans (worker.scan_synth: formats, "
            "modes, polarity, lighting, blur, noise) and preprocessed by worker.images",
            "refused": refused,
            **scan_metrics,
        },
        "calibration": {
            "method": "temperature scaling fitted on the validation split: clean rows plus the "
            "same rows rendered as scans",
            "temperature": round(temperature, 4),
            "fitted_on_rows": int(len(probs) + len(scan_probs)),
        },
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if config.command:
        card["command"] = config.command
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        return register(path, card)


def _machine() -> str:
    """Architecture, core count and CPU model: the same recipe's wall time differs several-fold
    between 2-core machines (AVX2-only vs AVX-512 CPUs), so a card's wall time names its CPU.
    Virtual machines often name only the brand ("AMD EPYC"), so the CPU family and model
    numbers follow it: two VMs that both read "AMD EPYC, AVX-512" took 51 s (v3's card) and
    30 s (family 26) per cnn-wide member-epoch."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
            if key.strip() == "flags":
                break
    except OSError:
        pass
    model = fields.get("model name") or platform.processor() or "unknown CPU"
    family = (
        f" (family {fields['cpu family']}, model {fields['model']})"
        if "cpu family" in fields and "model" in fields
        else ""
    )
    flags = fields.get("flags", "").split()
    vectors = ", AVX-512" if "avx512f" in flags else ", AVX2" if "avx2" in flags else ""
    return f"{platform.machine()}, {os.cpu_count()} cores, {model}{family}{vectors}"


def scan_like_validation(
    pixels: NDArray[np.uint8], labels: NDArray[np.int64], seed: int = SPLIT_SEED
) -> tuple[NDArray[np.float32], NDArray[np.int64], int]:
    """The held-out rows rendered as realistic scans and run through the production
    preprocessing, so calibration sees what the inbox sees; returns (tensors, labels, refused).
    """
    from digits.core.images import Rejected, image_to_tensor
    from digits.core.synthetic_scans import render_scan

    rng = np.random.default_rng(seed)
    tensors: list[NDArray[np.float32]] = []
    kept: list[int] = []
    for i, row in enumerate(pixels):
        data, _ = render_scan(row, rng)
        try:
            tensors.append(image_to_tensor(data))
        except Rejected:
            continue
        kept.append(i)
    return stack(tensors), labels[kept], len(pixels) - len(kept)


def measure(version: ModelVersion, data: Path, scans: bool = True) -> dict[str, Any]:
    """Re-measure a registered version on the fixed held-out rows of ``data`` (clean, and
    rendered as scans), with the same evaluation its card was written with."""
    from digits.core.settings import get_settings
    from model_store.loading import load

    split = load_split(data)
    model = load(version)
    threshold = get_settings().confidence_threshold
    probs, scan_probs, labels, refused = _held_out_probs(model, split, scans)
    result: dict[str, Any] = {
        "version": version.version,
        "rows": len(split.y_val),
        "clean": evaluate(probs, split.y_val, version.temperature, threshold),
    }
    members = _members(model)
    if members:
        from model_store.overlap import member_overlap

        result["members"] = member_overlap(
            _member_probs(members, rows_to_tensor(split.x_val)), probs, split.y_val, split.val_rows
        )
    if scans:
        result["scans"] = {
            "refused": refused,
            **evaluate(scan_probs, labels, version.temperature, threshold),
        }
    return result


def _member_probs(members: list[Any], x: NDArray[np.float32]) -> list[NDArray[np.float32]]:
    """Every member's probabilities from one ``predict`` of one model with a head per member.
    Why not ``predict`` per member: each is a new traced function, and TensorFlow then warns
    about "excessive retracing" on a command that did nothing wrong."""
    import keras

    image = keras.Input((28, 28, 1))
    heads = keras.Model(image, [member(image) for member in members])
    return list(heads.predict(x, batch_size=1000, verbose=0))


def _members(model: Any) -> list[Any]:
    """An ensemble's member models (``build_ensemble`` nests them whole); [] for one model."""
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.Model)]


Rendered = tuple[NDArray[np.float32], NDArray[np.int64], int]  # scan_like_validation's result


def _held_out_probs(
    model: Any, split: Split, scans: bool = True, rendered: Rendered | None = None
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.int64], int]:
    """Probabilities on the held-out rows, clean and (if ``scans``) rendered as scans (or
    ``rendered``, the same rendering done already): what both training (to calibrate and
    write the card) and ``measure`` score.
    Returns (clean probs, scan probs, scan labels, scans refused by preprocessing)."""
    probs = model.predict(rows_to_tensor(split.x_val), batch_size=1000, verbose=0)
    if not scans:
        return probs, np.zeros((0, 10), np.float32), split.y_val[:0], 0
    tensors, labels, refused = rendered or scan_like_validation(split.x_val, split.y_val)
    return probs, model.predict(tensors, batch_size=1000, verbose=0), labels, refused
