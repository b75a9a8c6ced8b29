"""``cellformer predict | screen | explain``: query a trained checkpoint from the command line.

User errors (unknown genes, bad sequences, bad tables, unknown phenotypes...) are
:class:`~cellformer.errors.UserError`: one message on stderr, exit status 2, no traceback. Output files
follow :func:`cellformer.paths.check_outputs`, checked before the checkpoint is loaded: no output is an
input (the checkpoint, a query table, a FASTA, a gene list) or another output (``screen --state`` is an
output too), and an existing file is overwritten only with ``--force``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from cellformer.data.table import split_gene_names
from cellformer.errors import UserError
from cellformer.genome import read_fasta
from cellformer.paths import check_output_dir, check_outputs, write_text_atomic

EXAMPLES = {
    "predict": """examples:
  cellformer predict --ckpt runs/best.ckpt --genes "TFC3;YBR123C"
  cellformer predict --ckpt runs/best.ckpt --genes "TFC3;YBR123C" --types "deletion;knockdown"
  cellformer predict --ckpt runs/best.ckpt --genes TFC3 --genes "TFC3;RAD51" --out preds.tsv
  cellformer predict --ckpt runs/best.ckpt --table queries.tsv --out preds.tsv
  cellformer predict --ckpt runs/best.ckpt --add-gene GFP=gfp.fa --genes "GFP;TFC3" --types "addition;deletion"

output: TSV with columns genes, types, then one column per phenotype of the checkpoint.""",
    "screen": """examples:
  cellformer screen --ckpt runs/best.ckpt --order 2 --by epsilon --top 1000 --out top_pairs.tsv
  cellformer screen --ckpt runs/best.ckpt --order 2 --by fitness --ascending --all-scores pairs.h5 --out top.tsv
  cellformer screen --ckpt runs/best.ckpt --order 3 --genes subset.txt --by tau --out top_triples.tsv
  cellformer screen ... --out top.tsv --resume      # continue an interrupted screen

The state of a screen is saved every --save-every seconds (and on Ctrl-C) to OUT.state.pt; --resume
continues from it and gives the same result as an uninterrupted run. The state file is removed once
the output is written. An existing state file is continued only with --resume (--force starts over).""",
    "explain": """examples:
  cellformer explain --ckpt runs/best.ckpt --gene TFC3 --out-dir explain/TFC3
  cellformer explain --ckpt runs/best.ckpt --gene TFC3 --set "TFC3;RAD51" --out-dir explain/TFC3_RAD51

files: head_<graph>_L<l>H<h>.tsv/.png (attention of the gene in every regularised head, neighbours of the
gene in that head's graph flagged), cross_attention.tsv/.png (β of the query set), alignment.tsv/.png
(attention-graph alignment of every layer/head against every graph), summary.json.""",
}


def _split(value: str, option: str) -> list[str]:
    """The ``;``-separated names of an option value (the same rules as a table's ``genes`` column)."""
    try:
        return split_gene_names(value)
    except UserError as e:
        raise UserError(f"{option} {value!r}: {e}") from None


def _positive(value: int, option: str, zero_ok: str = "") -> int:
    """``value`` if > 0 (or 0 when ``zero_ok`` says what 0 means), else a :class:`UserError`."""
    if value > 0 or (zero_ok and value == 0):
        return value
    allowed = f"a positive number or 0 ({zero_ok})" if zero_ok else "a positive number"
    raise UserError(f"{option} must be {allowed}, got {value}")


def _check_device(spec: str):
    """The torch device of ``--device``, refusing devices this machine does not have."""
    import torch

    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise UserError(f"invalid --device {spec!r}: {exc}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {spec}: CUDA is not available here (no GPU, or a CPU-only torch); use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {spec}: MPS is not available here; use --device cpu")
    elif device.type not in {"cpu", "cuda", "mps"}:
        raise UserError(f"--device {spec}: expected cpu, cuda, cuda:N or mps")
    return device


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, metavar="CKPT", help="checkpoint written by `cellformer fit`")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the three query commands."""
    parser = argparse.ArgumentParser(prog="cellformer", description="Query a trained cellformer checkpoint.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{predict,screen,explain}")
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser(
        "predict",
        help="predict phenotypes of gene sets",
        description="Predict the phenotypes of perturbed gene sets with a trained checkpoint.",
        epilog=EXAMPLES["predict"],
        formatter_class=fmt,
    )
    _common(p)
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument(
        "--genes",
        action="append",
        metavar='"A;B"',
        help="one query: genes separated by ';' (ids or standard names, any case); repeat for several queries",
    )
    q.add_argument(
        "--table",
        metavar="TSV",
        help="queries from a TSV with a 'genes' column (';'-separated) and an optional 'types' column; "
        "other columns are ignored",
    )
    p.add_argument(
        "--types",
        action="append",
        metavar='"deletion;knockdown"',
        help="perturbation types for the matching --genes (one per gene, or one for all): deletion, knockdown, "
        "overexpression, addition (default: deletion; addition for added genes)",
    )
    p.add_argument(
        "--add-gene",
        action="append",
        default=[],
        metavar="NAME=FASTA",
        help="add a heterologous gene NAME whose coding sequence is in FASTA (one record) or given inline as DNA; "
        "queries may then name it with type addition",
    )
    p.add_argument(
        "--fasta",
        action="append",
        default=[],
        metavar="FILE",
        help="add every record of a FASTA file as a heterologous gene (name = first word of the header)",
    )
    p.add_argument("--out", metavar="TSV", help="write the predictions here (default: stdout)")
    p.add_argument("--batch-size", type=int, default=1024, help="queries per model call (default: 1024)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")

    s = sub.add_parser(
        "screen",
        help="score all pairs/triples of genes and keep the top k",
        description="Score every pair (order 2) or triple (order 3) of genes with a trained checkpoint "
        "and keep the best ones by one phenotype.",
        epilog=EXAMPLES["screen"],
        formatter_class=fmt,
    )
    _common(s)
    s.add_argument("--order", type=int, choices=[2, 3], default=2, help="2 = pairs, 3 = triples (default: 2)")
    s.add_argument(
        "--genes",
        metavar="FILE",
        help="restrict to these genes: a file with gene names separated by newlines, tabs, ',' or ';' "
        "('#' starts a comment); default: all genes of the genome (pairs only)",
    )
    s.add_argument("--by", metavar="PHENOTYPE", help="phenotype to rank by (required if the model predicts several)")
    s.add_argument("--top", type=int, default=1000, help="how many combinations to keep (default: 1000)")
    s.add_argument("--ascending", action="store_true", help="keep the smallest scores instead of the largest")
    s.add_argument(
        "--type", default="deletion", help="perturbation applied to every gene (default: deletion)", dest="ptype"
    )
    s.add_argument("--batch-size", type=int, default=4096, help="combinations per model call (default: 4096)")
    s.add_argument("--out", metavar="TSV", help="write the top combinations here (default: stdout)")
    s.add_argument("--all-scores", metavar="H5", help="also write every score to this HDF5 file (row = rank)")
    s.add_argument("--resume", action="store_true", help="continue an interrupted screen from its state file")
    s.add_argument("--state", metavar="FILE", help="state file (default: OUT.state.pt; needs --out or --state)")
    s.add_argument("--save-every", type=float, default=60.0, metavar="SECONDS", help="state save interval (60)")
    s.add_argument(
        "--force",
        action="store_true",
        help="overwrite existing output files (--out, --all-scores, a state file not resumed), and allow "
        f"triple screens over more than {500} genes (very slow)",
    )
    s.add_argument("--no-progress", action="store_true", help="no progress bar")

    e = sub.add_parser(
        "explain",
        help="attention reports for a gene",
        description="Attention of a gene in the graph-regularised heads, the cross-attention of a query set, "
        "and the attention-graph alignment of every head, as TSV tables and PNG plots.",
        epilog=EXAMPLES["explain"],
        formatter_class=fmt,
    )
    _common(e)
    e.add_argument("--gene", required=True, help="the gene to explain (id or standard name)")
    e.add_argument("--set", metavar='"A;B"', help="query set S for the cross-attention (default: the gene alone)")
    e.add_argument("--types", metavar='"deletion;deletion"', help="perturbation types of --set (default: deletion)")
    e.add_argument("--out-dir", required=True, metavar="DIR", help="directory for the tables and plots")
    e.add_argument("--top", type=int, default=30, help="genes listed per table/plot (default: 30)")
    e.add_argument(
        "--align-rows",
        type=int,
        default=1024,
        help="graph rows sampled (seed 0) per alignment cell; 0 = all rows (default: 1024)",
    )
    e.add_argument("--force", action="store_true", help="overwrite report files already in --out-dir")
    return parser


# ---------------------------------------------------------------------- helpers
def _load_predictor(args: argparse.Namespace, batch_size: int = 0):
    from cellformer.queries.predictor import Predictor

    device = _check_device(args.device)
    return Predictor.from_checkpoint(Path(args.ckpt), device=device, batch_size=batch_size)


def _is_dna(text: str) -> bool:
    return bool(text) and set(text.upper()) <= set("ACGTUN \n")


def _existing_file(src: str) -> Path | None:
    """``src`` as a path when it names an existing file; None otherwise (also when it cannot be a path,
    e.g. inline DNA longer than the file-name limit)."""
    try:
        path = Path(src)
        return path if path.is_file() else None
    except (OSError, ValueError):
        return None


def _add_genes(predictor, add_gene: list[str], fasta: list[str]) -> None:
    seqs: dict[str, str] = {}
    given: dict[str, str] = {}
    for spec in add_gene:
        if "=" not in spec:
            raise UserError(f"--add-gene {spec!r}: expected NAME=FASTA (or NAME=DNA)")
        name, src = (x.strip() for x in spec.split("=", 1))
        if not name or not src:
            raise UserError(f"--add-gene {spec!r}: expected NAME=FASTA (or NAME=DNA)")
        if name.upper() in given:
            raise UserError(f"--add-gene {name} is given twice ({given[name.upper()]} and {spec}); name each gene once")
        given[name.upper()] = spec if len(spec) <= 60 else spec[:57] + "..."
        path = _existing_file(src)
        if path is not None:
            records = read_fasta(path)
            if len(records) != 1:
                match = [r for r in records if r.name.upper() == name.upper()]
                if len(match) != 1:
                    raise UserError(
                        f"--add-gene {name}={src}: the file has {len(records)} records and none is named {name!r}; "
                        "give a one-record FASTA or use --fasta to add all of them"
                    )
                records = match
            seqs[name] = records[0].sequence
        elif _is_dna(src):
            seqs[name] = src
        else:
            raise UserError(f"--add-gene {name}={src}: {src} is neither an existing FASTA file nor a DNA sequence")
    if seqs:
        predictor.add_genes(seqs)
    for f in fasta:
        if not Path(f).exists():
            raise UserError(f"--fasta {f}: file not found")
        predictor.add_fasta(f)


def _emit(text: str, out: str | None, what: str) -> None:
    if out and out != "-":
        write_text_atomic(out, text)
        print(f"cellformer: wrote {what} to {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def read_gene_list(path: str | Path) -> list[str]:
    """Gene names from a file: separated by newlines, tabs, ``,`` or ``;``; ``#`` starts a comment."""
    from cellformer.genome import open_text

    path = Path(path)
    names: list[str] = []
    with open_text(path, "gene list") as fh:
        lines = fh.read().splitlines()
    for line in lines:
        line = line.split("#", 1)[0]
        for tok in line.replace(",", "\t").replace(";", "\t").split():
            names.append(tok)
    if not names:
        raise UserError(f"gene list {path} names no genes")
    return names


# ---------------------------------------------------------------------- commands
def _inputs(args: argparse.Namespace) -> dict:
    """The files a query command reads, by option (FASTA files named by --add-gene included)."""
    inputs = {"--ckpt": args.ckpt}
    if args.command == "predict":
        inputs["--table"] = args.table
        inputs["--fasta"] = list(args.fasta or [])
        sources = [spec.split("=", 1)[1].strip() for spec in args.add_gene or [] if "=" in spec]
        inputs["--add-gene"] = [str(p) for p in map(_existing_file, sources) if p is not None]
    elif args.command == "screen":
        inputs["--genes"] = args.genes
    return inputs


def cmd_predict(args: argparse.Namespace) -> int:
    _positive(args.batch_size, "--batch-size")
    check_outputs({"--out": args.out}, _inputs(args), force=args.force)
    predictor = _load_predictor(args, args.batch_size)
    _add_genes(predictor, args.add_gene, args.fasta)
    if args.table:
        if args.types:
            raise UserError("--types goes with --genes; a --table gives its types in a 'types' column")
        from cellformer.data.table import read_gene_sets

        sets = read_gene_sets(args.table, predictor.genome)
        table = predictor.predict_resolved([s[0] for s in sets], [s[1] for s in sets])
    else:
        types = args.types or None
        if types is not None and len(types) != len(args.genes):
            raise UserError(f"{len(types)} --types for {len(args.genes)} --genes (give one --types per --genes)")
        table = predictor.predict([_split(g, "--genes") for g in args.genes], None if types is None else list(types))
    _emit(table.to_tsv(), args.out, f"{len(table)} predictions")
    return 0


def cmd_screen(args: argparse.Namespace) -> int:
    from cellformer.queries.screen import default_state_path, screen

    _positive(args.top, "--top")
    _positive(args.batch_size, "--batch-size")
    out = args.out if args.out and args.out != "-" else None
    state = Path(args.state) if args.state else (default_state_path(out) if out else None)
    if args.resume and state is None:
        raise UserError("--resume needs --out (the state is kept next to it) or --state FILE")
    outputs = {"--out": out, "--all-scores": args.all_scores, "--state": state}
    continued = ["--state", "--all-scores"] if args.resume else ["--state"]
    check_outputs(outputs, _inputs(args), force=args.force, may_exist=continued)
    if state is not None and state.exists() and not args.resume and not args.force:
        raise UserError(
            f"state file {state} exists (an interrupted screen?): pass --resume to continue it or --force to start over"
        )
    if args.order == 3 and not args.genes and not args.force:
        raise UserError("a triple screen needs a gene subset (--genes subset.txt, at most 500 genes) or --force")
    predictor = _load_predictor(args)
    if args.by is not None:
        predictor.phenotype_index(args.by)  # unknown phenotype: error listing them, before any work
    genes = read_gene_list(args.genes) if args.genes else None
    result = screen(
        predictor,
        order=args.order,
        genes=genes,
        by=args.by,
        top=args.top,
        ascending=args.ascending,
        batch_size=args.batch_size,
        perturbation=args.ptype,
        all_scores=args.all_scores,
        state_path=state,
        resume=args.resume,
        save_every_s=args.save_every,
        progress=not args.no_progress,
        force=args.force,
    )
    _emit(result.to_tsv(), args.out, f"top {len(result)} of {result.num_total:,} combinations")
    if state is not None and state.exists():
        state.unlink()
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from cellformer.queries.explain import explain, explain_files

    _positive(args.top, "--top")
    _positive(args.align_rows, "--align-rows", zero_ok="all rows")
    query = _split(args.set, "--set") if args.set is not None else None
    types = [t.strip() for t in args.types.split(";") if t.strip()] if args.types is not None else None
    if types is not None and query is None:
        raise UserError("--types describes --set; give --set too")
    check_output_dir("--out-dir", args.out_dir, [], _inputs(args))
    predictor = _load_predictor(args)
    check_output_dir("--out-dir", args.out_dir, explain_files(predictor.model), _inputs(args), force=args.force)
    summary = explain(
        predictor,
        args.gene,
        args.out_dir,
        query=query,
        types=types,
        top=args.top,
        alignment_rows=args.align_rows or None,
    )
    print(f"cellformer: wrote attention reports for {summary['gene']} to {args.out_dir}", file=sys.stderr)
    return 0


COMMANDS = {"predict": cmd_predict, "screen": cmd_screen, "explain": cmd_explain}


def main(argv: list[str] | None = None) -> int:
    """Run ``predict``, ``screen`` or ``explain`` (``argv[0]`` is the command); returns the exit status."""
    from cellformer.cli import run_reporting_errors

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or usage errors (2)
        return int(exc.code or 0)

    def run() -> int:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            try:
                return COMMANDS[args.command](args)
            finally:
                for w in caught:
                    if issubclass(w.category, UserWarning):
                        print(f"cellformer: warning: {w.message}", file=sys.stderr)

    return run_reporting_errors(f"cellformer {args.command}", run)


if __name__ == "__main__":
    raise SystemExit(main())
