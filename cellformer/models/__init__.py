"""Models: CellFormer and the graph baselines, all behind :class:`PhenotypeModel`."""

from cellformer.models.base import ModelOutput, PhenotypeModel

__all__ = ["ModelOutput", "PhenotypeModel"]
