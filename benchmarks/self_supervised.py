"""A representation learned offline from a project's own images (issue 23, item 5), as a probe:
the scratch MGViT backbone (vit_tiny_scratch) pretrained self-supervised (SimSiam: two augmented
views of a patch, a projector and a predictor, stop-gradient; no negatives, so small batches work
on CPUs) on thousands of random patches of the set's references and inspected images, written as
a timm-layout weight file that the hybrid path loads like any pretrained ViT:

    .venv/bin/python -m benchmarks.self_supervised --dataset ../shared/datasets/aitex --out /tmp/aitex-ssl.pt
    .venv/bin/python -m benchmarks.quality --sets aitex --rows descriptors,hybrid --weights /tmp/aitex-ssl.pt --seeds 3

Measured (docs/results.md): within noise of the descriptors alone on AITEX and DeepPCB, so the
product does not pretrain; this stays a benchmark to rerun when the recipe changes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.config import MGViTConfig
from core.dataset import load_dataset
from core.imageio import read_image
from core.mgvit.model import build_mgvit

#: Patches are stored at STORED px and views of SIZE px (the scratch ViT's input) are cut from them.
STORED, SIZE = 96, 64


def sample_patches(root: Path, count: int, rng: np.random.Generator) -> np.ndarray:
    """count random square patches (32 px to 256 px, resized to STORED) spread over every image of the set."""
    manifest = load_dataset(root)
    records = [*manifest.normal, *manifest.unlabeled]
    per_image = int(np.ceil(count / len(records)))
    patches = []
    for record in records:
        image = read_image(record.path)
        height, width = image.shape[:2]
        for _ in range(per_image):
            side = int(rng.integers(32, min(height, width, 256) + 1))
            y, x = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
            patches.append(cv2.resize(image[y:y + side, x:x + side], (STORED, STORED), interpolation=cv2.INTER_AREA))
    return np.stack(patches[:count])


def views(patches: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """One augmented view per patch: a random crop, a quarter turn, a flip, brightness and contrast, blur."""
    out = np.empty((len(patches), SIZE, SIZE, 3), np.float32)
    for index, patch in enumerate(patches):
        side = int(rng.integers(int(STORED * 0.55), STORED + 1))
        y, x = int(rng.integers(0, STORED - side + 1)), int(rng.integers(0, STORED - side + 1))
        view = cv2.resize(patch[y:y + side, x:x + side], (SIZE, SIZE)).astype(np.float32) / 255
        view = np.rot90(view, int(rng.integers(4)))
        view = view[:, ::-1] if rng.random() < 0.5 else view
        view = view * rng.uniform(0.7, 1.3) + rng.uniform(-0.15, 0.15)
        if rng.random() < 0.3:
            view = cv2.GaussianBlur(np.ascontiguousarray(view), (5, 5), rng.uniform(0.3, 1.5))
        out[index] = view
    return (torch.from_numpy(out).permute(0, 3, 1, 2) - 0.45) / 0.25


def pretrain(patches: np.ndarray, minutes: float, batch: int, rng: np.random.Generator) -> tuple[nn.Module, int]:
    """SimSiam on the patches for `minutes`: (the ViT, steps taken)."""
    vit = build_mgvit(MGViTConfig()).vit
    width = vit.embed_dim
    projector = nn.Sequential(nn.Linear(width, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, 512),
                              nn.BatchNorm1d(512))
    predictor = nn.Sequential(nn.Linear(512, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 512))
    parameters = [*vit.parameters(), *projector.parameters(), *predictor.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=1e-3, weight_decay=0.05)
    started, steps = time.perf_counter(), 0
    while time.perf_counter() - started < 60 * minutes:
        chosen = patches[rng.integers(0, len(patches), batch)]
        first, second = projector(vit(views(chosen, rng))), projector(vit(views(chosen, rng)))
        loss = -(F.cosine_similarity(predictor(first), second.detach()).mean()
                 + F.cosine_similarity(predictor(second), first.detach()).mean()) / 2
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 3.0)
        optimizer.step()
        steps += 1
        if steps % 100 == 0:
            spread = F.normalize(first.detach(), dim=1).std(0).mean().item()  # ~1/sqrt(512) = 0.044: not collapsed
            print(f"  step {steps}, {time.perf_counter() - started:.0f} s: loss {loss.item():.3f}, "
                  f"spread {spread:.3f}", flush=True)
    return vit, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="the weight file to write (.pt)")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--patches", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    patches = sample_patches(args.dataset, args.patches, rng)
    print(f"{len(patches)} patches in {time.perf_counter() - started:.0f} s", flush=True)
    vit, steps = pretrain(patches, args.minutes, args.batch, rng)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(vit.state_dict(), args.out)
    print(f"{args.out}: {steps} steps of {args.batch} pairs in {time.perf_counter() - started:.0f} s "
          f"({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
