"""Genome: aliases, errors with close matches, sequence features, added genes, hashing."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from cellformer.defaults import YEAST_DIR
from cellformer.genome import (
    SEQUENCE_FEATURE_DIM,
    Genome,
    SequenceError,
    UnknownGeneError,
    sequence_features,
    validate_cds,
    yeast_genome,
)

CDS = "ATGAAATTTGGGCCCTAA"  # M K F G P *


def small_genome() -> Genome:
    """Three yeast ORFs, two with standard names. Local, not conftest's ``toy_genome``: the alias tests need
    real-looking systematic and standard names (``TFC3`` vs ``TFC4``), not generated ``G{i}`` ones."""
    return Genome(["YAL001C", "YAL002W", "YBR001C"], ["TFC3", "VPS8", ""], name="small")


def test_alias_resolution_is_case_insensitive():
    g = small_genome()
    assert g.index("TFC3") == g.index("tfc3") == g.index("Tfc3") == g.index("yal001c") == 0
    assert g.index(" vps8 ") == 1
    assert g.lookup("nope") == -1
    assert "ybr001c" in g and "nope" not in g


def test_yeast_aliases():
    y = yeast_genome()
    assert len(y) == 6410
    assert y.index("act1") == y.index("YFL039C") == y.index("yfl039c")
    assert y.display(y.index("cdc28")) == "YBR160W (CDC28)"


def test_unknown_gene_lists_close_matches():
    g = small_genome()
    with pytest.raises(UnknownGeneError) as err:
        g.index("TFC4", context="my.tsv:3")
    assert "TFC3" in err.value.suggestions[0]
    msg = str(err.value)
    assert "my.tsv:3" in msg and "'TFC4'" in msg and "close matches" in msg and "TFC3" in msg


def test_sequence_features_shape_and_sums():
    f = sequence_features(CDS)
    assert f.shape == (SEQUENCE_FEATURE_DIM,) and f.dtype == np.float32
    assert f[:64].sum() == pytest.approx(1.0)  # codon frequencies (stop included)
    assert f[64:84].sum() == pytest.approx(1.0)  # amino-acid composition (stop excluded)
    gc = (CDS.count("G") + CDS.count("C")) / len(CDS)
    assert f[84] == pytest.approx(gc)
    assert f[86] == pytest.approx(np.log10(len(CDS) // 3))
    g = Genome(["A1", "B2"], sequences={"a1": CDS})
    assert np.allclose(g.features[0], f) and not g.features[1].any()


def test_bad_dna_errors():
    with pytest.raises(SequenceError, match=r"'X' at position 4"):
        validate_cds("ATGXAATAA", "geneX")
    with pytest.raises(SequenceError, match="multiple of 3"):
        validate_cds("ATGAAATA")
    with pytest.raises(SequenceError, match="empty"):
        validate_cds("  ")


def test_missing_start_or_stop_warns():
    with pytest.warns(UserWarning, match="ATG"):
        validate_cds("AAATTTTAA")
    with pytest.warns(UserWarning, match="stop codon"):
        validate_cds("ATGAAATTT")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert validate_cds("atgaaataa") == "ATGAAATAA"


def test_add_genes_appends_and_changes_hash():
    g = small_genome()
    g2 = g.add_genes({"GFP": CDS})
    assert g2.genes[:3] == g.genes and g2.genes[3] == "GFP"
    assert g2.added.tolist() == [False, False, False, True]
    assert g2.num_known == 3 and len(g2) == 4
    assert np.allclose(g2.features[3], sequence_features(CDS))
    assert g2.hash != g.hash
    assert g2.index("gfp") == 3
    with pytest.raises(ValueError, match="already has"):
        g.add_genes({"tfc3": CDS})


def test_hash_is_stable():
    assert small_genome().hash == small_genome().hash
    assert len(small_genome().hash) == 16
    assert Genome(["YAL001C", "YBR001C", "YAL002W"]).hash != small_genome().hash
    listed = Genome.from_tsv(YEAST_DIR / "genes.tsv.gz")
    assert yeast_genome().genes == listed.genes and yeast_genome().hash != listed.hash  # + sequence features


def test_yeast_genes_carry_the_features_of_their_coding_sequence():
    """The embedded genome's features are those of the shipped S288C CDS; genes without one read zeros."""
    from cellformer.genome.s288c import read_cds_fasta

    g, cds = yeast_genome(), read_cds_fasta()
    with_cds = [i for i, name in enumerate(g.genes) if name.upper() in cds]
    assert 5800 < len(with_cds) < len(g)
    act1 = g.index("ACT1")
    assert np.allclose(g.features[act1], sequence_features(cds["YFL039C"]))  # ACT1 has an intron: joined exons
    assert cds["YFL039C"].startswith("ATG") and len(cds["YFL039C"]) == 3 * 376
    without = [i for i in range(len(g)) if i not in set(with_cds)]
    assert not g.features[without].any() and g.features[with_cds].any(axis=1).all()
