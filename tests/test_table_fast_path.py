"""The block parser of table imports (``_parse_block``) against the row-by-row parser (``_Parser.parse``).

Messy random tables (aliases and odd cases, unknown and repeated genes, added genes, types, odd splits, missing
value spellings, non-numbers, inf and overflow, comments, blank lines, wrong field counts, CRLF line ends) are
imported twice, with the block parser and with ``table._FAST_PATH = False``, over small blocks so that block
boundaries fall everywhere: data, report, rejects file and first error must be the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import toy_genome

from cellformer.data import table
from cellformer.data.table import TableImportError, import_table

CDS = "ATGAAATTTGGGCCCTAA"
N_GENES = 24


@pytest.fixture(scope="module")
def genome():
    aliases = [f"Ali{i}" if i % 2 else "" for i in range(N_GENES)]
    return toy_genome(N_GENES, aliases=aliases, name="toy").add_genes({"GFP": CDS, "Cas9": CDS})


# ---------------------------------------------------------------------- random messy tables
def _name(rng: np.random.Generator, i: int) -> str:
    """A spelling of gene ``i``: id or alias, as written, upper or lower case, sometimes padded."""
    names = [f"G{i}", f"g{i}"] + ([f"Ali{i}", f"ALI{i}", f"ali{i}"] if i % 2 else [])
    name = names[rng.integers(len(names))]
    return f" {name}" if rng.random() < 0.03 else name


def _genes(rng: np.random.Generator) -> tuple[str, int, bool]:
    """``(genes cell, number of names, names an added gene)``."""
    k = int(rng.integers(1, 5))
    ids = rng.choice(N_GENES, size=k, replace=False)
    names = [_name(rng, int(i)) for i in ids]
    r = rng.random()
    if r < 0.05:
        names[rng.integers(k)] = f"NOPE{rng.integers(9)}"  # unknown gene
    elif r < 0.10:
        names.append(_name(rng, int(ids[rng.integers(k)])))  # a gene twice
    elif r < 0.15:
        names[rng.integers(k)] = ["GFP", "gfp", "Cas9", "CAS9"][rng.integers(4)]  # an added gene
    elif r < 0.17:
        names.insert(int(rng.integers(len(names) + 1)), "")  # an empty name
    elif r < 0.18:
        return ["", " "][rng.integers(2)], 0, False
    added = any(n.strip().upper() in ("GFP", "CAS9") for n in names)
    return ";".join(names), len(names), added


def _types(rng: np.random.Generator, k: int, added: bool) -> str:
    """A types cell: mostly empty, else one type per gene in various spellings, sometimes wrong."""
    r = rng.random()
    if r < 0.6:
        return ""
    spellings = ["deletion", "Deletion", "DELETION", "knockdown", "Knockdown", "overexpression", "OVEREXPRESSION"]
    ts = [spellings[rng.integers(len(spellings))] for _ in range(max(k, 1))]
    if added and rng.random() < 0.7:
        ts = ["addition" if rng.random() < 0.5 else "Addition" for _ in ts]  # right for the added gene only
    r = rng.random()
    if r < 0.08:
        ts.append("deletion")  # one type too many
    elif r < 0.12:
        ts[0] = "silencing"
    elif r < 0.16:
        ts[0] = f" {ts[0]} "
    elif r < 0.20:
        ts[-1] = "addition"
    elif r < 0.22:
        return " "
    return ";".join(ts)


VALUES = ["NA", "na", "NaN", "nan", "NAN", "", "None", "none", "NULL", "n/a", "N/A", " NA ", "nAn", "-", "abc",
          "inf", "-inf", "Infinity", "1e39", "-1e39", "3e38", "1_0", " 2.5 ", "+nan", "0x1", "1,5"]  # fmt: skip
SPLITS = ["", "", "train", "train", "val", "test", "TRAIN", "Val", " test ", "training", "x"]
CONDITIONS = ["DMA30", "DMA26", " DMA30 ", "", "37C"]


def _value(rng: np.random.Generator) -> str:
    return VALUES[rng.integers(len(VALUES))] if rng.random() < 0.25 else f"{rng.normal():.4g}"


def write_table(path: Path, seed: int, columns: list[str], n: int = 300, crlf: bool = False) -> Path:
    """A random messy table of about ``n`` lines with the given columns (``genes``, ``types``, ``split``,
    ``condition``, anything else is a phenotype)."""
    rng = np.random.default_rng(seed)
    header = [c.upper() if c == "genes" and seed % 2 else c for c in columns]
    lines = ["# a comment before the header", "", "\t".join(header)]
    for _ in range(n):
        r = rng.random()
        if r < 0.01:
            lines.append("# comment")
            continue
        if r < 0.02:
            lines.append(["", "   ", "\t" * (len(columns) - 1)][rng.integers(3)])
            continue
        genes, k, added = _genes(rng)
        cells = {"genes": genes}
        for c in columns:
            if c == "types":
                cells[c] = _types(rng, k, added)
            elif c == "split":
                cells[c] = SPLITS[rng.integers(len(SPLITS))]
            elif c == "condition":
                cells[c] = CONDITIONS[rng.integers(len(CONDITIONS))]
            elif c != "genes":
                cells[c] = _value(rng)
        row = [cells[c] for c in columns]
        if r < 0.05:
            row[0] = "#" + row[0]  # a commented-out row (of the right width)
        elif r < 0.08:
            row = row[:-1] if rng.random() < 0.5 else [*row, "extra"]  # wrong number of fields
        lines.append("\t".join(row))
    ends = ["\r\n" if crlf and rng.random() < 0.7 else "\n" for _ in lines]
    if crlf:
        ends[len(ends) // 2] = "\r"  # an old-Mac line end, a line break of its own
    text = "".join(line + end for line, end in zip(lines, ends, strict=True))
    path.write_bytes(text[: -len(ends[-1])].encode() if seed % 3 == 0 else text.encode())  # no final line end
    return path


# ---------------------------------------------------------------------- comparison
def run(monkeypatch, path: Path, genome, fast: bool, skip: bool) -> dict:
    """Everything an import gives: data arrays, report and rejects file, or the error."""
    monkeypatch.setattr(table, "_FAST_PATH", fast)
    rejects = path.with_suffix(f".{int(fast)}.rejects.tsv")
    try:
        data, report = import_table(path, genome, skip_bad_rows=skip, rejects_path=rejects if skip else None)
    except TableImportError as e:
        return {"error": (str(e), e.line, e.kind, e.problem)}
    out = {
        "offsets": data.offsets.tolist(),
        "gene_index": data.gene_index.tolist(),
        "types": data.types.tolist(),
        "phenotypes": data.phenotypes.tobytes(),
        "nan": np.isnan(data.phenotypes).tolist(),
        "split": None if data.split is None else data.split.tolist(),
        "condition": None if data.condition is None else list(data.condition),
        "heterologous": data.heterologous,
        "report": (report.rows, report.imported, report.rejected, dict(report.rejected_by_kind), report.examples),
        "notes": report.notes,
        "summary": report.summary().replace(str(rejects), "REJECTS"),
        "rejects": rejects.read_text() if rejects.exists() else None,
    }
    return out


TABLES = {
    "all_columns": ["genes", "types", "split", "condition", "fitness", "epsilon"],
    "shuffled": ["fitness", "split", "genes", "epsilon", "condition", "types"],
    "plain": ["genes", "fitness", "epsilon"],
    "one_value": ["split", "genes", "score"],
    "condition_first": ["condition", "genes", "fitness"],  # a commented-out row is otherwise a good row
}


@pytest.mark.parametrize("block", [1, 7, 64, 100_000])
@pytest.mark.parametrize("columns", list(TABLES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_block_parser_matches_row_parser(tmp_path, monkeypatch, genome, block, columns, seed):
    monkeypatch.setattr(table, "_BLOCK", block)
    path = write_table(tmp_path / "t.tsv", seed, TABLES[columns], crlf=seed == 2)
    fast = run(monkeypatch, path, genome, fast=True, skip=True)
    slow = run(monkeypatch, path, genome, fast=False, skip=True)
    assert "error" not in slow and slow["report"][2] > 0  # the table has good and bad rows
    assert fast == slow
    # without skip_bad_rows: the same first error
    first = run(monkeypatch, path, genome, fast=True, skip=False)
    assert "error" in first and first == run(monkeypatch, path, genome, fast=False, skip=False)


def test_block_parser_reads_the_good_rows_itself(tmp_path, monkeypatch, genome):
    """Only the lines the block parser cannot vouch for reach ``_Parser.parse`` (names as written or upper-cased
    are looked up directly); the rows still come in file order, the slow parser's among the block parser's."""
    monkeypatch.setattr(table, "_BLOCK", 5)
    lines = ["genes\ttypes\tsplit\tcondition\tfitness"]
    for i in range(40):
        lines.append(f"G{i % N_GENES};{'ALI' if i % 2 else 'Ali'}{(i + 1) % N_GENES | 1}\t\ttrain\tc{i}\t{i}")
    lines[10] = "g3 ;G4\t\tval\tslow1\t0.5"  # a padded name: read by the slow parser, kept
    lines[21] = "G5\tdeletion\ttest\tfast\t-1"  # a type: read by the block parser
    lines[22] = "GFP\t\t\tadded\tNA"  # an added gene, default type addition
    lines[30] = "G6\t Knockdown\tval\tslow2\t2"  # a padded type: slow parser
    lines[35] = "G7\t\ttrain\tbad\tinf"  # refused
    path = tmp_path / "t.tsv"
    path.write_text("\n".join(lines) + "\n")
    seen = []
    parse = table._Parser.parse
    monkeypatch.setattr(table._Parser, "parse", lambda self, f, line: seen.append(line) or parse(self, f, line))
    data, report = import_table(path, genome, skip_bad_rows=True)
    assert seen == [11, 31, 36]
    assert report.rows == 40 and report.imported == 39 and report.examples[0][0] == 36
    assert list(data.condition)[8:10] == ["c8", "slow1"] and list(data.condition)[29] == "slow2"
    assert data.types[data.offsets[20]] == 1 and data.types[data.offsets[21]] == 4
    assert data.record(9)[0].tolist() == [3, 4]
    seen.clear()
    monkeypatch.setattr(table, "_FAST_PATH", False)
    slow, _ = import_table(path, genome, skip_bad_rows=True)
    assert len(seen) == 40
    assert np.array_equal(slow.offsets, data.offsets) and np.array_equal(slow.gene_index, data.gene_index)
    assert np.array_equal(slow.types, data.types) and list(slow.condition) == list(data.condition)
    np.testing.assert_array_equal(slow.phenotypes, data.phenotypes)


def test_only_blank_and_comment_lines_after_header(tmp_path, monkeypatch, genome):
    monkeypatch.setattr(table, "_BLOCK", 2)
    path = tmp_path / "t.tsv"
    path.write_text("genes\tfitness\n\n# none\n\t\n \t \nG1\tNA\n")
    for fast in (True, False):
        monkeypatch.setattr(table, "_FAST_PATH", fast)
        with pytest.raises(TableImportError, match="no measured phenotype value in 1 rows"):
            import_table(path, genome)
