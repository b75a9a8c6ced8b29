"""PerturbationData: HDF5 round trip, batching (CSR), heterologous variants, splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_sets

from cellformer.data import (
    SPLITS,
    PerturbationData,
    PerturbationDataset,
    PerturbationType,
    collate_perturbations,
    gene_holdout_split,
    random_split,
)
from cellformer.errors import UserError

D, K, O, A = (
    int(PerturbationType.DELETION),
    int(PerturbationType.KNOCKDOWN),
    int(PerturbationType.OVEREXPRESSION),
    int(PerturbationType.ADDITION),
)
GFP = "ATGGTGAGCAAGGGCGAGTAA"
RFP = "ATGGCCTCCTCCGAGTGA"


def make_data(sets, types=None, heterologous=None, n_genes=10, seed=0) -> PerturbationData:
    """Records from explicit gene ``sets`` (with per-gene ``types`` and heterologous genes appended after the
    ``n_genes`` base genes); two random phenotypes, ``epsilon`` missing on every third record. Local, not in
    conftest: these tests need exact sets, types and added genes, where conftest's ``query_data`` is one fixed
    random screen."""
    rng = np.random.default_rng(seed)
    types = types or [[D] * len(s) for s in sets]
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sets])])
    y = rng.random((len(sets), 2)).astype(np.float32)
    y[::3, 1] = np.nan
    return PerturbationData(
        genes=[f"G{i}" for i in range(n_genes)],
        offsets=offsets,
        gene_index=np.concatenate([np.asarray(s) for s in sets]),
        types=np.concatenate([np.asarray(t) for t in types]),
        phenotypes=y,
        phenotype_names=["fitness", "epsilon"],
        heterologous=heterologous or {},
        genome_hash="abc",
        genome_name="toy",
    )


SETS = [[1], [2, 3], [4, 5, 6], [0], [7, 8], [9, 1, 2]]


def test_h5_round_trip(tmp_path):
    d = make_data(SETS, heterologous={"GFP": GFP})
    d.gene_index[0] = 10  # the heterologous gene
    d.split = np.array([0, 1, 2, 0, -1, 0], dtype=np.int8)
    d.condition = ["DMA30"] * 3 + ["DMA26"] * 3
    d.meta = {"module": np.arange(10, dtype=np.int32), "names": np.array(["a", "b"]), "flag": np.array([True, False])}
    d.attrs = {"simulator": "x/1", "seed": "3"}
    d.description = "round trip"
    p = tmp_path / "d.h5"
    d.save(p)
    e = PerturbationData.load(p)
    assert e.genes == d.genes and e.phenotype_names == d.phenotype_names
    for name in ["offsets", "gene_index", "types", "split"]:
        assert np.array_equal(getattr(e, name), getattr(d, name)), name
    np.testing.assert_array_equal(e.phenotypes, d.phenotypes)  # NaN-aware
    assert e.condition == d.condition and e.heterologous == {"GFP": GFP}
    assert (e.genome_hash, e.genome_name, e.description) == ("abc", "toy", "round trip")
    assert e.attrs == {"simulator": "x/1", "seed": "3"}
    assert np.array_equal(e.meta["module"], d.meta["module"]) and e.meta["names"].tolist() == ["a", "b"]
    assert e.meta["flag"].tolist() == [True, False]
    with pytest.raises(UserError, match="cellformer data simulate"):
        PerturbationData.load(tmp_path / "missing.h5")


def check_batch(batch, data, rows):
    assert batch.index.tolist() == list(rows)
    assert batch.sets() == [data.record(r)[0].tolist() for r in rows]
    sizes = [len(data.record(r)[0]) for r in rows]
    assert batch.ptr.tolist() == np.concatenate([[0], np.cumsum(sizes)]).tolist()
    assert batch.batch.tolist() == np.repeat(np.arange(len(rows)), sizes).tolist()
    assert batch.types.tolist() == np.concatenate([data.record(r)[1] for r in rows]).tolist()
    assert batch.gene_index.dtype == torch.long and batch.types.dtype == torch.long
    torch.testing.assert_close(batch.y, torch.from_numpy(data.phenotypes[rows]), equal_nan=True)
    assert batch.variant.tolist() == [0] * len(rows) and batch.variants == ((),)


def test_collate_matches_records():
    types = [[K], [D, O], [D, D, K], [O], [D, D], [K, K, D]]
    data = make_data(SETS, types=types)
    ds = PerturbationDataset(data)
    rows = [4, 0, 2, 5]
    check_batch(ds.__getitems__(rows), data, rows)
    check_batch(collate_perturbations([ds[i] for i in rows], num_base_genes=10), data, rows)
    check_batch(ds.collate([ds[i] for i in rows]), data, rows)
    # a dataset over a subset of records indexes into it
    sub = PerturbationDataset(data, indices=[5, 3, 1])
    check_batch(sub.__getitems__([0, 2]), data, [5, 1])
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=lambda b: b)
    first = next(iter(loader))
    check_batch(first, data, [0, 1, 2, 3])


def test_heterologous_variant_grouping():
    # base genome of 10 genes; 10 = GFP, 11 = RFP
    sets = [[0, 10], [1, 11], [10, 2], [3], [11, 10, 4]]
    types = [[D, A], [D, A], [A, D], [D], [A, A, D]]
    data = make_data(sets, types=types, heterologous={"GFP": GFP, "RFP": RFP})
    ds = PerturbationDataset(data)
    b = ds.__getitems__(list(range(5)))
    assert b.variants == ((), (10,), (11,), (10, 11))
    assert b.variant.tolist() == [1, 2, 1, 0, 3]
    # added genes are renumbered N + position in their variant's tuple
    assert b.sets() == [[0, 10], [1, 10], [10, 2], [3], [11, 10, 4]]
    assert [tuple(f.shape) for f in b.added_features[1:]] == [(1, 87), (1, 87), (2, 87)]
    torch.testing.assert_close(b.added_features[2][0], torch.from_numpy(ds.het_features[1]))
    c = collate_perturbations([ds[i] for i in range(5)], 10, ds.het_features)
    assert c.variants == b.variants and c.sets() == b.sets()


def test_random_split_seeded_and_proportional():
    s = random_split(1000, val=0.1, test=0.2, seed=5)
    assert np.array_equal(s, random_split(1000, val=0.1, test=0.2, seed=5))
    assert not np.array_equal(s, random_split(1000, val=0.1, test=0.2, seed=6))
    assert np.bincount(s).tolist() == [700, 100, 200]
    with pytest.raises(ValueError):
        random_split(10, val=0.6, test=0.5)


def test_gene_holdout_loose():
    data = make_data(random_sets(400, 60), n_genes=60)
    split, held = gene_holdout_split(data, test_genes=0.1, val_genes=0.1, seed=1)
    assert len(held["test"]) == 6 and len(held["val"]) == 6
    assert not set(held["test"]) & set(held["val"])
    for r in range(len(data)):
        genes = set(data.record(r)[0].tolist())
        has_test = bool(genes & set(held["test"].tolist()))
        if split[r] == SPLITS["test"]:
            assert has_test
        elif split[r] == SPLITS["train"]:
            assert not has_test and not genes & set(held["val"].tolist())
        else:
            assert split[r] == SPLITS["val"] and not has_test
    assert (split == SPLITS["test"]).sum() > 0 and (split == SPLITS["train"]).sum() > 0


def test_gene_holdout_strict():
    data = make_data(random_sets(400, 60), n_genes=60)
    split, held = gene_holdout_split(data, test_genes=0.3, val_genes=0.2, strict=True, seed=2)
    test_genes, val_genes = set(held["test"].tolist()), set(held["val"].tolist())
    train_genes = set()
    for r in range(len(data)):
        genes = set(data.record(r)[0].tolist())
        if split[r] == SPLITS["test"]:
            assert genes <= test_genes
        elif split[r] == SPLITS["val"]:
            assert genes <= val_genes
        elif split[r] == SPLITS["train"]:
            train_genes |= genes
    assert not train_genes & (test_genes | val_genes)
    assert (split == -1).sum() > 0 and (split == SPLITS["test"]).sum() > 0


def test_split_overlap_counts_shared_and_conflicting_sets_like_a_dictionary_would():
    """The vectorised train/test overlap equals a plain dictionary over (sorted gene/type pairs, condition)."""
    from cellformer.data.dataset import split_overlap

    def reference(data):
        rows: dict = {}
        for r in np.flatnonzero((data.split == 0) | (data.split == 2)).tolist():
            g, t, _ = data.record(r)
            key = (tuple(sorted(zip(g.tolist(), t.tolist(), strict=True))), data.condition[r] if data.condition else "")
            rows.setdefault(key, [[], []])[0 if data.split[r] == 0 else 1].append(r)
        shared = [(tr, te) for tr, te in rows.values() if tr and te]
        conflicting = sum(
            not all(np.array_equal(data.phenotypes[tr + te][0], v, equal_nan=True) for v in data.phenotypes[tr + te])
            for tr, te in shared
        )
        return len(shared), conflicting

    rng = np.random.default_rng(0)
    for trial in range(4):
        sets = [rng.choice(12, rng.integers(1, 6), replace=False) for _ in range(400)]  # sizes 1-5: both key kinds
        sizes = [len(x) for x in sets]
        y = rng.integers(0, 2, (400, 2)).astype(np.float32)
        y[rng.random(400) < 0.3, 1] = np.nan
        data = PerturbationData(genes=[f"G{i}" for i in range(12)], offsets=np.r_[0, np.cumsum(sizes)],
                                gene_index=np.concatenate(sets), types=rng.integers(1, 3, sum(sizes)), phenotypes=y,
                                phenotype_names=["a", "b"], split=rng.integers(0, 3, 400).astype(np.int8),
                                condition=list(rng.choice(["X", "Y"], 400)) if trial % 2 else None)  # fmt: skip
        out = split_overlap(data)
        assert (out.shared, out.conflicting) == reference(data) and out.conflicting > 0
        assert len(out.examples) == min(3, out.conflicting)
