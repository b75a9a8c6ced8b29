"""Genome: ordered genes, aliases, features, coding sequences."""

from functools import lru_cache

from cellformer.defaults import YEAST_DIR
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
    """The embedded S. cerevisiae S288C gene list (6,410 genes; see graphs/README.md)."""
    return Genome.from_tsv(YEAST_DIR / "genes.tsv.gz", name="yeast")


__all__ = [
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
