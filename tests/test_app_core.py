"""App core through Streamlit's AppTest (no browser): pages, project intake, review, discover."""

from __future__ import annotations

import ast
import io
import zipfile
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.decisions import decide
from core.demo.build import DemoConfig, generate_demo
from jobs import runner
from storage import CANCELLED, DONE, RUNNING
from webapp import figures, intake, job_control, uploads, widgets

from builders import TINY_DEMO, demo_maps

APP = str(Path(__file__).resolve().parents[1] / "webapp" / "app.py")
MY_PAGES = ("views/home.py", "views/review.py", "views/discover.py")


def open_page(page: str, **session) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    for key, value in session.items():
        at.session_state[key] = value
    at.run()
    at.switch_page(page).run()
    return at


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


# ------------------------------------------------------------------------------ rendering


def test_every_page_renders_on_an_empty_workspace(workspace):
    for page in MY_PAGES:
        at = open_page(page)
        assert_clean(at)
    home = open_page("views/home.py")
    assert any("Welcome" in m.value for m in home.markdown)
    assert home.button(key="demo_create_welcome")
    review = open_page("views/review.py")
    assert any("no project yet" in i.value for i in review.info)


def test_a_page_run_alone_points_to_projects_without_a_page_link_error(workspace):
    # Outside st.navigation (a page opened alone) st.page_link cannot resolve: the pointer stays text.
    at = AppTest.from_file(str(Path(APP).parent / "views" / "explore.py"), default_timeout=60).run()
    assert_clean(at)
    assert any("no project yet" in i.value for i in at.info)
    assert any("Go to Projects" in c.value for c in at.caption)


def test_one_click_demo_project_then_every_page_renders(workspace):
    at = open_page("views/home.py")
    at.button(key="demo_create_welcome").click().run()
    assert_clean(at)
    projects = workspace.list_projects()
    assert [p.name for p in projects] == [intake.DEMO_PROJECT_NAME]
    assert len(workspace.list_images(projects[0].id, role="unlabeled")) == 11  # tiny demo: 3 x 3 + 2 good
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["To inspect"] == "11" and metrics["Normal"] == "6"
    for page in MY_PAGES:
        assert_clean(open_page(page))
    review = open_page("views/review.py")
    assert any("No anomaly maps yet" in m.value for m in review.markdown)


def test_review_page_shows_maps_evidence_and_overrides_one_threshold(workspace, tmp_path):
    root = generate_demo(tmp_path / "demo", DemoConfig(**TINY_DEMO))
    summary = intake.summarize_dataset(root, demo_maps(root, tmp_path / "maps"))
    project = intake.create_project(workspace, "gt maps", summary)
    at = open_page("views/review.py", project_id=project.id)
    assert at.radio(key="maps_source").value == "Import from a folder"  # the project has a maps folder
    assert at.text_input(key="maps_folder").value == str(tmp_path / "maps")
    at.button(key="maps_start").click().run()
    (run,) = workspace.list_runs(project.id, kind=job_control.DETECT)
    assert runner.execute(workspace, run.id) == DONE  # the page queued it; a worker's runner, here in this process

    at = open_page("views/review.py", project_id=project.id)
    assert_clean(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Maps"] == "11"
    assert len(at.get("plotly_chart")) >= 3  # threshold histogram, anomaly counts, evidence
    assert len(at.get("image")) >= 3  # image with boxes, heat overlay, mask

    at.selectbox(key="review_filter").set_value("with anomalies").run()
    image = at.selectbox(key="review_image").value
    before = {b["image"]: b for b in workspace.list_binarizations(project.id)}[image]
    slider = at.slider(key=f"override_{image}")
    new_threshold = max(0, before["threshold"] - 40)
    slider.set_value(new_threshold).run()
    at.button(key=f"override_{image}_apply").click().run()
    assert_clean(at)
    after = {b["image"]: b for b in workspace.list_binarizations(project.id)}[image]
    assert after["threshold"] == new_threshold
    assert after["settings"]["source"] == "override"
    assert after["settings"]["mebin_threshold"] == before["threshold"]
    assert after["counts"] == before["counts"]  # the evidence stays MEBin's
    assert workspace.image_regions(project.id, image)  # re-cropped and stored
    assert {m.label: m.value for m in at.metric}["Overrides"] == "1"
    assert "wait for the next discovery run" in " ".join(i.value for i in at.info)
    assert at.selectbox(key="review_image").value == image  # the page stays on the image it changed


def test_discover_page_shows_live_progress_and_loss_and_a_finished_run(workspace, tmp_path):
    root = generate_demo(tmp_path / "demo", DemoConfig(**TINY_DEMO))
    project = intake.create_project(workspace, "p", intake.summarize_dataset(root))
    run = workspace.start_run(project.id, job_control.DISCOVER, {"classes": 3, "epochs": 2}, status=RUNNING)
    history = [{"x": 0.5, "loss": 3.0, "rep": 2.0}, {"x": 1.0, "loss": 2.5, "rep": 1.8, "epoch_done": True}]
    workspace.update_progress(run.id, 0.4, "Training the mask-guided ViT", "epoch 2/2", loss_history=history)
    at = open_page("views/discover.py", project_id=project.id)
    assert_clean(at)
    assert any("in progress" in m.value for m in at.markdown)
    assert at.get("progress") and at.get("plotly_chart")  # progress bar and loss chart
    at.button(key=f"cancel_{run.id}").click().run()
    assert workspace.get_run(run.id).cancel_requested

    workspace.mark_cancelled(run.id)
    done = workspace.start_run(project.id, job_control.DISCOVER, {"classes": 3}, status=RUNNING)
    workspace.finish_run(done.id, metrics={"image": {"nmi": 0.8, "ari": 0.7, "f1": 0.9, "n": 9}},
                         loss_history=history, message="13 regions in 3 classes")
    at = open_page("views/discover.py", project_id=project.id)
    assert_clean(at)
    assert {m.label: m.value for m in at.metric}["Image NMI"] == "0.800"
    assert at.button(key="d_start")
    assert len(at.dataframe[-1].value) == 2  # both runs in the table


def test_start_button_launches_a_worker_process_and_cancel_stops_it(workspace, tmp_path):
    root = generate_demo(tmp_path / "demo", DemoConfig(**TINY_DEMO))
    project = intake.create_project(workspace, "p", intake.summarize_dataset(root, demo_maps(root, tmp_path / "maps")))
    at = open_page("views/discover.py", project_id=project.id)
    at.toggle(key="d_auto").set_value(False).run()
    at.number_input(key="d_classes").set_value(3)
    at.selectbox(key="d_backbone").set_value("vit_base_patch16_224.dino").run()
    assert not any("grouped on their descriptors" in c.value for c in at.caption)
    assert any("auto: regions grouped on the descriptors beside the pretrained" in c.value for c in at.caption)
    at.selectbox(key="d_backbone").set_value("vit_micro_scratch").run()
    # offline, auto groups on the descriptors and says so up front, with what the ViT would add
    assert at.selectbox(key="d_representation").value == "auto" and at.toggle(key="d_refine").value
    assert any("grouped on their descriptors" in c.value for c in at.caption)
    assert any("auto: regions grouped on their descriptors alone" in c.value for c in at.caption)
    assert at.toggle(key="d_prior").disabled  # nothing to teach: no ViT is trained
    at.text_input(key="d_weights").set_value("/no/such/dino.pth").run()  # a weights file that is not there
    assert any("auto: regions grouped on their descriptors alone" in c.value for c in at.caption)
    at.text_input(key="d_weights").set_value("").run()
    at.selectbox(key="d_representation").set_value("hybrid").run()  # a ViT from scratch, asked for
    assert any("finds rough groups, not clean defect classes" in c.value for c in at.caption)
    assert not at.toggle(key="d_prior").disabled
    at.number_input(key="d_epochs").set_value(300)
    at.selectbox(key="d_device").set_value("cpu")
    at.toggle(key="d_refine").set_value(False)
    at.button(key="d_start").click().run()
    assert_clean(at)
    (run,) = workspace.list_runs(project.id, kind=job_control.DISCOVER)
    assert run.settings["classes"] == 3 and run.settings["backbone"] == "vit_micro_scratch"
    assert run.settings["epochs"] == 300 and run.settings["pretrained"] is False
    assert run.settings["representation"] == "hybrid" and run.settings["refine"] == "none"
    assert decide(run.settings).config.regions.refine == "none"  # the worker's reading of them
    at.button(key=f"cancel_{run.id}").click().run()
    assert job_control.wait_for(workspace, run.id, timeout=90).status == CANCELLED


# ------------------------------------------------------------------------------ project intake


def test_create_project_from_a_server_folder_with_maps(workspace, tmp_path):
    root = generate_demo(tmp_path / "demo", DemoConfig(**TINY_DEMO))
    maps = demo_maps(root, tmp_path / "maps")
    (maps / "test" / "extra.npy").write_bytes(b"not a map")
    at = open_page("views/home.py")
    at.text_input(key="folder_root").set_value(str(root))
    at.text_input(key="folder_maps").set_value(str(maps))
    at.button(key="folder_check").click().run()
    assert_clean(at)
    preview = {m.label: m.value for m in at.metric}
    assert preview["To inspect"] == "11" and preview["Maps"] == "11"
    assert any("extra.npy" in str(v) for df in at.dataframe for v in df.value.to_numpy().ravel())
    at.text_input(key="folder_name").set_value("Line 3 <b>flanges</b>")
    at.button(key="folder_create").click().run()
    assert_clean(at)
    (project,) = workspace.list_projects()
    assert project.name == "Line 3 <b>flanges</b>"  # stored exactly as given (shown as text)
    assert project.settings["maps_dir"] == str(maps.resolve())
    assert len(workspace.list_images(project.id)) == 15


def test_bad_folder_is_reported_by_name(workspace, tmp_path):
    at = open_page("views/home.py")
    at.text_input(key="folder_root").set_value(str(tmp_path / "nowhere")).run()
    at.button(key="folder_check").click().run()
    assert_clean(at)
    assert any("nowhere" in e.value and "does not exist" in e.value for e in at.error)
    assert workspace.list_projects() == []


def _demo_zip(root: Path, extra: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                archive.write(path, f"flanges/{path.relative_to(root).as_posix()}")
        for name, data in extra.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_create_project_from_an_uploaded_zip_refuses_zip_slip_by_name(workspace, tmp_path):
    root = generate_demo(tmp_path / "demo", DemoConfig(**TINY_DEMO))
    data = _demo_zip(root, {"../escaped.png": b"x", "/etc/absolute.png": b"y"})
    at = open_page("views/home.py")
    at.file_uploader(key="zip_file").upload("flanges.zip", data, "application/zip").run()
    at.button(key="zip_check").click().run()
    assert_clean(at)
    assert any("2 entries were refused" in w.value for w in at.warning)
    refused = at.dataframe[0].value
    assert set(refused["entry"]) == {"../escaped.png", "/etc/absolute.png"}
    assert {m.label: m.value for m in at.metric}["To inspect"] == "11"
    at.button(key="zip_create").click().run()
    assert_clean(at)
    (project,) = workspace.list_projects()
    assert project.name == "flanges"
    assert Path(project.data_root).is_relative_to(workspace.workspace / "uploads")
    assert not (workspace.workspace / "uploads" / "escaped.png").exists()
    assert not list(tmp_path.rglob("escaped.png")) and not Path("/etc/absolute.png").exists()


def test_extract_zip_refuses_links_and_oversized_archives(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("data/a.png", b"fine")
        link = zipfile.ZipInfo("data/link.png")
        link.external_attr = (0o120777 << 16)
        archive.writestr(link, "/etc/passwd")
        archive.writestr("data\\..\\..\\win.png", b"z")
    result = uploads.extract_zip(io.BytesIO(buffer.getvalue()), tmp_path / "out")
    reasons = dict(result.rejected)
    assert "symbolic link" in reasons["data/link.png"]
    assert "escapes" in reasons["data\\..\\..\\win.png"]
    assert result.extracted == 1 and result.root == (tmp_path / "out" / "data").resolve()
    with pytest.raises(uploads.UploadError, match="unpacks to"):
        uploads.extract_zip(io.BytesIO(buffer.getvalue()), tmp_path / "small", max_unpacked=2)
    with pytest.raises(uploads.UploadError, match="not a readable ZIP"):
        uploads.extract_zip(io.BytesIO(b"plain text"), tmp_path / "text")


def test_summary_names_what_is_missing(tmp_path):
    folder = tmp_path / "plain"
    root = generate_demo(tmp_path / "demo", DemoConfig(**TINY_DEMO))
    folder.mkdir()
    for path in sorted((root / "test").rglob("*.png"))[:4]:
        (folder / f"{path.parent.name}_{path.name}").write_bytes(path.read_bytes())
    (folder / "broken.png").write_bytes(b"not an image")
    summary = intake.summarize_dataset(folder)
    assert summary.layout == "folder" and summary.n_unlabeled == 4 and summary.n_normal == 0
    assert summary.detector_mode == "built-in detector (zero-shot)"
    text = " ".join(summary.missing)
    assert "zero-shot" in text and "no quality metrics" in text
    assert any("broken.png" in p for p in summary.problems)


# ------------------------------------------------------------------------------ helpers


def _page_constants(page: str) -> dict:
    """Literal module-level constants of a page file (importing a page would run it)."""
    tree = ast.parse((Path(APP).parent / page).read_text(encoding="utf-8"))
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return values


def test_form_defaults_come_from_core_config():
    """The Discover page copies no engine default: numbers come from core.config (torch-free)."""
    import core.config as config

    source = (Path(APP).parent / "views/discover.py").read_text(encoding="utf-8")
    constants = _page_constants("views/discover.py")
    assert not {k for k, v in constants.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert "from core.config import" in source
    tree = ast.parse(source)
    backbones = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                     and getattr(node.targets[0], "id", None) == "BACKBONES")
    names = {key.value if isinstance(key, ast.Constant) else getattr(config, key.id) for key in backbones.keys}
    assert set(config.SCRATCH_BACKBONES) | {config.REAL_USE_BACKBONE} <= names


def test_formatting_and_loss_frame():
    assert widgets.format_duration(65) == "1 min 05 s" and widgets.format_duration(None) == "–"
    assert widgets.format_duration(7300) == "2 h 01 min"
    frame = figures.loss_frame([{"x": 1.0, "loss": 2.0, "total": 2.0, "rep": 1.5, "lr": 0.1, "epoch_done": True}])
    assert sorted(frame["term"]) == ["rep", "total"]
    assert figures.loss_chart([]) is None


# ------------------------------------------------------------------------------ issue 11


def test_the_url_keeps_project_and_run_and_a_link_opens_them(workspace, tmp_path):
    root = generate_demo(tmp_path / "demo", DemoConfig(**TINY_DEMO))
    first = intake.create_project(workspace, "first", intake.summarize_dataset(root))
    second = intake.create_project(workspace, "second", intake.summarize_dataset(root))
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["project"] = str(first.id)  # a reload or a shared link of the first project
    at.run()
    at.switch_page("views/discover.py").run()
    assert_clean(at)
    assert at.selectbox(key=f"sidebar_project_{first.id}").value == first.id  # not the newest project
    assert at.query_params["project"] == str(first.id)
    at.selectbox(key=f"sidebar_project_{first.id}").set_value(second.id).run()
    assert at.query_params["project"] == str(second.id)
    # A link to a project that is gone says so and shows an existing one.
    gone = AppTest.from_file(APP, default_timeout=60)
    gone.query_params["project"] = "999"
    gone.run()  # the Projects page
    assert any("#999" in w.value for w in gone.sidebar.warning)
    assert gone.query_params["project"] == str(second.id)


def test_a_refused_zip_leaves_no_folder_and_a_maps_folder_is_checked_first(workspace, tmp_path):
    with pytest.raises(uploads.UploadError):
        uploads.extract_zip(io.BytesIO(b"plain text"), tmp_path / "uploads" / "a")
    assert not (tmp_path / "uploads" / "a").exists()
    assert "does not exist" in intake.check_maps_folder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    assert "no map files" in intake.check_maps_folder(tmp_path / "empty")
    root = generate_demo(tmp_path / "demo", DemoConfig(**TINY_DEMO))
    assert intake.check_maps_folder(demo_maps(root, tmp_path / "maps")) is None
    project = intake.create_project(workspace, "p", intake.summarize_dataset(root))
    at = open_page("views/review.py", project_id=project.id)
    at.radio(key="maps_source").set_value("Import from a folder").run()
    at.text_input(key="maps_folder").set_value(str(tmp_path / "nowhere")).run()
    assert any("does not exist" in e.value for e in at.error)
    assert at.button(key="maps_start").disabled  # no job starts for a folder that is not there
    assert workspace.list_runs(project.id) == []


def test_the_demo_is_offered_to_open_not_copied_silently(workspace):
    at = open_page("views/home.py")
    at.button(key="demo_create_welcome").click().run()
    (demo,) = workspace.list_projects()
    at = open_page("views/home.py")
    assert at.button(key="demo_create_open").label == f"Open demo project #{demo.id}"
    assert at.button(key="demo_create").label == "Create another demo project"
    at.session_state["confirm_delete"] = demo.id
    at.run()
    assert any(f"#{demo.id}" in m.value for m in at.markdown)  # the delete dialog names the id


def test_runs_table_shows_a_dash_for_missing_metrics_and_the_chosen_k(workspace, tmp_path):
    root = generate_demo(tmp_path / "demo", DemoConfig(**TINY_DEMO))
    project = intake.create_project(workspace, "p", intake.summarize_dataset(root))
    cancelled = workspace.start_run(project.id, job_control.DISCOVER, {"classes": "auto"}, status=RUNNING)
    workspace.mark_cancelled(cancelled.id)
    done = workspace.start_run(project.id, job_control.DISCOVER, {"classes": "auto"}, status=RUNNING)
    workspace.finish_run(done.id, metrics={"class_estimate": {"k": 4, "n_classes": 4, "confidence": 0.2,
                                                              "sureness": "unsure", "description": "k=4 <-"}})
    at = open_page("views/discover.py", project_id=project.id)
    assert_clean(at)
    table = at.dataframe[-1].value
    assert list(table["image NMI"]) == ["–", "–"]  # not "None" for runs without metrics
    assert set(table["classes"]) == {"auto", "auto → 4"}
    assert any("K = 4" in m.value.replace("\\", "") and "unsure" in m.value for m in at.markdown)
