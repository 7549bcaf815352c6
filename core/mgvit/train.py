"""Teacher-student training of the discovery model (docs/method.md stage 5).

`train` runs the whole training (model, optimizer, resume, epochs, per-epoch checkpoint);
`train_one_epoch` runs one epoch of steps; `train_step` is one step (two augmented views,
forward, every loss term, backward, optimizer step), which benchmarks/train_speed.py times.
One regime covers all uses: TrainingData.labels is -1 for every unlabeled crop, a base-class
index otherwise. The model is in core.mgvit.heads, checkpoints in core.mgvit.checkpoint, DDP helpers in
core.mgvit.distributed. Same data, configs and seed give the same weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.mgvit.augment import augment_views, prepare_crops, stored_size
from core.mgvit.checkpoint import model_payload, restore_training, write_checkpoint
from core.config import AugmentConfig, MGViTConfig, TrainConfig, is_scratch
from core.grouping.spectral import LABELED_NORMAL
from core.mgvit.distributed import all_reduce_mean, world, wrap_for_training
from core.mgvit.heads import DiscoveryModel, build_model
from core.mgvit.losses import LossWeights, discovery_loss, teacher_temperature

__all__ = ["EpochResult", "TrainLoop", "TrainProgress", "TrainResult", "TrainingData", "resolve_optimizer", "train",
           "train_one_epoch", "train_step"]


@dataclass
class TrainingData:
    """Crops to train on. labels: -1 = unlabeled, LABELED_NORMAL = labeled normal (the normal /
    false-detection slot: its teacher target is that slot), else an index into base_classes."""

    crops: list[np.ndarray]  # HxWx3 uint8
    masks: list[np.ndarray]  # HxW uint8 0/255
    scores: np.ndarray  # float32 anomaly score per crop, 0..1
    labels: np.ndarray  # int64, -1 = unlabeled
    base_classes: list[str] = field(default_factory=list)

    def validate(self) -> None:
        n = len(self.crops)
        if n == 0:
            raise ValueError("no crops to train on")
        if len(self.masks) != n or len(self.scores) != n or len(self.labels) != n:
            raise ValueError(
                f"training data sizes differ: {n} crops, {len(self.masks)} masks, "
                f"{len(self.scores)} scores, {len(self.labels)} labels"
            )
        labels = np.asarray(self.labels)
        if labels.size and (labels.max() >= len(self.base_classes) or labels.min() < LABELED_NORMAL):
            raise ValueError(f"labels must be -1, {LABELED_NORMAL} (normal) or in 0..{len(self.base_classes) - 1} "
                             f"(base classes {self.base_classes})")


@dataclass
class TrainProgress:
    """Reported after every step (and once more at the end of each epoch with epoch_done=True)."""

    epoch: int  # 0-based epoch
    epochs: int
    step: int  # 1-based step within the epoch
    steps_per_epoch: int
    loss: float
    losses: dict[str, float]
    lr: float
    elapsed_s: float
    epoch_done: bool = False  # True on the end-of-epoch report, whose losses are epoch means


@dataclass
class TrainResult:
    model: DiscoveryModel
    history: list[dict[str, float]]  # per-epoch means of the loss terms (+ lr, teacher_temp, seconds)
    cancelled: bool
    epochs_done: int
    model_config: MGViTConfig  # the settings it was trained with (written into its checkpoint)
    train_config: TrainConfig


# ---------------------------------------------------------------- optimizer, schedule, sample order


def _param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, parameter in module.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or parameter.ndim <= 1 else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def resolve_optimizer(config: TrainConfig, scratch: bool) -> tuple[str, float, float | None]:
    """(optimizer, start lr, gradient clip). "auto": the reference SGD when the backbone has weights;
    AdamW with clipping for a ViT from scratch, whose tiny initial [CLS] norm makes the final
    LayerNorm amplify gradients so that SGD at lr 0.1 collapses every feature onto one point."""
    name = config.optimizer
    if name == "auto":
        name = "adamw" if scratch else "sgd"
        clip = config.grad_clip if config.grad_clip is not None else (1.0 if scratch else None)
    elif name in ("sgd", "adamw"):
        clip = config.grad_clip
    else:
        raise ValueError(f"unknown optimizer '{config.optimizer}' (sgd, adamw or auto)")
    return name, (config.lr if name == "sgd" else config.adamw_lr), clip


def _optimizer(model: nn.Module, config: TrainConfig, scratch: bool) -> tuple[torch.optim.Optimizer, float, float | None]:
    """(the optimizer resolve_optimizer names, its start learning rate, the gradient clip)."""
    name, start_lr, grad_clip = resolve_optimizer(config, scratch)
    if name == "sgd":
        return (torch.optim.SGD(_param_groups(model, config.weight_decay), lr=start_lr, momentum=config.momentum),
                start_lr, grad_clip)
    return torch.optim.AdamW(_param_groups(model, config.adamw_weight_decay), lr=start_lr), start_lr, grad_clip


def _lr_at(step: int, total_steps: int, start_lr: float, floor_fraction: float) -> float:
    floor = start_lr * floor_fraction
    progress = min(1.0, step / max(1, total_steps))
    return floor + 0.5 * (start_lr - floor) * (1 + math.cos(math.pi * progress))


def _epoch_order(labels: np.ndarray, epoch: int, seed: int) -> torch.Tensor:
    """Sample order of one epoch: a permutation, or (labeled and unlabeled both present) a weighted
    draw with replacement in which both kinds are equally likely."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7_919 + 17)
    n = len(labels)
    labeled = torch.from_numpy(np.asarray(labels) >= 0)
    n_labeled = int(labeled.sum())
    if 0 < n_labeled < n:
        weights = torch.where(labeled, 1.0, n_labeled / (n - n_labeled)).double()
        return torch.multinomial(weights, n, replacement=True, generator=generator)
    return torch.randperm(n, generator=generator)


def _batches(order: torch.Tensor, batch_size: int, rank: int, world_size: int) -> list[torch.Tensor]:
    n = len(order)
    if n <= batch_size * world_size:
        size = max(1, n // world_size)
        batches = [order[: size * world_size]]
    else:
        size = batch_size
        usable = (n // (batch_size * world_size)) * batch_size * world_size  # drop the ragged tail
        batches = list(order[:usable].split(batch_size * world_size))
    return [batch[rank::world_size] for batch in batches]


# ---------------------------------------------------------------- one step, one epoch


def train_step(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    images_u8: torch.Tensor,
    masks_u8: torch.Tensor,
    labels: torch.Tensor,
    scores: torch.Tensor,
    *,
    n_base: int,
    input_size: int,
    teacher_temp: float,
    weights: LossWeights,
    generator: torch.Generator,
    augment: AugmentConfig = AugmentConfig(),
    guided: bool = True,
    use_amp: bool = False,
    grad_clip: float | None = None,
) -> tuple[dict[str, float], torch.Tensor]:
    """One training step on one batch of stored uint8 crops: -> (loss terms, per-head loss).

    Two augmented views per crop (drawn from `generator`), forward through `module` (the model or
    its DDP wrapper; bf16 autocast when use_amp), every loss term, backward, clipping, optimizer step.
    The learning rate is the caller's (set on the optimizer's groups).
    """
    device = images_u8.device
    views = [augment_views(images_u8, masks_u8, input_size, generator, augment) for _ in range(2)]
    images = torch.cat([views[0][0], views[1][0]])
    masks = torch.cat([views[0][1], views[1][1]])
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
        _, projections, logits = module(images, masks, guided=guided)
    loss, terms, per_head = discovery_loss(
        projections.float(), logits.float(), labels, scores, n_base, teacher_temp, weights
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
    optimizer.step()
    return terms, per_head


@dataclass
class TrainLoop:
    """What every epoch of one training shares: the model, its optimizer, the schedule, the data on the device."""

    model: DiscoveryModel
    module: nn.Module  # the model, or its DDP wrapper (core.mgvit.distributed.wrap_for_training)
    optimizer: torch.optim.Optimizer
    config: TrainConfig
    weights: LossWeights
    images_u8: torch.Tensor  # [N, 3, S, S] stored crops on the device
    masks_u8: torch.Tensor  # [N, 1, S, S]
    labels: torch.Tensor  # [N] int64 on the device
    labels_np: np.ndarray  # the same labels, for the sample order
    scores: torch.Tensor  # [N] float32 on the device
    seed: int
    start_lr: float
    grad_clip: float | None
    steps_per_epoch: int
    rank: int = 0
    world_size: int = 1
    use_amp: bool = False


@dataclass
class EpochResult:
    """What one epoch did: summed loss terms and per-head losses over its finished steps."""

    sums: dict[str, float]
    head_sum: torch.Tensor
    steps_done: int
    n_batches: int
    cancelled: bool
    lr: float | None  # learning rate of the last step (None when no step ran)
    teacher_temp: float


def train_one_epoch(
    loop: TrainLoop,
    epoch: int,
    *,
    progress: Callable[[TrainProgress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    started: float | None = None,
) -> EpochResult:
    """One epoch of steps in the seeded sample order; stops before a step when should_cancel() is true.

    progress gets a TrainProgress after every step (on rank 0); started: perf_counter of the training start.
    """
    config = loop.config
    started = time.perf_counter() if started is None else started
    loop.model.train()
    teacher_temp = teacher_temperature(
        epoch, config.epochs, config.teacher_temp_start, config.teacher_temp_end, config.teacher_warmup_epochs
    )
    view_generator = torch.Generator().manual_seed(loop.seed * 1_000_003 + epoch * 104_729 + 1 + loop.rank)
    batches = _batches(_epoch_order(loop.labels_np, epoch, loop.seed), config.batch_size, loop.rank, loop.world_size)
    total_steps = loop.steps_per_epoch * config.epochs
    input_size = loop.model.backbone.input_size
    device = loop.images_u8.device
    sums: dict[str, float] = {}
    head_sum = torch.zeros(config.n_heads)
    steps_done, cancelled, lr = 0, False, None
    for step, batch in enumerate(batches, start=1):
        if should_cancel is not None and should_cancel():
            cancelled = True
            break
        lr = _lr_at(epoch * loop.steps_per_epoch + step - 1, total_steps, loop.start_lr, config.lr_floor)
        for group in loop.optimizer.param_groups:
            group["lr"] = lr
        batch = batch.to(device)
        terms, per_head = train_step(
            loop.module, loop.optimizer, loop.images_u8[batch], loop.masks_u8[batch], loop.labels[batch],
            loop.scores[batch], n_base=loop.model.n_base, input_size=input_size, teacher_temp=teacher_temp,
            weights=loop.weights, generator=view_generator, augment=config.augment, guided=config.guided,
            use_amp=loop.use_amp, grad_clip=loop.grad_clip,
        )
        steps_done = step
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + value
        head_sum += per_head
        if progress is not None and loop.rank == 0:
            progress(TrainProgress(epoch, config.epochs, step, len(batches), terms["total"], terms, lr,
                                   time.perf_counter() - started))
    return EpochResult(sums, head_sum, steps_done, len(batches), cancelled, lr, teacher_temp)


# ---------------------------------------------------------------- the whole training


def train(
    data: TrainingData,
    n_novel: int,
    model_config: MGViTConfig,
    train_config: TrainConfig,
    device: torch.device | str,
    progress: Callable[[TrainProgress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    checkpoint_path: Path | None = None,
    resume: bool = False,
    seed: int = 0,
) -> TrainResult:
    """Train the discovery model on crops; n_novel includes the normal slot (first novel output).

    seed: seeds the initialization, the sample order and the augmentation. checkpoint_path: where
    each finished epoch is saved (rank 0; a failed save raises); resume: continue from it.
    """
    data.validate()
    if n_novel < 1:
        raise ValueError("n_novel must be >= 1 (the normal / false-detection slot counts)")
    device = torch.device(device)
    config = train_config
    rank, world_size = world()
    n_base = len(data.base_classes)
    model = build_model(model_config, config, n_base, n_novel, data.base_classes, device, seed)
    images_u8, masks_u8 = prepare_crops(data.crops, data.masks, stored_size(model.backbone.input_size, config.augment))
    labels_np = np.asarray(data.labels, dtype=np.int64)
    scores_np = np.asarray(data.scores, dtype=np.float32).copy()
    normal = labels_np == LABELED_NORMAL
    if normal.any():  # labeled normal: pseudo-label correction at full weight (w = offset - score = 1)
        scores_np[normal] = config.plc_offset - 1.0 if config.plc else 0.0
        labels_np = np.where(normal, -1, labels_np)

    optimizer, start_lr, grad_clip = _optimizer(model, config, is_scratch(model_config))
    weights = LossWeights(
        sup_weight=config.sup_weight, memax_weight=config.memax_weight, student_temp=config.student_temp,
        unsup_con_temp=config.unsup_con_temp, sup_con_temp=config.sup_con_temp,
        plc_offset=config.plc_offset if config.plc else None,
    )
    history: list[dict[str, float]] = []
    start_epoch = 0
    if resume and checkpoint_path is not None:
        restored = restore_training(Path(checkpoint_path), model, optimizer)
        if restored is not None:
            start_epoch, history = restored

    loop = TrainLoop(
        model=model, module=wrap_for_training(model, device, world_size), optimizer=optimizer, config=config,
        weights=weights, images_u8=images_u8.to(device), masks_u8=masks_u8.to(device),
        labels=torch.from_numpy(labels_np).to(device), labels_np=labels_np,
        scores=torch.from_numpy(scores_np).to(device), seed=seed,
        start_lr=start_lr, grad_clip=grad_clip,
        steps_per_epoch=len(_batches(_epoch_order(labels_np, 0, seed), config.batch_size, rank, world_size)),
        rank=rank, world_size=world_size, use_amp=config.amp_bf16 and device.type == "cuda",
    )
    started = time.perf_counter()
    cancelled = False
    for epoch in range(start_epoch, config.epochs):
        done = train_one_epoch(loop, epoch, progress=progress, should_cancel=should_cancel, started=started)
        if done.steps_done > 0:
            head_losses = all_reduce_mean(done.head_sum / done.steps_done, device, world_size)
            if bool((head_losses != 0).any()):
                model.best_head = int(torch.argmin(head_losses))
        if done.cancelled:
            cancelled = True
            break
        means = {key: value / max(1, done.steps_done) for key, value in done.sums.items()}
        means.update(lr=done.lr, teacher_temp=done.teacher_temp, seconds=time.perf_counter() - started)
        history.append(means)
        if progress is not None and rank == 0:
            progress(TrainProgress(epoch, config.epochs, done.steps_done, done.n_batches,
                                   means.get("total", float("nan")), means, done.lr, time.perf_counter() - started,
                                   epoch_done=True))
        if checkpoint_path is not None and rank == 0:
            payload = model_payload(model, model_config, config)
            payload["train_state"] = {"epoch": epoch + 1, "optimizer": optimizer.state_dict(), "history": history}
            write_checkpoint(Path(checkpoint_path), payload)
    model.eval()
    return TrainResult(model=model, history=history, cancelled=cancelled, epochs_done=len(history),
                       model_config=model_config, train_config=config)
