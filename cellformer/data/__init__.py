"""Perturbation datasets (HDF5), batching, splits, import and simulation."""

from cellformer.data.dataset import (
    NUM_PERTURBATION_TYPES,
    SPLIT_NAMES,
    SPLITS,
    PerturbationBatch,
    PerturbationData,
    PerturbationDataset,
    PerturbationType,
    collate_perturbations,
    identity_collate,
)
from cellformer.data.splits import gene_holdout_split, random_split

__all__ = [
    "NUM_PERTURBATION_TYPES",
    "SPLITS",
    "SPLIT_NAMES",
    "PerturbationBatch",
    "PerturbationData",
    "PerturbationDataset",
    "PerturbationType",
    "collate_perturbations",
    "identity_collate",
    "gene_holdout_split",
    "random_split",
]
