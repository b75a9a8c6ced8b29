"""Loss and evaluation metrics for phenotype vectors with missing values (NaN = not measured)."""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats


def masked_mse(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-phenotype MSE over measured entries: returns ``(mse (P,), count (P,))``.

    Phenotypes with no measured entry in the batch get MSE 0 and count 0 (they add no gradient).
    """
    mask = ~torch.isnan(target)
    diff = torch.where(mask, pred - torch.nan_to_num(target), torch.zeros_like(pred))
    count = mask.sum(dim=0)
    mse = (diff**2).sum(dim=0) / count.clamp(min=1)
    return mse, count


def regression_metrics(pred: np.ndarray, target: np.ndarray, names: list[str]) -> dict[str, dict[str, float]]:
    """Per-phenotype Pearson, Spearman, R², MSE and n over measured entries.

    A phenotype with fewer than 3 measured entries, or a constant prediction, gets NaN correlations.
    """
    out: dict[str, dict[str, float]] = {}
    for p, name in enumerate(names):
        m = ~np.isnan(target[:, p])
        y, yhat = target[m, p].astype(np.float64), pred[m, p].astype(np.float64)
        n = int(m.sum())
        res = {"n": float(n), "pearson": np.nan, "spearman": np.nan, "r2": np.nan, "mse": np.nan}
        if n:
            res["mse"] = float(np.mean((yhat - y) ** 2))
            ss_tot = float(np.sum((y - y.mean()) ** 2))
            res["r2"] = float(1 - np.sum((yhat - y) ** 2) / ss_tot) if ss_tot > 0 else np.nan
        if n >= 3 and np.std(yhat) > 0 and np.std(y) > 0:
            res["pearson"] = float(stats.pearsonr(yhat, y)[0])
            res["spearman"] = float(stats.spearmanr(yhat, y)[0])
        out[name] = res
    return out


def format_metrics_table(metrics: dict[str, dict[str, float]], title: str = "") -> str:
    """A markdown table of :func:`regression_metrics` output."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| phenotype | n | Pearson | Spearman | R² | MSE |", "|---|---:|---:|---:|---:|---:|"]
    for name, m in metrics.items():
        lines.append(
            f"| {name} | {int(m['n'])} | {m['pearson']:.3f} | {m['spearman']:.3f} | {m['r2']:.3f} | {m['mse']:.4g} |"
        )
    return "\n".join(lines)
