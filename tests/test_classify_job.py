"""The Classify page's job: a finished app run's named classes on new images, through the worker."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from core.demo.build import DemoConfig, generate_demo
from core.imageio import read_image, write_image
from storage import DONE, FAILED, open_workspace
from jobs import runner as worker
from webapp import intake, job_control
from webapp.classify_job import CLASSIFY, classification_dir

from test_classify import _digest
from builders import TINY_DEMO, demo_maps

RUN = {"classes": 3, "device": "cpu", "seed": 0, "representation": "descriptors"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A workspace with a finished discovery run (imported maps) and a new demo draw with its maps."""
    base = tmp_path_factory.mktemp("classify_job")
    root = generate_demo(base / "demo", DemoConfig(**TINY_DEMO))
    demo_maps(root, base / "maps")
    new = generate_demo(base / "new", DemoConfig(**{**TINY_DEMO, "seed": 1}))
    demo_maps(new, base / "new_maps")
    store = open_workspace(base / "workspace")
    info = intake.create_project(store, "tiny", intake.summarize_dataset(root, base / "maps"))
    run = store.start_run(info.id, job_control.DISCOVER, RUN)
    assert worker.execute(store, run.id) == DONE, store.get_run(run.id).message
    yield store, info, run.id, new / "test", base / "new_maps" / "test"
    store.close()


def _classify(store, info, run_id: int, images: Path, maps: Path):
    run = store.start_run(info.id, CLASSIFY, {"source_run": run_id, "images": str(images), "maps_dir": str(maps)},
                          parent_run_id=run_id)
    worker.execute(store, run.id)
    return store.get_run(run.id)


def test_the_job_classifies_with_the_current_names_and_a_relabel_makes_a_new_bundle(finished):
    store, info, run_id, images, maps = finished
    first = _classify(store, info, run_id, images, maps)
    assert first.status == DONE, first.message
    with open(classification_dir(store, first) / "images.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(list(images.rglob("*.png")))
    bundles = store.project_dir(info.id) / "bundles"
    (old,) = list(bundles.iterdir())
    before = _digest(old)

    cluster = max((c for c in store.list_clusters(run_id) if not c.is_normal), key=lambda c: c.region_count)
    store.rename_cluster(cluster.id, "pin-hole")
    second = _classify(store, info, run_id, images, maps)
    assert second.status == DONE, second.message
    assert len(list(bundles.iterdir())) == 2 and _digest(old) == before  # the old bundle stays as it was
    with open(classification_dir(store, second) / "regions.csv", newline="", encoding="utf-8") as handle:
        named = {r["nearest_class"] for r in csv.DictReader(handle)}
    assert "pin-hole" in named
    assert "unknown" in second.message and store.get_run(run_id).status == DONE


def test_bad_images_fail_the_job_naming_the_file_and_store_nothing(finished, tmp_path):
    store, info, run_id, images, maps = finished
    _classify(store, info, run_id, images, maps)  # the bundle of the current labels exists
    bundles = _digest(store.project_dir(info.id) / "bundles")
    folder = tmp_path / "images"
    for path in sorted(images.rglob("*.png"))[:2]:
        target = folder / path.relative_to(images)
        target.parent.mkdir(parents=True, exist_ok=True)
        image = read_image(path)
        write_image(target, np.concatenate([image, image], axis=0))  # twice as tall as the run's images
    failed = _classify(store, info, run_id, folder, maps)
    assert failed.status == FAILED and str(sorted(folder.rglob("*.png"))[0]) in failed.message
    assert not classification_dir(store, failed).exists()
    assert _digest(store.project_dir(info.id) / "bundles") == bundles


def test_the_page_shows_a_finished_classification_by_class(finished, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from webapp import workspace as workspace_module

    store, info, run_id, images, maps = finished
    done = _classify(store, info, run_id, images, maps)
    assert done.status == DONE, done.message
    monkeypatch.setenv(workspace_module.WORKSPACE_ENV, str(store.workspace))
    monkeypatch.delenv(workspace_module.DATABASE_URL_ENV, raising=False)
    at = AppTest.from_file(str(Path(job_control.__file__).parent / "app.py"), default_timeout=60)
    at.session_state["project_id"], at.session_state["run_id"] = info.id, run_id
    at.run()
    at.switch_page("views/classify.py").run()
    assert not at.exception, [e.value for e in at.exception]
    with open(classification_dir(store, done) / "regions.csv", newline="", encoding="utf-8") as handle:
        classes = {r["class"] for r in csv.DictReader(handle)}
    labels = [tab.label for tab in at.tabs]
    assert all(any(label.startswith(f"{name} (") for label in labels) for name in classes)
    assert any("Open set: unknown when" in c.value for c in at.caption)
