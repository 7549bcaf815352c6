"""Download bytes of a run: regions and images CSV (all or a selection), crops ZIP, COCO JSON and
small tables, all built by storage's export functions (formula cells neutralized)."""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import streamlit as st

from storage import Store
from storage.export import coco_dict, export_crops_zip, images_frame, neutralize_frame, regions_frame


def regions_csv_bytes(store: Store, run_id: int, region_ids: Iterable[int] | None = None) -> bytes:
    """The regions CSV of storage's export (all regions, or only the given ones), as UTF-8 bytes."""
    frame = regions_frame(store, run_id)
    if region_ids is not None:
        wanted = set(int(i) for i in region_ids)
        frame = frame[frame["region_id"].isin(wanted)]
    return neutralize_frame(frame).to_csv(index=False).encode("utf-8")


def images_csv_bytes(store: Store, run_id: int, region_ids: Iterable[int] | None = None) -> bytes:
    """The images CSV (fused image classes), all images or those holding the given regions."""
    frame = images_frame(store, run_id)
    if region_ids is not None:
        wanted = set(int(i) for i in region_ids)
        regions = regions_frame(store, run_id)
        images = set(regions.loc[regions["region_id"].isin(wanted), "image"])
        frame = frame[frame["image"].isin(images)]
    return neutralize_frame(frame).to_csv(index=False).encode("utf-8")


@st.cache_data(max_entries=16, show_spinner="Preparing the CSV ...")
def cached_csv(_store: Store, store_url: str, kind: str, run_id: int, revision: tuple,
               region_ids: tuple[int, ...] | None) -> bytes:
    """regions_csv_bytes / images_csv_bytes cached per run revision and selection."""
    make = regions_csv_bytes if kind == "regions" else images_csv_bytes
    return make(_store, run_id, None if region_ids is None else list(region_ids))


def crops_zip_bytes(store: Store, run_id: int, include_normal: bool = False) -> bytes:
    """storage's folder-per-class ZIP of the crops, as bytes."""
    with tempfile.TemporaryDirectory(prefix="studio-export-") as folder:
        path = export_crops_zip(store, run_id, Path(folder) / "crops.zip", include_normal=include_normal)
        return path.read_bytes()


def coco_json_bytes(store: Store, run_id: int, include_normal: bool = False) -> bytes:
    """storage's COCO-style JSON of boxes with class names, as UTF-8 bytes."""
    return json.dumps(coco_dict(store, run_id, include_normal=include_normal), ensure_ascii=False, indent=1).encode("utf-8")


def to_bytes(frame: pd.DataFrame) -> bytes:
    """A small table as CSV bytes (neutralized) for a download button."""
    buffer = io.StringIO()
    neutralize_frame(frame).to_csv(buffer, index=False)
    return buffer.getvalue().encode("utf-8")
