"""A finished run is a record: regions and binarizations are versioned per image, never replaced.

A re-crop or threshold override adds a new version (is_current) used by the next run; the
regions a finished run assigned stay as they were. Clusters remember whether the engine made
them its normal slot (engine_normal), apart from the engineer marking a cluster normal.
Existing rows become version 1, current; engine_normal is the normal flag of clusters the
engineer never marked normal.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 23:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("regions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="1"))
        batch_op.add_column(sa.Column("is_current", sa.Boolean(), nullable=False, server_default=sa.true()))
        batch_op.drop_constraint("uq_regions_image_index", type_="unique")
        batch_op.create_unique_constraint("uq_regions_image_version_index", ["image_id", "version", "index"])
    with op.batch_alter_table("binarizations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="1"))
        batch_op.add_column(sa.Column("is_current", sa.Boolean(), nullable=False, server_default=sa.true()))
    with op.batch_alter_table("clusters", schema=None) as batch_op:
        batch_op.add_column(sa.Column("engine_normal", sa.Boolean(), nullable=False, server_default=sa.false()))

    connection = op.get_bind()
    edits = sa.table("edit_log", sa.column("kind", sa.String), sa.column("payload", sa.JSON))
    marked = {
        int(payload["cluster_id"])
        for (payload,) in connection.execute(sa.select(edits.c.payload).where(edits.c.kind == "mark_cluster_normal"))
        if isinstance(payload, dict) and "cluster_id" in payload
    }
    clusters = sa.table("clusters", sa.column("id", sa.Integer), sa.column("is_normal", sa.Boolean),
                        sa.column("engine_normal", sa.Boolean))  # fmt: skip
    query = sa.update(clusters).where(clusters.c.is_normal.is_(True)).values(engine_normal=True)
    if marked:
        query = query.where(clusters.c.id.not_in(sorted(marked)))
    connection.execute(query)


def downgrade() -> None:
    with op.batch_alter_table("clusters", schema=None) as batch_op:
        batch_op.drop_column("engine_normal")
    with op.batch_alter_table("binarizations", schema=None) as batch_op:
        batch_op.drop_column("is_current")
        batch_op.drop_column("version")
    op.execute(sa.text("DELETE FROM regions WHERE is_current = false"))
    with op.batch_alter_table("regions", schema=None) as batch_op:
        batch_op.drop_constraint("uq_regions_image_version_index", type_="unique")
        batch_op.create_unique_constraint("uq_regions_image_index", ["image_id", "index"])
        batch_op.drop_column("is_current")
        batch_op.drop_column("version")
