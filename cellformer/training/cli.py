"""``cellformer fit | validate | test`` through LightningCLI with YAML configs in ``configs/``.

Config mistakes are :class:`~cellformer.errors.UserError` (one ``error: …`` line from the ``cellformer``
command, with a did-you-mean where a name is close to a known one): an option or config key the parser does
not know (``--model.graph_regg``), a value of the wrong type, an unknown model or an unknown hyper-parameter
in ``model_args`` (``d_modle``), a number out of its range (:data:`CONFIG_RULES`, :data:`HPARAM_RULES`:
``batch_size 0``, ``lr -1``, ``dropout 2``, ``d_model big``). Problems found while the data and the model
are built (an unknown graph or phenotype, a head or layer out of range) are raised as :class:`UserError`
where they are found; a setting the Trainer refuses is one line too.

Checkpoints: ``--ckpt_path`` goes through :func:`cellformer.models.checkpoint.check_ckpt_path` before
Lightning reads it (a URL is refused, a corrupt file is one line) and ``--weights_only false`` is refused,
so no checkpoint runs code. The run's config is saved in the logger's folder and never overwrites a file
(:class:`SafeSaveConfigCallback`); without a logger it is not saved.

:class:`SafeLightningCLI` holds all of this for both modes; :class:`CellformerCLI` (perturbation mode) and
the genotype-mode CLI subclass it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import io
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from cellformer.errors import UserError, check_number, did_you_mean, shorten, unknown_name_error
from cellformer.models.checkpoint import check_ckpt_path, read_checkpoint
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


#: Allowed values of config keys (``section.key`` -> :func:`~cellformer.errors.check_number` arguments), for
#: both modes. A key a command does not have is skipped.
CONFIG_RULES: dict[str, dict] = {
    "seed_everything": {"integer": True, "low": 0, "high": 2**32 - 1, "allow": (True, False, None)},
    "model.lr": {"low": 0, "low_open": True},
    "model.weight_decay": {"low": 0},
    "model.warmup_steps": {"integer": True, "low": 0},
    "model.min_lr_ratio": {"low": 0, "high": 1},
    "data.batch_size": {"integer": True, "low": 1},
    "data.num_workers": {"integer": True, "low": 0},
    "data.val_fraction": {"low": 0, "high": 1, "high_open": True},
    "data.test_fraction": {"low": 0, "high": 1, "high_open": True},
    "data.train_fraction": {"low": 0, "low_open": True, "high": 1},
    "data.split_seed": {"integer": True, "low": 0},
    "data.train_seed": {"integer": True, "low": 0},
    "data.max_records": {"integer": True, "low": 1, "allow": (None,)},
    "data.train_samples": {"integer": True, "low": 1, "allow": (None,)},
    "trainer.max_steps": {"integer": True, "low": -1},
    "trainer.min_steps": {"integer": True, "low": 0, "allow": (None,)},
    "trainer.max_epochs": {"integer": True, "low": -1, "allow": (None,)},
    "trainer.min_epochs": {"integer": True, "low": 0, "allow": (None,)},
    "trainer.log_every_n_steps": {"integer": True, "low": 1, "allow": (None,)},
    "trainer.accumulate_grad_batches": {"integer": True, "low": 1},
    "trainer.gradient_clip_val": {"low": 0, "allow": (None,)},
    "trainer.check_val_every_n_epoch": {"integer": True, "low": 1, "allow": (None,)},
    "trainer.val_check_interval": {"low": 0, "low_open": True, "allow": (None,)},
    "trainer.num_sanity_val_steps": {"integer": True, "low": -1, "allow": (None,)},
}
_SHARE = {"low": 0, "high": 1, "high_open": True}
#: Allowed values of model hyper-parameters (``model_args``), by name, for every model of both modes.
HPARAM_RULES: dict[str, dict] = {
    **{k: {"integer": True, "low": 1} for k in ("d_model", "n_layers", "n_heads", "d_hidden", "graph_samples")},
    **{k: {"integer": True, "low": 1, "allow": (None,)} for k in ("d_ff", "readout_hidden")},
    **{k: _SHARE for k in ("dropout", "attn_dropout", "identity_dropout")},
    **{k: {"integer": True, "low": 0} for k in ("structural_dim", "input_hops", "hops", "pretrain_steps")},
    **{k: {"integer": True, "low": 2} for k in ("folds", "additive_folds", "cv_folds")},
    **{k: {"integer": True, "low": 1} for k in ("recon_rows", "max_set_size", "n_lambdas", "max_iter")},
    "pretrain_lr": {"low": 0, "low_open": True},
    "tol": {"low": 0, "low_open": True},
    "min_ratio": {"low": 0, "low_open": True, "high": 1, "high_open": True},
    "max_log": {"low": 0, "low_open": True},
    "floor": {"low": 0},
    "recon_weight": {"low": 0},
    "recon_zero_weight": {"low": 0},
    "bn_momentum": {"low": 0, "high": 1},
}
#: Hyper-parameters that are lists of numbers (or None), with the rule of each element.
HPARAM_LIST_RULES: dict[str, dict] = {
    "lambdas": {"low": 0, "low_open": True},
    "penalties": {"low": 0, "low_open": True},
}


def model_hparam_names(name: str) -> list[str] | None:
    """The hyper-parameters model ``name`` accepts in ``model_args`` (None if it takes any keyword): the fields
    of its ``config_class`` dataclass where it has one, else its constructor's keyword arguments."""
    from cellformer.models.registry import model_class

    config = getattr(model_class(name), "config_class", None)
    if config is not None:
        return [f.name for f in dataclasses.fields(config)]
    return hparam_names(model_class(name))


def hparam_names(cls: type) -> list[str] | None:
    """The hyper-parameters ``cls.__init__`` accepts besides the data context (None if it takes any keyword)."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return [p for p in params if p not in CONTEXT_ARGS]


def check_hparam_values(cls: type, model_args: dict, where: str = "model_args") -> None:
    """Refuse a hyper-parameter value of the wrong kind (an int, float or bool default asks for one) or out
    of the range of :data:`HPARAM_RULES`, naming the key, the value and what is allowed."""
    params = inspect.signature(cls.__init__).parameters
    for key, value in model_args.items():
        name = f"{where}.{key}"
        default = params[key].default if key in params else inspect.Parameter.empty
        if key in HPARAM_LIST_RULES:
            if value is None:
                continue
            if not isinstance(value, list | tuple) or not value:
                raise UserError(f"{name}: {shorten(repr(value))} is not allowed; expected a list of numbers")
            for i, v in enumerate(value):
                check_number(f"{name}[{i}]", v, **HPARAM_LIST_RULES[key])
        elif key in HPARAM_RULES:
            check_number(name, value, **HPARAM_RULES[key])
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise UserError(f"{name}: {value!r} is not allowed; expected true or false")
        elif isinstance(default, int | float) and default is not None:
            check_number(name, value, integer=isinstance(default, int))


def check_model_args(name: str, model_args: dict | None, where: str = "model.model_args") -> dict | None:
    """Refuse an unknown model, an unknown key of ``model_args`` or a bad value before anything is built.

    For a model with a ``config_class`` (a dataclass that checks its own values) returns every hyper-parameter,
    the given ones validated and the others at their defaults, so that the saved and printed config shows
    them all; else ``model_args`` unchanged.
    """
    from cellformer.models.registry import model_class

    cls = model_class(name)  # an unknown model name raises here, with the list of models
    known = model_hparam_names(name)
    if model_args is not None and not isinstance(model_args, dict):
        raise UserError(f"{where} must be a mapping of hyper-parameters, got {model_args!r}")
    for key in model_args or {}:
        if known is not None and key not in known:
            raise unknown_name_error(f"model_args key for model {name!r}:", key, known)
    config = getattr(cls, "config_class", None)
    if config is not None:
        return config.from_dict(model_args).to_dict()
    if model_args:
        check_hparam_values(cls, model_args, where)
    return model_args


def _section(cfg, name: str):
    """Config section ``name`` (its ``init_args`` for a ``class_path`` section), or None."""
    sec = cfg.get(name) if hasattr(cfg, "get") else None
    if sec is not None and hasattr(sec, "get") and sec.get("init_args") is not None:
        return sec.get("init_args")
    return sec


def check_config_numbers(cfg) -> None:
    """:data:`CONFIG_RULES` on a parsed config (one subcommand's namespace)."""
    for key, rule in CONFIG_RULES.items():
        section, _, name = key.rpartition(".")
        holder = _section(cfg, section) if section else cfg
        if holder is None or not hasattr(holder, "get") or name not in holder:
            continue
        check_number(key, holder.get(name), **rule)
    data = _section(cfg, "data")
    if data is not None and hasattr(data, "get"):
        val, test = data.get("val_fraction"), data.get("test_fraction")
        if isinstance(val, int | float) and isinstance(test, int | float) and val + test >= 1:
            raise UserError(f"data.val_fraction ({val}) + data.test_fraction ({test}) must be below 1")


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


def _user_error_cause(exc: BaseException) -> UserError | None:
    """The :class:`UserError` an exception was raised from (its ``__cause__``/``__context__`` chain), if any."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, UserError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


class SafeSaveConfigCallback(SaveConfigCallback):
    """Saves the run's config as ``config.yaml`` in the logger's folder, and never over an existing file.

    Without a logger there is no run folder (Lightning would write into the working directory, over a
    ``config.yaml`` that may be the ``--config`` file itself), so nothing is saved; an existing file is left
    as it is. Either way a note says so (``--print_config`` shows the config).
    """

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.already_saved:
            return
        if trainer.logger is None:
            self.already_saved = True
            print("[cellformer] no logger: the config of this run is not saved (--print_config shows it)")
            return
        path = Path(trainer.log_dir) / self.config_filename  # (log_dir is collective: every rank asks)
        exists = trainer.strategy.broadcast(path.exists() if trainer.is_global_zero else False)  # rank 0 decides
        if exists:
            self.already_saved = True
            print(f"[cellformer] {path} exists and is left as it is: the config of this run is not saved there")
            return
        super().setup(trainer, pl_module, stage)


class SafeLightningCLI(LightningCLI):
    """LightningCLI whose mistakes are one line: parser errors, config numbers (:func:`check_config_numbers`),
    ``--ckpt_path`` (read by :attr:`checkpoint_reader` before Lightning touches it) and Trainer settings."""

    #: the safe loader a ``--ckpt_path`` must pass (the mode's checkpoint reader)
    checkpoint_reader: Callable = staticmethod(read_checkpoint)

    def __init__(self, *args, save_config_callback=SafeSaveConfigCallback, **kwargs):
        super().__init__(*args, save_config_callback=save_config_callback, **kwargs)

    def _config_keys(self) -> list[str]:
        """Every option the parsers know (``model.lr``, ``trainer.max_steps``…)."""
        keys: set[str] = set()
        for p in [self.parser, *getattr(self, "_subcommand_parsers", {}).values()]:
            keys.update(a.dest for a in p._actions if isinstance(a.dest, str))
        return sorted(keys)

    def parse_arguments(self, parser, args) -> None:
        """Parse as LightningCLI does; a parser error becomes a :class:`UserError` instead of usage text.

        ``model.model_args`` is completed with the model's defaults (see :func:`check_model_args`), so
        ``--print_config`` and the config saved with a run show every hyper-parameter. Then check the config
        (:meth:`check_config`) before the seed is set and anything is built."""
        args = list(sys.argv[1:] if args is None else args)
        printing = [a for a in args if a == "--print_config" or a.startswith("--print_config=")]
        args = [a for a in args if a not in printing]
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
        self.check_config(cfg)
        if printing:
            sub = getattr(self, "_subcommand_parsers", {}).get(subcommand, parser) if subcommand else parser
            sys.stdout.write(sub.dump(cfg, skip_none=False))
            raise SystemExit(0)

    def check_config(self, cfg) -> None:
        """Numbers in range, and a ``--ckpt_path`` that the project's safe loader reads."""
        check_config_numbers(cfg)
        if cfg.get("weights_only") is False:
            raise UserError("--weights_only false is refused: checkpoints are loaded without running code")
        check_ckpt_path(cfg.get("ckpt_path"), type(self).checkpoint_reader)

    def instantiate_classes(self) -> None:
        """Build the data module, model and trainer; a :class:`UserError` raised while building (an unknown
        phenotype, a missing file) comes out as itself, not wrapped in the parser's union-type errors."""
        try:
            super().instantiate_classes()
        except UserError:
            raise
        except Exception as exc:
            cause = _user_error_cause(exc)
            if cause is None:
                raise
            raise cause from None

    def instantiate_trainer(self, **kwargs):
        """The Trainer; a setting it refuses (Lightning's own checks) is a :class:`UserError`."""
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        try:
            return super().instantiate_trainer(**kwargs)
        except (MisconfigurationException, ValueError) as exc:
            raise UserError(f"trainer: {' '.join(str(exc).split())}") from None


class ContextCLI(SafeLightningCLI):
    """:class:`SafeLightningCLI` with the data module's ``context`` linked into the model and a test run after
    ``fit`` (the base of both modes' CLIs).

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
    """The perturbation-mode CLI: the registered models' hyper-parameters are checked (and completed) with the
    rest of the config."""

    def _config_keys(self) -> list[str]:
        """Every option the parsers know and the models' hyper-parameters (``model.model_args.d_model``)."""
        keys = set(super()._config_keys())
        from cellformer.models.registry import MODELS

        for name in MODELS:
            try:
                keys.update(f"model.model_args.{h}" for h in model_hparam_names(name) or [])
            except (ImportError, AttributeError):  # a model whose optional dependencies are missing
                continue
        return sorted(keys)

    def check_config(self, cfg) -> None:
        super().check_config(cfg)
        model = cfg.get("model")
        if model is not None:
            model["model_args"] = check_model_args(model.get("model", "cellformer"), model.get("model_args"))


def main(argv: list[str] | None = None) -> int:
    """Run LightningCLI on ``argv`` (``fit --config configs/quickstart.yaml`` …); config errors raise UserError."""
    CellformerCLI(
        PhenotypeModule,
        PerturbationDataModule,
        args=sys.argv[1:] if argv is None else argv,
        trainer_defaults=copy.deepcopy(TRAINER_DEFAULTS),
        auto_configure_optimizers=False,
    )
    return 0
