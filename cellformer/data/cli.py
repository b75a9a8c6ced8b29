"""``cellformer data``: build, import and inspect datasets and graphs.

Sub-commands: ``simulate``, ``import``, ``info`` (here) and ``import-graph``, ``import-screen``, ``fetch``
(registered by :mod:`cellformer.data.importers.cli` when present). Each sub-command sets
``func(args) -> int``; user errors print one line to stderr and exit with status 2. Every output file
follows :func:`cellformer.paths.check_outputs` (never an input, never another output, an existing file
only with ``--force``), checked before anything is read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from cellformer.defaults import DEFAULT_DATASET, YEAST_GRAPHS
from cellformer.errors import UserError
from cellformer.paths import check_outputs

PROG = "cellformer data"


class _HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to option help unless the default is empty or already described."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            action.default is None
            or action.default is False
            or action.default == argparse.SUPPRESS
            or "default" in text.lower()
        ):
            return text
        return f"{text} (default: %(default)s)"


# ---------------------------------------------------------------------- simulate
def _cmd_simulate(args: argparse.Namespace) -> int:
    from cellformer.data.simulate import simulate
    from cellformer.genome import yeast_genome
    from cellformer.graphs import yeast_graphs

    out = Path(args.out)
    check_outputs({"--out": out}, force=args.force)
    genome = yeast_genome()
    graphs, _ = yeast_graphs([args.truth_graph], genome=genome)
    data = simulate(
        genome,
        graphs,
        truth_graph=args.truth_graph,
        n_singles=args.singles,
        n_doubles=args.doubles,
        n_triples=args.triples,
        off_graph_share=args.off_graph_share,
        noise=args.noise,
        seed=args.seed,
    )
    data.save(out)
    print(f"wrote {out}: {data.description}")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from cellformer.data.real import build_real_dataset, real_screen

    screen = real_screen(args.name)
    out = Path(args.out) if args.out else screen.default_path
    check_outputs({"--out": out}, force=args.force)
    data, reports = build_real_dataset(args.name, out, seed=args.seed)
    for report in reports:
        print(report.summary())
    print(f"wrote {out}: {len(data)} records over {len(data.genes)} genes ({screen.description})")
    return 0


# ---------------------------------------------------------------------- import
def _cmd_import(args: argparse.Namespace) -> int:
    from cellformer.data.dataset import split_overlap
    from cellformer.data.splits import random_split
    from cellformer.data.table import import_table

    table = Path(args.table)
    out = Path(args.out) if args.out else table.with_name(table.name.split(".")[0] + ".h5")
    rejects = Path(args.rejects) if args.rejects else out.with_name(out.name.split(".")[0] + ".rejects.tsv")
    check_outputs({"--out": out, "--rejects": rejects}, {"TABLE": table, "--genome": args.genome}, force=args.force)
    genome = _load_genome(args.genome)
    data, report = import_table(table, genome, skip_bad_rows=args.skip_bad_rows, rejects_path=rejects)
    if report.rejects_path is None:
        rejects.unlink(missing_ok=True)  # an earlier import's rejects must not outlive it
    if data.split is None:
        data.split = random_split(len(data), seed=args.seed)
        print(f"no 'split' column: assigned a random 80/10/10 split (seed {args.seed})")
    data.save(out)
    print(report.summary())
    overlap = split_overlap(data).summary()
    if overlap:
        print(overlap)
    print(f"wrote {out}: {len(data)} records over {len(data.genes)} genes")
    return 0


def _load_genome(path: str | None):
    from cellformer.genome import load_genome

    return load_genome(path)


# ---------------------------------------------------------------------- info
def _cmd_info(args: argparse.Namespace) -> int:
    from cellformer.data.dataset import PerturbationData, split_overlap

    path = Path(args.path)
    if not path.exists():
        if args.graphs:
            print(f"dataset {path}: not built (build it with `cellformer data simulate`)\n")
            _print_graphs(detailed=True)
            return 0
        raise UserError(f"dataset {path} does not exist (build it with `cellformer data simulate`)")
    data = PerturbationData.load(path)
    print(f"dataset {path}")
    if data.description:
        print(f"  {data.description}")
    het = f", {len(data.heterologous)} heterologous" if data.heterologous else ""
    print(f"genes: {len(data.genes)}{het} (genome {data.genome_name or '?'}, hash {data.genome_hash or '?'})")
    for k in sorted(data.attrs):
        print(f"  {k}: {data.attrs[k]}")

    sizes = data.set_sizes
    print(f"records: {len(data)} ({len(data.gene_index)} perturbed-gene entries)")
    counts = np.bincount(sizes)  # set sizes and splits are small integers: counting beats np.unique at 20 M
    for k, c in ((k, counts[k]) for k in np.flatnonzero(counts)):
        print(f"  set size {k}: {c}")
    print("phenotype coverage:")
    print(f"  {'phenotype':<20} {'measured':>9} {'mean':>10} {'sd':>10}")
    for j, name in enumerate(data.phenotype_names):
        v = data.phenotypes[:, j]
        v = v[~np.isnan(v)]
        mean = f"{v.mean():10.4f}" if len(v) else f"{'-':>10}"
        sd = f"{v.std():10.4f}" if len(v) else f"{'-':>10}"
        print(f"  {name:<20} {len(v):>9} {mean} {sd}")
    if data.split is None:
        print("splits: none stored")
    else:
        names = {0: "train", 1: "val", 2: "test", -1: "unassigned"}
        counts = np.bincount(data.split.astype(np.int64) + 1)  # -1 (unassigned) at 0
        parts = [f"{names.get(int(k) - 1, k - 1)} {counts[k]}" for k in np.flatnonzero(counts)]
        print(f"splits: {', '.join(parts)}")
        overlap = split_overlap(data).summary()
        if overlap:
            print(f"  {overlap}")

    from cellformer.genome import yeast_genome

    if data.genome_hash == yeast_genome().hash:
        print()
        _print_graphs(detailed=args.graphs)
    else:
        print("\n(the dataset's genome is not the embedded yeast genome: shipped graphs not shown)")
    return 0


def _print_graphs(detailed: bool) -> None:
    from cellformer.graphs import yeast_graphs

    graphs, reports = yeast_graphs()
    print(f"shipped yeast graphs ({len(graphs)}):")
    for name, g in graphs.items():
        rep = reports[name]
        kind = "directed" if g.directed else "undirected"
        unmapped = f", {rep.unmapped_rows} unmapped rows" if rep.unmapped_rows else ""
        print(f"  {name:<20} {g.num_edges:>7} edges ({kind}){unmapped}   [{YEAST_GRAPHS[name][0]}]")
        if detailed:
            st = g.degree_stats()
            print(
                f"  {'':<20} genes with edges {st['nodes_with_edges']}, mean degree {st['mean_degree']:.2f}, "
                f"median (non-zero) {st['median_degree_nonzero']:.0f}, max {st['max_degree']}"
            )
            if rep.unmapped_rows:
                print(f"  {'':<20} {rep.summary()}")


# ---------------------------------------------------------------------- genotypes
def _cmd_import_genotypes(args: argparse.Namespace) -> int:
    from cellformer.genotype.data import random_genotype_split
    from cellformer.genotype.importers import read_genotype_table, read_npy_splits

    src, out = Path(args.genotypes), Path(args.out)
    fmt = args.format or ("npy-splits" if src.is_dir() else "table")
    rejects = None
    if fmt == "table":
        rejects = Path(args.rejects) if args.rejects else out.with_name(out.name.split(".")[0] + ".rejects.tsv")
    inputs = {"GENO": src, "--phenotypes": args.phenotypes, "--markers": args.markers}
    check_outputs({"--out": out, "--rejects": rejects}, inputs, force=args.force)
    if fmt == "npy-splits":
        if args.phenotypes:
            raise UserError("--phenotypes is for --format table; npy-splits reads pheno_{train,val,test}.npy")
        data = read_npy_splits(src, marker_table=args.markers)
    else:
        data, report = read_genotype_table(
            src,
            args.phenotypes,
            marker_table=args.markers,
            allele_coding=args.coding,
            reference_allele=args.reference_allele,
            rejects=rejects,
        )
        if report.rejects_path is None:
            rejects.unlink(missing_ok=True)  # an earlier import's rejects must not outlive it
        print(report.summary())
        if data.split is None:
            data.split = random_genotype_split(len(data), val=args.val, test=args.test, seed=args.seed)
            print(f"assigned a random split (val {args.val}, test {args.test}, seed {args.seed})")
    data.save(out)
    print(f"wrote {out}: {data.summary()}")
    return 0


def _cmd_simulate_genotypes(args: argparse.Namespace) -> int:
    from cellformer.genotype.simulate import simulate_genotypes

    out = Path(args.out)
    check_outputs({"--out": out}, force=args.force)
    data = simulate_genotypes(
        n_samples=args.samples,
        n_loci=args.loci,
        n_traits=args.traits,
        n_qtl=args.qtl,
        additive_share=args.additive_share,
        h2=args.h2,
        pleiotropy=args.pleiotropy,
        n_dilution=args.dilution,
        linked=not args.unlinked,
        val=args.val,
        test=args.test,
        seed=args.seed,
        epistatic_pairs=args.epistatic_pairs,
    )
    data.save(out)
    t = data.truth
    shares = ", ".join(f"{v:.3f}" for v in t["additive_share"][:6])
    h2 = ", ".join(f"{v:.3f}" for v in t["h2"][:6])
    more = ", …" if len(t["h2"]) > 6 else ""
    print(f"wrote {out}: {data.summary()}")
    print(f"  realised V_A/V_G: {shares}{more}; H²: {h2}{more}; {len(t['pairs'])} epistatic pairs")
    return 0


def _add_genotype_commands(sub) -> None:
    """``import-genotypes`` and ``simulate-genotypes`` (genotype → phenotype datasets)."""
    p = sub.add_parser(
        "import-genotypes",
        help="import a genotype table (+ phenotype table) or geno_/pheno_*.npy splits into an HDF5 dataset",
        description=(
            "Import segregant genotypes into a genotype dataset (HDF5; see data/README.md, 'Genotype "
            "datasets'). --format table: GENO is a samples × markers TSV/CSV (optionally .gz; first column "
            "the sample id, header = marker ids) with alleles coded 0/1, -1/+1 or two letters (e.g. B/R); "
            "the reference allele is stored as +1 (default: 1, or the first letter seen; see "
            "--reference-allele); NA, empty, '-', '.', 'N' are missing. --phenotypes is a table keyed by "
            "sample id. Marker positions come from --markers (id, chrom, pos[, gene]) or are parsed from "
            "names like 27915_chr01_27915_T_C. Bad rows are skipped, reported with their line numbers and "
            "written to --rejects. --format npy-splits: GENO is a directory with geno_{train,val,test}.npy "
            "(±1) and pheno_{train,val,test}.npy; the splits are kept."
        ),
        formatter_class=_HelpFormatter,
    )
    p.add_argument("genotypes", metavar="GENO", help="genotype table (.tsv/.csv[.gz]) or npy-splits directory")
    p.add_argument("--phenotypes", default=None, help="phenotype table keyed by sample id (--format table)")
    p.add_argument("--markers", default=None, help="marker table: id, chrom, pos[, gene]")
    p.add_argument(
        "--format",
        choices=["table", "npy-splits"],
        default=None,
        help="input layout (default: npy-splits for a directory, else table)",
    )
    p.add_argument("--out", required=True, help="output HDF5 file")
    p.add_argument("--rejects", default=None, help="TSV of rejected rows (default: <out>.rejects.tsv)")
    p.add_argument("--coding", choices=["auto", "01", "pm1", "letters"], default="auto", help="allele coding")
    p.add_argument("--reference-allele", default=None, help="allele code stored as +1 (e.g. B)")
    p.add_argument("--val", type=float, default=0.1, help="val share of the random split (tables have none)")
    p.add_argument("--test", type=float, default=0.1, help="test share of the random split")
    p.add_argument("--seed", type=int, default=0, help="seed of the random split")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.set_defaults(func=_cmd_import_genotypes)

    p = sub.add_parser(
        "simulate-genotypes",
        help="simulate an F1 segregant population with QTL, additive and epistatic effects",
        description=(
            "Simulate haploid F1 segregants (crossovers along the 16 yeast chromosomes, or unlinked 50/50 "
            "loci) and traits with --qtl causal loci, additive plus pairwise (additive × additive) "
            "epistatic effects, the requested V_A/V_G (--additive-share) and broad-sense heritability "
            "(--h2), hit exactly on the simulated population. Traits share their QTL with effect "
            "correlation --pleiotropy. The ground truth (causal loci, effects, realised variance "
            "components) is stored in the file. Deterministic for a given --seed. See data/README.md."
        ),
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--out", required=True, help="output HDF5 file")
    p.add_argument("--samples", type=int, default=5000, help="number of segregants")
    p.add_argument("--loci", type=int, default=1164, help="number of markers (before --dilution)")
    p.add_argument("--traits", type=int, default=1, help="number of traits")
    p.add_argument("--qtl", type=int, default=20, help="number of causal loci (shared by all traits)")
    p.add_argument(
        "--additive-share", type=float, nargs="+", default=[1.0], help="V_A/V_G in [0, 1]: one value or one per trait"
    )
    p.add_argument("--h2", type=float, nargs="+", default=[0.8], help="broad-sense heritability V_G/V_P in (0, 1]")
    p.add_argument("--pleiotropy", type=float, default=0.0, help="correlation of QTL effects between traits")
    p.add_argument("--dilution", type=int, default=0, help="extra uninformative markers near causal loci")
    p.add_argument("--epistatic-pairs", type=int, default=None, help="number of epistatic pairs (default: QTL/2)")
    p.add_argument("--unlinked", action="store_true", help="independent 50/50 loci instead of linked segregants")
    p.add_argument("--val", type=float, default=0.1, help="val share of the random split")
    p.add_argument("--test", type=float, default=0.1, help="test share of the random split")
    p.add_argument("--seed", type=int, default=0, help="random seed (everything is deterministic given it)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.set_defaults(func=_cmd_simulate_genotypes)


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The ``cellformer data`` argument parser (sub-commands set ``func``)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Build, import and inspect perturbation datasets and gene graphs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")

    p = sub.add_parser(
        "simulate",
        help="simulate single/double/triple deletion screens on the yeast genome",
        description=(
            "Simulate deletion screens whose genetic interactions follow the modules (communities) of a "
            "real yeast graph, with a share of interactions that follow no graph. The result is the "
            "embedded default dataset when written to the default path. See data/README.md."
        ),
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--out", default=str(DEFAULT_DATASET), help="output HDF5 file")
    p.add_argument(
        "--truth-graph", default="string_database", choices=list(YEAST_GRAPHS), help="graph the interactions follow"
    )
    p.add_argument("--singles", type=int, default=None, help="number of single mutants (default: every gene)")
    p.add_argument("--doubles", type=int, default=40000, help="number of double mutants")
    p.add_argument("--triples", type=int, default=10000, help="number of triple mutants")
    p.add_argument(
        "--off-graph-share",
        type=float,
        default=0.2,
        help="share of interacting pairs put on random non-module, non-edge gene pairs (in [0, 1))",
    )
    p.add_argument("--noise", type=float, default=0.02, help="sd of the Gaussian measurement noise")
    p.add_argument("--seed", type=int, default=0, help="random seed (everything is deterministic given it)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.set_defaults(func=_cmd_simulate)

    from cellformer.data.real import REAL_SCREENS

    p = sub.add_parser(
        "build",
        help="build a shipped real screen into an HDF5 dataset (see data/README.md)",
        description=(
            "Import a real screen shipped under data/ (measured, with attribution in data/README.md) over the "
            "embedded yeast genome. Rows naming genes that are not in the genome are reported and written to a "
            "rejects file next to the output, never dropped silently. A seeded random 80/10/10 split of the "
            "records is stored; training configs choose their own split (random or gene hold-out)."
        ),
        formatter_class=_HelpFormatter,
    )
    p.add_argument("name", choices=list(REAL_SCREENS), help="the shipped screen")
    p.add_argument("--out", default=None, help="output HDF5 file (default: data/<name>.h5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the stored random split")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser(
        "import",
        help="import a perturbation table (TSV) into an HDF5 dataset",
        description=(
            "Import a TSV with a header: 'genes' (gene names separated by ';', systematic or standard, any "
            "case), optional 'types' (deletion, knockdown, overexpression, addition; one per gene, ';'), "
            "optional 'split' (train/val/test), optional 'condition'; every other column is a numeric "
            "phenotype (empty or NA = not measured). A bad row stops the import with its line number "
            "unless --skip-bad-rows. Without a 'split' column a seeded random 80/10/10 split is stored."
        ),
        formatter_class=_HelpFormatter,
    )
    p.add_argument("table", help="the perturbation table (.tsv or .tsv.gz)")
    p.add_argument(
        "--genome", default=None, help="gene table (systematic_name, standard_name); default: embedded yeast"
    )
    p.add_argument("--out", default=None, help="output HDF5 file (default: the table's name with .h5)")
    p.add_argument(
        "--skip-bad-rows", action="store_true", help="skip bad rows (written to --rejects) instead of failing"
    )
    p.add_argument("--rejects", default=None, help="TSV for skipped rows (default: <out>.rejects.tsv)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random split when the table has none")
    p.add_argument("--force", action="store_true", help="overwrite existing output files (--out, --rejects)")
    p.set_defaults(func=_cmd_import)

    p = sub.add_parser(
        "info",
        help="summarise a dataset and the shipped graphs",
        description=(
            "Print a dataset's genes, records by set size, per-phenotype coverage (measured, mean, sd) and "
            "splits, and the shipped yeast graphs with edge counts and unmapped-row reports."
        ),
        formatter_class=_HelpFormatter,
    )
    p.add_argument("path", nargs="?", default=str(DEFAULT_DATASET), help="dataset (HDF5)")
    p.add_argument("--graphs", action="store_true", help="list every shipped graph with degree statistics")
    p.set_defaults(func=_cmd_info)

    _add_genotype_commands(sub)

    try:
        from cellformer.data.importers.cli import register
    except ImportError:
        pass
    else:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``cellformer data`` with ``argv``; returns the exit status (2 for user errors, one line on stderr)."""
    from cellformer.cli import run_reporting_errors

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, message already printed)
        return int(e.code or 0)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0 if not argv else 2
    return run_reporting_errors(f"{PROG} {args.command}", lambda: args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
