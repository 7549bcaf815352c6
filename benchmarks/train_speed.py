"""Training steps per second: mask-guided attention through SDPA vs timm's explicit softmax path.

Both variants are the same model (same weights, same blocks, same [CLS]-row mask); only
`fused_attn` differs. Steps are full training steps (two augmented views, forward, every loss,
backward, optimizer step), measured interleaved in the same run so machine load hits both alike.

    python benchmarks/train_speed.py                      # scratch default, CPU (+ CUDA if present)
    python benchmarks/train_speed.py --backbone vit_base_patch16_224 --batch-size 32 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from core.mgvit.augment import stored_size
from core.config import MGViTConfig
from core.mgvit.heads import DiscoveryModel
from core.mgvit.losses import LossWeights
from core.mgvit.model import build_mgvit
from core.mgvit.train import train_step


def make_step(model: DiscoveryModel, device: torch.device, batch: int, amp: bool):
    """A closure running one full training step (core.mgvit.train.train_step) on a fixed synthetic batch."""
    size = model.backbone.input_size
    side = stored_size(size)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, side, side), generator=generator, dtype=torch.uint8).to(device)
    masks = torch.zeros(batch, 1, side, side, dtype=torch.uint8)
    masks[:, :, side // 4 : side // 2, side // 4 : 3 * side // 4] = 255
    masks = masks.to(device)
    labels = torch.full((batch,), -1, device=device)
    scores = torch.full((batch,), 0.8, device=device)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)

    weights = LossWeights()

    def step() -> float:
        terms, _ = train_step(model, optimizer, images, masks, labels, scores, n_base=model.n_base, input_size=size,
                              teacher_temp=0.07, weights=weights, generator=generator, use_amp=amp)
        return terms["total"]

    return step


def measure(args: argparse.Namespace, device: torch.device) -> dict[str, list[float]]:
    """Steps per second of each variant, one figure per interleaved round."""
    config = MGViTConfig(backbone=args.backbone, input_size=args.input_size, masked_blocks=args.masked_blocks)
    torch.manual_seed(0)
    backbone = build_mgvit(config, device)
    for parameter in backbone.parameters():  # train every block: attention cost shows fully
        parameter.requires_grad = True
    model = DiscoveryModel(backbone, 0, 6, [], n_heads=4, proj_hidden=args.proj_hidden, proj_out=256).to(device)
    amp = device.type == "cuda"
    step = make_step(model, device, args.batch_size, amp)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rates: dict[str, list[float]] = {"sdpa": [], "explicit": []}
    for fused in (True, False):  # warm-up both paths
        backbone.set_fused_attention(fused)
        for _ in range(args.warmup):
            step()
    for _ in range(args.rounds):
        for name, fused in (("sdpa", True), ("explicit", False)):
            backbone.set_fused_attention(fused)
            sync()
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            sync()
            rates[name].append(args.steps / (time.perf_counter() - start))
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vit_tiny_scratch", help="scratch name or any timm ViT name (random init)")
    parser.add_argument("--input-size", type=int, default=None, help="crop side; default: the backbone's own")
    parser.add_argument("--masked-blocks", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--proj-hidden", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=2, help="steps per variant per round")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds (sdpa, explicit, sdpa, ...)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all")
    parser.add_argument("--small", action="store_true", help="micro model (32 px, dim 32): a quick smoke run")
    args = parser.parse_args()
    if args.small:
        args.backbone = "vit_micro_scratch"
    devices = []
    if args.device in ("all", "cpu"):
        devices.append(torch.device("cpu"))
    if args.device in ("all", "cuda") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU visible", file=sys.stderr)
        return 2
    print(f"backbone {args.backbone}, batch {args.batch_size} crops x 2 views, torch threads {torch.get_num_threads()}")
    print("median over interleaved rounds; the ratio is the median of per-round sdpa/explicit ratios")
    print(f"{'device':8} {'attention':10} {'steps/s':>9} {'crops/s':>9} {'vs explicit':>12}")
    for device in devices:
        rates = measure(args, device)
        paired = statistics.median(a / b for a, b in zip(rates["sdpa"], rates["explicit"]))
        for name in ("sdpa", "explicit"):
            rate = statistics.median(rates[name])
            ratio = paired if name == "sdpa" else 1.0
            print(f"{device.type:8} {name:10} {rate:9.2f} {rate * args.batch_size:9.1f} {ratio:11.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
