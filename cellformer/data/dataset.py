"""Perturbation datasets: variable-length gene sets with perturbation types and named phenotypes.

On disk (HDF5, see ``data/README.md``)::

    /genes                 (N,)  utf-8    gene ids the indices refer to (the genome's order)
    /records/offsets       (R+1,) int64   record r owns entries offsets[r]:offsets[r+1]
    /records/genes         (nnz,) int32   gene index of each perturbed gene
    /records/types         (nnz,) int8    PerturbationType of each entry
    /records/phenotypes    (R, P) float32 NaN = not measured
    /records/split         (R,)  int8     0 train, 1 val, 2 test, -1 unassigned   (optional)
    /records/condition_code (R,) int32   condition of each record, an index into:    (optional)
/records/condition_names (C,) utf-8   the distinct conditions, e.g. DMA30
                                     (files of older versions: /records/condition (R,) utf-8)
    /heterologous/names, /heterologous/sequences   added genes (index >= N)        (optional)
    /meta/...              free-form provenance (e.g. the simulator's ground truth); arrays named
                           record_* are per record and follow the records in subset()
    attrs: phenotype_names (json list), genome_hash, genome_name, description, format_version

In memory a batch is compact (CSR style), never a dense N-length tensor per sample: see
:class:`PerturbationBatch`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from cellformer.errors import UserError, unknown_name_error

FORMAT_VERSION = 1
SPLITS = {"train": 0, "val": 1, "test": 2}
SPLIT_NAMES = {v: k for k, v in SPLITS.items()}


class PerturbationType(IntEnum):
    """Per-gene perturbation type ``m_i``. ``PRESENT`` (0) is every gene not in the set S."""

    PRESENT = 0
    DELETION = 1
    KNOCKDOWN = 2
    OVEREXPRESSION = 3
    ADDITION = 4

    @classmethod
    def parse(cls, name: str) -> PerturbationType:
        key = name.strip().upper()
        if key not in cls.__members__ or key == "PRESENT":
            allowed = ", ".join(m.name.lower() for m in cls if m is not cls.PRESENT)
            raise UserError(f"unknown perturbation type {name!r}; expected one of {allowed}")
        return cls[key]


NUM_PERTURBATION_TYPES = len(PerturbationType)


class Conditions(Sequence):
    """Per-record conditions (e.g. ``DMA30``) as ``codes`` (R,) int32 into the distinct ``names``.

    A screen has a handful of conditions and millions of records, so a record holds a small integer, not a
    string. Behaves as a read-only sequence of strings (``len``, indexing, iteration, ``==`` with a list);
    indexing with an array of rows returns the :class:`Conditions` of those rows.
    """

    def __init__(self, codes: np.ndarray, names: Sequence[str]):
        self.codes = np.asarray(codes, dtype=np.int32)
        self.names = tuple(str(n) for n in names)
        if self.codes.ndim != 1:
            raise ValueError(f"condition codes must be one-dimensional, got shape {self.codes.shape}")
        if len(self.codes) and (self.codes.min() < 0 or self.codes.max() >= len(self.names)):
            raise ValueError(f"condition codes must lie in [0, {len(self.names)})")

    @classmethod
    def coerce(cls, values: Conditions | Sequence[str]) -> Conditions:
        """``values`` as :class:`Conditions` (a sequence of strings is coded in order of first appearance)."""
        if isinstance(values, Conditions):
            return values
        values = [str(v) for v in values]
        lookup = {name: i for i, name in enumerate(dict.fromkeys(values))}
        return cls(np.fromiter(map(lookup.__getitem__, values), np.int32, len(values)), list(lookup))

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, index):
        if isinstance(index, int | np.integer):
            return self.names[self.codes[index]]
        return Conditions(self.codes[index], self.names)

    def __iter__(self):
        names = self.names
        return (names[c] for c in self.codes.tolist())

    def __eq__(self, other) -> bool:
        if isinstance(other, Conditions | Sequence) and not isinstance(other, str):
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"Conditions({len(self)} records, names={list(self.names)})"


@dataclass
class PerturbationData:
    """A whole dataset in memory (CSR arrays). The h5 file is its serialised form."""

    genes: list[str]
    offsets: np.ndarray  # (R+1,) int64
    gene_index: np.ndarray  # (nnz,) int32
    types: np.ndarray  # (nnz,) int8
    phenotypes: np.ndarray  # (R, P) float32
    phenotype_names: list[str]
    split: np.ndarray | None = None  # (R,) int8
    condition: Conditions | None = None  # a list of strings is accepted and coded
    heterologous: dict[str, str] = field(default_factory=dict)
    genome_hash: str = ""
    genome_name: str = ""
    description: str = ""
    meta: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        self.gene_index = np.asarray(self.gene_index, dtype=np.int32)
        self.types = np.asarray(self.types, dtype=np.int8)
        self.phenotypes = np.asarray(self.phenotypes, dtype=np.float32)
        r = len(self.offsets) - 1
        if self.phenotypes.shape != (r, len(self.phenotype_names)):
            raise ValueError(
                f"phenotypes have shape {self.phenotypes.shape}, expected ({r}, {len(self.phenotype_names)})"
            )
        if self.offsets[0] != 0 or self.offsets[-1] != len(self.gene_index) or np.any(np.diff(self.offsets) < 0):
            raise ValueError("offsets must start at 0, be non-decreasing and end at the number of entries")
        if len(self.types) != len(self.gene_index):
            raise ValueError("types and gene_index differ in length")
        if len(set(self.phenotype_names)) != len(self.phenotype_names):
            raise ValueError(f"duplicate phenotype names: {self.phenotype_names}")
        n_total = len(self.genes) + len(self.heterologous)
        if len(self.gene_index) and (self.gene_index.min() < 0 or self.gene_index.max() >= n_total):
            raise ValueError(f"gene indices must lie in [0, {n_total})")
        if self.split is not None:
            self.split = np.asarray(self.split, dtype=np.int8)
        if self.condition is not None:
            self.condition = Conditions.coerce(self.condition)
            if len(self.condition) != r:
                raise ValueError(f"{len(self.condition)} conditions for {r} records")

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def set_sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def record(self, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(gene indices, types, phenotypes)`` of record ``r``."""
        a, b = self.offsets[r], self.offsets[r + 1]
        return self.gene_index[a:b], self.types[a:b], self.phenotypes[r]

    def phenotype_index(self, name: str) -> int:
        """Column of a named phenotype; unknown names raise with the available list."""
        if name not in self.phenotype_names:
            raise unknown_name_error("phenotype", name, self.phenotype_names)
        return self.phenotype_names.index(name)

    def member_positions(self, rows: np.ndarray) -> np.ndarray:
        """Positions in ``gene_index`` / ``types`` of the members of records ``rows``, record after record."""
        rows = np.asarray(rows, dtype=np.int64)
        sizes = self.set_sizes[rows]
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        # entry j of the k-th record comes from entry offsets[rows[k]] + j
        return np.arange(offsets[-1], dtype=np.int64) + np.repeat(self.offsets[rows] - offsets[:-1], sizes)

    def subset(self, rows: np.ndarray) -> PerturbationData:
        """A new dataset with the given records (in that order)."""
        rows = np.asarray(rows, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(self.set_sizes[rows])])
        take = self.member_positions(rows)
        return PerturbationData(
            genes=self.genes,
            offsets=offsets,
            gene_index=self.gene_index[take],
            types=self.types[take],
            phenotypes=self.phenotypes[rows],
            phenotype_names=list(self.phenotype_names),
            split=None if self.split is None else self.split[rows],
            condition=None if self.condition is None else self.condition[rows],
            heterologous=dict(self.heterologous),
            genome_hash=self.genome_hash,
            genome_name=self.genome_name,
            description=self.description,
            meta={k: (v[rows] if k.startswith("record_") else v) for k, v in self.meta.items()},
            attrs=dict(self.attrs),
        )

    def split_indices(self, name: str) -> np.ndarray:
        """Record indices of split ``train``/``val``/``test`` (an error when no split is stored)."""
        if self.split is None:
            raise ValueError("this dataset stores no split; make one with cellformer.data.splits")
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {list(SPLITS)}")
        return np.flatnonzero(self.split == SPLITS[name])

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Write the HDF5 file (gzip-compressed arrays) atomically.

        The data goes to ``<path>.<pid>.tmp`` first, which then replaces ``path``; a failed or interrupted
        write removes it. An existing ``path`` is untouched until the new file is complete, and processes that
        save the same file at once (parallel jobs building a dataset on first use) never share a
        temporary file: the last complete write wins.
        """
        path = Path(path)
        check_output_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.tmp")
        try:
            self._write(tmp)
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _write(self, tmp: Path) -> None:
        str_dt = h5py.string_dtype("utf-8")
        with h5py.File(tmp, "w") as f:
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["phenotype_names"] = json.dumps(self.phenotype_names)
            f.attrs["genome_hash"] = self.genome_hash
            f.attrs["genome_name"] = self.genome_name
            f.attrs["description"] = self.description
            for k, v in self.attrs.items():
                f.attrs[k] = v
            f.create_dataset("genes", data=np.array(self.genes, dtype=object), dtype=str_dt)
            g = f.create_group("records")
            kw = {"compression": "gzip", "compression_opts": 4}
            g.create_dataset("offsets", data=self.offsets, **kw)
            g.create_dataset("genes", data=self.gene_index, **kw)
            g.create_dataset("types", data=self.types, **kw)
            g.create_dataset("phenotypes", data=self.phenotypes, **kw)
            if self.split is not None:
                g.create_dataset("split", data=self.split, **kw)
            if self.condition is not None:  # as codes into the distinct conditions (a screen has a handful)
                cond = Conditions.coerce(self.condition)
                g.create_dataset("condition_code", data=cond.codes, **kw)
                g.create_dataset("condition_names", data=np.array(cond.names, dtype=object), dtype=str_dt)
            if self.heterologous:
                h = f.create_group("heterologous")
                h.create_dataset("names", data=np.array(list(self.heterologous), dtype=object), dtype=str_dt)
                h.create_dataset(
                    "sequences", data=np.array(list(self.heterologous.values()), dtype=object), dtype=str_dt
                )
            m = f.create_group("meta")
            for k, v in self.meta.items():
                v = np.asarray(v)
                if v.dtype.kind in "UO":
                    m.create_dataset(k, data=v.astype(object), dtype=str_dt)
                else:
                    m.create_dataset(k, data=v, **kw)

    @classmethod
    def load(cls, path: str | Path) -> PerturbationData:
        """Read a file written by :meth:`save`.

        A missing, empty, truncated or foreign file raises a :class:`~cellformer.errors.UserError` naming it.
        """
        path = Path(path)
        if not path.exists():
            raise UserError(f"dataset {path} does not exist (build it with `cellformer data simulate`)")
        if path.is_dir():
            raise UserError(f"dataset {path} is a directory, not an HDF5 file")
        if path.stat().st_size == 0:
            raise UserError(f"dataset {path} is empty")
        if not h5py.is_hdf5(path):
            raise UserError(f"dataset {path} is not an HDF5 file (expected a dataset written by cellformer)")
        try:
            return cls._read(path)
        except UserError:
            raise
        except (OSError, KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"dataset {path} is truncated or not a cellformer dataset ({first})") from None

    @classmethod
    def _read(cls, path: Path) -> PerturbationData:
        with h5py.File(path, "r") as f:
            version = int(f.attrs.get("format_version", -1))
            if version != FORMAT_VERSION:
                raise UserError(f"dataset {path}: format_version {version}, this cellformer reads {FORMAT_VERSION}")
            r = f["records"]
            het = {}
            if "heterologous" in f:
                names = [s.decode() if isinstance(s, bytes) else s for s in f["heterologous/names"][()]]
                seqs = [s.decode() if isinstance(s, bytes) else s for s in f["heterologous/sequences"][()]]
                het = dict(zip(names, seqs, strict=True))
            meta = {}
            for k, v in f["meta"].items():
                arr = v[()]
                if arr.dtype.kind == "O":
                    arr = np.array([s.decode() if isinstance(s, bytes) else s for s in arr])
                meta[k] = arr
            known = {"format_version", "phenotype_names", "genome_hash", "genome_name", "description"}
            return cls(
                genes=[s.decode() if isinstance(s, bytes) else s for s in f["genes"][()]],
                offsets=r["offsets"][()],
                gene_index=r["genes"][()],
                types=r["types"][()],
                phenotypes=r["phenotypes"][()],
                phenotype_names=json.loads(f.attrs["phenotype_names"]),
                split=r["split"][()] if "split" in r else None,
                condition=_read_condition(r),
                heterologous=het,
                genome_hash=str(f.attrs.get("genome_hash", "")),
                genome_name=str(f.attrs.get("genome_name", "")),
                description=str(f.attrs.get("description", "")),
                meta=meta,
                attrs={k: str(v) for k, v in f.attrs.items() if k not in known},
            )


def _read_condition(records) -> Conditions | None:
    """The per-record conditions of an HDF5 ``records`` group: codes into distinct names, or (files written
    before the codes) one string per record; None when the file has none."""
    if "condition_code" in records:
        names = [s.decode() if isinstance(s, bytes) else s for s in records["condition_names"][()]]
        return Conditions(records["condition_code"][()], names)
    if "condition" in records:
        return Conditions.coerce([s.decode() if isinstance(s, bytes) else s for s in records["condition"][()]])
    return None


@dataclass
class SplitOverlap:
    """Gene sets measured in both the train and the test split.

    ``shared``: distinct gene sets (same genes, types and condition) with records in both splits;
    ``conflicting``: those whose train and test values differ; ``examples``: a few of the latter.
    """

    shared: int = 0
    conflicting: int = 0
    examples: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the import summary and ``data info`` (empty when nothing is shared)."""
        if not self.shared:
            return ""
        text = f"train/test overlap: {self.shared} gene sets have records in both train and test"
        if self.conflicting:
            text += f", {self.conflicting} of them with different values (e.g. {'; '.join(self.examples)})"
        return text


def record_keys(data: PerturbationData, rows: np.ndarray) -> np.ndarray:
    """One int64 key per record of ``rows``: equal exactly when two records have the same genes with the same
    types (in any order) and the same condition. Sets of up to three genes are encoded exactly; larger ones
    by a 64-bit hash of their sorted (gene, type) codes (a collision is a ~2⁻⁶⁴ event per pair of records).
    With several conditions, hashed keys are renumbered within the call: compare keys of one call only."""
    rows = np.asarray(rows, dtype=np.int64)
    sizes = data.set_sizes[rows]
    n_codes = (len(data.genes) + len(data.heterologous)) * NUM_PERTURBATION_TYPES
    codes = data.gene_index.astype(np.int64) * NUM_PERTURBATION_TYPES + data.types.astype(np.int64)
    keys = np.zeros(len(rows), dtype=np.int64)
    for k in np.flatnonzero(np.bincount(sizes)):
        sel = np.flatnonzero(sizes == k)
        members = np.sort(codes[data.offsets[rows[sel]][:, None] + np.arange(k)], axis=1)
        if k <= 3 and n_codes ** max(k, 1) < 2**62 // 64:
            key = np.zeros(len(sel), dtype=np.int64)
            for j in range(k):
                key = key * n_codes + members[:, j]
            keys[sel] = key * 4 + k  # the size keeps sets of different sizes apart
        else:
            h = np.full(len(sel), k, dtype=np.uint64)
            with np.errstate(over="ignore"):
                for j in range(k):
                    h = (h ^ members[:, j].astype(np.uint64)) * np.uint64(0x100000001B3)
                    h ^= h >> np.uint64(29)
            keys[sel] = (h | np.uint64(1 << 63)).view(np.int64)  # negative: apart from the exact keys
    if data.condition is not None and len(data.condition.names) > 1:
        cond, n_cond = data.condition.codes[rows].astype(np.int64), len(data.condition.names)
        if len(keys) and (keys.min() < 0 or keys.max() >= 2**62 // n_cond):  # hashed keys: renumber them first
            keys = np.unique(keys, return_inverse=True)[1].astype(np.int64).ravel()
        keys = keys * n_cond + cond
    return keys


def split_overlap(data: PerturbationData, max_examples: int = 3) -> SplitOverlap:
    """The gene sets (with types and condition) that have records in both the train and the test split
    (vectorised: sorted record keys, :func:`record_keys`)."""
    out = SplitOverlap()
    if data.split is None:
        return out
    rows = np.flatnonzero((data.split == SPLITS["train"]) | (data.split == SPLITS["test"]))
    keys = record_keys(data, rows)
    train = data.split[rows] == SPLITS["train"]
    # sort + binary search: np.intersect1d goes through a hash-based np.unique that is ~5x slower at 20 M keys
    in_train, in_test = np.sort(keys[train]), np.sort(keys[~train])
    pos = np.minimum(np.searchsorted(in_train, in_test), max(len(in_train) - 1, 0))
    shared = in_test[in_train[pos] == in_test] if len(in_train) else in_test[:0]
    shared = shared[np.r_[True, shared[1:] != shared[:-1]]] if len(shared) else shared
    out.shared = len(shared)
    if not len(shared):
        return out
    sel = np.isin(keys, shared)
    r, k = rows[sel], keys[sel]
    order = np.argsort(k, kind="stable")
    r, k = r[order], k[order]
    start = np.r_[0, np.flatnonzero(k[1:] != k[:-1]) + 1]
    group = np.repeat(np.arange(len(start)), np.diff(np.r_[start, len(k)]))
    values = data.phenotypes[r]
    first = values[start][group]
    same = (values == first) | (np.isnan(values) & np.isnan(first))
    conflict = ~np.logical_and.reduceat(same.all(axis=1), start)
    out.conflicting = int(conflict.sum())
    names = list(data.genes) + list(data.heterologous)
    for g in np.flatnonzero(conflict)[:max_examples]:
        members, _, _ = data.record(int(r[start[g]]))
        out.examples.append(";".join(names[i] for i in sorted(members.tolist())))
    return out


def check_output_path(path: str | Path, inputs: Sequence[str | Path] = (), what: str = "--out") -> Path:
    """Refuse an output path that is a directory or one of the command's input files (:class:`UserError`)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory; give a file name")
    for src in inputs:
        if src is not None and Path(src).exists() and path.exists() and path.resolve() == Path(src).resolve():
            raise UserError(f"{what} {path} is the input file itself; write to another file")
    return path


# ---------------------------------------------------------------------- torch side
@dataclass
class PerturbationBatch:
    """A batch of B perturbation records in CSR form.

    Attributes:
        gene_index: (nnz,) long, perturbed genes of all samples, concatenated.
        types: (nnz,) long, their :class:`PerturbationType`.
        ptr: (B+1,) long, sample b owns entries ``ptr[b]:ptr[b+1]``.
        batch: (nnz,) long, sample id of each entry (PyG style).
        y: (B, P) float, NaN where not measured.
        index: (B,) long, record indices in the dataset (for joining predictions back).
        variant: (B,) long, genome variant of each sample (0 = the base genome).
        variants: tuple of added-gene tuples per variant; ``variants[0] == ()``. The tuples hold the
            dataset's heterologous indices (``N + h``); in ``gene_index`` an added gene is renumbered
            ``N + position in its variant's tuple`` (the token position in that variant's genome).
        added_features: per variant, the (n_added, F) sequence features of its added genes.
    """

    gene_index: torch.Tensor
    types: torch.Tensor
    ptr: torch.Tensor
    batch: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    variant: torch.Tensor
    variants: tuple[tuple[int, ...], ...] = ((),)
    added_features: tuple[torch.Tensor, ...] = ()

    @property
    def num_samples(self) -> int:
        return int(self.ptr.numel() - 1)

    def __len__(self) -> int:
        return self.num_samples

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PerturbationBatch:
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return PerturbationBatch(
            move(self.gene_index),
            move(self.types),
            move(self.ptr),
            move(self.batch),
            move(self.y),
            move(self.index),
            move(self.variant),
            self.variants,
            tuple(move(f) for f in self.added_features),
        )

    def pin_memory(self) -> PerturbationBatch:
        return PerturbationBatch(
            self.gene_index.pin_memory(),
            self.types.pin_memory(),
            self.ptr.pin_memory(),
            self.batch.pin_memory(),
            self.y.pin_memory(),
            self.index.pin_memory(),
            self.variant.pin_memory(),
            self.variants,
            self.added_features,
        )

    def sets(self) -> list[list[int]]:
        """The gene index sets as Python lists (for tests and debugging)."""
        p = self.ptr.tolist()
        g = self.gene_index.tolist()
        return [g[p[b] : p[b + 1]] for b in range(self.num_samples)]


class PerturbationDataset(Dataset):
    """Torch dataset over a :class:`PerturbationData` (optionally a subset of its records).

    Items are ``(record index, gene indices, types, phenotypes)`` as numpy arrays; use
    :func:`collate_perturbations` (or :meth:`collate`) to batch them.
    """

    def __init__(self, data: PerturbationData | str | Path, indices: Sequence[int] | None = None):
        self.data = data if isinstance(data, PerturbationData) else PerturbationData.load(data)
        self.indices = np.arange(len(self.data)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.num_base_genes = len(self.data.genes)
        self.het_features = heterologous_features(self.data.heterologous)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        r = int(self.indices[i])
        g, t, y = self.data.record(r)
        return r, g, t, y

    def __getitems__(self, idx: list[int]) -> PerturbationBatch:
        """Batched fetch (used by ``DataLoader`` automatically): vectorised, no per-item Python work."""
        return self.collate_rows(self.indices[np.asarray(idx, dtype=np.int64)])

    def collate_rows(self, rows: np.ndarray) -> PerturbationBatch:
        """Build a batch straight from record indices (vectorised CSR gather)."""
        d = self.data
        starts, ends = d.offsets[rows], d.offsets[rows + 1]
        sizes = ends - starts
        ptr = np.concatenate([[0], np.cumsum(sizes)])
        take = np.repeat(starts - ptr[:-1], sizes) + np.arange(ptr[-1])
        return make_batch(
            rows, d.gene_index[take], d.types[take], ptr, d.phenotypes[rows], self.num_base_genes, self.het_features
        )

    def collate(self, items) -> PerturbationBatch:
        return collate_perturbations(items, self.num_base_genes, self.het_features)


def heterologous_features(sequences: dict[str, str]) -> np.ndarray | None:
    """(H, F) sequence features of a dataset's heterologous genes, in table order (None if none)."""
    if not sequences:
        return None
    from cellformer.genome.sequence import sequence_features

    return np.stack([sequence_features(s, n) for n, s in sequences.items()])


def identity_collate(batch):
    """Collate for loaders whose dataset already returns a batch via ``__getitems__``."""
    return batch


def collate_perturbations(
    items, num_base_genes: int | None = None, het_features: np.ndarray | None = None
) -> PerturbationBatch:
    """Collate ``(record, genes, types, phenotypes)`` items into a :class:`PerturbationBatch`."""
    if isinstance(items, PerturbationBatch):
        return items
    rows = np.array([it[0] for it in items], dtype=np.int64)
    sizes = np.array([len(it[1]) for it in items], dtype=np.int64)
    ptr = np.concatenate([[0], np.cumsum(sizes)])
    genes = np.concatenate([it[1] for it in items]) if items else np.zeros(0, np.int32)
    types = np.concatenate([it[2] for it in items]) if items else np.zeros(0, np.int8)
    y = np.stack([it[3] for it in items]) if items else np.zeros((0, 0), np.float32)
    n = int(genes.max()) + 1 if num_base_genes is None and len(genes) else (num_base_genes or 0)
    return make_batch(rows, genes, types, ptr, y, n, het_features)


def make_batch(rows, genes, types, ptr, y, num_base_genes: int, het_features=None) -> PerturbationBatch:
    """A :class:`PerturbationBatch` from CSR arrays (record ids, genes, types, ptr, phenotypes).

    Genes ``>= num_base_genes`` are heterologous (row ``g - num_base_genes`` of ``het_features``); samples
    are grouped into genome variants by the set of added genes they carry.
    """
    genes = np.asarray(genes, dtype=np.int64)
    sizes = np.diff(ptr)
    batch_ids = np.repeat(np.arange(len(sizes)), sizes)
    variant = np.zeros(len(sizes), dtype=np.int64)
    variants: list[tuple[int, ...]] = [()]
    added = genes >= num_base_genes
    if added.any():
        # group samples by the set of heterologous genes they carry; renumber added genes per variant
        keys: dict[tuple[int, ...], int] = {(): 0}
        for b in range(len(sizes)):
            seg = genes[ptr[b] : ptr[b + 1]]
            key = tuple(sorted(int(g) for g in seg if g >= num_base_genes))
            variant[b] = keys.setdefault(key, len(keys))
            for pos, g in enumerate(key):
                seg[seg == g] = num_base_genes + pos
            genes[ptr[b] : ptr[b + 1]] = seg
        variants = list(keys)
    added_features: list[torch.Tensor] = []
    for key in variants:
        if not key:
            added_features.append(torch.zeros(0, 0))
        elif het_features is None:
            raise ValueError("batch has heterologous genes but the dataset stores no sequences for them")
        else:
            added_features.append(torch.from_numpy(het_features[[g - num_base_genes for g in key]]))
    return PerturbationBatch(
        gene_index=torch.from_numpy(genes),
        types=torch.from_numpy(np.asarray(types, dtype=np.int64)),
        ptr=torch.from_numpy(np.asarray(ptr, dtype=np.int64)),
        batch=torch.from_numpy(batch_ids),
        y=torch.from_numpy(np.asarray(y, dtype=np.float32)),
        index=torch.from_numpy(np.asarray(rows, dtype=np.int64)),
        variant=torch.from_numpy(variant),
        variants=tuple(variants),
        added_features=tuple(added_features),
    )
