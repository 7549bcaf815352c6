"""The Discover page reads the settings table and says plainly, before a run, when the maps are poor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from core.demo.build import DemoConfig, generate_demo
from core.detection.separation import separation_report
from core.settings import SETTING
from storage import DONE, RUNNING, open_workspace
from jobs import runner as worker
from webapp import intake, job_control, workspace as workspace_module
from jobs.maps import stored_normal_peaks, stored_separation

from builders import TINY_DEMO, demo_maps, fill_store

APP = str(Path(__file__).resolve().parents[1] / "webapp" / "app.py")


@pytest.fixture()
def workspace(tmp_path, monkeypatch):
    folder = tmp_path / "workspace"
    monkeypatch.setenv(workspace_module.WORKSPACE_ENV, str(folder))
    monkeypatch.delenv(workspace_module.DATABASE_URL_ENV, raising=False)
    st.cache_data.clear()
    store = open_workspace(folder)
    yield store
    store.close()


def open_discover(project_id: int) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["project_id"] = project_id
    at.run()
    at.switch_page("views/discover.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def alerts(at: AppTest) -> str:
    return "\n".join([w.value for w in at.warning] + [c.value for c in at.caption] + [e.value for e in at.error])


def _maps_with_record(root: Path, folder: Path, separation: dict, peaks: list[float]) -> Path:
    """Maps from the demo's masks, and the detection.json `python -m core detect` writes beside them."""
    demo_maps(root, folder / "maps")
    (folder / "detection.json").write_text(json.dumps({"method": "learned", "normal_peaks": peaks,
                                                        "separation": separation}), encoding="utf-8")
    return folder / "maps"


def test_poor_maps_are_named_on_the_discover_page_before_a_run(workspace, tmp_path):
    """A detection record whose maps barely separate the images from held-out references travels with the
    imported maps through the detection job into the project; the Discover page warns before Start."""
    root = generate_demo(tmp_path / "demo", DemoConfig(**TINY_DEMO))
    rng = np.random.default_rng(0)
    poor = separation_report(rng.normal(1.0, 0.1, 40), rng.normal(1.0, 0.1, 20))  # images score like references
    assert poor["low"]
    maps = _maps_with_record(root, tmp_path / "poor", poor, [0.4, 0.5])
    project = intake.create_project(workspace, "poor", intake.summarize_dataset(root, maps))
    run = workspace.start_run(project.id, job_control.DETECT, {})
    assert worker.execute(workspace, run.id) == DONE, workspace.get_run(run.id).message
    assert stored_separation(workspace, project.id)["auroc"] == pytest.approx(poor["auroc"])
    keys = [i.relpath for i in workspace.list_images(project.id, role="unlabeled")]
    assert stored_normal_peaks(workspace, project.id, keys) == [0.4, 0.5]  # the regions' floor came along

    at = open_discover(project.id)
    warning = " ".join(w.value for w in at.warning)
    assert "barely tell your images from the defect-free references" in warning
    assert f"separation AUROC {poor['auroc']:.2f}" in warning and "Improve detection first" in warning
    assert "--" not in warning  # the app's words, not the CLI's flags

    good = separation_report(rng.normal(3.0, 0.1, 40), rng.normal(1.0, 0.1, 20))
    maps = _maps_with_record(root, tmp_path / "good", good, [0.4])
    fine = intake.create_project(workspace, "fine", intake.summarize_dataset(root, maps))
    assert worker.execute(workspace, workspace.start_run(fine.id, job_control.DETECT, {}).id) == DONE
    at = open_discover(fine.id)
    assert not at.warning and f"separation AUROC {good['auroc']:.2f}" in alerts(at)


def test_maps_without_a_separation_report_say_nothing(workspace, tmp_path):
    root = generate_demo(tmp_path / "demo", DemoConfig(**TINY_DEMO))
    demo_maps(root, tmp_path / "maps")
    project = intake.create_project(workspace, "plain", intake.summarize_dataset(root, tmp_path / "maps"))
    assert worker.execute(workspace, workspace.start_run(project.id, job_control.DETECT, {}).id) == DONE
    assert stored_separation(workspace, project.id) is None
    assert "separation" not in alerts(open_discover(project.id))


def test_form_bounds_come_from_the_table_and_a_missing_weights_file_blocks_start(workspace, tmp_path):
    root = generate_demo(tmp_path / "demo", DemoConfig(**TINY_DEMO))
    project = intake.create_project(workspace, "p", intake.summarize_dataset(root))
    at = open_discover(project.id)
    classes = at.number_input(key="d_classes")
    assert (classes.min, classes.max) == (SETTING["classes"].low, SETTING["classes"].high)
    assert at.number_input(key="d_epochs").max == SETTING["epochs"].high
    assert at.number_input(key="d_tau").value == SETTING["tau"].default
    at.text_input(key="d_weights").set_value(str(tmp_path / "no_such_dino.pth")).run()
    assert "is not there" in alerts(at) and at.button(key="d_start").disabled
    assert not any("--" in c.value for c in at.caption)  # no CLI flags asked of the web user


def test_runs_table_shows_the_epochs_a_run_trained(workspace, tmp_path):
    root = generate_demo(tmp_path / "demo", DemoConfig(**TINY_DEMO))
    project = intake.create_project(workspace, "p", intake.summarize_dataset(root))
    hybrid = workspace.start_run(project.id, job_control.DISCOVER, {"classes": 3, "representation": "hybrid"},
                                 status=RUNNING)  # epochs left to auto: the run decided 30
    history = [{"x": i + 1.0, "loss": 1.0, "epoch_done": True} for i in range(30)]
    workspace.finish_run(hybrid.id, metrics={}, loss_history=history, message="done")
    grouped = workspace.start_run(project.id, job_control.DISCOVER, {"classes": 3}, status=RUNNING)
    workspace.finish_run(grouped.id, metrics={"training": {"epochs_done": 0}}, message="done")
    at = open_discover(project.id)
    table = at.dataframe[-1].value.set_index("run")
    assert table.loc[hybrid.id, "epochs"] == "30" and table.loc[grouped.id, "epochs"] == "–"


def test_labels_page_refuses_a_class_count_out_of_the_tables_bounds(tmp_path, monkeypatch):
    """'New classes to discover' = 99999999999999999999 is refused on the page, no run is started."""
    filled = fill_store(tmp_path)
    monkeypatch.setenv(workspace_module.WORKSPACE_ENV, str(filled.store.workspace))
    monkeypatch.delenv(workspace_module.DATABASE_URL_ENV, raising=False)
    launched = []
    monkeypatch.setattr(job_control.engine.JobClient, "enqueue", lambda client, run_id, kind: launched.append(run_id))
    st.cache_data.clear()
    try:
        filled.store.rename_cluster(filled.cluster_ids[0], "scratch")
        filled.store.promote_to_labels(filled.run_id)
        at = AppTest.from_file(str(Path(APP).parent / "views" / "labels.py"), default_timeout=60)
        at.session_state["project_id"], at.session_state["run_id"] = filled.project_id, filled.run_id
        at.run()
        next(t for t in at.text_input if t.label == "New classes to discover").set_value("99999999999999999999")
        next(b for b in at.button if b.label == "Start the new run").click().run()
        assert not launched and len(filled.store.list_runs(filled.project_id, kind=job_control.DISCOVER)) == 1
        assert "between 2 and 100" in " ".join(e.value for e in at.error)
    finally:
        filled.store.close()
