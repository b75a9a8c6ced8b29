"""The ``cellformer`` command: dispatches to the data, training and query sub-commands.

Every sub-command reports a :class:`~cellformer.errors.UserError` (bad input: a file, a flag, a config
value) as one ``error: …`` line on stderr (cut to :data:`~cellformer.errors.MAX_MESSAGE` characters) and
exits with status 2, without a traceback. ``--debug`` (anywhere on the command line) or
``CELLFORMER_DEBUG=1`` adds the traceback. Any other exception is a bug: it keeps its traceback (exit
status 1). Output cut short by a closed pipe (``cellformer data info | head``) ends quietly.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

from cellformer.errors import MAX_MESSAGE, UserError, shorten

USAGE = """usage: cellformer <command> [options]

Predict what happens to a cell when genes are deleted, added or altered.

commands:
  data      build, import and inspect datasets and graphs (simulate, import, import-graph,
            import-screen, fetch, info)
  fit       train a model (LightningCLI; e.g. --config configs/quickstart.yaml)
  validate  evaluate a checkpoint on the validation split
  test      evaluate a checkpoint on the test split (per-phenotype metrics)
  predict   predict phenotypes of gene sets with a trained checkpoint
  screen    score all pairs/triples of genes with a trained checkpoint, keep the top k
  explain   attention reports (graph heads, cross-attention) of a trained checkpoint

Run `cellformer <command> --help` for the options of each command.
--debug (or CELLFORMER_DEBUG=1) shows the traceback of an error.
"""

DEBUG_ENV = "CELLFORMER_DEBUG"
_debug_flag = False


def debug_requested() -> bool:
    """Whether tracebacks of user errors are wanted (``--debug`` or ``CELLFORMER_DEBUG`` set and not 0)."""
    return _debug_flag or os.environ.get(DEBUG_ENV, "").strip() not in {"", "0", "false", "no"}


def _quiet_broken_pipe() -> int:
    """After a closed stdout pipe: point stdout at /dev/null so the interpreter's final flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a real file (e.g. captured in tests)
        pass
    return 0


def run_reporting_errors(prog: str, func: Callable[[], int]) -> int:
    """Run ``func()``: a :class:`UserError` becomes ``<prog>: error: <message>`` on stderr and status 2.

    Status 130 on Ctrl-C, 0 when stdout was closed by the reader. Anything else propagates (a bug keeps
    its traceback). With :func:`debug_requested` the traceback of a user error is printed too.
    """
    try:
        return int(func() or 0)
    except UserError as exc:
        if debug_requested():
            traceback.print_exc(file=sys.stderr)
        message = shorten(" ".join(str(exc).split("\n")) or type(exc).__name__, MAX_MESSAGE)
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def _dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "data":
        from cellformer.data.cli import main as data_main

        return data_main(rest)
    from cellformer.genotype import cli as genotype_cli

    if genotype_cli.is_genotype_command(argv):  # a config naming cellformer.genotype classes, or --genotypes
        return genotype_cli.main(argv)
    if cmd in {"fit", "validate", "test"}:
        from cellformer.training.cli import main as train_main

        return train_main([cmd, *rest])
    if cmd in {"predict", "screen", "explain"}:
        from cellformer.queries.cli import main as query_main

        return query_main([cmd, *rest])
    print(f"cellformer: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cellformer`` console script; returns the exit status."""
    global _debug_flag
    argv = list(sys.argv[1:] if argv is None else argv)
    before = _debug_flag
    if "--debug" in argv:
        argv = [a for a in argv if a != "--debug"]
        _debug_flag = True
    try:
        prog = f"cellformer {argv[0]}" if argv and not argv[0].startswith("-") else "cellformer"
        return run_reporting_errors(prog, lambda: _dispatch(argv))
    finally:
        _debug_flag = before


if __name__ == "__main__":
    raise SystemExit(main())
