"""Choosing the compute device once, at the edge, to be passed down."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """Map 'auto' | 'cpu' | 'cuda' | 'cuda:N' | 'mps' to a torch.device; auto prefers cuda, then mps."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device '{name}' was asked for, but no CUDA GPU is visible")
    return torch.device(name)
