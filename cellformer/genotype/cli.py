"""Genotype-mode commands: ``cellformer fit|validate|test --config configs/genotype/<model>.yaml`` and
``cellformer predict|explain --ckpt X --genotypes table.tsv``.

:func:`is_genotype_command` tells the top-level ``cellformer`` command when to route here: a
``--config`` whose ``model`` or ``data`` section names a ``cellformer.genotype`` class, or a query with
``--genotypes``.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np

from cellformer.errors import UserError

GENOTYPE_PREFIX = "cellformer.genotype"

#: The trainer settings the shipped genotype configs share, as LightningCLI ``trainer_defaults``: a config
#: sets only what differs (``max_epochs``, ``logger: {init_args: {name: …}}``); ``--print_config`` shows the
#: merged block. Kept in the configs, as for :data:`cellformer.training.cli.TRAINER_DEFAULTS`:
#: ``accelerator: cpu`` and ``callbacks: ../trainer/checkpoint_epoch.yaml``. No ``gradient_clip_val``
#: default: the closed-form models (ridge, lasso) train by manual optimization, where Lightning refuses it.
GENOTYPE_TRAINER_DEFAULTS: dict = {
    "devices": 1,
    "log_every_n_steps": 10,
    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs/genotype"}},
}


# ---------------------------------------------------------------------- routing
def _config_paths(argv: list[str]) -> list[str]:
    paths = []
    for i, a in enumerate(argv):
        if a in {"--config", "-c"} and i + 1 < len(argv):
            paths.append(argv[i + 1])
        elif a.startswith("--config="):
            paths.append(a.split("=", 1)[1])
    return paths


def is_genotype_command(argv: list[str]) -> bool:
    """True when ``argv`` (command first) is a genotype-mode invocation."""
    if not argv:
        return False
    cmd, rest = argv[0], argv[1:]
    if cmd in {"predict", "explain"}:
        return any(a == "--genotypes" or a.startswith("--genotypes=") for a in rest)
    if cmd not in {"fit", "validate", "test"}:
        return False
    import yaml

    for path in _config_paths(rest):
        try:
            cfg = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        for section in ("model", "data"):
            sec = cfg.get(section) if isinstance(cfg, dict) else None
            if isinstance(sec, dict) and str(sec.get("class_path", "")).startswith(GENOTYPE_PREFIX):
                return True
    return False


# ---------------------------------------------------------------------- fit / validate / test
def _train_main(argv: list[str]) -> int:
    from cellformer.genotype.training import GenotypeDataModule, GenotypeModule
    from cellformer.training.cli import ContextCLI

    class GenotypeCLI(ContextCLI):
        """The shared CLI base; the model and data classes are subclass choices (``class_path``)."""

        context_target = "model.init_args.context"

    GenotypeCLI(
        GenotypeModule,
        GenotypeDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=argv,
        trainer_defaults=copy.deepcopy(GENOTYPE_TRAINER_DEFAULTS),
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )
    return 0


# ---------------------------------------------------------------------- predict / explain
def read_query_genotypes(path: str, locus_ids: list[str], allele_coding: str = "auto",
                         reference_allele: str | None = None):
    """Read a samples × markers table and order its columns as the checkpoint's loci.

    Returns ``(x (n, L) float32, sample ids, loci of the checkpoint order as read from the file)``.
    Markers of the checkpoint missing from the file are an error; extra markers are ignored.
    """
    from cellformer.genotype.importers import read_genotype_table

    data, _ = read_genotype_table(path, None, allele_coding=allele_coding, reference_allele=reference_allele)
    col = {m: i for i, m in enumerate(data.loci.ids)}
    missing = [m for m in locus_ids if m not in col]
    if missing:
        shown = ", ".join(missing[:10]) + (f", … ({len(missing)} in all)" if len(missing) > 10 else "")
        raise UserError(f"{path}: {len(missing)} of the model's {len(locus_ids)} markers are missing from the "
                        f"genotype table: {shown}")
    order = np.array([col[m] for m in locus_ids], dtype=np.int64)
    extra = len(data.loci.ids) - len(order)
    if extra:
        print(f"[cellformer] {path}: ignoring {extra} markers the model was not trained on", file=sys.stderr)
    return data.genotypes[:, order].astype(np.float32), list(data.sample_ids), data.loci.subset(order)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cellformer", description="Query a genotype-mode checkpoint.")
    sub = parser.add_subparsers(dest="command", required=True)
    for cmd, text in (("predict", "predict phenotypes of new genotypes"),
                      ("explain", "per-locus attribution report (which loci drive each phenotype)")):
        p = sub.add_parser(cmd, help=text, description=text)
        p.add_argument("--ckpt", required=True, help="checkpoint written by `cellformer fit` in genotype mode")
        p.add_argument("--genotypes", required=True,
                       help="samples × markers TSV/CSV (optionally .gz), as for `cellformer data import-genotypes`")
        p.add_argument("--allele-coding", default="auto", choices=["auto", "01", "pm1", "letters"])
        p.add_argument("--reference-allele", default=None, help="the allele read as +1 (as in the import)")
        if cmd == "predict":
            p.add_argument("--out", default="-", help="output TSV (default: stdout)")
        else:
            p.add_argument("--out-dir", required=True, help="directory for top_loci.tsv, attribution.png, summary.json")
            p.add_argument("--top", type=int, default=20, help="loci listed per phenotype (default 20)")
            p.add_argument("--max-samples", type=int, default=512, help="samples used for the attribution")
    return parser


def _query_main(argv: list[str]) -> int:
    from cellformer.genotype.training import load_genotype_checkpoint, predict_genotypes

    args = build_parser().parse_args(argv)
    model, context, meta = load_genotype_checkpoint(args.ckpt)
    x, samples, loci = read_query_genotypes(args.genotypes, context.locus_ids, args.allele_coding,
                                            args.reference_allele)
    if args.command == "predict":
        pred = predict_genotypes(model, context, x)
        lines = ["sample\t" + "\t".join(context.phenotype_names)]
        lines += [s + "\t" + "\t".join(f"{v:.6g}" for v in row) for s, row in zip(samples, pred, strict=True)]
        text = "\n".join(lines) + "\n"
        if args.out == "-":
            sys.stdout.write(text)
        else:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(text)
            print(f"[cellformer] wrote {len(samples)} predictions to {args.out}", file=sys.stderr)
        return 0
    from cellformer.genotype.explain import locus_attribution, write_report

    imp, eff = locus_attribution(model, x[: args.max_samples], context.y_std)
    write_report(args.out_dir, imp, eff, context.phenotype_names, context.locus_ids, loci, args.top, meta["model"])
    print(f"[cellformer] wrote top_loci.tsv, attribution.png and summary.json to {args.out_dir}", file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    """Run a genotype-mode command (``argv`` starts with the command name)."""
    cmd, rest = argv[0], argv[1:]
    if cmd in {"fit", "validate", "test"}:
        return _train_main([cmd, *rest])
    return _query_main([cmd, *rest])
