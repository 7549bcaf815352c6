"""Data the tests build: tiny image sets, regions, finished runs and demo maps.

Plain functions and constants, imported by the test modules (`from builders import ...`) and by
`benchmarks/explore.py` (`python -m benchmarks.explore`); the fixtures live in conftest.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.imageio import read_gray, write_image
from core.records import ROLE_NORMAL, ROLE_UNLABELED, ImageRecord, Region
from storage.api import Store, open_workspace
from storage.records import AssignmentInput, ClusterInput

#: A demo set small enough for end-to-end tests: 64 px, 3 defect types of 3 images each.
TINY_DEMO = dict(image_size=64, n_train_good=4, n_test_good=2, n_per_class=3,
                 defect_types=("scratch", "hole", "stain"))
#: Settings of a discovery job that trains a tiny MGViT for one epoch (hybrid: these runs train an
#: MGViT for progress, cancel and checkpoints; auto would take the descriptors here).
TINY_RUN = {"classes": 3, "backbone": "vit_micro_scratch", "epochs": 1, "batch_size": 8, "device": "cpu",
            "seed": 0, "representation": "hybrid"}


def demo_maps(root: Path, maps_dir: Path) -> Path:
    """Anomaly maps simulated from a demo set's ground-truth masks (blurred, low noise); returns maps_dir."""
    from core.demo.build import gt_masks_to_maps

    for image in sorted((root / "test").rglob("*.png")):
        mask_path = root / "ground_truth" / image.parent.name / f"{image.stem}_mask.png"
        mask = read_gray(mask_path) if mask_path.is_file() else np.zeros((64, 64), np.uint8)
        target = maps_dir / image.relative_to(root).with_suffix(".npy")
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, gt_masks_to_maps([mask], seed=len(str(image)))[0])
    return maps_dir


def make_dataset(root: Path, count: int = 6, size: int = 32) -> list[ImageRecord]:
    """Tiny images with known content; odd ones ground truth "scratch", even ones "dent"."""
    records = []
    for i in range(count):
        path = root / "test" / f"img_{i:02d}.png"
        image = np.full((size, size, 3), 10 * i, dtype=np.uint8)
        image[i % size, :, 0] = 255
        write_image(path, image)
        records.append(ImageRecord(path, f"test/img_{i:02d}.png", "unlabeled", "scratch" if i % 2 else "dent"))
    normal = root / "normal" / "ref.png"
    write_image(normal, np.zeros((size, size, 3), dtype=np.uint8))
    records.append(ImageRecord(normal, "normal/ref.png", "normal", None))
    return records


def make_regions(records: list[ImageRecord], per_image: int = 3, size: int = 32) -> list[Region]:
    """per_image regions per unlabeled image, each crop distinct so files can be compared."""
    rng = np.random.default_rng(7)
    regions = []
    for record in records:
        if record.role != "unlabeled":
            continue
        for index in range(per_image):
            side = 8 + 2 * index
            crop = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
            mask = np.zeros((side, side), dtype=np.uint8)
            mask[2:-2, 2:-2] = 255
            x0 = index * 6
            regions.append(
                Region(record.relpath, index, (x0, 1, x0 + side, 1 + side), crop, mask, int((side - 4) ** 2), 0.9 - 0.2 * index)
            )
    return regions


@dataclass
class Scenario:
    project_id: int
    run_id: int
    region_ids: list[int]  # in creation order
    clusters: dict[int, int]  # slot -> cluster id
    slots: dict[int, int]  # region id -> slot written
    records: list[ImageRecord]


def slot_of(position: int) -> int:
    """Slot a region gets by its creation order: 0 (normal) for every third, else 1 or 2."""
    return 0 if position % 3 == 2 else 1 + position % 2


def build_scenario(store: Store, root: Path, images: int = 6, per_image: int = 3) -> Scenario:
    """A project with images, regions and one finished run with 3 clusters (slot 0 normal).

    Embeddings of slot 1 form two well separated groups (by region index parity), so a split
    into 2 has a known answer; UMAP x/y and confidences are functions of the position.
    """
    records = make_dataset(root / "data", images)
    project = store.create_project("demo", root / "data", {"classes": 3})
    store.record_images(project.id, records)
    regions = store.record_regions(project.id, make_regions(records, per_image))
    run = store.start_run(project.id, "discover", {"k": 3})
    store.mark_running(run.id)
    clusters = [ClusterInput(0, "normal", is_normal=True), ClusterInput(1), ClusterInput(2, "dent")]
    assignments = []
    slots = {}
    for position, region in enumerate(regions):
        slot = slot_of(position)
        slots[region.id] = slot
        embedding = np.zeros(8, dtype=np.float32)
        embedding[slot * 2 + (region.index % 2 if slot == 1 else 0)] = 10.0
        embedding += np.float32(0.01 * position)
        assignments.append(
            AssignmentInput(region.id, slot, 0.5 + 0.01 * position, float(position), float(-position), embedding)
        )
    written = store.write_results(run.id, clusters, assignments)
    store.finish_run(run.id, metrics={"image": {"nmi": 0.5}})
    return Scenario(
        project.id, run.id, [r.id for r in regions], {c.slot: c.id for c in written}, slots, records
    )


def square_region(image: str, index: int, area: int, side: int = 8, x0: int = 0) -> Region:
    """A region of a given mask area (area 0: the whole-image placeholder MEBin leaves when it finds nothing)."""
    crop = np.full((side, side, 3), 40 + index, dtype=np.uint8)
    mask = np.zeros((side, side), dtype=np.uint8)
    mask.reshape(-1)[:area] = 255
    return Region(image, index, (x0, 0, x0 + side, side), crop, mask, int(area), 0.5)


# ---------------------------------------------------------------- a filled workspace (Explore)

CLASSES = ("scratch", "hole", "stain", "crack", "dent", "burr", "pit", "smear")


@dataclass
class Filled:
    store: Store
    project_id: int
    run_id: int
    region_ids: list[int]
    cluster_ids: list[int]  # by slot; the last one is the normal slot


def fill_store(root: Path, *, n_images: int = 9, regions_per_image: int = 2, n_classes: int = 3,
               seed: int = 0, image_size: int = 64, with_embeddings: bool = True) -> Filled:
    """A workspace with one project, its images and regions, and one finished discovery run.

    Region j of an image of class c is assigned to cluster slot c (the last slot is the normal
    slot, empty); UMAP points and embeddings are drawn around one center per class.
    """
    rng = np.random.default_rng(seed)
    store = open_workspace(root / "workspace")
    data = root / "data"
    records = []
    for i in range(n_images):
        cls = CLASSES[i % n_classes]
        relpath = f"test/{cls}/{i:05d}.png"
        image = rng.integers(90, 140, size=(image_size, image_size, 3), dtype=np.uint8)
        write_image(data / relpath, image)
        records.append(ImageRecord(data / relpath, relpath, ROLE_UNLABELED, gt_class=cls))
    good = data / "train/good/000.png"
    write_image(good, np.full((image_size, image_size, 3), 120, dtype=np.uint8))
    records.append(ImageRecord(good, "train/good/000.png", ROLE_NORMAL, gt_class="good"))
    project = store.create_project("Synthetic flanges", data)
    store.record_images(project.id, records, compute_hash=False)
    regions = []
    crop = max(8, image_size // 2)
    for i, record in enumerate(records[:n_images]):
        for j in range(regions_per_image):
            x0 = int(rng.integers(0, image_size - crop))
            y0 = int(rng.integers(0, image_size - crop))
            mask = np.zeros((crop, crop), dtype=np.uint8)
            mask[crop // 4 : 3 * crop // 4, crop // 4 : 3 * crop // 4] = 255
            patch = rng.integers(0, 255, size=(crop, crop, 3), dtype=np.uint8)
            regions.append(Region(record.relpath, j, (x0, y0, x0 + crop, y0 + crop), patch, mask,
                                  int((mask > 0).sum()) - 10 * j, float(rng.uniform(0.3, 1.0))))
    infos = store.record_regions(project.id, regions)
    run = store.start_run(project.id, "discover", {"classes": n_classes, "epochs": 1}, status="running")
    clusters = [ClusterInput(slot=s) for s in range(n_classes)] + [ClusterInput(slot=n_classes, is_normal=True)]
    centers = rng.normal(scale=6.0, size=(n_classes, 2))
    embed_centers = rng.normal(size=(n_classes, 8))
    assignments = []
    for info in infos:
        slot = CLASSES.index(info.image.split("/")[1])
        xy = centers[slot] + rng.normal(scale=0.6, size=2)
        assignments.append(AssignmentInput(
            info.id, slot, float(rng.uniform(0.4, 1.0)), float(xy[0]), float(xy[1]),
            (embed_centers[slot] + rng.normal(scale=0.3, size=8)).astype(np.float32) if with_embeddings else None,
        ))
    written = store.write_results(run.id, clusters, assignments)
    store.finish_run(run.id, metrics={"image": {"nmi": 1.0, "ari": 1.0, "f1": 1.0, "n": n_images}})
    return Filled(store, project.id, run.id, [r.id for r in infos], [c.id for c in sorted(written, key=lambda c: c.slot)])
