"""``cellformer fit | validate | test`` through LightningCLI with YAML configs in ``configs/``."""

from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningCLI

from cellformer.training.datamodule import PerturbationDataModule
from cellformer.training.module import PhenotypeModule


class CellformerCLI(LightningCLI):
    """LightningCLI with the data context linked into the model and a test run after ``fit``.

    ``--test_after_fit false`` skips the test run that follows training (on the best checkpoint when
    a ModelCheckpoint monitors a metric, else on the final weights).
    """

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data", "model.context", compute_fn=lambda dm: dm.context, apply_on="instantiate")
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


def main(argv: list[str] | None = None) -> int:
    """Run LightningCLI on ``argv`` (``fit --config configs/quickstart.yaml`` …)."""
    CellformerCLI(
        PhenotypeModule,
        PerturbationDataModule,
        args=sys.argv[1:] if argv is None else argv,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )
    return 0
