"""Publishing chunk ids to the broker. Messages carry ids only; the database holds the rest."""

from __future__ import annotations

from sqlalchemy import update

from digits.core.db import session
from digits.core.schema import Chunk, utcnow
from worker.celery_app import QUEUE, TASK_SCORE, sending_app


def send_chunks(chunk_ids: list[int]) -> None:
    """Wake workers for these chunks and stamp when (the sweeper re-sends lost messages)."""
    if not chunk_ids:
        return

    app = sending_app()
    with app.producer_or_acquire() as producer:
        for chunk_id in chunk_ids:
            app.send_task(TASK_SCORE, args=[chunk_id], queue=QUEUE, producer=producer)
    with session(write=True) as sess:
        sess.execute(update(Chunk).where(Chunk.id.in_(chunk_ids)).values(sent_at=utcnow()))
