"""CellFormer: a whole-genome transformer with graph-regularised attention heads.

Reading order (design note, sections 2-5):

1. :class:`SelfAttention`, :class:`MLP`, :class:`Block` -- a pre-LN transformer block
   (``x = x + Attn(LN(x)); x = x + FFN(LN(x))``) with attention through
   ``F.scaled_dot_product_attention`` and an optional key-padding mask.
2. :meth:`CellFormer.encode` -- every gene is a token ``Linear(features_i) + id_embedding_i`` (a learned
   ``unknown_gene`` vector replaces the identity of added/heterologous genes), a learned CLS token is
   prepended and there is no positional encoding. The encoder runs once per training step on the
   wild-type genome, plus once per heterologous variant in the batch (variants padded to the longest).
3. Graph regularisation (:mod:`cellformer.models.graph_reg`) -- ``λ · KL(Ã_i ‖ α_i)`` on sampled rows of
   the tied heads, computed on the wild-type pass with the same parameters as the forward pass.
4. :class:`PerturbationHead` -- ``g(F(G), S)``: pool the members of S into ``q_S``, attend from ``q_S`` to
   all genes, summarise ``z_S = Σ_i β_i φ(h_i, m_i)`` and read out ``ŷ = MLP([h_CLS ‖ z_S])``.

``forward(batch)`` returns ``ModelOutput(pred (B, P), losses, extras)``; ``losses`` holds
``graph/<name> = λ·KL`` for every regularised graph in train *and* eval mode (eval values are a
monitoring signal; pass ``graph_losses=False`` to skip them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch_geometric.utils import scatter
from torch_geometric.utils import softmax as segment_softmax

from cellformer.data.dataset import NUM_PERTURBATION_TYPES, PerturbationBatch, PerturbationType
from cellformer.genome.genome import Genome
from cellformer.graphs.graph import GraphSet
from cellformer.models.base import ModelOutput, PhenotypeModel
from cellformer.models.graph_reg import (
    GraphRegConfig,
    head_log_attention,
    normalized_adjacency,
    parse_graph_reg,
    row_kl,
    sample_rows,
)

POOLS = ("mean", "sum", "attention")


# ---------------------------------------------------------------------- encoder output
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
    """

    cls: torch.Tensor
    genes: torch.Tensor
    mask: torch.Tensor
    layer_inputs: list[torch.Tensor] = field(default_factory=list)
    wild_type: bool = True
    phi_present: torch.Tensor | None = None  # φ(h_i, PRESENT) (V, L, d), cached by the head when grad is off

    def detach(self) -> EncoderOutput:
        """A copy cut from the autograd graph (for caching in a predictor)."""
        return EncoderOutput(
            self.cls.detach(),
            self.genes.detach(),
            self.mask,
            [x.detach() for x in self.layer_inputs],
            self.wild_type,
        )


# ---------------------------------------------------------------------- transformer block
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
    def __init__(self, d_in: int, d_hidden: int, d_out: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(d_in, d_hidden)
        self.out = nn.Linear(d_hidden, d_out)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.out(F.gelu(self.fc(x))))


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


# ---------------------------------------------------------------------- perturbation head
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

    def __init__(self, d_model: int, n_phenotypes: int, pool: str, dropout: float, num_genes: int = 1):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; choose one of {', '.join(POOLS)}")
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
        self.readout = MLP(2 * d_model, d_model, n_phenotypes, 0.0)
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
        correction = self.phi(h_members, types) - phi_present[member_variant, gene_index]  # (nnz, d)
        z = z.index_add(0, batch, (beta[batch, gene_index][:, None] * correction).to(z.dtype))
        pred = self.readout(torch.cat([enc.cls[variant], self.drop(z)], dim=-1))
        return pred, (beta if return_attention else None)


# ---------------------------------------------------------------------- the model
class CellFormer(PhenotypeModel):
    """Whole-genome transformer ``F(G)`` + perturbation head ``g(F(G), S)`` with graph-regularised heads.

    Args:
        genome: the base genome (features (N, F); ``added`` genes get the ``unknown_gene`` identity).
        graphs: the graphs available for regularisation (and attention monitoring).
        phenotype_names: output columns.
        d_model, n_layers, n_heads, d_ff (default 4·d_model): transformer size.
        dropout: on embeddings, residual branches and the head.
        attn_dropout: dropout on attention probabilities (default 0: on CPU any value > 0 makes SDPA
            fall back to the math kernel, which materialises the (N+1)² maps -- ~25x slower at N=6410).
        pool: how the perturbation set is pooled into ``q_S``: ``mean``, ``sum`` or ``attention``.
        graph_reg: graph name -> ``{"layer", "head", "weight" (λ, default 1), "rows" (default 256,
            None = all valid rows)}``.
    """

    def __init__(
        self,
        genome: Genome,
        graphs: GraphSet,
        phenotype_names: list[str],
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        d_ff: int | None = None,
        dropout: float = 0.1,
        pool: str = "mean",
        graph_reg: dict[str, dict] | None = None,
        attn_dropout: float = 0.0,
    ):
        super().__init__()
        self.splits_encoder = True
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.phenotype_names = list(phenotype_names)
        self.graph_reg: dict[str, GraphRegConfig] = parse_graph_reg(graph_reg, list(graphs.names), n_layers, n_heads)
        self.hparams_dict = {
            "d_model": d_model,
            "n_layers": n_layers,
            "n_heads": n_heads,
            "d_ff": d_ff,
            "dropout": dropout,
            "pool": pool,
            "graph_reg": {k: c.to_dict() for k, c in self.graph_reg.items()},
            "attn_dropout": attn_dropout,
        }
        self.d_model, self.n_layers, self.n_heads, self.d_head = d_model, n_layers, n_heads, d_model // n_heads
        self.num_genes, self.num_features = genome.features.shape
        self.genome_hash = genome.hash
        self.graphs = graphs  # plain attribute (not in the state dict): monitoring of any graph
        self.added_mask_np = np.asarray(genome.added, dtype=bool)

        self.register_buffer("features", torch.from_numpy(genome.features.copy()))
        self.register_buffer("known", torch.from_numpy(~self.added_mask_np))
        for k, name in enumerate(self.graph_reg):  # graph name -> CSR Ã + valid rows, moved by .to(device)
            for part, t in normalized_adjacency(graphs[name], self.added_mask_np).items():
                self.register_buffer(f"graph{k}_{part}", t, persistent=False)
        self._graph_slot = {name: k for k, name in enumerate(self.graph_reg)}
        self._graph_cache: dict[str, dict[str, torch.Tensor]] = {}
        self._frozen_encoding: EncoderOutput | None = None
        self.freeze_encoding_cache = False

        # encoder
        self.feature_proj = nn.Linear(self.num_features, d_model)
        self.gene_embed = nn.Embedding(self.num_genes, d_model)
        self.unknown_gene = nn.Parameter(torch.zeros(d_model))
        self.cls_token = nn.Parameter(torch.zeros(d_model))
        self.embed_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            [Block(d_model, n_heads, d_ff or 4 * d_model, dropout, attn_dropout) for _ in range(n_layers)]
        )
        self.norm_f = nn.LayerNorm(d_model)
        # perturbation head
        self.head = PerturbationHead(d_model, len(self.phenotype_names), pool, dropout, self.num_genes)
        self.apply(self._init_weights)
        # Gene identities start at unit scale (nn.Embedding's default), not 0.02: with all-zero sequence
        # features the identity is the only per-gene signal, and at 0.02 the shared residual updates swamp it
        # after the LayerNorms -- the gene embeddings collapse to one direction (over-smoothing ~0) and the
        # perturbation head cannot tell genes apart (seen on the simulated screens: ε Pearson ~0).
        nn.init.normal_(self.gene_embed.weight, std=1.0)
        nn.init.normal_(self.unknown_gene, std=0.02)
        nn.init.normal_(self.cls_token, std=0.02)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    # ------------------------------------------------------------------ encoder
    def embed(self, added_features: Sequence[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tokens (V, 1 + L, d) and key mask (V, 1 + L) (None when nothing is padded).

        ``added_features[v]`` are the (n_v, F) features of the genes variant ``v`` appends to the base
        genome (None or empty for none); an empty list means the wild type alone.
        """
        identity = torch.where(self.known[:, None], self.gene_embed.weight, self.unknown_gene)
        base = self.feature_proj(self.features) + identity  # (N, d)
        cls = self.cls_token.to(base.dtype)[None]
        added = [a for a in added_features] or [None]
        n_added = [0 if a is None or a.numel() == 0 else a.shape[0] for a in added]
        width = max(n_added)
        seqs = []
        for a, n in zip(added, n_added, strict=True):
            parts = [cls, base]
            if n:
                if a.shape[-1] != self.num_features:
                    raise ValueError(f"added genes have {a.shape[-1]} features, the genome {self.num_features}")
                parts.append(self.feature_proj(a.to(self.features)) + self.unknown_gene)
            if n < width:
                parts.append(base.new_zeros(width - n, self.d_model))
            seqs.append(torch.cat(parts))
        x = torch.stack(seqs)
        if width == 0 or len(set(n_added)) == 1:
            return x, None
        pos = torch.arange(width, device=x.device)
        pad = pos[None, :] >= torch.tensor(n_added, device=x.device)[:, None]  # (V, width)
        key_mask = torch.cat([torch.ones(len(added), 1 + self.num_genes, dtype=torch.bool, device=x.device), ~pad], 1)
        return x, key_mask

    def encode(self, added_features: Sequence[torch.Tensor | None] = ()) -> EncoderOutput:
        """Run the transformer once over every variant (variant 0 first); see :class:`EncoderOutput`."""
        x, key_mask = self.embed(added_features)
        x = self.embed_drop(x)
        layer_inputs = []
        for block in self.blocks:
            x, h = block(x, key_mask)
            layer_inputs.append(h[0, : 1 + self.num_genes])
        x = self.norm_f(x)
        V, L = x.shape[0], x.shape[1] - 1
        mask = torch.ones(V, L, dtype=torch.bool, device=x.device) if key_mask is None else key_mask[:, 1:]
        first = added_features[0] if len(added_features) else None
        wild_type = first is None or first.numel() == 0
        return EncoderOutput(x[:, 0], x[:, 1:], mask, layer_inputs, wild_type)

    def encode_genome(self, added_features: torch.Tensor | None = None) -> EncoderOutput:
        """The encoder output for one genome variant (V = 1): the wild type, or it plus added genes."""
        return self.encode([added_features])

    # ------------------------------------------------------------------ perturbation head
    def predict_from_encoding(
        self,
        enc: EncoderOutput,
        gene_index: torch.Tensor,
        types: torch.Tensor,
        ptr: torch.Tensor,
        batch: torch.Tensor,
        variant: torch.Tensor | None = None,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Predictions (B, P) of the head alone from a (possibly cached) encoding.

        ``variant`` (B,) picks each sample's variant in ``enc`` (default all 0). With
        ``return_attention`` returns ``(pred, beta)``, beta (B, L) the cross-attention over genes.
        """
        if variant is None:
            variant = torch.zeros(ptr.numel() - 1, dtype=torch.long, device=ptr.device)
        pred, beta = self.head(enc, gene_index, types, ptr, batch, variant, return_attention)
        pred = self.unscale(pred)
        return (pred, beta) if return_attention else pred

    def forward(
        self, batch: PerturbationBatch, return_attention: bool = False, graph_losses: bool = True
    ) -> ModelOutput:
        """Predict the batch; ``losses['graph/<name>'] = λ·KL`` for each regularised graph (train and eval).

        ``extras['beta']`` (B, L) holds the head's cross-attention when ``return_attention``.
        """
        added = list(batch.added_features) or [None]
        if batch.variant.numel() and int(batch.variant.max()) >= len(added):
            raise ValueError(f"batch.variant refers to variant {int(batch.variant.max())} of {len(added)}")
        enc = self._encode_for_batch(added)
        pred, beta = self.head(
            enc, batch.gene_index, batch.types, batch.ptr, batch.batch, batch.variant, return_attention
        )
        losses = {}
        if graph_losses:
            losses = {f"graph/{name}": self.graph_loss(name, enc=enc) for name in self.graph_reg}
        extras = {"beta": beta} if return_attention else {}
        return ModelOutput(pred=self.unscale(pred), losses=losses, extras=extras)

    def _encode_for_batch(self, added: list) -> EncoderOutput:
        """The encoder output for a batch; reused across batches while ``freeze_encoding_cache`` is set.

        An evaluation loop (validation, test, predict) sets the flag for the duration of an epoch, in which
        the weights do not change, so the wild-type encoder runs once per epoch instead of once per batch.
        Batches with heterologous variants are always encoded afresh.
        """
        wild_only = all(a is None or a.numel() == 0 for a in added) and len(added) == 1
        if not (self.freeze_encoding_cache and wild_only and not self.training and not torch.is_grad_enabled()):
            return self.encode(added)
        if self._frozen_encoding is None:
            self._frozen_encoding = self.encode(added)
        return self._frozen_encoding

    def set_encoding_cache(self, enabled: bool) -> None:
        """Turn the per-epoch encoding cache on (evaluation loops) or off (and drop what it holds)."""
        self.freeze_encoding_cache = enabled
        self._frozen_encoding = None

    # ------------------------------------------------------------------ graph regularisation
    def graph_tensors(self, name: str) -> dict[str, torch.Tensor]:
        """CSR ``Ã`` (crow, col, val) and valid rows of graph ``name`` on the model's device."""
        if name in self._graph_slot:
            k = self._graph_slot[name]
            return {p: getattr(self, f"graph{k}_{p}") for p in ("crow", "col", "val", "valid")}
        if name not in self.graphs:
            raise ValueError(f"unknown graph {name!r}; available graphs: {', '.join(self.graphs.names)}")
        device = self.features.device
        cached = self._graph_cache.get(name)
        if cached is None or cached["crow"].device != device:
            cached = {p: t.to(device) for p, t in normalized_adjacency(self.graphs[name], self.added_mask_np).items()}
            self._graph_cache[name] = cached
        return cached

    def valid_rows(self, name: str) -> torch.Tensor:
        """Rows of graph ``name`` that may enter the regulariser (an edge, not an added gene)."""
        return self.graph_tensors(name)["valid"]

    def sample_graph_rows(self, name: str, n: int | None = None) -> torch.Tensor:
        """Rows drawn uniformly without replacement (global RNG); ``n`` defaults to the configured rows."""
        if n is None:
            n = self.graph_reg[name].rows if name in self.graph_reg else None
        return sample_rows(self.valid_rows(name), n)

    def _resolve_rows(self, name: str, rows: int | torch.Tensor | Sequence[int] | None) -> torch.Tensor:
        if rows is None or isinstance(rows, int):
            return self.sample_graph_rows(name, rows)
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.features.device)
        valid = torch.zeros(self.num_genes, dtype=torch.bool, device=rows.device)
        valid[self.valid_rows(name)] = True
        if not bool(valid[rows].all()):
            raise ValueError(f"rows include genes that are not valid rows of graph {name!r}")
        return rows

    def _wild_type(self, enc: EncoderOutput | None) -> EncoderOutput:
        enc = self.encode_genome() if enc is None else enc
        if not enc.wild_type:
            raise ValueError("graph terms are defined on the wild-type encoding (variant 0 with no added genes)")
        return enc

    def graph_loss(
        self, name: str, rows: int | torch.Tensor | None = None, enc: EncoderOutput | None = None
    ) -> torch.Tensor:
        """``λ · mean_i KL(Ã_i ‖ α_i)`` over sampled rows of graph ``name`` (see :mod:`graph_reg`)."""
        if name not in self.graph_reg:
            raise ValueError(f"graph {name!r} is not regularised; regularised: {', '.join(self.graph_reg) or 'none'}")
        cfg = self.graph_reg[name]
        enc = self._wild_type(enc)
        g = self.graph_tensors(name)
        rows = self._resolve_rows(name, rows)
        if rows.numel() == 0:
            return enc.cls.new_zeros(()).float()
        log_alpha = head_log_attention(enc.layer_inputs[cfg.layer], self.blocks[cfg.layer].attn, cfg.head, rows)
        return cfg.weight * row_kl(log_alpha, rows, g["crow"], g["col"], g["val"]).mean()

    # ------------------------------------------------------------------ monitoring / explanation
    def attention_rows(
        self, layer: int, head: int, rows: torch.Tensor | Sequence[int], enc: EncoderOutput | None = None
    ) -> torch.Tensor:
        """(len(rows), N) attention probabilities of ``(layer, head)`` over gene keys (CLS excluded, renormalised)."""
        if not (0 <= layer < self.n_layers and 0 <= head < self.n_heads):
            raise ValueError(
                f"(layer, head)=({layer}, {head}) out of range: {self.n_layers} layers, {self.n_heads} heads"
            )
        enc = self._wild_type(enc)
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.features.device)
        return head_log_attention(enc.layer_inputs[layer], self.blocks[layer].attn, head, rows).exp()

    def attention_alignment(
        self,
        graph_name: str,
        layer: int,
        head: int,
        rows: int | torch.Tensor | None = None,
        enc: EncoderOutput | None = None,
    ) -> torch.Tensor:
        """Mean attention mass that valid rows of ``graph_name`` put on their graph neighbours.

        ``rows``: None = all valid rows, an int = that many sampled, a tensor = those genes. Chance
        level is about mean degree / N; 1 means a head attends only to neighbours.
        """
        g = self.graph_tensors(graph_name)
        rows = g["valid"] if rows is None else self._resolve_rows(graph_name, rows)
        if rows.numel() == 0:
            return torch.zeros((), device=self.features.device)
        alpha = self.attention_rows(layer, head, rows, enc)
        neighbour = torch.zeros_like(alpha, dtype=torch.bool)
        start, count = g["crow"][rows], g["crow"][rows + 1] - g["crow"][rows]
        seg = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), count)
        offset = torch.arange(seg.numel(), device=rows.device) - torch.repeat_interleave(count.cumsum(0) - count, count)
        neighbour[seg, g["col"][start[seg] + offset]] = True
        return (alpha * neighbour).sum(-1).mean()

    @torch.no_grad()
    def monitor(self, rows: int = 256) -> dict[str, float]:
        """Cheap health signals: per regularised graph its unweighted KL and alignment (tied head and the
        mean of the other heads of that layer as a control), and over-smoothing of the gene embeddings."""
        enc = self.encode_genome()
        out: dict[str, float] = {"oversmoothing": float(oversmoothing(enc.genes[0]))}
        for name, cfg in self.graph_reg.items():
            r = self.sample_graph_rows(name, rows)
            if cfg.weight > 0:
                out[f"graph_kl/{name}"] = float(self.graph_loss(name, rows=r, enc=enc)) / cfg.weight
            out[f"alignment/{name}"] = float(self.attention_alignment(name, cfg.layer, cfg.head, r, enc))
            others = [h for h in range(self.n_heads) if h != cfg.head]
            if others:
                ctrl = [float(self.attention_alignment(name, cfg.layer, h, r, enc)) for h in others]
                out[f"alignment_other_heads/{name}"] = sum(ctrl) / len(ctrl)
        return out


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
