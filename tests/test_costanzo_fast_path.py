"""The block reader of Costanzo 2016 files against the row reader (``screens._FAST_PATH = False``).

Messy random screens (ids, aliases and odd cases, unknown ORFs, a gene under several strain ids, self pairs,
missing-value spellings, padded numbers, non-numbers, inf and overflow, bad and two-ORF strain ids, blank and
whitespace lines, wrong field counts, CRLF line ends, gzip) are read twice over small blocks so that block
boundaries fall everywhere: data, report and first error must be the same.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from conftest import toy_genome

from cellformer.data.importers import screens
from cellformer.data.importers.screens import COSTANZO_HEADER, ImportFormatError, read_costanzo2016

N_GENES = 30


@pytest.fixture(scope="module")
def genome():
    return toy_genome(N_GENES, aliases=[f"Ali{i}" if i % 3 == 0 else "" for i in range(N_GENES)], name="toy")


def _strain(rng: np.random.Generator) -> tuple[str, str]:
    r = rng.random()
    if r < 0.01:
        return "NOT_A_STRAIN", "x"  # does not parse
    if r < 0.015:
        return "G1+G2_sn3", "a+b"  # two ORFs
    if r < 0.04:
        return f"UNKNOWN{rng.integers(4)}_sn9", "u"  # not in the genome
    i = int(rng.integers(N_GENES))
    name = [f"G{i}", f"g{i}"] + ([f"Ali{i}", f"ALI{i}"] if i % 3 == 0 else [])
    cls = ["sn", "dma", "tsq", "tsa", "damp", "tm", "xx"][rng.integers(7)]  # tm: typed by the allele name
    return f"{name[rng.integers(len(name))]}_{cls}{rng.integers(3)}", f"allele{i}{'-1' if rng.random() < 0.5 else ''}"


def _number(rng: np.random.Generator) -> str:
    r = rng.random()
    if r < 0.06:
        return ["", "NA", "nan", "NaN", "na", "N/A", "null"][rng.integers(7)]
    if r < 0.07:
        return [" 0.5", "1e-3 ", "+0.25"][rng.integers(3)]  # padded or signed: still numbers
    if r < 0.075:
        return ["inf", "-Infinity", "1e39", "abc", "0..1"][rng.integers(5)]  # row errors
    return f"{rng.normal(0.0, 0.3):.4f}"


def _screen(path: Path, seed: int, rows: int = 600, gz: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    lines = ["\t".join(COSTANZO_HEADER)]
    for _ in range(rows):
        r = rng.random()
        if r < 0.02:
            lines.append(["", "   ", "\t" * 10][rng.integers(3)])  # blank lines (the tab-only one too)
            continue
        (q, qa), (a, aa) = _strain(rng), _strain(rng)
        if rng.random() < 0.03:
            a, aa = q, qa  # self pair
        cells = [q, qa, a, aa, ["DMA30", "DMA26", " TSA30 ", "TSA26"][rng.integers(4)]]
        cells += [_number(rng) for _ in range(6)]
        if r > 0.99:
            cells = cells[: int(rng.integers(1, 11))] if rng.random() < 0.5 else cells + ["extra"]
        lines.append("\t".join(cells))
    end = "\r\n" if seed % 2 else "\n"
    text = end.join(lines) + end
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _read(path: Path, genome, fast: bool, skip: bool, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(screens, "_FAST_PATH", fast)
        m.setattr(screens, "_BLOCK", 37)
        try:
            return read_costanzo2016(path, genome, skip_bad_rows=skip)
        except ImportFormatError as exc:
            return exc


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_block_reader_matches_the_row_reader(tmp_path, genome, monkeypatch, seed):
    path = _screen(tmp_path / f"s{seed}.txt{'.gz' if seed == 3 else ''}", seed, gz=seed == 3)
    (fast, frep), (slow, srep) = (_read(path, genome, f, True, monkeypatch) for f in (True, False))
    assert frep.rejected > 0 and frep.unmapped_rows > 0 and len(slow) > 100  # the screen is messy
    for name in ("offsets", "gene_index", "types"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name), err_msg=name)
    np.testing.assert_array_equal(fast.phenotypes, slow.phenotypes)
    assert list(fast.condition) == list(slow.condition) and fast.condition.names == slow.condition.names
    for name in ("rows", "imported", "rejected", "rejected_by_kind", "examples", "unmapped_rows", "unmapped_genes",
                 "unmapped_examples", "skipped", "records_by_size", "interaction_rows", "fitness_records",
                 "fitness_observations"):  # fmt: skip
        assert getattr(frep, name) == getattr(srep, name), name
    # without skipping, the first bad row is the same error
    fast_err, slow_err = (_read(path, genome, f, False, monkeypatch) for f in (True, False))
    assert isinstance(fast_err, ImportFormatError) and str(fast_err) == str(slow_err)


@pytest.mark.parametrize("fast", [True, False])
def test_a_bad_row_before_a_nul_byte_or_a_truncated_gzip_is_reported_first(tmp_path, genome, monkeypatch, fast):
    """Reading in blocks keeps the order of a line-by-line read: the rows before a NUL byte or the end of a
    truncated ``.gz`` are read (and a bad one among them reported) before the file's own fault."""
    good = "\t".join(["G1_sn1", "g1", "G2_dma2", "g2", "DMA30", "0.1", "0.5", "0.9", "0.8", "0.7", "0.02"])
    bad = good.replace("0.1", "abc", 1)
    lines = ["\t".join(COSTANZO_HEADER), good, good, bad, good, "G3\x00", good]  # bad row: line 4; NUL: line 6
    path = tmp_path / "nul.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with monkeypatch.context() as m:
        m.setattr(screens, "_FAST_PATH", fast)
        m.setattr(screens, "_BLOCK", 100)
        with pytest.raises(ImportFormatError) as exc:
            read_costanzo2016(path, genome)
        assert exc.value.line == 4
        with pytest.raises(ImportFormatError, match="NUL") as exc:
            read_costanzo2016(path, genome, skip_bad_rows=True)
        assert exc.value.line == 6
        body = ("\n".join([lines[0], good, bad] + [good] * 3000) + "\n").encode()
        gz = tmp_path / "cut.txt.gz"
        gz.write_bytes(gzip.compress(body)[:-200])  # truncated: its last lines never arrive
        with pytest.raises(ImportFormatError) as exc:
            read_costanzo2016(gz, genome)
        assert exc.value.line == 3
        with pytest.raises(ImportFormatError, match="truncated or corrupt gzip"):
            read_costanzo2016(gz, genome, skip_bad_rows=True)
