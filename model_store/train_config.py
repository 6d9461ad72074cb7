"""``TrainConfig``: the recipe of one ``digits train`` run (architecture, epochs, seeds, time
limit, augmentation, ensemble, precision, pseudo-labels). Its own module because every part of
training reads it: the orchestration, the augmentation's card text and each member's fit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from model_store.data import VAL_FRACTION


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
    writers: bool = False  # other writers' styles, slant, pen and low resolution (augmentation)
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
