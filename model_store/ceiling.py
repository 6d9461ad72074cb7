"""The inference ceiling: faster ways to run the same model, measured against float32.

The FLOPs of a model and the CPU's peak are in model_store/flops.py (pure).
``compare_paths`` measures other ways to run the same model (XLA, bfloat16, TFLite float32 and
int8) against the float32 production path on the same array: speed, labels changed and
calibration with the version's temperature, because a faster path is only worth shipping if
it answers the same. ``check_new_version`` gives a newly trained version the int8 path.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from digits.core.preprocess import rows_to_tensor
from model_store.calibration import apply_temperature, expected_calibration_error, nll
from model_store.data import load_split
from model_store.flops import cpu_peak, flops_per_image
from model_store.loading import configure_threads, load, load_tflite
from model_store.registry import (
    CARD_FILE,
    INT8_FILE,
    ModelError,
    ModelVersion,
    get_version,
    sha256_file,
)
from model_store.tflite import TFLiteModel, convert, interpreter_runner

__all__ = ["TFLiteModel"]  # re-exported: the wrapper workers score through

#: The paths ``compare_paths`` knows; ``float32`` is the production path (predict_on_batch).
PATHS = ("float32", "xla", "bfloat16", "tflite-float32", "tflite-int8-dynamic", "tflite-int8")

#: A path qualifies only if it moves no more labels than this and keeps calibration.
MAX_LABELS_CHANGED = 1
#: ... and its ECE / NLL (after the version's temperature) are no worse than float32's by more.
ECE_TOLERANCE = 0.001
NLL_TOLERANCE = 0.002
#: ... and it is faster by at least this factor (smaller gains are within run-to-run noise).
MIN_SPEEDUP = 1.1

# ------------------------------------------------------------------ faster paths (TensorFlow)

Runner = Callable[[NDArray[np.float32]], NDArray[np.float32]]


def _tflite_runner(
    model: Any, mode: str, calibration: NDArray[np.float32], threads: int | None = None
) -> Runner:
    """A TFLite interpreter for ``model``: float32, int8 weights (dynamic range) or full int8."""
    return interpreter_runner(convert(model, mode, calibration), threads)[0]


def _bfloat16_model(model: Any) -> Any:
    """The same model rebuilt with the ``mixed_bfloat16`` policy: weights stay float32 and are
    cast to bfloat16 per op (oneDNN then uses AVX512_BF16 dot products); the last Dense layer
    and softmax stay float32 so probabilities near 1 are not rounded to bfloat16's 8 bits."""
    import keras

    def retype(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: retype(v) for k, v in node.items()}
            cfg = out.get("config")
            if (
                isinstance(cfg, dict)
                and "dtype" in cfg
                and cfg.get("name") != "probabilities"
                and out.get("class_name") != "InputLayer"
            ):
                cfg["dtype"] = "mixed_bfloat16"
            return out
        if isinstance(node, list):
            return [retype(v) for v in node]
        return node

    clone = keras.Model.from_config(retype(model.get_config()))
    clone.set_weights(model.get_weights())
    return clone


def inference_path(card: dict[str, Any], wanted: str) -> str:
    """The path a worker uses for a version: ``wanted`` (DIGITS_INFERENCE_PATH) if the
    version's card records it as checked on the held-out rows (``inference_paths``) together
    with its stored artefact (``file`` and ``sha256``, written by `digits models speed
    --record`), else float32, since a path qualified for one model is not evidence for another
    and converting in every worker process costs seconds of cold start."""
    entry = card.get("inference_paths", {}).get(wanted)
    if wanted == "float32" or (entry and entry.get("file") and entry.get("sha256")):
        return wanted
    return "float32"


def path_runner(
    model: Any, path: str, calibration: NDArray[np.float32], threads: int | None = None
) -> Runner:
    """A callable that scores a float32 batch the way ``path`` says (see ``PATHS``)."""
    if path == "float32":  # what model_store.inference.predict does for a chunk ≤ 4,096 rows
        return lambda x: np.asarray(model.predict_on_batch(x), np.float32)
    if path == "xla":
        import tensorflow as tf

        fn = tf.function(
            lambda x: model(x, training=False), jit_compile=True, reduce_retracing=True
        )
        return lambda x: np.asarray(fn(tf.constant(x)), np.float32)
    if path == "bfloat16":
        clone = _bfloat16_model(model)
        return lambda x: np.asarray(clone.predict_on_batch(x), np.float32)
    if path.startswith("tflite-"):
        mode = {
            "tflite-float32": "float32",
            "tflite-int8-dynamic": "dynamic",
            "tflite-int8": "int8",
        }
        return _tflite_runner(model, mode[path], calibration, threads)
    raise ValueError(f"unknown inference path {path!r}; known: {', '.join(PATHS)}")


def time_runner(
    run: Runner, tensor: NDArray[np.float32], batch_size: int, repeats: int
) -> tuple[float, NDArray[np.float32]]:
    """Best-of-``repeats`` images/s over ``tensor`` in ``batch_size`` chunks (the best pass is
    the one least disturbed by other processes), and the probabilities of the last pass."""
    run(tensor[:batch_size])  # warm-up: tracing, compilation, allocation
    best = math.inf
    probs = np.zeros((0, 10), np.float32)
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        probs = np.concatenate(
            [run(tensor[i : i + batch_size]) for i in range(0, len(tensor), batch_size)]
        )
        best = min(best, time.perf_counter() - started)
    return len(tensor) / best, probs


def compare_paths(
    model: Any,
    tensor: NDArray[np.float32],
    labels: NDArray[np.int64],
    temperature: float,
    batch_size: int,
    paths: Iterable[str] = PATHS,
    repeats: int = 3,
    calibration: NDArray[np.float32] | None = None,
    threads: int | None = None,
    runners: dict[str, Runner] | None = None,
) -> list[dict[str, Any]]:
    """Each path's images/s, labels changed against float32, accuracy and calibration.

    float32 (the production path) always runs first: the others are judged against it.
    ``calibration`` is the array full-integer quantization calibrates its ranges on (training
    rows, never the rows it is judged on); it defaults to ``tensor`` for a quick look.
    ``runners`` replaces the runner of a path (the stored int8 artefact instead of a fresh
    conversion).
    """
    calib = tensor[:500] if calibration is None else calibration
    rows: list[dict[str, Any]] = []
    base: NDArray[np.intp] | None = None
    base_row: dict[str, Any] = {}
    for path in ["float32", *[p for p in paths if p != "float32"]]:
        try:
            run = (runners or {}).get(path) or path_runner(model, path, calib, threads)
            rate, probs = time_runner(run, tensor, batch_size, repeats)
        except Exception as exc:  # a path the runtime here cannot build: say so, go on
            rows.append({"path": path, "error": f"{type(exc).__name__}: {exc}"[:300]})
            continue
        predicted = probs.argmax(axis=1)
        scaled = apply_temperature(probs, temperature)
        row: dict[str, Any] = {
            "path": path,
            "images_per_s": round(rate, 1),
            "labels_changed": 0 if base is None else int((predicted != base).sum()),
            "accuracy": round(float((predicted == labels).mean()), 5),
            "ece": round(expected_calibration_error(scaled, labels), 5),
            "nll": round(nll(scaled, labels), 5),
        }
        if base is None:
            base, base_row = predicted, row
            row["speedup"] = 1.0
        else:
            row["speedup"] = round(rate / base_row["images_per_s"], 3)
        row["qualifies"] = qualifies(row, base_row)
        rows.append(row)
    return rows


def qualifies(row: dict[str, Any], base: dict[str, Any]) -> bool:
    """Faster by ``MIN_SPEEDUP``, at most ``MAX_LABELS_CHANGED`` labels moved, and ECE / NLL
    after the version's temperature within the tolerances of float32's."""
    if row["path"] == "float32" or "error" in row:
        return False
    return bool(
        row["speedup"] >= MIN_SPEEDUP
        and row["labels_changed"] <= MAX_LABELS_CHANGED
        and row["ece"] <= base["ece"] + ECE_TOLERANCE
        and row["nll"] <= base["nll"] + NLL_TOLERANCE
    )


def speed_comparison(
    version: int,
    data: Path,
    batch_size: int,
    paths: Iterable[str] = PATHS,
    repeats: int = 3,
    limit: int | None = None,
    threads: int | None = None,
    record: str | None = None,
) -> dict[str, Any]:
    """`digits models speed`: every path on the held-out rows of ``data`` (the cards' split).

    ``threads`` limits TensorFlow's and TFLite's threads (a worker process runs with
    ``Settings.threads_per_worker()``, 1 each for 2 workers on 2 cores); None uses every core,
    as the bench's model-only figure does. Must be the first TensorFlow use in the process.

    tflite-int8-dynamic runs the version's stored ``model.int8.tflite`` (hash-checked) when its
    card records one, so the figures are those of the file workers load. ``record`` (the
    command line, from `--record`) converts afresh instead and, if that conversion qualifies,
    stores it beside the version with its sha256 and figures on the card (``record_int8``).
    """
    if threads:
        configure_threads(threads)
    meta = get_version(version)
    split = load_split(data)
    x_val, y_val = split.x_val, split.y_val
    if limit:
        x_val, y_val = x_val[:limit], y_val[:limit]
    model = load(meta)
    paths = list(paths)
    int8 = "tflite-int8-dynamic"
    runners: dict[str, Runner] = {}
    source = "converted now"
    flat = b""
    if record is not None:
        if int8 not in paths:
            raise ModelError(f"--record stores the {int8} path: add it to --paths")
        flat = convert(model, "dynamic")
        runners[int8] = interpreter_runner(flat, threads)[0]
    elif int8 in paths and meta.artefact(int8) is not None:
        runners[int8] = load_tflite(meta, int8, threads).predict_on_batch
        source = f"stored {INT8_FILE}"
    rows = compare_paths(
        model,
        rows_to_tensor(x_val),
        y_val,
        meta.temperature,
        batch_size,
        paths,
        repeats,
        calibration=rows_to_tensor(split.x_train[:1000]),
        threads=threads,
        runners=runners,
    )
    for row in rows:
        if row["path"] == int8:
            row["source"] = source
    if record is not None:
        [row] = [r for r in rows if r["path"] == int8]
        record_int8(meta, flat, row, rows[0], len(y_val), threads, record)
    peak = cpu_peak()
    flops = flops_per_image(model)
    for row in rows:
        if "images_per_s" in row:
            row["achieved_gflops"] = round(flops * row["images_per_s"] / 1e9, 1)
    return {
        "model_version": version,
        "rows": len(y_val),
        "batch_size": batch_size,
        "repeats": repeats,
        "threads": threads or "all",
        "temperature": meta.temperature,
        "flops_per_image": flops,
        "cpu": {
            k: peak[k] for k in ("model_name", "peak_gflops", "assumption", "reduced_precision")
        },
        "paths": rows,
    }


def record_int8(
    meta: ModelVersion,
    flat: bytes,
    row: dict[str, Any],
    base: dict[str, Any],
    rows: int,
    threads: int | None,
    command: str,
) -> None:
    """Store the int8 conversion ``flat`` as ``vN/model.int8.tflite`` and its sha256, size and
    held-out figures (``row`` against float32's ``base``) in the card's ``inference_paths``,
    only if it qualifies. Workers then load that file, hash-checked, instead of converting.
    The file is written before the card that names it, each by rename, so a reader sees the
    old card or the new card with its file in place."""
    if not row.get("qualifies"):
        reason = row.get("error") or (
            f"{row.get('labels_changed')} labels changed, ECE {row.get('ece')} (float32 "
            f"{base.get('ece')}), NLL {row.get('nll')} (float32 {base.get('nll')}), "
            f"{row.get('speedup')}× images/s"
        )
        raise ModelError(f"tflite-int8-dynamic does not qualify, nothing recorded: {reason}")
    target = meta.path / INT8_FILE
    tmp = target.with_name(f".{INT8_FILE}.tmp")
    tmp.write_bytes(flat)
    os.replace(tmp, target)
    entry = {
        "accuracy": row["accuracy"],
        "command": command,
        "ece": row["ece"],
        "float32_ece": base["ece"],
        "float32_nll": base["nll"],
        "labels_changed": row["labels_changed"],
        "measured_at": datetime.now(UTC).strftime("%Y-%m-%d"),
        "nll": row["nll"],
        "rows": rows,
        "file": INT8_FILE,
        "sha256": sha256_file(target),
        "bytes": target.stat().st_size,
        "runtime": "ai-edge-litert",
    }
    entry["speedup_one_thread" if threads == 1 else "speedup_all_threads"] = row["speedup"]
    _write_path_entry(meta, entry)


def _write_path_entry(meta: ModelVersion, entry: dict[str, Any]) -> None:
    """Set the card's ``inference_paths["tflite-int8-dynamic"]`` (by rename: a reader sees
    the old card or the new one)."""
    card = json.loads((meta.path / CARD_FILE).read_text())
    card.setdefault("inference_paths", {})["tflite-int8-dynamic"] = entry
    tmp_card = meta.path / f".{CARD_FILE}.tmp"
    tmp_card.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    os.replace(tmp_card, meta.path / CARD_FILE)


def check_new_version(
    version: int, data: Path, batch_size: int, command: str, limit: int | None = None
) -> dict[str, Any]:
    """`digits train`'s last step: give the new version the int8 path workers run by default,
    under the same bar as `digits models speed V --record` (converted, compared with float32
    on the version's held-out rows of ``data``, stored only if it qualifies). Without it every
    trained version ran float32 until someone recorded it by hand: about half the speed,
    silently. A refusal is written on the card too (``refused``: the reason), so `models show`
    says why the version runs float32. Returns the card's entry."""
    try:
        speed_comparison(
            version,
            data,
            batch_size,
            ["tflite-int8-dynamic"],
            repeats=2,
            limit=limit,
            record=command,
        )
    except ModelError as exc:
        meta = get_version(version)
        _write_path_entry(
            meta,
            {
                "refused": str(exc).partition("nothing recorded: ")[2] or str(exc),
                "command": command,
                "measured_at": datetime.now(UTC).strftime("%Y-%m-%d"),
            },
        )
    entry: dict[str, Any] = get_version(version).card["inference_paths"]["tflite-int8-dynamic"]
    return entry
