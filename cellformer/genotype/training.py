"""Training in genotype mode: a LightningDataModule, a LightningModule and checkpoint loading.

* :class:`GenotypeDataModule` loads a genotype dataset (HDF5), or simulates one in memory, picks the
  phenotypes and split, standardises every phenotype with **training-split** statistics and builds the
  locus graphs (LD on training rows only) into a :class:`GenotypeContext`.
* :class:`GenotypeModule` trains any model of :data:`cellformer.genotype.models.MODELS` with a NaN-masked
  MSE on standardised targets. ``val_loss`` is the phenotype loss alone (auxiliary graph terms are logged
  as ``train/graph/<name>`` and never enter checkpoint selection); predictions and test metrics are in
  original units. Closed-form models (ridge, LASSO) are solved at the start of ``fit``; no gradient step
  is taken and the first epoch ends the run.
* :func:`load_genotype_checkpoint` rebuilds the model from a checkpoint with ``torch.load(weights_only=True)``;
  the checkpoint carries locus ids, phenotype names, standardisation statistics, locus graphs, model name
  and hyper-parameters.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import DataLoader, Dataset

from cellformer.errors import UserError
from cellformer.genotype.locus_graph import build_locus_graphs
from cellformer.genotype.models import GenotypeModel, build_genotype_model
from cellformer.graphs.graph import GeneGraph
from cellformer.training.metrics import format_metrics_table, masked_mse, regression_metrics
from cellformer.training.optim import adamw_warmup_cosine

CHECKPOINT_KEY = "cellformer_genotype"
CHECKPOINT_VERSION = 1


# ---------------------------------------------------------------------- context
@dataclass
class GenotypeContext:
    """What a genotype model needs to know about its data (and what a checkpoint stores)."""

    locus_ids: list[str]
    phenotype_names: list[str]
    y_mean: np.ndarray  # (P,) training-split mean of each phenotype
    y_std: np.ndarray  # (P,) training-split standard deviation (1 where undefined)
    graphs: dict[str, GeneGraph] = field(default_factory=dict)
    alleles: dict[str, str] = field(default_factory=dict)  # the data's allele coding (GenotypeData.alleles)

    def standardise(self, y: np.ndarray) -> np.ndarray:
        return ((y - self.y_mean) / self.y_std).astype(np.float32)

    def destandardise(self, y: np.ndarray) -> np.ndarray:
        return (y * self.y_std + self.y_mean).astype(np.float32)

    def to_checkpoint(self) -> dict:
        graphs = {}
        for name, g in self.graphs.items():
            graphs[name] = {
                "indptr": torch.from_numpy(g.adj.indptr.astype(np.int64)),
                "indices": torch.from_numpy(g.adj.indices.astype(np.int64)),
                "data": torch.from_numpy(g.adj.data.astype(np.float32)),
                "num_nodes": int(g.num_nodes),
                "directed": bool(g.directed),
            }
        return {
            "locus_ids": list(self.locus_ids),
            "phenotype_names": list(self.phenotype_names),
            "y_mean": torch.as_tensor(self.y_mean, dtype=torch.float64),
            "y_std": torch.as_tensor(self.y_std, dtype=torch.float64),
            "graphs": graphs,
            "alleles": dict(self.alleles),
        }

    @classmethod
    def from_checkpoint(cls, meta: dict) -> GenotypeContext:
        graphs = {}
        for name, d in meta["graphs"].items():
            n = d["num_nodes"]
            adj = sp.csr_matrix((d["data"].numpy(), d["indices"].numpy(), d["indptr"].numpy()), shape=(n, n))
            graphs[name] = GeneGraph(name, adj, d["directed"])
        return cls(list(meta["locus_ids"]), list(meta["phenotype_names"]), meta["y_mean"].numpy(),
                   meta["y_std"].numpy(), graphs, dict(meta.get("alleles") or {}))


def standardisation(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column NaN-aware mean and std of ``y`` (std 1 where it is 0 or undefined, mean 0 where undefined)."""
    with np.errstate(all="ignore"):
        count = (~np.isnan(y)).sum(0)
        mean = np.where(count > 0, np.nansum(y, 0) / np.maximum(count, 1), 0.0)
        var = np.where(count > 1, np.nansum((y - mean) ** 2, 0) / np.maximum(count - 1, 1), 1.0)
    std = np.sqrt(var)
    return mean.astype(np.float64), np.where(std > 0, std, 1.0).astype(np.float64)


# ---------------------------------------------------------------------- data
class _Rows(Dataset):
    """Row indices; :func:`_collate` gathers the genotypes (as float) and standardised targets."""

    def __init__(self, rows: np.ndarray):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> int:
        return int(self.rows[i])


class GenotypeDataModule(L.LightningDataModule):
    """Serves train/val/test rows of a genotype dataset as ``(x (B, L) float, y (B, P) standardised, index)``.

    Args:
        dataset: path of a genotype HDF5 file (``cellformer data import-genotypes`` / ``simulate-genotypes``).
        simulate: instead of a file, keyword arguments of
            :func:`cellformer.genotype.simulate.simulate_genotypes` (simulated in memory, deterministic).
        phenotypes: the phenotypes to predict (default all).
        split: ``stored`` (the dataset's split) or ``random`` (``val_fraction``, ``test_fraction``, ``split_seed``).
        train_samples: keep only this many training rows (seeded by ``split_seed``; learning curves).
        locus_graphs: graph name -> spec (see :mod:`cellformer.genotype.locus_graph`), for the locus CellFormer.
        batch_size, num_workers: loader settings.
        data: an in-memory :class:`~cellformer.genotype.data.GenotypeData` (programmatic use; not saved).
    """

    def __init__(
        self,
        dataset: str | None = None,
        simulate: dict[str, Any] | None = None,
        phenotypes: list[str] | None = None,
        split: str = "stored",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        train_samples: int | None = None,
        locus_graphs: dict[str, dict] | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        data: Any = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["data"])
        if split not in {"stored", "random"}:
            raise UserError(f"split {split!r}: expected 'stored' or 'random'")
        if sum(x is not None for x in (dataset, simulate, data)) != 1:
            raise UserError("give exactly one of data.dataset (a genotype HDF5 file) or data.simulate (simulator args)")
        if data is None and dataset is not None:
            from cellformer.genotype.data import GenotypeData

            data = GenotypeData.load(dataset)
        elif data is None:
            from cellformer.genotype.simulate import simulate_genotypes

            data = simulate_genotypes(**simulate)
        if phenotypes is not None:  # a new object: an in-memory dataset given by the caller is left as it was
            cols = [data.phenotype_index(p) for p in phenotypes]
            data = dataclasses.replace(data, phenotypes=data.phenotypes[:, cols], phenotype_names=list(phenotypes))
        self.data = data
        self._make_splits()
        train = self.split_index["train"]
        if len(train) == 0:
            raise UserError("the training split is empty")
        mean, std = standardisation(data.phenotypes[train].astype(np.float64))
        graphs = build_locus_graphs(locus_graphs, data, train)
        self.context = GenotypeContext(list(data.loci.ids), list(data.phenotype_names), mean, std, graphs,
                                       getattr(data, "alleles", None) or {})
        self.x = torch.from_numpy(np.ascontiguousarray(data.genotypes))  # int8, converted per batch
        self.y = torch.from_numpy(self.context.standardise(data.phenotypes))

    def _make_splits(self) -> None:
        hp, n = self.hparams, len(self.data)
        if hp.split == "stored":
            if self.data.split is None:
                raise UserError("the genotype dataset stores no split; use data.split: random")
            split = self.data.split
        else:
            from cellformer.genotype.data import random_genotype_split

            split = random_genotype_split(n, hp.val_fraction, hp.test_fraction, hp.split_seed)
        self.split_index = {name: np.flatnonzero(split == code) for code, name in enumerate(("train", "val", "test"))}
        if hp.train_samples is not None and hp.train_samples < len(self.split_index["train"]):
            rng = np.random.default_rng(hp.split_seed)
            self.split_index["train"] = np.sort(rng.permutation(self.split_index["train"])[: hp.train_samples])

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``(x float32 (n, L), y standardised (n, P))`` of one split (for closed-form fitting)."""
        rows = self.split_index[split]
        return self.x[rows].float().numpy(), self.y[rows].numpy()

    def _collate(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = torch.as_tensor(idx, dtype=torch.long)
        return self.x[rows].float(), self.y[rows], rows

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(_Rows(self.split_index[split]), batch_size=self.hparams.batch_size, shuffle=shuffle,
                          collate_fn=self._collate, num_workers=self.hparams.num_workers,
                          drop_last=shuffle and len(self.split_index[split]) > self.hparams.batch_size)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", False)


# ---------------------------------------------------------------------- module
class GenotypeModule(L.LightningModule):
    """Trains a genotype model (``model``: ridge, lasso, mlp, rijal_attention, canonical_transformer,
    vanilla_transformer, fariello_transformer, cellformer).

    Args:
        model: registered model name; ``model_args`` its hyper-parameters.
        lr, weight_decay: AdamW; ``warmup_steps`` linear warm-up then cosine decay to ``lr · min_lr_ratio``.
        context: linked from the data module by the CLI (locus ids, phenotypes, standardisation, graphs).
    """

    def __init__(
        self,
        model: str = "ridge",
        model_args: dict[str, Any] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 20,
        min_lr_ratio: float = 0.1,
        context: Any = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["context"])
        if context is None:
            raise UserError("GenotypeModule needs the data context (linked from the data module by the CLI)")
        self.context: GenotypeContext = context
        self.model: GenotypeModel = build_genotype_model(
            model, len(context.locus_ids), len(context.phenotype_names), graphs=context.graphs, **(model_args or {})
        )
        self.automatic_optimization = not self.model.closed_form
        self._store: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.last_metrics: dict[str, dict[str, dict[str, float]]] = {}
        self.closed_form_info: dict = {}

    @property
    def phenotype_names(self) -> list[str]:
        return list(self.context.phenotype_names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised predictions (B, P)."""
        return self.model(x)

    # ------------------------------------------------------------------ closed form
    def on_fit_start(self) -> None:
        if not self.model.closed_form:
            return
        dm = self.trainer.datamodule
        x, y = dm.arrays("train")
        xv, yv = dm.arrays("val")
        self.closed_form_info = self.model.fit_closed_form(x, y, xv if len(xv) else None, yv if len(yv) else None)

    # ------------------------------------------------------------------ steps
    def _phenotype_loss(self, pred: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mse, count = masked_mse(pred.float(), y)
        measured = (count > 0).float()
        return (mse * measured).sum() / measured.sum().clamp(min=1.0), mse

    def training_step(self, batch, batch_idx: int):
        x, y, _ = batch
        if self.model.closed_form:  # solved in on_fit_start; the run stops after this epoch's validation
            if batch_idx == 0:  # the solve counts as one optimisation step, so checkpoint callbacks save it
                progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
                progress.increment_ready()
                progress.increment_completed()
            return None
        pred, aux = self.model.forward_with_losses(x)
        loss, _ = self._phenotype_loss(pred, y)
        total = loss + sum(aux.values(), torch.zeros((), device=loss.device))
        log = {"train/phenotype_loss": loss, "train/loss": total, **{f"train/{k}": v for k, v in aux.items()}}
        self.log_dict(log, batch_size=len(x), on_step=True, on_epoch=True)
        self.log("train_loss", total, batch_size=len(x), prog_bar=True, on_step=True, on_epoch=False)
        return total

    def _eval_step(self, batch, stage: str) -> None:
        x, y, _ = batch
        pred = self.model(x)
        loss, _ = self._phenotype_loss(pred, y)
        self.log(f"{stage}_loss", loss, batch_size=len(x), prog_bar=True, on_epoch=True)
        self._store.setdefault(stage, []).append((pred.detach().float().cpu(), y.cpu()))

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return torch.from_numpy(self.context.destandardise(self.model(x).float().cpu().numpy()))

    def _epoch_metrics(self, stage: str) -> dict[str, dict[str, float]]:
        store = self._store.pop(stage, [])
        if not store:
            return {}
        pred = self.context.destandardise(torch.cat([s[0] for s in store]).numpy())
        y = self.context.destandardise(torch.cat([s[1] for s in store]).numpy())
        metrics = regression_metrics(pred, y, self.phenotype_names)
        flat = {f"{stage}/{k}/{n}": m[k] for n, m in metrics.items() for k in ("pearson", "r2") if not math.isnan(m[k])}
        means = {k: float(np.nanmean([m[k] for m in metrics.values()])) for k in ("pearson", "r2")
                 if any(not math.isnan(m[k]) for m in metrics.values())}
        flat.update({f"{stage}/{k}_mean": v for k, v in means.items()})
        if flat and not self.trainer.sanity_checking:
            self.log_dict(flat)
        self.last_metrics[stage] = metrics
        return metrics

    def on_validation_epoch_end(self) -> None:
        self._epoch_metrics("val")

    def on_train_epoch_end(self) -> None:
        if self.model.closed_form:
            self.trainer.should_stop = True

    def on_test_epoch_end(self) -> None:
        metrics = self._epoch_metrics("test")
        if metrics and self.trainer.is_global_zero and self.trainer.progress_bar_callback is not None:
            print("\n" + format_metrics_table(metrics, f"test metrics ({self.hparams.model})") + "\n")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        if self.model.closed_form:
            return None
        hp = self.hparams
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 1000
        return adamw_warmup_cosine(self.model, hp.lr, hp.weight_decay, hp.warmup_steps, hp.min_lr_ratio, total)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "version": CHECKPOINT_VERSION,
            "model": self.hparams.model,
            "model_hparams": copy.deepcopy(self.model.hparams_dict),
            **self.context.to_checkpoint(),
        }


class KeepBest(L.Callback):
    """Keep the weights of the epoch with the lowest ``monitor`` in memory and restore them at the end of fit.

    The file-free equivalent of ``ModelCheckpoint(monitor="val_loss")`` + loading the best checkpoint
    (used by the benchmark; the CLI configs use ModelCheckpoint).
    """

    def __init__(self, monitor: str = "val_loss"):
        self.monitor, self.best, self.state = monitor, math.inf, None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None:
            return
        if float(value) < self.best:
            self.best = float(value)
            self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.state is not None:
            pl_module.load_state_dict(self.state)


# ---------------------------------------------------------------------- loading
def load_genotype_checkpoint(
    path: str | Path, map_location: str = "cpu"
) -> tuple[GenotypeModel, GenotypeContext, dict]:
    """``(model in eval mode, context, meta)`` from a genotype checkpoint (``weights_only=True``)."""
    from cellformer.models.checkpoint import load_torch_file

    path = Path(path)
    ckpt = load_torch_file(path, map_location, require=(CHECKPOINT_KEY, "state_dict"), kind="genotype-mode checkpoint")
    meta = ckpt.get(CHECKPOINT_KEY)
    if meta is None:
        raise UserError(f"{path} is not a genotype-mode checkpoint (no {CHECKPOINT_KEY!r} section)")
    if meta["version"] != CHECKPOINT_VERSION:
        raise UserError(f"{path}: genotype checkpoint version {meta['version']}; this cellformer reads "
                        f"{CHECKPOINT_VERSION}")
    context = GenotypeContext.from_checkpoint(meta)
    model = build_genotype_model(meta["model"], len(context.locus_ids), len(context.phenotype_names),
                                 graphs=context.graphs, **meta["model_hparams"])
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    return model.eval(), context, meta


@torch.no_grad()
def predict_genotypes(model: GenotypeModel, context: GenotypeContext, x: np.ndarray,
                      batch_size: int = 256) -> np.ndarray:
    """Phenotypes (n, P) in original units for genotypes ``x`` (n, L) in the checkpoint's locus order."""
    model.eval()
    out = []
    for lo in range(0, len(x), batch_size):
        xb = torch.as_tensor(np.asarray(x[lo : lo + batch_size], dtype=np.float32))
        out.append(model(xb).float().numpy())
    pred = np.concatenate(out) if out else np.zeros((0, len(context.phenotype_names)), np.float32)
    return context.destandardise(pred)
