"""A run's settings decided: the config the engine runs with, and every `auto` decision with its reason.

`decide(settings)` reads the flat settings through the table in core.settings, checks the files
they name, and decides each setting left to auto (backbone, then epochs and representation, which
follow the backbone) once. The worker records the decisions with the run, the CLI prints them and
writes them into run.json, the Discover page shows them before Start: nobody rebuilds them. The
file-system work (files exist? the backbone's weights in the timm / Hugging Face cache?) is here,
never in core.config or core.settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from core.config import (REAL_USE_BACKBONE, DiscoveryConfig, MGViTConfig, SettingsError, is_scratch,
                         recommended_epochs)
from core.settings import AUTO, apply_settings, read_settings

__all__ = ["Decided", "Decision", "decide", "decide_backbone", "decide_representation"]


@dataclass(frozen=True)
class Decision:
    """What was asked, what the run uses, and why."""

    asked: str
    used: str
    why: str

    @property
    def automatic(self) -> bool:
        return self.asked == AUTO

    def record(self) -> dict[str, str]:
        """As stored with a run (metrics) and written into run.json."""
        return {"asked": self.asked, "used": self.used, "why": self.why}


@dataclass(frozen=True)
class Decided:
    """The config a run's settings give, and the decisions behind it (backbone, epochs, representation)."""

    config: DiscoveryConfig
    decisions: dict[str, Decision] = field(default_factory=dict)

    def automatic(self) -> dict[str, Decision]:
        """The decisions that auto made (not the ones asked for by name)."""
        return {key: d for key, d in self.decisions.items() if d.automatic}

    def lines(self) -> list[str]:
        """Why, for each automatic decision, e.g. 'backbone vit_tiny_scratch (offline, ...)'."""
        return [d.why for d in self.automatic().values()]


def decide_backbone(model: MGViTConfig) -> tuple[MGViTConfig, Decision]:
    """The model with backbone "auto" decided: REAL_USE_BACKBONE with a weights file, or pretrained when
    its weights are already in the timm / Hugging Face cache; else the offline scratch default.

    It never downloads. Other names pass unchanged.
    """
    if model.backbone != AUTO:
        return model, Decision(model.backbone, model.backbone, f"backbone {model.backbone} as asked")
    if model.weights is not None:
        return (replace(model, backbone=REAL_USE_BACKBONE, pretrained=False),
                Decision(AUTO, REAL_USE_BACKBONE, f"backbone {REAL_USE_BACKBONE} with the weights file "
                                                  f"{model.weights.name}"))
    from core.detection.backbones import cached_weights  # timm: imported only when auto is asked

    found = cached_weights(REAL_USE_BACKBONE)
    if found is not None:
        return (replace(model, backbone=REAL_USE_BACKBONE, pretrained=True),
                Decision(AUTO, REAL_USE_BACKBONE, f"backbone {REAL_USE_BACKBONE}: its pretrained weights are in "
                                                  f"the cache ({found.parent})"))
    scratch = MGViTConfig.backbone
    return (replace(model, backbone=scratch, pretrained=False),
            Decision(AUTO, scratch, f"backbone {scratch} (offline, trained from scratch): no pretrained "
                                    f"{REAL_USE_BACKBONE} weights in the timm/Hugging Face cache and no weights "
                                    f"file; auto does not download (choose {REAL_USE_BACKBONE} with its "
                                    "pretrained weights to download it once)"))


def decide_representation(asked: str, model: MGViTConfig) -> Decision:
    """The representation a run groups on for a decided backbone.

    auto: "hybrid" when the MGViT starts from pretrained weights (a weights file or timm's
    pretrained weights), "descriptors" when it would be trained from scratch. Measured offline
    (scratch ViT, K given): the hybrid never beat the descriptors alone beyond noise, on five
    generated demos (image NMI 0.337-0.504 against 0.423-0.542), the hard textured set (0.504
    both) and all 500 DeepPCB images (region NMI 0.807 against 0.802 with the template maps,
    0.758 against 0.774 with the annotated pixels), and it trains for minutes (22 against ~1 on
    DeepPCB).
    """
    if asked != AUTO:
        return Decision(asked, asked, f"regions grouped on {asked} as asked")
    if is_scratch(model):
        return Decision(AUTO, "descriptors", f"regions grouped on their descriptors alone (the {model.backbone} "
                                             "ViT would be trained from scratch, which adds nothing measurable "
                                             "beside them; give DINO weights for the hybrid)")
    return Decision(AUTO, "hybrid", f"regions grouped on the descriptors beside the pretrained {model.backbone} "
                                    "embedding (hybrid)")


def _decide_epochs(asked: Any, model: MGViTConfig) -> Decision:
    if asked != AUTO:
        return Decision(str(asked), str(asked), f"{asked} epochs as asked")
    epochs = recommended_epochs(model)
    kind = "a ViT trained from scratch" if is_scratch(model) else "a pretrained ViT (the paper's)"
    return Decision(AUTO, str(epochs), f"{epochs} epochs for {kind}")


def _check_files(values: Mapping[str, Any]) -> None:
    for key, what in (("weights", "weight file"), ("ground_truth", "ground-truth file")):
        path = values.get(key)
        if path is not None and not Path(path).is_file():
            raise SettingsError(f"{path}: {what} does not exist")


def decide(settings: Mapping[str, Any]) -> Decided:
    """The config of a run's flat settings, with its backbone, epochs and representation decided.

    Missing keys keep the defaults; keys outside core.settings.SETTINGS are the job's and are
    ignored. Raises SettingsError naming a setting that cannot be used (a file that is not there,
    a value out of bounds, an unknown choice).
    """
    values = read_settings(settings)
    _check_files(values)
    config = apply_settings(values)
    model, backbone = decide_backbone(replace(config.model, backbone=values["backbone"]))
    space = decide_representation(values["representation"], model)
    epochs = values["epochs"] if values["epochs"] != AUTO else recommended_epochs(model)
    config = replace(config, model=model, train=replace(config.train, epochs=int(epochs)), representation=space.used)
    decisions = {"backbone": backbone, "representation": space}
    if config.space.trains_model:  # the descriptors alone train nothing: no epochs to decide
        decisions["epochs"] = _decide_epochs(values["epochs"], model)
    return Decided(config, decisions)
