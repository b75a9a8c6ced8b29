"""Perturbation-table import: round trip, bad rows (with line numbers), rejects, aliases, NaN."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cellformer.data import PerturbationData, PerturbationType
from cellformer.data.table import TableImportError, import_table, read_gene_sets
from cellformer.genome import yeast_genome

FIXTURES = Path(__file__).parent / "fixtures"
D, K, O = int(PerturbationType.DELETION), int(PerturbationType.KNOCKDOWN), int(PerturbationType.OVEREXPRESSION)


@pytest.fixture(scope="module")
def genome():
    return yeast_genome()


def write(tmp_path, text: str, name: str = "t.tsv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_good_table_round_trip(tmp_path, genome):
    data, report = import_table(FIXTURES / "table_good.tsv", genome)
    assert report.rows == report.imported == 4 and report.rejected == 0
    assert data.phenotype_names == ["fitness", "epsilon"]
    idx = genome.index
    assert [data.record(r)[0].tolist() for r in range(4)] == [
        [idx("YFL039C")],
        [idx("YFL039C"), idx("YBR160W")],
        [idx("YOR202W"), idx("YEL021W"), idx("YML085C")],
        [idx("YBL007C")],
    ]
    assert data.types.tolist() == [D, D, K, D, D, D, O]
    assert data.split.tolist() == [0, 1, 2, -1]
    np.testing.assert_array_equal(data.phenotypes[:, 0], np.array([0.95, 0.71, 0.5, 1.02], dtype=np.float32))
    assert np.isnan(data.phenotypes[[0, 2, 3], 1]).all() and data.phenotypes[1, 1] == pytest.approx(-0.12)
    assert data.genome_hash == genome.hash and data.genes == genome.genes
    data.save(tmp_path / "t.h5")
    back = PerturbationData.load(tmp_path / "t.h5")
    assert np.array_equal(back.gene_index, data.gene_index) and np.array_equal(back.types, data.types)
    np.testing.assert_array_equal(back.phenotypes, data.phenotypes)
    assert np.array_equal(back.split, data.split)


def test_aliases_any_case_and_missing_values(tmp_path, genome):
    p = write(tmp_path, "GENES\tfitness\tscore\nact1\tNA\t1\nCdc28 ; yor202w\t\tN/A\nTUB1\tNaN\t-2e-1\n")
    data, _ = import_table(p, genome)
    assert data.record(0)[0].tolist() == [genome.index("YFL039C")]
    assert data.record(1)[0].tolist() == [genome.index("YBR160W"), genome.index("YOR202W")]
    assert np.isnan(data.phenotypes[:, 0]).all()
    assert np.isnan(data.phenotypes[1, 1]) and data.phenotypes[2, 1] == pytest.approx(-0.2)
    assert data.split is None and data.condition is None


def test_condition_column(tmp_path, genome):
    p = write(tmp_path, "genes\tcondition\tfitness\nACT1\tDMA30\t0.5\nURA3\tDMA26\t0.7\n")
    data, _ = import_table(p, genome)
    assert data.condition == ["DMA30", "DMA26"] and data.phenotype_names == ["fitness"]


BAD_ROWS = {
    "unknown_gene": ("ACT1;CDC28X\tdeletion;deletion\ttrain\t0.5", r"'CDC28X'; close matches: YBR160W \(CDC28\)"),
    "duplicate_gene": ("ACT1;yfl039c\t\ttrain\t0.5", "appears twice"),
    "empty_genes": ("\t\ttrain\t0.5", "'genes' field is empty"),
    "empty_name": ("ACT1;;URA3\t\ttrain\t0.5", "empty gene name"),
    "bad_value": ("ACT1\t\ttrain\thigh", "'high' is not a number"),
    "types_mismatch": ("ACT1;URA3\tdeletion\ttrain\t0.5", "1 types for 2 genes"),
    "bad_type": ("ACT1\tsilencing\ttrain\t0.5", "unknown perturbation type 'silencing'"),
    "bad_split": ("ACT1\t\ttraining\t0.5", "split 'training' is not one of"),
    "field_count": ("ACT1\t\ttrain", "expected 4 tab-separated fields"),
}
HEADER = "genes\ttypes\tsplit\tfitness\n"


@pytest.mark.parametrize("kind", sorted(BAD_ROWS))
def test_bad_row_raises_with_line_number(tmp_path, genome, kind):
    row, pattern = BAD_ROWS[kind]
    p = write(tmp_path, HEADER + "URA3\t\ttrain\t0.9\n\n" + row + "\n")
    with pytest.raises(TableImportError, match=pattern) as err:
        import_table(p, genome)
    assert err.value.line == 4
    assert str(err.value).startswith(f"{p}:4: ")


def test_skip_bad_rows_writes_rejects_and_counts(tmp_path, genome):
    rows = [BAD_ROWS[k][0] for k in ("unknown_gene", "bad_value", "bad_split")]
    p = write(tmp_path, HEADER + "URA3\t\ttrain\t0.9\n" + "\n".join(rows) + "\nHIS3\t\tval\t0.8\n")
    rejects = tmp_path / "out" / "rejects.tsv"
    data, report = import_table(p, genome, skip_bad_rows=True, rejects_path=rejects)
    assert len(data) == 2 and (report.rows, report.imported, report.rejected) == (5, 2, 3)
    assert dict(report.rejected_by_kind) == {"unknown_gene": 1, "bad_value": 1, "bad_split": 1}
    assert [ln for ln, _ in report.examples] == [3, 4, 5]
    lines = rejects.read_text().splitlines()
    assert lines[0] == HEADER.strip() + "\treason"
    assert len(lines) == 4
    for line, original, lineno in zip(lines[1:], rows, [3, 4, 5], strict=True):
        head, reason = line.rsplit("\t", 1)
        assert head == original and reason.startswith(f"line {lineno}: ")
    assert "3 rows rejected" in report.summary() and str(rejects) in report.summary()


def test_whole_table_problems(tmp_path, genome):
    with pytest.raises(TableImportError, match="no 'genes' column"):
        import_table(write(tmp_path, "gene\tfitness\nACT1\t1\n"), genome)
    with pytest.raises(TableImportError, match="empty"):
        import_table(write(tmp_path, "# nothing\n"), genome)
    with pytest.raises(TableImportError, match="duplicate column"):
        import_table(write(tmp_path, "genes\tf\tf\nACT1\t1\t2\n"), genome)
    with pytest.raises(TableImportError, match="no rows to import"):
        import_table(write(tmp_path, HEADER + "NOPE1\t\ttrain\t1\n"), genome, skip_bad_rows=True)
    with pytest.raises(TableImportError, match="file not found"):
        import_table(tmp_path / "missing.tsv", genome)


def test_heterologous_genes(tmp_path, genome):
    gfp = "ATGGTGAGCAAGGGCGAGTAA"
    g2 = genome.add_genes({"GFP": gfp})
    p = write(tmp_path, "genes\ttypes\tfitness\nACT1;gfp\tdeletion;addition\t0.8\n")
    data, _ = import_table(p, g2)
    assert data.heterologous == {"GFP": gfp} and len(data.genes) == len(genome)
    assert data.record(0)[0].tolist() == [genome.index("ACT1"), len(genome)]


def test_read_gene_sets(tmp_path, genome):
    sets = read_gene_sets(FIXTURES / "table_good.tsv", genome)
    assert len(sets) == 4
    genes, types = sets[1]
    assert genes.tolist() == [genome.index("ACT1"), genome.index("CDC28")] and types.tolist() == [D, K]
    # phenotype values are not read, so non-numbers there are fine; genes are still checked
    p = write(tmp_path, "genes\tfitness\nACT1;URA3\twhatever\n")
    assert read_gene_sets(p, genome)[0][0].tolist() == [genome.index("ACT1"), genome.index("URA3")]
    with pytest.raises(TableImportError, match=r":3: .*unknown gene 'NOPE'"):
        read_gene_sets(write(tmp_path, "genes\nACT1\nNOPE\n"), genome)
