"""Train/val/test splits: seeded random, and gene hold-out (loose and strict)."""

from __future__ import annotations

import numpy as np

from cellformer.data.dataset import SPLITS, PerturbationData


def random_split(num_records: int, val: float = 0.1, test: float = 0.1, seed: int = 0) -> np.ndarray:
    """Split codes (0 train, 1 val, 2 test) for a seeded random split of ``num_records`` records."""
    if val < 0 or test < 0 or val + test >= 1:
        raise ValueError(f"val ({val}) and test ({test}) must be >= 0 and sum to < 1")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(num_records)
    n_test, n_val = int(round(test * num_records)), int(round(val * num_records))
    split = np.zeros(num_records, dtype=np.int8)
    split[perm[:n_test]] = SPLITS["test"]
    split[perm[n_test : n_test + n_val]] = SPLITS["val"]
    return split


def gene_holdout_split(
    data: PerturbationData,
    test_genes: float = 0.1,
    val_genes: float = 0.1,
    strict: bool = False,
    seed: int = 0,
    singles_in_train: bool = False,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Hold out genes rather than records.

    A share of the genes that occur in the data is drawn for test and another for val. Loose
    (``strict=False``): a record goes to test if it contains at least one test gene, else to val if
    it contains a val gene, else to train. Strict: a record goes to test only if *all* its genes are
    test genes (likewise val); records mixing held-out and training genes are dropped (code -1) so no
    held-out gene is ever seen in training.

    ``singles_in_train``: single-gene records always go to train, and the held-out genes are drawn among the
    genes of records of two or more genes (single mutants measured genome-wide, interactions among a subset).

    Returns the split codes and the held-out gene indices ``{"test": ..., "val": ...}``.
    """
    rng = np.random.default_rng(seed)
    sizes = data.set_sizes
    pool = data.gene_index[np.repeat(sizes >= 2, sizes)] if singles_in_train else data.gene_index
    genes = np.unique(pool)
    perm = rng.permutation(genes)
    n_test, n_val = int(round(test_genes * len(genes))), int(round(val_genes * len(genes)))
    test_set, val_set = perm[:n_test], perm[n_test : n_test + n_val]
    is_test = np.isin(data.gene_index, test_set)
    is_val = np.isin(data.gene_index, val_set)
    seg = data.offsets[:-1]
    any_test = np.add.reduceat(is_test, seg) > 0 if len(seg) else np.zeros(0, bool)
    any_val = np.add.reduceat(is_val, seg) > 0 if len(seg) else np.zeros(0, bool)
    split = np.zeros(len(data), dtype=np.int8)
    if strict:
        all_test = np.add.reduceat(is_test, seg) == sizes
        all_val = np.add.reduceat(is_val, seg) == sizes
        split[any_test | any_val] = -1
        split[all_test] = SPLITS["test"]
        split[all_val] = SPLITS["val"]
    else:
        split[any_val] = SPLITS["val"]
        split[any_test] = SPLITS["test"]
    if singles_in_train:
        split[sizes == 1] = SPLITS["train"]
    return split, {"test": np.sort(test_set), "val": np.sort(val_set)}
