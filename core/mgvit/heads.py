"""The discovery model (docs/method.md stage 5): MGViT backbone + projector MLP + cosine classifier heads.

DiscoveryModel = MGViT backbone + projector MLP (contrastive learning) + n_heads cosine
classifiers on the L2-normalized [CLS] feature, each with n_base + n_novel outputs (base classes
first; the first novel output is the reserved normal / false-detection slot).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from core.config import MGViTConfig, TrainConfig
from core.mgvit.model import MGViT, build_mgvit

__all__ = ["CosineClassifier", "DiscoveryModel", "build_model", "projector"]


class CosineClassifier(nn.Module):
    """Weight-normalized linear layer without bias, weight norm fixed at 1: logits are cosines."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, normalized: torch.Tensor) -> torch.Tensor:
        return normalized @ F.normalize(self.weight, dim=1).T


def projector(in_dim: int, hidden: int, out: int, layers: int) -> nn.Sequential:
    """The contrastive projector: `layers` linear layers with GELU between them."""
    dims = [in_dim] + [hidden] * (max(1, layers) - 1) + [out]
    modules: list[nn.Module] = []
    for index in range(len(dims) - 1):
        modules.append(nn.Linear(dims[index], dims[index + 1]))
        if index < len(dims) - 2:
            modules.append(nn.GELU())
    for module in modules:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
    return nn.Sequential(*modules)


class DiscoveryModel(nn.Module):
    """MGViT + projector + cosine heads; .best_head picks the head used for prediction."""

    def __init__(
        self,
        backbone: MGViT,
        n_base: int,
        n_novel: int,
        base_classes: Sequence[str],
        n_heads: int = 4,
        proj_hidden: int = 2048,
        proj_out: int = 256,
        proj_layers: int = 3,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.n_base = int(n_base)
        self.n_novel = int(n_novel)
        self.base_classes = list(base_classes)
        dim = backbone.embed_dim
        self.projector = projector(dim, proj_hidden, proj_out, proj_layers)
        self.heads = nn.ModuleList([CosineClassifier(dim, self.n_base + self.n_novel) for _ in range(n_heads)])
        self.best_head = 0

    @property
    def n_outputs(self) -> int:
        """Outputs of every head: base classes, then the normal slot and the novel classes."""
        return self.n_base + self.n_novel

    def forward(
        self, images: torch.Tensor, masks: torch.Tensor, guided: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (CLS features [B, D], projections [B, proj_out], logits of every head [H, B, C])."""
        features = self.backbone(images, masks, guided=guided)
        normalized = F.normalize(features, dim=1)
        projections = self.projector(features)
        logits = torch.stack([head(normalized) for head in self.heads])
        return features, projections, logits


def build_model(
    model_config: MGViTConfig, train_config: TrainConfig, n_base: int, n_novel: int, base_classes: Sequence[str],
    device: torch.device, seed: int,
) -> DiscoveryModel:
    """A freshly initialized DiscoveryModel; `seed` alone decides its weights (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = build_mgvit(model_config, "cpu")
        model = DiscoveryModel(
            backbone,
            n_base,
            n_novel,
            base_classes,
            train_config.n_heads,
            train_config.proj_hidden,
            train_config.proj_out,
            train_config.proj_layers,
        )
    return model.to(device)
