"""Per-locus attribution: which loci drive each phenotype of a genotype-mode model.

For every phenotype p and locus i, over the given samples s:

* ``importance[p, i] = mean_s |x_si · ∂ŷ_p/∂x_si|`` (gradient × input, in phenotype units);
* ``effect[p, i] = mean_s ∂ŷ_p/∂x_si`` (the signed change of ŷ_p per unit of the +1 allele coding).

For the linear models (ridge, LASSO) the gradient is the coefficient, so ``effect`` is exactly the
coefficient and ``importance`` its magnitude at observed (non-missing) calls. With linkage blocks the
model's input is still one value per marker, so attributions are per marker, not per block.

Gradient boosting has no gradient: its ``importance`` is the total split gain of each marker
(:meth:`~cellformer.genotype.gbm.GradientBoosting.gain_importance`, scaled by the phenotype's variance
from standardised to original units) and its ``effect`` is the mean change of the prediction when the
marker's allele is flipped from -1 to +1 on the given samples (other markers as observed).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from cellformer.genotype.models import GenotypeModel


def locus_attribution(
    model: GenotypeModel, x: np.ndarray, y_std: np.ndarray, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """``(importance (P, L), effect (P, L))`` in original phenotype units (see the module docstring)."""
    if hasattr(model, "gain_importance"):
        return _gain_attribution(model, x, y_std)
    model.eval()
    n, L = x.shape
    P = model.n_phenotypes
    importance, effect = np.zeros((P, L)), np.zeros((P, L))
    for lo in range(0, n, batch_size):
        xb = torch.as_tensor(np.asarray(x[lo : lo + batch_size], dtype=np.float32)).requires_grad_(True)
        pred = model(xb)
        for p in range(P):
            (grad,) = torch.autograd.grad(pred[:, p].sum(), xb, retain_graph=p < P - 1)
            g = grad.double().numpy()
            importance[p] += np.abs(g * xb.detach().double().numpy()).sum(0)
            effect[p] += g.sum(0)
    scale = np.asarray(y_std, dtype=np.float64)[:, None] / max(n, 1)
    return importance * scale, effect * scale


@torch.no_grad()
def _gain_attribution(model, x: np.ndarray, y_std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split gain per marker and the mean flip effect (-1 → +1) of each marker with non-zero gain."""
    std = np.asarray(y_std, dtype=np.float64)
    importance = model.gain_importance() * (std**2)[:, None]  # gain is a reduction of squared error
    effect = np.zeros_like(importance)
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if len(xt):
        for i in np.flatnonzero(importance.sum(0) > 0):
            hi, lo = xt.clone(), xt.clone()
            hi[:, i], lo[:, i] = 1.0, -1.0
            effect[:, i] = (model(hi) - model(lo)).double().numpy().mean(0) / 2.0 * std
    return importance, effect


def write_report(
    out_dir: str | Path,
    importance: np.ndarray,
    effect: np.ndarray,
    phenotype_names: list[str],
    locus_ids: list[str],
    loci=None,
    top: int = 20,
    model_name: str = "",
) -> dict:
    """Write ``top_loci.tsv`` (top loci per phenotype), ``attribution.png`` and ``summary.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    L = len(locus_ids)
    chrom = loci.chrom if loci is not None else np.zeros(L, np.int16)
    pos = loci.pos if loci is not None else np.full(L, -1)
    gene = loci.gene if loci is not None else [""] * L
    lines = ["phenotype\trank\tlocus\tchrom\tpos\tgene\timportance\teffect"]
    summary: dict = {"model": model_name, "loci": L, "top": {}}
    for p, name in enumerate(phenotype_names):
        order = np.argsort(-importance[p], kind="stable")[: min(top, L)]
        summary["top"][name] = [locus_ids[i] for i in order]
        for r, i in enumerate(order, 1):
            lines.append(
                f"{name}\t{r}\t{locus_ids[i]}\t{int(chrom[i])}\t{int(pos[i])}\t{gene[i]}\t"
                f"{importance[p, i]:.6g}\t{effect[p, i]:.6g}"
            )
    (out / "top_loci.tsv").write_text("\n".join(lines) + "\n")
    _plot(out / "attribution.png", importance, phenotype_names, chrom)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _plot(path: Path, importance: np.ndarray, names: list[str], chrom: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = list(range(min(len(names), 6)))
    fig, axes = plt.subplots(len(shown), 1, figsize=(10, 1.8 * len(shown) + 0.6), squeeze=False, sharex=True)
    for ax, p in zip(axes[:, 0], shown, strict=True):
        ax.bar(np.arange(importance.shape[1]), importance[p], width=1.0, color="#3b6ea8")
        for b in np.flatnonzero(np.diff(chrom.astype(int)) != 0):
            ax.axvline(b + 0.5, color="#bbbbbb", lw=0.5)
        ax.set_ylabel(names[p], rotation=0, ha="right", fontsize=8)
    axes[-1, 0].set_xlabel("locus (file order; grey lines = chromosome boundaries)")
    fig.suptitle("per-locus attribution (gradient × input; split gain for gradient boosting)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
