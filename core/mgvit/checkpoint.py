"""Checkpoints of the discovery model: one self-contained file (format, configs, weights, extra).

The configs travel in the checkpoint dict, never on the model: `save_checkpoint` takes them from
the TrainResult (or explicitly), `load_checkpoint` rebuilds the model from them. Training's
per-epoch checkpoint is the same format plus a `train_state` (optimizer, epoch, history), so it
loads as a model too and resumes training (`restore_training`). A save that fails raises.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

import torch

from core.config import AugmentConfig, MGViTConfig, TrainConfig
from core.mgvit.heads import DiscoveryModel, build_model


class Trained(Protocol):
    """What save_checkpoint reads of a training's outcome (core.mgvit.train.TrainResult has it); the
    checkpoint module does not import training, which imports it."""

    model: DiscoveryModel
    history: list[dict[str, float]]
    model_config: MGViTConfig
    train_config: TrainConfig

__all__ = ["CHECKPOINT_FORMAT", "load_checkpoint", "model_payload", "restore_training", "save_checkpoint",
           "write_checkpoint"]

CHECKPOINT_FORMAT = "defect-discovery-model-1"


def write_checkpoint(path: Path, payload: dict) -> None:
    """Write atomically (temporary file, then rename); raises OSError naming the path when it fails."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(payload, temporary)
        os.replace(temporary, path)
    except (OSError, RuntimeError) as error:  # RuntimeError: torch's writer on a full disk
        temporary.unlink(missing_ok=True)
        raise OSError(f"could not write the checkpoint {path}: {error}") from error
    if not path.is_file():
        raise OSError(f"the checkpoint {path} is missing right after it was written")


def model_payload(model: DiscoveryModel, model_config: MGViTConfig, train_config: TrainConfig) -> dict:
    """The checkpoint dict of a model: format, both configs, class layout, best head and weights."""
    config = asdict(model_config)
    config["weights"] = str(config["weights"]) if config["weights"] is not None else None
    return {
        "format": CHECKPOINT_FORMAT,
        "model_config": config,
        "train_config": asdict(train_config),
        "n_base": model.n_base,
        "n_novel": model.n_novel,
        "base_classes": list(model.base_classes),
        "best_head": int(model.best_head),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def save_checkpoint(path: Path | str, result_or_model: Trained | DiscoveryModel, extra: dict | None = None,
                    model_config: MGViTConfig | None = None, train_config: TrainConfig | None = None) -> None:
    """Write a self-contained checkpoint (configs + weights + extra) that load_checkpoint reloads.

    The configs come from the TrainResult unless given; a bare model needs them given.
    """
    is_result = not isinstance(result_or_model, DiscoveryModel)
    model = result_or_model.model if is_result else result_or_model
    if is_result:
        model_config = model_config or result_or_model.model_config
        train_config = train_config or result_or_model.train_config
    if model_config is None or train_config is None:
        raise ValueError("save_checkpoint needs the model's configs: pass a TrainResult, or model_config "
                         "and train_config")
    payload = model_payload(model, model_config, train_config)
    if is_result:
        payload["history"] = result_or_model.history
    payload["extra"] = dict(extra or {})
    write_checkpoint(Path(path), payload)


def _config_from(cls: type, values: dict):
    known = {f for f in cls.__dataclass_fields__}
    values = {k: v for k, v in values.items() if k in known}
    if cls is TrainConfig and isinstance(values.get("augment"), dict):
        augment = dict(values["augment"])
        for key in ("crop_scale", "crop_ratio", "blur_sigma"):
            if key in augment:
                augment[key] = tuple(augment[key])
        values["augment"] = AugmentConfig(**augment)
    if cls is MGViTConfig and values.get("weights") is not None:
        values["weights"] = Path(values["weights"])
    return cls(**values)


def _read(path: Path) -> dict:
    try:
        saved = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is reported as such, with its cause
        raise ValueError(f"cannot read checkpoint {path}: {type(error).__name__}: {error}") from error
    if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a discovery model checkpoint")
    return saved


def load_checkpoint(path: Path | str, device: torch.device | str = "cpu") -> tuple[DiscoveryModel, dict]:
    """Rebuild a DiscoveryModel from a checkpoint of save_checkpoint (or train's epoch checkpoint).

    Returns (model in eval mode, extra dict). The backbone is rebuilt from its config without
    reading the original weight file again (the checkpoint holds all weights).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    saved = _read(path)
    model_config = _config_from(MGViTConfig, saved["model_config"])
    train_config = _config_from(TrainConfig, saved["train_config"])
    rebuild = MGViTConfig(**{**asdict(model_config), "weights": None, "pretrained": False})
    model = build_model(rebuild, train_config, saved["n_base"], saved["n_novel"], saved["base_classes"],
                        torch.device("cpu"), 0)
    model.load_state_dict(saved["state_dict"])
    model.best_head = int(saved["best_head"])
    return model.to(device).eval(), dict(saved.get("extra", {}))


def restore_training(path: Path, model: DiscoveryModel, optimizer: torch.optim.Optimizer) -> tuple[int, list] | None:
    """Resume from a per-epoch checkpoint: load weights, optimizer and best head into the given ones.

    Returns (epochs done, history), or None when there is no file or it holds no training state.
    Raises ValueError when it was written by a different training.
    """
    if not Path(path).is_file():
        return None
    saved = torch.load(str(path), map_location="cpu", weights_only=True)
    state = saved.get("train_state")
    if state is None:
        return None
    try:
        model.load_state_dict(saved["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise ValueError(
            f"checkpoint {path} was written by a different training (other backbone, classes "
            f"or heads); delete it or train without resume ({type(error).__name__})"
        ) from error
    model.best_head = int(saved.get("best_head", 0))
    return int(state["epoch"]), list(state["history"])
