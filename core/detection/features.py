"""Patch features for the detectors: a timm CNN or the offline filter bank, then PatchCore's
locally aware patch embedding (neighbourhood pooling, deeper stage upsampled, channel pooling)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.detection.config import AUTO_BACKBONE, OFFLINE_BACKBONE, DetectorConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DetectionError(ValueError):
    """The detector cannot run as configured (no normal images, weights missing...); says what to do."""


def _gaussian_kernels(sigma: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """1-D Gaussian and its first and second derivatives, scale-normalized (sigma^n d^n/dx^n)."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    d1 = -x / sigma**2 * g * sigma
    d2 = (x**2 / sigma**4 - 1 / sigma**2) * g * sigma**2
    d2 = d2 - d2.mean()  # a flat signal must give zero curvature
    return g.float(), d1.float(), d2.float()


class FilterBank(nn.Module):
    """Offline backbone: fixed, rotation-invariant Gaussian-derivative responses in two stages.

    The image is first divided by its local mean intensity (a soft lighting correction). Then,
    per scale sigma: gradient magnitude, the two Hessian eigenvalues (lines, ridges, blobs of
    either polarity) and a difference of Gaussians (sigma vs 2 sigma; faint spots and stains) of
    the intensity, plus the difference of Gaussians of two opponent colours; all scale-normalized,
    so that structures of every size weigh alike, and band-pass, so that smooth lighting changes
    do not count. Averaged over cells of stride 4 (fine scales) and 8 (coarse scales), the
    analogue of a CNN's two intermediate stages. Nothing is learnt: no download, same behaviour
    on every data set.
    """

    strides = (4, 8)
    per_scale = 6  # gradient, two Hessian eigenvalues, intensity DoG, two colour DoGs
    light_scale = 1 / 8  # lighting is estimated at sigma = this share of the shorter side
    light_offset = 0.2  # added to the local mean intensity before dividing (keeps dark areas calm)

    def __init__(self, scales: tuple[tuple[float, ...], tuple[float, ...]] = ((1.0, 2.0, 4.0), (4.0, 8.0))) -> None:
        super().__init__()
        self.scales = scales
        # Rows: intensity, red-green, yellow-blue.
        opponent = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1.0, -1.0, 0.0], [0.5, 0.5, -1.0]])
        self.register_buffer("opponent", opponent, persistent=False)

    @property
    def channels(self) -> tuple[int, int]:
        return (len(self.scales[0]) * self.per_scale, len(self.scales[1]) * self.per_scale)

    @staticmethod
    def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
        """Separable Gaussian blur of every channel (batch and channels folded: one plain conv)."""
        batch, channels, height, width = x.shape
        kernel = _gaussian_kernels(sigma)[0].to(x.device, x.dtype)
        radius = kernel.numel() // 2
        flat = x.reshape(batch * channels, 1, height, width)
        flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
        flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
        return flat.reshape(batch, channels, height, width)

    @staticmethod
    def _differences(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Central first and second differences (dx, dy, dxx, dyy, dxy) of a smoothed map."""
        padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
        centre = padded[..., 1:-1, 1:-1]
        left, right = padded[..., 1:-1, :-2], padded[..., 1:-1, 2:]
        up, down = padded[..., :-2, 1:-1], padded[..., 2:, 1:-1]
        dxy = (padded[..., 2:, 2:] - padded[..., 2:, :-2] - padded[..., :-2, 2:] + padded[..., :-2, :-2]) / 4
        return (right - left) / 2, (down - up) / 2, right - 2 * centre + left, down - 2 * centre + up, dxy

    def _scale_features(self, colour: torch.Tensor, sigma: float, stride: int) -> torch.Tensor:
        # Coarse scales are computed on a subsampled image (the result is pooled coarser anyway).
        factor = 1
        while sigma / factor >= 3.0 and factor * 2 <= stride:
            factor *= 2
        if factor > 1:
            colour = F.avg_pool2d(colour, factor, factor)
        local = sigma / factor
        smooth = self._blur(colour, local)
        wide = self._blur(smooth, local * math.sqrt(3.0))  # total sigma 2 * local
        dx, dy, dxx, dyy, dxy = self._differences(smooth[:, :1])
        gradient = (dx**2 + dy**2).sqrt() * local
        half_trace = (dxx + dyy) / 2 * local**2
        radius = (((dxx - dyy) / 2) ** 2 + dxy**2).sqrt() * local**2
        responses = torch.cat([gradient, half_trace + radius, half_trace - radius, smooth - wide], dim=1)
        return F.avg_pool2d(responses, stride // factor, stride // factor)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        # Divisive normalization by the local mean intensity: uneven or changed lighting scales
        # every response alike, and this takes it out before any filter sees it.
        light = self._blur(images.mean(dim=1, keepdim=True), self.light_scale * min(images.shape[-2:]))
        colour = torch.einsum("oc,bchw->bohw", self.opponent, images / (light + self.light_offset))
        return [
            torch.cat([self._scale_features(colour, sigma, stride) for sigma in sigmas], dim=1)
            for sigmas, stride in zip(self.scales, self.strides)
        ]


class TimmFeatures(nn.Module):
    """Two intermediate stages of a timm CNN (features_only), ImageNet-normalized input."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model((images - self.mean) / self.std))


def _create_timm(config: DetectorConfig) -> nn.Module:
    import timm

    if config.backbone not in timm.list_models() and not timm.is_model(config.backbone):
        raise DetectionError(f"unknown backbone {config.backbone!r}: use {OFFLINE_BACKBONE!r} or a timm model name")
    kwargs = dict(features_only=True, out_indices=tuple(config.layers))
    if config.weights is not None:
        weights = Path(config.weights)
        if not weights.is_file():
            raise DetectionError(f"{weights}: weights file does not exist")
        if weights.suffix.lower() not in (".pth", ".pt", ".bin", ".safetensors"):
            raise DetectionError(f"{weights}: weights must be a .pth or .safetensors file")
        try:
            return timm.create_model(config.backbone, pretrained=True,
                                     pretrained_cfg_overlay=dict(file=str(weights)), **kwargs)
        except (RuntimeError, KeyError, ValueError, OSError) as error:
            first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
            raise DetectionError(f"{weights}: cannot load these weights into {config.backbone} ({first})") from error
    if not config.pretrained:
        return timm.create_model(config.backbone, pretrained=False, **kwargs)
    try:
        return timm.create_model(config.backbone, pretrained=True, **kwargs)
    except Exception as error:  # noqa: BLE001 - network and hub errors come in many types
        raise DetectionError(
            f"pretrained weights for {config.backbone!r} are not in the timm/Hugging Face cache and cannot be "
            f"downloaded ({type(error).__name__}); pass a local file with --weights FILE (.pth or "
            f".safetensors), or use the offline backbone {OFFLINE_BACKBONE!r}"
        ) from error


def build_feature_extractor(config: DetectorConfig, device: torch.device) -> nn.Module:
    """The backbone named by config, in eval mode on device; forward(images in 0..1) -> 2 maps."""
    if config.backbone == AUTO_BACKBONE:
        from core.detection.backbones import resolve_backbone

        config = replace(config, backbone=resolve_backbone(config)[0])
    if config.backbone == OFFLINE_BACKBONE:
        if config.weights is not None:
            raise DetectionError(f"the {OFFLINE_BACKBONE!r} backbone has no weights; drop --weights or name a timm backbone")
        extractor: nn.Module = FilterBank()
    else:
        model = _create_timm(config)
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        extractor = TimmFeatures(model, tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)))
    return extractor.eval().to(device)


def _pool_channels(features: torch.Tensor, dim: int) -> torch.Tensor:
    """Adaptive average pooling over the channel axis down to dim (never up)."""
    batch, channels, height, width = features.shape
    if channels <= dim:
        return features
    flat = features.permute(0, 2, 3, 1).reshape(-1, 1, channels)
    pooled = F.adaptive_avg_pool1d(flat, dim)
    return pooled.reshape(batch, height, width, dim).permute(0, 3, 1, 2)


def patch_embeddings(stages: list[torch.Tensor], config: DetectorConfig) -> torch.Tensor:
    """PatchCore's locally aware patch features: B x D x h x w on the shallower stage's grid."""
    k = config.neighbourhood
    pooled = [F.avg_pool2d(s, k, stride=1, padding=k // 2, count_include_pad=False) if k > 1 else s for s in stages]
    size = pooled[0].shape[-2:]
    pooled = [pooled[0]] + [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pooled[1:]]
    pooled = [_pool_channels(p, config.embed_dim) for p in pooled]
    return _pool_channels(torch.cat(pooled, dim=1), config.embed_dim)


def input_size(image_shape: tuple[int, int], shorter_side: int, multiple: int = 32) -> tuple[int, int]:
    """Feature input (height, width): shorter side scaled to shorter_side, aspect kept, rounded."""
    height, width = image_shape
    scale = shorter_side / min(height, width)
    round_to = lambda v: max(multiple, int(round(v * scale / multiple)) * multiple)  # noqa: E731
    return round_to(height), round_to(width)


def to_input(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """H x W x 3 uint8 image -> 3 x h x w float32 in 0..1 at the feature input size."""
    height, width = size
    interpolation = cv2.INTER_AREA if height < image.shape[0] else cv2.INTER_LINEAR
    resized = cv2.resize(image, (width, height), interpolation=interpolation)
    return np.ascontiguousarray(resized.transpose(2, 0, 1), dtype=np.float32) / 255.0
