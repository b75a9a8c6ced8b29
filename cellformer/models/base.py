"""The interface every phenotype model (CellFormer and the baselines) implements."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from cellformer.data.dataset import PerturbationBatch
from cellformer.errors import UserError, check_number

if TYPE_CHECKING:
    from cellformer.data.dataset import PerturbationData


@dataclass
class ModelOutput:
    """What ``model(batch)`` returns.

    Attributes:
        pred: (B, P) predicted phenotypes in their original units, in the order of ``model.phenotype_names``.
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

    **Target scaling.** Every phenotype is standardised with training-split statistics: the buffers
    ``y_mean`` / ``y_std`` (P,) hold them (set by the training module, saved in the state dict). A model
    computes in standardised units and returns ``self.unscale(raw)``, i.e. original units, so every
    consumer (metrics, ``predict``, ``screen``, the Python API) sees original units; the training loss
    standardises predictions and targets alike (:meth:`standardise`).

    **Optional capabilities**, with no-op defaults that models override:

    * ``splits_encoder`` — True when the model has ``encode_genome`` / ``predict_from_encoding`` (an
      encoder output that queries can cache per genome variant);
    * :meth:`set_encoding_cache` — reuse one encoding during an evaluation epoch;
    * :meth:`monitor` — cheap health signals logged at validation;
    * :meth:`fit_records` — closed-form fitting from the training records (models without gradient
      training, e.g. graph smoothing).
    """

    phenotype_names: list[str]
    hparams_dict: dict
    splits_encoder: bool = False

    def forward(self, batch: PerturbationBatch) -> ModelOutput:  # pragma: no cover - interface
        raise NotImplementedError

    # ------------------------------------------------------------------ target scaling
    def register_target_scaling(self, n_phenotypes: int) -> None:
        """Create the ``y_mean`` (zeros) / ``y_std`` (ones) buffers (done by the model registry)."""
        if not hasattr(self, "y_mean"):
            self.register_buffer("y_mean", torch.zeros(n_phenotypes))
            self.register_buffer("y_std", torch.ones(n_phenotypes))

    def set_target_scaling(self, mean: np.ndarray | torch.Tensor, std: np.ndarray | torch.Tensor) -> None:
        """Set the training-split mean and sd per phenotype (sd ≤ 0 or NaN becomes 1, NaN mean 0)."""
        mean = torch.as_tensor(np.asarray(mean, dtype=np.float32))
        std = torch.as_tensor(np.asarray(std, dtype=np.float32))
        mean = torch.nan_to_num(mean, nan=0.0)
        std = torch.where(torch.isfinite(std) & (std > 0), std, torch.ones_like(std))
        self.register_target_scaling(mean.numel())
        self.y_mean.copy_(mean)
        self.y_std.copy_(std)

    def target_scaling(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, std)`` (P,) of the target scaling; 0 and 1 while none is registered."""
        if not hasattr(self, "y_mean"):
            n = len(self.phenotype_names)
            return torch.zeros(n), torch.ones(n)
        return self.y_mean, self.y_std

    def unscale(self, raw: torch.Tensor) -> torch.Tensor:
        """Standardised model output (B, P) -> original units."""
        if not hasattr(self, "y_mean"):
            return raw
        return raw * self.y_std.to(raw.dtype) + self.y_mean.to(raw.dtype)

    def standardise(self, values: torch.Tensor) -> torch.Tensor:
        """Original units (B, P) -> standardised units (NaN stays NaN)."""
        if not hasattr(self, "y_mean"):
            return values
        return (values - self.y_mean.to(values.dtype)) / self.y_std.to(values.dtype)

    # ------------------------------------------------------------------ optional capabilities
    @property
    def trainable(self) -> bool:
        """Whether the model has parameters for gradient training."""
        return any(p.requires_grad for p in self.parameters())

    def set_encoding_cache(self, enabled: bool) -> None:
        """Turn an evaluation-epoch encoding cache on or off (no cache by default)."""

    def monitor(self, rows: int = 256) -> dict[str, float]:
        """Health signals logged at validation (none by default)."""
        return {}

    def fit_records(self, data: PerturbationData, train_rows: np.ndarray) -> None:
        """Closed-form fitting from the training records ``data[train_rows]`` (nothing by default)."""


def check_fields(config, ranges: dict[str, tuple], prefix: str) -> None:
    """Check a config dataclass's fields against their annotations and ``ranges``; a mistake is a UserError
    naming ``prefix.field``, the value and what is allowed (:func:`~cellformer.errors.check_number`).

    Annotations read: ``bool``, ``int``, ``float`` (a bool is neither), optionally ``| None``.
    ``ranges[name] = (lowest, highest or None, whether highest itself is allowed)``.
    """
    for f in dataclasses.fields(config):
        value, kind = getattr(config, f.name), str(f.type)
        if value is None and "None" in kind:
            continue
        if kind.startswith("bool") and not isinstance(value, bool):
            raise UserError(f"{prefix}.{f.name}: {value!r} is not allowed; expected true or false")
        if kind.startswith(("int", "float")):
            lo, hi, hi_ok = ranges.get(f.name, (None, None, True))
            check_number(f"{prefix}.{f.name}", value, integer=kind.startswith("int"), low=lo, high=hi,
                         high_open=not hi_ok)  # fmt: skip
            if kind.startswith("int"):
                setattr(config, f.name, int(value))  # 64.0 from a YAML file is 64
