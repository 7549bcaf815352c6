"""Store each region's probability vector (over the run's cluster slots) with its assignment,
so image classes are computed by core's fusion; older rows keep NULL (confidence only).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 23:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("assignments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("probabilities", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("assignments", schema=None) as batch_op:
        batch_op.drop_column("probabilities")
