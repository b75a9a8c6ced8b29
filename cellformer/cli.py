"""The ``cellformer`` command: dispatches to the data, training and query sub-commands."""

from __future__ import annotations

import sys

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
"""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cellformer`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "data":
        from cellformer.data.cli import main as data_main

        return data_main(rest)
    if cmd in {"fit", "validate", "test"}:
        from cellformer.training.cli import main as train_main

        return train_main([cmd, *rest])
    if cmd in {"predict", "screen", "explain"}:
        from cellformer.queries.cli import main as query_main

        return query_main([cmd, *rest])
    print(f"cellformer: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
