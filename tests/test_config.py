"""Settings as data: core.config imports without torch, and the flat settings round-trip."""

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from core.config import (
    SCRATCH_EPOCHS,
    SETTINGS_KEYS,
    DiscoveryConfig,
    MGViTConfig,
    SettingsError,
    TrainConfig,
)
from core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_config_imports_without_torch():
    code = "import sys, core.config; assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_defaults_are_the_published_ones():
    config = DiscoveryConfig()
    assert (config.tau, config.seed, config.classes, config.binarizer) == (100.0, 0, None, "mebin")
    assert (config.train.epochs, config.train.batch_size, config.train.lr) == (50, 32, 0.1)
    assert (config.mebin.sample_rate, config.mebin.min_interval_len, config.mebin.kernel_size) == (4, 4, 6)
    assert not hasattr(config.train, "seed"), "one seed: DiscoveryConfig.seed"


def test_empty_settings_pick_the_scratch_epochs_and_keep_defaults():
    config = DiscoveryConfig.from_settings({})
    assert config == replace(DiscoveryConfig(), train=replace(TrainConfig(), epochs=SCRATCH_EPOCHS))
    pretrained = DiscoveryConfig.from_settings({"backbone": "vit_base_patch16_224.dino", "pretrained": True})
    assert pretrained.train.epochs == TrainConfig.epochs


def test_settings_round_trip(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    settings = {
        "classes": 4, "backbone": "vit_micro_scratch", "weights": str(weights), "image_size": 48, "epochs": 3,
        "batch_size": 16, "lr": 0.01, "optimizer": "adamw", "guided": False, "tau": 50.0, "seed": 7,
        "device": "cpu", "binarizer": "otsu", "detector_method": "zero-shot", "mebin_sample_rate": 8,
        "mebin_min_interval_len": 3, "mebin_erode": False, "maps_dir": "/job/setting/ignored",
    }
    config = DiscoveryConfig.from_settings(settings)
    assert config.model == MGViTConfig(backbone="vit_micro_scratch", weights=weights, input_size=48)
    assert (config.train.lr, config.train.adamw_lr, config.train.optimizer) == (0.01, 0.01, "adamw")
    assert config.detector.seed == config.seed == 7 and config.detector.method == "zero-shot"
    assert config.mebin.erode is False and config.classes == 4
    again = config.to_settings()
    assert set(again) <= set(SETTINGS_KEYS)
    assert DiscoveryConfig.from_settings(again) == config
    assert DiscoveryConfig.from_settings(DiscoveryConfig().to_settings()) == DiscoveryConfig()


@pytest.mark.parametrize("settings, message", [
    ({"batch_size": 1}, "batch_size must be at least 2"),
    ({"epochs": 0}, "epochs must be at least 1"),
    ({"tau": -1}, "tau must be positive"),
    ({"classes": "many"}, "classes must be a whole number"),
    ({"binarizer": "canny"}, "binarizer must be one of"),
    ({"weights": "/no/such/file.pth"}, "weight file does not exist"),
    ({"optimizer": "rmsprop"}, "optimizer must be"),
    ({"detector_method": "magic"}, "detector: method must be one of"),
    ({"lr": -0.1}, "learning rate must be positive"),
])
def test_bad_settings_are_named(settings, message):
    with pytest.raises(SettingsError, match=message) as raised:
        DiscoveryConfig.from_settings(settings)
    assert isinstance(raised.value, UserError) and isinstance(raised.value, ValueError)
