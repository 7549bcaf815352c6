"""docs/architecture.md's layering: core imports neither streamlit nor sqlalchemy and never calls .cuda(."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_is_free_of_ui_and_sql_and_cuda_calls():
    files = sorted((ROOT / "core").rglob("*.py"))
    assert files
    for path in files:
        imported = _imports(path)
        assert not imported & {"streamlit", "sqlalchemy", "storage", "webapp"}, path
        assert not re.search(r"\.cuda\(", path.read_text(encoding="utf-8")), f"{path} calls .cuda("


def test_storage_never_imports_the_webapp():
    for path in sorted((ROOT / "storage").rglob("*.py")):
        assert not _imports(path) & {"streamlit", "webapp", "jobs"}, path


def test_the_job_layer_lives_outside_the_app():
    files = sorted((ROOT / "jobs").rglob("*.py"))
    assert files
    for path in files:
        assert not _imports(path) & {"streamlit", "webapp"}, path
    for path in sorted((ROOT / "webapp").rglob("*.py")):  # the pages enqueue through webapp/job_control.py only
        assert "dbos" not in _imports(path) and "subprocess" not in _imports(path), path


def test_webapp_holds_no_sql():
    for path in sorted((ROOT / "webapp").rglob("*.py")):
        assert "sqlalchemy" not in _imports(path), path


def test_no_app_module_shadows_a_top_level_package():
    """`streamlit run webapp/app.py` puts webapp/ first on sys.path: a webapp/jobs.py would be what
    `import jobs` finds there, in the app's process, instead of the job package."""
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert "jobs" in packages
    shadowing = sorted(name for name in packages if (ROOT / "webapp" / f"{name}.py").exists())
    assert not shadowing, shadowing
