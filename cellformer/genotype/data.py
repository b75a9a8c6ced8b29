"""Genotype datasets: n samples (segregants) genotyped at L loci and phenotyped for P traits.

On disk (HDF5, gzip-compressed, see ``data/README.md``)::

    /genotypes            (n, L) int8     -1 / +1 alleles, 0 = missing
    /phenotypes           (n, P) float32  NaN = not measured
    /phenotype_names      (P,)   utf-8
    /samples/ids          (n,)   utf-8    unique
    /samples/split        (n,)   int8     0 train, 1 val, 2 test, -1 unassigned   (optional)
    /samples/fold         (n,)   int16    cross-validation fold                   (optional)
    /loci/ids             (L,)   utf-8    unique marker ids
    /loci/chrom           (L,)   int16    chromosome number (1..16 for yeast; 0 = unknown)
    /loci/pos             (L,)   int64    bp position (-1 = unknown)
    /loci/gene            (L,)   utf-8    nearest gene ("" = unknown)
    /truth/...            simulator ground truth (absent for real data); keys starting with
                          ``sample_`` are per sample and follow the samples in subset()
    attrs: format = "cellformer-genotypes", version = 1, plus free-form provenance strings; ``alleles``
           (JSON) records how the source's calls were coded (see :attr:`GenotypeData.alleles`)

The file is written to a temporary name next to the target and renamed into place, so an interrupted
write never leaves a half-written dataset behind.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from cellformer.data.dataset import SPLIT_NAMES, SPLITS
from cellformer.errors import UserError

FORMAT = "cellformer-genotypes"
VERSION = 1
_RESERVED_ATTRS = {"format", "version"}
_STR = h5py.string_dtype("utf-8")
_GZ = {"compression": "gzip", "compression_opts": 4}


def _first_duplicate(items: list[str]) -> str | None:
    seen: set[str] = set()
    for x in items:
        if x in seen:
            return x
        seen.add(x)
    return None


@dataclass
class Loci:
    """The markers (columns of the genotype matrix): id, chromosome, position and nearest gene."""

    ids: list[str]
    chrom: np.ndarray  # (L,) int16, 0 = unknown
    pos: np.ndarray  # (L,) int64, -1 = unknown
    gene: list[str]  # nearest gene, "" = unknown

    def __post_init__(self) -> None:
        self.ids = [str(x) for x in self.ids]
        n = len(self.ids)
        self.chrom = np.asarray(self.chrom, dtype=np.int16).reshape(-1)
        self.pos = np.asarray(self.pos, dtype=np.int64).reshape(-1)
        self.gene = [str(x) for x in self.gene]
        for name, length in (("chrom", len(self.chrom)), ("pos", len(self.pos)), ("gene", len(self.gene))):
            if length != n:
                raise UserError(f"loci: {n} ids but {length} {name} values")
        dup = _first_duplicate(self.ids)
        if dup is not None:
            raise UserError(f"loci: marker id {dup!r} appears more than once (marker ids must be unique)")
        if any(not x for x in self.ids):
            raise UserError("loci: empty marker id")

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def unknown(cls, n: int, prefix: str = "locus_") -> Loci:
        """``n`` loci named ``locus_0000``… with unknown chromosome, position and gene."""
        width = max(4, len(str(max(n - 1, 0))))
        return cls(
            ids=[f"{prefix}{i:0{width}d}" for i in range(n)],
            chrom=np.zeros(n, dtype=np.int16),
            pos=np.full(n, -1, dtype=np.int64),
            gene=[""] * n,
        )

    def subset(self, cols) -> Loci:
        """The loci at the given column indices (in that order)."""
        cols = np.asarray(cols, dtype=np.int64)
        return Loci(
            ids=[self.ids[i] for i in cols],
            chrom=self.chrom[cols],
            pos=self.pos[cols],
            gene=[self.gene[i] for i in cols],
        )


@dataclass
class GenotypeData:
    """A genotype → phenotype dataset in memory; the HDF5 file (module docstring) is its serialised form.

    Attributes:
        genotypes: (n, L) int8 in {-1, 0, +1}; 0 = missing.
        phenotypes: (n, P) float32; NaN = not measured (P may be 0, e.g. for prediction inputs).
        phenotype_names: P unique names.
        loci: the L markers.
        sample_ids: n unique ids.
        split: (n,) int8 values of :data:`cellformer.data.dataset.SPLITS` (-1 unassigned), or None.
        fold: (n,) int16 cross-validation fold, or None.
        truth: the simulator's ground truth (numpy arrays and scalars; see
            :func:`cellformer.genotype.simulate.simulate_genotypes`), None for real data.
        attrs: free-form provenance strings (source file, simulator parameters…).
    """

    genotypes: np.ndarray
    phenotypes: np.ndarray
    phenotype_names: list[str]
    loci: Loci
    sample_ids: list[str]
    split: np.ndarray | None = None
    fold: np.ndarray | None = None
    truth: dict | None = None
    attrs: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        g = np.asarray(self.genotypes)
        if g.ndim != 2:
            raise UserError(f"genotypes must be a 2-d (samples × loci) array, got shape {g.shape}")
        if g.dtype != np.int8:
            if g.dtype.kind == "f" and not np.isfinite(g).all():
                raise UserError("genotypes contain NaN or infinite values (use 0 for missing)")
            if g.dtype.kind not in "iub" and (g.size and not np.array_equal(g, np.round(g))):
                raise UserError("genotypes must be -1, 0 (missing) or +1; found non-integer values")
            if g.size and (g.min() < -1 or g.max() > 1):
                raise UserError(f"genotypes must be -1, 0 (missing) or +1; found values in [{g.min()}, {g.max()}]")
            g = g.astype(np.int8)
        elif g.size and (g.min() < -1 or g.max() > 1):
            bad = np.unique(g[(g < -1) | (g > 1)])[:5].tolist()
            raise UserError(f"genotypes must be -1, 0 (missing) or +1; found {bad}")
        self.genotypes = g
        n, L = g.shape
        ph = np.asarray(self.phenotypes, dtype=np.float32)
        if ph.ndim == 1 and n == len(ph):
            ph = ph.reshape(n, 1)
        if ph.ndim != 2 or ph.shape[0] != n:
            raise UserError(f"phenotypes have shape {ph.shape}; expected ({n}, P) for {n} genotyped samples")
        if np.isinf(ph).any():
            raise UserError("phenotypes contain infinite values (use NaN for 'not measured')")
        self.phenotypes = ph
        self.phenotype_names = [str(x) for x in self.phenotype_names]
        if len(self.phenotype_names) != ph.shape[1]:
            raise UserError(f"{ph.shape[1]} phenotype columns but {len(self.phenotype_names)} phenotype names")
        dup = _first_duplicate(self.phenotype_names)
        if dup is not None:
            raise UserError(f"phenotype name {dup!r} appears more than once")
        if not isinstance(self.loci, Loci):
            raise UserError("loci must be a cellformer.genotype.Loci")
        if len(self.loci) != L:
            raise UserError(f"genotypes have {L} loci (columns) but the loci table has {len(self.loci)}")
        self.sample_ids = [str(x) for x in self.sample_ids]
        if len(self.sample_ids) != n:
            raise UserError(f"{n} genotyped samples but {len(self.sample_ids)} sample ids")
        dup = _first_duplicate(self.sample_ids)
        if dup is not None:
            raise UserError(f"sample id {dup!r} appears more than once (sample ids must be unique)")
        if self.split is not None:
            s = np.asarray(self.split)
            if s.shape != (n,):
                raise UserError(f"split has shape {s.shape}; expected ({n},)")
            allowed = set(SPLITS.values()) | {-1}
            bad = sorted(set(np.unique(s).tolist()) - allowed)
            if bad:
                raise UserError(f"split values must be 0 (train), 1 (val), 2 (test) or -1 (unassigned); found {bad}")
            self.split = s.astype(np.int8)
        if self.fold is not None:
            f = np.asarray(self.fold)
            if f.shape != (n,):
                raise UserError(f"fold has shape {f.shape}; expected ({n},)")
            self.fold = f.astype(np.int16)
        self.attrs = {str(k): str(v) for k, v in (self.attrs or {}).items()}

    def __len__(self) -> int:
        return int(self.genotypes.shape[0])

    @property
    def alleles(self) -> dict[str, str] | None:
        """How the source's allele calls map to the stored ±1: ``{"coding": "letters" | "01" | "pm1", "plus":
        the call stored as +1, "minus": the call stored as -1}``; None when unknown.

        Imports record it (attribute ``alleles``); for files written before, it is read from the import
        note (``allele_coding``); simulated data (which has a ground truth) is ±1 as it stands.
        """
        raw = self.attrs.get("alleles")
        if raw:
            try:
                value = json.loads(raw)
            except ValueError:
                value = None
            if isinstance(value, dict) and {"coding", "plus", "minus"} <= set(value):
                return {k: str(value[k]) for k in ("coding", "plus", "minus")}
        note = self.attrs.get("allele_coding", "")
        m = re.search(r"letters (\S+)/(\S+); \S+ read as \+1", note)
        if m:
            return {"coding": "letters", "plus": m.group(1), "minus": m.group(2)}
        m = re.search(r"alleles coded (0/1|-1/\+1); (\S+) read as \+1", note)
        if m:
            coding = "01" if m.group(1) == "0/1" else "pm1"
            lo, hi = ("0", "1") if coding == "01" else ("-1", "1")
            return {"coding": coding, "plus": m.group(2), "minus": lo if m.group(2) == hi else hi}
        if self.truth is not None or self.attrs.get("layout") == "npy-splits":
            return {"coding": "pm1", "plus": "1", "minus": "-1"}
        return None

    @property
    def num_loci(self) -> int:
        """L, the number of markers."""
        return int(self.genotypes.shape[1])

    def phenotype_index(self, name: str) -> int:
        """Column of phenotype ``name`` (a :class:`UserError` with close matches when unknown)."""
        if name not in self.phenotype_names:
            from cellformer.errors import unknown_name_error

            raise unknown_name_error("phenotype", name, self.phenotype_names)
        return self.phenotype_names.index(name)

    def subset(self, rows) -> GenotypeData:
        """A new dataset with the given samples (indices or a boolean mask, in that order)."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        rows = rows.astype(np.int64)
        truth = None
        if self.truth is not None:
            truth = {k: (np.asarray(v)[rows] if k.startswith("sample_") else v) for k, v in self.truth.items()}
        return GenotypeData(
            genotypes=self.genotypes[rows],
            phenotypes=self.phenotypes[rows],
            phenotype_names=list(self.phenotype_names),
            loci=self.loci,
            sample_ids=[self.sample_ids[i] for i in rows],
            split=None if self.split is None else self.split[rows],
            fold=None if self.fold is None else self.fold[rows],
            truth=truth,
            attrs=dict(self.attrs),
        )

    def split_indices(self, name: str) -> np.ndarray:
        """Sample indices of split ``train``, ``val`` or ``test``."""
        if name not in SPLITS:
            raise UserError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        if self.split is None:
            raise UserError(
                "this genotype dataset stores no split; assign one with "
                "cellformer.genotype.random_genotype_split(len(data))"
            )
        return np.flatnonzero(self.split == SPLITS[name])

    def split_sizes(self) -> dict[str, int]:
        """Samples per split name (``unassigned`` for -1); empty when no split is stored."""
        if self.split is None:
            return {}
        names = {**SPLIT_NAMES, -1: "unassigned"}
        values, counts = np.unique(self.split, return_counts=True)
        return {names[int(v)]: int(c) for v, c in zip(values, counts, strict=True)}

    def summary(self) -> str:
        """One line: samples, loci, phenotypes and split sizes."""
        located = int((self.loci.chrom > 0).sum())
        text = f"{len(self)} samples × {self.num_loci} loci ({located} with a chromosome position)"
        text += f", {len(self.phenotype_names)} phenotypes"
        if self.phenotype_names:
            shown = ", ".join(self.phenotype_names[:10]) + (", …" if len(self.phenotype_names) > 10 else "")
            text += f" ({shown})"
        sizes = self.split_sizes()
        text += "; split " + (", ".join(f"{k} {v}" for k, v in sizes.items()) if sizes else "none")
        missing = int((self.genotypes == 0).sum())
        if missing:
            text += f"; {missing} missing genotype calls"
        return text

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Write the HDF5 file atomically (a temporary file next to ``path``, then a rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with h5py.File(tmp, "w") as f:
                f.attrs["format"] = FORMAT
                f.attrs["version"] = VERSION
                for k, v in self.attrs.items():
                    if k not in _RESERVED_ATTRS:
                        f.attrs[k] = v
                n, L = self.genotypes.shape
                chunks = (min(max(n, 1), 1024), min(max(L, 1), 4096)) if n and L else None
                f.create_dataset("genotypes", data=self.genotypes, chunks=chunks, **(_GZ if chunks else {}))
                f.create_dataset("phenotypes", data=self.phenotypes, **(_GZ if self.phenotypes.size else {}))
                f.create_dataset("phenotype_names", data=np.array(self.phenotype_names, dtype=object), dtype=_STR)
                s = f.create_group("samples")
                s.create_dataset("ids", data=np.array(self.sample_ids, dtype=object), dtype=_STR)
                if self.split is not None:
                    s.create_dataset("split", data=self.split)
                if self.fold is not None:
                    s.create_dataset("fold", data=self.fold)
                loc = f.create_group("loci")
                loc.create_dataset("ids", data=np.array(self.loci.ids, dtype=object), dtype=_STR)
                loc.create_dataset("chrom", data=self.loci.chrom)
                loc.create_dataset("pos", data=self.loci.pos)
                loc.create_dataset("gene", data=np.array(self.loci.gene, dtype=object), dtype=_STR)
                if self.truth is not None:
                    _write_tree(f.create_group("truth"), self.truth)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

    @classmethod
    def load(cls, path: str | Path) -> GenotypeData:
        """Read a file written by :meth:`save`.

        A missing, foreign, truncated or damaged file is a :class:`~cellformer.errors.UserError`.
        """
        path = Path(path)
        if not path.exists():
            raise UserError(f"genotype dataset {path} does not exist")
        if path.is_dir():
            raise UserError(f"{path} is a directory, not a genotype dataset (HDF5 file)")
        if not h5py.is_hdf5(path):
            raise UserError(f"{path} is not an HDF5 file (expected a genotype dataset written by cellformer)")
        try:
            with h5py.File(path, "r") as f:
                return cls._read(path, f)
        except (OSError, KeyError) as e:  # what h5py raises for a truncated file or a damaged group
            raise UserError(f"{path}: truncated or damaged genotype dataset ({e})") from None

    @classmethod
    def _read(cls, path: Path, f: h5py.File) -> GenotypeData:
        """The dataset in the open file ``f`` (checks the format attribute, version and datasets first)."""
        fmt = f.attrs.get("format")
        fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
        if fmt != FORMAT:
            hint = (
                " (it looks like a perturbation dataset: read it with cellformer.data.PerturbationData)"
                if "records" in f
                else ""
            )
            raise UserError(f"{path} is not a cellformer genotype dataset (format attribute {fmt!r}){hint}")
        version = int(f.attrs.get("version", -1))
        if version != VERSION:
            raise UserError(f"{path}: genotype format version {version}; this cellformer reads {VERSION}")
        missing = [k for k in ("genotypes", "phenotypes", "phenotype_names", "samples/ids", "loci/ids") if k not in f]
        if missing:
            raise UserError(f"{path}: damaged genotype dataset, missing {', '.join(missing)}")
        s, loc = f["samples"], f["loci"]
        attrs = {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in f.attrs.items()}
        return cls(
            genotypes=f["genotypes"][()],
            phenotypes=f["phenotypes"][()],
            phenotype_names=_strings(f["phenotype_names"]),
            loci=Loci(
                ids=_strings(loc["ids"]),
                chrom=loc["chrom"][()],
                pos=loc["pos"][()],
                gene=_strings(loc["gene"]),
            ),
            sample_ids=_strings(s["ids"]),
            split=s["split"][()] if "split" in s else None,
            fold=s["fold"][()] if "fold" in s else None,
            truth=_read_tree(f["truth"]) if "truth" in f else None,
            attrs={k: v for k, v in attrs.items() if k not in _RESERVED_ATTRS},
        )


def _strings(ds: h5py.Dataset) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else str(x) for x in ds[()]]


def _write_tree(group: h5py.Group, tree: dict) -> None:
    for k, v in tree.items():
        if isinstance(v, dict):
            _write_tree(group.create_group(k), v)
            continue
        if isinstance(v, str):
            group.create_dataset(k, data=v, dtype=_STR)
            continue
        arr = np.asarray(v)
        if arr.dtype.kind in "UO":
            group.create_dataset(k, data=arr.astype(object), dtype=_STR)
        elif arr.ndim == 0 or arr.size < 64:
            group.create_dataset(k, data=arr)
        else:
            group.create_dataset(k, data=arr, **_GZ)


def _read_tree(group: h5py.Group) -> dict:
    out: dict = {}
    for k, v in group.items():
        if isinstance(v, h5py.Group):
            out[k] = _read_tree(v)
            continue
        arr = v[()]
        if isinstance(arr, bytes):
            out[k] = arr.decode()
        elif isinstance(arr, np.ndarray) and arr.dtype.kind == "O":
            out[k] = np.array([x.decode() if isinstance(x, bytes) else x for x in arr.ravel()]).reshape(arr.shape)
        elif isinstance(arr, np.ndarray) and arr.ndim == 0:
            out[k] = arr.item()
        elif isinstance(arr, np.generic):
            out[k] = arr.item()
        else:
            out[k] = arr
    return out


def random_genotype_split(n: int, val: float = 0.1, test: float = 0.1, seed: int = 0) -> np.ndarray:
    """Split codes (int8: 0 train, 1 val, 2 test) of a seeded random split of ``n`` samples."""
    if n < 0:
        raise UserError(f"number of samples must be >= 0, got {n}")
    if val < 0 or test < 0 or val + test >= 1:
        raise UserError(f"val ({val}) and test ({test}) must be >= 0 and sum to less than 1")
    from cellformer.data.splits import random_split

    return random_split(n, val=val, test=test, seed=seed).astype(np.int8)


__all__ = ["FORMAT", "VERSION", "GenotypeData", "Loci", "random_genotype_split"]
