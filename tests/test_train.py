"""Training loop on a tiny ViT and a trivially separable toy set: determinism, learning, cancel, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.mgvit.checkpoint import load_checkpoint, save_checkpoint
from core.config import MGViTConfig, TrainConfig
from core.mgvit.inference import infer
from core.mgvit.train import TrainingData, TrainProgress, train

MODEL = MGViTConfig(backbone="vit_micro_scratch")  # 32 px, patch 8, dim 32, depth 2
TINY = TrainConfig(epochs=1, batch_size=8, n_heads=2, proj_hidden=64, proj_out=32)


def toy_data(n: int = 24, labeled: int = 0) -> TrainingData:
    """Two defect kinds: a red square and a blue horizontal bar on grey, with their masks."""
    rng = np.random.default_rng(0)
    crops, masks = [], []
    for index in range(n):
        crop = np.full((40, 40, 3), 110, np.uint8) + rng.integers(0, 20, (40, 40, 3), dtype=np.uint8)
        mask = np.zeros((40, 40), np.uint8)
        if index % 2:
            crop[10:30, 10:30] = (230, 30, 30)
            mask[10:30, 10:30] = 255
        else:
            crop[16:24, 4:36] = (30, 30, 230)
            mask[16:24, 4:36] = 255
        crops.append(crop)
        masks.append(mask)
    labels = np.full(n, -1, np.int64)
    labels[:labeled] = np.arange(labeled) % 2
    base = ["bar", "square"] if labeled else []
    return TrainingData(crops, masks, np.full(n, 0.9, np.float32), labels, base)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_gives_identical_weights_and_another_seed_does_not() -> None:
    data = toy_data()
    first = train(data, 3, MODEL, TINY, "cpu")
    second = train(data, 3, MODEL, TINY, "cpu")
    other = train(data, 3, MODEL, TINY, "cpu", seed=1)
    assert _same(_weights(first.model), _weights(second.model))
    assert not _same(_weights(first.model), _weights(other.model))
    assert first.epochs_done == 1 and not first.cancelled
    assert np.isfinite(first.history[0]["total"])


@pytest.mark.slow
def test_learns_toy_classes_and_loss_decreases() -> None:
    data = toy_data()
    config = TrainConfig(**{**TINY.__dict__, "epochs": 8})
    reports: list[TrainProgress] = []
    result = train(data, 3, MODEL, config, "cpu", progress=reports.append)
    totals = [epoch["total"] for epoch in result.history]
    assert all(np.isfinite(totals)) and len(totals) == 8
    assert totals[-1] < totals[0]
    steps = [r for r in reports if not r.epoch_done]
    assert len(steps) == 8 * 3 and steps[0].steps_per_epoch == 3
    assert sum(r.epoch_done for r in reports) == 8 and steps[-1].lr < steps[0].lr
    out = infer(result.model, data.crops, data.masks, "cpu")
    predicted = out.logits.argmax(1)
    squares, bars = predicted[1::2], predicted[0::2]
    square_class = np.bincount(squares).argmax()
    bar_class = np.bincount(bars).argmax()
    assert square_class != bar_class
    assert (squares == square_class).mean() >= 0.9 and (bars == bar_class).mean() >= 0.9


def test_infer_shapes_normalized_features_and_checkpoint_roundtrip(tmp_path) -> None:
    data = toy_data(labeled=6)
    result = train(data, 3, MODEL, TINY, "cpu")
    assert {"cls_l", "rep_l", "cls_u"} <= set(result.history[0])  # labeled and unlabeled terms
    model = result.model
    assert (model.n_base, model.n_novel, model.base_classes) == (2, 3, ["bar", "square"])
    out = infer(model, data.crops[:5], data.masks[:5], "cpu", batch_size=2)
    assert out.features.shape == (5, 32) and out.features.dtype == np.float32
    assert np.allclose(np.linalg.norm(out.features, axis=1), 1.0, atol=1e-5)
    assert out.logits.shape == (5, 5) and np.abs(out.logits).max() <= 1.0 + 1e-5  # cosine logits
    unguided = infer(model, data.crops[:5], data.masks[:5], "cpu", guided=False)
    assert not np.allclose(unguided.features, out.features)
    path = tmp_path / "model.pt"
    save_checkpoint(path, result, {"k": 2, "classes": ["a", "b"]})
    loaded, extra = load_checkpoint(path, "cpu")
    assert extra == {"k": 2, "classes": ["a", "b"]} and loaded.best_head == model.best_head
    again = infer(loaded, data.crops[:5], data.masks[:5], "cpu")
    assert np.allclose(again.features, out.features, atol=1e-6) and np.allclose(again.logits, out.logits, atol=1e-6)
    empty = infer(model, [], [], "cpu")
    assert empty.features.shape == (0, 32) and empty.logits.shape == (0, 5)


def test_cancellation_stops_early_and_resume_matches_an_uninterrupted_run(tmp_path) -> None:
    data = toy_data()
    config = TrainConfig(**{**TINY.__dict__, "epochs": 3})
    full = train(data, 3, MODEL, config, "cpu")

    calls = {"n": 0}

    def cancel_in_third_epoch() -> bool:
        calls["n"] += 1
        return calls["n"] > 7  # 3 steps per epoch: stops at step 2 of epoch 3

    path = tmp_path / "resume.pt"
    partial = train(data, 3, MODEL, config, "cpu", should_cancel=cancel_in_third_epoch, checkpoint_path=path)
    assert partial.cancelled and partial.epochs_done == 2 and path.is_file()
    seen: list[int] = []
    resumed = train(data, 3, MODEL, config, "cpu", progress=lambda p: seen.append(p.epoch), checkpoint_path=path, resume=True)
    assert not resumed.cancelled and resumed.epochs_done == 3 and set(seen) == {2}
    assert _same(_weights(resumed.model), _weights(full.model))
    loaded, _ = load_checkpoint(path)  # the per-epoch checkpoint is a loadable model too
    assert loaded.n_novel == 3


def test_bad_training_data_is_rejected() -> None:
    data = toy_data()
    with pytest.raises(ValueError, match="sizes differ"):
        train(TrainingData(data.crops, data.masks[:3], data.scores, data.labels, []), 3, MODEL, TINY, "cpu")
    with pytest.raises(ValueError, match="labels"):
        train(TrainingData(data.crops, data.masks, data.scores, np.zeros(24, np.int64), []), 3, MODEL, TINY, "cpu")
    with pytest.raises(ValueError, match="no crops"):
        train(TrainingData([], [], np.zeros(0, np.float32), np.zeros(0, np.int64), []), 3, MODEL, TINY, "cpu")


# ---------------------------------------------------------------- augmentation

from core.mgvit.augment import augment_views, center_views, prepare_crops  # noqa: E402
from core.config import AugmentConfig  # noqa: E402

GEOMETRY_ONLY = AugmentConfig(jitter_prob=0.0, sharpness_prob=0.0, blur_prob=0.0, posterize_prob=0.0)


def _stored(n: int = 6, side: int = 36) -> tuple[torch.Tensor, torch.Tensor]:
    data = toy_data(n)
    return prepare_crops(data.crops, data.masks, side)


def test_views_are_reproducible_with_a_seeded_generator() -> None:
    images, masks = _stored()
    first = augment_views(images, masks, 32, torch.Generator().manual_seed(5))
    second = augment_views(images, masks, 32, torch.Generator().manual_seed(5))
    other = augment_views(images, masks, 32, torch.Generator().manual_seed(6))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], other[0])
    assert first[0].shape == (6, 3, 32, 32) and first[1].shape == (6, 1, 32, 32)
    assert 0 <= float(first[1].min()) and float(first[1].max()) <= 1


def test_geometry_moves_image_and_mask_alike_photometry_only_the_image() -> None:
    _, masks = _stored()
    images = masks.expand(-1, 3, -1, -1).contiguous()  # an image that IS its mask
    view, view_mask = augment_views(images, masks, 32, torch.Generator().manual_seed(0), GEOMETRY_ONLY)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(view * std + mean, view_mask.expand(-1, 3, -1, -1), atol=1e-5)
    _, photometric_mask = augment_views(images, masks, 32, torch.Generator().manual_seed(0), AugmentConfig(
        jitter_prob=1.0, sharpness_prob=1.0, blur_prob=1.0, posterize_prob=1.0))
    assert torch.equal(photometric_mask, view_mask)  # same geometry, mask untouched by photometry


def test_rotations_and_flips_are_exact_without_rescaling() -> None:
    images, masks = _stored(4, side=32)
    config = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_prob=0.5, vflip_prob=0.5,
                           jitter_prob=0.0, sharpness_prob=0.0, blur_prob=0.0, posterize_prob=0.0)
    _, view_mask = augment_views(images, masks, 32, torch.Generator().manual_seed(3), config)
    source = masks.float() / 255
    for index in range(4):
        candidates = [torch.rot90(m, k, dims=(1, 2)) for k in range(4) for m in (source[index], source[index].flip(2))]
        assert any(torch.allclose(view_mask[index], c, atol=1e-5) for c in candidates)
    centre, centre_mask = center_views(images, masks, 32)
    assert torch.equal(centre_mask, source)
