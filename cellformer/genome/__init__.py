"""Genome: ordered genes, aliases, features, coding sequences."""

from functools import lru_cache
from pathlib import Path

from cellformer.defaults import YEAST_DIR
from cellformer.errors import UserError
from cellformer.genome.genome import Genome, UnknownGeneError, open_text
from cellformer.genome.sequence import (
    SEQUENCE_FEATURE_DIM,
    FastaRecord,
    SequenceError,
    read_fasta,
    sequence_features,
    validate_cds,
)


@lru_cache(maxsize=1)
def yeast_genome() -> Genome:
    """The embedded S. cerevisiae S288C genome: 6,410 genes, each with the sequence features of its coding
    sequence (``graphs/yeast/cds_s288c.fa.gz``; zeros for the genes without one). See graphs/README.md."""
    import numpy as np

    from cellformer.genome.s288c import read_cds_fasta
    from cellformer.genome.sequence import cds_features

    listed = Genome.from_tsv(YEAST_DIR / "genes.tsv.gz", name="yeast")
    cds = read_cds_fasta()
    features = np.zeros((len(listed), SEQUENCE_FEATURE_DIM), dtype=np.float32)
    for i, gene in enumerate(listed.genes):
        if gene.upper() in cds:
            features[i] = cds_features(cds[gene.upper()])
    return Genome(listed.genes, listed.aliases, features=features, name="yeast")


def load_genome(spec: str | Path | None = "yeast") -> Genome:
    """``"yeast"`` or None (the embedded gene list), or a gene-table TSV path (``systematic_name`` column)."""
    if spec is None or str(spec) == "yeast":
        return yeast_genome()
    if not Path(spec).exists():
        raise UserError(f"genome {str(spec)!r}: expected 'yeast' or an existing gene-table TSV path")
    return Genome.from_tsv(spec)


__all__ = [
    "load_genome",
    "Genome",
    "UnknownGeneError",
    "open_text",
    "SEQUENCE_FEATURE_DIM",
    "FastaRecord",
    "SequenceError",
    "read_fasta",
    "sequence_features",
    "validate_cds",
    "yeast_genome",
]
