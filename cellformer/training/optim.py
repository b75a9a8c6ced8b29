"""The optimiser every trained model uses: AdamW with linear warm-up and cosine decay."""

from __future__ import annotations

import math

import torch
from torch import nn


def adamw_warmup_cosine(
    model: nn.Module, lr: float, weight_decay: float, warmup_steps: int, min_lr_ratio: float, total_steps: int
) -> dict:
    """AdamW (no decay on biases, norms and embeddings) and a per-step warm-up + cosine schedule.

    The learning rate rises linearly over ``warmup_steps``, then follows a cosine from ``lr`` to
    ``lr * min_lr_ratio`` at ``total_steps``. Returns Lightning's ``configure_optimizers`` dict.
    """
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "embed" in n or "norm" in n else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    total = max(1, int(total_steps))

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
