"""Health signals of a CellFormer: attention–graph alignment of its heads and over-smoothing of the embeddings.

Logged at validation (``monitor/*`` in the CSV log) and shown by ``cellformer explain``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # pragma: no cover
    from cellformer.models.cellformer import CellFormer
    from cellformer.models.head import EncoderOutput


def oversmoothing(H: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised spread of embeddings in [0, 1]; low = over-smoothed (collapsed) features.

    ``1 − mean_{i,j} cos(h_i, h_j)`` (all ordered pairs, i = j included) ``= 1 − ‖mean_i h_i/‖h_i‖‖²``,
    computed in O(N·d). 0 when all embeddings point the same way; ≈ 1 for isotropic random
    embeddings (1 − 1/N exactly for orthogonal ones). H: (..., N, d), mask: (..., N) -> (...).
    """
    u = F.normalize(H.float(), dim=-1)
    if mask is None:
        mean = u.mean(-2)
    else:
        m = mask.to(u.dtype)[..., None]
        mean = (u * m).sum(-2) / m.sum(-2).clamp_min(1.0)
    return (1.0 - (mean * mean).sum(-1)).clamp(0.0, 1.0)


def attention_alignment(
    model: CellFormer, graph_name: str, layer: int, head: int, rows=None, enc: EncoderOutput | None = None
) -> torch.Tensor:
    """Mean attention mass that valid rows of ``graph_name`` put on their graph neighbours.

    ``rows``: None = all valid rows, an int = that many sampled, a tensor = those genes. Chance level is
    about mean degree / N; 1 means a head attends only to neighbours.
    """
    g = model.regularizer.rows_of(graph_name)
    rows = g.valid if rows is None else model.regularizer.resolve(graph_name, rows)
    if rows.numel() == 0:
        return torch.zeros((), device=g.valid.device)
    alpha = model.attention_rows(layer, head, rows, enc)
    return (alpha * g.neighbour_mask(rows, alpha.shape[-1])).sum(-1).mean()


@torch.no_grad()
def monitor(model: CellFormer, rows: int = 256) -> dict[str, float]:
    """Per regularised graph its unweighted KL and alignment (tied head, and the mean of the other heads of
    that layer as a control), and the over-smoothing of the wild-type gene embeddings."""
    enc = model.encode_genome()
    out: dict[str, float] = {"oversmoothing": float(oversmoothing(enc.genes[0]))}
    for name, cfg in model.regularizer.config.items():
        r = model.regularizer.sample(name, rows)
        if cfg.weight > 0:
            out[f"graph_kl/{name}"] = float(model.graph_loss(name, rows=r, enc=enc)) / cfg.weight
        out[f"alignment/{name}"] = float(attention_alignment(model, name, cfg.layer, cfg.head, r, enc))
        others = [h for h in range(model.config.n_heads) if h != cfg.head]
        if others:
            ctrl = [float(attention_alignment(model, name, cfg.layer, h, r, enc)) for h in others]
            out[f"alignment_other_heads/{name}"] = sum(ctrl) / len(ctrl)
    return out
