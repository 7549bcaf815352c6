"""Mask-guided ViT: equivalence with plain timm, exact zero attention on background, weight loading."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from core.config import MGViTConfig
from core.mgvit.model import MGViT, WeightsError, build_mgvit, load_weights

MICRO = MGViTConfig(backbone="vit_micro_scratch")  # 32 px, patch 8 -> 4x4 grid, dim 32, depth 2


def _inputs(batch: int = 3, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, size, size, generator=generator)
    masks = torch.zeros(batch, 1, size, size)
    masks[0, :, 0:16, 0:16] = 1.0  # top-left 2x2 patches
    masks[1, :, 8:32, 4:28] = 1.0  # partial patches: some pooled values 0.5, some below
    # sample 2 keeps an empty mask: [CLS] sees only the prefix tokens
    return images, masks


def _capture_attention(model: MGViT) -> list[torch.Tensor]:
    """Attention probabilities of every block, read where timm's explicit path applies dropout."""
    model.set_fused_attention(False)
    captured: list[torch.Tensor] = []
    for block in model.vit.blocks:
        block.attn.attn_drop.register_forward_hook(lambda module, args, output: captured.append(output.detach().clone()))
    return captured


def test_all_ones_mask_equals_plain_timm_model() -> None:
    torch.manual_seed(0)
    model = build_mgvit(MICRO).eval()
    images, _ = _inputs()
    ones = torch.ones(images.shape[0], 1, 32, 32)
    with torch.no_grad():
        guided = model(images, ones)
        plain = model.vit(images)  # timm forward: final norm, [CLS] pooling, no head
    assert guided.shape == (3, 32)
    assert torch.allclose(guided, plain, atol=1e-5)


def test_timm_named_model_with_registers_builds_and_matches() -> None:
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0, reg_tokens=2)
    model = MGViT(vit, masked_blocks=2).eval()
    images, masks = _inputs()
    with torch.no_grad():
        assert torch.allclose(model(images, torch.ones_like(masks)), vit(images), atol=1e-5)
        out = model(images, masks)
    assert torch.isfinite(out).all()
    named = build_mgvit(MGViTConfig(backbone="vit_tiny_patch16_224", input_size=32, masked_blocks=9))
    assert named.masked_blocks == 9 and named.first_masked == 3 and named.grid_size == (2, 2)
    # By default L_m keeps the reference's proportion: 9 of 12 blocks, 3 of the 4-block scratch ViT.
    assert build_mgvit(MGViTConfig(backbone="vit_tiny_patch16_224", input_size=32)).masked_blocks == 9
    scratch = build_mgvit(MGViTConfig())
    assert len(scratch.vit.blocks) == 4 and scratch.masked_blocks == 3 and scratch.first_masked == 1


def test_cls_attention_on_background_patches_is_exactly_zero() -> None:
    torch.manual_seed(0)
    model = build_mgvit(MICRO).eval()
    images, masks = _inputs()
    captured = _capture_attention(model)
    with torch.no_grad():
        model(images, masks, guided=True)
    guided_probs = list(captured)
    captured.clear()
    with torch.no_grad():
        model(images, masks, guided=False)
    plain_probs = list(captured)

    pooled = torch.nn.functional.adaptive_avg_pool2d(masks, (4, 4)).flatten(1)
    keep = pooled >= 0.5
    assert keep[0].sum() == 4 and keep[1].any() and not keep[2].any()
    first = guided_probs[model.first_masked]  # B x heads x N x N
    cls_on_patches = first[:, :, 0, 1:]
    background = (~keep).unsqueeze(1).expand_as(cls_on_patches)
    assert (cls_on_patches[background] == 0).all()  # exactly zero, not just small
    assert (cls_on_patches[~background] > 0).all()
    assert torch.allclose(first[:, :, 0].sum(-1), torch.ones(3, 2))
    assert torch.equal(first[2, :, 0, 0], torch.ones(2))  # empty mask: [CLS] attends to itself only
    # patch rows keep their full context: identical to the unguided run in the first masked block
    assert torch.allclose(first[:, :, 1:], plain_probs[model.first_masked][:, :, 1:], atol=1e-6)
    for probs in guided_probs:
        assert torch.isfinite(probs).all()


def test_only_the_last_blocks_are_masked() -> None:
    torch.manual_seed(0)
    model = build_mgvit(MGViTConfig(backbone="vit_micro_scratch", masked_blocks=1)).eval()
    images, masks = _inputs()
    captured = _capture_attention(model)
    with torch.no_grad():
        model(images, masks)
    assert (captured[0][:, :, 0, 1:] > 0).all()  # block 0: unmasked
    assert (captured[1][2, :, 0, 1:] == 0).all()  # block 1: masked


def test_sdpa_and_explicit_attention_agree_and_empty_mask_is_finite() -> None:
    torch.manual_seed(0)
    model = build_mgvit(MICRO).eval()
    images, masks = _inputs()
    with torch.no_grad():
        fused = model(images, masks)
        model.set_fused_attention(False)
        explicit = model(images, masks)
    assert torch.isfinite(fused).all()
    assert torch.allclose(fused, explicit, atol=1e-5)
    assert not torch.allclose(fused[0], model.vit(images)[0], atol=1e-3)  # the mask does change the feature


def _reference_and_state(tmp_path):
    torch.manual_seed(3)
    source = build_mgvit(MICRO).eval()
    return source, {k: v.clone() for k, v in source.vit.state_dict().items()}


def test_local_checkpoint_in_timm_layout_loads(tmp_path) -> None:
    source, state = _reference_and_state(tmp_path)
    path = tmp_path / "vit.pth"
    torch.save(state, path)
    torch.manual_seed(99)
    loaded = build_mgvit(MGViTConfig(backbone="vit_micro_scratch", weights=path)).eval()
    images, masks = _inputs()
    with torch.no_grad():
        assert torch.equal(loaded(images, masks), source(images, masks))


def test_local_checkpoint_in_dino_layouts_loads(tmp_path) -> None:
    from safetensors.torch import save_file

    source, state = _reference_and_state(tmp_path)
    images, masks = _inputs()
    with torch.no_grad():
        expected = source(images, masks)
    head = {"head.mlp.0.weight": torch.randn(8, 32), "head.last_layer.weight_g": torch.ones(4, 1)}
    full = {
        "teacher": {**{f"backbone.{k}": v for k, v in state.items()}, **head},
        "student": {**{f"module.backbone.{k}": v + 1 for k, v in state.items()}},
        "epoch": 100,
    }
    torch.save(full, tmp_path / "dino_full_checkpoint.pth")
    save_file({f"module.{k}": v.contiguous() for k, v in state.items()}, str(tmp_path / "dino.safetensors"))
    for name in ("dino_full_checkpoint.pth", "dino.safetensors"):
        torch.manual_seed(7)
        model = build_mgvit(MGViTConfig(backbone="vit_micro_scratch", weights=tmp_path / name)).eval()
        with torch.no_grad():
            assert torch.equal(model(images, masks), expected), name  # the teacher, not the student


def test_weights_freeze_early_blocks_and_scratch_trains_everything(tmp_path) -> None:
    _, state = _reference_and_state(tmp_path)
    torch.save(state, tmp_path / "vit.pth")
    model = build_mgvit(MGViTConfig(backbone="vit_micro_scratch", weights=tmp_path / "vit.pth", grad_from_block=1))
    trainable = {n for n, p in model.vit.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("blocks.1.") for n in trainable)
    scratch = build_mgvit(MICRO)
    assert all(p.requires_grad for p in scratch.parameters())


def test_bad_weight_files_give_clear_errors(tmp_path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        build_mgvit(MGViTConfig(backbone="vit_micro_scratch", weights=tmp_path / "missing.pth"))
    torch.save({"foo": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="other.pth"):
        build_mgvit(MGViTConfig(backbone="vit_micro_scratch", weights=tmp_path / "other.pth"))
    wide = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=2, num_classes=0)
    torch.save(wide.state_dict(), tmp_path / "wide.pth")
    with pytest.raises(WeightsError, match="shape"):
        load_weights(build_mgvit(MICRO), tmp_path / "wide.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pth"):
        build_mgvit(MGViTConfig(backbone="vit_micro_scratch", weights=tmp_path / "junk.pth"))


def test_pretrained_name_offline_says_what_to_do() -> None:
    with pytest.raises(WeightsError, match="--weights"):
        build_mgvit(MGViTConfig(backbone="vit_tiny_patch16_224.augreg_in21k", pretrained=True, input_size=32))
