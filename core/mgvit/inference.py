"""Features and logits of crops from a trained model or a fresh backbone, on the centre view.

Both paths prepare crops exactly alike (resized to input_size / crop_pct with area-averaged
masks, then centre-cropped): what the model sees at prediction is what the class-count estimate
and the k-means baselines see.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from core.mgvit.augment import center_views, prepare_crops, stored_size
from core.config import MGViTConfig
from core.mgvit.model import build_mgvit

if TYPE_CHECKING:
    from core.mgvit.heads import DiscoveryModel

__all__ = ["Inference", "backbone_features", "center_batches", "infer"]


@dataclass
class Inference:
    """Per-crop outputs of the centre view."""

    features: np.ndarray  # [N, D] float32, L2-normalized CLS features
    logits: np.ndarray  # [N, n_outputs] float32 raw cosine logits of the best head


def center_batches(
    crops: Sequence[np.ndarray], masks: Sequence[np.ndarray], input_size: int, device: torch.device, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalized centre views (images, masks in 0..1) of the crops, batch by batch, on the device."""
    images_u8, masks_u8 = prepare_crops(crops, masks, stored_size(input_size))
    for start in range(0, len(crops), batch_size):
        yield center_views(images_u8[start : start + batch_size].to(device),
                           masks_u8[start : start + batch_size].to(device), input_size)


@torch.no_grad()
def infer(
    model: DiscoveryModel,
    crops: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    device: torch.device | str,
    batch_size: int = 64,
    guided: bool = True,
) -> Inference:
    """L2-normalized CLS features and the best head's raw cosine logits of every crop (centre view)."""
    device = torch.device(device)
    model = model.to(device).eval()
    dim, outputs = model.backbone.embed_dim, model.n_outputs
    if len(crops) == 0:
        return Inference(np.zeros((0, dim), np.float32), np.zeros((0, outputs), np.float32))
    features, logits = [], []
    for images, mask in center_batches(crops, masks, model.backbone.input_size, device, batch_size):
        normalized = F.normalize(model.backbone(images, mask, guided=guided).float(), dim=1)
        features.append(normalized.cpu())
        logits.append(model.heads[model.best_head](normalized).float().cpu())
    return Inference(torch.cat(features).numpy(), torch.cat(logits).numpy())


@torch.no_grad()
def backbone_features(
    crops: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    model_config: MGViTConfig,
    device: torch.device | str,
    *,
    seed: int = 0,
    guided: bool = True,
    batch_size: int = 64,
) -> np.ndarray:
    """L2-normalized CLS features of crops from the backbone as training would start it.

    Pretrained or file weights when the config names them, else the seeded random init: the
    features the class-count estimate and the k-means baselines work on.
    """
    device = torch.device(device)
    torch.manual_seed(seed)
    backbone = build_mgvit(model_config, device).eval()
    if len(crops) == 0:
        return np.zeros((0, backbone.embed_dim), np.float32)
    features = [
        F.normalize(backbone(images, mask, guided=guided).float(), dim=1).cpu().numpy()
        for images, mask in center_batches(crops, masks, backbone.input_size, device, batch_size)
    ]
    return np.concatenate(features).astype(np.float32)
