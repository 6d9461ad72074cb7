"""Checked promotion: a version reaches an alias only if it is intact, loads safely, and is
not measurably worse than what the alias serves now.

The gate scores a labelled golden set (by default the shipped 200-row sample, never used for
training) with the candidate and with the current target, both through the very path workers
use (``rows_to_tensor`` → ``predict``), so what is compared is what production would do.
Integrity (sha256 vs card) and safe loading (no custom code, 28x28x1 → 10 signature) can never
be forced; only the accuracy gate can, for a deliberate, recorded decision.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from digits.core.csv_input import CsvFileError, read_labelled
from digits.core.preprocess import rows_to_tensor
from digits.core.settings import get_settings
from model_store.aliases import PRODUCTION, AliasError, alias_target, set_alias
from model_store.inference import predict
from model_store.loading import load
from model_store.registry import ModelError, ModelVersion, default_version, get_version, verify

DEFAULT_TOLERANCE = 0.002
GOLDEN = Path(__file__).resolve().parent.parent / "digits" / "samples" / "sample.csv.gz"


class PromotionError(RuntimeError):
    """A promotion was refused; the message says why (and whether --force would help)."""


@dataclass(frozen=True)
class PromotionResult:
    version: int
    alias: str
    previous: int | None  # what the alias served before (bundled default if never set)
    accuracy: float  # candidate's accuracy on the golden set
    baseline_accuracy: float | None  # previous target's, None when there is none to compare
    golden_rows: int
    golden: str
    forced: bool
    moved: bool  # False when the alias already named this version
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def golden_accuracy(model: Any, pixels: Any, labels: Any) -> float:
    """Top-1 accuracy on the golden rows (temperature scaling never changes the arg-max)."""

    probs = predict(model, rows_to_tensor(pixels))
    return float((probs.argmax(axis=1) == labels).mean())


def _load_checked(meta: ModelVersion) -> Any:
    """Hash check, then safe load with the signature check; any refusal is a PromotionError."""

    try:
        verify(meta)
        return load(meta)
    except ModelError as exc:  # Keras' messages span lines: keep the refusal on one line
        raise PromotionError(f"refusing to promote: {' '.join(str(exc).split())}") from exc


def current_target(alias: str) -> int | None:
    """What the alias serves now: its target, or for ``production`` the bundled default."""
    target = alias_target(alias)
    if target is None and alias == PRODUCTION:
        try:
            return default_version().version
        except ModelError:
            return None
    return target


def promote(
    version: int,
    alias: str = PRODUCTION,
    tolerance: float = DEFAULT_TOLERANCE,
    force: bool = False,
    golden: Path | None = None,
    reason: str = "",
) -> PromotionResult:
    """Verify, load and score ``version``; move ``alias`` to it unless it is worse than the
    current target's golden accuracy minus ``tolerance`` (``force`` overrides only that).

    When the current target itself cannot be loaded (tampered, deleted) there is nothing to
    regress from, so the candidate is judged on integrity alone and the result says so.
    """

    if tolerance < 0:
        raise PromotionError(f"tolerance must be >= 0, got {tolerance}")
    try:
        candidate = get_version(version)
    except ModelError as exc:
        raise PromotionError(str(exc)) from exc
    model = _load_checked(candidate)
    golden_path = golden or GOLDEN
    try:
        pixels, labels = read_labelled(golden_path)
    except (CsvFileError, OSError) as exc:
        raise PromotionError(f"golden set {golden_path}: {exc}") from exc
    accuracy = golden_accuracy(model, pixels, labels)

    previous = current_target(alias)
    baseline: float | None = None
    note = ""
    if previous == version:
        baseline = accuracy
    elif previous is not None:
        try:
            baseline = golden_accuracy(_load_checked(get_version(previous)), pixels, labels)
        except (PromotionError, ModelError) as exc:
            note = f"current {alias} v{previous} cannot be scored ({exc}); no accuracy baseline"
    if baseline is not None and accuracy < baseline - tolerance and not force:
        raise PromotionError(
            f"refusing to promote v{version} to {alias}: golden accuracy {accuracy:.2%} is "
            f"below {alias} v{previous}'s {baseline:.2%} minus tolerance {tolerance:.2%} "
            f"on {len(labels)} rows ({golden_path.name}); use --force to override"
        )
    forced = force and baseline is not None and accuracy < baseline - tolerance
    text = reason or "promote"
    text += f" (golden {accuracy:.4f}"
    text += f" vs v{previous} {baseline:.4f})" if baseline is not None else ")"
    if forced:
        text += " [forced]"
    try:
        change = set_alias(alias, version, text)
    except AliasError as exc:
        raise PromotionError(str(exc)) from exc

    forced_version = get_settings().model_version
    if alias == PRODUCTION and forced_version is not None:
        note = "; ".join(
            filter(
                None,
                [
                    note,
                    f"DIGITS_MODEL_VERSION={forced_version} still "
                    "overrides the production alias for new batches",
                ],
            )
        )
    return PromotionResult(
        version,
        alias,
        previous,
        accuracy,
        baseline,
        len(labels),
        str(golden_path),
        forced,
        change.moved,
        note,
    )
