"""Index assignments by (cluster, confidence) so a cluster's regions page without a scan.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 04:40:00
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_assignments_cluster_confidence", "assignments", ["cluster_id", "confidence"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_assignments_cluster_confidence", table_name="assignments")
