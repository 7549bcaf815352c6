"""Teacher-student training of the discovery model (METHOD.md stage 5) and inference.

DiscoveryModel = MGViT backbone + projector MLP (contrastive learning) + n_heads cosine
classifiers on the L2-normalized [CLS] feature, each with n_base + n_novel outputs (base classes
first; the first novel output is the reserved normal / false-detection slot). One regime covers
all uses: TrainingData.labels is -1 for every unlabeled crop, a base-class index otherwise.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.augment import augment_views, prepare_crops, stored_size
from core.losses import LossWeights, discovery_loss, teacher_temperature
from core.config import AugmentConfig, MGViTConfig, TrainConfig, is_scratch
from core.mgvit import MGViT, build_mgvit

CHECKPOINT_FORMAT = "defect-discovery-model-1"


@dataclass
class TrainingData:
    """Crops to train on. labels: -1 = unlabeled, else an index into base_classes."""

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
        if labels.size and (labels.max() >= len(self.base_classes) or labels.min() < -1):
            raise ValueError(f"labels must be -1 or in 0..{len(self.base_classes) - 1} (base classes {self.base_classes})")


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


class CosineClassifier(nn.Module):
    """Weight-normalized linear layer without bias, weight norm fixed at 1: logits are cosines."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, normalized: torch.Tensor) -> torch.Tensor:
        return normalized @ F.normalize(self.weight, dim=1).T


def _projector(in_dim: int, hidden: int, out: int, layers: int) -> nn.Sequential:
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
        self.projector = _projector(dim, proj_hidden, proj_out, proj_layers)
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


@dataclass
class TrainResult:
    model: DiscoveryModel
    history: list[dict[str, float]]  # per-epoch means of the loss terms (+ lr, teacher_temp, seconds)
    cancelled: bool
    epochs_done: int


# ---------------------------------------------------------------- distributed (torchrun) support


def init_distributed_from_env() -> torch.device | None:
    """Call once at the CLI edge: under torchrun with WORLD_SIZE > 1, join the process group and
    return this rank's device (cuda:LOCAL_RANK, or cpu with gloo). Returns None when not distributed."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# ---------------------------------------------------------------- training


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


def _batches(order: torch.Tensor, batch_size: int, rank: int, world: int) -> list[torch.Tensor]:
    n = len(order)
    if n <= batch_size * world:
        size = max(1, n // world)
        batches = [order[: size * world]]
    else:
        size = batch_size
        usable = (n // (batch_size * world)) * batch_size * world  # drop the ragged tail
        batches = list(order[:usable].split(batch_size * world))
    return [batch[rank::world] for batch in batches]


def _save(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(payload, temporary)
    os.replace(temporary, path)


def _model_payload(model: DiscoveryModel, model_config: MGViTConfig, train_config: TrainConfig) -> dict:
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


def _build_model(
    model_config: MGViTConfig, train_config: TrainConfig, n_base: int, n_novel: int, base_classes: Sequence[str],
    device: torch.device, seed: int,
) -> DiscoveryModel:
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

    seed: seeds the initialization, the sample order and the augmentation.
    """
    data.validate()
    if n_novel < 1:
        raise ValueError("n_novel must be >= 1 (the normal / false-detection slot counts)")
    device = torch.device(device)
    config = train_config
    rank, world = _world()
    n_base = len(data.base_classes)
    model = _build_model(model_config, config, n_base, n_novel, data.base_classes, device, seed)
    model.model_config, model.train_config = model_config, config
    input_size = model.backbone.input_size
    images_u8, masks_u8 = prepare_crops(data.crops, data.masks, stored_size(input_size, config.augment))
    images_u8, masks_u8 = images_u8.to(device), masks_u8.to(device)
    labels_np = np.asarray(data.labels, dtype=np.int64)
    labels_all = torch.from_numpy(labels_np).to(device)
    scores_all = torch.from_numpy(np.asarray(data.scores, dtype=np.float32)).to(device)

    optimizer_name, start_lr, grad_clip = resolve_optimizer(config, is_scratch(model_config))
    if optimizer_name == "sgd":
        optimizer = torch.optim.SGD(_param_groups(model, config.weight_decay), lr=start_lr, momentum=config.momentum)
    else:
        optimizer = torch.optim.AdamW(_param_groups(model, config.adamw_weight_decay), lr=start_lr)
    weights = LossWeights(
        sup_weight=config.sup_weight,
        memax_weight=config.memax_weight,
        student_temp=config.student_temp,
        unsup_con_temp=config.unsup_con_temp,
        sup_con_temp=config.sup_con_temp,
        plc_offset=config.plc_offset if config.plc else None,
    )
    steps_per_epoch = len(_batches(_epoch_order(labels_np, 0, seed), config.batch_size, rank, world))
    total_steps = steps_per_epoch * config.epochs
    history: list[dict[str, float]] = []
    start_epoch = 0
    head_losses = torch.zeros(config.n_heads)
    if resume and checkpoint_path is not None and Path(checkpoint_path).is_file():
        saved = torch.load(str(checkpoint_path), map_location="cpu", weights_only=True)
        state = saved.get("train_state")
        if state is not None:
            try:
                model.load_state_dict(saved["state_dict"])
                optimizer.load_state_dict(state["optimizer"])
            except (RuntimeError, ValueError, KeyError) as error:
                raise ValueError(
                    f"checkpoint {checkpoint_path} was written by a different training (other backbone, classes "
                    f"or heads); delete it or train without resume ({type(error).__name__})"
                ) from error
            start_epoch = int(state["epoch"])
            history = list(state["history"])
            model.best_head = int(saved.get("best_head", 0))

    step_module: nn.Module = model
    if world > 1:
        step_module = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    use_amp = config.amp_bf16 and device.type == "cuda"
    started = time.perf_counter()
    cancelled = False
    epoch = start_epoch
    for epoch in range(start_epoch, config.epochs):
        model.train()
        teacher_temp = teacher_temperature(
            epoch, config.epochs, config.teacher_temp_start, config.teacher_temp_end, config.teacher_warmup_epochs
        )
        view_generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 104_729 + 1 + rank)
        batches = _batches(_epoch_order(labels_np, epoch, seed), config.batch_size, rank, world)
        sums: dict[str, float] = {}
        head_sum = torch.zeros(config.n_heads)
        for step, batch in enumerate(batches, start=1):
            if should_cancel is not None and should_cancel():
                cancelled = True
                break
            lr = _lr_at(epoch * steps_per_epoch + step - 1, total_steps, start_lr, config.lr_floor)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = batch.to(device)
            views = [augment_views(images_u8[batch], masks_u8[batch], input_size, view_generator, config.augment) for _ in range(2)]
            images = torch.cat([views[0][0], views[1][0]])
            masks = torch.cat([views[0][1], views[1][1]])
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                _, projections, logits = step_module(images, masks, guided=config.guided)
            loss, terms, per_head = discovery_loss(
                projections.float(), logits.float(), labels_all[batch], scores_all[batch], n_base, teacher_temp, weights
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + value
            head_sum += per_head
            if progress is not None and rank == 0:
                progress(TrainProgress(epoch, config.epochs, step, len(batches), terms["total"], terms, lr,
                                       time.perf_counter() - started))
        done_steps = step if not cancelled else step - 1
        if done_steps > 0:
            head_losses = _all_reduce_mean(head_sum / done_steps, device, world)
            if bool((head_losses != 0).any()):
                model.best_head = int(torch.argmin(head_losses))
        if cancelled:
            break
        means = {key: value / max(1, done_steps) for key, value in sums.items()}
        means.update(lr=lr, teacher_temp=teacher_temp, seconds=time.perf_counter() - started)
        history.append(means)
        if progress is not None and rank == 0:
            progress(TrainProgress(epoch, config.epochs, done_steps, len(batches), means.get("total", float("nan")),
                                   means, lr, time.perf_counter() - started, epoch_done=True))
        if checkpoint_path is not None and rank == 0:
            payload = _model_payload(model, model_config, config)
            payload["train_state"] = {"epoch": epoch + 1, "optimizer": optimizer.state_dict(), "history": history}
            _save(Path(checkpoint_path), payload)
    model.eval()
    return TrainResult(model=model, history=history, cancelled=cancelled, epochs_done=len(history))


def _all_reduce_mean(values: torch.Tensor, device: torch.device, world: int) -> torch.Tensor:
    if world <= 1:
        return values
    import torch.distributed as dist

    tensor = values.to(device)
    dist.all_reduce(tensor)
    return (tensor / world).cpu()


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path | str, result_or_model: TrainResult | DiscoveryModel, extra: dict | None = None,
                    model_config: MGViTConfig | None = None, train_config: TrainConfig | None = None) -> None:
    """Write a self-contained checkpoint (configs + weights + extra) that load_checkpoint reloads."""
    model = result_or_model.model if isinstance(result_or_model, TrainResult) else result_or_model
    model_config = model_config or getattr(model, "model_config", None)
    train_config = train_config or getattr(model, "train_config", None)
    if model_config is None or train_config is None:
        raise ValueError("save_checkpoint needs the model's configs (models from train() carry them)")
    payload = _model_payload(model, model_config, train_config)
    if isinstance(result_or_model, TrainResult):
        payload["history"] = result_or_model.history
    payload["extra"] = dict(extra or {})
    _save(Path(path), payload)


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


def load_checkpoint(path: Path | str, device: torch.device | str = "cpu") -> tuple[DiscoveryModel, dict]:
    """Rebuild a DiscoveryModel from a checkpoint of save_checkpoint (or train's epoch checkpoint).

    Returns (model in eval mode, extra dict). The backbone is rebuilt from its config without
    reading the original weight file again (the checkpoint holds all weights).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        saved = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"cannot read checkpoint {path}: {type(error).__name__}: {error}") from error
    if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a discovery model checkpoint")
    model_config = _config_from(MGViTConfig, saved["model_config"])
    train_config = _config_from(TrainConfig, saved["train_config"])
    rebuild = MGViTConfig(**{**asdict(model_config), "weights": None, "pretrained": False})
    model = _build_model(rebuild, train_config, saved["n_base"], saved["n_novel"], saved["base_classes"], torch.device("cpu"), 0)
    model.load_state_dict(saved["state_dict"])
    model.best_head = int(saved["best_head"])
    model.model_config, model.train_config = model_config, train_config
    return model.to(device).eval(), dict(saved.get("extra", {}))
