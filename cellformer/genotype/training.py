"""Training in genotype mode: a LightningDataModule, a LightningModule and checkpoint loading, on the base
classes perturbation mode uses (:mod:`cellformer.training.base`).

* :class:`GenotypeDataModule` loads a genotype dataset (HDF5), or simulates one in memory, picks the
  phenotypes and split, standardises every phenotype with **training-split** statistics, groups markers
  into linkage blocks (``blocks``, training rows only) and builds the locus graphs (LD on training rows
  only) into a :class:`GenotypeContext`.
* :class:`GenotypeModule` trains any model of :data:`cellformer.genotype.models.MODELS` with a NaN-masked
  MSE on standardised targets. ``val_loss`` is the phenotype loss alone (auxiliary graph terms are logged
  as ``<stage>/graph/<name>`` and never enter checkpoint selection or early stopping); predictions and test
  metrics are in original units. Closed-form models (ridge, LASSO, GBM) are solved at the start of ``fit``;
  no gradient step is taken and the first epoch ends the run.
* :class:`KeepBest` keeps the best validation's weights in memory; :class:`ValidationCurve` records the
  validation curve (the benchmark reports where it reached its plateau).
* :func:`load_genotype_checkpoint` rebuilds the model from a checkpoint with ``torch.load(weights_only=True)``;
  the checkpoint carries locus ids, phenotype names, standardisation statistics, locus graphs, linkage blocks,
  model name and hyper-parameters (and, for GBM, each booster's LightGBM text dump).
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
from torch.utils.data import Dataset

from cellformer.errors import UserError
from cellformer.genotype.blocks import ld_blocks, parse_blocks
from cellformer.genotype.locus_graph import build_locus_graphs
from cellformer.genotype.models import GenotypeModel, build_genotype_model
from cellformer.graphs.graph import GeneGraph
from cellformer.training.base import BatchOutputs, RegressionModule, SplitDataModule

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
    graphs: dict[str, GeneGraph] = field(default_factory=dict)  # over the tokens (loci, or blocks)
    blocks: np.ndarray | None = None  # (L,) block index per locus (linkage blocks; None = a token per locus)
    alleles: dict[str, str] = field(default_factory=dict)  # the data's allele coding (GenotypeData.alleles)

    def standardise(self, y: np.ndarray) -> np.ndarray:
        return ((y - self.y_mean) / self.y_std).astype(np.float32)

    def destandardise(self, y: np.ndarray) -> np.ndarray:
        return (y * self.y_std + self.y_mean).astype(np.float32)

    def destandardise_tensor(self, y: torch.Tensor) -> torch.Tensor:
        std = torch.as_tensor(self.y_std, dtype=torch.float32, device=y.device)
        return y.float() * std + torch.as_tensor(self.y_mean, dtype=torch.float32, device=y.device)

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
            "blocks": None if self.blocks is None else torch.as_tensor(self.blocks, dtype=torch.int64),
            "alleles": dict(self.alleles),
        }

    @classmethod
    def from_checkpoint(cls, meta: dict) -> GenotypeContext:
        graphs = {}
        for name, d in meta["graphs"].items():
            n = d["num_nodes"]
            adj = sp.csr_matrix((d["data"].numpy(), d["indices"].numpy(), d["indptr"].numpy()), shape=(n, n))
            graphs[name] = GeneGraph(name, adj, d["directed"])
        blocks = meta.get("blocks")  # absent from checkpoints written before linkage blocks existed
        return cls(
            list(meta["locus_ids"]),
            list(meta["phenotype_names"]),
            meta["y_mean"].numpy(),
            meta["y_std"].numpy(),
            graphs,
            None if blocks is None else blocks.numpy(),
            dict(meta.get("alleles") or {}),
        )


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


class GenotypeDataModule(SplitDataModule):
    """Serves train/val/test rows of a genotype dataset as ``(x (B, L) float, y (B, P) standardised, index)``.

    Args:
        dataset: path of a genotype HDF5 file (``cellformer data import-genotypes`` / ``simulate-genotypes``).
        simulate: instead of a file, keyword arguments of
            :func:`cellformer.genotype.simulate.simulate_genotypes` (simulated in memory, deterministic).
        phenotypes: the phenotypes to predict (default all).
        split: ``stored`` (the dataset's split) or ``random`` (``val_fraction``, ``test_fraction``, ``split_seed``).
        train_samples: keep only this many training rows (seeded by ``split_seed``; learning curves).
        locus_graphs: graph name -> spec (see :mod:`cellformer.genotype.locus_graph`), for the locus CellFormer
            (over the blocks when ``blocks`` is set).
        blocks: group adjacent markers in high LD on the training split into one token, e.g. ``{r2: 0.9}``,
            ``{max_tokens: 1500}`` or ``"r2=0.9"`` (see :mod:`cellformer.genotype.blocks`); saved in the
            context and the checkpoint. Used by the token models; the others read every marker.
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
        blocks: dict[str, float] | str | None = None,
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
        spec = parse_blocks(blocks)
        block_index = None
        if spec is not None:
            block_index = ld_blocks(data.genotypes[train], data.loci.chrom, spec["r2"], spec["max_tokens"])
        graphs = build_locus_graphs(locus_graphs, data, train, blocks=block_index)
        self.context = GenotypeContext(
            list(data.loci.ids),
            list(data.phenotype_names),
            mean,
            std,
            graphs,
            block_index,
            getattr(data, "alleles", None) or {},
        )
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

    def dataset(self, split: str) -> Dataset:
        return _Rows(self.split_index[split])

    def collate(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = torch.as_tensor(idx, dtype=torch.long)
        return self.x[rows].float(), self.y[rows], rows

    def drop_last(self, split: str, shuffle: bool) -> bool:
        return shuffle and len(self.split_index[split]) > self.hparams.batch_size


# ---------------------------------------------------------------------- module
class GenotypeModule(RegressionModule):
    """Trains a genotype model (``model``: ridge, lasso, gbm, mlp, rijal_attention, canonical_transformer,
    vanilla_transformer, fariello_transformer, cellformer) on the shared
    :class:`~cellformer.training.base.RegressionModule` (NaN-masked MSE on standardised targets, mean over
    measured phenotypes; ``val_loss`` = that loss alone; metrics in original units).

    Args:
        model: registered model name; ``model_args`` its hyper-parameters.
        lr, weight_decay: AdamW; ``warmup_steps`` linear warm-up then cosine decay to ``lr · min_lr_ratio``.
        context: linked from the data module by the CLI (locus ids, phenotypes, standardisation, graphs,
            blocks).
    """

    quiet_test_table = True

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
            model,
            len(context.locus_ids),
            len(context.phenotype_names),
            graphs=context.graphs,
            blocks=context.blocks,
            **(model_args or {}),
        )
        self.automatic_optimization = not self.model.closed_form
        self.closed_form_info: dict = {}

    @property
    def trainable(self) -> bool:
        return not self.model.closed_form

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

    def on_train_epoch_end(self) -> None:
        if self.model.closed_form:  # solved in on_fit_start: the run stops after this epoch's validation
            self.trainer.should_stop = True

    # ------------------------------------------------------------------ steps
    def batch_outputs(self, batch, stage: str) -> BatchOutputs:
        x, y, rows = batch
        if stage == "train":
            pred, aux = self.model.forward_with_losses(x)
        else:
            pred, aux = self.model(x), {}
        return BatchOutputs(
            pred,
            y,
            rows,
            self.context.destandardise_tensor(pred.detach()),
            self.context.destandardise_tensor(y),
            aux,
            len(x),
        )

    def training_step(self, batch, batch_idx: int):
        if self.model.closed_form:
            if batch_idx == 0:  # the solve counts as one optimisation step, so checkpoint callbacks save it
                progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
                progress.increment_ready()
                progress.increment_completed()
            return None
        return super().training_step(batch, batch_idx)

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.context.destandardise_tensor(self.model(x)).cpu()

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
            self.state = {
                k: v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v)
                for k, v in pl_module.state_dict().items()
            }

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.state is not None:
            pl_module.load_state_dict(self.state)


class ValidationCurve(L.Callback):
    """Record the validation curve: ``curve`` is a list of ``{step, val_loss, val_r2}`` (mean R² over
    phenotypes), one entry per validation run outside the sanity check. :meth:`summary` tells where the
    curve reached its best value (its plateau) and how many steps ran."""

    def __init__(self):
        self.curve: list[dict] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        loss, r2 = m.get("val_loss"), m.get("val/mean_r2")
        self.curve.append(
            {
                "step": int(trainer.global_step),
                "val_loss": float(loss) if loss is not None else math.nan,
                "val_r2": float(r2) if r2 is not None else math.nan,
            }
        )

    def summary(self) -> dict:
        """``{validations, best_step, best_val_loss, best_val_r2}`` (NaN / -1 when nothing was validated)."""
        if not self.curve:
            return {"validations": 0, "best_step": -1, "best_val_loss": math.nan, "best_val_r2": math.nan}
        best = min(self.curve, key=lambda c: c["val_loss"] if not math.isnan(c["val_loss"]) else math.inf)
        return {
            "validations": len(self.curve),
            "best_step": best["step"],
            "best_val_loss": best["val_loss"],
            "best_val_r2": best["val_r2"],
        }


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
        raise UserError(
            f"{path}: genotype checkpoint version {meta['version']}; this cellformer reads {CHECKPOINT_VERSION}"
        )
    context = GenotypeContext.from_checkpoint(meta)
    model = build_genotype_model(
        meta["model"],
        len(context.locus_ids),
        len(context.phenotype_names),
        graphs=context.graphs,
        blocks=context.blocks,
        **meta["model_hparams"],
    )
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    return model.eval(), context, meta


@torch.no_grad()
def predict_genotypes(
    model: GenotypeModel, context: GenotypeContext, x: np.ndarray, batch_size: int = 256
) -> np.ndarray:
    """Phenotypes (n, P) in original units for genotypes ``x`` (n, L) in the checkpoint's locus order."""
    model.eval()
    out = []
    for lo in range(0, len(x), batch_size):
        xb = torch.as_tensor(np.asarray(x[lo : lo + batch_size], dtype=np.float32))
        out.append(model(xb).float().numpy())
    pred = np.concatenate(out) if out else np.zeros((0, len(context.phenotype_names)), np.float32)
    return context.destandardise(pred)
