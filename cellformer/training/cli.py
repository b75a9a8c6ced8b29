"""``cellformer fit | validate | test`` through LightningCLI with YAML configs in ``configs/``.

Config mistakes are :class:`~cellformer.errors.UserError` (one ``error: …`` line from the ``cellformer``
command, with a did-you-mean where a name is close to a known one): an option or config key the parser does
not know (``--model.graph_regg``), a value of the wrong type, an unknown model or an unknown hyper-parameter
in ``model_args`` (``d_modle``). Problems found while the data and the model are built (an unknown graph or
phenotype, a head or layer out of range) are raised as :class:`UserError` where they are found.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import re
import sys
import warnings

from lightning.pytorch.cli import LightningCLI

from cellformer.errors import UserError, did_you_mean, unknown_name_error
from cellformer.training.datamodule import PerturbationDataModule
from cellformer.training.module import PhenotypeModule

#: Constructor arguments every model receives from the data context (not hyper-parameters).
CONTEXT_ARGS = {"self", "genome", "graphs", "phenotype_names"}

#: The trainer settings the shipped configs share, as LightningCLI ``trainer_defaults``: a config sets only
#: what differs (``max_steps``, ``val_check_interval``, ``logger: {init_args: {name: …}}``…) and
#: ``--print_config`` shows the merged block. They apply to a user's own config too; one that sets
#: ``default_root_dir`` and no logger has its logs and checkpoints under ``runs/lightning_logs`` (the
#: logger's folder) unless it also sets ``logger.init_args.save_dir``. Kept in the configs, not defaults:
#:
#: - ``accelerator: cpu``: as a default it would quietly run a config written for a GPU on the CPU;
#: - ``check_val_every_n_epoch: null``: as a default, Lightning would refuse a config that validates at a
#:   fraction of an epoch (``val_check_interval: 0.5``);
#: - ``callbacks: trainer/checkpoint.yaml``: a default ModelCheckpoint makes Lightning refuse a config that
#:   sets ``enable_checkpointing: false`` (and ``trainer_defaults["callbacks"]`` would be added to every run,
#:   out of a config's reach).
TRAINER_DEFAULTS: dict = {
    "devices": 1,
    "precision": "32-true",
    "log_every_n_steps": 20,
    "gradient_clip_val": 1.0,
    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs"}},
}


def model_hparam_names(name: str) -> list[str] | None:
    """The hyper-parameters model ``name`` accepts in ``model_args`` (None if it takes any keyword)."""
    from cellformer.models.registry import model_class

    params = inspect.signature(model_class(name).__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return [p for p in params if p not in CONTEXT_ARGS]


def check_model_args(name: str, model_args: dict | None) -> None:
    """Refuse an unknown model or an unknown key of ``model_args`` before anything is built."""
    known = model_hparam_names(name)  # an unknown model name raises here, with the list of models
    if known is None or not model_args:
        return
    for key in model_args:
        if key not in known:
            raise unknown_name_error(f"model_args key for model {name!r}:", key, known)


def _config_error_message(stderr_text: str, keys: list[str]) -> str:
    """The parser's error message (after its usage text) as one line, with a did-you-mean for unknown keys."""
    text = stderr_text.strip()
    at = text.rfind("error: ")
    message = " ".join(text[at + len("error: ") :].split()) if at >= 0 else " ".join(text.split()[-30:])
    m = re.search(r"does not accept (?:option|key) '([^']+)'", message) or re.search(
        r"unrecognized arguments: (?:\w+ )?--([\w.\-]+)", message
    )
    if m:
        message += did_you_mean(m.group(1), keys)
    return message or "invalid command line or config"


class ContextCLI(LightningCLI):
    """LightningCLI with the data module's ``context`` linked into the model and a test run after ``fit``
    (the base of both modes' CLIs).

    ``--test_after_fit false`` skips the test run that follows training (on the best checkpoint when
    a ModelCheckpoint monitors a metric, else on the final weights). :attr:`context_target` is the model
    argument the context goes to (``model.init_args.context`` where the model class is a subclass choice).
    """

    context_target = "model.context"

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data", self.context_target, compute_fn=lambda dm: dm.context, apply_on="instantiate")
        parser.add_argument("--test_after_fit", type=bool, default=True, help="run `test` after `fit`")

    def after_fit(self) -> None:
        cfg = self.config.get(self.subcommand, self.config)
        if not cfg.get("test_after_fit", True) or self.trainer.fast_dev_run:
            return
        if len(self.datamodule.split_index["test"]) == 0:
            print("[cellformer] no test records: skipping the test run")
            return
        cb = self.trainer.checkpoint_callback
        ckpt = "best" if cb is not None and cb.monitor is not None and cb.best_model_path else None
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)


class CellformerCLI(ContextCLI):
    """The perturbation-mode CLI: :class:`ContextCLI` whose config errors are one-line :class:`UserError` s."""

    def _config_keys(self) -> list[str]:
        """Every option the parsers know (``model.lr``, ``trainer.max_steps``…) and the models' hyper-parameters."""
        keys: set[str] = set()
        for p in [self.parser, *getattr(self, "_subcommand_parsers", {}).values()]:
            keys.update(a.dest for a in p._actions if isinstance(a.dest, str))
        from cellformer.models.registry import MODELS

        for name in MODELS:
            try:
                keys.update(f"model.model_args.{h}" for h in model_hparam_names(name) or [])
            except (ImportError, AttributeError):  # a model whose optional dependencies are missing
                continue
        return sorted(keys)

    def parse_arguments(self, parser, args) -> None:
        """Parse as LightningCLI does; a parser error becomes a :class:`UserError` instead of usage text."""
        captured = io.StringIO()
        try:
            with contextlib.redirect_stderr(captured), warnings.catch_warnings():
                # the cellformer command passes its own argv on purpose
                warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
                super().parse_arguments(parser, args)
        except SystemExit as exc:
            if exc.code in (0, None):  # --help, --print_config
                sys.stderr.write(captured.getvalue())
                raise
            raise UserError(_config_error_message(captured.getvalue(), self._config_keys())) from None
        sys.stderr.write(captured.getvalue())
        subcommand = self.config.get("subcommand")
        cfg = self.config.get(subcommand, self.config) if subcommand else self.config
        model = cfg.get("model")
        if model is not None:  # before the seed is set and anything is built
            check_model_args(model.get("model", "cellformer"), model.get("model_args"))


def main(argv: list[str] | None = None) -> int:
    """Run LightningCLI on ``argv`` (``fit --config configs/quickstart.yaml`` …); config errors raise UserError."""
    CellformerCLI(
        PhenotypeModule,
        PerturbationDataModule,
        args=sys.argv[1:] if argv is None else argv,
        trainer_defaults=copy.deepcopy(TRAINER_DEFAULTS),
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )
    return 0
