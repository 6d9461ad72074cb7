"""The on-disk model registry: numbered, immutable versions, each ``vN/model.keras + card.json``.

Two roots are searched: the versions bundled inside the package (read-only, so a fresh checkout
scores without training from any directory) and ``DIGITS_MODELS_DIR`` where ``digits train``
writes. Version numbers are unique across both. A version is written to a temporary folder and
renamed into place, so a half-copied model is never visible.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from digits.core.settings import get_settings

BUNDLED_DIR = Path(__file__).resolve().parent / "versions"
MODEL_FILE = "model.keras"
#: The stored TFLite conversion with int8 weights (`digits models speed V --record`).
INT8_FILE = "model.int8.tflite"
CARD_FILE = "card.json"


class ModelError(RuntimeError):
    """A model version is missing, tampered with, or not loadable safely."""


@dataclass(frozen=True)
class ModelVersion:
    version: int
    path: Path
    card: dict[str, Any]
    bundled: bool

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def sha256(self) -> str:
        return str(self.card["sha256"])

    def artefact(self, path: str) -> tuple[Path, str] | None:
        """The stored file and recorded sha256 of an inference path's artefact (e.g.
        ``model.int8.tflite`` for ``tflite-int8-dynamic``), or None if the card records none."""
        entry = self.card.get("inference_paths", {}).get(path, {})
        if not entry.get("file") or not entry.get("sha256"):
            return None
        return self.path / Path(entry["file"]).name, str(entry["sha256"])

    @property
    def temperature(self) -> float:
        return float(self.card.get("calibration", {}).get("temperature", 1.0))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def roots() -> list[tuple[Path, bool]]:
    return [(BUNDLED_DIR, True), (get_settings().local_models_dir, False)]


def _version_folders(root: Path) -> list[tuple[int, Path]]:
    """(number, folder) for each ``vN`` folder of ``root`` that has a card: folders without
    one (a half-written or foreign folder) are not versions."""
    if not root.is_dir():
        return []
    return [
        (int(child.name[1:]), child)
        for child in root.iterdir()
        if child.name.startswith("v") and child.name[1:].isdigit() and (child / CARD_FILE).is_file()
    ]


def list_versions() -> list[ModelVersion]:
    """Every registered version, ascending; a bundled number hides a trained one."""
    found: dict[int, ModelVersion] = {}
    for root, bundled in roots():
        for number, folder in _version_folders(root):
            if number not in found:
                card = json.loads((folder / CARD_FILE).read_text())
                found[number] = ModelVersion(number, folder, card, bundled)
    return [found[k] for k in sorted(found)]


def shadowed_versions() -> list[Path]:
    """Trained versions hidden by a bundled version of the same number.

    A release that bundles a new default takes the next number after its own versions; a
    user who trained locally may already have a version with that number. The bundled one
    wins (every installation of a release must agree on what its versions are), so the
    trained one is reported here instead of silently disappearing."""
    bundled = {number for number, _ in _version_folders(BUNDLED_DIR)}
    return sorted(
        folder
        for number, folder in _version_folders(get_settings().local_models_dir)
        if number in bundled
    )


def get_version(version: int) -> ModelVersion:
    for item in list_versions():
        if item.version == version:
            return item
    known = ", ".join(str(v.version) for v in list_versions()) or "none"
    raise ModelError(f"model version {version} does not exist (known: {known})")


def latest_version() -> ModelVersion:
    versions = list_versions()
    if not versions:
        raise ModelError("no model versions registered: run `digits train --data PATH`")
    return versions[-1]


def default_version() -> ModelVersion:
    """The bundled production model, or the newest version if none is bundled."""
    bundled = [v for v in list_versions() if v.bundled]
    return bundled[-1] if bundled else latest_version()


def verify(version: ModelVersion) -> None:
    """Refuse a model whose artifact does not match the sha256 recorded in its card."""
    verify_file(version, version.model_file, version.sha256)


def verify_file(version: ModelVersion, path: Path, expected: str) -> None:
    """Refuse ``path`` (the model or a stored conversion of it) unless its sha256 is the one
    the version's card records: missing and mismatched files raise ``ModelError``."""
    if not path.is_file():
        raise ModelError(f"model version {version.version}: {path.name} is missing")
    actual = sha256_file(path)
    if actual != expected:
        raise ModelError(
            f"model version {version.version}: {path.name} sha256 mismatch "
            f"(card {expected[:12]}…, file {actual[:12]}…): refusing to load"
        )


def register(model_file: Path, card: dict[str, Any], root: Path | None = None) -> ModelVersion:
    """Copy a saved ``.keras`` file in as the next version; returns the new version.

    Only the ``.keras`` file is copied, so a card's ``inference_paths`` (figures and stored
    artefacts of another folder) are dropped: `digits models speed V --record` checks and
    stores them for the new version."""
    root = root or get_settings().local_models_dir
    root.mkdir(parents=True, exist_ok=True)
    card = {k: v for k, v in card.items() if k != "inference_paths"}
    card["sha256"] = sha256_file(model_file)
    tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=root))
    tmp.chmod(0o755)  # mkdtemp makes 0700; workers may run as another user
    shutil.copyfile(model_file, tmp / MODEL_FILE)
    while True:
        number = max((v.version for v in list_versions()), default=0) + 1
        card["version"] = number
        (tmp / CARD_FILE).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
        try:
            os.rename(tmp, root / f"v{number}")
        except OSError:
            if (root / f"v{number}").exists():
                continue  # another trainer took this number: try the next one
            raise
        return get_version(number)


def file_sha256_or_none(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None
