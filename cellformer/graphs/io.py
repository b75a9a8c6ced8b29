"""Reading graphs from edge-list files, with a report of every row that did not make it."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cellformer.errors import UserError
from cellformer.genome.genome import Genome, open_text
from cellformer.graphs.graph import GeneGraph


@dataclass
class LoadReport:
    """What happened to the rows of one graph file.

    ``unmapped_examples`` holds ``(line number, gene name)`` pairs for the first rows whose genes are not
    in the genome. Nothing is dropped without being counted here.
    """

    source: str
    rows: int = 0
    loaded: int = 0
    unmapped_rows: int = 0
    unmapped_genes: set[str] = field(default_factory=set)
    unmapped_examples: list[tuple[int, str]] = field(default_factory=list)
    self_loops: int = 0
    below_threshold: int = 0
    duplicates: int = 0
    max_examples: int = 5

    def add_unmapped(self, line: int, gene: str) -> None:
        self.unmapped_genes.add(gene)
        if len(self.unmapped_examples) < self.max_examples:
            self.unmapped_examples.append((line, gene))

    def summary(self) -> str:
        """One human-readable paragraph."""
        parts = [f"{self.source}: {self.loaded} of {self.rows} rows loaded"]
        if self.unmapped_rows:
            ex = ", ".join(f"line {ln}: {g}" for ln, g in self.unmapped_examples)
            parts.append(
                f"{self.unmapped_rows} rows name genes not in the genome "
                f"({len(self.unmapped_genes)} distinct names; e.g. {ex})"
            )
        if self.below_threshold:
            parts.append(f"{self.below_threshold} rows below the score threshold")
        if self.self_loops:
            parts.append(f"{self.self_loops} self loops skipped")
        if self.duplicates:
            parts.append(f"{self.duplicates} duplicate edges merged (max weight kept)")
        return "; ".join(parts)


def build_graph(
    name: str,
    genome: Genome,
    pairs: list[tuple[int, str, str, float]],
    report: LoadReport,
    directed: bool,
    min_score: float | None = None,
) -> GeneGraph:
    """Map ``(line, gene_a, gene_b, score)`` rows onto ``genome`` and build the graph.

    Shared by every graph importer: rows naming unknown genes are counted in ``report`` with examples,
    rows below ``min_score`` and self loops are counted, duplicate edges merged.
    """
    src, dst, w = [], [], []
    seen: set[tuple[int, int]] = set()
    for line, a, b, score in pairs:
        report.rows += 1
        if min_score is not None and score < min_score:
            report.below_threshold += 1
            continue
        ia, ib = genome.lookup(a), genome.lookup(b)
        if ia < 0 or ib < 0:
            report.unmapped_rows += 1
            report.add_unmapped(line, a if ia < 0 else b)
            continue
        if ia == ib:
            report.self_loops += 1
            continue
        key = (ia, ib) if directed else (min(ia, ib), max(ia, ib))
        if key in seen:
            report.duplicates += 1
        seen.add(key)
        src.append(ia)
        dst.append(ib)
        w.append(score)
        report.loaded += 1
    return GeneGraph.from_edges(
        name,
        len(genome),
        np.array(src, dtype=np.int64),
        np.array(dst, dtype=np.int64),
        np.array(w, dtype=np.float32),
        directed,
    )


def load_edge_list(
    path: str | Path,
    genome: Genome,
    name: str | None = None,
    directed: bool | None = None,
    min_score: float | None = None,
    warn: bool = True,
) -> tuple[GeneGraph, LoadReport]:
    """Load a TSV edge list: ``gene_a gene_b [score]`` or directed ``regulator target``.

    A header line is recognised when its first two fields are not genes of the genome and the third
    (if present) is not a number. ``directed`` defaults to True when the header's first column is
    ``regulator`` or ``source``. Rows whose genes don't map are counted and reported with examples
    (a ``UserWarning`` with the summary when ``warn``), never fatal. Malformed rows (fewer than two
    fields, a non-numeric score) and unreadable files raise :class:`~cellformer.errors.UserError` naming the
    file and line.
    """
    path = Path(path)
    name = name or path.name.split(".")[0]
    report = LoadReport(str(path))
    pairs: list[tuple[int, str, str, float]] = []
    header: list[str] | None = None
    with open_text(path, "edge list") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split("\t") if "\t" in line else line.split()
            if len(fields) < 2:
                raise UserError(f"{path}:{lineno}: expected at least 2 fields (gene_a, gene_b), got {line!r}")
            if header is None and not pairs and _looks_like_header(fields, genome):
                header = [f.strip().lower() for f in fields]
                continue
            score = 1.0
            if len(fields) >= 3 and fields[2].strip():
                try:
                    score = float(fields[2])
                except ValueError:
                    raise UserError(
                        f"{path}:{lineno}: score {fields[2]!r} is not a number (columns: gene_a gene_b [score])"
                    ) from None
                if not np.isfinite(score):
                    raise UserError(f"{path}:{lineno}: score {fields[2]!r} is not a finite number")
                if not 0 <= score <= float(np.finfo(np.float32).max):  # weights are non-negative float32
                    raise UserError(f"{path}:{lineno}: score {fields[2]!r} is not an edge weight (0 to about 3.4e38)")
            pairs.append((lineno, fields[0].strip(), fields[1].strip(), score))
    if directed is None:
        directed = bool(header) and header[0] in {"regulator", "source", "tf", "from"}
    graph = build_graph(name, genome, pairs, report, directed, min_score)
    if warn and report.unmapped_rows:
        warnings.warn(report.summary(), UserWarning, stacklevel=2)
    return graph, report


def _looks_like_header(fields: list[str], genome: Genome) -> bool:
    if fields[0] in genome or fields[1] in genome:
        return False
    if len(fields) >= 3:
        try:
            float(fields[2])
            return False
        except ValueError:
            return True
    return True


def save_edge_list(graph: GeneGraph, genome: Genome, path: str | Path) -> None:
    """Write a graph as a (gzipped if ``.gz``) TSV edge list that :func:`load_edge_list` reads back."""
    import gzip

    path = Path(path)
    a = graph.adj.tocoo()
    keep = np.ones(a.nnz, dtype=bool) if graph.directed else a.row < a.col
    head = "regulator\ttarget\tscore\n" if graph.directed else "gene_a\tgene_b\tscore\n"
    lines = [head] + [
        f"{genome.genes[i]}\t{genome.genes[j]}\t{w:.6g}\n"
        for i, j, w in zip(a.row[keep], a.col[keep], a.data[keep], strict=True)
    ]
    opener = gzip.open(path, "wt", encoding="utf-8") if path.suffix == ".gz" else open(path, "w")
    with opener as fh:
        fh.writelines(lines)
