"""The discovery settings, declared once: the stored settings, the CLI and the Discover form read this table.

Each `Setting` names its key in the flat settings of a run (what the app stores and `run.json`
writes), its type, the config field it sets (its default is read from the config dataclasses),
its bounds, choices and help. `read_settings` turns a run's flat settings into typed values
(SettingsError names a setting it cannot use); `apply_settings` puts them into a DiscoveryConfig;
`to_settings` turns a config back. Settings that take `auto` (backbone, epochs, representation,
classes) are decided, with their reasons, by core.decisions. No file-system work, no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from core.config import (AUTO_VIT, BINARIZERS, EXTRACTIONS, FALLBACKS, OPTIMIZERS, PRIORS, REFINEMENTS,
                         SCRATCH_EPOCHS, DiscoveryConfig, SettingsError, TrainConfig)
from core.detection.config import METHODS
from core.representation import AUTO_REPRESENTATION, REPRESENTATION_CHOICES

__all__ = ["AUTO", "SETTING", "SETTINGS", "Setting", "apply_settings", "read_settings", "record_settings",
           "to_settings"]

#: The word for "decide for me" in every setting that takes it.
AUTO = "auto"
_DEFAULTS = DiscoveryConfig()


@dataclass(frozen=True)
class Setting:
    """One discovery setting: its key in the stored settings, type, target field, bounds, choices, help."""

    key: str
    kind: type  # int, float, str, bool or Path
    field: str | None  # dotted field of DiscoveryConfig it sets (and whose default it shows); None: see apply
    help: str
    choices: tuple[str, ...] = ()
    low: float | None = None  # smallest value accepted (inclusive)
    high: float | None = None  # largest value accepted (inclusive)
    auto: bool = False  # takes "auto" (its default), decided by core.decisions
    flag: str | None = None  # the CLI option when it is not --key (dashes for underscores)

    @property
    def option(self) -> str:
        """The `python -m core discover` option of this setting."""
        return self.flag or "--" + self.key.replace("_", "-")

    @property
    def default(self) -> Any:
        """The value a run gets when the setting is not given: auto, or the config dataclasses' default."""
        if self.auto:
            return AUTO
        if self.field is None:
            return None
        value: Any = _DEFAULTS
        for part in self.field.split("."):
            value = getattr(value, part)
        return value

    def parse(self, value: Any) -> Any:
        """The typed value of a stored, typed or command-line value; raises SettingsError naming the setting."""
        if self.auto and (value is None or str(value).strip().lower() in ("", AUTO)):
            return AUTO
        if self.kind is bool:
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            return bool(value)
        if self.kind is Path:
            return Path(str(value)).expanduser()
        if self.kind in (int, float):
            return self._number(value)
        text = str(value)
        if self.choices and text not in self.choices:
            raise SettingsError(f"{self.key} must be one of {', '.join(self.choices)}, not {text!r}")
        return text

    def _number(self, value: Any) -> int | float:
        whole = self.kind is int
        if isinstance(value, bool):
            raise SettingsError(f"{self.key} must be a {'whole ' if whole else ''}number, not {value!r}")
        try:
            number = float(value) if not whole else int(str(value).strip()) if isinstance(value, str) else int(value)
            if whole and not isinstance(value, str) and float(value) != number:
                raise ValueError
        except (TypeError, ValueError, OverflowError):
            words = "a whole number" + (" or 'auto'" if self.auto else "") if whole else "a number"
            raise SettingsError(f"{self.key} must be {words}, not {value!r}") from None
        if (self.low is not None and number < self.low) or (self.high is not None and number > self.high):
            shown = number if whole else f"{number:g}"
            raise SettingsError(f"{self.key} must be between {self.low:g} and {self.high:g}, not {shown}")
        return number


SETTINGS: tuple[Setting, ...] = (
    Setting("classes", int, "classes", "number of defect classes to discover (the normal slot comes on top), "
            "or auto to estimate it", low=2, high=100, auto=True),
    Setting("backbone", str, "model.backbone", f"ViT backbone: auto (vit_base_patch16_224.dino when its weights are "
            "in the cache or given as a weights file, else vit_tiny_scratch), vit_tiny_scratch, vit_micro_scratch, "
            "or a timm name", auto=True),
    Setting("weights", Path, "model.weights", "local weight file for the backbone (timm or DINO layout)"),
    Setting("pretrained", bool, "model.pretrained", "load timm's pretrained weights for a timm backbone"),
    Setting("image_size", int, "model.input_size", "crop side fed to the ViT in pixels (0: the backbone's own)",
            low=0, high=1024),
    Setting("epochs", int, "train.epochs", f"training epochs (auto: {SCRATCH_EPOCHS} for a ViT trained from "
            f"scratch, {TrainConfig.epochs} for a pretrained one); only runs that train an MGViT use it",
            low=1, high=500, auto=True),
    Setting("batch_size", int, "train.batch_size", "training batch size", low=2, high=1024),
    Setting("lr", float, None, "start learning rate of whichever optimizer runs (default: the optimizer's own)",
            low=1e-6, high=10.0),
    Setting("sgd_lr", float, "train.lr", "SGD start learning rate", low=1e-6, high=10.0),
    Setting("adamw_lr", float, "train.adamw_lr", "AdamW start learning rate", low=1e-6, high=10.0),
    Setting("optimizer", str, "train.optimizer", "auto (SGD with loaded weights, AdamW from scratch), sgd or adamw",
            choices=OPTIMIZERS),
    Setting("guided", bool, "train.guided", "mask-guided attention (off: the unguided ablation)", flag="--unguided"),
    Setting("tau", float, "tau", "area-weighted fusion temperature (100 for MVTec AD, 50 for MTD)", low=1.0,
            high=1000.0),
    Setting("seed", int, "seed", "random seed of every seeded stage", low=0, high=2**31 - 1),
    Setting("device", str, "device", "auto | cpu | cuda | cuda:N | mps"),
    Setting("binarizer", str, "binarizer", "how maps become masks: MEBin (the method) or Otsu per map (ablation)",
            choices=BINARIZERS),
    Setting("representation", str, "representation", "what regions are grouped on: vit (the paper: MGViT "
            "embedding and heads), descriptors (mask shape, contrast, texture and HOG; no MGViT trained), hybrid "
            "(both), or auto: hybrid when the ViT starts from pretrained weights, else descriptors (a ViT trained "
            "from scratch adds nothing measurable beside them)", choices=REPRESENTATION_CHOICES, auto=True),
    Setting("prior", str, "prior", "hybrid: descriptors (the MGViT is taught the descriptor groups) or none (the "
            "paper's teacher-student alone)", choices=PRIORS),
    Setting("extraction", str, "regions.extraction", "regions: components (every defect its own region) or "
            "reference (the paper's MEBin main elements)", choices=EXTRACTIONS),
    Setting("refine", str, "regions.refine", "region masks: references (redrawn where the image differs from the "
            "best-matching normal reference patch) or none (the map's own mask)", choices=REFINEMENTS),
    Setting("fallback", str, "regions.fallback", "an image where nothing clears the floor: peak (its map's strongest "
            "spot, a weak region that does not shape the groups) or whole (the whole image)", choices=FALLBACKS),
    Setting("ground_truth", Path, "ground_truth", "COCO annotations for region-level metrics "
            "[DATASET/annotations.json when present]"),
    Setting("detector_method", str, "detector.method", "built-in detector when no maps are given (zero-shot when "
            "there are no normal images)", choices=METHODS, flag="--detector"),
    Setting("detector_backbone", str, "detector.backbone", "the built-in detector's backbone (auto, filterbank or a "
            "timm CNN)"),
    Setting("detector_weights", Path, "detector.weights", "local weights of the detector's backbone"),
    Setting("mebin_sample_rate", int, "mebin.sample_rate", "MEBin: step between swept thresholds", low=1, high=64),
    Setting("mebin_min_interval_len", int, "mebin.min_interval_len", "MEBin: shortest stable run of component "
            "counts", low=1, high=255),
    Setting("mebin_erode", bool, "mebin.erode", "MEBin: erode each binary map"),
    Setting("mebin_kernel_size", int, "mebin.kernel_size", "MEBin: side of the erosion kernel", low=1, high=64),
)
#: The table by key.
SETTING: dict[str, Setting] = {s.key: s for s in SETTINGS}
assert SETTING["backbone"].default == AUTO_VIT and SETTING["representation"].default == AUTO_REPRESENTATION


def read_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The typed value of every setting of the table: given ones parsed and checked, the rest their default.

    Keys outside the table belong to the job (maps folder, labels, ...) and are ignored; None and ""
    count as not given (stored settings of older runs hold them).
    """
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = settings.get(setting.key)
        values[setting.key] = setting.default if raw is None or raw == "" else setting.parse(raw)
    return values


def _with_field(config: Any, path: str, value: Any) -> Any:
    head, _, rest = path.partition(".")
    return replace(config, **{head: _with_field(getattr(config, head), rest, value) if rest else value})


def apply_settings(values: Mapping[str, Any], config: DiscoveryConfig = _DEFAULTS) -> DiscoveryConfig:
    """The config with every read setting that is not auto put into its field (read_settings' values).

    `lr` sets both optimizers' start rates; `image_size` 0 is the backbone's own; the detector gets
    the run's seed. Raises SettingsError naming the setting a config rejects.
    """
    for setting in SETTINGS:
        value = values.get(setting.key, setting.default)
        if setting.field is None or value == AUTO or (value is None and setting.default is None):
            continue
        if setting.key == "image_size":
            value = value or None
        try:
            config = _with_field(config, setting.field, value)
        except ValueError as error:
            raise SettingsError(f"{setting.key}: {error}") from error
    if values.get("lr") is not None:
        config = replace(config, train=replace(config.train, lr=values["lr"], adamw_lr=values["lr"]))
    return replace(config, detector=replace(config.detector, seed=config.seed))


def _dig(value: Any, path: str) -> Any:
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else getattr(value, part)
    return value


def _flat(config: Any) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.field is not None:
            value = _dig(config, setting.field)
            flat[setting.key] = str(value) if isinstance(value, Path) else value
    flat["classes"] = AUTO if flat["classes"] is None else int(flat["classes"])
    return flat


def to_settings(config: DiscoveryConfig) -> dict[str, Any]:
    """The flat settings that core.decisions.decide turns back into this config.

    Fields outside the table (loss weights, augmentation, ...) are not written: a config that
    changes them does not survive the round trip, one built from settings does.
    """
    return _flat(config)


def record_settings(record: Mapping[str, Any]) -> dict[str, Any]:
    """The flat settings of a run.json: its `settings`, or, in files written before they were kept
    there, the settings read out of its nested `config` (dataclasses.asdict of the DiscoveryConfig)."""
    if isinstance(record.get("settings"), Mapping):
        return dict(record["settings"])
    if not isinstance(record.get("config"), Mapping):
        raise SettingsError("not a discovery record: it holds neither settings nor a config")
    return _flat(record["config"])
