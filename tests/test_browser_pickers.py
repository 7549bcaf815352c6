"""The sidebar Project and Run pickers in a real browser (Chromium via Playwright).

Two synthetic projects, each with two finished discovery runs, filled through the storage API
before the server starts. A session opens project #2 from a link, switches pages through the
sidebar and checks on every page that the pickers show the project and run the page shows, and
that choosing another entry switches to it (defect 1 of issue 24: the boxes alternated between
#1 and #2 while the page stayed on #2, and picking the shown entry did nothing).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from storage import AssignmentInput, ClusterInput

from builders import fill_store
from test_browser import goto, settle, start_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MARKDOWN_NAME = 'x **bold** [link](http://example.com) :red[red] =HYPERLINK("http://x","y")'


def second_run(store, project_id: int, first_run: int) -> int:
    """Another finished discovery run of the project: the first run's assignments, two clusters."""
    rows = store.run_assignments(first_run)
    run = store.start_run(project_id, "discover", {"classes": 2, "epochs": 1}, status="running")
    clusters = [ClusterInput(slot=0), ClusterInput(slot=1), ClusterInput(slot=2, is_normal=True)]
    store.write_results(run.id, clusters, [AssignmentInput(a.region.id, i % 2, 0.9, float(i), float(i % 3))
                                           for i, a in enumerate(rows)])
    store.finish_run(run.id, metrics={})
    return run.id


@pytest.fixture(scope="module")
def two_projects(tmp_path_factory):
    """Workspace with projects #1 and #2, each with two finished runs; the app serving it."""
    root = tmp_path_factory.mktemp("pickers")
    first = fill_store(root / "one", n_images=4)
    first.store.close()
    second = fill_store(root / "one", n_images=4, seed=1)  # same workspace: project #2
    runs = {first.project_id: [first.run_id], second.project_id: [second.run_id]}
    for project_id, ids in runs.items():
        ids.append(second_run(second.store, project_id, ids[0]))
    # A name full of markdown in project #2's first run: the Image view shows it as typed.
    image = min(a.region.image for a in second.store.run_assignments(second.run_id))
    cluster_id = next(a.cluster_id for a in second.store.run_assignments(second.run_id) if a.region.image == image)
    second.store.rename_cluster(cluster_id, MARKDOWN_NAME)
    workspace = second.store.workspace
    second.store.close()
    with start_server(Path(workspace)) as url:
        yield url, first.project_id, second.project_id, runs


def sidebar_box(page, label: str) -> str:
    """The entry the sidebar selectbox labelled `label` shows."""
    box = page.locator('[data-testid="stSidebar"]').get_by_role("combobox", name=label, exact=True)
    return box.evaluate("e => { const w = e.closest('[data-testid=\"stSelectbox\"]');"
                        " return (e.value || (w ? w.innerText : '')).trim(); }")


def pick(page, label: str, option: str | re.Pattern) -> None:
    page.locator('[data-testid="stSidebar"]').get_by_role("combobox", name=label, exact=True).click()
    page.get_by_role("option", name=option).first.click()
    settle(page)


def test_pickers_follow_the_page_when_switching(two_projects, browser):
    url, project_one, project_two, runs = two_projects
    newest_of_two, older_of_two = max(runs[project_two]), min(runs[project_two])
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.set_default_timeout(30_000)
    elsewhere: list[str] = []  # requests to any other host: the app must work offline (its icon included)
    page.on("request", lambda request: elsewhere.append(request.url)
            if not request.url.startswith((url, "data:", "blob:")) else None)
    try:
        page.goto(f"{url}/explore?project={project_two}&run={older_of_two}")
        settle(page)
        page.get_by_role("heading", name="Explore").first.wait_for()
        for title in ("Evaluate", "Explore", "Export", "Labels & runs", "Explore"):
            goto(page, title)
            assert f"(#{project_two})" in sidebar_box(page, "Project"), title
            assert sidebar_box(page, "Run").startswith(f"Run #{older_of_two} "), title
            assert f"project={project_two}" in page.url and f"run={older_of_two}" in page.url, (title, page.url)

        # Defect 2: the Image view's class metric shows a markdown-laden name as typed, with no link.
        page.get_by_role("tab", name="Image view").click()
        metric = page.locator('[data-testid="stMetric"]').filter(has_text="Image class").first
        metric.wait_for()
        value = metric.locator('[data-testid="stMetricValue"]')
        assert value.inner_text().replace("\u2060", "").strip() == MARKDOWN_NAME
        assert value.locator("a, strong, span[style*=color]").count() == 0

        # Choosing another run switches to it, and it stays after page switches.
        pick(page, "Run", re.compile(rf"^Run #{newest_of_two} "))
        assert f"run={newest_of_two}" in page.url, page.url
        for title in ("Evaluate", "Explore", "Export", "Explore"):
            goto(page, title)
            assert sidebar_box(page, "Run").startswith(f"Run #{newest_of_two} "), title
            assert f"run={newest_of_two}" in page.url, (title, page.url)

        # Choosing the other project switches to it (and to its newest run).
        pick(page, "Project", re.compile(rf"\(#{project_one}\)$"))
        assert f"project={project_one}" in page.url and f"run={max(runs[project_one])}" in page.url, page.url
        for title in ("Labels & runs", "Explore", "Evaluate", "Explore"):
            goto(page, title)
            assert f"(#{project_one})" in sidebar_box(page, "Project"), title
            assert sidebar_box(page, "Run").startswith(f"Run #{max(runs[project_one])} "), title
        # ... and back to project #2.
        pick(page, "Project", re.compile(rf"\(#{project_two}\)$"))
        goto(page, "Export")
        assert f"(#{project_two})" in sidebar_box(page, "Project")
        assert f"project={project_two}" in page.url
        icon = page.evaluate("() => document.querySelector('link[rel*=icon]').href")
        assert icon.startswith(url), icon
        assert not elsewhere, elsewhere
    finally:
        page.close()
