"""Training callbacks."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch


class ParameterFingerprint(L.Callback):
    """At the end of ``fit``, each rank saves its parameters to ``<dirpath>/params_rank<r>.pt``.

    A check for multi-process training: under DDP every rank must end with identical parameters.
    """

    def __init__(self, dirpath: str = "runs/fingerprints"):
        self.dirpath = Path(dirpath)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in pl_module.named_parameters()}
        torch.save(state, self.dirpath / f"params_rank{trainer.global_rank}.pt")
