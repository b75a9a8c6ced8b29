"""The interface every phenotype model (CellFormer and the baselines) implements."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from cellformer.data.dataset import PerturbationBatch


@dataclass
class ModelOutput:
    """What ``model(batch)`` returns.

    Attributes:
        pred: (B, P) predicted phenotypes, in the order of ``model.phenotype_names``.
        losses: extra loss terms, already multiplied by their weights (e.g. ``graph/string_database``
            for a regularised head, ``recon/...`` for DANGO's reconstruction); the training loop adds
            them to the phenotype loss and logs each one separately.
        extras: anything else worth keeping (attention weights, embeddings) for monitoring/queries.
    """

    pred: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class PhenotypeModel(nn.Module):
    """Base class: ``forward(batch) -> ModelOutput``; ``phenotype_names`` names the output columns.

    ``hparams_dict`` must hold the constructor arguments (JSON-able) so a checkpoint can rebuild it.
    """

    phenotype_names: list[str]
    hparams_dict: dict

    def forward(self, batch: PerturbationBatch) -> ModelOutput:  # pragma: no cover - interface
        raise NotImplementedError
