"""Settings as data: one table (core.settings) read by the stored settings, the CLI and the form;
core.config imports without torch and does no file-system work; older runs' settings still load."""

import argparse
import json
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from core.config import SCRATCH_EPOCHS, DiscoveryConfig, MGViTConfig, SettingsError, TrainConfig
from core.decisions import decide
from core.errors import UserError
from core.settings import SETTING, SETTINGS, record_settings, to_settings

ROOT = Path(__file__).resolve().parents[1]


def test_config_and_settings_import_without_torch_or_the_detector():
    code = ("import sys, core.config, core.settings; heavy = sorted(m for m in sys.modules if 'torch' in m "
            "or m.startswith('core.detection.backbones') or m == 'timm'); assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_defaults_are_the_published_ones_and_the_table_reads_them():
    config = DiscoveryConfig()
    assert (config.tau, config.seed, config.classes, config.binarizer) == (100.0, 0, None, "mebin")
    assert (config.train.epochs, config.train.batch_size, config.train.lr) == (50, 32, 0.1)
    assert (config.mebin.sample_rate, config.mebin.min_interval_len, config.mebin.kernel_size) == (4, 4, 6)
    assert not hasattr(config.train, "seed"), "one seed: DiscoveryConfig.seed"
    assert SETTING["tau"].default == config.tau and SETTING["batch_size"].default == config.train.batch_size
    assert SETTING["refine"].default == config.regions.refine and SETTING["mebin_erode"].default is True
    assert {SETTING[k].default for k in ("classes", "backbone", "epochs", "representation")} == {"auto"}


def test_empty_settings_pick_the_scratch_epochs_and_keep_defaults():
    config = decide({}).config
    assert config == replace(DiscoveryConfig(), train=replace(TrainConfig(), epochs=SCRATCH_EPOCHS))
    pretrained = decide({"backbone": "vit_base_patch16_224.dino", "pretrained": True})
    assert pretrained.config.train.epochs == TrainConfig.epochs
    assert pretrained.decisions["epochs"].why == f"{TrainConfig.epochs} epochs for a pretrained ViT (the paper's)"


def test_settings_round_trip(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    settings = {
        "classes": 4, "backbone": "vit_micro_scratch", "weights": str(weights), "image_size": 48, "epochs": 3,
        "batch_size": 16, "lr": 0.01, "optimizer": "adamw", "guided": False, "tau": 50.0, "seed": 7,
        "device": "cpu", "binarizer": "otsu", "detector_method": "zero-shot", "mebin_sample_rate": 8,
        "mebin_min_interval_len": 3, "mebin_erode": False, "maps_dir": "/job/setting/ignored",
    }
    config = decide(settings).config
    assert config.model == MGViTConfig(backbone="vit_micro_scratch", weights=weights, input_size=48)
    assert (config.train.lr, config.train.adamw_lr, config.train.optimizer) == (0.01, 0.01, "adamw")
    assert config.detector.seed == config.seed == 7 and config.detector.method == "zero-shot"
    assert config.mebin.erode is False and config.classes == 4
    again = to_settings(config)
    assert set(again) <= set(SETTING)
    assert decide(again).config == config
    assert decide(to_settings(DiscoveryConfig())).config == DiscoveryConfig()


@pytest.mark.parametrize("settings, message", [
    ({"batch_size": 1}, "batch_size must be between 2 and 1024, not 1"),
    ({"epochs": 0}, "epochs must be between 1 and 500"),
    ({"tau": -1}, "tau must be between 1 and 1000"),
    ({"classes": "many"}, "classes must be a whole number or 'auto'"),
    ({"classes": "99999999999999999999"}, "classes must be between 2 and 100, not 99999999999999999999"),
    ({"classes": 2.5}, "classes must be a whole number"),
    ({"binarizer": "canny"}, "binarizer must be one of mebin, otsu"),
    ({"weights": "/no/such/file.pth"}, "weight file does not exist"),
    ({"ground_truth": "/no/such/annotations.json"}, "ground-truth file does not exist"),
    ({"optimizer": "rmsprop"}, "optimizer must be one of auto, sgd, adamw"),
    ({"detector_method": "magic"}, "detector_method must be one of"),
    ({"lr": -0.1}, "lr must be between"),
    ({"representation": "pixels"}, "representation must be one of"),
])
def test_bad_settings_are_named(settings, message):
    with pytest.raises(SettingsError, match=message) as raised:
        decide(settings)
    assert isinstance(raised.value, UserError) and isinstance(raised.value, ValueError)


def test_auto_decisions_come_with_their_reasons_once(tmp_path):
    decided = decide({"representation": "auto", "backbone": "vit_micro_scratch"})
    assert set(decided.automatic()) == {"representation"}  # the backbone was named; no MGViT, no epochs
    assert decided.decisions["representation"].record() == {
        "asked": "auto", "used": "descriptors", "why": decided.decisions["representation"].why}
    assert decided.lines() == [decided.decisions["representation"].why]
    weights = tmp_path / "dino.pth"
    weights.write_bytes(b"not read here")
    hybrid = decide({"backbone": "auto", "weights": str(weights)})
    assert [d.used for d in hybrid.automatic().values()] == ["vit_base_patch16_224.dino", "hybrid", "50"]
    assert not any("--" in d.why for d in hybrid.decisions.values())  # the form's words, not CLI flags


def test_stored_settings_of_older_runs_still_load(tmp_path):
    """What the Discover form stored before the table (None for unset fields, pretrained for auto, job keys)
    and a run.json written before it kept its flat settings (only the nested config) both load."""
    old_form = {"classes": "auto", "backbone": "auto", "weights": None, "pretrained": True, "device": "cpu",
                "batch_size": 32, "lr": None, "tau": 100.0, "seed": 0, "guided": True, "binarizer": "mebin",
                "representation": "auto", "refine": "references", "fallback": "peak", "prior": "none",
                "recompute_maps": False, "mebin_sample_rate": 4, "mebin_min_interval_len": 4,
                "use_labeled_set": True, "labels_from_project": False}
    config = decide(old_form).config
    assert config.classes is None and config.representation in ("descriptors", "hybrid")
    old_retrain = {"classes": 4, "epochs": None, "image_size": None, "ground_truth": "", "parent_run_id": 3}
    assert decide(old_retrain).config.classes == 4
    written = decide({"classes": 3, "backbone": "vit_micro_scratch", "representation": "hybrid", "epochs": 2,
                      "tau": 50.0, "refine": "none"}).config
    old_run_json = json.loads(json.dumps({"dataset": "d", "config": asdict(written),
                                          "representation": {"asked": "hybrid", "used": "hybrid", "why": "-"}},
                                         default=str))
    assert decide(record_settings(old_run_json)).config == written
    assert decide(record_settings({"settings": to_settings(written)})).config == written
    with pytest.raises(SettingsError, match="not a discovery record"):
        record_settings({"dataset": "d"})


def test_cli_options_are_the_table():
    from core.commands.discover import CLI_SETTINGS, add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = {action.dest: action for action in parser._actions}
    for key in CLI_SETTINGS:
        assert options[key].option_strings == [SETTING[key].option] and options[key].default is None
        assert options[key].help.startswith(SETTING[key].help)
    assert "[100]" in options["tau"].help and "[auto]" in options["classes"].help
    assert parser.parse_args(["--dataset", "d", "--out", "o", "--unguided"]).guided is False
    with pytest.raises(SystemExit):
        parser.parse_args(["--dataset", "d", "--out", "o", "--classes", "99999999999999999999"])
    assert {s.key for s in SETTINGS} >= set(CLI_SETTINGS)
