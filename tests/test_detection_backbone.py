"""`--backbone auto`: the pretrained backbone when its weights are here, else offline, said in one line."""

import pytest

from core.cli import main
from core.dataset import load_dataset
from core.demo.build import generate_demo
from core.detection import DetectorConfig, detect
from core.detection.backbones import cached_weights, resolve_backbone
from core.detection.config import OFFLINE_BACKBONE, PAPER_BACKBONE
from core.detection.learned import MIN_REFERENCES


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """No weights anywhere and no network: empty timm/HF/torch caches, hub offline."""
    import torch

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path / "hf"


def test_auto_falls_back_offline_and_says_why(empty_caches, tmp_path, capsys):
    import torch

    assert cached_weights(PAPER_BACKBONE) is None
    backbone, why = resolve_backbone(DetectorConfig())
    assert backbone == OFFLINE_BACKBONE and "no pretrained wide_resnet50_2 weights" in why
    root = generate_demo(tmp_path / "demo", image_size=64, n_train_good=4, n_test_good=1, n_per_class=1,
                         defect_types=("hole",))
    detection = detect(load_dataset(root), DetectorConfig(image_size=64), torch.device("cpu"))
    assert detection.config.backbone == OFFLINE_BACKBONE and "(offline)" in detection.choice
    assert detection.summary()["backbone"] == OFFLINE_BACKBONE
    assert main(["detect", "--dataset", str(root), "--out", str(tmp_path / "out"), "--image-size", "64"]) == 0
    first_line = capsys.readouterr().out.splitlines()[0]
    assert first_line.startswith("detect: patchcore: learns 4 normal reference images; the learned detector needs "
                                 f"at least {MIN_REFERENCES}")
    assert "backbone filterbank (offline)" in first_line


def test_auto_takes_the_pretrained_backbone_from_the_cache(empty_caches):
    _cache_timm_weights(empty_caches, "wide_resnet50_2.racm_in1k")
    snapshot = empty_caches / "models--timm--wide_resnet50_2.racm_in1k" / "snapshots" / "abc123"
    assert cached_weights(PAPER_BACKBONE) == snapshot / "model.safetensors"
    backbone, why = resolve_backbone(DetectorConfig())
    assert backbone == PAPER_BACKBONE and "in the cache" in why


def test_auto_with_a_weights_file_uses_the_paper_backbone(tmp_path):
    backbone, why = resolve_backbone(DetectorConfig(weights=tmp_path / "w.pth"))
    assert backbone == PAPER_BACKBONE and "w.pth" in why
    assert resolve_backbone(DetectorConfig(backbone="resnet18"))[0] == "resnet18"


def _cache_timm_weights(cache, name: str) -> None:
    repo = cache / f"models--timm--{name}"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "model.safetensors").write_bytes(b"weights")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")


def test_discovery_vit_auto_trains_the_scratch_vit_offline_and_says_why(empty_caches):
    from core.config import REAL_USE_BACKBONE, SCRATCH_EPOCHS, MGViTConfig
    from core.decisions import decide

    decided = decide({"backbone": "auto", "representation": "vit"})
    config = decided.config
    assert config.model.backbone == MGViTConfig.backbone and not config.model.pretrained
    assert config.train.epochs == SCRATCH_EPOCHS  # epochs follow the backbone auto chose
    why = decided.decisions["backbone"].why
    assert "offline" in why and f"no pretrained {REAL_USE_BACKBONE} weights" in why


def test_discovery_vit_auto_takes_dino_from_the_cache_or_a_weights_file(empty_caches, tmp_path):
    from core.config import REAL_USE_BACKBONE, TrainConfig
    from core.decisions import decide

    def from_settings(settings):
        return decide(settings).config

    weights = tmp_path / "dino.pth"
    weights.write_bytes(b"not read here")
    given = from_settings({"backbone": "auto", "weights": str(weights)})
    assert given.model.backbone == REAL_USE_BACKBONE and given.model.weights == weights
    assert given.train.epochs == TrainConfig.epochs
    _cache_timm_weights(empty_caches, REAL_USE_BACKBONE)
    cached = from_settings({"backbone": "auto"})
    assert cached.model.backbone == REAL_USE_BACKBONE and cached.model.pretrained
    assert from_settings({"backbone": "vit_micro_scratch"}).model.backbone == "vit_micro_scratch"


def test_representation_auto_follows_the_backbone_auto_chose(empty_caches, tmp_path):
    """auto: the descriptors alone where the MGViT would start from scratch, the hybrid with pretrained
    weights (a file or the cache); an explicit choice is kept; an unknown one is named."""
    from core.config import DiscoveryConfig, MGViTConfig, SettingsError
    from core.decisions import decide, decide_representation

    def from_settings(settings):
        return decide(settings).config

    def resolve_representation(asked, model):
        return decide_representation(asked, model).used, decide_representation(asked, model).why

    offline = from_settings({"backbone": "auto"})
    assert offline.representation == "descriptors" == DiscoveryConfig().representation
    assert from_settings({}).representation == "descriptors"
    assert "trained from scratch" in resolve_representation("auto", offline.model)[1]
    for asked in ("hybrid", "vit", "descriptors"):
        assert from_settings({"backbone": "auto", "representation": asked}).representation == asked
    weights = tmp_path / "dino.pth"
    weights.write_bytes(b"not read here")
    assert from_settings({"backbone": "auto", "weights": str(weights)}).representation == "hybrid"
    assert from_settings({"backbone": "vit_micro_scratch", "weights": str(weights)}).representation == "hybrid"
    assert from_settings({"backbone": "vit_base_patch16_224.dino", "pretrained": True,
                                          "representation": "auto"}).representation == "hybrid"
    _cache_timm_weights(empty_caches, "vit_base_patch16_224.dino")
    cached = from_settings({"backbone": "auto"})
    assert cached.representation == "hybrid" and "pretrained" in resolve_representation("auto", cached.model)[1]
    assert resolve_representation("auto", MGViTConfig(backbone="vit_micro_scratch"))[0] == "descriptors"
    with pytest.raises(SettingsError, match="representation must be one of"):
        from_settings({"representation": "pixels"})


@pytest.mark.slow
def test_an_app_run_with_auto_records_which_vit_it_trained_and_why(empty_caches, tmp_path):
    """The Discover form's default `auto`: the worker trains the scratch ViT offline, with the epochs
    that backbone is given, and the run records what auto chose and why (metrics and message)."""
    from core.config import SCRATCH_EPOCHS
    from storage import DONE, open_workspace
    from builders import TINY_DEMO, TINY_RUN, demo_maps
    from jobs import runner as worker
    from webapp import intake, job_control

    root = generate_demo(tmp_path / "demo", **TINY_DEMO)
    demo_maps(root, tmp_path / "maps")
    store = open_workspace(tmp_path / "workspace")
    try:
        info = intake.create_project(store, "auto", intake.summarize_dataset(root, tmp_path / "maps"))
        settings = {key: value for key, value in TINY_RUN.items() if key != "epochs"}
        run = store.start_run(info.id, job_control.DISCOVER, {**settings, "backbone": "auto", "representation": "vit"})
        assert worker.execute(store, run.id) == DONE, store.get_run(run.id).message
        done = store.get_run(run.id)
        assert done.metrics["backbone"]["asked"] == "auto"
        assert done.metrics["backbone"]["used"] == "vit_tiny_scratch"
        assert "no pretrained" in done.metrics["backbone"]["why"] and "auto chose" in done.message
        assert sum(bool(p.get("epoch_done")) for p in done.loss_history) == SCRATCH_EPOCHS  # the scratch ViT's own epochs, not the paper's 50
    finally:
        store.close()
