"""The CNNs' learning-rate schedule, fitted to the time limit. Pure functions: no Keras here.

One warm-up epoch rising linearly to the peak, then a cosine decay towards 0 that ends with
the last epoch. A time limit that cuts a cosine schedule short leaves the model at a high
learning rate, far from the minimum it was heading for: the same recipe is 2-3x slower on an
AVX2-only CPU than on an AVX-512 one, and stopping v3's 50-epoch recipe there after 25 epochs
would waste the hour. So after every epoch from the second on, the schedule is fitted to the
epochs the remaining time holds at the recent pace (never more than planned): a shorter run
that still anneals, instead of a long one that never does.
"""

from __future__ import annotations

import math

PEAK_LEARNING_RATE = 2e-3
WARMUP_EPOCHS = 1
PACE_WINDOW = 3  # epochs the pace is measured over


def learning_rate(
    step: int, steps_per_epoch: int, epochs: int, peak: float = PEAK_LEARNING_RATE
) -> float:
    """The rate for training step ``step`` (0-based) of a schedule ``epochs`` long: linear
    warm-up over the first epoch, then cosine decay over ``epochs`` epochs (as Keras'
    ``CosineDecay(0, decay_steps=steps_per_epoch * epochs, warmup_steps=steps_per_epoch)``,
    the schedule of every earlier version, so an unshortened run trains as before)."""
    warmup = steps_per_epoch * WARMUP_EPOCHS
    if step < warmup:
        return peak * step / warmup
    decay = steps_per_epoch * epochs
    progress = min(step - warmup, decay) / decay
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def fitted_epochs(planned: int, done: int, seconds_per_epoch: float, remaining: float) -> int:
    """How many epochs the schedule should end at, now that ``done`` are done: ``planned`` if
    the rest fits in ``remaining`` seconds at ``seconds_per_epoch``, else as many as fit, and
    ``done`` (stop now) if none does. Refitted after every epoch with the recent pace
    (``pace``), so a slow start (the other member still loading, a busy core) shortens it
    only as long as the slowness lasts; each refit moves the rate only a little, as the pace
    changes little."""
    if remaining <= 0:
        return done
    fit = done + int(remaining // max(seconds_per_epoch, 1e-9))
    return min(planned, fit)


def member_deadlines(start: float, seconds: float, members: int, jobs: int) -> list[float]:
    """When each member's schedule must end. Members train ``jobs`` at a time, so in
    ceil(members / jobs) waves; each wave gets an equal share of the time limit. With one
    deadline for all, the first wave would fit its schedules to the whole limit (each refit
    sees all of it as its own) and the later members would never start."""
    jobs = max(1, min(jobs, members))
    waves = math.ceil(members / jobs)
    return [start + seconds * (index // jobs + 1) / waves for index in range(members)]


def pace(epoch_ends: list[float], window: int = PACE_WINDOW) -> float | None:
    """Seconds per epoch over the last ``window`` epochs, from the wall-clock times at which
    the epochs ended; None before two have ended. The first epoch's own duration never
    counts (it also traces the graph). Recent, not the mean since the start: training
    renders the held-out scans on the parent's thread for its first minutes, which slows
    the first members by a third; a mean since the start remembered it, and kept refitting
    the schedule upwards (23 -> 35 epochs, until epoch 18 of 35) well into the decay; over
    the last three epochs it was back at the planned 50 by epoch 8."""
    if len(epoch_ends) < 2:
        return None
    first = max(0, len(epoch_ends) - 1 - window)
    return (epoch_ends[-1] - epoch_ends[first]) / (len(epoch_ends) - 1 - first)


def teacher_share(
    teacher_epochs: int, teacher_rows: int, student_epochs: int, student_rows: int
) -> float:
    """The share of the time limit the teachers get when training pseudo-labels first: their
    share of the planned work (epochs x rows, the same per member and wave in both rounds).
    The students get what the teachers leave, so a slow teacher round costs the students
    epochs, never the limit."""
    teachers = teacher_epochs * teacher_rows
    return teachers / (teachers + student_epochs * student_rows)
