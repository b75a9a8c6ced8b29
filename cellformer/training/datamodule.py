"""LightningDataModule: dataset file + genome + graphs -> train/val/test loaders (on the shared
:class:`~cellformer.training.base.SplitDataModule`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cellformer.data.context import DataContext
from cellformer.data.dataset import SPLITS, PerturbationData, PerturbationDataset, identity_collate
from cellformer.data.splits import gene_holdout_split, random_split
from cellformer.defaults import DEFAULT_DATASET, YEAST_GRAPHS
from cellformer.errors import UserError
from cellformer.genome import load_genome
from cellformer.graphs import load_graphs
from cellformer.training.base import SplitDataModule


def is_embedded(dataset: str) -> bool:
    """Whether ``dataset`` names an embedded dataset (``default`` or a shipped real screen) rather than a path."""
    from cellformer.data.real import REAL_SCREENS

    return dataset == "default" or dataset in REAL_SCREENS


def embedded_dataset(dataset: str, genome) -> tuple[Path, PerturbationData]:
    """Path and contents of an embedded dataset, built first when it is missing or was built for another
    version of ``genome`` (the files are derived from shipped sources, and git-ignored)."""
    from cellformer.data.real import REAL_SCREENS, build_real_dataset
    from cellformer.data.simulate import build_default_dataset

    path = DEFAULT_DATASET if dataset == "default" else REAL_SCREENS[dataset].default_path
    command = "cellformer data simulate" if dataset == "default" else f"cellformer data build {dataset}"
    from cellformer.genome import yeast_genome

    if path.exists():
        data = PerturbationData.load(path)
        if not data.genome_hash or data.genome_hash == genome.hash or genome.hash != yeast_genome().hash:
            return path, data  # (embedded datasets are built over the yeast genome; others fail the check below)
        print(f"[cellformer] {path} was built for another version of the genome: rebuilding it ({command})")
    else:
        print(f"[cellformer] embedded dataset {dataset!r} missing: building {path} ({command})")
    if dataset == "default":
        build_default_dataset(path, force=True)
    else:
        build_real_dataset(dataset, path, genome)
    return path, PerturbationData.load(path)


class PerturbationDataModule(SplitDataModule):
    """Loads a perturbation dataset (HDF5) with its genome and graphs and serves the splits.

    Args:
        dataset: path to an HDF5 dataset, ``"default"`` for the embedded simulated yeast screen
            (``data/yeast_sim.h5``, built on first use by ``cellformer data simulate``), or the name of a
            shipped real screen (``costanzo2016-metabolic``: ``data/costanzo2016_metabolic.h5``, built on first
            use by ``cellformer data build``). An embedded dataset built for another version of the genome is
            rebuilt.
        genome: ``"yeast"`` or a gene-table TSV path; must match the dataset's genome hash.
        graphs: graph names (shipped yeast graphs: see ``cellformer data info --graphs``) or
            ``name=path.tsv[:directed]`` edge lists.
        graph_controls: per graph, replace it by a degree-preserving rewired copy (``rewire`` share of
            edges, ``seed``) — the control arm of the graph-prior experiments.
        phenotypes: the phenotypes to predict (default: all in the dataset); unknown names are errors.
        split: ``stored`` (the dataset's own split), ``random``, ``gene_holdout`` (test = records with
            at least one held-out gene) or ``gene_holdout_strict`` (all genes held out).
        singles_in_train: with a gene hold-out, single-gene records stay in training and the held-out genes are
            drawn among the genes of larger sets (a screen of interactions among genes whose single mutants
            are measured genome-wide).
        val_fraction, test_fraction, split_seed: for computed splits.
        train_fraction, train_seed: keep only this share of the training records (learning curves).
        max_records: use only the first records of a seeded permutation (quick runs).
        batch_size, num_workers: loader settings.
    """

    def __init__(
        self,
        dataset: str = "default",
        genome: str = "yeast",
        graphs: list[str] | None = None,
        graph_controls: dict[str, dict] | None = None,
        phenotypes: list[str] | None = None,
        split: str = "stored",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        train_fraction: float = 1.0,
        train_seed: int = 0,
        max_records: int | None = None,
        batch_size: int = 256,
        num_workers: int = 0,
        singles_in_train: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        if split not in {"stored", "random", "gene_holdout", "gene_holdout_strict"}:
            raise UserError(f"split {split!r}: expected stored, random, gene_holdout or gene_holdout_strict")
        if not 0 < train_fraction <= 1:
            raise UserError(f"train_fraction must be in (0, 1], got {train_fraction}")
        self.genome = load_genome(genome)
        path, data = embedded_dataset(dataset, self.genome) if is_embedded(dataset) else (Path(dataset), None)
        self.dataset_path = path
        data = PerturbationData.load(path) if data is None else data
        if data.genome_hash and data.genome_hash != self.genome.hash:
            raise UserError(
                f"dataset {path} was built for genome hash {data.genome_hash}, but genome {genome!r} has "
                f"hash {self.genome.hash}"
            )
        names = list(YEAST_GRAPHS) if graphs is None else list(graphs)
        self.graphs = load_graphs(names, self.genome, graph_controls)
        if phenotypes is not None:
            cols = [data.phenotype_index(p) for p in phenotypes]
            data.phenotypes = data.phenotypes[:, cols]
            data.phenotype_names = list(phenotypes)
        self.data = data
        self.phenotype_names = list(data.phenotype_names)
        self.context = DataContext(self.genome, self.graphs, self.phenotype_names)
        self._make_splits()

    def _make_splits(self) -> None:
        """Split indices. ``max_records`` first keeps a seeded random subset (its own random stream, so it
        never lines up with the split's), then the split is made among the kept records: the stored split's
        codes of those records, or a random / gene hold-out split computed on them."""
        hp = self.hparams
        n = len(self.data)
        kept = np.arange(n)
        if hp.max_records is not None:
            if hp.max_records <= 0:
                raise UserError(f"max_records must be a positive number of records, got {hp.max_records}")
            if hp.max_records < n:
                kept = np.sort(np.random.default_rng([hp.split_seed, 0x6B656570]).permutation(n)[: hp.max_records])
        if hp.split == "stored":
            if self.data.split is None:
                raise UserError(f"{self.dataset_path} stores no split; use split: random or gene_holdout")
            split = self.data.split[kept]
        elif hp.split == "random":
            split = random_split(len(kept), hp.val_fraction, hp.test_fraction, hp.split_seed)
        else:
            data = self.data if len(kept) == n else self.data.subset(kept)
            split, _ = gene_holdout_split(
                data, hp.test_fraction, hp.val_fraction, strict=hp.split.endswith("strict"), seed=hp.split_seed,
                singles_in_train=hp.singles_in_train,
            )  # fmt: skip
        self.split_index = {k: kept[split == v] for k, v in SPLITS.items()}
        if (split == -1).any():
            print(f"[cellformer] {int((split == -1).sum())} records have no split (unassigned) and are not used")
        train = self.split_index["train"]
        if hp.train_fraction < 1:
            sub = np.random.default_rng(hp.train_seed).permutation(len(train))[
                : max(1, int(hp.train_fraction * len(train)))
            ]
            self.split_index["train"] = np.sort(train[sub])
        if len(self.split_index["train"]) == 0:
            sizes = {k: len(v) for k, v in self.split_index.items()}
            raise UserError(f"the training split is empty ({sizes}); use more records or another split")
        unmeasured = np.isnan(self.data.phenotypes[self.split_index["train"]]).all(0)
        if unmeasured.any():  # nothing to learn from: the loss would be 0 and the metrics empty
            names = [n for n, u in zip(self.phenotype_names, unmeasured, strict=True) if u]
            raise UserError(
                f"phenotype(s) {', '.join(names)} have no measured value in the training split of "
                f"{self.dataset_path}; leave them out with data.phenotypes"
            )

    def dataset(self, split: str) -> PerturbationDataset:
        """The records of ``split``; validation and test in a fixed shuffled order, so that a run that scores
        only some of their batches still sees every kind of record (singles come first in many files)."""
        rows = self.split_index[split]
        if split != "train":
            rows = np.random.default_rng([self.hparams.split_seed, 0x6576616C]).permutation(rows)
        return PerturbationDataset(self.data, rows)

    def collate(self, items):
        return identity_collate(items)  # the dataset batches itself (``__getitems__``)

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        return batch.to(device)
