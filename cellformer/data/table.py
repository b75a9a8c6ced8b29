"""Import of perturbation tables (TSV) into :class:`PerturbationData`, and of query gene sets.

Format (see ``data/README.md``): a tab-separated file with a header line; blank lines and lines
starting with ``#`` are skipped (line numbers in messages are physical lines of the file).

* ``genes`` (required): the perturbed genes, separated by ``;``: systematic or standard names, any
  case (resolved with :meth:`Genome.index`).
* ``types`` (optional): one perturbation type per gene, separated by ``;``: ``deletion``,
  ``knockdown``, ``overexpression``, ``addition``. Default (column absent or empty): deletion, and
  addition for the genome's added (heterologous) genes. ``addition`` is for added genes only, and added
  genes take nothing else (the rule of ``cellformer predict``).
* ``split`` (optional): ``train``, ``val`` or ``test``; empty: unassigned, a record no training or
  evaluation uses (the import report says how many, with the first line).
* ``condition`` (optional): free text, e.g. ``DMA30``.
* every other column is a numeric phenotype, named by its header (an import needs at least one, and at
  least one measured value); the :data:`MISSING_VALUES` (``''``, ``NA``, ``N/A``, ``nan``, ``null``,
  ``none``, any case) are "not measured" (NaN). Values must be finite and fit a float32 (magnitude below
  about 3.4e38): :func:`parse_value`, the rule of every importer (screens and genotype phenotypes too).

A UTF-8 byte-order mark at the start of the file is ignored.

A bad row raises :class:`TableImportError` naming the file, the line and the problem, unless
``skip_bad_rows``: then it is written to a rejects TSV (the original line plus a ``reason`` column)
and counted in the :class:`ImportReport`. Nothing is dropped silently.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import compress, islice, repeat
from pathlib import Path

import numpy as np

from cellformer.data.dataset import SPLITS, PerturbationData, PerturbationType
from cellformer.errors import UserError, shorten
from cellformer.genome.genome import Genome, UnknownGeneError, open_text

RESERVED_COLUMNS = ("genes", "types", "split", "condition")
#: Values (lower-cased, stripped) that mean "not measured" in every importer.
MISSING_VALUES = frozenset({"", "na", "n/a", "nan", "null", "none"})
#: Largest magnitude stored without float32 overflow.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def split_gene_names(text: str) -> list[str]:
    """The gene names of a ``;``-separated gene set; an empty name (``"A;;B"``, ``"A;"``) is an error.

    Shared by tables and the ``--genes`` option so that both accept the same sets. Raises
    :class:`~cellformer.errors.UserError`.
    """
    raw = text.strip()
    if not raw:
        raise UserError("the gene set is empty")
    names = [g.strip() for g in raw.split(";")]
    if any(not g for g in names):
        raise UserError(f"empty gene name in {raw!r} (genes are separated by ';')")
    return names


def parse_value(raw: str, column: str) -> float:
    """A numeric cell: NaN for :data:`MISSING_VALUES`, else a finite number that fits a float32.

    The one rule of every importer (perturbation tables, published screens, genotype phenotype tables):
    ``inf``, ``-inf`` and overflowing values are refused, never stored. Raises ``ValueError`` with a
    message naming the column (the callers add file and line).
    """
    v = raw.strip()
    if v.lower() in MISSING_VALUES:
        return math.nan
    try:
        x = float(v)
    except ValueError:
        raise ValueError(f"{column}: {shorten(v)!r} is not a number (use NA or leave empty)") from None
    if not math.isfinite(x):
        raise ValueError(f"{column}: {shorten(v)!r} is not a finite number")
    if abs(x) > FLOAT32_MAX:
        raise ValueError(
            f"{column}: {shorten(v)!r} is too large to store (float32 holds magnitudes up to about 3.4e38)"
        )
    return x


def _listing(names: list[str], n: int = 10) -> str:
    """The first ``n`` names (each cut short) for a message, and how many there are in all."""
    more = f", … ({len(names)} in all)" if len(names) > n else ""
    return ", ".join(shorten(x) for x in names[:n]) + more


class TableImportError(UserError):
    """A perturbation table that cannot be imported (the message names the file and the line)."""

    def __init__(self, path: str | Path, line: int | None, problem: str, kind: str = "error"):
        self.path = str(path)
        self.line = line
        self.problem = problem
        self.kind = kind
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")


@dataclass
class ImportReport:
    """What happened to the rows of one imported file: every importer (perturbation tables, published
    screens, genotype tables) returns one. Fields that do not apply to an importer keep their defaults
    and are left out of :meth:`summary`.

    Attributes:
        source: the file read.
        format: the importer's format name (``table``, ``costanzo2016``, ``kuzmin2018``, ``kuzmin2020``,
            ``genotype-table``).
        rows: data rows read (header, blank and comment lines excluded).
        imported: rows imported (read and not rejected).
        rejected / rejected_by_kind / examples: rows rejected (bad rows; skipped rather than fatal where
            the importer allows it), counted by problem kind (``unknown_gene``, ``bad_value``,
            ``field_count``, ``malformed``, ``bad_allele``…), and the first ``max_examples``
            ``(line, problem)`` pairs.
        rejects_path: the file the rejected rows were written to, if any.
        phenotype_names: the phenotype columns read.
        unmapped_rows / unmapped_genes / unmapped_examples: rows naming genes that are not in the genome
            (kept but incomplete, e.g. a screen row whose interaction record cannot be made), the
            distinct names and ``(line, name)`` examples.
        skipped: other rows or values left out, by reason (e.g. missing fitness values).
        records_by_size: records made, by gene set size (when rows and records differ, as in screens).
        interaction_rows: rows that became an interaction record (screens).
        fitness_records / fitness_observations: de-duplicated fitness records and the finite values
            averaged into them (screens).
        genotyped_without_phenotypes / phenotyped_without_genotypes: samples of a genotype import found
            in only one of the genotype and phenotype tables.
        notes: remarks about the file (allele coding, header wording, marker placement, unmatched samples).
    """

    source: str
    format: str = ""
    rows: int = 0
    imported: int = 0
    rejected: int = 0
    rejected_by_kind: Counter = field(default_factory=Counter)
    examples: list[tuple[int, str]] = field(default_factory=list)
    rejects_path: str | None = None
    phenotype_names: list[str] = field(default_factory=list)
    unmapped_rows: int = 0
    unmapped_genes: set[str] = field(default_factory=set)
    unmapped_examples: list[tuple[int, str]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    records_by_size: dict[int, int] = field(default_factory=dict)
    interaction_rows: int = 0
    fitness_records: int = 0
    fitness_observations: int = 0
    genotyped_without_phenotypes: int = 0
    phenotyped_without_genotypes: int = 0
    notes: list[str] = field(default_factory=list)
    max_examples: int = 5

    def reject(self, line: int, kind: str, problem: str) -> None:
        """Count a rejected row of problem ``kind`` (and keep it as an example while there is room)."""
        self.rejected += 1
        self.rejected_by_kind[kind] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append((line, problem))

    def add_unmapped(self, line: int, gene: str) -> None:
        """Record a gene name on ``line`` that is not in the genome (the caller counts the row)."""
        self.unmapped_genes.add(gene)
        if len(self.unmapped_examples) < self.max_examples:
            self.unmapped_examples.append((line, gene))

    def skip(self, reason: str, n: int = 1) -> None:
        """Count ``n`` rows or values left out for ``reason``."""
        self.skipped[reason] = self.skipped.get(reason, 0) + n

    @property
    def num_records(self) -> int:
        """Records made (the sum of :attr:`records_by_size`)."""
        return sum(self.records_by_size.values())

    def summary(self) -> str:
        """One human-readable paragraph (rows, records, rejects, unmapped genes, skips), then one line per note."""
        fmt = f" ({self.format})" if self.format else ""
        head = f"{self.source}{fmt}: {self.imported} of {self.rows} rows imported"
        if self.phenotype_names:
            head += f" (phenotypes: {', '.join(self.phenotype_names)})"
        parts = [head]
        if self.records_by_size:
            sizes = ", ".join(f"{n} of size {k}" for k, n in sorted(self.records_by_size.items()))
            parts.append(f"{self.num_records} records made ({sizes})")
        if self.interaction_rows or self.fitness_records:
            parts.append(
                f"{self.interaction_rows} interaction records, {self.fitness_records} fitness records "
                f"averaged from {self.fitness_observations} observations"
            )
        if self.rejected:
            kinds = ", ".join(f"{k}: {v}" for k, v in sorted(self.rejected_by_kind.items()))
            ex = "; ".join(f"line {ln}: {msg}" for ln, msg in self.examples)
            rejected = f"{self.rejected} rows rejected ({kinds}); e.g. {ex}"
            if self.rejects_path:
                rejected += f"; rejected rows written to {self.rejects_path}"
            parts.append(rejected)
        if self.unmapped_rows:
            ex = ", ".join(f"line {ln}: {g}" for ln, g in self.unmapped_examples)
            parts.append(
                f"{self.unmapped_rows} rows name genes not in the genome ({len(self.unmapped_genes)} distinct; "
                f"e.g. {ex})"
            )
        parts.extend(f"{n} {reason}" for reason, n in self.skipped.items())
        text = "; ".join(parts)
        if self.notes:
            text += "\n" + "\n".join(f"  note: {n}" for n in self.notes)
        return text


@dataclass
class _Row:
    line: int
    genes: np.ndarray
    types: np.ndarray
    values: list[float]
    split: int
    condition: str


class _Parser:
    """Header handling and row parsing shared by :func:`import_table` and :func:`read_gene_sets`."""

    def __init__(self, path: Path, genome: Genome, header: list[str], line: int, phenotypes: bool):
        self.path, self.genome = path, genome
        names = [h.strip() for h in header]
        lower = [h.lower() for h in names]
        dupes = sorted(h for h, c in Counter(names).items() if c > 1)  # linear: headers may be very wide
        if dupes:
            raise TableImportError(path, line, f"duplicate column name(s) in the header: {_listing(dupes)}")
        if "genes" not in lower:
            found = _listing(names) or "nothing"
            raise TableImportError(path, line, f"the header has no 'genes' column (found: {found})", "header")
        if "" in names:
            raise TableImportError(path, line, "the header has an empty column name", "header")
        self.width = len(names)
        self.col = {k: lower.index(k) for k in RESERVED_COLUMNS if k in lower}
        self.pheno_cols = [i for i, h in enumerate(lower) if h not in RESERVED_COLUMNS] if phenotypes else []
        self.phenotype_names = [names[i] for i in self.pheno_cols]
        if phenotypes and not self.pheno_cols:
            raise TableImportError(
                path,
                line,
                "the header has no phenotype column (every column other than genes, types, split and condition "
                "is a numeric phenotype)",
                "header",
            )

    def parse(self, fields: list[str], line: int) -> _Row:
        def fail(problem: str, kind: str) -> TableImportError:
            return TableImportError(self.path, line, problem, kind)

        if len(fields) != self.width:
            raise fail(
                f"expected {self.width} tab-separated fields (as in the header), got {len(fields)}", "field_count"
            )
        raw_genes = fields[self.col["genes"]].strip()
        if not raw_genes:
            raise fail("the 'genes' field is empty", "empty_genes")
        try:
            names = split_gene_names(raw_genes)
        except UserError as e:
            raise fail(str(e), "empty_genes") from None
        try:
            genes = np.array([self.genome.index(g) for g in names], dtype=np.int64)
        except UnknownGeneError as e:
            raise fail(str(e), "unknown_gene") from None
        if len(set(genes.tolist())) != len(genes):
            seen: dict[int, str] = {}
            for g, name in zip(genes.tolist(), names, strict=True):
                if g in seen:
                    raise fail(
                        f"gene {self.genome.display(g)} appears twice ({seen[g]!r} and {name!r})", "duplicate_gene"
                    )
                seen[g] = name
        raw_types = fields[self.col["types"]].strip() if "types" in self.col else ""
        if raw_types:
            tnames = [t.strip() for t in raw_types.split(";")]
            if len(tnames) != len(names):
                raise fail(
                    f"{len(tnames)} types for {len(names)} genes (give one type per gene, separated by ';')",
                    "types_mismatch",
                )
            try:
                types = np.array([int(PerturbationType.parse(t)) for t in tnames], dtype=np.int8)
            except ValueError as e:
                raise fail(str(e), "bad_type") from None
        else:
            types = np.where(
                self.genome.added[genes], int(PerturbationType.ADDITION), int(PerturbationType.DELETION)
            ).astype(np.int8)
        addition = types == int(PerturbationType.ADDITION)
        wrong = addition != self.genome.added[genes]
        if wrong.any():
            j = int(np.flatnonzero(wrong)[0])
            g = self.genome.display(int(genes[j]))
            if addition[j]:
                raise fail(
                    f"gene {g} is a genome gene; type 'addition' is for added (heterologous) genes "
                    "(for more of a native gene use overexpression)",
                    "bad_type",
                )
            raise fail(f"gene {g} is an added gene; its type must be 'addition'", "bad_type")
        split = -1
        if "split" in self.col:
            raw_split = fields[self.col["split"]].strip().lower()
            if raw_split:
                if raw_split not in SPLITS:
                    raise fail(
                        f"split {shorten(fields[self.col['split']].strip())!r} is not one of train, val, test "
                        "(or empty)",
                        "bad_split",
                    )
                split = SPLITS[raw_split]
        values = []
        for i, name in zip(self.pheno_cols, self.phenotype_names, strict=True):
            try:
                values.append(parse_value(fields[i], f"phenotype {name!r}"))
            except ValueError as e:
                raise fail(str(e), "bad_value") from None
        condition = fields[self.col["condition"]].strip() if "condition" in self.col else ""
        return _Row(line, genes, types, values, split, condition)


#: spellings of "not measured" recognised without a lower-casing pass (others go through :func:`parse_value`)
_MISSING_FAST = frozenset(MISSING_VALUES | {v.upper() for v in MISSING_VALUES} | {"NaN", "N/a", "None", "Null"})
#: the same, each mapped to ``"nan"`` (what ``float`` turns into NaN)
_AS_NAN = dict.fromkeys(_MISSING_FAST, "nan")
_SPLIT_FAST = {"": -1, **SPLITS, **{k.upper(): v for k, v in SPLITS.items()}}
#: perturbation type spellings recognised without a stripping and upper-casing pass (others go through
#: :meth:`PerturbationType.parse`)
_TYPE_FAST = {
    s: int(t)
    for t in PerturbationType
    if t is not PerturbationType.PRESENT
    for s in (t.name, t.name.lower(), t.name.title())
}
_DELETION, _ADDITION = int(PerturbationType.DELETION), int(PerturbationType.ADDITION)

#: physical lines read per block by :func:`import_table`
_BLOCK = 200_000
#: testing aid: ``False`` sends every row of :func:`import_table` through :meth:`_Parser.parse` (the row-by-row
#: reference that the block parser :func:`_parse_block` is checked against)
_FAST_PATH = True


def _skipped(line: str) -> bool:
    """Whether a line (without its line end) is blank or a comment, which tables skip."""
    return not line.strip() or line.startswith("#")


def _floats(cells: list[str]) -> np.ndarray:
    """``float`` of every cell as float64, NaN for a cell that is not a number."""
    try:
        return np.fromiter(map(float, cells), np.float64, len(cells))
    except ValueError:  # some cell is not a number: convert one by one to find it
        out = np.empty(len(cells))
        for i, x in enumerate(cells):
            try:
                out[i] = float(x)
            except ValueError:
                out[i] = math.nan
        return out


def _parse_block(parser: _Parser, lines: list[str], start: int) -> tuple[np.ndarray, dict | None]:
    """The rows of a block of ``lines`` (without line ends; the first is line ``start``) that parse without any
    problem: ``(ok per line, chunk of the ok rows)`` (the chunk is ``None`` when no line has the header's width).

    Why it is fast: no Python code runs per row. The lines are joined and split once, a column is a slice of
    the field list, and every step over cells is a ``map`` of a builtin (``str.count``, a dictionary lookup,
    ``float``…) or a numpy operation over the block.

    A line is left to the caller (which skips blank and comment lines and reads the others with
    :meth:`_Parser.parse`, giving the exact error or the same values) when it is a comment or has another
    number of fields, a gene name that is not an id or alias as written or upper-cased, a repeated gene, a
    ``types`` value that is not one plain type name per gene, an unusual split or missing-value spelling, or a
    value that is not a finite float32.
    """
    genome, width, col = parser.genome, parser.width, parser.col
    n = len(lines)
    ok = np.zeros(n, dtype=bool)
    tabs = np.fromiter(map(str.count, lines, repeat("\t")), np.int64, n)
    comment = np.fromiter(map(str.startswith, lines, repeat("#")), bool, n)
    rows = np.flatnonzero((tabs == width - 1) & ~comment)  # the lines with the header's number of fields
    m = len(rows)
    if not m:
        return ok, None
    fields = "\t".join(lines if m == n else map(lines.__getitem__, rows.tolist())).split("\t")
    good = np.ones(m, dtype=bool)  # rows[i] parsed without a problem so far

    # genes: the names of all sets in one list, a set's names consecutive; a repeat within a set is found as two
    # equal neighbours among the sorted (row, gene) keys
    names = fields[col["genes"] :: width]
    sizes = np.fromiter(map(str.count, names, repeat(";")), np.int64, m) + 1
    total = int(sizes.sum())
    genes = np.fromiter(map(genome.exact_names.get, ";".join(names).split(";"), repeat(-1)), np.int64, total)
    owner = np.repeat(np.arange(m), sizes)  # the row of each name
    good[owner[genes < 0]] = False
    span = len(genome.genes) + 1
    key = np.sort(owner * span + genes + 1)
    good[key[1:][key[1:] == key[:-1]] // span] = False
    added = genome.added[genes]  # (an unknown name, -1, reads the last gene: its row is refused already)

    # types: the default unless given; given types must be one known spelling per gene, addition exactly for
    # the added genes
    types = np.where(added, _ADDITION, _DELETION).astype(np.int8)
    if "types" in col:
        cells = fields[col["types"] :: width]
        given = np.flatnonzero(np.fromiter(map(bool, cells), bool, m))
        if len(given):
            cells = list(map(cells.__getitem__, given.tolist()))
            counts = np.fromiter(map(str.count, cells, repeat(";")), np.int64, len(given)) + 1
            codes = np.fromiter(map(_TYPE_FAST.get, ";".join(cells).split(";"), repeat(-1)), np.int8, int(counts.sum()))
            good[given[np.repeat(np.arange(len(given)), counts)[codes < 0]]] = False
            fits = counts == sizes[given]
            good[given[~fits]] = False
            placed = np.zeros(m, dtype=bool)
            placed[given[fits]] = True
            types[np.repeat(placed, sizes)] = codes[np.repeat(fits, counts)]
            good[owner[(types == _ADDITION) != added]] = False

    split = np.full(m, -1, dtype=np.int8)
    if "split" in col:
        split = np.fromiter(map(_SPLIT_FAST.get, fields[col["split"] :: width], repeat(-2)), np.int8, m)
        good &= split != -2

    # phenotypes, for the rows still good: NaN for a missing value; a lit cell must give a finite float32
    sel = np.flatnonzero(good)
    picks = good.tolist()
    values = np.empty((len(sel), len(parser.pheno_cols)))
    for j, c in enumerate(parser.pheno_cols):
        cells = list(compress(fields[c::width], picks))
        missing = np.fromiter(map(_MISSING_FAST.__contains__, cells), bool, len(cells))
        values[:, j] = _floats(list(map(_AS_NAN.get, cells, cells)))
        good[sel[~(missing | (np.abs(values[:, j]) <= FLOAT32_MAX))]] = False

    ok[rows[good]] = True
    names_kept = np.repeat(good, sizes)
    chunk = {
        "lines": start + rows[good],
        "sizes": sizes[good],
        "genes": genes[names_kept],
        "types": types[names_kept],
        "values": values[good[sel]],
        "split": split[good],
        "condition": None,
    }
    if "condition" in col:
        chunk["condition"] = list(map(str.strip, compress(fields[col["condition"] :: width], good.tolist())))
    return ok, chunk


def _chunk(rows: list[_Row], n_pheno: int, condition: bool) -> dict:
    """The rows read by :meth:`_Parser.parse` as a chunk (the arrays of :func:`_parse_block`)."""
    return {
        "lines": np.array([r.line for r in rows], dtype=np.int64),
        "sizes": np.array([len(r.genes) for r in rows], dtype=np.int64),
        "genes": np.concatenate([np.zeros(0, np.int64), *(r.genes for r in rows)]),
        "types": np.concatenate([np.zeros(0, np.int8), *(r.types for r in rows)]),
        "values": np.array([r.values for r in rows], dtype=np.float64).reshape(len(rows), n_pheno),
        "split": np.array([r.split for r in rows], dtype=np.int8),
        "condition": [r.condition for r in rows] if condition else None,
    }


def _concat(chunks: list[dict]) -> dict:
    """The chunks as one, rows in line order (the block parser's rows and the slow parser's come apart)."""
    c = {k: np.concatenate([ch[k] for ch in chunks]) for k in ("lines", "sizes", "genes", "types", "values", "split")}
    c["condition"] = None if chunks[0]["condition"] is None else [x for ch in chunks for x in ch["condition"]]
    if np.all(c["lines"][1:] > c["lines"][:-1]):
        return c
    order = np.argsort(c["lines"], kind="stable")
    sizes = c["sizes"][order]
    first = (np.cumsum(c["sizes"]) - c["sizes"])[order]  # where each row's genes start, before and after
    names = np.repeat(first - (np.cumsum(sizes) - sizes), sizes) + np.arange(int(sizes.sum()))
    return {
        "lines": c["lines"][order],
        "sizes": sizes,
        "genes": c["genes"][names],
        "types": c["types"][names],
        "values": c["values"][order],
        "split": c["split"][order],
        "condition": None if c["condition"] is None else list(map(c["condition"].__getitem__, order.tolist())),
    }


def _blocks(path: Path) -> Iterator[tuple[int, list[str]]]:
    """``(number of the first line, raw lines)`` of ``path``: the lines up to the header one by one (so that
    a bad header is reported before more is read), then blocks of :data:`_BLOCK` lines."""
    with open_text(path, "table") as fh:
        start = 1
        for raw in fh:
            yield start, [raw]
            start += 1
            if not _skipped(raw.rstrip("\r\n")):
                break
        while raw := list(islice(fh, _BLOCK)):
            yield start, raw
            start += len(raw)


def _rows(start: int, raw: list[str]) -> Iterator[tuple[int, str, list[str]]]:
    """``(line number, line without its line end, fields)`` of the lines of a block that are not skipped."""
    for lineno, r in enumerate(raw, start=start):
        line = r.rstrip("\r\n")
        if not _skipped(line):
            yield lineno, line, line.split("\t")


def _open_table(path: str | Path, genome: Genome, phenotypes: bool):
    """``(parser of the header, header line, the blocks after the header)``."""
    path = Path(path)
    if not path.exists():
        raise TableImportError(path, None, "file not found")
    blocks = _blocks(path)
    for start, raw in blocks:
        for lineno, line, header in _rows(start, raw):
            return _Parser(path, genome, header, lineno, phenotypes), line, blocks
    raise TableImportError(path, None, "the file is empty (expected a header line with a 'genes' column)")


def import_table(
    path: str | Path,
    genome: Genome,
    skip_bad_rows: bool = False,
    rejects_path: str | Path | None = None,
    description: str = "",
) -> tuple[PerturbationData, ImportReport]:
    """Import a perturbation table (format in the module docstring) over ``genome``.

    Bad rows raise :class:`TableImportError`; with ``skip_bad_rows`` they are counted in the report and,
    when ``rejects_path`` is given, written there (original line + ``reason``). Heterologous genes of
    ``genome`` (see :meth:`Genome.add_genes`) are stored with their sequences. The split is ``None`` when
    the table has no ``split`` column.

    Blocks of lines are parsed by :func:`_parse_block`; the lines it leaves are skipped (blank, comment) or
    read by :meth:`_Parser.parse`, in file order.
    """
    path = Path(path)
    parser, header_line, blocks = _open_table(path, genome, phenotypes=True)
    n_pheno = len(parser.phenotype_names)
    report = ImportReport(str(path), "table", phenotype_names=list(parser.phenotype_names))
    n_native = genome.num_known
    if genome.added[:n_native].any():
        raise ValueError("the genome's added (heterologous) genes must follow its native genes")
    missing = [g for g in genome.genes[n_native:] if g not in genome.sequences]
    if missing:
        raise ValueError(f"added gene {missing[0]!r} has no coding sequence in the genome")
    chunks: list[dict] = []
    slow: list[_Row] = []
    rejects: list[str] = []
    for start, raw in blocks:
        lines = list(map(str.rstrip, raw, repeat("\r\n")))
        ok, chunk = _parse_block(parser, lines, start) if _FAST_PATH else (np.zeros(len(lines), dtype=bool), None)
        if chunk is not None:
            chunks.append(chunk)
        report.rows += len(lines)
        for i in np.flatnonzero(~ok).tolist():
            line, lineno = lines[i], start + i
            if _skipped(line):
                report.rows -= 1
                continue
            try:
                slow.append(parser.parse(line.split("\t"), lineno))
            except TableImportError as e:
                if not skip_bad_rows:
                    raise
                report.reject(lineno, e.kind, e.problem)
                rejects.append(f"{line}\tline {lineno}: {e.problem}")
    rows = _concat([*chunks, _chunk(slow, n_pheno, "condition" in parser.col)])
    sizes = rows["sizes"]
    report.imported = len(sizes)
    values = rows["values"].astype(np.float32)
    if len(sizes) and np.isnan(values).all():
        raise TableImportError(
            path, None, f"no measured phenotype value in {len(sizes)} rows (every value is empty or NA)", "empty"
        )
    split = rows["split"] if "split" in parser.col else None
    unassigned = np.flatnonzero(split == -1) if split is not None else []
    if len(unassigned):
        report.notes.append(
            f"{len(unassigned)} rows have an empty split (first on line {rows['lines'][unassigned[0]]}): stored as "
            "unassigned, they are used by no training or evaluation"
        )
    if rejects_path is not None and rejects:
        rejects_path = Path(rejects_path)
        rejects_path.parent.mkdir(parents=True, exist_ok=True)
        with open(rejects_path, "w", encoding="utf-8") as fh:
            fh.write(f"{header_line}\treason\n")
            fh.writelines(f"{r}\n" for r in rejects)
        report.rejects_path = str(rejects_path)
    if not len(sizes):
        detail = f" ({report.rejected} rejected: {report.summary()})" if report.rejected else ""
        raise TableImportError(path, None, f"no rows to import{detail}", "empty")
    data = PerturbationData(
        genes=list(genome.genes[:n_native]),
        offsets=np.concatenate([[0], np.cumsum(sizes)]),
        gene_index=rows["genes"],
        types=rows["types"],
        phenotypes=values.reshape(len(sizes), n_pheno),
        phenotype_names=list(parser.phenotype_names),
        split=split,
        condition=rows["condition"],
        heterologous={g: genome.sequences[g] for g in genome.genes[n_native:]},
        genome_hash=genome.hash,
        genome_name=genome.name,
        description=description or f"imported from {path.name}",
        attrs={"source": str(path)},
    )
    return data, report


def read_gene_sets(path: str | Path, genome: Genome) -> list[tuple[np.ndarray, np.ndarray]]:
    """Read query gene sets: ``(gene indices (int64), types (int8))`` per row of a table.

    Same format and row checks as :func:`import_table`, but only the ``genes`` and ``types`` columns
    are read (phenotype, split and condition columns are ignored). A bad row raises
    :class:`TableImportError` naming the line.
    """
    parser, _, blocks = _open_table(path, genome, phenotypes=False)
    parser.col.pop("split", None)
    sets = [
        (r.genes, r.types)
        for start, raw in blocks
        for r in (parser.parse(fields, lineno) for lineno, _, fields in _rows(start, raw))
    ]
    if not sets:
        raise TableImportError(path, None, "no gene sets in the file (only a header)", "empty")
    return sets


__all__ = ["ImportReport", "TableImportError", "import_table", "read_gene_sets", "RESERVED_COLUMNS"]
