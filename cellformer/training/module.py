"""LightningModule: any registered phenotype model + NaN-masked loss + metrics + monitoring."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import numpy as np
import torch

from cellformer.data.dataset import PerturbationBatch, PerturbationData
from cellformer.errors import UserError
from cellformer.models.checkpoint import CHECKPOINT_KEY, CHECKPOINT_VERSION, check_genome, context_to_checkpoint
from cellformer.models.registry import build_model
from cellformer.training.metrics import format_metrics_table, masked_mse, regression_metrics
from cellformer.training.optim import adamw_warmup_cosine


class PhenotypeModule(L.LightningModule):
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
        self._eval_store: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
        self.last_metrics: dict[str, dict[str, dict[str, float]]] = {}

    @property
    def phenotype_names(self) -> list[str]:
        return list(self.context.phenotype_names)

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

    def _loss(self, batch: PerturbationBatch, stage: str):
        out = self.model(batch)
        std = self.model.standardise
        mse, count = masked_mse(std(out.pred.float()), std(batch.y))
        pheno_loss = (self.pheno_weight * mse).sum()
        total = pheno_loss + sum(out.losses.values(), torch.zeros((), device=pheno_loss.device))
        if not torch.isfinite(total) and stage == "train":
            terms = {"phenotype": float(pheno_loss), **{k: float(v) for k, v in out.losses.items()}}
            raise FloatingPointError(f"non-finite training loss at step {self.global_step}: {terms}")
        bs = batch.num_samples
        log = {f"{stage}/total_loss": total, f"{stage}/phenotype_loss": pheno_loss}
        for name, c, m in zip(self.phenotype_names, count, mse, strict=True):
            if c > 0:
                log[f"{stage}/mse/{name}"] = m
        for name, v in out.losses.items():
            log[f"{stage}/{name}"] = v
        self.log_dict(
            log, batch_size=bs, on_step=stage == "train", on_epoch=True, prog_bar=False, sync_dist=stage != "train"
        )
        self.log(
            f"{stage}_loss",
            pheno_loss,
            batch_size=bs,
            prog_bar=True,
            on_step=stage == "train",
            on_epoch=True,
            sync_dist=stage != "train",
        )
        return total, out

    def training_step(self, batch: PerturbationBatch, batch_idx: int) -> torch.Tensor | None:
        loss, _ = self._loss(batch, "train")
        return loss if self.model.trainable else None  # closed-form models: nothing to step

    def _eval_step(self, batch: PerturbationBatch, stage: str) -> None:
        _, out = self._loss(batch, stage)
        self._eval_store.setdefault(stage, []).append((batch.index.detach(), out.pred.detach().float(), batch.y))

    def validation_step(self, batch: PerturbationBatch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: PerturbationBatch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

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

    def _gather(self, stage: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        store = self._eval_store.pop(stage, [])
        if not store:
            return np.zeros(0, np.int64), np.zeros((0, len(self.phenotype_names))), np.zeros((0, 0))
        idx = torch.cat([s[0] for s in store])
        pred = torch.cat([s[1] for s in store])
        y = torch.cat([s[2] for s in store])
        if self.trainer is not None and self.trainer.world_size > 1:
            idx, pred, y = (self.all_gather(t).flatten(0, 1) for t in (idx, pred, y))
        idx_np = idx.cpu().numpy()
        # a DistributedSampler pads with repeats: keep each record once
        _, first = np.unique(idx_np, return_index=True)
        return idx_np[first], pred.cpu().numpy()[first], y.cpu().numpy()[first]

    def _epoch_metrics(self, stage: str) -> dict[str, dict[str, float]]:
        _, pred, y = self._gather(stage)
        metrics = regression_metrics(pred, y, self.phenotype_names)
        flat = {}
        for name, m in metrics.items():
            for k in ("pearson", "spearman", "r2", "mse"):
                if not math.isnan(m[k]):
                    flat[f"{stage}/{k}/{name}"] = m[k]
        pearsons = [m["pearson"] for m in metrics.values() if not math.isnan(m["pearson"])]
        if pearsons:
            flat[f"{stage}/mean_pearson"] = float(np.mean(pearsons))
        if flat:
            self.log_dict(flat, rank_zero_only=True)
        self.last_metrics[stage] = metrics
        return metrics

    def on_validation_epoch_end(self) -> None:
        self._encoding_cache(False)
        self._epoch_metrics("val")
        if not self.trainer.sanity_checking:
            values = self.model.monitor(rows=self.hparams.monitor_rows)
            if values:
                self.log_dict({f"monitor/{k}": float(v) for k, v in values.items()}, rank_zero_only=True)

    def on_test_epoch_end(self) -> None:
        self._encoding_cache(False)
        metrics = self._epoch_metrics("test")
        if self.trainer.is_global_zero:
            print("\n" + format_metrics_table(metrics, f"test metrics ({self.hparams.model})") + "\n")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        if not self.model.trainable:
            return None  # closed-form model (fitted in ``setup``)
        hp = self.hparams
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 1000
        return adamw_warmup_cosine(self.model, hp.lr, hp.weight_decay, hp.warmup_steps, hp.min_lr_ratio, total)

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

