"""chunk_payloads: CSV chunks staged in the database (DIGITS_STAGING=database), so workers
on other machines need no shared staging folder

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 16:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# lz4 is listed only by a server built with it (the official images and Debian's are)
LZ4_BUILT_IN = sa.text(
    "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
)


def upgrade() -> None:
    op.create_table(
        "chunk_payloads",
        sa.Column("batch_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
            name="fk_chunk_payloads_batch_id_batches",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("batch_id", "seq", name="pk_chunk_payloads"),
    )
    bind = op.get_bind()
    if bind.dialect.name == "postgresql" and bind.execute(LZ4_BUILT_IN).scalar():
        # PostgreSQL's default TOAST compression (pglz) made staging 28,000 rows cost 1.2 s
        # more than the folder; lz4 costs 0.1 s for about the same size (docs/benchmark.md)
        op.execute("ALTER TABLE chunk_payloads ALTER COLUMN data SET COMPRESSION lz4")


def downgrade() -> None:
    op.drop_table("chunk_payloads")
