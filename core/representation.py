"""What regions are grouped on, as one object: the paper's MGViT ("vit"), fixed descriptors, or both.

Every stage asks the representation what it needs (descriptors? a trained MGViT? classes from the
heads or from spectral grouping?) instead of testing its name. Importable without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AUTO_REPRESENTATION", "REPRESENTATIONS", "REPRESENTATION_CHOICES", "Representation", "representation"]


@dataclass(frozen=True)
class Representation:
    """One way to represent a region for grouping."""

    name: str  # as stored in the settings: "vit", "descriptors" or "hybrid"
    descriptors: bool  # uses the fixed region descriptors (core.grouping.descriptors)
    embedding: bool  # uses an MGViT embedding, so an MGViT is trained
    label: str  # how the app names it

    @property
    def trains_model(self) -> bool:
        """An MGViT is trained (the descriptors alone train none)."""
        return self.embedding

    @property
    def grouped(self) -> bool:
        """Novel classes come from spectral grouping (core.grouping.spectral), not the MGViT's heads."""
        return self.descriptors

    @property
    def can_be_taught(self) -> bool:
        """The MGViT may be taught the descriptor groups (DiscoveryConfig.prior): the hybrid only."""
        return self.descriptors and self.embedding


VIT = Representation("vit", descriptors=False, embedding=True, label="ViT only (the paper)")
DESCRIPTORS = Representation("descriptors", descriptors=True, embedding=False, label="descriptors only (fast)")
HYBRID = Representation("hybrid", descriptors=True, embedding=True, label="hybrid (descriptors + ViT)")
_BY_NAME = {r.name: r for r in (VIT, DESCRIPTORS, HYBRID)}

#: What grouping works on: the paper's MGViT embedding and heads, fixed descriptors, or both.
REPRESENTATIONS = tuple(_BY_NAME)
#: `representation="auto"` (the CLI's and the app's default): decided in core.decisions.
AUTO_REPRESENTATION = "auto"
#: What the settings, the CLI and the app accept: auto or one of REPRESENTATIONS.
REPRESENTATION_CHOICES = (AUTO_REPRESENTATION, *REPRESENTATIONS)


def representation(name: str) -> Representation:
    """The representation of a name in REPRESENTATIONS; ValueError naming the choices otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"representation must be one of {REPRESENTATIONS}, not {name!r}") from None
