"""LightningModule: any registered phenotype model on the shared :class:`~cellformer.training.base.RegressionModule`
(NaN-masked loss, metrics, optimiser) + encoding cache + monitoring."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from cellformer.data.dataset import PerturbationBatch, PerturbationData
from cellformer.errors import UserError
from cellformer.models.checkpoint import CHECKPOINT_KEY, CHECKPOINT_VERSION, check_genome, context_to_checkpoint
from cellformer.models.registry import build_model
from cellformer.training.base import BatchOutputs, RegressionModule


class PhenotypeModule(RegressionModule):
    """Trains a phenotype model (``model``: cellformer, dango, lazy, neighbor, additive, graph_smoothing).

    Phenotypes are standardised with training-split statistics (set at ``fit`` from the data module and
    stored in the model's state dict); the loss is the NaN-masked MSE in standardised units, so no
    phenotype dominates by its scale, and predictions come back in original units. ``val_loss`` is the
    phenotype loss alone: checkpoint selection and early stopping never see the auxiliary terms
    (graph KL, reconstruction), which are logged separately under ``<stage>/graph/…`` and
    ``<stage>/total_loss``.

    Args:
        model: registered model name (see :data:`cellformer.models.registry.MODELS`).
        model_args: the model's hyper-parameters (e.g. ``d_model``, ``graph_reg`` for CellFormer).
        lr, weight_decay: AdamW settings; ``warmup_steps`` of linear warm-up, then cosine decay to
            ``lr * min_lr_ratio`` over the trainer's total steps.
        phenotype_weights: loss weight per phenotype name (default 1 each, ≥ 0); unknown names are errors.
        monitor_rows: rows sampled for the attention–graph alignment monitor at validation.
        context: the data context (genome, graphs, phenotype names), linked from the data module by
            the CLI; not a hyper-parameter (it is stored in checkpoints separately).
    """

    def __init__(
        self,
        model: str = "cellformer",
        model_args: dict[str, Any] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 50,
        min_lr_ratio: float = 0.1,
        phenotype_weights: dict[str, float] | None = None,
        monitor_rows: int = 256,
        context: Any = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["context"])
        if context is None:
            raise ValueError("PhenotypeModule needs the data context (genome, graphs, phenotypes) to build its model")
        self.context = context
        self.model = build_model(model, context.genome, context.graphs, context.phenotype_names, **(model_args or {}))
        names = list(context.phenotype_names)
        weights = dict(phenotype_weights or {})
        unknown = set(weights) - set(names)
        if unknown:
            raise UserError(f"phenotype_weights names unknown phenotypes {sorted(unknown)}; known: {names}")
        bad = {k: v for k, v in weights.items() if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0)}
        if bad:
            raise UserError(f"phenotype_weights must be finite and ≥ 0; got {bad}")
        self.register_buffer("pheno_weight", torch.tensor([weights.get(n, 1.0) for n in names]), persistent=False)

    def forward(self, batch: PerturbationBatch):
        return self.model(batch)

    # ------------------------------------------------------------------ steps
    def setup(self, stage: str) -> None:
        """At ``fit``: target scaling from the training split, and closed-form fitting where a model has it."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if stage == "fit" and dm is not None and hasattr(dm, "data") and hasattr(dm, "split_index"):
            self.fit_data(dm.data, dm.split_index["train"])

    def fit_data(self, data: PerturbationData, train_rows: np.ndarray) -> None:
        """Standardise targets with ``data[train_rows]`` statistics, then let the model fit in closed form."""
        y = data.phenotypes[np.asarray(train_rows)]
        cols = [data.phenotype_names.index(n) for n in self.phenotype_names]
        y = y[:, cols].astype(np.float64)
        with np.errstate(all="ignore"):
            mean = np.nanmean(y, axis=0) if len(y) else np.zeros(len(cols))
            std = np.nanstd(y, axis=0) if len(y) else np.ones(len(cols))
        self.model.set_target_scaling(mean, std)
        self.model.fit_records(data, np.asarray(train_rows))

    @property
    def trainable(self) -> bool:
        return self.model.trainable

    def reduce_mse(self, mse: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """The weighted sum of the per-phenotype MSEs (``phenotype_weights``, default 1 each)."""
        return (self.pheno_weight * mse).sum()

    def batch_outputs(self, batch: PerturbationBatch, stage: str) -> BatchOutputs:
        out = self.model(batch)
        std = self.model.standardise
        return BatchOutputs(
            std(out.pred.float()), std(batch.y), batch.index, out.pred, batch.y, dict(out.losses), batch.num_samples
        )

    def predict_step(self, batch: PerturbationBatch, batch_idx: int) -> torch.Tensor:
        return self.model(batch).pred

    # ------------------------------------------------------------------ epoch boundaries
    def _encoding_cache(self, enabled: bool) -> None:
        """Weights are fixed during an evaluation epoch: models that can reuse one encoding do so."""
        self.model.set_encoding_cache(enabled)

    def on_validation_epoch_start(self) -> None:
        self._encoding_cache(True)

    def on_test_epoch_start(self) -> None:
        self._encoding_cache(True)

    def on_predict_epoch_start(self) -> None:
        self._encoding_cache(True)

    def on_predict_epoch_end(self) -> None:
        self._encoding_cache(False)

    def on_validation_epoch_end(self) -> None:
        self._encoding_cache(False)
        super().on_validation_epoch_end()
        if not self.trainer.sanity_checking:
            values = self.model.monitor(rows=self.hparams.monitor_rows)
            if values:
                self.log_dict({f"monitor/{k}": float(v) for k, v in values.items()}, rank_zero_only=True)

    def on_test_epoch_end(self) -> None:
        self._encoding_cache(False)
        super().on_test_epoch_end()

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = context_to_checkpoint(self.context, self.hparams.model, self.model.hparams_dict)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a checkpoint of another genome, gene order, phenotype set or model (test, validate, resume)."""
        meta = checkpoint.get(CHECKPOINT_KEY)
        if meta is None:
            raise UserError("the checkpoint is not a cellformer checkpoint (no 'cellformer' section)")
        if meta.get("version") != CHECKPOINT_VERSION:
            raise UserError(f"the checkpoint has format version {meta.get('version')}; this cellformer reads version "
                            f"{CHECKPOINT_VERSION} (retrain it)")  # fmt: skip
        check_genome(meta, self.context.genome, "given with --ckpt_path")
        if list(meta["phenotype_names"]) != self.phenotype_names:
            raise UserError(
                f"the checkpoint predicts phenotypes {meta['phenotype_names']}, the data module gives "
                f"{self.phenotype_names}"
            )
        if meta["model"] != self.hparams.model:
            raise UserError(f"the checkpoint holds model {meta['model']!r}, the config builds {self.hparams.model!r}")
