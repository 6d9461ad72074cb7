"""`digits report`: PNG plots and an ``index.html`` for one batch, to look at a batch by eye.

What is in it: label distribution, calibrated-confidence histogram, the items flagged for
review (least confident first; with ``include_unflagged`` the least-confident items, flagged or
not), each with its file name, the original scan beside the very pixels the model saw (CSV: the
staged row, which is its own original; images: the file, then the file preprocessed the way the
worker does it) and its predicted label, and — when the input carried true labels — a
confusion matrix and the accuracy.

The module is split so the numbers can be tested without drawing: ``load`` reads the database,
the pure helpers (``label_counts``, ``confusion``, ``accuracy``, ``least_confident``,
``render_html``) shape plain values, and the ``plot_*`` functions only draw. matplotlib is
imported inside the plotting functions (Agg backend, no display, no pyplot global state), so
importing this module stays as cheap as the rest of the CLI.
"""

from __future__ import annotations

import html
import io
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import select

from digits.core import staging
from digits.core.db import session
from digits.core.images import Rejected, decode_image, image_to_tensor
from digits.core.safe_files import read_regular
from digits.core.schema import Batch, Chunk, Item, ItemError, Prediction
from digits.core.settings import get_settings
from scheduler.export import atomic_write

DIGITS = list(range(10))
GRID_ITEMS = 16
"""Least-confident items shown: a 4×4 grid stays legible and cheap to render."""
ORIGINAL_SIDE = 140
"""The original scan is drawn at most this many pixels on a side (beside the 28×28)."""
ERRORS_LISTED = 50


class ReportError(ValueError):
    """No report possible (unknown batch): nothing is written."""


@dataclass(frozen=True)
class Row:
    item_id: int
    position: int  # the Kaggle ImageId
    source_ref: str
    status: str
    label: int | None
    confidence: float | None
    true_label: int | None
    error: str | None
    needs_review: bool = False  # flagged for review: calibrated confidence below the threshold


@dataclass
class BatchData:
    batch_id: int
    source: str
    kind: str
    status: str
    model_version: int
    model_sha256: str
    rows: list[Row]

    @property
    def predicted(self) -> list[Row]:
        return [r for r in self.rows if r.label is not None]

    def count(self, status: str) -> int:
        return sum(1 for r in self.rows if r.status == status)


@dataclass
class Report:
    batch_id: int
    out_dir: Path
    index: Path
    images: dict[str, Path] = field(default_factory=dict)
    accuracy: float | None = None
    flagged: int = 0  # items flagged for review in the batch
    shown: int = 0  # items in the grid


# ---------------------------------------------------------------- reading
def load(batch_id: int) -> BatchData:
    """The batch and one row per item with its prediction by the batch's pinned version."""
    with session() as sess:
        batch = sess.get(Batch, batch_id)
        if batch is None:
            raise ReportError(f"batch {batch_id} does not exist")
        rows = sess.execute(
            select(
                Item.id,
                Item.position,
                Item.source_ref,
                Item.status,
                Prediction.label,
                Prediction.confidence,
                Item.true_label,
                ItemError.reason,
                Prediction.needs_review,
            )
            .outerjoin(
                Prediction,
                (Prediction.item_id == Item.id) & (Prediction.model_version == batch.model_version),
            )
            .outerjoin(ItemError, ItemError.item_id == Item.id)
            .where(Item.batch_id == batch_id)
            .order_by(Item.position)
        ).all()
    return BatchData(
        batch.id,
        batch.source,
        batch.kind,
        batch.status,
        batch.model_version,
        batch.model_sha256,
        [
            Row(
                int(i),
                int(pos),
                ref,
                status,
                None if label is None else int(label),
                None if conf is None else float(conf),
                None if true is None else int(true),
                why,
                bool(flagged),
            )
            for i, pos, ref, status, label, conf, true, why, flagged in rows
        ],
    )


def staged_rows(item_ids: list[int]) -> dict[int, NDArray[np.uint8]]:
    """CSV items: their staged 784 uint8 values (a chunk's rows follow its items' positions)."""
    wanted = set(item_ids)
    out: dict[int, NDArray[np.uint8]] = {}
    with session() as sess:
        chunks = sess.execute(
            select(Chunk.id, Chunk.ref)
            .join(Item, Item.chunk_id == Chunk.id)
            .where(Item.id.in_(item_ids))
            .distinct()
        ).all()
        refs = {
            ref: list(
                sess.scalars(
                    select(Item.id).where(Item.chunk_id == chunk_id).order_by(Item.position)
                ).all()
            )
            for chunk_id, ref in chunks
        }
    for ref, members in refs.items():
        try:  # a reference outside the staging folder is never read (StagingError)
            pixels = staging.get(ref)
        except (OSError, ValueError):
            continue
        if len(pixels) != len(members):
            continue  # not the chunk these items were staged in
        for index, item_id in enumerate(members):
            if item_id in wanted:
                out[item_id] = np.asarray(pixels[index], np.uint8).reshape(784)
    return out


def staged_pixels(item_ids: list[int]) -> dict[int, NDArray[np.float32]]:
    """CSV items: their 28×28 rows from the chunk's staged ``.npy``, as 0–1 floats (a removed
    payload leaves them out: the grid shows "no image")."""
    return {
        item_id: row.reshape(28, 28).astype(np.float32) / 255.0
        for item_id, row in staged_rows(item_ids).items()
    }


def file_pixels(item_ids: list[int]) -> dict[int, NDArray[np.float32]]:
    """Image items: the file preprocessed exactly as the worker does (28×28, ink bright);
    a file the preprocessing refuses is shown as the original, in grayscale."""
    from PIL import Image

    settings = get_settings()
    with session() as sess:
        paths = dict(sess.execute(select(Item.id, Item.path).where(Item.id.in_(item_ids))).all())
    out: dict[int, NDArray[np.float32]] = {}
    for item_id, raw in paths.items():
        if not raw:
            continue
        try:
            data = Path(raw).read_bytes()
        except OSError:
            continue
        try:
            out[item_id] = image_to_tensor(data, settings.max_image_pixels).reshape(28, 28)
        except Rejected:
            try:
                with Image.open(io.BytesIO(data)) as img:
                    img.thumbnail((112, 112))
                    out[item_id] = np.asarray(img.convert("L"), np.float32) / 255.0
            except Exception:  # unreadable: shown as "no image"
                continue
    return out


def original_pixels(kind: str, item_ids: list[int]) -> dict[int, NDArray[np.float32]]:
    """What the item looked like before preprocessing, to show beside what the model saw.
    CSV: the row drawn (a Kaggle row is already 28×28, its own original). Images: the file
    itself, decoded with the same limits as the worker, grayscale, at most ``ORIGINAL_SIDE``
    pixels on a side; a file gone or refused since is left out (the tile says so)."""
    if kind == "csv":
        return staged_pixels(item_ids)
    from PIL import Image

    settings = get_settings()
    with session() as sess:
        paths = dict(sess.execute(select(Item.id, Item.path).where(Item.id.in_(item_ids))).all())
    out: dict[int, NDArray[np.float32]] = {}
    for item_id, raw in paths.items():
        if not raw:
            continue
        try:
            gray = decode_image(
                read_regular(Path(raw), settings.max_file_bytes), settings.max_image_pixels
            )
        except (OSError, Rejected):
            continue
        img = Image.fromarray(np.uint8(np.clip(gray, 0.0, 1.0) * 255))
        img.thumbnail((ORIGINAL_SIDE, ORIGINAL_SIDE))
        out[item_id] = np.asarray(img, np.float32) / 255.0
    return out


# ---------------------------------------------------------------- pure shaping
def label_counts(labels: Sequence[int]) -> list[int]:
    """How many items got each digit 0–9."""
    counts = [0] * 10
    for label in labels:
        counts[label] += 1
    return counts


def confusion(pairs: Sequence[tuple[int, int]]) -> list[list[int]]:
    """10×10 counts, rows = true digit, columns = predicted digit."""
    matrix = [[0] * 10 for _ in DIGITS]
    for true, predicted in pairs:
        matrix[true][predicted] += 1
    return matrix


def accuracy(pairs: Sequence[tuple[int, int]]) -> float | None:
    return sum(t == p for t, p in pairs) / len(pairs) if pairs else None


def labelled_pairs(rows: Sequence[Row]) -> list[tuple[int, int]]:
    return [
        (r.true_label, r.label) for r in rows if r.true_label is not None and r.label is not None
    ]


def least_confident(rows: Sequence[Row], n: int = GRID_ITEMS) -> list[Row]:
    """The ``n`` predicted items with the lowest confidence (ties: source order)."""
    scored = [r for r in rows if r.confidence is not None]
    return sorted(scored, key=lambda r: (r.confidence, r.position))[:n]


def grid_rows(
    rows: Sequence[Row], n: int = GRID_ITEMS, include_unflagged: bool = False
) -> list[Row]:
    """The grid's items: those flagged for review, least confident first, at most ``n``;
    with ``include_unflagged`` the ``n`` least-confident items, flagged or not."""
    chosen = rows if include_unflagged else [r for r in rows if r.needs_review]
    return least_confident(chosen, n)


def summary(data: BatchData) -> dict[str, Any]:
    pairs = labelled_pairs(data.rows)
    return {
        "batch_id": data.batch_id,
        "source": data.source,
        "kind": data.kind,
        "status": data.status,
        "model_version": data.model_version,
        "model_sha256": data.model_sha256,
        "items": len(data.rows),
        "predicted": len(data.predicted),
        "errors": data.count("error"),
        "duplicates": data.count("duplicate"),
        "pending": data.count("pending"),
        "flagged": sum(1 for r in data.rows if r.needs_review),
        "labelled": len(pairs),
        "accuracy": accuracy(pairs),
    }


def render_html(
    info: dict[str, Any], images: dict[str, str], least: Sequence[Row], errors: Sequence[Row]
) -> str:
    """The index page: counts, model, accuracy, the figures, the least-confident items and the
    first errors. Every value from the database is escaped (sources and reasons are user text)."""
    e = html.escape

    def cell(value: Any) -> str:
        return f"<td>{e('' if value is None else str(value))}</td>"

    acc = (
        f"{info['accuracy']:.2%} on {info['labelled']} labelled items"
        if info["accuracy"] is not None
        else "no true labels"
    )
    facts = [
        ("source", info["source"]),
        ("kind", info["kind"]),
        ("status", info["status"]),
        ("model", f"v{info['model_version']} (sha256 {info['model_sha256'][:16]}…)"),
        ("items", info["items"]),
        ("predicted", info["predicted"]),
        ("errors", info["errors"]),
        ("duplicates", info["duplicates"]),
        ("pending", info["pending"]),
        ("flagged for review", info["flagged"]),
        ("accuracy", acc),
    ]
    shown_flagged = sum(1 for r in least if r.needs_review)
    grid_title = (
        f"The {len(least)} items flagged for review, least confident first"
        if shown_flagged == len(least)
        else f"The {len(least)} least-confident items ({shown_flagged} flagged for review)"
    )
    titles = {
        "labels": "Predicted labels",
        "confidence": "Calibrated confidence",
        "least_confident": grid_title,
        "confusion": "Confusion matrix (rows: true, columns: predicted)",
    }
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>digits report: batch {info['batch_id']}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;"
        "text-align:left}img{max-width:100%;border:1px solid #eee}</style>",
        "</head>",
        "<body>",
        f"<h1>Batch {info['batch_id']}</h1>",
        "<table>",
        *(f"<tr><th>{e(k)}</th>{cell(v)}</tr>" for k, v in facts),
        "</table>",
    ]
    for key, name in images.items():
        parts += [
            f"<h2>{e(titles.get(key, key))}</h2>",
            f'<img src="{e(name)}" alt="{e(titles.get(key, key))}">',
        ]
    if least:
        parts += [
            f"<h2>{e(grid_title)}</h2>",
            "<table><tr><th>ImageId</th><th>source</th><th>label</th>"
            "<th>confidence</th><th>flagged</th><th>true label</th></tr>",
            *(
                f"<tr>{cell(r.position)}{cell(r.source_ref)}{cell(r.label)}"
                f"{cell(f'{r.confidence:.4f}' if r.confidence is not None else None)}"
                f"{cell('yes' if r.needs_review else 'no')}{cell(r.true_label)}</tr>"
                for r in least
            ),
            "</table>",
        ]
    elif info["predicted"]:
        parts.append(
            "<p>No item is flagged for review. <code>digits report --include-unflagged</code> "
            "shows the least-confident items.</p>"
        )
    if errors:
        more = len(errors) - ERRORS_LISTED
        parts += [
            "<h2>Item errors</h2>",
            "<table><tr><th>ImageId</th><th>source</th><th>reason</th></tr>",
            *(
                f"<tr>{cell(r.position)}{cell(r.source_ref)}{cell(r.error)}</tr>"
                for r in errors[:ERRORS_LISTED]
            ),
            "</table>",
        ]
        if more > 0:
            parts.append(f"<p>… and {more} more (see <code>digits results</code>)</p>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


# ---------------------------------------------------------------- drawing
def _figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _save(fig: Any, path: Path) -> Path:
    """PNG bytes written via a temp file + rename: a reader never sees half a picture."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o644)  # mkstemp makes 0600; a report is meant to be shared
            fh.write(buf.getvalue())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def plot_labels(counts: Sequence[int], path: Path) -> Path:
    fig = _figure(6, 3.5)
    ax = fig.add_subplot()
    bars = ax.bar(DIGITS, counts, color="#4878a8")
    ax.bar_label(bars, fontsize=8)
    ax.set_xticks(DIGITS)
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("items")
    ax.set_title("Label distribution")
    fig.tight_layout()
    return _save(fig, path)


def plot_confidence(confidences: Sequence[float], threshold: float, path: Path) -> Path:
    fig = _figure(6, 3.5)
    ax = fig.add_subplot()
    ax.hist(list(confidences), bins=np.linspace(0, 1, 41), color="#4878a8")
    ax.axvline(threshold, color="#c44e52", linestyle="--", label=f"review threshold {threshold:g}")
    ax.set_yscale("log")
    ax.set_xlabel("calibrated confidence")
    ax.set_ylabel("items (log)")
    ax.set_title("Confidence")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return _save(fig, path)


def _tile(ax: Any, image: NDArray[np.float32] | None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if image is None:
        ax.text(0.5, 0.5, "no image", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)


def plot_least_confident(
    rows: Sequence[Row],
    pixels: dict[int, NDArray[np.float32]],
    path: Path,
    originals: dict[int, NDArray[np.float32]] | None = None,
    title: str = "Least-confident items",
) -> Path:
    """A grid of tiles: each names the item (ImageId, file) with its label and confidence,
    and shows the original scan beside the 28×28 the model saw (``originals``: image batches;
    a CSV row is its own original, one picture)."""
    cols = 4
    panels = 2 if originals is not None else 1
    n_rows = max(1, -(-len(rows) // cols))
    fig = _figure(cols * panels * 1.7, n_rows * 2.5)
    for k in range(n_rows * cols):
        axes = [fig.add_subplot(n_rows, cols * panels, k * panels + j + 1) for j in range(panels)]
        if k >= len(rows):
            for ax in axes:
                ax.axis("off")
            continue
        r = rows[k]
        if originals is not None:
            _tile(axes[0], originals.get(r.item_id))
            axes[0].set_xlabel("scan", fontsize=7)
            axes[1].set_xlabel("model input", fontsize=7)
        _tile(axes[-1], pixels.get(r.item_id))
        truth = f" (true {r.true_label})" if r.true_label is not None else ""
        wrong = r.true_label is not None and r.true_label != r.label
        name = Path(r.source_ref).name
        name = name if len(name) <= 18 * panels else name[: 18 * panels - 1] + "…"
        axes[0].set_title(
            f"#{r.position} {name}\n{r.label} @ {r.confidence:.2f}{truth}"
            + (" flagged" if r.needs_review else ""),
            fontsize=8,
            color="#c44e52" if wrong else "black",
            loc="left",
        )
    fig.suptitle(f"{title}: ImageId file, predicted @ confidence")
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion(matrix: Sequence[Sequence[int]], path: Path) -> Path:
    fig = _figure(5.5, 5)
    ax = fig.add_subplot()
    values = np.asarray(matrix)
    ax.imshow(np.log1p(values), cmap="Blues")
    for t in DIGITS:
        for p in DIGITS:
            if values[t, p]:
                ax.text(
                    p,
                    t,
                    str(values[t, p]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if t == p else "black",
                )
    ax.set_xticks(DIGITS)
    ax.set_yticks(DIGITS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix")
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------- the report
def build_report(
    batch_id: int, out_dir: Path, grid: int = GRID_ITEMS, include_unflagged: bool = False
) -> Report:
    """Write the PNGs and ``index.html`` for ``batch_id`` into ``out_dir``. The grid shows
    the items flagged for review (at most ``grid``); ``include_unflagged``: the ``grid``
    least-confident items, flagged or not."""
    data = load(batch_id)
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    info = summary(data)
    predicted = data.predicted
    least = grid_rows(predicted, grid, include_unflagged)
    ids = [r.item_id for r in least]
    pixels = staged_pixels(ids) if data.kind == "csv" else file_pixels(ids)
    originals = None if data.kind == "csv" else original_pixels(data.kind, ids)
    images = {
        "labels": plot_labels(
            label_counts([r.label for r in predicted if r.label is not None]),
            out_dir / "labels.png",
        ),
        "confidence": plot_confidence(
            [r.confidence for r in predicted if r.confidence is not None],
            get_settings().confidence_threshold,
            out_dir / "confidence.png",
        ),
    }
    (out_dir / "least_confident.png").unlink(missing_ok=True)  # never a stale grid
    if least:
        images["least_confident"] = plot_least_confident(
            least,
            pixels,
            out_dir / "least_confident.png",
            originals,
            "Least-confident items" if include_unflagged else "Flagged for review",
        )
    pairs = labelled_pairs(data.rows)
    if pairs:
        images["confusion"] = plot_confusion(confusion(pairs), out_dir / "confusion.png")
    errors = [r for r in data.rows if r.error]
    page = render_html(info, {k: p.name for k, p in images.items()}, least, errors)

    index = out_dir / "index.html"
    atomic_write(index, [page])
    return Report(batch_id, out_dir, index, images, info["accuracy"], info["flagged"], len(least))
