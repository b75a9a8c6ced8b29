"""Importers for public gene-network files: STRING detailed links, BioGRID TAB3, edge lists, TF-target lists.

Every importer maps its rows onto the genome with the shared :func:`cellformer.graphs.io.build_graph`,
so unmapped genes, self loops, duplicates and rows below a score threshold are all counted in the
returned report. Rows an importer filters out before mapping (other organisms, other interaction types,
STRING's mirrored rows) are counted in :attr:`GraphImportReport.filtered`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cellformer.data.importers.screens import ImportFormatError
from cellformer.errors import UserError
from cellformer.genome.genome import Genome, open_text
from cellformer.graphs.graph import GeneGraph
from cellformer.graphs.io import LoadReport, build_graph, load_edge_list

#: Columns of STRING's ``protein.links.detailed`` files, in order (space separated, header verbatim).
STRING_DETAILED_HEADER = [
    "protein1",
    "protein2",
    "neighborhood",
    "fusion",
    "cooccurence",
    "coexpression",
    "experimental",
    "database",
    "textmining",
    "combined_score",
]
#: Score channels a STRING graph can be built from (the header spells ``cooccurence`` this way).
STRING_CHANNELS = STRING_DETAILED_HEADER[2:]
#: NCBI taxon of S. cerevisiae in STRING ids (``4932.YAL001C``).
STRING_YEAST_TAXON = "4932"
#: NCBI taxon of S. cerevisiae S288C in BioGRID.
BIOGRID_YEAST_ORGANISM = 559292
BIOGRID_COLUMNS = {
    "a": "Systematic Name Interactor A",
    "b": "Systematic Name Interactor B",
    "type": "Experimental System Type",
    "org_a": "Organism ID Interactor A",
    "org_b": "Organism ID Interactor B",
}
BIOGRID_SYSTEM_TYPES = ("physical", "genetic")


@dataclass
class GraphImportReport(LoadReport):
    """A :class:`LoadReport` plus the rows an importer filtered out before mapping, by reason."""

    filtered: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        text = super().summary()
        extra = [f"{n} {reason}" for reason, n in self.filtered.items() if n]
        return "; ".join([text, *extra])


def _channels(channels: list[str] | str) -> list[str]:
    if isinstance(channels, str):
        channels = [c for c in channels.split(",")]
    out = []
    for c in channels:
        key = c.strip().lower()
        key = key[len("string_") :] if key.startswith("string_") else key
        if key not in STRING_CHANNELS:
            raise UserError(f"unknown STRING channel {c!r}; valid channels: {', '.join(STRING_CHANNELS)}")
        if key not in out:
            out.append(key)
    if not out:
        raise UserError(f"no STRING channel given; valid channels: {', '.join(STRING_CHANNELS)}")
    return out


def read_string_detailed(
    path: str | Path,
    genome: Genome,
    channels: list[str] | str,
    min_score: float = 400,
    taxon: str = STRING_YEAST_TAXON,
) -> dict[str, tuple[GeneGraph, GraphImportReport]]:
    """Read a STRING ``protein.links.detailed`` file (optionally gzipped) into one graph per channel.

    Args:
        path: the file; its header line must be ``protein1 protein2 neighborhood fusion cooccurence
            coexpression experimental database textmining combined_score``.
        genome: genes to map onto; ids ``4932.YAL001C`` lose their taxon prefix. Ids of another taxon
            are kept whole, so they show up as unmapped genes in the report.
        channels: score columns to build graphs from (a list or a comma-separated string; a
            ``string_`` prefix is accepted). Unknown names raise :class:`~cellformer.errors.UserError`
            listing the valid ones.
        min_score: keep edges whose channel score (0-1000) is at least this.
        taxon: the expected taxon prefix.

    Returns:
        ``{channel: (graph, report)}``; graph names are ``string_<channel>``, undirected, edge weight
        = score / 1000. STRING lists every pair twice (``A B`` and ``B A``): the second listing of a pair
        is folded into the first before mapping (counted in ``report.filtered``), so ``report.rows``
        counts unordered pairs.

    Raises:
        ImportFormatError: a wrong header, a row with the wrong number of fields, or a score that is
            not an integer in 0..1000 (``file:line`` in the message).
    """
    path = Path(path)
    chans = _channels(channels)
    col = {c: STRING_DETAILED_HEADER.index(c) for c in chans}
    pairs: dict[str, list[tuple[int, str, str, float]]] = {c: [] for c in chans}
    seen: set[tuple[str, str]] = set()
    mirrored = other_taxon = 0
    prefix = f"{taxon}."
    header_seen = False
    with open_text(path) as fh:
        for lineno, raw in enumerate(fh, start=1):
            fields = raw.split()
            if not fields:
                continue
            if not header_seen:
                if fields != STRING_DETAILED_HEADER:
                    raise ImportFormatError(
                        path, lineno, f"expected the STRING detailed header {' '.join(STRING_DETAILED_HEADER)!r}"
                    )
                header_seen = True
                continue
            if len(fields) != len(STRING_DETAILED_HEADER):
                raise ImportFormatError(
                    path, lineno, f"expected {len(STRING_DETAILED_HEADER)} space-separated fields, got {len(fields)}"
                )
            p1, p2 = fields[0], fields[1]
            key = (p1, p2) if p1 <= p2 else (p2, p1)
            if key in seen:
                mirrored += 1
                continue
            seen.add(key)
            ids = []
            for pid in (p1, p2):
                if pid.startswith(prefix):
                    ids.append(pid[len(prefix) :])
                else:
                    ids.append(pid)
            if ids[0] == p1 or ids[1] == p2:
                other_taxon += 1
            for c, i in col.items():
                try:
                    score = int(fields[i])
                except ValueError:
                    raise ImportFormatError(
                        path, lineno, f"{c} score {fields[i]!r} is not an integer (0-1000)"
                    ) from None
                if not 0 <= score <= 1000:
                    raise ImportFormatError(path, lineno, f"{c} score {score} is outside 0-1000")
                pairs[c].append((lineno, ids[0], ids[1], score / 1000.0))
    if not header_seen:
        raise ImportFormatError(path, 1, "empty file (expected the STRING detailed header)")
    out: dict[str, tuple[GeneGraph, GraphImportReport]] = {}
    for c in chans:
        report = GraphImportReport(f"{path} [{c}]")
        report.filtered["mirrored rows (B A after A B) folded into their pair"] = mirrored
        report.filtered[f"pairs with an id outside taxon {taxon} (reported as unmapped)"] = other_taxon
        graph = build_graph(f"string_{c}", genome, pairs[c], report, directed=False, min_score=min_score / 1000.0)
        out[c] = (graph, report)
    return out


def read_biogrid_tab3(
    path: str | Path,
    genome: Genome,
    system_type: str = "physical",
    organism: int = BIOGRID_YEAST_ORGANISM,
    name: str | None = None,
) -> tuple[GeneGraph, GraphImportReport]:
    """Read a BioGRID TAB3 file (optionally gzipped) into an undirected graph of one system type.

    The header (tab-separated, first column ``#BioGRID Interaction ID``) must name the columns
    ``Systematic Name Interactor A/B``, ``Experimental System Type`` and ``Organism ID Interactor A/B``.
    Rows whose interactors are not both of ``organism`` (S. cerevisiae S288C, 559292, by default) or
    whose system type differs are counted in ``report.filtered``; a ``-`` systematic name counts as an
    unmapped gene. Repeated interactions (several experiments) are merged (``report.duplicates``);
    edge weight 1. The graph is named ``name`` or ``biogrid_<system_type>``.

    Raises:
        ValueError: an unknown ``system_type``.
        ImportFormatError: a wrong header, a row with the wrong column count or a non-numeric organism id.
    """
    path = Path(path)
    stype = system_type.strip().lower()
    if stype not in BIOGRID_SYSTEM_TYPES:
        raise UserError(f"unknown system type {system_type!r}; expected one of {', '.join(BIOGRID_SYSTEM_TYPES)}")
    report = GraphImportReport(str(path))
    pairs: list[tuple[int, str, str, float]] = []
    header: list[str] | None = None
    idx: dict[str, int] = {}
    sym: tuple[int, int] | None = None
    other_org = 0
    other_type: dict[str, int] = {}
    with open_text(path) as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if header is None:
                if not line.startswith("#BioGRID Interaction ID"):
                    raise ImportFormatError(path, lineno, "expected a TAB3 header starting '#BioGRID Interaction ID'")
                header = [h.strip() for h in fields]
                missing = [c for c in BIOGRID_COLUMNS.values() if c not in header]
                if missing:
                    raise ImportFormatError(path, lineno, f"TAB3 header lacks columns: {', '.join(missing)}")
                idx = {k: header.index(c) for k, c in BIOGRID_COLUMNS.items()}
                if "Official Symbol Interactor A" in header and "Official Symbol Interactor B" in header:
                    sym = (header.index("Official Symbol Interactor A"), header.index("Official Symbol Interactor B"))
                continue
            if len(fields) != len(header):
                raise ImportFormatError(
                    path, lineno, f"expected {len(header)} tab-separated columns, got {len(fields)}"
                )
            try:
                orgs = int(fields[idx["org_a"]]), int(fields[idx["org_b"]])
            except ValueError:
                raise ImportFormatError(
                    path, lineno, f"organism ids {fields[idx['org_a']]!r}/{fields[idx['org_b']]!r} are not numbers"
                ) from None
            if orgs != (organism, organism):
                other_org += 1
                continue
            t = fields[idx["type"]].strip().lower()
            if t != stype:
                other_type[t] = other_type.get(t, 0) + 1
                continue
            names = []
            for side, k in ((0, "a"), (1, "b")):
                n = fields[idx[k]].strip()
                if n in {"", "-"}:
                    label = fields[sym[side]].strip() if sym else ""
                    n = f"- (no systematic name; symbol {label})" if label else "- (no systematic name)"
                names.append(n)
            pairs.append((lineno, names[0], names[1], 1.0))
    if header is None:
        raise ImportFormatError(path, 1, "empty file (expected a TAB3 header)")
    report.filtered[f"rows with an interactor outside organism {organism}"] = other_org
    for t, n in other_type.items():
        report.filtered[f"rows of system type {t!r} (not {stype})"] = n
    graph = build_graph(name or f"biogrid_{stype}", genome, pairs, report, directed=False)
    return graph, report


def read_edge_list(
    path: str | Path,
    genome: Genome,
    name: str | None = None,
    directed: bool | None = None,
    min_score: float | None = None,
) -> tuple[GeneGraph, LoadReport]:
    """A TSV edge list ``gene_a gene_b [score]`` (see :func:`cellformer.graphs.io.load_edge_list`)."""
    return load_edge_list(path, genome, name=name, directed=directed, min_score=min_score, warn=False)


def read_tf_targets(path: str | Path, genome: Genome, name: str | None = None) -> tuple[GeneGraph, LoadReport]:
    """A directed TF-target list ``regulator target [score]``: an edge list read with ``directed=True``."""
    return load_edge_list(path, genome, name=name, directed=True, warn=False)
