"""Regions remember whether they are weak: nothing in their image cleared the floor, so the map's
strongest spot stands in (core.regions.crops.peak_box). A weak region is "no anomaly found", like the
whole-image placeholder it replaces; existing rows are not weak.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 14:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("regions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("weak", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("regions", schema=None) as batch_op:
        batch_op.drop_column("weak")
