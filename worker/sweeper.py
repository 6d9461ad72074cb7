"""The sweeper: the database's answer to lost and repeated broker messages.

A running chunk whose lease expired lost its worker: it is re-queued (or quarantined once it
has used its attempts). A queued chunk whose message was sent long ago is re-sent: embedded
brokers lose in-flight messages when a whole worker is killed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import timedelta

from sqlalchemy import and_, or_, select

from digits.core.db import session
from digits.core.schema import Batch, Chunk, utcnow
from digits.core.settings import get_settings
from digits.core.state_machine import ACTIVE_BATCH, complete_batch_if_finished, quarantine
from worker.publish import send_chunks


@dataclass
class SweepReport:
    requeued: list[int] = field(default_factory=list)
    resent: list[int] = field(default_factory=list)
    quarantined: list[int] = field(default_factory=list)
    completed_batches: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[int]]:
        return asdict(self)


def sweep() -> SweepReport:
    settings = get_settings()
    now = utcnow()
    report = SweepReport()
    stale = now - timedelta(seconds=settings.lease_seconds)
    with session(write=True) as sess:
        expired = sess.scalars(
            select(Chunk).where(Chunk.state == "running", Chunk.lease_expires_at < now)
        ).all()
        for chunk in expired:
            if chunk.attempts >= settings.max_attempts:
                last = chunk.error or "its worker died every time (poison input?)"
                quarantine(sess, chunk, f"failed {chunk.attempts} attempts; last: {last}")
                report.quarantined.append(chunk.id)
            else:
                chunk.state = "queued"
                chunk.lease_owner = None
                chunk.lease_expires_at = None
                chunk.error = chunk.error or "lease expired: worker lost"
                report.requeued.append(chunk.id)
        lost = sess.scalars(
            select(Chunk.id)
            .join(Batch, Batch.id == Chunk.batch_id)
            .where(
                Chunk.state == "queued",
                Batch.status.in_(ACTIVE_BATCH),
                # never sent: give the enqueuer one lease to send it (the inbox moves
                # files between commit and send)
                or_(and_(Chunk.sent_at.is_(None), Batch.created_at < stale), Chunk.sent_at < stale),
            )
        ).all()
        report.resent = [c for c in lost if c not in report.requeued]
        for batch_id in sess.scalars(select(Batch.id).where(Batch.status == "running")).all():
            if complete_batch_if_finished(sess, batch_id, now):
                report.completed_batches.append(batch_id)
    send_chunks(report.requeued + report.resent)
    return report
