"""SQLAlchemy 2.0 typed models of a Studio workspace.

The Alembic migrations in storage/migrations are the source of the schema in a database;
these models must agree with them (tests/test_storage.py compares the two).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(400))
    data_root: Mapped[str] = mapped_column(Text)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("project_id", "relpath", name="uq_images_project_relpath"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    relpath: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str | None] = mapped_column(String(128))
    file_size: Mapped[int | None] = mapped_column(Integer)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(32))
    gt_class: Mapped[str | None] = mapped_column(Text)
    gt_mask_path: Mapped[str | None] = mapped_column(Text)


class AnomalyMap(Base):
    __tablename__ = "anomaly_maps"
    __table_args__ = (UniqueConstraint("image_id", "source", name="uq_anomaly_maps_image_source"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    source: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Binarization(Base):
    """MEBin's result for one image, one row per version; the current one feeds the next run."""

    __tablename__ = "binarizations"

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    map_id: Mapped[int | None] = mapped_column(ForeignKey("anomaly_maps.id", ondelete="SET NULL"))
    threshold: Mapped[int] = mapped_column(Integer)
    num_anomalies: Mapped[int] = mapped_column(Integer)
    counts: Mapped[list[Any]] = mapped_column(JSON, default=list)
    mask_path: Mapped[str | None] = mapped_column(Text)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # 1, 2, ... per image
    is_current: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())


class Region(Base):
    """One crop of an image. A re-crop adds a new version; older ones stay while a run or label uses them."""

    __tablename__ = "regions"
    __table_args__ = (UniqueConstraint("image_id", "version", "index", name="uq_regions_image_version_index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    x0: Mapped[int] = mapped_column(Integer)
    y0: Mapped[int] = mapped_column(Integer)
    x1: Mapped[int] = mapped_column(Integer)
    y1: Mapped[int] = mapped_column(Integer)
    area: Mapped[int] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Float)
    # nothing in its image cleared the floor: the map's strongest spot stands in (core Region.weak)
    weak: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    crop_path: Mapped[str | None] = mapped_column(Text)
    mask_path: Mapped[str | None] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # crop set of its image
    is_current: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())  # in the latest set


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    stage: Mapped[str | None] = mapped_column(String(200))
    message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    checkpoint_path: Mapped[str | None] = mapped_column(Text)
    loss_history: Mapped[list[Any]] = mapped_column(JSON, default=list)
    pid: Mapped[int | None] = mapped_column(Integer)
    host: Mapped[str | None] = mapped_column(String(255))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    parent_run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    queue: Mapped[str | None] = mapped_column(String(64))  # the job queue it waits in (jobs.engine)
    worker: Mapped[str | None] = mapped_column(String(255))  # the worker that took it last
    device: Mapped[str | None] = mapped_column(String(64))  # the device that worker runs on
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    events: Mapped[list[Any] | None] = mapped_column(JSON)  # taken, lost, retried: the run's history


class Cluster(Base):
    """A class of a run's result. `slot` is its column in the model's output (core's cluster
    index into DiscoveryResult.cluster_names; a split adds slots past the model's); `id` is the
    row, unique over all runs, and what assignments and edits refer to."""

    __tablename__ = "clusters"
    __table_args__ = (UniqueConstraint("run_id", "slot", name="uq_clusters_run_slot"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    slot: Mapped[int] = mapped_column(Integer)
    name: Mapped[str | None] = mapped_column(Text)
    color: Mapped[str] = mapped_column(String(32))
    is_normal: Mapped[bool] = mapped_column(Boolean, default=False)  # normal now (engine slot or engineer)
    engine_normal: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())  # the engine's normal slot
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("clusters.id", ondelete="SET NULL"))
    version: Mapped[int] = mapped_column(Integer, nullable=False)

    __mapper_args__ = {"version_id_col": version}


class Assignment(Base):
    """One region's place in one run: its cluster now (cluster_id, after edits) and the model's
    (original_cluster_id), confidence, 2-D map point, embedding and probability vector."""

    __tablename__ = "assignments"
    __table_args__ = (
        UniqueConstraint("run_id", "region_id", name="uq_assignments_run_region"),
        Index("ix_assignments_cluster_confidence", "cluster_id", "confidence"),
        Index("ix_assignments_run_region_live", "run_id", "region_id", "cluster_id", "is_normal"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    region_id: Mapped[int] = mapped_column(ForeignKey("regions.id", ondelete="CASCADE"), index=True)
    cluster_id: Mapped[int] = mapped_column(ForeignKey("clusters.id", ondelete="CASCADE"))
    original_cluster_id: Mapped[int | None] = mapped_column(ForeignKey("clusters.id", ondelete="SET NULL"))
    confidence: Mapped[float] = mapped_column(Float, default=0.0)
    umap_x: Mapped[float | None] = mapped_column(Float)
    umap_y: Mapped[float | None] = mapped_column(Float)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)
    # float32 bytes, one probability per cluster slot of the run (column j = slot j); NULL before 0003
    probabilities: Mapped[bytes | None] = mapped_column(LargeBinary)
    is_normal: Mapped[bool] = mapped_column(Boolean, default=False)


class Label(Base):
    __tablename__ = "labels"
    __table_args__ = (UniqueConstraint("region_id", "source", name="uq_labels_region_source"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    region_id: Mapped[int] = mapped_column(ForeignKey("regions.id", ondelete="CASCADE"), index=True)
    class_name: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(32))
    author: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Edit(Base):
    __tablename__ = "edit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), default="done")
    author: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
