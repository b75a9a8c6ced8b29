"""The perturbation head ``g(F(G), S)``: what the genome encoding says about a set of perturbed genes.

``q_S = pool{h_i : i ∈ S}``; ``β = softmax_i(q_S·W·h_i + b[m_i])``; ``z_S = Σ_i β_i φ(h_i, m_i)``;
``ŷ = MLP([h_CLS ‖ z_S ‖ p_S ‖ r_S]) + Σ_{i∈S} a(φ(h_i, m_i))``, with ``p_S`` the members' mean pairwise
product and ``r_S`` set features computed outside the head (:mod:`cellformer.models.record_features`).
The cost is O(B·N·d) with no per-sample (N, ·) tensor (see :class:`PerturbationHead`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch_geometric.utils import scatter
from torch_geometric.utils import softmax as segment_softmax

from cellformer.data.dataset import NUM_PERTURBATION_TYPES, PerturbationType
from cellformer.errors import UserError
from cellformer.models.layers import MLP

POOLS = ("mean", "sum", "attention")


@dataclass
class EncoderOutput:
    """What the encoder produces for V genome variants (variant 0 first).

    Attributes:
        cls: (V, d) whole-cell embeddings ``h_CLS``.
        genes: (V, L, d) gene embeddings; ``L = N + max added genes``; padded positions are garbage.
        mask: (V, L) bool, True for real gene tokens (False for padding).
        layer_inputs: per layer, the LayerNorm'd input (1 + N, d) of variant 0 (CLS first), kept for
            the graph regulariser and attention monitoring (only meaningful when ``wild_type``).
        wild_type: variant 0 is the unmodified base genome.
        hidden: genes whose identity the pass replaced by the unknown-gene vector (identity dropout): they
            also hide their own training records from the set features.
    """

    cls: torch.Tensor
    genes: torch.Tensor
    mask: torch.Tensor
    layer_inputs: list[torch.Tensor] = field(default_factory=list)
    wild_type: bool = True
    phi_present: torch.Tensor | None = None  # φ(h_i, PRESENT) (V, L, d), cached by the head when grad is off
    hidden: torch.Tensor | None = None  # (N,) genes whose identity this (training) pass dropped
    record_inputs: torch.Tensor | None = None  # (N, ·) per-gene record inputs of this pass (token inputs)
    imputed: torch.Tensor | None = None  # (N, P·k) interaction profiles inferred from variant 0 (profile_impute)

    def detach(self) -> EncoderOutput:
        """A copy cut from the autograd graph (for caching in a predictor)."""
        return EncoderOutput(
            self.cls.detach(),
            self.genes.detach(),
            self.mask,
            [x.detach() for x in self.layer_inputs],
            self.wild_type,
            record_inputs=None if self.record_inputs is None else self.record_inputs.detach(),
            imputed=None if self.imputed is None else self.imputed.detach(),
        )


def matmul_by_variant(x: torch.Tensor, mats: torch.Tensor, variant: torch.Tensor) -> torch.Tensor:
    """``x[b] @ mats[variant[b]]`` for every b, without materialising ``mats[variant]`` (B copies).

    x: (B, m); mats: (V, m, n) -> (B, n). Loops over the (few) variants present.
    """
    if mats.shape[0] == 1:
        return x @ mats[0]
    parts, order = [], []
    for v in torch.unique(variant).tolist():
        idx = torch.nonzero(variant == v).squeeze(1)
        parts.append(x[idx] @ mats[v])
        order.append(idx)
    inverse = torch.argsort(torch.cat(order))
    return torch.cat(parts)[inverse]


class PerturbationHead(nn.Module):
    """``g(F(G), S)``: set pooling, cross-attention from the set to all genes, and a readout MLP.

    ``z_S = Σ_i β_i φ(h_i, m_i)`` is computed as ``Σ_i β_i φ(h_i, PRESENT) + Σ_{i∈S} β_i (φ(h_i, m_i) −
    φ(h_i, PRESENT))``: the first sum is shared by all samples of a variant (a (B, N) @ (N, d) product),
    the second touches only the set members, so the cost is O(B·N·d) with no per-sample (N, ·) tensor.
    """

    def __init__(
        self,
        d_model: int,
        n_phenotypes: int,
        pool: str,
        dropout: float,
        num_genes: int = 1,
        pair_features: bool = True,
        additive_path: bool = True,
        n_extra: int = 0,
        readout_hidden: int | None = None,
        gated_readout: bool = False,
    ):
        super().__init__()
        if pool not in POOLS:
            raise UserError(f"unknown pool {pool!r}; choose one of {', '.join(POOLS)}")
        self.pair_features, self.additive_path = pair_features, additive_path
        self.pool_kind, self.d_model = pool, d_model
        if pool == "attention":  # one learned seed vector attending over the set (HyperSAGNN-like)
            self.pool_seed = nn.Parameter(torch.randn(d_model) * 0.02)
            self.pool_key = nn.Linear(d_model, d_model)
            self.pool_value = nn.Linear(d_model, d_model)
        self.score = nn.Linear(d_model, d_model, bias=False)  # s_i = (W q_S) · h_i / √d + b[m_i]
        # A learned score bias per perturbation type m_i. Without it the members of S start with ~1/N of the
        # attention mass (N ≈ 6,400 genes) and z_S hardly depends on S; b[m] = log N for every type but
        # PRESENT gives the members about half the mass at initialisation, the context genes the rest.
        bias = torch.full((NUM_PERTURBATION_TYPES,), math.log(max(num_genes, 2)))
        bias[int(PerturbationType.PRESENT)] = 0.0
        self.type_score_bias = nn.Parameter(bias)
        self.type_embed = nn.Embedding(NUM_PERTURBATION_TYPES, d_model)
        # φ(h, m) = out(GELU(W_h h + W_m e(m))): the concat [h ‖ e(m)] split into two linears
        self.phi_h = nn.Linear(d_model, d_model)
        self.phi_m = nn.Linear(d_model, d_model, bias=False)
        self.phi_out = nn.Linear(d_model, d_model)
        # readout input: [h_CLS ‖ z_S] (+ the pairwise-interaction summary of the members when pair_features)
        # (+ ``n_extra`` set features computed outside the head, e.g. graph relations of the member pairs)
        d_in = (3 if pair_features else 2) * d_model + n_extra
        self.readout = MLP(d_in, readout_hidden or 4 * d_model, n_phenotypes, 0.0, gated=gated_readout)
        if additive_path:  # Σ_{i∈S} a(φ(h_i, m_i)): a per-gene effect read from each member's embedding
            self.additive = nn.Linear(d_model, n_phenotypes)
        self.drop = nn.Dropout(dropout)

    def pool(self, h_members: torch.Tensor, batch: torch.Tensor, num_samples: int) -> torch.Tensor:
        """``q_S`` (B, d) from the member embeddings (nnz, d); empty sets give zeros."""
        if self.pool_kind in ("mean", "sum"):
            return scatter(h_members, batch, dim=0, dim_size=num_samples, reduce=self.pool_kind)
        logits = self.pool_key(h_members) @ self.pool_seed / math.sqrt(self.d_model)
        a = segment_softmax(logits, batch, num_nodes=num_samples)
        return scatter(a[:, None] * self.pool_value(h_members), batch, dim=0, dim_size=num_samples, reduce="sum")

    def phi(self, h: torch.Tensor, types: torch.Tensor | int) -> torch.Tensor:
        """φ(h, m) for embeddings (..., d) and types (...) or one type for all."""
        types = torch.as_tensor(types, device=h.device)
        return self.phi_out(F.gelu(self.phi_h(h) + self.phi_m(self.type_embed(types))))

    def forward(
        self,
        enc: EncoderOutput,
        gene_index: torch.Tensor,
        types: torch.Tensor,
        ptr: torch.Tensor,
        batch: torch.Tensor,
        variant: torch.Tensor,
        return_attention: bool = False,
        extra: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B = ptr.numel() - 1
        H = enc.genes  # (V, L, d)
        member_variant = variant[batch]
        h_members = H[member_variant, gene_index]  # (nnz, d)
        q = self.pool(h_members, batch, B)  # (B, d)
        u = self.score(q) / math.sqrt(self.d_model)  # (B, d)
        s = matmul_by_variant(u, rearrange(H, "v l d -> v d l"), variant)  # (B, L)
        # + b[m_i] for every gene: PRESENT's bias shifts all scores equally (softmax ignores it), members add the rest
        member_bias = self.type_score_bias[types] - self.type_score_bias[int(PerturbationType.PRESENT)]
        s = s.float().index_put((batch, gene_index), member_bias.float(), accumulate=True)
        if H.shape[0] > 1:  # only a multi-variant encoding has padded gene positions
            s = s.masked_fill(~enc.mask[variant], float("-inf"))
        beta = torch.softmax(s, dim=-1)  # (B, L)
        phi_present = enc.phi_present  # (V, L, d), shared by all samples of a variant
        if phi_present is None:
            phi_present = self.phi(H, int(PerturbationType.PRESENT))
            if not torch.is_grad_enabled():  # a cached encoding (predictor, screen) reuses it across batches
                enc.phi_present = phi_present
        z = matmul_by_variant(beta.to(phi_present.dtype), phi_present, variant)  # (B, d)
        phi_members = self.phi(h_members, types)  # φ(h_i, m_i) of the members (nnz, d)
        correction = phi_members - phi_present[member_variant, gene_index]
        z = z.index_add(0, batch, (beta[batch, gene_index][:, None] * correction).to(z.dtype))
        parts = [enc.cls[variant], self.drop(z)]
        if self.pair_features:
            parts.append(self.drop(self.pairwise(phi_members, batch, B)))
        if extra is not None:
            parts.append(extra.to(parts[0].dtype))
        pred = self.readout(torch.cat(parts, dim=-1))
        if self.additive_path:
            pred = pred + scatter(self.additive(phi_members), batch, dim=0, dim_size=B, reduce="sum")
        return pred, (beta if return_attention else None)

    @staticmethod
    def pairwise(x: torch.Tensor, batch: torch.Tensor, num_samples: int) -> torch.Tensor:
        """Mean over member pairs of ``x_i ⊙ x_j`` (i < j): ``((Σx)² − Σx²) / (|S|(|S|−1))``, in O(nnz·d).

        A second-order summary of the set (as in a factorisation machine): it tells the readout how the
        members relate to each other (e.g. whether they share a module), which a pooled mean blurs.
        Singletons give zeros.
        """
        s1 = scatter(x, batch, dim=0, dim_size=num_samples, reduce="sum")
        s2 = scatter(x * x, batch, dim=0, dim_size=num_samples, reduce="sum")
        n = torch.bincount(batch, minlength=num_samples).to(x.dtype)[:, None]
        return (s1 * s1 - s2) / (n * (n - 1)).clamp_min(1.0)
