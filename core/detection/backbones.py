"""Which backbone `--backbone auto` uses: the pretrained one when its weights are already here
(timm / Hugging Face cache, or a weights file), else the offline one; with one line saying why.

auto never downloads (a line without network would hang or fail): name the backbone
(`--backbone wide_resnet50_2`) to let timm download it once.
"""

from __future__ import annotations

import os
from pathlib import Path

from core.detection.config import AUTO_BACKBONE, OFFLINE_BACKBONE, PAPER_BACKBONE, DetectorConfig

#: File names timm looks for in a Hugging Face model repository.
HUB_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def cached_weights(name: str) -> Path | None:
    """Where the pretrained weights of timm model `name` already lie on this machine, or None."""
    try:
        from timm.models import get_pretrained_cfg
    except ImportError:
        return None
    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.file and Path(cfg.file).is_file():
        return Path(cfg.file)
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo = cfg.hf_hub_id.split("@")[0]
        for filename in ([cfg.hf_hub_filename] if cfg.hf_hub_filename else []) + list(HUB_FILES):
            found = try_to_load_from_cache(repo, filename)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
    if cfg.url:
        import torch.hub

        local = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name
        if local.is_file():
            return local
    return None


def resolve_backbone(config: DetectorConfig) -> tuple[str, str]:
    """(backbone to run, one line why) for config.backbone; only "auto" is decided here."""
    if config.backbone != AUTO_BACKBONE:
        return config.backbone, f"backbone {config.backbone} as asked"
    if config.weights is not None:
        return PAPER_BACKBONE, f"backbone {PAPER_BACKBONE} with the weights file {Path(config.weights).name}"
    found = cached_weights(PAPER_BACKBONE)
    if found is not None:
        return PAPER_BACKBONE, f"backbone {PAPER_BACKBONE}: its pretrained weights are in the cache ({found.parent})"
    return OFFLINE_BACKBONE, (f"backbone {OFFLINE_BACKBONE} (offline): no pretrained {PAPER_BACKBONE} weights in the "
                              f"timm/Hugging Face cache and no --weights; auto does not download (name "
                              f"--backbone {PAPER_BACKBONE} to download it once)")
