"""One member's fit: the job it is given, the model built in its precision, the compiled loss,
the ``tf.data`` pipeline, the callback that keeps it inside its deadline, and its card.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from digits.core.preprocess import rows_to_tensor
from model_store.augmentation import augmenter
from model_store.schedule import PEAK_LEARNING_RATE, fitted_epochs, learning_rate, pace
from model_store.train_config import TrainConfig

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
    peak: float = PEAK_LEARNING_RATE,
) -> Any:
    """A Keras callback that reports steps to a plain function (keeps rich out of training)
    and keeps training inside ``deadline`` (wall clock): after every epoch it fits the
    remaining schedule to the time left at the recent pace (``model_store.schedule``)
    and stops when the fitted schedule ends. With ``scheduled`` it also sets the learning rate
    of every step from that schedule (the CNNs); without, only the epoch count is fitted (the
    origin's MLP keeps RMSprop's constant rate). ``peak`` is the schedule's top rate: lower
    when a trained model is fine-tuned, so a few hundred rows nudge it instead of undoing it."""
    import keras

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
                    self.epoch * steps_per_epoch + batch,
                    steps_per_epoch,
                    self.schedule_epochs,
                    peak,
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


@dataclass(frozen=True)
class MemberJob:
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
    # Fine-tuning (``model_store.fine_tune``): a saved trained model to continue from instead
    # of a new one, and the schedule's peak rate (the same warm-up and cosine decay, lower).
    start: Path | None = None
    peak_learning_rate: float = PEAK_LEARNING_RATE

    @property
    def slot(self) -> int:
        """Index among all the models the run trains (teachers first): progress and files."""
        return self.index + (
            0 if self.teacher or not self.config.pseudo_label else self.config.ensemble
        )


def train_member(job: MemberJob, report: ReportFn) -> tuple[Any, dict[str, Any]] | None:
    """Fit one model (Adam, one warm-up epoch, cosine decay fitted to the time limit;
    augmented batches) and score it on the validation rows. Returns None if the time limit
    passed before it could start. With ``job.start`` the model is that saved one (its own
    name and weights, always on the Adam schedule) instead of a newly built one."""
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
    if job.start is not None:
        model = keras.saving.load_model(job.start, compile=False, safe_mode=True)
    else:
        model = _build(config.arch, name, config.precision)
    scheduled = job.start is not None or config.arch != "mlp"
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
            augmenter(seed, config.elastic, config.degrade, config.writers),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    if config.label_smoothing:
        dataset = dataset.map(lambda x, y: (x, tf.one_hot(y, 10)))
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    role = "teacher" if job.teacher else "member"
    one_model = config.ensemble == 1 and not job.teacher
    prefix = "" if one_model else f"{role} {job.index + 1}/{config.ensemble} "
    callback = _keras_callback(
        report,
        job.deadline,
        job.slot,
        prefix,
        epochs,
        steps_per_epoch,
        scheduled,
        job.peak_learning_rate,
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
