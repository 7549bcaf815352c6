"""benchmarks/quality.py: its folds hold images out, and a tiny run prints every row it was asked for."""

from __future__ import annotations

import importlib.util
import re
from collections import Counter
from pathlib import Path

import pytest

from core.dataset import load_dataset
from core.demo.build import DemoConfig, generate_demo
from core.records import GOOD

from builders import TINY_DEMO

ROOT = Path(__file__).resolve().parents[1]
QUALITY_DEMO = dict(TINY_DEMO, n_per_class=4)  # two folds need at least 2 images per type


def _quality_module():
    spec = importlib.util.spec_from_file_location("quality_benchmark", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory) -> Path:
    return generate_demo(tmp_path_factory.mktemp("quality") / "demo", DemoConfig(**QUALITY_DEMO))


def test_two_folds_split_every_class_and_never_share_an_image(tiny_demo: Path) -> None:
    quality = _quality_module()
    records = [r for r in load_dataset(tiny_demo).unlabeled if r.gt_class != GOOD]
    folds = quality.two_folds(records, seed=3)
    assert set(folds) == {r.relpath for r in records}
    per_class = Counter((r.gt_class, folds[r.relpath]) for r in records)
    for name in QUALITY_DEMO["defect_types"]:
        assert per_class[(name, 0)] == per_class[(name, 1)] == 2
    assert folds == quality.two_folds(records, seed=3)
    assert any(quality.two_folds(records, seed=s) != folds for s in range(4, 10))


def test_tiny_benchmark_prints_the_table_rows_and_baselines(tiny_demo: Path, capsys) -> None:
    quality = _quality_module()
    code = quality.main(["--dataset", str(tiny_demo), "--sets", "demo", "--rows", "descriptors,paper",
                         "--baselines", "crops,supervised", "--backbone", "vit_micro_scratch", "--epochs", "1",
                         "--device", "cpu"])
    assert code == 0
    out = capsys.readouterr().out
    table = out[out.index("NMI / ARI / F1"):]
    for row in ("descriptors only", "paper-MGViT", "k-means, crops", "supervised 2-fold (reference)"):
        line = next(line for line in table.splitlines() if line.startswith(row))
        values = [float(v) for v in re.findall(r"-?\d+\.\d{3}", line)]
        assert len(values) == 3, line
        nmi, ari, f1 = values
        assert 0.0 <= nmi <= 1.0 and -1.0 <= ari <= 1.0 and 0.0 < f1 <= 1.0, line
    assert "--classes auto descriptors" in out and "components extraction" not in out  # no COCO truth: no recall
