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
def read_genotype_checkpoint(path) -> dict:
    """The safe loader of genotype-mode checkpoints (local files, ``weights_only=True``, one-line errors)."""
    from cellformer.genotype.training import CHECKPOINT_KEY
    from cellformer.models.checkpoint import load_torch_file

    return load_torch_file(path, require=(CHECKPOINT_KEY, "state_dict"), kind="genotype-mode checkpoint")


def check_genotype_model(model_section) -> None:
    """An unknown genotype model or ``model_args`` key, or a bad value, as one :class:`UserError`."""
    from cellformer.errors import unknown_name_error
    from cellformer.genotype.models import MODELS
    from cellformer.training.cli import check_hparam_values, hparam_names

    init = model_section.get("init_args") if hasattr(model_section, "get") else None
    if init is None:
        return
    name, model_args = init.get("model", "ridge"), init.get("model_args") or {}
    if name not in MODELS:
        raise unknown_name_error("genotype model", str(name), MODELS)
    if not isinstance(model_args, dict):
        raise UserError(f"model.init_args.model_args must be a mapping of hyper-parameters, got {model_args!r}")
    cls = MODELS[name]
    known = [k for k in hparam_names(cls) or [] if k not in {"n_loci", "n_phenotypes", "graphs"}]
    for key in model_args:
        if hparam_names(cls) is not None and key not in known:
            raise unknown_name_error(f"model_args key for genotype model {name!r}:", key, known)
    check_hparam_values(cls, model_args, "model.init_args.model_args")


def _train_main(argv: list[str]) -> int:
    from cellformer.genotype.training import GenotypeDataModule, GenotypeModule
    from cellformer.training.cli import ContextCLI

    class GenotypeCLI(ContextCLI):
        """The shared CLI base; the model and data classes are subclass choices (``class_path``), the
        checkpoint reader is genotype mode's, and the genotype model's hyper-parameters are checked."""

        context_target = "model.init_args.context"
        checkpoint_reader = staticmethod(read_genotype_checkpoint)

        def check_config(self, cfg) -> None:
            super().check_config(cfg)
            if cfg.get("model") is not None:
                check_genotype_model(cfg.get("model"))

    GenotypeCLI(
        GenotypeModule,
        GenotypeDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=argv,
        trainer_defaults=copy.deepcopy(GENOTYPE_TRAINER_DEFAULTS),
        auto_configure_optimizers=False,
    )
    return 0


# ---------------------------------------------------------------------- predict / explain
def query_alleles(stored: dict | None, allele_coding: str = "auto", reference_allele: str | None = None):
    """The allele record a query table is read with: the checkpoint's (``stored``), which the options may
    restate but not contradict; without one, None (the table's own coding, or ``--reference-allele``)."""
    if not stored:
        return None
    from cellformer.genotype.importers import check_alleles

    alleles = check_alleles(stored)
    label = f"{alleles['plus']} = +1, {alleles['minus']} = -1 ({alleles['coding']})"
    if allele_coding not in ("auto", alleles["coding"]):
        raise UserError(f"--allele-coding {allele_coding} contradicts the checkpoint, which was trained with {label}")
    if reference_allele is not None:
        ref = reference_allele.strip().upper()
        if alleles["coding"] != "letters":
            try:
                ref = f"{float(ref):g}"
            except ValueError:
                pass
        if ref != alleles["plus"]:
            raise UserError(
                f"--reference-allele {reference_allele} contradicts the checkpoint, which was trained with {label}"
            )
    return alleles


def read_query_genotypes(
    path: str,
    locus_ids: list[str],
    allele_coding: str = "auto",
    reference_allele: str | None = None,
    alleles: dict | None = None,
):
    """Read a samples × markers table and order its columns as the checkpoint's loci.

    ``alleles`` (the checkpoint's allele record) fixes which call is +1, so predictions do not depend on
    the table's row order; without it the table's own coding is used (``allele_coding``,
    ``reference_allele``). Every row must be read: a ragged row, an unknown allele call or a repeated
    sample id is an error naming the line. Markers of the checkpoint missing from the file are an error;
    extra markers are ignored.

    Returns ``(x (n, L) float32, sample ids, loci of the checkpoint order as read from the file)``.
    """
    from cellformer.genotype.importers import read_genotype_table

    data, report = read_genotype_table(
        path, None, allele_coding=allele_coding, reference_allele=reference_allele, alleles=alleles, strict=True
    )
    if alleles is None and data.alleles and data.alleles["coding"] == "letters" and reference_allele is None:
        raise UserError(
            f"{path}: the checkpoint does not record which letter was +1 in training; pass "
            "--reference-allele (the letter the training import read as +1)"
        )
    col = {m: i for i, m in enumerate(data.loci.ids)}
    missing = [m for m in locus_ids if m not in col]
    if missing:
        shown = ", ".join(missing[:10]) + (f", … ({len(missing)} in all)" if len(missing) > 10 else "")
        raise UserError(
            f"{path}: {len(missing)} of the model's {len(locus_ids)} markers are missing from the "
            f"genotype table: {shown}"
        )
    order = np.array([col[m] for m in locus_ids], dtype=np.int64)
    extra = len(data.loci.ids) - len(order)
    if extra:
        print(f"[cellformer] {path}: ignoring {extra} markers the model was not trained on", file=sys.stderr)
    print(f"[cellformer] {path}: {report.notes[0]}", file=sys.stderr)
    return data.genotypes[:, order].astype(np.float32), list(data.sample_ids), data.loci.subset(order)


EXPLAIN_FILES = ("top_loci.tsv", "attribution.png", "summary.json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cellformer", description="Query a genotype-mode checkpoint.")
    sub = parser.add_subparsers(dest="command", required=True)
    for cmd, text in (
        ("predict", "predict phenotypes of new genotypes"),
        ("explain", "per-locus attribution report (which loci drive each phenotype)"),
    ):
        p = sub.add_parser(cmd, help=text, description=text)
        p.add_argument("--ckpt", required=True, help="checkpoint written by `cellformer fit` in genotype mode")
        p.add_argument(
            "--genotypes",
            required=True,
            help="samples × markers TSV/CSV (optionally .gz), as for `cellformer data import-genotypes`",
        )
        p.add_argument(
            "--allele-coding",
            default="auto",
            choices=["auto", "01", "pm1", "letters"],
            help="coding of the calls (default: the checkpoint's)",
        )
        p.add_argument(
            "--reference-allele",
            default=None,
            help="the allele read as +1 (default: the checkpoint's; needed for letters only when an "
            "older checkpoint does not record it)",
        )
        if cmd == "predict":
            p.add_argument("--out", default="-", help="output TSV (default: stdout)")
        else:
            p.add_argument("--out-dir", required=True, help="directory for top_loci.tsv, attribution.png, summary.json")
            p.add_argument("--top", type=int, default=20, help="loci listed per phenotype (default 20)")
            p.add_argument("--max-samples", type=int, default=512, help="samples used for the attribution")
        p.add_argument("--force", action="store_true", help="overwrite existing output files")
    return parser


def _load(path: str):
    """``load_genotype_checkpoint`` with a damaged checkpoint (loadable, but not rebuildable) as one line."""
    from cellformer.errors import shorten
    from cellformer.genotype.training import load_genotype_checkpoint

    try:
        return load_genotype_checkpoint(path)
    except UserError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise UserError(f"genotype checkpoint {path} is damaged: {shorten(exc, 200)}") from None


def _query_main(argv: list[str]) -> int:
    from cellformer.genotype.training import predict_genotypes
    from cellformer.paths import check_output_dir, check_outputs, staged_directory, write_text_atomic

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, message already printed)
        return int(exc.code or 0)
    inputs = {"--ckpt": args.ckpt, "--genotypes": args.genotypes}
    if args.command == "predict":
        check_outputs({"--out": args.out}, inputs, force=args.force)
    else:
        for option, value in (("--top", args.top), ("--max-samples", args.max_samples)):
            if value <= 0:
                raise UserError(f"{option} must be a positive number, got {value}")
        check_output_dir("--out-dir", args.out_dir, EXPLAIN_FILES, inputs, force=args.force)
    model, context, meta = _load(args.ckpt)
    alleles = query_alleles(context.alleles, args.allele_coding, args.reference_allele)
    x, samples, loci = read_query_genotypes(
        args.genotypes, context.locus_ids, args.allele_coding, args.reference_allele, alleles
    )
    if args.command == "predict":
        pred = predict_genotypes(model, context, x)
        lines = ["sample\t" + "\t".join(context.phenotype_names)]
        lines += [s + "\t" + "\t".join(f"{v:.6g}" for v in row) for s, row in zip(samples, pred, strict=True)]
        text = "\n".join(lines) + "\n"
        if args.out == "-":
            sys.stdout.write(text)
        else:
            write_text_atomic(args.out, text)
            print(f"[cellformer] wrote {len(samples)} predictions to {args.out}", file=sys.stderr)
        return 0
    from cellformer.genotype.explain import locus_attribution, write_report

    imp, eff = locus_attribution(model, x[: args.max_samples], context.y_std)
    with staged_directory(args.out_dir) as tmp:  # a failed report leaves no half-written folder
        write_report(tmp, imp, eff, context.phenotype_names, context.locus_ids, loci, args.top, meta["model"])
    print(f"[cellformer] wrote top_loci.tsv, attribution.png and summary.json to {args.out_dir}", file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    """Run a genotype-mode command (``argv`` starts with the command name)."""
    cmd, rest = argv[0], argv[1:]
    if cmd in {"fit", "validate", "test"}:
        return _train_main([cmd, *rest])
    return _query_main([cmd, *rest])
