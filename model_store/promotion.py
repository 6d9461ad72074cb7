"""Checked promotion: a version reaches an alias only if it is intact, loads safely, and is
not measurably worse than what the alias serves now.

The gate scores a labelled golden set (by default the shipped 200-row sample, never used for
training) with the candidate and with the current target, both through the very path workers
use (``rows_to_tensor`` → ``predict``), so what is compared is what production would do.
A second gate reads the two cards: each records its accuracy on the held-out rows of its
training file's fixed split (``model_store.data``), so when both cards name the same file
(sha256) and split, the candidate must not be below the target's figure minus the tolerance
either. A golden set of corrections shows what a fine-tuned version learnt; this one shows what
it forgot. Cards of different files cannot be compared, and the result's note says so.
Integrity (sha256 vs card) and safe loading (no custom code, 28x28x1 → 10 signature) can never
be forced; only the accuracy gates can, for a deliberate, recorded decision.
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
    # The cards' accuracy on the same held-out rows: the candidate's, and the current
    # target's when both cards were validated on the same file and split (else None).
    held_out_accuracy: float | None = None
    baseline_held_out_accuracy: float | None = None
    held_out_rows: int | None = None
    overridden: tuple[str, ...] = ()  # the gates --force overrode: "golden", "held-out"

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


def held_out_figures(candidate: ModelVersion, target: ModelVersion) -> tuple[float, float] | str:
    """(candidate's, target's) held-out accuracy from their cards when both were measured on
    the same rows: the same training file (sha256) and the same split. Otherwise why not."""
    cards = {candidate.version: candidate.card, target.version: target.card}
    for number, card in cards.items():
        if not isinstance(card.get("validation", {}).get("accuracy"), int | float):
            return f"v{number}'s card records no held-out accuracy"
    files = [card.get("training_data", {}).get("sha256") for card in cards.values()]
    if None in files or files[0] != files[1]:
        return (
            f"v{candidate.version} and v{target.version} were validated on different files "
            "(their cards' training_data sha256 differ or are missing)"
        )
    splits = [
        (card.get("validation_split"), card["validation"].get("count")) for card in cards.values()
    ]
    if splits[0] != splits[1]:
        return f"v{candidate.version} and v{target.version} were validated on different splits"
    return (
        float(candidate.card["validation"]["accuracy"]),
        float(target.card["validation"]["accuracy"]),
    )


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
    current target's golden accuracy minus ``tolerance``, or its card's held-out accuracy is
    below the target card's minus ``tolerance`` on the same rows (``force`` overrides only
    these two gates).

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
    notes: list[str] = []
    if previous == version:
        baseline = accuracy
    elif previous is not None:
        try:
            baseline = golden_accuracy(_load_checked(get_version(previous)), pixels, labels)
        except (PromotionError, ModelError) as exc:
            notes.append(
                f"current {alias} v{previous} cannot be scored ({exc}); no accuracy baseline"
            )
    if baseline is not None and accuracy < baseline - tolerance and not force:
        raise PromotionError(
            f"refusing to promote v{version} to {alias}: golden accuracy {accuracy:.2%} is "
            f"below {alias} v{previous}'s {baseline:.2%} minus tolerance {tolerance:.2%} "
            f"on {len(labels)} rows ({golden_path.name}); use --force to override"
        )
    held_out, held_baseline, held_rows = _held_out_gate(
        candidate, previous, alias, tolerance, force, notes
    )
    overridden = tuple(
        gate
        for gate, (mine, theirs) in (
            ("golden", (accuracy, baseline)),
            ("held-out", (held_out, held_baseline)),
        )
        if force and mine is not None and theirs is not None and mine < theirs - tolerance
    )
    text = reason or "promote"
    text += f" (golden {accuracy:.4f}"
    text += f" vs v{previous} {baseline:.4f}" if baseline is not None else ""
    if held_out is not None and held_baseline is not None:
        text += f"; held-out {held_out:.4f} vs {held_baseline:.4f}"
    text += ")"
    if overridden:
        text += " [forced]"
    try:
        change = set_alias(alias, version, text)
    except AliasError as exc:
        raise PromotionError(str(exc)) from exc

    forced_version = get_settings().model_version
    if alias == PRODUCTION and forced_version is not None:
        notes.append(
            f"DIGITS_MODEL_VERSION={forced_version} still "
            "overrides the production alias for new batches"
        )
    return PromotionResult(
        version,
        alias,
        previous,
        accuracy,
        baseline,
        len(labels),
        str(golden_path),
        bool(overridden),
        change.moved,
        "; ".join(notes),
        held_out,
        held_baseline,
        held_rows,
        overridden,
    )


def _held_out_gate(
    candidate: ModelVersion,
    previous: int | None,
    alias: str,
    tolerance: float,
    force: bool,
    notes: list[str],
) -> tuple[float | None, float | None, int | None]:
    """The second gate: the cards' held-out accuracy, (candidate's, target's, rows), refused
    when the candidate's is below the target's minus ``tolerance`` unless ``force``. When the
    cards cannot be compared, the figures are None and ``notes`` says why."""
    mine = candidate.card.get("validation", {})
    own = mine.get("accuracy") if isinstance(mine.get("accuracy"), int | float) else None
    rows = mine.get("count")
    if previous is None:
        return own, None, rows
    if previous == candidate.version:
        return own, own, rows
    try:
        figures = held_out_figures(candidate, get_version(previous))
    except ModelError as exc:
        figures = f"v{previous}'s card cannot be read ({exc})"
    if isinstance(figures, str):
        notes.append(f"no held-out comparison: {figures}")
        return own, None, rows
    accuracy, baseline = figures
    if accuracy < baseline - tolerance and not force:
        data = candidate.card.get("training_data", {}).get("path", "its training file")
        raise PromotionError(
            f"refusing to promote v{candidate.version} to {alias}: held-out accuracy "
            f"{accuracy:.2%} (its card) is below {alias} v{previous}'s {baseline:.2%} minus "
            f"tolerance {tolerance:.2%} on the same {rows} held-out rows of {data}; use --force "
            "to override"
        )
    return accuracy, baseline, rows
