"""Transformer building blocks: multi-head self-attention, MLP and a pre-LN block.

``x = x + Attn(LN(x)); x = x + MLP(LN(x))``, attention through ``F.scaled_dot_product_attention`` (flash /
memory-efficient kernels on GPU) with an optional key mask. Used by CellFormer's genome encoder and the
locus CellFormer of genotype mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection, laid out ``[q heads | k heads | v heads]``."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, attn_dropout: float = 0.0):
        super().__init__()
        assert d_model % n_heads == 0, "d_model must be divisible by n_heads"
        self.n_heads, self.d_head, self.attn_dropout = n_heads, d_model // n_heads, attn_dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.resid_drop = nn.Dropout(dropout)

    def head_slices(self, head: int) -> tuple[slice, slice]:
        """Rows of ``qkv.weight`` that produce this head's queries and keys."""
        d = self.n_heads * self.d_head
        lo, hi = head * self.d_head, (head + 1) * self.d_head
        return slice(lo, hi), slice(d + lo, d + hi)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, L, d); key_mask: (B, L) bool, True = may be attended to (None = all)."""
        q, k, v = rearrange(self.qkv(x), "b l (three h e) -> three b h l e", three=3, h=self.n_heads)
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_dropout if self.training else 0.0
        )
        return self.resid_drop(self.proj(rearrange(y, "b h l e -> b l (h e)")))


class MLP(nn.Module):
    """``out(GELU(fc(x)))``, or with ``gated`` ``out(GELU(fc(x)) ⊙ gate(x))`` (a GEGLU layer, which can form
    products of its inputs, e.g. an expected fitness times an interaction signal)."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, dropout: float, gated: bool = False):
        super().__init__()
        self.fc = nn.Linear(d_in, d_hidden)
        self.gate = nn.Linear(d_in, d_hidden) if gated else None
        self.out = nn.Linear(d_hidden, d_out)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.fc(x))
        if self.gate is not None:
            h = h * self.gate(x)
        return self.drop(self.out(h))


class Block(nn.Module):
    """Pre-LN transformer block. Returns the new stream and the LN'd attention input (for the regulariser)."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float, attn_dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, dropout, attn_dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, d_ff, d_model, dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norm1(x)
        x = x + self.attn(h, key_mask)
        x = x + self.mlp(self.norm2(x))
        return x, h


class ValueAttention(nn.Module):
    """One layer's attention heads read onto outside values: ``Σ_h w_h softmax_j(q_h(x_i)·k_h(x_j)/√d_h) v_j``.

    The queries and keys are the given :class:`SelfAttention`'s own projections of its LayerNorm'd input, so
    what this reads shapes those heads (and, through them, the encoder); ``w = softmax(mix)`` weighs the heads
    and ``gain`` scales each value dimension. Keys outside ``keys`` are never attended to.
    """

    def __init__(self, n_heads: int, width: int):
        super().__init__()
        self.mix = nn.Parameter(torch.zeros(n_heads))
        self.gain = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor, attn: SelfAttention, values: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """x: (L, d) LayerNorm'd layer input; values: (L, G·W); keys: (L, G) bool, the keys each of the G equal
        column groups of ``values`` may read (a group with none reads zeros). Returns (L, G·W)."""
        d = attn.n_heads * attn.d_head
        qk = F.linear(x, attn.qkv.weight[: 2 * d], attn.qkv.bias[: 2 * d])
        q, k = rearrange(qk, "l (two h e) -> two 1 h l e", two=2, h=attn.n_heads)
        mix = self.mix.softmax(0)
        out = []
        for group, cols in zip(keys.unbind(1), values.chunk(keys.shape[1], dim=1), strict=True):
            if not bool(group.any()):
                out.append(torch.zeros_like(cols))
                continue
            v = cols.to(q.dtype)[None, None].expand(1, attn.n_heads, -1, -1)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=group[None, None, None, :])[0]  # (h, L, W)
            out.append(torch.einsum("h,hlw->lw", mix.to(y.dtype), y).to(values.dtype))
        return torch.cat(out, dim=1) * self.gain
