"""Features computed from a coding sequence (CDS), usable for any gene, including new ones.

The feature vector is fixed-length (:data:`SEQUENCE_FEATURE_DIM`) so that a heterologous gene
can be embedded by the same projection as every other gene:

* 64 codon-usage frequencies (codons in ``TCAG`` order, in-frame, stop codons included),
* 20 amino-acid composition frequencies (standard genetic code, stops excluded),
* GC content, GC content at the third codon position, log10 of the length in codons.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cellformer.errors import UserError

BASES = "TCAG"
CODONS = ["".join(c) for c in itertools.product(BASES, repeat=3)]
_AA_TABLE = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"
GENETIC_CODE = dict(zip(CODONS, _AA_TABLE, strict=True))
AMINO_ACIDS = sorted(set(_AA_TABLE) - {"*"})
STOP_CODONS = {c for c, a in GENETIC_CODE.items() if a == "*"}
START_CODON = "ATG"
SEQUENCE_FEATURE_NAMES = (
    [f"codon_{c}" for c in CODONS] + [f"aa_{a}" for a in AMINO_ACIDS] + ["gc", "gc3", "log10_codons"]
)
SEQUENCE_FEATURE_DIM = len(SEQUENCE_FEATURE_NAMES)
_CODON_INDEX = {c: i for i, c in enumerate(CODONS)}
_AA_INDEX = {a: i for i, a in enumerate(AMINO_ACIDS)}


class SequenceError(UserError):
    """A DNA sequence (or FASTA file) that cannot be used as a coding sequence."""


@dataclass(frozen=True)
class FastaRecord:
    """One FASTA record: ``name`` is the first word of the header line."""

    name: str
    sequence: str
    line: int


def validate_cds(seq: str, name: str = "sequence") -> str:
    """Return the upper-cased CDS, raising :class:`SequenceError` if it is not usable.

    Errors: characters outside ``ACGT`` (position and character are named), an empty sequence, a
    length that is not a multiple of 3. Warnings (``UserWarning``): no ``ATG`` start, no stop codon at
    the end, an internal in-frame stop codon.
    """
    s = "".join(seq.split()).upper().replace("U", "T")
    if not s:
        raise SequenceError(f"{name}: the sequence is empty")
    for pos, ch in enumerate(s):
        if ch not in "ACGT":
            raise SequenceError(
                f"{name}: character {ch!r} at position {pos + 1} is not a DNA base (expected A, C, G, T)"
            )
    if len(s) % 3:
        raise SequenceError(f"{name}: length {len(s)} is not a multiple of 3 (a coding sequence is read in codons)")
    if not s.startswith(START_CODON):
        warnings.warn(f"{name}: does not start with ATG (start codon)", UserWarning, stacklevel=2)
    codons = [s[i : i + 3] for i in range(0, len(s), 3)]
    if codons[-1] not in STOP_CODONS:
        warnings.warn(f"{name}: does not end with a stop codon", UserWarning, stacklevel=2)
    internal = [i for i, c in enumerate(codons[:-1]) if c in STOP_CODONS]
    if internal:
        warnings.warn(
            f"{name}: in-frame stop codon at codon {internal[0] + 1} (of {len(codons)})",
            UserWarning,
            stacklevel=2,
        )
    return s


_BASE_CODE = np.full(256, 255, dtype=np.uint8)
for _i, _b in enumerate(BASES):
    _BASE_CODE[ord(_b)] = _i
#: codon index (TCAG order) -> amino-acid index (AMINO_ACIDS order), -1 for stops
_CODON_AA = np.array([_AA_INDEX.get(GENETIC_CODE[c], -1) for c in CODONS])


def sequence_features(seq: str, name: str = "sequence") -> np.ndarray:
    """Feature vector (length :data:`SEQUENCE_FEATURE_DIM`, float32) of one coding sequence (checked by
    :func:`validate_cds`)."""
    return cds_features(validate_cds(seq, name))


def cds_features(cds: str) -> np.ndarray:
    """:func:`sequence_features` of an upper-case ``ACGT`` sequence whose length is a multiple of 3, unchecked
    (for sequences read from a trusted source in bulk)."""
    code = _BASE_CODE[np.frombuffer(cds.encode("ascii"), dtype=np.uint8)].astype(np.int64).reshape(-1, 3)
    codon = code[:, 0] * 16 + code[:, 1] * 4 + code[:, 2]
    codon_counts = np.bincount(codon, minlength=len(CODONS)).astype(np.float64)
    aa = _CODON_AA[codon]
    aa_counts = np.bincount(aa[aa >= 0], minlength=len(AMINO_ACIDS)).astype(np.float64)
    gc_mask = (code == BASES.index("G")) | (code == BASES.index("C"))
    out = np.concatenate(
        [
            codon_counts / len(codon),
            aa_counts / max(aa_counts.sum(), 1.0),
            [gc_mask.mean(), gc_mask[:, 2].mean(), np.log10(len(codon))],
        ]
    )
    return out.astype(np.float32)


def read_fasta(path: str | Path) -> list[FastaRecord]:
    """Read a FASTA file; raises ``SequenceError`` naming the line for malformed input."""
    records: list[FastaRecord] = []
    name: str | None = None
    start = 0
    chunks: list[str] = []
    from cellformer.genome.genome import open_text

    with open_text(path, "FASTA file") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line:
                continue
            if line.startswith(">"):
                if name is not None:
                    records.append(FastaRecord(name, "".join(chunks), start))
                header = line[1:].split()
                if not header:
                    raise SequenceError(f"{path}:{lineno}: FASTA header without a name")
                name, start, chunks = header[0], lineno, []
            else:
                if name is None:
                    raise SequenceError(f"{path}:{lineno}: sequence before the first '>' header")
                chunks.append(line)
    if name is not None:
        records.append(FastaRecord(name, "".join(chunks), start))
    if not records:
        raise SequenceError(f"{path}: no FASTA records found")
    seen: set[str] = set()
    for r in records:
        if r.name.upper() in seen:
            raise SequenceError(f"{path}:{r.line}: record name {r.name!r} appears twice")
        seen.add(r.name.upper())
    return records
