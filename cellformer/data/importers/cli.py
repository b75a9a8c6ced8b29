"""Command-line subcommands ``import-graph``, ``import-screen`` and ``fetch``.

The data CLI adds them to its parser with :func:`register`; each subparser sets ``func`` to a handler
``handler(args) -> int`` (0 on success). Problems with the input raise :class:`~cellformer.errors.UserError`,
which the data CLI reports as one line (exit status 2).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cellformer.errors import UserError
from cellformer.paths import check_output_dir, check_outputs

GRAPH_FORMATS = ("string-detailed", "biogrid-tab3", "edge-list")
SCREEN_FORMATS = ("costanzo2016", "kuzmin2018", "kuzmin2020")


def _genome(args: argparse.Namespace):
    from cellformer.genome import load_genome

    return load_genome(getattr(args, "genome", None))


def _import_graph(args: argparse.Namespace) -> int:
    from cellformer.data.importers.graphs import read_biogrid_tab3, read_edge_list, read_string_detailed
    from cellformer.graphs.io import save_edge_list

    out_dir = Path(args.out_dir)
    inputs = {"FILE": args.file, "--genome": getattr(args, "genome", None)}
    check_output_dir("--out-dir", out_dir, [], inputs)
    genome = _genome(args)
    if args.format == "string-detailed":
        results = read_string_detailed(args.file, genome, args.channels, min_score=args.min_score)
        graphs = [(g, r) for g, r in results.values()]
        if args.name:
            for g, _ in graphs:
                g.name = f"{args.name}_{g.name.removeprefix('string_')}"
    elif args.format == "biogrid-tab3":
        graphs = [read_biogrid_tab3(args.file, genome, system_type=args.system_type, name=args.name)]
    else:
        min_score = None if args.min_score is None else float(args.min_score)
        directed = True if args.directed else None  # None: a 'regulator target' header says directed
        graphs = [read_edge_list(args.file, genome, name=args.name, directed=directed, min_score=min_score)]
    empty = [(g, r) for g, r in graphs if g.num_edges == 0]
    if empty:
        g, r = empty[0]
        raise UserError(f"graph {g.name!r} has no edges, nothing written ({r.summary()})")
    names = [f"{g.name}.tsv.gz" for g, _ in graphs]
    check_output_dir("--out-dir", out_dir, names, inputs, force=args.force)
    out_dir.mkdir(parents=True, exist_ok=True)
    for graph, report in graphs:
        path = out_dir / f"{graph.name}.tsv.gz"
        tmp = out_dir / f".{graph.name}.{os.getpid()}.tmp.tsv.gz"
        try:  # written next to its name, then renamed: never half a graph
            save_edge_list(graph, genome, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        kind = "directed" if graph.directed else "undirected"
        print(f"{graph.name}: {graph.num_edges} {kind} edges -> {path}")
        print(f"  {report.summary()}")
    return 0


def _import_screen(args: argparse.Namespace) -> int:
    from cellformer.data.dataset import split_overlap
    from cellformer.data.importers.screens import SCREEN_READERS, ImportFormatError
    from cellformer.data.splits import random_split

    check_outputs({"--out": args.out}, {"FILE": args.file, "--genome": args.genome}, force=args.force)
    genome = _genome(args)
    try:
        data, report = SCREEN_READERS[args.format](args.file, genome, skip_bad_rows=args.skip_bad_rows)
    except ImportFormatError as e:
        if args.skip_bad_rows or e.line <= 1:
            raise
        raise ImportFormatError(e.path, e.line, f"{e.problem} (--skip-bad-rows skips and counts such rows)") from None
    if len(data) == 0:
        raise UserError(f"{args.file}: no records to import, nothing written ({report.summary()})")
    if args.split == "random":
        data.split = random_split(len(data), val=args.val, test=args.test, seed=args.seed)
        data.attrs["split"] = f"random(val={args.val}, test={args.test}, seed={args.seed})"
    data.save(args.out)
    print(report.summary())
    overlap = split_overlap(data).summary()
    if overlap:
        print(overlap)
    print(f"{len(data)} records, phenotypes {data.phenotype_names} -> {args.out}")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from cellformer.data.importers.fetch import fetch, load_manifest, sha256_file

    if not args.list and not args.name:
        raise UserError("give a NAME or URL to fetch, or --list")
    if args.list:
        for e in load_manifest().values():
            print(f"{e.name}\n  url: {e.url}\n  format: {e.format}; licence: {e.licence}")
            print(f"  sha256: {e.sha256 or 'unknown (not verified)'}\n  cite: {e.citation}")
            if e.notes:
                print(f"  note: {e.notes}")
        return 0
    try:
        path = fetch(args.name, args.dest, sha256=args.sha256, progress=not args.quiet, force=args.force)
    except OSError as e:  # network and disk problems of the download
        raise UserError(f"download of {args.name} failed: {e}") from None
    print(f"{path}  sha256 {sha256_file(path)}")
    return 0


def register(subparsers) -> None:
    """Add ``import-graph``, ``import-screen`` and ``fetch`` to an argparse subparsers object."""
    fmt = argparse.RawDescriptionHelpFormatter

    g = subparsers.add_parser(
        "import-graph",
        help="import a gene network (STRING detailed, BioGRID TAB3, edge list) as gzipped edge lists",
        description=(
            "Import a public gene network onto the yeast genome and write each graph as a gzipped TSV edge "
            "list (<out-dir>/<name>.tsv.gz). Rows that do not map are counted and summarised.\n\n"
            "formats:\n"
            "  string-detailed  STRING protein.links.detailed (one graph string_<channel> per --channels)\n"
            "  biogrid-tab3     BioGRID TAB3 (--system-type physical|genetic, organism 559292)\n"
            "  edge-list        TSV gene_a gene_b [score]; directed when the header is 'regulator target'\n"
            "                   (or source/tf/from) or with --directed"
        ),
        formatter_class=fmt,
    )
    g.add_argument("file", metavar="FILE", help="input file (.gz is decompressed)")
    g.add_argument("--format", required=True, choices=GRAPH_FORMATS, help="input format")
    g.add_argument(
        "--channels",
        default="combined_score",
        help="string-detailed: comma-separated score channels, e.g. coexpression,experimental "
        "(neighborhood fusion cooccurence coexpression experimental database textmining combined_score; "
        "default: combined_score)",
    )
    g.add_argument(
        "--min-score",
        type=float,
        default=None,
        help="keep edges with score >= this (string-detailed: 0-1000, default 400; edge-list: default none)",
    )
    g.add_argument(
        "--system-type", default="physical", choices=("physical", "genetic"), help="biogrid-tab3 interaction type"
    )
    g.add_argument(
        "--directed",
        action="store_true",
        help="edge-list: read as directed (regulator -> target) even without a 'regulator target' header",
    )
    g.add_argument("--name", default=None, help="graph name (string-detailed: prefix for <name>_<channel>)")
    g.add_argument("--out-dir", default="graphs/imported", help="output directory (default: graphs/imported)")
    g.add_argument("--genome", default=None, help="gene table TSV (default: the embedded yeast genome)")
    g.add_argument("--force", action="store_true", help="overwrite existing graph files in --out-dir")
    g.set_defaults(func=_import_graph_defaults)

    s = subparsers.add_parser(
        "import-screen",
        help="import a genetic interaction screen (Costanzo 2016, Kuzmin 2018/2020) into an HDF5 dataset",
        description=(
            "Import a published screen into a PerturbationData HDF5 file.\n\n"
            "phenotypes:\n"
            "  costanzo2016        fitness fitness_sd fitness_n epsilon epsilon_pvalue gi_significant\n"
            "  kuzmin2018/2020     fitness fitness_sd fitness_n epsilon epsilon_raw tau tau_raw pvalue "
            "gi_significant\n"
            "Malformed rows stop the import with file:line unless --skip-bad-rows; unmapped ORFs are reported."
        ),
        formatter_class=fmt,
    )
    s.add_argument("file", metavar="FILE", help="tab-separated screen file (.gz is decompressed)")
    s.add_argument("--format", required=True, choices=SCREEN_FORMATS, help="input format")
    s.add_argument("--out", required=True, help="output .h5 dataset")
    s.add_argument("--skip-bad-rows", action="store_true", help="skip and count malformed rows instead of failing")
    s.add_argument(
        "--split", default="random", choices=("random", "none"), help="store a seeded random split (default)"
    )
    s.add_argument("--seed", type=int, default=0, help="seed of the random split (default 0)")
    s.add_argument("--val", type=float, default=0.1, help="validation share of the random split (default 0.1)")
    s.add_argument("--test", type=float, default=0.1, help="test share of the random split (default 0.1)")
    s.add_argument("--genome", default=None, help="gene table TSV (default: the embedded yeast genome)")
    s.add_argument("--force", action="store_true", help="overwrite an existing output file")
    s.set_defaults(func=_import_screen)

    f = subparsers.add_parser(
        "fetch",
        help="download a public source file (resumable, checksum-verified)",
        description=(
            "Download a file named in the importers' manifest (see --list) or any URL into --dest. "
            "Interrupted downloads resume from <file>.part; a known sha256 is verified before the file "
            "is moved into place."
        ),
    )
    f.add_argument("name", nargs="?", metavar="NAME", help="manifest entry name or URL")
    f.add_argument("--list", action="store_true", help="list the manifest entries and exit")
    f.add_argument("--dest", default="data/raw", help="download directory (default: data/raw)")
    f.add_argument("--sha256", default=None, help="expected sha256 (overrides the manifest)")
    f.add_argument("--force", action="store_true", help="download again even if the file exists")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=_fetch)


def _import_graph_defaults(args: argparse.Namespace) -> int:
    """``import-graph`` with the per-format default of ``--min-score`` filled in."""
    if args.min_score is None and args.format == "string-detailed":
        args.min_score = 400.0
    return _import_graph(args)
