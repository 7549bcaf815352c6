"""Mask-guided ViT (MGViT, docs/method.md stage 4) built on timm's VisionTransformer.

In the last L_m blocks the [CLS] query may attend only to itself, the other prefix tokens and
the patches whose pooled crop mask is >= 0.5; patch queries keep their full context. The mask
is handed to timm's `Block(x, attn_mask=...)`, which passes it to scaled_dot_product_attention
(or to timm's explicit softmax path when `fused_attn` is off).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from core.config import SCRATCH_BACKBONES, MGViTConfig, is_scratch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsError(ValueError):
    """Weights that cannot be obtained or do not fit the backbone; the message says why."""


class MGViT(nn.Module):
    """A timm VisionTransformer whose last `masked_blocks` blocks use mask-guided [CLS] attention."""

    def __init__(self, vit: nn.Module, masked_blocks: int, mask_threshold: float = 0.5) -> None:
        super().__init__()
        if getattr(vit, "cls_token", None) is None:
            raise WeightsError("mask-guided attention needs a ViT with a [CLS] token (class_token=True)")
        self.vit = vit
        depth = len(vit.blocks)
        self.masked_blocks = max(0, min(int(masked_blocks), depth))
        self.first_masked = depth - self.masked_blocks
        self.mask_threshold = float(mask_threshold)
        self.num_prefix_tokens = int(vit.num_prefix_tokens)
        self.embed_dim = int(vit.embed_dim)
        self.grid_size = tuple(vit.patch_embed.grid_size)
        self.input_size = int(vit.patch_embed.img_size[0])

    def set_fused_attention(self, fused: bool) -> None:
        """Switch every block between SDPA (fused) and timm's explicit softmax attention."""
        for block in self.vit.blocks:
            block.attn.fused_attn = bool(fused)

    def attention_mask(self, masks: torch.Tensor) -> torch.Tensor:
        """Boolean (B, 1, N, N) mask, True = may attend; only the [CLS] row hides background patches."""
        pooled = F.adaptive_avg_pool2d(masks.float(), self.grid_size).flatten(1)  # B x P
        keep = pooled >= self.mask_threshold
        batch, patches = keep.shape
        tokens = self.num_prefix_tokens + patches
        allowed = torch.ones(batch, tokens, tokens, dtype=torch.bool, device=masks.device)
        allowed[:, 0, self.num_prefix_tokens:] = keep
        return allowed.unsqueeze(1)

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None, guided: bool = True) -> torch.Tensor:
        """Images [B,3,H,W] normalized, masks [B,1,H,W] in 0..1 -> final-norm [CLS] feature [B, D]."""
        vit = self.vit
        x = vit.patch_embed(images)
        x = vit._pos_embed(x)
        x = vit.patch_drop(x)
        x = vit.norm_pre(x)
        attn_mask = None
        if guided and masks is not None and self.masked_blocks > 0:
            attn_mask = self.attention_mask(masks)
        for index, block in enumerate(vit.blocks):
            x = block(x, attn_mask=attn_mask if index >= self.first_masked else None)
        x = vit.norm(x)
        return x[:, 0]


@contextlib.contextmanager
def _offline_unless_hub_reachable() -> Iterator[None]:
    """Use only the local HF cache when the hub's host does not resolve, instead of retrying for a minute."""
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
        reachable = True
    except OSError:
        reachable = False
    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = previous or not reachable
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def _create_vit(config: MGViTConfig) -> nn.Module:
    """The plain timm VisionTransformer (no classifier) named by the config."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    if config.backbone in SCRATCH_BACKBONES:
        spec = dict(SCRATCH_BACKBONES[config.backbone])
        size = config.input_size or spec.pop("input_size")
        spec.pop("input_size", None)
        return VisionTransformer(img_size=size, num_classes=0, global_pool="token", **spec)
    kwargs: dict = {"num_classes": 0}
    if config.input_size:
        kwargs["img_size"] = config.input_size
    if config.pretrained and config.weights is None:
        try:
            with _offline_unless_hub_reachable():
                vit = timm.create_model(config.backbone, pretrained=True, **kwargs)
        except Exception as error:  # offline, unknown tag, missing hub package: all the same to the user
            raise WeightsError(
                f"could not obtain pretrained weights for '{config.backbone}' ({type(error).__name__}: {error}); "
                "this machine may be offline: pass a local weight file with --weights, "
                f"or use the scratch default backbone '{MGViTConfig.backbone}'"
            ) from error
    else:
        try:
            vit = timm.create_model(config.backbone, pretrained=False, **kwargs)
        except RuntimeError as error:
            raise WeightsError(f"unknown backbone '{config.backbone}': {error}") from error
    if not isinstance(vit, VisionTransformer):
        raise WeightsError(f"backbone '{config.backbone}' is not a timm VisionTransformer ({type(vit).__name__})")
    return vit


def reference_masked_blocks(depth: int) -> int:
    """L_m at the reference's proportion: its ViT-B masks the last 9 of 12 blocks, so 3/4 of any depth.

    Keeping the first quarter unguided matters on shallow models: masking every block of the
    4-block scratch ViT cost 0.05 NMI on the demo set (0.221 vs 0.268 over 3 seeds).
    """
    return (int(depth) * 9) // 12


def build_mgvit(config: MGViTConfig, device: torch.device | str = "cpu") -> MGViT:
    """Build the MGViT, load its weights and freeze the blocks before grad_from_block."""
    vit = _create_vit(config)
    masked = config.masked_blocks if config.masked_blocks is not None else reference_masked_blocks(len(vit.blocks))
    model = MGViT(vit, masked, config.mask_threshold)
    if config.weights is not None:
        load_weights(model, config.weights)
    freeze_blocks(model, 0 if is_scratch(config) else config.grad_from_block)
    return model.to(device)


def freeze_blocks(model: MGViT, grad_from_block: int) -> None:
    """Train only blocks >= grad_from_block (and the final norm when every block trains)."""
    vit = model.vit
    grad_from_block = max(0, min(int(grad_from_block), len(vit.blocks)))
    for name, parameter in vit.named_parameters():
        if name.startswith("blocks."):
            parameter.requires_grad = int(name.split(".")[1]) >= grad_from_block
        else:
            parameter.requires_grad = grad_from_block == 0


def _read_state_dict(path: Path) -> dict:
    """Tensor dict from a .safetensors or torch file; raises WeightsError naming the file."""
    if not path.is_file():
        raise WeightsError(f"weight file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightsError(f"cannot read weight file {path}: {type(error).__name__}: {error}") from error
    if not isinstance(loaded, dict):
        raise WeightsError(f"weight file {path} does not hold a state dict (found {type(loaded).__name__})")
    return loaded


def _unwrap_state_dict(state: dict) -> dict[str, torch.Tensor]:
    """Reduce timm / DINO checkpoint layouts to plain ViT keys (blocks.0.attn.qkv.weight, ...)."""
    for key in ("teacher", "model", "state_dict", "student"):  # DINO full checkpoints: the teacher is the one to use
        if key in state and isinstance(state[key], dict):
            state = state[key]
            break
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not torch.is_tensor(value):
            continue
        for prefix in ("module.", "backbone.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        if key.startswith("head."):
            continue  # DINO projection head / classifier: not part of the backbone
        out[key] = value
    return out


def load_weights(model: MGViT, path: Path | str) -> None:
    """Load a local ViT weight file (timm layout or official DINO layout) into the backbone."""
    from timm.layers import resample_abs_pos_embed

    path = Path(path)
    state = _unwrap_state_dict(_read_state_dict(path))
    vit = model.vit
    own = vit.state_dict()
    if "pos_embed" in state and "pos_embed" in own and state["pos_embed"].shape != own["pos_embed"].shape:
        prefix = 0 if getattr(vit, "no_embed_class", False) else model.num_prefix_tokens
        old_patches = state["pos_embed"].shape[1] - prefix
        side = int(round(old_patches**0.5))
        if side * side != old_patches:
            raise WeightsError(f"{path}: pos_embed of shape {tuple(state['pos_embed'].shape)} does not fit this ViT")
        state["pos_embed"] = resample_abs_pos_embed(
            state["pos_embed"], new_size=list(model.grid_size), old_size=[side, side], num_prefix_tokens=prefix
        )
    state = {k: v for k, v in state.items() if k in own}
    missing = [k for k in own if k not in state]
    if not state or len(missing) > 0:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise WeightsError(
            f"{path} does not fit backbone ({len(missing)} of {len(own)} tensors missing: {shown}); "
            "is it a ViT of the same size as --backbone?"
        )
    wrong = [k for k, v in state.items() if v.shape != own[k].shape]
    if wrong:
        k = wrong[0]
        raise WeightsError(
            f"{path}: tensor '{k}' has shape {tuple(state[k].shape)}, the backbone needs {tuple(own[k].shape)}; "
            "is it a ViT of the same size as --backbone?"
        )
    vit.load_state_dict(state, strict=True)
