"""who is ingesting a batch (for resume and interrupted-ingest reporting), heartbeat roles

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 02:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ingest_owner", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("ingest_seen_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("role", sa.String(length=16), nullable=False, server_default="worker")
        )


def downgrade() -> None:
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.drop_column("role")
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_column("ingest_seen_at")
        batch_op.drop_column("ingest_owner")
