"""Zero-shot scoring after MuSc (Li et al., ICLR 2024): no normal images needed.

Every patch of an image is compared with the patches of the other images of the set: its
distance to the nearest patch of each other image, averaged over the most similar share of
those images. Normal patches find close matches in most images; defects, being rare, do not.

What an image offers the others to be compared with is a k-center coreset of its patches
(`zero_shot_coreset`, PatchCore's greedy selection; 1 = all of them, MuSc as published): a
textured image repeats itself, so a tenth of its patches covers nearly every patch the others
look for, and the mutual scoring, nearly all of zero-shot's time, shrinks by as much.
"""

from __future__ import annotations

import torch

from core.detection.patchcore import CHUNK_ELEMENTS, greedy_coreset


def reference_indices(count: int, target: int, limit: int, seed: int = 0) -> list[int]:
    """Which images `target` is compared with: all others, or `limit` of them drawn with a fixed seed."""
    others = [i for i in range(count) if i != target]
    if len(others) <= limit:
        return others
    generator = torch.Generator().manual_seed(seed * 1_000_003 + target)
    pick = torch.randperm(len(others), generator=generator)[:limit]
    return sorted(others[int(i)] for i in pick)


def comparison_patches(patches: torch.Tensor, share: float, projection_dim: int, seed: int) -> torch.Tensor:
    """The rows of one image's n x D patches that other images are compared with: a greedy k-center coreset
    of round(share x n) of them (all when share is 1)."""
    count = max(1, int(round(share * patches.shape[0])))
    if count >= patches.shape[0]:
        return patches
    return patches[greedy_coreset(patches, count, projection_dim, seed)].contiguous()


def mutual_scores(query: torch.Tensor, references: list[torch.Tensor], fraction: float) -> torch.Tensor:
    """query: n x D patches of one image; references: m_j x D patches of other images -> n scores.

    Score = mean of the smallest ceil(fraction * J) of the J per-image nearest distances.
    """
    if not references:
        raise ValueError("zero-shot scoring needs at least one other image")
    per_image = torch.empty(len(references), query.shape[0], device=query.device, dtype=query.dtype)
    index = 0
    while index < len(references):
        # Batch references of equal patch count into one batched cdist, bounded in memory.
        size = references[index].shape[0]
        group = 1
        budget = max(1, CHUNK_ELEMENTS // max(1, query.shape[0] * size))
        while (index + group < len(references) and group < budget
               and references[index + group].shape[0] == size):
            group += 1
        stacked = torch.stack(references[index:index + group])
        distances = torch.cdist(query.unsqueeze(0).expand(group, -1, -1), stacked)
        per_image[index:index + group] = distances.min(dim=2).values
        index += group
    keep = max(1, int(round(fraction * len(references))))
    nearest = torch.topk(per_image, keep, dim=0, largest=False).values
    return nearest.mean(dim=0)
