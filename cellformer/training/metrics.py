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


#: |interaction score| above which an interaction counts as strong (the SGA intermediate cut-off for ε)
STRONG_INTERACTION = 0.08


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision (mean precision at each positive, ranked by
    ``scores`` descending; tied scores share one threshold). NaN without positives."""
    labels = np.asarray(labels, dtype=bool)
    if not labels.any():
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    tp, k = np.cumsum(y), np.arange(1, len(y) + 1)
    last = np.r_[s[1:] != s[:-1], True]  # the end of each block of tied scores
    precision = tp[last] / k[last]
    recall_gain = np.diff(np.r_[0, tp[last]])
    return float(np.sum(precision * recall_gain) / labels.sum())


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U with mid-ranks for ties). NaN without both classes."""
    labels = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = stats.rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def interaction_metrics(pred: np.ndarray, target: np.ndarray, cut: float = STRONG_INTERACTION) -> dict[str, float]:
    """How well predictions rank the strong interactions: AUPR and AUROC for the negative ones (target < −cut,
    scored by −pred) and the positive ones (target > cut, scored by pred), and their counts."""
    neg, pos = target < -cut, target > cut
    return {
        "aupr_neg": average_precision(neg, -pred), "auroc_neg": roc_auc(neg, -pred), "n_neg": float(neg.sum()),
        "aupr_pos": average_precision(pos, pred), "auroc_pos": roc_auc(pos, pred), "n_pos": float(pos.sum()),
    }  # fmt: skip


def regression_metrics(pred: np.ndarray, target: np.ndarray, names: list[str]) -> dict[str, dict[str, float]]:
    """Per-phenotype Pearson, Spearman, R², MSE and n over measured entries; for interaction scores (ε, τ:
    :func:`~cellformer.models.baselines.additive.phenotype_kind`) also :func:`interaction_metrics`.

    A phenotype with fewer than 3 measured entries, or a constant prediction, gets NaN correlations.
    """
    from cellformer.models.baselines.additive import phenotype_kind

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
        if phenotype_kind(name) == "interaction":
            res.update(interaction_metrics(yhat, y))
        out[name] = res
    return out


def format_metrics_table(metrics: dict[str, dict[str, float]], title: str = "") -> str:
    """A markdown table of :func:`regression_metrics` output (strong-interaction columns where computed)."""
    lines = [f"### {title}", ""] if title else []
    strong = any("aupr_neg" in m for m in metrics.values())
    head = "| phenotype | n | Pearson | Spearman | R² | MSE |"
    rule = "|---|---:|---:|---:|---:|---:|"
    if strong:
        cut = STRONG_INTERACTION
        head += f" AUPR (< −{cut}) | AUROC (< −{cut}) | AUPR (> {cut}) | AUROC (> {cut}) |"
        rule += "---:|---:|---:|---:|"
    lines += [head, rule]
    for name, m in metrics.items():
        row = f"| {name} | {int(m['n'])} | {m['pearson']:.3f} | {m['spearman']:.3f} | {m['r2']:.3f} | {m['mse']:.4g} |"
        if strong:
            keys = ("aupr_neg", "auroc_neg", "aupr_pos", "auroc_pos")
            row += "".join(f" {m[k]:.3f} |" if k in m else " |" for k in keys)
        lines.append(row)
    return "\n".join(lines)
