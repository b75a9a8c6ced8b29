"""Importers for published yeast genetic-interaction screens, producing :class:`PerturbationData`.

Supported files (tab-separated, one header line):

* **Costanzo et al. 2016** (Science 353, aaf1420), Data File S1 / thecellmap.org "pair-wise interaction
  format" (``SGA_NxN.txt``, ``SGA_ExN_NxE.txt``, ``SGA_ExE.txt``, ``SGA_DAmP.txt``): :func:`read_costanzo2016`.
* **Kuzmin et al. 2018** (Science 360, eaao1729), Data File S1 (raw digenic + trigenic scores):
  :func:`read_kuzmin2018`.
* **Kuzmin et al. 2020** (Science 368, eaaz5667), Table S1 exported to TSV: :func:`read_kuzmin2020`.

Every reader returns ``(PerturbationData, ImportReport)``. Records use the genome's gene order
(``data.genes == genome.genes``). Nothing is dropped silently: malformed rows raise
:class:`ImportFormatError` (``file:line: problem``) unless ``skip_bad_rows=True``, in which case they are
counted in the report with their line numbers; ORFs that are not in the genome are counted with examples.

Record layout (the same for every format):

1. **Fitness records** first, in order of first appearance: single mutants (and, for Kuzmin, the double
   mutant query strains) built from the query / array fitness columns, de-duplicated by averaging every
   finite observation per (ORFs, allele class, condition). ``fitness_n`` holds the number of observations
   averaged; the other interaction columns are NaN.
2. **Interaction records** next, one per data row, in file order: the double (Costanzo, Kuzmin digenic)
   or triple (Kuzmin trigenic) mutant with its interaction score, p-value and combined fitness.

Phenotype columns:

* Costanzo 2016 (:data:`COSTANZO_PHENOTYPES`): ``fitness`` (single: mean SMF; double: double mutant
  fitness), ``fitness_sd`` (double mutant fitness standard deviation; NaN for singles), ``fitness_n``
  (singles: number of SMF observations averaged; NaN for doubles), ``epsilon`` (genetic interaction
  score ε), ``epsilon_pvalue``, ``gi_significant`` (1.0 when |ε| > 0.08 and p < 0.05, else 0.0; NaN if
  either is missing). Each record's condition is the ``Arraytype/Temp`` value (e.g. ``DMA30``).
* Kuzmin 2018 / 2020 (:data:`KUZMIN_PHENOTYPES`): ``fitness`` (combined / double / triple mutant
  fitness, or the mean query / array fitness for fitness records), ``fitness_sd``, ``fitness_n``,
  ``epsilon`` (digenic: adjusted score, which equals the raw one), ``epsilon_raw``, ``tau`` (trigenic:
  adjusted score τ), ``tau_raw`` (trigenic: raw score), ``pvalue``, ``gi_significant`` (digenic:
  |ε| > 0.08 and p < 0.05; trigenic: τ < -0.08 and p < 0.05, the published cut-offs). These files have
  no condition column, so ``data.condition`` is None.

Perturbation types come from the allele class, the letters after the ``_`` of a strain id
(:data:`ALLELE_CLASS_TYPES`): ``sn``, ``dma`` (deletions) -> DELETION; ``tsq``, ``tsa`` (temperature-
sensitive) and ``damp`` (DAmP) -> KNOCKDOWN. Kuzmin's double-mutant query strains (class ``tm``) take
each component's type from the allele name (``ntg1Δ+hoΔ``): a name with ``-`` (``mcm2-1``) or ``damp``
is a KNOCKDOWN, anything else a DELETION.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import zlib
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice, repeat
from pathlib import Path

import numpy as np

from cellformer.data.dataset import Conditions, PerturbationData, PerturbationType
from cellformer.data.table import _AS_NAN, _MISSING_FAST, FLOAT32_MAX, ImportReport, _floats, parse_value
from cellformer.errors import UserError
from cellformer.genome.genome import Genome

#: Allele class (letters after the ``_`` of a strain id) -> perturbation type.
ALLELE_CLASS_TYPES: dict[str, PerturbationType] = {
    "sn": PerturbationType.DELETION,
    "dma": PerturbationType.DELETION,
    "tsq": PerturbationType.KNOCKDOWN,
    "tsa": PerturbationType.KNOCKDOWN,
    "damp": PerturbationType.KNOCKDOWN,
}
#: Allele classes whose per-ORF types are read from the allele name (Kuzmin double-mutant queries).
ALLELE_NAME_CLASSES = {"tm"}
#: The hoΔ marker of Kuzmin's control queries (HO is silent in the screened background).
HO_MARKER = "YDL227C"

COSTANZO_HEADER = [
    "Query Strain ID",
    "Query allele name",
    "Array Strain ID",
    "Array allele name",
    "Arraytype/Temp",
    "Genetic interaction score (ε)",
    "P-value",
    "Query single mutant fitness (SMF)",
    "Array SMF",
    "Double mutant fitness",
    "Double mutant fitness standard deviation",
]
KUZMIN2018_HEADER = [
    "Query strain ID",
    "Query allele name",
    "Array strain ID",
    "Array allele name",
    "Combined mutant type",
    "Raw genetic interaction score (epsilon)",
    "Adjusted genetic interaction score (epsilon or tau)",
    "P-value",
    "Query single/double mutant fitness",
    "Array single mutant fitness",
    "Combined mutant fitness",
    "Combined mutant fitness standard deviation",
]
#: Kuzmin 2020 Table S1: as 2018 but the last two columns name double/triple mutant fitness.
KUZMIN2020_HEADER = KUZMIN2018_HEADER[:10] + [
    "Double/triple mutant fitness",
    "Double/triple mutant fitness standard deviation",
]

COSTANZO_PHENOTYPES = ["fitness", "fitness_sd", "fitness_n", "epsilon", "epsilon_pvalue", "gi_significant"]
KUZMIN_PHENOTYPES = [
    "fitness",
    "fitness_sd",
    "fitness_n",
    "epsilon",
    "epsilon_raw",
    "tau",
    "tau_raw",
    "pvalue",
    "gi_significant",
]
PHENOTYPE_DOCS: dict[str, str] = {
    "fitness": "fitness relative to wild type (single: mean of the SMF observations; double/triple: "
    "combined mutant fitness)",
    "fitness_sd": "standard deviation of the double/triple mutant fitness (NaN for fitness records)",
    "fitness_n": "number of observations averaged into a fitness record (NaN for interaction records)",
    "epsilon": "digenic genetic interaction score ε",
    "epsilon_pvalue": "p-value of ε",
    "epsilon_raw": "raw digenic interaction score",
    "tau": "adjusted trigenic interaction score τ",
    "tau_raw": "raw trigenic interaction score",
    "pvalue": "p-value of the interaction score",
    "gi_significant": "1.0 if the interaction passes the published cut-off (digenic |ε| > 0.08, p < 0.05; "
    "trigenic τ < -0.08, p < 0.05), 0.0 if not, NaN if unscored",
}


class ImportFormatError(UserError):
    """A file that does not have the expected layout; the message names ``file:line`` and the problem."""

    def __init__(self, path: str | Path, line: int, problem: str):
        self.path = str(path)
        self.line = line
        self.problem = problem
        super().__init__(f"{path}:{line}: {problem}")


class _RowError(Exception):
    """A malformed data row (internal; becomes ImportFormatError or a report entry)."""


# ---------------------------------------------------------------------- small helpers
def significance_call(eps, p, eps_cut: float = 0.08, p_cut: float = 0.05):
    """The standard Costanzo digenic call: 1.0 if ``|eps| > eps_cut`` and ``p < p_cut``, else 0.0.

    Works on scalars (returns a float) and arrays (returns a float array); NaN where either input is NaN.
    """
    e, q = np.asarray(eps, dtype=np.float64), np.asarray(p, dtype=np.float64)
    out = np.where(np.isnan(e) | np.isnan(q), np.nan, ((np.abs(e) > eps_cut) & (q < p_cut)).astype(np.float64))
    return float(out) if out.ndim == 0 else out


def trigenic_significance_call(tau, p, tau_cut: float = -0.08, p_cut: float = 0.05):
    """Kuzmin et al.'s trigenic call: 1.0 if ``tau < tau_cut`` and ``p < p_cut``, else 0.0 (NaN if missing)."""
    t, q = np.asarray(tau, dtype=np.float64), np.asarray(p, dtype=np.float64)
    out = np.where(np.isnan(t) | np.isnan(q), np.nan, ((t < tau_cut) & (q < p_cut)).astype(np.float64))
    return float(out) if out.ndim == 0 else out


@dataclass(frozen=True)
class Strain:
    """A parsed strain id: ``YAL002W_sn1234`` -> ORFs ``("YAL002W",)``, allele class ``"sn"``."""

    orfs: tuple[str, ...]
    allele_class: str
    raw: str


_SUFFIX = re.compile(r"([A-Za-z]+)\d*")


def parse_strain_id(strain_id: str) -> Strain:
    """Split a strain id ``ORF[+ORF]_<class><number>`` (raises ``ValueError`` when it does not parse)."""
    s = strain_id.strip()
    orf_part, sep, suffix = s.partition("_")
    if not sep or not orf_part or not suffix:
        raise ValueError(f"strain id {s!r} is not of the form ORF_allele (e.g. YAL002W_sn1234)")
    m = _SUFFIX.fullmatch(suffix)
    if m is None:
        raise ValueError(f"strain id {s!r}: allele suffix {suffix!r} is not letters followed by digits")
    orfs = tuple(o.strip() for o in orf_part.split("+"))
    if any(not o for o in orfs):
        raise ValueError(f"strain id {s!r} has an empty ORF name")
    return Strain(orfs, m.group(1).lower(), s)


def _allele_name_type(name: str) -> PerturbationType:
    """Type of one allele name: ts alleles (``mcm2-1``) and DAmP are knockdowns, others deletions."""
    n = name.strip().lower()
    if "-" in n or "damp" in n:
        return PerturbationType.KNOCKDOWN
    return PerturbationType.DELETION


def _strain_types(strain: Strain, allele_name: str) -> list[PerturbationType]:
    cls = strain.allele_class
    if cls in ALLELE_CLASS_TYPES:
        return [ALLELE_CLASS_TYPES[cls]] * len(strain.orfs)
    if cls in ALLELE_NAME_CLASSES:
        parts = [p for p in allele_name.split("+")]
        if len(parts) != len(strain.orfs):
            raise _RowError(
                f"allele name {allele_name!r} has {len(parts)} parts but strain {strain.raw!r} has "
                f"{len(strain.orfs)} ORFs"
            )
        return [_allele_name_type(p) for p in parts]
    known = ", ".join(sorted(ALLELE_CLASS_TYPES) + sorted(ALLELE_NAME_CLASSES))
    raise _RowError(f"strain id {strain.raw!r}: unknown allele class {cls!r} (known: {known})")


def _parse_strain(value: str) -> Strain:
    try:
        return parse_strain_id(value)
    except ValueError as e:
        raise _RowError(str(e)) from None


def _number(value: str, column: str) -> float:
    """A value of ``column`` by the rule of every importer (:func:`cellformer.data.table.parse_value`): NaN
    for the missing values, else a finite number that fits a float32 (±inf and overflow are row errors).
    A plain finite number is read directly; anything else goes through the rule (and its messages)."""
    try:
        x = float(value)
    except ValueError:
        x = math.nan
    if math.isfinite(x) and abs(x) <= FLOAT32_MAX:
        return x
    try:
        return parse_value(value, f"column {column!r}")
    except ValueError as e:
        raise _RowError(str(e)) from None


class _StrainCache:
    """Each distinct (strain id, allele name) parsed, typed and mapped to genome indices once: a screen of
    millions of rows names a few thousand strains."""

    def __init__(self, genome: Genome):
        self.genome = genome
        self.cache: dict[tuple[str, str], tuple[Strain, list[PerturbationType], list[int]] | _RowError] = {}

    def __call__(self, strain_id: str, allele_name: str) -> tuple[Strain, list[PerturbationType], list[int]]:
        key = (strain_id, allele_name)
        hit = self.cache.get(key)
        if hit is None:
            try:
                strain = _parse_strain(strain_id)
                hit = (strain, _strain_types(strain, allele_name), [self.genome.lookup(o) for o in strain.orfs])
            except _RowError as e:
                hit = e
            self.cache[key] = hit
        if isinstance(hit, _RowError):
            raise hit
        return hit


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _open(path: Path):
    """Text lines of a (gzipped) file; a BOM is dropped, undecodable bytes are replaced rather than fatal."""
    if not path.exists():
        raise UserError(f"screen file {path} does not exist")
    if path.is_dir():
        raise UserError(f"screen file {path} is a directory, not a file")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", errors="replace", newline="")
    return open(path, encoding="utf-8-sig", errors="replace", newline="")


def _rows(path: Path, expected: Sequence[str], report: ImportReport) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line number, fields)`` of the data rows (blank lines skipped) after checking the header."""
    for start, lines in _line_blocks(path, expected, report):
        for lineno, line in enumerate(lines, start):
            if line.strip():
                yield lineno, line.split("\t")


def _numbered_lines(path: Path, fh) -> Iterator[tuple[int, str]]:
    """``(line number, line)``; a truncated or corrupt ``.gz`` is an :class:`ImportFormatError`."""
    lineno = 0
    while True:
        try:
            raw = next(fh)
        except StopIteration:
            return
        except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
            raise ImportFormatError(path, lineno + 1, f"truncated or corrupt gzip file ({exc})") from None
        lineno += 1
        if "\x00" in raw:
            raise ImportFormatError(path, lineno, "contains NUL bytes (is it a binary file?)")
        yield lineno, raw


def _check_header(path: Path, lineno: int, fields: list[str], expected: Sequence[str], report: ImportReport) -> None:
    if len(fields) != len(expected) or not _norm(fields[0]).startswith(_norm(expected[0])):
        raise ImportFormatError(
            path,
            lineno,
            f"expected a header of {len(expected)} tab-separated columns starting {expected[0]!r} "
            f"({' | '.join(expected)}); got {len(fields)} columns starting {fields[0]!r}",
        )
    for i, (got, want) in enumerate(zip(fields, expected, strict=True)):
        if _norm(got) != _norm(want):
            report.notes.append(f"header column {i + 1} is {got.strip()!r} (documented: {want!r}); read by position")


class _Builder:
    """Collects fitness observations (de-duplicated) and interaction records (columnar, compact: a record is a
    few machine numbers, not Python objects)."""

    def __init__(self, phenotype_names: list[str]):
        self.names = phenotype_names
        self.col = {n: i for i, n in enumerate(phenotype_names)}
        # key -> [sum, n, genes, types, condition]
        self.fitness: dict[tuple, list] = {}
        self.genes, self.types, self.sizes = array("i"), array("b"), array("q")
        self.values = [array("f") for _ in phenotype_names]
        self.conditions: dict[str, int] = {}
        self.condition_codes = array("i")

    def add_fitness(
        self,
        genes: list[int],
        types: list[PerturbationType],
        allele_class: str,
        condition: str,
        value: float,
        report: ImportReport,
    ) -> None:
        if math.isnan(value):
            report.skip("fitness observations missing (NaN) and not averaged")
            return
        order = sorted(range(len(genes)), key=lambda k: genes[k])
        self.add_fitness_sum([genes[k] for k in order], [int(types[k]) for k in order], allele_class, condition,
                             value, 1)  # fmt: skip
        report.fitness_observations += 1

    def add_fitness_sum(self, genes: list[int], types: list[int], allele_class: str, condition: str, total: float,
                        n: int) -> None:  # fmt: skip
        """Add ``n`` finite observations summing to ``total`` of the fitness of ``genes`` (sorted) with ``types``
        (the report's counts are the caller's)."""
        key = (tuple(genes), tuple(types), allele_class, condition)
        acc = self.fitness.get(key)
        if acc is None:
            self.fitness[key] = [total, n, genes, types, condition]
        else:
            acc[0] += total
            acc[1] += n

    def condition_code(self, condition: str) -> int:
        """The code of an interaction record's condition (codes in order of first appearance)."""
        code = self.conditions.get(condition)
        if code is None:
            code = self.conditions[condition] = len(self.conditions)
        return code

    def add_record(self, genes: list[int], types: list[PerturbationType], condition: str, **phenotypes: float) -> None:
        self.genes.extend(genes)
        self.types.extend(int(t) for t in types)
        self.sizes.append(len(genes))
        for name, column in zip(self.names, self.values, strict=True):
            column.append(phenotypes.get(name, math.nan))
        self.condition_codes.append(self.condition_code(condition))

    def add_records(self, genes: np.ndarray, types: np.ndarray, codes: np.ndarray, columns: dict) -> None:
        """Add interaction records at once: genes and types (R, s), condition codes (R,), phenotype columns
        by name (R,) (the others NaN)."""
        r, size = genes.shape
        self.genes.frombytes(genes.astype(np.int32).tobytes())
        self.types.frombytes(types.astype(np.int8).tobytes())
        self.sizes.frombytes(np.full(r, size, np.int64).tobytes())
        for name, column in zip(self.names, self.values, strict=True):
            column.frombytes(np.broadcast_to(np.asarray(columns.get(name, np.nan), np.float32), (r,)).tobytes())
        self.condition_codes.frombytes(codes.astype(np.int32).tobytes())

    def build(
        self, genome: Genome, report: ImportReport, fmt: str, path: Path, with_condition: bool
    ) -> PerturbationData:
        fit = list(self.fitness.values())
        report.fitness_records = len(fit)
        report.interaction_rows = len(self.sizes)
        report.imported = report.rows - report.rejected
        fit_y = np.full((len(fit), len(self.names)), np.nan, dtype=np.float32)
        for i, (total, n, _, _, _) in enumerate(fit):
            fit_y[i, self.col["fitness"]] = total / n
            fit_y[i, self.col["fitness_n"]] = n
        fit_sizes = np.array([len(f[2]) for f in fit], dtype=np.int64)
        sizes = np.concatenate([fit_sizes, np.frombuffer(self.sizes, np.int64)])
        counts = np.bincount(sizes)
        for s in np.flatnonzero(counts):
            report.records_by_size[int(s)] = int(counts[s])
        gene_index = np.concatenate([np.array([g for f in fit for g in f[2]], dtype=np.int32),
                                     np.frombuffer(self.genes, np.int32)])  # fmt: skip
        types = np.concatenate([np.array([t for f in fit for t in f[3]], dtype=np.int8),
                                np.frombuffer(self.types, np.int8)])  # fmt: skip
        values = np.stack([np.frombuffer(v, np.float32) for v in self.values], 1) if self.values else None
        phen = np.concatenate([fit_y, values.reshape(-1, len(self.names))]) if values is not None else fit_y
        condition = None
        if with_condition:
            lookup = dict(self.conditions)
            fit_codes = [lookup.setdefault(f[4], len(lookup)) for f in fit]
            codes = np.concatenate([np.array(fit_codes, np.int32), np.frombuffer(self.condition_codes, np.int32)])
            condition = Conditions(codes, list(lookup))
        return PerturbationData(
            genes=list(genome.genes),
            offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            gene_index=gene_index,
            types=types,
            phenotypes=phen,
            phenotype_names=list(self.names),
            condition=condition,
            genome_hash=genome.hash,
            genome_name=genome.name,
            description=f"{fmt} import of {path.name}",
            attrs={
                "import_format": fmt,
                "import_source": str(path),
                "phenotype_docs": json.dumps({n: PHENOTYPE_DOCS[n] for n in self.names}),
            },
        )


_UNMAPPED_SKIP = "interaction records not made (a gene of the row is not in the genome)"


def _map(genome: Genome, orfs: Sequence[str], lineno: int, report: ImportReport, idx: list[int] | None = None):
    """Genome indices of ``orfs`` (``idx`` when already looked up); unmapped ones are counted with the line."""
    idx = [genome.lookup(o) for o in orfs] if idx is None else idx
    missing = [o for o, i in zip(orfs, idx, strict=True) if i < 0]
    if missing:
        report.unmapped_rows += 1
        report.skip(_UNMAPPED_SKIP)
        for o in missing:
            report.add_unmapped(lineno, o)
    return idx


def _handle_bad(path: Path, lineno: int, err: _RowError, skip_bad_rows: bool, report: ImportReport) -> None:
    if not skip_bad_rows:
        raise ImportFormatError(path, lineno, str(err)) from None
    report.reject(lineno, "malformed", str(err))


# ---------------------------------------------------------------------- Costanzo 2016
def read_costanzo2016(
    path: str | Path, genome: Genome, skip_bad_rows: bool = False
) -> tuple[PerturbationData, ImportReport]:
    """Read a Costanzo 2016 pair-wise genetic interaction file (11 tab-separated columns).

    Each row gives one double mutant record (query ORF, array ORF) with ``epsilon``, ``epsilon_pvalue``,
    ``fitness`` (double mutant fitness), ``fitness_sd`` and ``gi_significant``; its condition is the
    ``Arraytype/Temp`` column. The query and array SMF columns give single mutant fitness records,
    averaged per (ORF, allele class, condition) with the count in ``fitness_n``. Rows pairing an ORF with
    itself give no double record (counted in the report). See the module docstring for the full layout.

    The rows are read in blocks (:func:`_costanzo_block`: no Python code per row); a row the block reader
    cannot vouch for goes through the row reader, which gives the exact error or the same values.
    """
    path = Path(path)
    report = ImportReport(str(path), "costanzo2016")
    b = _Builder(COSTANZO_PHENOTYPES)
    strains = _StrainCache(genome)
    for start, lines in _line_blocks(path, COSTANZO_HEADER, report):
        if not _FAST_PATH:
            for lineno, line in enumerate(lines, start):
                _costanzo_row(b, strains, genome, report, path, lineno, line, skip_bad_rows)
            continue
        block = _costanzo_block(lines, strains)
        slow = np.flatnonzero(~block["ok"])
        edges = [-1, *slow.tolist(), len(lines)]
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):  # runs of fast rows, each then one slow row
            if hi - lo > 1:
                _costanzo_add(b, report, block, lo + 1, hi, start)
            if hi < len(lines):
                _costanzo_row(b, strains, genome, report, path, start + hi, lines[hi], skip_bad_rows)
    return b.build(genome, report, "costanzo2016", path, with_condition=True), report


#: testing aid: ``False`` sends every row of :func:`read_costanzo2016` through the row reader (the reference the
#: block reader is checked against)
_FAST_PATH = True
#: physical lines per block of :func:`read_costanzo2016`
_BLOCK = 200_000


def _line_blocks(path: Path, expected: Sequence[str], report: ImportReport) -> Iterator[tuple[int, list[str]]]:
    """``(number of the first line, lines without line ends)`` after the header (checked first), in blocks of
    :data:`_BLOCK` lines. NUL bytes and a truncated ``.gz`` are :class:`ImportFormatError` naming the line,
    raised after the lines before it are yielded (as a line-by-line reader would)."""
    with _open(path) as fh:
        for lineno, raw in _numbered_lines(path, fh):
            if raw.strip():
                _check_header(path, lineno, raw.rstrip("\r\n").split("\t"), expected, report)
                break
        else:
            raise ImportFormatError(path, 1, "empty file (expected a header line)")
        start = lineno + 1
        while True:
            block, error = [], None
            try:
                block.extend(islice(fh, _BLOCK))  # (the lines read before a failure stay in the block)
            except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
                error = ImportFormatError(path, start + len(block), f"truncated or corrupt gzip file ({exc})")
            if any(map(str.__contains__, block, repeat("\x00"))):
                at = next(i for i, raw in enumerate(block) if "\x00" in raw)
                block, error = (
                    block[:at],
                    ImportFormatError(path, start + at, "contains NUL bytes (is it a binary file?)"),
                )
            if block:
                yield start, list(map(str.rstrip, block, repeat("\r\n")))
            if error is not None:
                raise error from None
            if not block:
                return
            start += len(block)


def _costanzo_row(b, strains, genome, report, path: Path, lineno: int, line: str, skip_bad_rows: bool) -> None:
    """One data line by the row reader (blank lines are skipped)."""
    if not line.strip():
        return
    f = line.split("\t")
    report.rows += 1
    try:
        if len(f) != len(COSTANZO_HEADER):
            raise _RowError(f"expected {len(COSTANZO_HEADER)} tab-separated columns, got {len(f)}")
        (q, qts, qidx), (a, ats, aidx) = strains(f[0], f[1]), strains(f[2], f[3])
        for s in (q, a):
            if len(s.orfs) != 1:
                raise _RowError(f"strain id {s.raw!r} names {len(s.orfs)} ORFs; Costanzo strains have one")
        qt, at = qts[0], ats[0]
        cond = f[4].strip()
        eps, p, qsmf, asmf, dmf, dsd = (_number(f[i], COSTANZO_HEADER[i]) for i in range(5, 11))
    except _RowError as e:
        _handle_bad(path, lineno, e, skip_bad_rows, report)
        return
    qi, ai = _map(genome, [q.orfs[0], a.orfs[0]], lineno, report, qidx + aidx)
    if qi >= 0:
        b.add_fitness([qi], [qt], q.allele_class, cond, qsmf, report)
    if ai >= 0:
        b.add_fitness([ai], [at], a.allele_class, cond, asmf, report)
    if qi < 0 or ai < 0:
        return
    if qi == ai:
        report.skip("rows pairing an ORF with itself (no double mutant record)")
        return
    b.add_record([qi, ai], [qt, at], cond, epsilon=eps, epsilon_pvalue=p, fitness=dmf, fitness_sd=dsd,
                 gi_significant=significance_call(eps, p))  # fmt: skip


def _costanzo_block(lines: list[str], strains: _StrainCache) -> dict:
    """Parse a block of data lines at once: per line whether the block reader vouches for it (``ok``) and, for
    the lines with the header's width (``rows``), the query and array strain codes into ``table``, the
    condition codes into ``conditions`` and the six numbers. A line is left to the row reader when it is
    blank, has another number of fields, names a strain that does not parse, has more than one ORF or an
    allele class whose type depends on the allele name, or has a number that is not a plain finite float32
    or a usual missing-value spelling."""
    n, width = len(lines), len(COSTANZO_HEADER)
    tabs = np.fromiter(map(str.count, lines, repeat("\t")), np.int64, n)
    ok = (tabs == width - 1) & ~np.fromiter(map(str.isspace, lines), bool, n)
    rows = np.flatnonzero(ok)
    m = len(rows)
    fields = "\t".join(map(lines.__getitem__, rows.tolist())).split("\t") if m else []
    good = np.ones(m, dtype=bool)
    code: dict[str, int] = {}
    table: list[tuple] = []  # per distinct strain id: (ok, genome index, type, allele class, ORF)
    codes = []
    for c in (0, 2):
        ids = fields[c::width]
        allele = dict(zip(ids, fields[c + 1 :: width], strict=True))  # (any) allele name of each id
        for key in allele.keys() - code.keys():
            code[key] = len(table)
            try:
                strain, types, idx = strains(key, allele[key])
                vouched = len(strain.orfs) == 1 and strain.allele_class in ALLELE_CLASS_TYPES
                table.append((vouched, idx[0], int(types[0]), strain.allele_class, strain.orfs[0]))
            except _RowError:
                table.append((False, -1, 0, "", ""))
        codes.append(np.fromiter(map(code.__getitem__, ids), np.int64, m))
    vouched = np.array([t[0] for t in table] or [True], dtype=bool)
    for c in codes:
        good &= vouched[c]
    values = np.empty((m, 6))
    for j, c in enumerate(range(5, 11)):
        cells = fields[c::width]
        missing = np.fromiter(map(_MISSING_FAST.__contains__, cells), bool, m)
        values[:, j] = _floats(list(map(_AS_NAN.get, cells, cells)))
        good &= missing | (np.abs(values[:, j]) <= FLOAT32_MAX)
    ok[rows[~good]] = False
    conditions: dict[str, int] = {}
    cond = _codes(list(map(str.strip, fields[4::width])), conditions)
    return {"ok": ok, "rows": rows, "table": table, "query": codes[0], "array": codes[1], "values": values,
            "condition": cond, "conditions": list(conditions),
            "gene": np.array([t[1] for t in table], dtype=np.int64),  # per strain: genome index and type
            "type": np.array([t[2] for t in table], dtype=np.int64)}  # fmt: skip


def _costanzo_add(b: _Builder, report: ImportReport, block: dict, lo: int, hi: int, start: int) -> None:
    """Add the block's lines ``lo..hi-1`` (all vouched for) as the row reader would, in one pass of array
    operations: fitness observations in order of first appearance, the rows' records in file order."""
    table, names, gene, ptype = block["table"], block["conditions"], block["gene"], block["type"]
    at = slice(int(np.searchsorted(block["rows"], lo)), int(np.searchsorted(block["rows"], hi)))
    q, a, vals, local = block["query"][at], block["array"][at], block["values"][at], block["condition"][at]
    m = hi - lo
    report.rows += m
    qi, ai = gene[q], gene[a]
    unmapped = np.flatnonzero((qi < 0) | (ai < 0))
    if len(unmapped):
        report.unmapped_rows += len(unmapped)
        report.skip(_UNMAPPED_SKIP, len(unmapped))
        for r in unmapped.tolist():
            for c in (q[r], a[r]):
                if gene[c] < 0:
                    report.add_unmapped(start + lo + r, table[c][4])
    # fitness observations, query then array of each row, only mapped genes; NaN ones are counted and skipped
    strain_obs = np.stack([q, a], 1).ravel()
    cond_obs = np.repeat(local, 2)
    value_obs = vals[:, [2, 3]].ravel()
    mapped = gene[strain_obs] >= 0
    nan = np.isnan(value_obs) & mapped
    if nan.any():
        report.skip("fitness observations missing (NaN) and not averaged", int(nan.sum()))
    use = mapped & ~nan
    report.fitness_observations += int(use.sum())
    key = strain_obs[use] * max(len(names), 1) + cond_obs[use]
    uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    sums = np.bincount(inverse, value_obs[use], len(uniq))
    counts = np.bincount(inverse, minlength=len(uniq))
    for u in np.argsort(first, kind="stable").tolist():
        code, c = divmod(int(uniq[u]), max(len(names), 1))
        _, g, t, cls, _ = table[code]
        b.add_fitness_sum([g], [t], cls, names[c], float(sums[u]), int(counts[u]))
    # records: both mapped and not the same ORF
    same = (qi == ai) & (qi >= 0)
    if same.any():
        report.skip("rows pairing an ORF with itself (no double mutant record)", int(same.sum()))
    rec = np.flatnonzero((qi >= 0) & (ai >= 0) & ~same)
    eps, p = vals[rec, 0], vals[rec, 1]
    columns = {"epsilon": eps, "epsilon_pvalue": p, "fitness": vals[rec, 4], "fitness_sd": vals[rec, 5],
               "gi_significant": significance_call(eps, p)}  # fmt: skip
    global_code = np.zeros(len(names), dtype=np.int64)
    order = np.unique(local[rec], return_index=True)  # conditions in order of first appearance among the records
    for c in order[0][np.argsort(order[1])].tolist():
        global_code[c] = b.condition_code(names[c])
    b.add_records(np.stack([qi[rec], ai[rec]], 1), np.stack([ptype[q[rec]], ptype[a[rec]]], 1), global_code[local[rec]],
                  columns)  # fmt: skip


def _codes(values: list[str], code: dict[str, int]) -> np.ndarray:
    """Codes of ``values`` in order of first appearance (``code`` is filled in)."""
    for v in dict.fromkeys(values):
        code.setdefault(v, len(code))
    return np.fromiter(map(code.__getitem__, values), np.int64, len(values))


# ---------------------------------------------------------------------- Kuzmin 2018 / 2020
def _read_kuzmin(
    path: Path, genome: Genome, header: list[str], fmt: str, skip_bad_rows: bool, marker: str
) -> tuple[PerturbationData, ImportReport]:
    report = ImportReport(str(path), fmt)
    b = _Builder(KUZMIN_PHENOTYPES)
    marker_u = marker.upper()
    for lineno, f in _rows(path, header, report):
        report.rows += 1
        try:
            if len(f) != len(header):
                raise _RowError(f"expected {len(header)} tab-separated columns, got {len(f)}")
            q, a = _parse_strain(f[0]), _parse_strain(f[2])
            if len(a.orfs) != 1:
                raise _RowError(f"array strain {a.raw!r} names {len(a.orfs)} ORFs; arrays are single mutants")
            qtypes, at = _strain_types(q, f[1]), _strain_types(a, f[3])[0]
            kind = f[4].strip().lower()
            raw, adj, p, qfit, afit, cfit, csd = (_number(f[i], header[i]) for i in range(5, 12))
            qorfs = list(q.orfs)
            has_marker = [o.upper() == marker_u for o in qorfs]
            if kind == "digenic":
                core = [(o, t) for o, t, m in zip(qorfs, qtypes, has_marker, strict=True) if not m]
                if len(core) != 1:
                    raise _RowError(f"digenic row: query {q.raw!r} should be one ORF (plus the {marker} hoΔ marker)")
            elif kind == "trigenic":
                if len(qorfs) != 2 or any(has_marker):
                    raise _RowError(f"trigenic row: query {q.raw!r} should be two ORFs (neither the hoΔ marker)")
                core = list(zip(qorfs, qtypes, strict=True))
            else:
                raise _RowError(f"combined mutant type {f[4].strip()!r} is neither 'digenic' nor 'trigenic'")
        except _RowError as e:
            _handle_bad(path, lineno, e, skip_bad_rows, report)
            continue
        if kind == "digenic" and any(has_marker):
            report.skip("hoΔ markers dropped from digenic queries")
        idx = _map(genome, [o for o, _ in core] + [a.orfs[0]], lineno, report)
        qidx, ai = idx[:-1], idx[-1]
        ctypes = [t for _, t in core]
        if all(i >= 0 for i in qidx) and len(set(qidx)) == len(qidx):
            b.add_fitness(qidx, ctypes, q.allele_class, "", qfit, report)
        if ai >= 0:
            b.add_fitness([ai], [at], a.allele_class, "", afit, report)
        if any(i < 0 for i in idx):
            continue
        if len(set(idx)) != len(idx):
            report.skip("rows repeating an ORF within the combined mutant (no interaction record)")
            continue
        if kind == "digenic":
            ph = {"epsilon": adj, "epsilon_raw": raw, "gi_significant": significance_call(adj, p)}
        else:
            ph = {"tau": adj, "tau_raw": raw, "gi_significant": trigenic_significance_call(adj, p)}
        b.add_record(idx, ctypes + [at], "", pvalue=p, fitness=cfit, fitness_sd=csd, **ph)
    return b.build(genome, report, fmt, path, with_condition=False), report


def read_kuzmin2018(
    path: str | Path, genome: Genome, skip_bad_rows: bool = False, marker: str = HO_MARKER
) -> tuple[PerturbationData, ImportReport]:
    """Read Kuzmin et al. 2018 Data File S1 (12 tab-separated columns, digenic and trigenic rows).

    Queries like ``YAL015C+YDL227C_tm461`` are double-mutant query strains. On ``digenic`` rows the
    hoΔ marker (``marker``, YDL227C) is dropped, giving the double mutant (query ORF, array ORF) with
    ``epsilon`` = adjusted score and ``epsilon_raw`` = raw score; on ``trigenic`` rows the record is
    the triple (both query ORFs + array) with ``tau`` = adjusted and ``tau_raw`` = raw score. Both carry
    ``pvalue``, ``fitness`` (combined mutant fitness), ``fitness_sd`` and ``gi_significant``. Query and
    array fitness columns give de-duplicated fitness records: single mutants (array strains, and
    control queries whose second ORF is the marker) and double mutants (trigenic queries).
    """
    return _read_kuzmin(Path(path), genome, KUZMIN2018_HEADER, "kuzmin2018", skip_bad_rows, marker)


def read_kuzmin2020(
    path: str | Path, genome: Genome, skip_bad_rows: bool = False, marker: str = HO_MARKER
) -> tuple[PerturbationData, ImportReport]:
    """Read Kuzmin et al. 2020 Table S1, exported from the supplementary xlsx to TSV.

    The layout (checked against the published Table S1 header) is that of 2018 with the last two
    columns named ``Double/triple mutant fitness`` and ``Double/triple mutant fitness standard
    deviation``; records and phenotypes are as in :func:`read_kuzmin2018`. Columns are read by
    position, so header wording differences are only noted in the report.
    """
    return _read_kuzmin(Path(path), genome, KUZMIN2020_HEADER, "kuzmin2020", skip_bad_rows, marker)


SCREEN_READERS = {
    "costanzo2016": read_costanzo2016,
    "kuzmin2018": read_kuzmin2018,
    "kuzmin2020": read_kuzmin2020,
}
