"""What perturbation mode and genotype mode share: the LightningModule and LightningDataModule bases.

:class:`RegressionModule` holds the training logic both modes use: the NaN-masked MSE on standardised
targets, the logging of auxiliary loss terms next to it, a ``val_loss`` that is the phenotype loss alone
(checkpoint selection and early stopping never see the auxiliary terms), per-phenotype metrics in
original units at the end of every evaluation epoch and the optimiser of :mod:`cellformer.training.optim`.
A subclass says how a batch becomes predictions (:meth:`RegressionModule.batch_outputs`), how the
per-phenotype MSEs are reduced (:meth:`RegressionModule.reduce_mse`) and whether its model takes
gradient steps (:attr:`RegressionModule.trainable`).

:class:`SplitDataModule` serves the ``train`` / ``val`` / ``test`` rows of ``split_index`` through one
loader builder; a subclass gives the dataset of a split and its collate function.

The CLI's test run after ``fit`` is :class:`cellformer.training.cli.ContextCLI`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cellformer.training.metrics import format_metrics_table, masked_mse, regression_metrics
from cellformer.training.optim import adamw_warmup_cosine

#: per-phenotype metrics logged at the end of each evaluation epoch (``<stage>/<metric>/<phenotype>``)
LOGGED_METRICS = ("pearson", "spearman", "r2", "mse")


@dataclass
class BatchOutputs:
    """One batch through a model: standardised predictions and targets for the loss, auxiliary loss
    terms (already weighted), and what the evaluation store keeps: record index and original-unit values."""

    pred_std: torch.Tensor  # (B, P)
    y_std: torch.Tensor  # (B, P), NaN = not measured
    index: torch.Tensor  # (B,) record / sample index
    pred: torch.Tensor  # (B, P) original units
    y: torch.Tensor  # (B, P) original units
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    batch_size: int = 0


class RegressionModule(L.LightningModule):
    """Base LightningModule of both modes (module docstring). Subclasses set ``self.model`` and
    ``self.context`` (with ``phenotype_names``) and save ``lr``, ``weight_decay``, ``warmup_steps`` and
    ``min_lr_ratio`` as hyper-parameters."""

    #: print the test table only when the trainer shows a progress bar (quiet in programmatic use)
    quiet_test_table: bool = False

    def __init__(self) -> None:
        super().__init__()
        self._eval_store: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
        self.last_metrics: dict[str, dict[str, dict[str, float]]] = {}

    # ------------------------------------------------------------------ what subclasses define
    @property
    def trainable(self) -> bool:
        """False for a model solved in closed form (no optimiser, no gradient step)."""
        return True

    def batch_outputs(self, batch, stage: str) -> BatchOutputs:
        raise NotImplementedError

    def reduce_mse(self, mse: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """The phenotype loss from per-phenotype MSEs (P,) and measured counts (P,): mean over measured."""
        measured = (count > 0).to(mse.dtype)
        return (mse * measured).sum() / measured.sum().clamp(min=1.0)

    # ------------------------------------------------------------------ shared logic
    @property
    def phenotype_names(self) -> list[str]:
        return list(self.context.phenotype_names)

    def phenotype_loss(
        self, pred_std: torch.Tensor, y_std: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, mse (P,), count (P,))``: the NaN-masked MSE in standardised units, reduced by :meth:`reduce_mse`."""
        mse, count = masked_mse(pred_std.float(), y_std)
        return self.reduce_mse(mse, count), mse, count

    def _loss(self, batch, stage: str) -> tuple[torch.Tensor, BatchOutputs]:
        out = self.batch_outputs(batch, stage)
        pheno_loss, mse, count = self.phenotype_loss(out.pred_std, out.y_std)
        total = pheno_loss + sum(out.losses.values(), torch.zeros((), device=pheno_loss.device))
        if not torch.isfinite(total) and stage == "train":
            terms = {"phenotype": float(pheno_loss), **{k: float(v) for k, v in out.losses.items()}}
            raise FloatingPointError(f"non-finite training loss at step {self.global_step}: {terms}")
        bs = out.batch_size or len(out.index)
        log = {f"{stage}/total_loss": total, f"{stage}/phenotype_loss": pheno_loss}
        for name, c, m in zip(self.phenotype_names, count, mse, strict=True):
            if c > 0:
                log[f"{stage}/mse/{name}"] = m
        for name, v in out.losses.items():
            log[f"{stage}/{name}"] = v
        sync = stage != "train"
        self.log_dict(log, batch_size=bs, on_step=stage == "train", on_epoch=True, prog_bar=False, sync_dist=sync)
        self.log(
            f"{stage}_loss",
            pheno_loss,
            batch_size=bs,
            prog_bar=True,
            on_step=stage == "train",
            on_epoch=True,
            sync_dist=sync,
        )
        return total, out

    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        loss, _ = self._loss(batch, "train")
        return loss if self.trainable else None  # closed-form models: nothing to step

    def _eval_step(self, batch, stage: str) -> None:
        _, out = self._loss(batch, stage)
        self._eval_store.setdefault(stage, []).append(
            (out.index.detach(), out.pred.detach().float(), out.y.detach().float())
        )

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _gather(self, stage: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Index, predictions and targets of an evaluation epoch (each record once across ranks)."""
        store = self._eval_store.pop(stage, [])
        if not store:
            return np.zeros(0, np.int64), np.zeros((0, len(self.phenotype_names))), np.zeros((0, 0))
        idx = torch.cat([s[0] for s in store])
        pred = torch.cat([s[1] for s in store])
        y = torch.cat([s[2] for s in store])
        if self._trainer is not None and self.trainer.world_size > 1:
            idx, pred, y = (self.all_gather(t).flatten(0, 1) for t in (idx, pred, y))
        idx_np = idx.cpu().numpy()
        _, first = np.unique(idx_np, return_index=True)  # a DistributedSampler pads with repeats
        return idx_np[first], pred.cpu().numpy()[first], y.cpu().numpy()[first]

    def _epoch_metrics(self, stage: str) -> dict[str, dict[str, float]]:
        """Per-phenotype metrics in original units, logged as ``<stage>/<metric>/<phenotype>`` and
        ``<stage>/mean_pearson``, ``<stage>/mean_r2``; kept in :attr:`last_metrics`."""
        _, pred, y = self._gather(stage)
        if len(pred) == 0:
            return {}
        metrics = regression_metrics(pred, y, self.phenotype_names)
        flat = {f"{stage}/{k}/{n}": m[k] for n, m in metrics.items() for k in LOGGED_METRICS if not math.isnan(m[k])}
        for key in ("pearson", "r2"):
            values = [m[key] for m in metrics.values() if not math.isnan(m[key])]
            if values:
                flat[f"{stage}/mean_{key}"] = float(np.mean(values))
        if flat and not (self._trainer is not None and self.trainer.sanity_checking):
            self.log_dict(flat, rank_zero_only=True)
        self.last_metrics[stage] = metrics
        return metrics

    def on_validation_epoch_end(self) -> None:
        self._epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        metrics = self._epoch_metrics("test")
        shown = not self.quiet_test_table or self.trainer.progress_bar_callback is not None
        if metrics and self.trainer.is_global_zero and shown:
            print("\n" + format_metrics_table(metrics, f"test metrics ({self.hparams.model})") + "\n")

    def configure_optimizers(self):
        if not self.trainable:
            return None  # closed-form model
        hp = self.hparams
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 1000
        return adamw_warmup_cosine(self.model, hp.lr, hp.weight_decay, hp.warmup_steps, hp.min_lr_ratio, total)


class SplitDataModule(L.LightningDataModule):
    """Base LightningDataModule: ``split_index`` (split name -> row indices) served by :meth:`_loader`.

    Subclasses define :meth:`dataset` (the torch dataset of a split) and may override :meth:`collate`
    and :meth:`drop_last`; ``hparams`` must hold ``batch_size`` and ``num_workers``.
    """

    split_index: dict[str, np.ndarray]

    def dataset(self, split: str) -> Dataset:
        raise NotImplementedError

    def collate(self, items):
        return items

    def drop_last(self, split: str, shuffle: bool) -> bool:
        return False

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        hp = self.hparams
        return DataLoader(
            self.dataset(split),
            batch_size=hp.batch_size,
            shuffle=shuffle,
            num_workers=hp.num_workers,
            collate_fn=self.collate,
            persistent_workers=hp.num_workers > 0,
            drop_last=self.drop_last(split, shuffle),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
