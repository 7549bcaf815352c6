"""Index assignments by (run, region) with the columns an edit changes, so the Explore plot's
per-revision read (storage.points.umap_points: every region's cluster and normal mark, by region
id) is answered from the index alone, in region order, without touching the table.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 06:40:00
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

COLUMNS = ["run_id", "region_id", "cluster_id", "is_normal"]


def upgrade() -> None:
    op.create_index("ix_assignments_run_region_live", "assignments", COLUMNS, unique=False)


def downgrade() -> None:
    op.drop_index("ix_assignments_run_region_live", table_name="assignments")
