"""Import genotype → phenotype data into :class:`~cellformer.genotype.data.GenotypeData`.

Two layouts (see ``data/README.md``, "Genotype datasets"):

* :func:`read_genotype_table`: a samples × markers table (TSV or CSV, optionally ``.gz``) plus a
  phenotype table keyed by sample id, and optionally a marker table (id, chrom, pos[, gene]).
* :func:`read_npy_splits`: the ``geno_{train,val,test}.npy`` / ``pheno_{train,val,test}.npy`` layout in
  which the 100,000-segregant data circulates.

**Allele convention.** Genotypes are stored as +1 / -1 (0 = missing). The *reference* allele is +1:
for two-letter tables (e.g. ``B``/``R``) the reference is ``reference_allele`` when given, else the
first of the two letters seen in the file (reading order); for 0/1 tables ``1`` is +1 and ``0`` is -1
unless ``reference_allele="0"``; ±1 tables are kept as they are unless ``reference_allele="-1"``.
``NA``, ``NaN``, empty, ``-``, ``.`` and ``N`` (any case) are missing calls (0), and so is a ``0`` in a
±1 table. The coding is decided from the whole file: a file mixing letters and numbers, or holding both
``0`` and ``-1`` calls (a 0/1 table with a stray -1, or a ±1 table with zeros), is an error naming the
first offending line and marker unless ``allele_coding`` says which it is. The dataset records the
coding (:attr:`GenotypeData.alleles <cellformer.genotype.data.GenotypeData.alleles>`: which call is +1,
which -1); a checkpoint carries it on, and query tables are read with it (``alleles=``), so that a
prediction never depends on the order of a query file's rows.

**Bad rows** (wrong number of fields, an unknown allele code, a duplicate or empty sample id, a
non-numeric phenotype) do not stop the import: each is reported as ``file:line: problem``, counted in
the :class:`~cellformer.data.table.ImportReport` and written to the rejects file when one is given.
With ``strict=True`` (query tables) a bad row is an error naming its line instead.
Samples with genotypes but no phenotype row are kept (phenotypes NaN) and counted; phenotype rows
without a genotyped sample cannot be used and are counted and named in the report. Nothing is dropped
silently. The report's ``rows`` / ``imported`` / ``rejected`` count genotype-table rows plus
phenotype-table rows; its ``notes`` say how alleles were coded, which samples lack phenotypes or
genotypes, and which markers have no position.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

from cellformer.data.dataset import SPLITS
from cellformer.data.table import ImportReport, parse_value
from cellformer.errors import UserError, shorten
from cellformer.genome.genome import open_text
from cellformer.genotype.data import GenotypeData, Loci

#: Default phenotype names of the 18-condition 100,000-segregant data (column order of pheno_*.npy).
NPY_PHENOTYPE_NAMES = (
    "23C", "25C", "27C", "30C", "33C", "35C", "37C", "cu", "suloc", "ynb",
    "eth", "gu", "li", "mann", "mol", "raff", "sds", "4NQO",
)  # fmt: skip
MISSING_CALLS = frozenset({"", "NA", "NAN", "N/A", "-", ".", "N"})
MISSING_VALUES = frozenset({"", "na", "n/a", "nan", "-"})
ALLELE_CODINGS = ("auto", "01", "pm1", "letters")

_ROMAN = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100}
_CHR_IN_NAME = re.compile(r"(?:^|[_:.\-|])chr(?:omosome)?[_]?([0-9]+|[ivxlc]+)[_:.\-|](\d+)(?=$|[_:.\-|])", re.I)


class _Rejects:
    """Collects rejected rows for the report and the rejects file."""

    def __init__(self, report: ImportReport, strict: bool = False):
        self.report = report
        self.strict = strict
        self.lines: list[tuple[int, int, str]] = []
        self.files: dict[str, int] = {}

    def add(self, path: Path, line: int, kind: str, problem: str, raw: str) -> None:
        if self.strict:
            raise UserError(f"{path}:{line}: {problem}")
        self.report.reject(line, kind, f"{path.name}: {problem}")
        self.files.setdefault(str(path), len(self.files))
        self.lines.append((self.files[str(path)], line, f"{path}\t{line}\t{kind}\t{problem}\t{raw}"))

    def write(self, path: str | Path | None) -> None:
        """Write the rejects TSV (file, then line order) when there are rejects and a path."""
        self.report.examples.sort(key=lambda x: x[0])
        if path is None or not self.lines:
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write("file\tline\tkind\treason\trow\n")
            fh.writelines(f"{x[2]}\n" for x in sorted(self.lines, key=lambda x: x[:2]))
        self.report.rejects_path = str(path)


# ---------------------------------------------------------------------- small parsers
def parse_chromosome(name: str) -> int:
    """Chromosome number of ``chr01``, ``chrI``, ``chrXVI``, ``12``, ``XII``… (0 when not recognised)."""
    s = str(name).strip()
    s = re.sub(r"^chr(?:omosome)?[_ ]?", "", s, flags=re.I)
    if s.isdigit():
        return int(s)
    s = s.upper()
    if not s or any(ch not in _ROMAN for ch in s):
        return 0
    total = 0
    for i, ch in enumerate(s):
        v = _ROMAN[ch]
        total += -v if i + 1 < len(s) and _ROMAN[s[i + 1]] > v else v
    return total


def parse_marker_name(name: str) -> tuple[int, int]:
    """``(chrom, pos)`` from a marker name like ``27915_chr01_27915_T_C`` or ``chrIV:12345``; ``(0, -1)`` if none."""
    m = _CHR_IN_NAME.search(name)
    if not m:
        return 0, -1
    return parse_chromosome(m.group(1)), int(m.group(2))


def _sniff(line: str, delimiter: str | None) -> str | None:
    if delimiter is not None:
        return delimiter
    if "\t" in line:
        return "\t"
    if "," in line:
        return ","
    return None  # any whitespace


def _split(line: str, delimiter: str | None) -> list[str]:
    return line.split(delimiter) if delimiter is not None else line.split()


def _lines(path: Path, what: str):
    """``(line number, raw line)`` of the non-blank, non-comment lines (physical line numbers).

    A file that is not UTF-8 text or a truncated ``.gz`` is a :class:`~cellformer.errors.UserError`
    naming the file as ``what``.
    """
    with open_text(path, what) as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip() or line.startswith("#"):
                continue
            yield lineno, line


def _open(path: str | Path, what: str) -> tuple[Path, int, str, object]:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} {path} does not exist")
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory (expected a TSV/CSV file)")
    lines = _lines(path, what)
    try:
        lineno, header = next(lines)
    except StopIteration:
        raise UserError(f"{path}: the {what} is empty (expected a header line)") from None
    return path, lineno, header, lines


def read_marker_table(path: str | Path, delimiter: str | None = None) -> dict[str, tuple[int, int, str]]:
    """``{marker id: (chrom, pos, gene)}`` from a table with columns id, chrom, pos[, gene].

    A header line is recognised by its column names (``id``/``marker``/``name``/``snp``,
    ``chrom``/``chr``/``chromosome``, ``pos``/``position``/``bp``, ``gene``), in any order; without one
    the columns are taken in that order. Chromosomes may be numbers, ``chr01`` or roman numerals
    (``chrXVI``); an unrecognised chromosome is 0 and ``NA`` positions are -1. Errors name the line.
    """
    path, lineno, header, lines = _open(path, "marker table")
    delim = _sniff(header, delimiter)
    cols = [c.strip().lower() for c in _split(header, delim)]
    aliases = {
        "id": ("id", "marker", "marker_id", "name", "snp", "locus"),
        "chrom": ("chrom", "chr", "chromosome"),
        "pos": ("pos", "position", "bp", "start"),
        "gene": ("gene", "nearest_gene", "gene_name"),
    }
    idx = {k: next((cols.index(a) for a in names if a in cols), None) for k, names in aliases.items()}
    rows = []
    if idx["id"] is not None and idx["chrom"] is not None and idx["pos"] is not None:
        pass  # a header line
    else:
        idx = {"id": 0, "chrom": 1, "pos": 2, "gene": 3 if len(cols) > 3 else None}
        rows.append((lineno, header))
    if len(cols) < 3:
        raise UserError(f"{path}:{lineno}: a marker table needs at least 3 columns (id, chrom, pos)")
    rows.extend(lines)
    out: dict[str, tuple[int, int, str]] = {}
    for ln, line in rows:
        f = [x.strip() for x in _split(line, delim)]
        need = max(v for v in idx.values() if v is not None) + 1
        if len(f) < need:
            raise UserError(f"{path}:{ln}: expected at least {need} fields, got {len(f)}")
        mid = f[idx["id"]]
        if not mid:
            raise UserError(f"{path}:{ln}: empty marker id")
        if mid in out:
            raise UserError(f"{path}:{ln}: marker {mid!r} appears twice")
        raw_pos = f[idx["pos"]]
        if raw_pos.lower() in MISSING_VALUES:
            pos = -1
        else:
            try:
                pos = int(float(raw_pos))
            except ValueError:
                raise UserError(f"{path}:{ln}: position {raw_pos!r} is not a number") from None
        gene = f[idx["gene"]] if idx["gene"] is not None and idx["gene"] < len(f) else ""
        out[mid] = (parse_chromosome(f[idx["chrom"]]), pos, "" if gene.lower() in MISSING_VALUES else gene)
    return out


def _loci_for(ids: list[str], markers: dict[str, tuple[int, int, str]] | None, report: ImportReport | None) -> Loci:
    chrom = np.zeros(len(ids), dtype=np.int16)
    pos = np.full(len(ids), -1, dtype=np.int64)
    gene = [""] * len(ids)
    from_table = parsed = 0
    for i, mid in enumerate(ids):
        if markers is not None and mid in markers:
            chrom[i], pos[i], gene[i] = markers[mid]
            from_table += 1
            continue
        c, p = parse_marker_name(mid)
        if c:
            chrom[i], pos[i] = c, p
            parsed += 1
    unplaced = len(ids) - from_table - parsed
    if report is not None:
        if markers is not None:
            report.notes.append(f"{from_table} of {len(ids)} markers placed from the marker table")
            absent = [m for m in ids if m not in markers]
            if absent:
                report.notes.append(f"{len(absent)} markers are not in the marker table (e.g. {', '.join(absent[:3])})")
        if parsed:
            report.notes.append(f"{parsed} marker positions parsed from marker names (chrNN_position)")
        if unplaced:
            report.notes.append(f"{unplaced} markers have no known position (chrom 0, pos -1)")
    return Loci(ids=ids, chrom=chrom, pos=pos, gene=gene)


# ---------------------------------------------------------------------- genotype table
_NUMBER = re.compile(r"[+-]?\d+(\.0*)?")


def _is_number(token: str) -> bool:
    return bool(_NUMBER.fullmatch(token))


def _label(coding: str) -> str:
    return {"01": "0/1", "pm1": "-1/+1", "letters": "letters"}[coding]


def alleles_note(alleles: dict[str, str]) -> str:
    """``alleles coded as letters R/B; R read as +1 (reference)`` for an allele record."""
    coding, plus, minus = alleles["coding"], alleles["plus"], alleles["minus"]
    if coding == "letters":
        return f"alleles coded as letters {plus}/{minus}; {plus} read as +1 (reference)"
    return f"alleles coded {_label(coding)}; {plus} read as +1 (reference)"


def _decide_coding(
    path: Path,
    tokens: Counter,
    first_at: dict[str, tuple[int, str]],
    allele_coding: str,
    reference_allele: str | None,
    first_seen: list[str],
) -> dict[str, str]:
    """The allele record ``{"coding", "plus", "minus"}`` of a table, decided from all of its calls.

    ``first_at`` gives the line and marker of each call's first occurrence, for the message when the
    file mixes codings.
    """
    if allele_coding not in ALLELE_CODINGS:
        raise UserError(f"unknown allele coding {allele_coding!r}; expected one of {', '.join(ALLELE_CODINGS)}")
    calls = {t: c for t, c in tokens.items() if t not in MISSING_CALLS}
    numeric = {t for t in calls if _is_number(t)}

    def where(ts) -> str:
        t = min(ts, key=lambda x: first_at[x])
        line, marker = first_at[t]
        return f"{path}:{line}: marker {marker!r}: call {shorten(t)!r}"

    coding = allele_coding
    if coding == "auto":
        n_num = sum(calls[t] for t in numeric)
        letters = [t for t in calls if t not in numeric]
        n_let = sum(calls[t] for t in letters)
        if n_num and n_let:
            minority = letters if n_let <= n_num else sorted(numeric)
            raise UserError(
                f"{where(minority)} mixes letter and numeric allele calls ({n_let} letter, {n_num} numeric "
                "calls in the file); give one coding (--coding letters, 01 or pm1)"
            )
        if n_num:
            zeros = [t for t in numeric if float(t) == 0]
            minus = [t for t in numeric if float(t) == -1]
            if zeros and minus:
                n0, n1 = sum(calls[t] for t in zeros), sum(calls[t] for t in minus)
                raise UserError(
                    f"{where(minus if n1 <= n0 else zeros)}: the file holds both 0 ({n0}) and -1 ({n1}) calls, "
                    "so it is neither a 0/1 nor a -1/+1 table; say which with --coding 01 (a -1 is then a bad "
                    "call) or --coding pm1 (a 0 is then missing)"
                )
            coding = "pm1" if minus else "01"
        elif n_let:
            coding = "letters"
        else:
            raise UserError(f"{path}: the genotype table has no allele calls (every call is missing)")
    if coding in ("01", "pm1"):
        lo, hi = (0.0, 1.0) if coding == "01" else (-1.0, 1.0)
        if not any(float(t) in (lo, hi) for t in numeric):
            raise UserError(
                f"the genotype table has no {lo:g}/{hi:g} allele calls for the {coding} coding "
                f"(found {_examples(calls)})"
            )
        plus, minus = f"{hi:g}", f"{lo:g}"
        if reference_allele is not None:
            try:
                ref = float(reference_allele)
            except ValueError:
                raise UserError(f"reference allele {reference_allele!r} is not a {coding} code") from None
            if ref not in (lo, hi):
                raise UserError(f"reference allele {reference_allele!r} is not one of {lo:g}, {hi:g}")
            if ref == lo:
                plus, minus = minus, plus
        return {"coding": coding, "plus": plus, "minus": minus}
    letters = [t for t, _ in sorted(((t, c) for t, c in calls.items() if t not in numeric), key=lambda x: -x[1])]
    if not letters:
        raise UserError(f"the genotype table has no letter allele calls (found {_examples(calls)})")
    if reference_allele is not None:
        ref = reference_allele.strip().upper()
        if ref not in calls:
            raise UserError(f"reference allele {reference_allele!r} does not occur in the genotype table")
        others = [t for t in letters if t != ref]
        if not others:
            raise UserError(f"the genotype table has only one allele ({ref}); expected two letters")
        alt = others[0]
    else:
        if len(letters) < 2:
            raise UserError(f"the genotype table has only one allele code ({', '.join(letters)}); expected two")
        pair = set(letters[:2])
        ref = next(t for t in first_seen if t in pair)
        alt = next(t for t in letters[:2] if t != ref)
    return {"coding": "letters", "plus": ref, "minus": alt}


def check_alleles(alleles: dict) -> dict[str, str]:
    """An allele record (``{"coding": "letters"|"01"|"pm1", "plus": call, "minus": call}``), checked."""
    if not isinstance(alleles, dict) or set(alleles) != {"coding", "plus", "minus"}:
        raise UserError(f"an allele record needs the keys coding, plus and minus; got {alleles!r}")
    out = {k: str(alleles[k]).strip().upper() for k in ("coding", "plus", "minus")}
    out["coding"] = str(alleles["coding"]).strip().lower()
    if out["coding"] not in ALLELE_CODINGS[1:] or out["plus"] == out["minus"]:
        raise UserError(f"invalid allele record {alleles!r}")
    if out["coding"] != "letters":
        try:
            out["plus"], out["minus"] = (f"{float(out[k]):g}" for k in ("plus", "minus"))
        except ValueError:
            raise UserError(f"invalid allele record {alleles!r}") from None
    return out


def _lookup_table(alleles: dict[str, str], tokens: Counter) -> dict[str, int]:
    """``{call: +1 / -1 / 0}`` for every call of the file that the allele record reads (others are bad)."""
    lut = {t: 0 for t in MISSING_CALLS}
    if alleles["coding"] == "letters":
        lut[alleles["plus"]], lut[alleles["minus"]] = 1, -1
        return lut
    plus, minus = float(alleles["plus"]), float(alleles["minus"])
    for t in tokens:
        if _is_number(t):
            v = float(t)
            if v == plus:
                lut[t] = 1
            elif v == minus:
                lut[t] = -1
            elif alleles["coding"] == "pm1" and v == 0:  # a 0 in a ±1 table is a missing call
                lut[t] = 0
    return lut


def _examples(calls: dict[str, int], n: int = 5) -> str:
    """The ``n`` most frequent allele codes, for messages."""
    top = sorted(calls, key=lambda t: -calls[t])
    return ", ".join(top[:n]) + (", …" if len(top) > n else "")


def read_genotype_table(
    geno_path: str | Path,
    pheno_path: str | Path | None = None,
    *,
    marker_table: str | Path | None = None,
    allele_coding: str = "auto",
    reference_allele: str | None = None,
    delimiter: str | None = None,
    rejects: str | Path | None = None,
    alleles: dict[str, str] | None = None,
    strict: bool = False,
) -> tuple[GenotypeData, ImportReport]:
    """Import a samples × markers table and a phenotype table (allele convention in the module docstring).

    Args:
        geno_path: TSV/CSV (optionally ``.gz``): header = sample-id column name then marker ids; one row
            per sample (id, then one allele call per marker).
        pheno_path: TSV/CSV keyed by sample id: header = sample-id column name then phenotype names;
            ``NA``/empty = not measured. None: no phenotypes (P = 0, e.g. for prediction).
        marker_table: optional table of marker positions (:func:`read_marker_table`); markers not in it
            are placed from their names (``…_chr01_27915…``) when possible, else unknown.
        allele_coding: ``auto`` (from the calls in the file), ``01``, ``pm1`` or ``letters``.
        reference_allele: the allele read as +1 (default: ``1``, or the first letter seen).
        delimiter: field separator (default: tab if the header has one, else comma, else whitespace).
        rejects: path of the rejects TSV (file, line, kind, reason, row) written when rows are rejected.
        alleles: a fixed allele record (``{"coding", "plus", "minus"}``, e.g. a checkpoint's) instead of one
            decided from the file (then ``allele_coding`` and ``reference_allele`` are not used).
        strict: a bad row (wrong field count, unknown allele, empty or repeated sample id) is an error
            naming its line rather than a rejected row (for query tables, whose rows must all be read).

    Returns:
        the dataset (no split stored) and the report.
    """
    path, hline, header, lines = _open(geno_path, "genotype table")
    delim = _sniff(header, delimiter)
    head = [h.strip() for h in _split(header, delim)]
    if len(head) < 2:
        raise UserError(f"{path}:{hline}: the header needs a sample-id column and at least one marker")
    marker_ids = head[1:]
    if any(not m for m in marker_ids):
        raise UserError(f"{path}:{hline}: empty marker id in the header (column {marker_ids.index('') + 2})")
    dup = next((m for m, c in Counter(marker_ids).items() if c > 1), None)
    if dup is not None:
        raise UserError(f"{path}:{hline}: marker {shorten(dup)!r} appears twice in the header")
    report = ImportReport(str(path), "genotype-table")
    rej = _Rejects(report, strict)
    width = len(head)

    # pass 1 (in memory): fields and allele counts
    rows: list[tuple[int, str, str, list[str]]] = []
    tokens: Counter = Counter()
    first_seen: list[str] = []
    first_at: dict[str, tuple[int, str]] = {}  # call -> (line, marker) of its first occurrence
    seen_ids: dict[str, int] = {}
    for lineno, line in lines:
        report.rows += 1
        f = [x.strip() for x in _split(line, delim)]
        if len(f) != width:
            rej.add(path, lineno, "field_count", f"expected {width} fields (as in the header), got {len(f)}", line)
            continue
        sid = f[0]
        if not sid:
            rej.add(path, lineno, "empty_sample", "empty sample id", line)
            continue
        if sid in seen_ids:
            rej.add(path, lineno, "duplicate_sample", f"sample {shorten(sid)!r} already on line {seen_ids[sid]}", line)
            continue
        seen_ids[sid] = lineno
        calls = [c.upper() for c in f[1:]]
        tokens.update(calls)
        new = set(calls).difference(first_at)
        if new:
            for j, c in enumerate(calls):
                if c in new and c not in first_at:
                    first_at[c] = (lineno, marker_ids[j])
        if len(first_seen) < 2:
            for c in calls:
                if c not in MISSING_CALLS and c not in first_seen and not _is_number(c):
                    first_seen.append(c)
        rows.append((lineno, line, sid, calls))
    if not rows:
        rej.write(rejects)
        raise UserError(f"{path}: no genotype rows to import ({report.summary()})")
    if alleles is not None:
        alleles = check_alleles(alleles)
    else:
        alleles = _decide_coding(path, tokens, first_at, allele_coding, reference_allele, first_seen)
    coding_note = alleles_note(alleles)
    report.notes.append(coding_note)
    lut = _lookup_table(alleles, tokens)
    allowed = f"{alleles['plus']}/{alleles['minus']} or a missing code (NA, -, N, empty"
    allowed += ", 0)" if alleles["coding"] == "pm1" else ")"

    geno = np.zeros((len(rows), len(marker_ids)), dtype=np.int8)
    sample_ids: list[str] = []
    k = 0
    for lineno, line, sid, calls in rows:
        try:
            geno[k] = [lut[c] for c in calls]
        except KeyError:
            bad = next(j for j, c in enumerate(calls) if c not in lut)
            rej.add(
                path,
                lineno,
                "bad_allele",
                f"unknown allele code {shorten(calls[bad])!r} for marker {shorten(marker_ids[bad])!r} "
                f"(expected {allowed})",
                line,
            )
            continue
        sample_ids.append(sid)
        k += 1
    geno = geno[:k]
    n_geno_imported = k
    if not k:
        rej.write(rejects)
        raise UserError(f"{path}: no genotype rows to import ({report.summary()})")
    markers = read_marker_table(marker_table) if marker_table is not None else None
    loci = _loci_for(marker_ids, markers, report)

    names: list[str] = []
    pheno = np.zeros((k, 0), dtype=np.float32)
    if pheno_path is not None:
        names, values = _read_phenotypes(Path(pheno_path), delimiter, report, rej)
        report.phenotype_names = list(names)
        pheno = np.full((k, len(names)), np.nan, dtype=np.float32)
        index = {s: i for i, s in enumerate(sample_ids)}
        missing_geno = [s for s in values if s not in index]
        for s, v in values.items():
            if s in index:
                pheno[index[s]] = v
        no_pheno = [s for s in sample_ids if s not in values]
        report.genotyped_without_phenotypes = len(no_pheno)
        report.phenotyped_without_genotypes = len(missing_geno)
        if no_pheno:
            report.notes.append(
                f"{len(no_pheno)} genotyped samples have no phenotype row (kept, phenotypes NaN; "
                f"e.g. {', '.join(no_pheno[:3])})"
            )
        if missing_geno:
            report.notes.append(
                f"{len(missing_geno)} phenotyped samples have no genotype row (not imported; "
                f"e.g. {', '.join(missing_geno[:3])})"
            )
    report.imported = n_geno_imported + (len(values) if pheno_path is not None else 0)
    rej.write(rejects)
    data = GenotypeData(
        genotypes=geno,
        phenotypes=pheno,
        phenotype_names=names,
        loci=loci,
        sample_ids=sample_ids,
        attrs={
            "source": str(path),
            "phenotype_source": str(pheno_path or ""),
            "allele_coding": coding_note,
            "alleles": json.dumps(alleles),
        },
    )
    return data, report


def _read_phenotypes(
    path: Path, delimiter: str | None, report: ImportReport, rej: _Rejects
) -> tuple[list[str], dict[str, np.ndarray]]:
    path, hline, header, lines = _open(path, "phenotype table")
    delim = _sniff(header, delimiter)
    head = [h.strip() for h in _split(header, delim)]
    names = head[1:]
    if not names:
        raise UserError(f"{path}:{hline}: the header needs a sample-id column and at least one phenotype")
    if any(not x for x in names):
        raise UserError(f"{path}:{hline}: empty phenotype name in the header")
    dup = next((m for m, c in Counter(names).items() if c > 1), None)
    if dup is not None:
        raise UserError(f"{path}:{hline}: phenotype {dup!r} appears twice in the header")
    values: dict[str, np.ndarray] = {}
    lines_of: dict[str, int] = {}
    for lineno, line in lines:
        report.rows += 1
        f = [x.strip() for x in _split(line, delim)]
        if len(f) != len(head):
            rej.add(path, lineno, "field_count", f"expected {len(head)} fields (as in the header), got {len(f)}", line)
            continue
        sid = f[0]
        if not sid:
            rej.add(path, lineno, "empty_sample", "empty sample id", line)
            continue
        if sid in values:
            rej.add(path, lineno, "duplicate_sample", f"sample {sid!r} already on line {lines_of[sid]}", line)
            continue
        row = np.empty(len(names), dtype=np.float32)
        bad = None
        for j, raw in enumerate(f[1:]):
            if raw.lower() in MISSING_VALUES:
                row[j] = np.nan
                continue
            try:  # the rule of every importer: a finite number that fits a float32
                row[j] = parse_value(raw, f"phenotype {shorten(names[j])!r}")
            except ValueError as e:
                bad = str(e)
                break
        if bad:
            rej.add(path, lineno, "bad_value", bad, line)
            continue
        values[sid] = row
        lines_of[sid] = lineno
    return names, values


# ---------------------------------------------------------------------- npy splits
def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise UserError(f"{path}: not a readable .npy array ({e})") from None


def read_npy_splits(
    directory: str | Path,
    phenotype_names: list[str] | None = None,
    marker_table: str | Path | None = None,
) -> GenotypeData:
    """Read ``geno_{train,val,test}.npy`` (±1, n × L) and ``pheno_{train,val,test}.npy`` (n × P).

    The splits are kept as given (stored in ``split``); sample ids are ``train_000000``… Phenotype names
    default to :data:`NPY_PHENOTYPE_NAMES` when P == 18, else ``pheno_0``… Loci are ``locus_0000``…
    with unknown positions, or the rows of ``marker_table`` in order (it must have L rows). ``train``
    is required; ``val`` and ``test`` may be absent (both files of a split, never one of the two).
    Genotype values other than -1 and +1 are an error.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"{directory} is not a directory (expected geno_train.npy, pheno_train.npy, …)")
    parts = []
    for name in SPLITS:
        gp, pp = directory / f"geno_{name}.npy", directory / f"pheno_{name}.npy"
        if not gp.exists() and not pp.exists() and name != "train":
            continue
        missing = [p.name for p in (gp, pp) if not p.exists()]
        if missing:
            raise UserError(f"{directory}: missing {', '.join(missing)} (the {name} split needs geno_ and pheno_)")
        g, p = _load_npy(gp), _load_npy(pp)
        if g.ndim != 2:
            raise UserError(f"{gp}: expected a 2-d array (samples × loci), got shape {g.shape}")
        if p.ndim == 1:
            p = p.reshape(-1, 1)
        if p.ndim != 2 or p.shape[0] != g.shape[0]:
            raise UserError(f"{pp}: shape {p.shape} does not match {gp.name} with {g.shape[0]} samples")
        parts.append((name, gp, g, pp, p))
    L, P = parts[0][2].shape[1], parts[0][4].shape[1]
    for _name, gp, g, pp, p in parts[1:]:
        if g.shape[1] != L:
            raise UserError(f"{gp}: {g.shape[1]} loci, but {parts[0][1].name} has {L}")
        if p.shape[1] != P:
            raise UserError(f"{pp}: {p.shape[1]} phenotypes, but {parts[0][3].name} has {P}")
    n = sum(g.shape[0] for _, _, g, _, _ in parts)
    geno = np.empty((n, L), dtype=np.int8)
    pheno = np.empty((n, P), dtype=np.float32)
    split = np.empty(n, dtype=np.int8)
    ids: list[str] = []
    at = 0
    for name, gp, g, _pp, p in parts:
        m = g.shape[0]
        for s in range(0, m, 8192):
            block = np.asarray(g[s : s + 8192])
            bad = np.abs(block) != 1
            if bad.any():
                r, c = np.argwhere(bad)[0]
                raise UserError(f"{gp}: genotypes must be -1 or +1; found {block[r, c]!r} at row {s + r}, column {c}")
            geno[at + s : at + s + len(block)] = block
        pheno[at : at + m] = np.asarray(p, dtype=np.float32)
        split[at : at + m] = SPLITS[name]
        width = max(6, len(str(m - 1)))
        ids.extend(f"{name}_{i:0{width}d}" for i in range(m))
        at += m
    if np.isinf(pheno).any():
        raise UserError(f"{directory}: phenotypes contain infinite values")
    if phenotype_names is None:
        phenotype_names = (
            list(NPY_PHENOTYPE_NAMES) if P == len(NPY_PHENOTYPE_NAMES) else [f"pheno_{j}" for j in range(P)]
        )
    elif len(phenotype_names) != P:
        raise UserError(f"{len(phenotype_names)} phenotype names given for {P} phenotype columns")
    if marker_table is not None:
        table = read_marker_table(marker_table)
        if len(table) != L:
            raise UserError(f"{marker_table}: {len(table)} markers, but the genotypes have {L} loci")
        loci = _loci_for(list(table), table, None)
    else:
        loci = Loci.unknown(L)
    return GenotypeData(
        genotypes=geno,
        phenotypes=pheno,
        phenotype_names=list(phenotype_names),
        loci=loci,
        sample_ids=ids,
        split=split,
        attrs={
            "source": str(directory),
            "layout": "npy-splits",
            "splits": ",".join(p[0] for p in parts),
            "alleles": json.dumps({"coding": "pm1", "plus": "1", "minus": "-1"}),
        },
    )


__all__ = [
    "ALLELE_CODINGS",
    "alleles_note",
    "check_alleles",
    "NPY_PHENOTYPE_NAMES",
    "parse_chromosome",
    "parse_marker_name",
    "read_genotype_table",
    "read_marker_table",
    "read_npy_splits",
]
