"""PatchCore (Roth et al., CVPR 2022): a coreset memory bank of normal patch features; a patch's
anomaly score is its distance to the nearest patch in the bank."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

#: Most query x bank distances computed at once (bounds memory of the chunked searches).
CHUNK_ELEMENTS = 1 << 24
#: Below this many values per coreset step, CPU threads cost more than they bring.
SMALL_STEP = 1 << 22


@contextmanager
def _few_threads(device: torch.device, work: int) -> Iterator[None]:
    """Run small sequential steps on one CPU thread: the greedy loop's per-step synchronisation
    makes several threads many times slower (35x seen on 2 busy cores)."""
    if device.type != "cpu" or work > SMALL_STEP:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def greedy_coreset(
    features: torch.Tensor, count: int, projection_dim: int = 128, seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Indices of `count` rows chosen by k-center greedy selection (farthest point first).

    Distances are taken in a random projection to projection_dim dimensions (Johnson-Lindenstrauss),
    which keeps the selection nearly the same at a fraction of the cost.
    """
    total = features.shape[0]
    if count >= total:
        return torch.arange(total, device=features.device)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    projected = features
    if projection_dim and features.shape[1] > projection_dim:
        matrix = torch.randn(features.shape[1], projection_dim, generator=generator) / math.sqrt(projection_dim)
        projected = features @ matrix.to(features.device, features.dtype)
    start = int(torch.randint(total, (1,), generator=generator))
    chosen = torch.empty(count, dtype=torch.long, device=features.device)
    chosen[0] = start
    # Squared distances through one matrix-vector product per step (no N x D temporaries);
    # the picked index stays a tensor so that a GPU never waits on the host.
    squared = (projected * projected).sum(dim=1)
    nearest = squared - 2 * (projected @ projected[start]) + squared[start]
    step = max(1, count // 1000)
    with _few_threads(features.device, projected.numel()):
        for index in range(1, count):
            pick = torch.argmax(nearest)
            chosen[index] = pick
            torch.minimum(nearest, squared - 2 * (projected @ projected[pick]) + squared[pick], out=nearest)
            if progress is not None and index % step == 0:
                progress(index, count)
    if progress is not None:
        progress(count, count)
    return chosen


def nearest_distances(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of every query row to its nearest bank row, in chunks (cdist on the device)."""
    rows = max(1, CHUNK_ELEMENTS // max(1, bank.shape[0]))
    out = torch.empty(queries.shape[0], device=queries.device, dtype=queries.dtype)
    for begin in range(0, queries.shape[0], rows):
        chunk = queries[begin:begin + rows]
        out[begin:begin + rows] = torch.cdist(chunk, bank).min(dim=1).values
    return out


class PatchCore:
    """Memory bank of normal patch embeddings; scores patches by nearest-neighbour distance."""

    def __init__(self, coreset_ratio: float = 0.1, projection_dim: int = 128, seed: int = 0,
                 max_bank: int | None = None, candidates: int | None = None) -> None:
        self.coreset_ratio = coreset_ratio
        self.projection_dim = projection_dim
        self.seed = seed
        self.max_bank = max_bank
        self.candidates = candidates
        self.bank: torch.Tensor | None = None

    def fit(self, patches: torch.Tensor, progress: Callable[[int, int], None] | None = None,
            total_patches: int | None = None) -> PatchCore:
        """patches: N x D normal patch embeddings; keeps a greedy coreset of them.

        Bounded: at most `candidates` patches (drawn at random) enter the greedy selection and at
        most `max_bank` are kept, so fit time grows linearly with the normal images, not with their
        square. total_patches: how many patches `patches` was drawn from (sets the coreset size).
        """
        total = total_patches or patches.shape[0]
        count = max(1, int(round(total * self.coreset_ratio)))
        if self.max_bank is not None:
            count = min(count, self.max_bank)
        if self.candidates is not None and patches.shape[0] > self.candidates:
            generator = torch.Generator().manual_seed(self.seed + 1)
            keep = torch.randperm(patches.shape[0], generator=generator)[:self.candidates]
            patches = patches[keep.sort().values.to(patches.device)]
        chosen = greedy_coreset(patches, count, self.projection_dim, self.seed, progress)
        self.bank = patches[chosen].contiguous()
        return self

    def score(self, embeddings: torch.Tensor) -> torch.Tensor:
        """B x D x h x w embeddings -> B x h x w nearest-neighbour distances to the bank."""
        if self.bank is None:
            raise RuntimeError("PatchCore.score called before fit")
        batch, dim, height, width = embeddings.shape
        flat = embeddings.permute(0, 2, 3, 1).reshape(-1, dim)
        return nearest_distances(flat, self.bank).reshape(batch, height, width)


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of B x H x W maps (reflected borders), on their device."""
    if sigma <= 0:
        return maps
    radius = max(1, int(math.ceil(4.0 * sigma)))
    x = torch.arange(-radius, radius + 1, device=maps.device, dtype=maps.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = maps[:, None]
    height, width = out.shape[-2:]
    pad_x, pad_y = min(radius, width - 1), min(radius, height - 1)
    out = F.pad(out, (pad_x, pad_x, 0, 0), mode="reflect") if pad_x else out
    out = F.conv2d(out, kernel[radius - pad_x:radius + pad_x + 1].view(1, 1, 1, -1))
    out = F.pad(out, (0, 0, pad_y, pad_y), mode="reflect") if pad_y else out
    out = F.conv2d(out, kernel[radius - pad_y:radius + pad_y + 1].view(1, 1, -1, 1))
    return out[:, 0]


def patch_scores_to_maps(scores: torch.Tensor, size: tuple[int, int], sigma: float) -> torch.Tensor:
    """B x h x w patch scores -> B x H x W maps at the feature input size, Gaussian-smoothed."""
    upsampled = F.interpolate(scores[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return gaussian_blur(upsampled, sigma)
