"""Training views of anomaly crops (docs/method.md stage 5): geometric changes hit image and mask alike,
photometric ones the image only.

Everything runs batched on tensors on the training device; random parameters come from a seeded
CPU `torch.Generator`, so views are reproducible (and identical on CPU and GPU up to rounding).
Geometry (random resized crop, h/v flips, 90-degree rotations) is one affine resampling per
view, applied with the same grid to image and mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from core.config import AugmentConfig
from core.mgvit.model import IMAGENET_MEAN, IMAGENET_STD


def stored_size(input_size: int, config: AugmentConfig = AugmentConfig()) -> int:
    """Side at which crops are kept before views are cut (input_size / crop_pct)."""
    return int(input_size / config.crop_pct)


def prepare_crops(
    crops: Sequence[np.ndarray], masks: Sequence[np.ndarray], side: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize crops (HxWx3 uint8) and masks (HxW, 0/255) to side x side; uint8 tensors [N,3,S,S], [N,1,S,S].

    Masks are area-averaged so that a small defect in a large crop stays visible as a fraction.
    """
    if len(crops) != len(masks):
        raise ValueError(f"{len(crops)} crops but {len(masks)} masks")
    images = np.empty((len(crops), side, side, 3), np.uint8)
    mask_out = np.empty((len(crops), side, side), np.uint8)
    for index, (crop, mask) in enumerate(zip(crops, masks)):
        crop = np.asarray(crop)
        if crop.ndim == 2:
            crop = np.repeat(crop[:, :, None], 3, axis=2)
        if crop.ndim != 3 or crop.shape[2] != 3 or crop.shape[0] == 0 or crop.shape[1] == 0:
            raise ValueError(f"crop {index}: expected an HxWx3 image, got shape {crop.shape}")
        mask = np.asarray(mask)
        if mask.ndim == 3:
            mask = mask[:, :, 0]
        if mask.ndim != 2 or mask.size == 0:
            raise ValueError(f"mask {index}: expected an HxW mask, got shape {mask.shape}")
        crop = crop.astype(np.uint8, copy=False)
        mask = ((mask > 0).astype(np.uint8) * 255) if mask.dtype != np.uint8 or mask.max() <= 1 else mask
        shrink = min(crop.shape[:2]) > side
        images[index] = cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        mask_out[index] = cv2.resize(mask, (side, side), interpolation=cv2.INTER_AREA)
    return (
        torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        torch.from_numpy(mask_out).unsqueeze(1).contiguous(),
    )


def _normalize(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std


def center_views(images: torch.Tensor, masks: torch.Tensor, input_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluation view: centre crop of input_size from stored uint8 tensors; normalized image, mask in 0..1."""
    side = images.shape[-1]
    top = (side - input_size) // 2
    images = images[..., top : top + input_size, top : top + input_size].float() / 255.0
    masks = masks[..., top : top + input_size, top : top + input_size].float() / 255.0
    return _normalize(images), masks


def _uniform(generator: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def _gray(images: torch.Tensor) -> torch.Tensor:
    r, g, b = images.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor.view(-1, 1, 1, 1) * a + (1 - factor.view(-1, 1, 1, 1)) * b).clamp(0, 1)


def _rotate_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Hue rotation as a rotation of the chroma plane in YIQ space (angle = 2 pi shift)."""
    to_yiq = images.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    from_yiq = torch.linalg.inv(to_yiq)
    yiq = torch.einsum("ij,bjhw->bihw", to_yiq, images)
    angle = 2 * math.pi * shift.to(images)
    cos, sin = angle.cos().view(-1, 1, 1), angle.sin().view(-1, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], dim=1)
    return torch.einsum("ij,bjhw->bihw", from_yiq, yiq).clamp(0, 1)


def _sharpen(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_sharpness: blend with a 3x3 smoothed image (borders kept), per-sample factor."""
    kernel = images.new_tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    channels = images.shape[1]
    smooth = F.conv2d(images, kernel.expand(channels, 1, 3, 3), groups=channels)
    degenerate = images.clone()
    degenerate[..., 1:-1, 1:-1] = smooth
    return _blend(images, degenerate, factor)


def _gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per sample (sigma 0 = unchanged)."""
    batch, channels, height, width = images.shape
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    sig = sigma.to(images).clamp_min(1e-3).view(-1, 1)
    kernel = torch.exp(-(offsets.view(1, -1) ** 2) / (2 * sig**2))
    kernel = kernel / kernel.sum(1, keepdim=True)  # B x K
    kernel = kernel.repeat_interleave(channels, dim=0)  # (B*C) x K
    flat = images.reshape(1, batch * channels, height, width)
    flat = F.pad(flat, (radius, radius, 0, 0), mode="reflect")
    flat = F.conv2d(flat, kernel.view(-1, 1, 1, 2 * radius + 1), groups=batch * channels)
    flat = F.pad(flat, (0, 0, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(-1, 1, 2 * radius + 1, 1), groups=batch * channels)
    return flat.view(batch, channels, height, width)


def augment_views(
    images: torch.Tensor,
    masks: torch.Tensor,
    input_size: int,
    generator: torch.Generator,
    config: AugmentConfig = AugmentConfig(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """One random view per sample: uint8 [B,3,S,S] and [B,1,S,S] -> normalized image [B,3,s,s], mask in 0..1."""
    batch = images.shape[0]
    device = images.device
    g = generator
    # geometry: output coords -> input coords = crop_box(flip(rot90(out)))
    area = _uniform(g, batch, *config.crop_scale)
    log_ratio = _uniform(g, batch, math.log(config.crop_ratio[0]), math.log(config.crop_ratio[1]))
    ratio = log_ratio.exp()
    half_w = (area * ratio).sqrt().clamp(max=1.0)
    half_h = (area / ratio).sqrt().clamp(max=1.0)
    centre_x = (2 * torch.rand(batch, generator=g, dtype=torch.float64) - 1) * (1 - half_w)
    centre_y = (2 * torch.rand(batch, generator=g, dtype=torch.float64) - 1) * (1 - half_h)
    flip_x = torch.where(torch.rand(batch, generator=g) < config.hflip_prob, -1.0, 1.0).double()
    flip_y = torch.where(torch.rand(batch, generator=g) < config.vflip_prob, -1.0, 1.0).double()
    quarter = torch.randint(0, 4 if config.rotate90 else 1, (batch,), generator=g).double() * (math.pi / 2)
    cos, sin = quarter.cos().round(), quarter.sin().round()
    theta = torch.zeros(batch, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = half_w * flip_x * cos
    theta[:, 0, 1] = -half_w * flip_x * sin
    theta[:, 1, 0] = half_h * flip_y * sin
    theta[:, 1, 1] = half_h * flip_y * cos
    theta[:, 0, 2] = centre_x
    theta[:, 1, 2] = centre_y
    # photometric parameters (drawn in a fixed order so the stream stays reproducible)
    jitter = torch.rand(batch, generator=g) < config.jitter_prob
    brightness = _uniform(g, batch, 1 - config.brightness, 1 + config.brightness)
    contrast = _uniform(g, batch, 1 - config.contrast, 1 + config.contrast)
    saturation = _uniform(g, batch, 1 - config.saturation, 1 + config.saturation)
    hue = _uniform(g, batch, -config.hue, config.hue)
    sharpen = torch.rand(batch, generator=g) < config.sharpness_prob
    blur = torch.rand(batch, generator=g) < config.blur_prob
    sigma = _uniform(g, batch, *config.blur_sigma)
    posterize = torch.rand(batch, generator=g) < config.posterize_prob

    grid = F.affine_grid(theta.float().to(device), [batch, 1, input_size, input_size], align_corners=False)
    stacked = torch.cat([images.float(), masks.float()], dim=1) / 255.0
    warped = F.grid_sample(stacked, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    out, out_mask = warped[:, :3].clamp(0, 1), warped[:, 3:].clamp(0, 1)

    one = torch.ones(batch, dtype=torch.float64)
    out = (out * torch.where(jitter, brightness, one).to(out).view(-1, 1, 1, 1)).clamp(0, 1)
    mean = _gray(out).mean(dim=(1, 2, 3), keepdim=True)
    out = _blend(out, mean.expand_as(out), torch.where(jitter, contrast, one).to(out))
    out = _blend(out, _gray(out).expand_as(out), torch.where(jitter, saturation, one).to(out))
    if bool(jitter.any()):
        out = _rotate_hue(out, torch.where(jitter, hue, 0 * one).to(out))
    if bool(sharpen.any()):
        factor = torch.where(sharpen, torch.full_like(one, config.sharpness_factor), one).to(out)
        out = _sharpen(out, factor)
    if bool(blur.any()):
        blurred = _gaussian_blur(out, sigma.to(out))
        out = torch.where(blur.to(device).view(-1, 1, 1, 1), blurred, out)
    if bool(posterize.any()):
        levels = 2 ** (8 - config.posterize_bits)
        posterized = torch.floor(out * 255.0 / levels) * levels / 255.0
        out = torch.where(posterize.to(device).view(-1, 1, 1, 1), posterized, out)
    return _normalize(out), out_mask
