"""CellFormer: a whole-genome transformer with graph-regularised attention heads.

Reading order (design note, sections 2-5):

1. :class:`SelfAttention`, :class:`MLP`, :class:`Block` -- a pre-LN transformer block
   (``x = x + Attn(LN(x)); x = x + FFN(LN(x))``) with attention through
   ``F.scaled_dot_product_attention`` and an optional key-padding mask.
2. :meth:`CellFormer.encode` -- every gene is a token ``Linear(features_i) + identity_i + context_i``.
   :meth:`CellFormer.identities`: a learned vector per gene, or the learned ``unknown_gene`` vector for
   added genes, genes seen in no training record and (while training) an ``identity_dropout`` share.
   :meth:`CellFormer.graph_context`: neighbour-averaged identities per input graph and hop, a fixed
   spectral encoding (:func:`structural_encoding`) and the neighbours' training single mutants. A learned
   CLS token is prepended and there is no positional encoding. The encoder runs once per training step on
   the wild-type genome, plus once per heterologous variant in the batch (variants padded to the longest).
3. Graph regularisation (:mod:`cellformer.models.graph_reg`) -- ``λ · KL(Ã_i ‖ α_i)`` on sampled rows of
   the tied heads, computed on the wild-type pass with the same parameters as the forward pass.
4. :class:`PerturbationHead` -- ``g(F(G), S)``: pool the members of S into ``q_S``, attend from ``q_S`` to
   all genes, summarise ``z_S = Σ_i β_i φ(h_i, m_i)`` and read out ``ŷ = MLP([h_CLS ‖ z_S ‖ p_S ‖ e_S]) +
   Σ_{i∈S} a(φ(h_i, m_i))``: ``p_S`` the members' mean pairwise product, ``e_S`` set features from the
   graphs and the training records (:meth:`CellFormer.set_features`: adjacent member pairs, a leave-one-out
   graph-smoothing estimate, the members' own single mutants, a larger set's member pairs measured as
   training doubles, the cross-fitted additive estimate; genes whose identity is dropped in a training step
   hide their own records too). The readout is a gated (GEGLU) MLP.
5. :meth:`CellFormer.fit_records` -- what the model learns from the training records without gradients
   (seen genes, neighbour and member single mutants, training doubles, the smoothing table, the ridge
   additive fits); called once at ``fit``.

``forward(batch)`` returns ``ModelOutput(pred (B, P), losses, extras)``; ``losses`` holds
``graph/<name> = λ·KL`` for every regularised graph in train *and* eval mode (eval values are a
monitoring signal; pass ``graph_losses=False`` to skip them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch_geometric.utils import scatter
from torch_geometric.utils import softmax as segment_softmax

from cellformer.data.dataset import NUM_PERTURBATION_TYPES, PerturbationBatch, PerturbationData, PerturbationType
from cellformer.errors import UserError, unknown_name_error
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
        graph_reg: graph name -> ``{"layer" (int or list), "head", "weight" (λ, default 1), "rows"
            (default 256, None = all valid rows), "transpose" (default false)}``.
        graph_inputs: graphs whose neighbourhoods build part of every token (None = all graphs of the
            context, [] = none): ``Σ_k Σ_{h ≤ input_hops} W_kh (Ã_k^h E')_i``, the identities ``E'`` of the
            gene's neighbours averaged over ``h`` hops, plus a structural encoding (``structural_dim``
            leading eigenvectors of each graph's normalised adjacency, fixed) through one linear map. A gene
            never seen in training is thus represented through its graph context.
        input_hops: hops of neighbour averaging for ``graph_inputs`` (0 = none).
        structural_dim: eigenvectors per input graph in the structural encoding (0 = none).
        identity_dropout: share of gene identities replaced by the ``unknown_gene`` vector at each training
            step, so the model learns to represent a gene through its graph context.
        mask_unseen: genes that occur in no training record (set by :meth:`fit_records`) always use the
            ``unknown_gene`` identity: their own identity vector was never trained.
        pair_features: add the pairwise-interaction summary of the members to the readout.
        additive_path: add a per-gene effect ``Σ_{i∈S} a(φ(h_i, m_i))`` to the prediction.
        label_inputs: each token also gets, per input graph, the mean standardised single-mutant phenotypes of
            the gene's graph neighbours among the training records (never its own; set by :meth:`fit_records`,
            saved with the weights) and the share of neighbours that have one.
        pair_graph_features: the readout also gets, per input graph, the share of the set's member pairs that
            are graph neighbours.
        smoothing_features: the readout also gets the graph-smoothing estimate of the set's phenotypes
            (:class:`~cellformer.models.baselines.graph_smoothing.GraphSmoothing` over the input graphs, fitted
            on the training records by :meth:`fit_records`; standardised, with a has-data flag per phenotype).
            While training, the sample's own record is left out of its estimate, so it never sees its label.
        member_singles: the readout also gets the members' own measured single-mutant phenotypes from the
            training records (standardised, summed over the members, with has-data flags, and their mean
            pairwise product); a training single never sees its own value.
        additive_features: the readout also gets the additive model's estimate of the set, solved in closed form
            on the training records (:class:`~cellformer.models.baselines.additive.CrossFittedAdditive`: per-gene
            ridge effects, log-additive for fitness-like phenotypes) and cross-fitted over ``additive_folds``
            folds, so a training record reads an estimate fitted without it.
        readout_hidden: hidden width of the readout MLP (default ``4 · d_model``).
        gated_readout: a gated (GEGLU) readout hidden layer instead of a plain GELU one (default): it forms
            products of its inputs, as an interaction's size times the members' expected fitness.
        member_pairs: the readout of a set of three or more genes also gets its member pairs' measured
            double mutants among the training records (standardised mean over the pairs that have one, and the
            share that have one): a trigenic τ is defined against them. A double never reads its own record
            (only sets of ≥ 3 get it).
        row_seed: seed of the model's own generator for graph rows and identity dropout (so they never
            shift the global RNG stream that orders batches).
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
        graph_inputs: list[str] | None = None,
        input_hops: int = 2,
        structural_dim: int = 16,
        identity_dropout: float = 0.3,
        mask_unseen: bool = True,
        pair_features: bool = True,
        additive_path: bool = True,
        label_inputs: bool = True,
        pair_graph_features: bool = True,
        smoothing_features: bool = True,
        member_singles: bool = True,
        additive_features: bool = True,
        additive_folds: int = 5,
        readout_hidden: int | None = None,
        gated_readout: bool = True,
        member_pairs: bool = True,
        row_seed: int = 0,
    ):
        super().__init__()
        self.splits_encoder = True
        if d_model % n_heads:
            raise UserError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        if not 0 <= identity_dropout < 1:
            raise UserError(f"identity_dropout must be in [0, 1), got {identity_dropout}")
        if input_hops < 0 or structural_dim < 0:
            raise UserError(f"input_hops ({input_hops}) and structural_dim ({structural_dim}) must be >= 0")
        graph_inputs = list(graphs.names) if graph_inputs is None else list(graph_inputs)
        for name in graph_inputs:
            if name not in graphs:
                raise unknown_name_error("graph in graph_inputs", name, graphs.names)
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
            "graph_inputs": graph_inputs,
            "input_hops": input_hops,
            "structural_dim": structural_dim,
            "identity_dropout": identity_dropout,
            "mask_unseen": mask_unseen,
            "pair_features": pair_features,
            "additive_path": additive_path,
            "label_inputs": label_inputs,
            "pair_graph_features": pair_graph_features,
            "smoothing_features": smoothing_features,
            "member_singles": member_singles,
            "additive_features": additive_features,
            "additive_folds": additive_folds,
            "readout_hidden": readout_hidden,
            "gated_readout": gated_readout,
            "member_pairs": member_pairs,
            "row_seed": row_seed,
        }
        self.member_singles = member_singles
        self.label_inputs, self.pair_graph_features = label_inputs, pair_graph_features
        self.graph_inputs, self.input_hops = graph_inputs, input_hops
        self.identity_dropout, self.mask_unseen = identity_dropout, mask_unseen
        self.generator = torch.Generator().manual_seed(row_seed)
        self.d_model, self.n_layers, self.n_heads, self.d_head = d_model, n_layers, n_heads, d_model // n_heads
        self.num_genes, self.num_features = genome.features.shape
        self.genome_hash = genome.hash
        self.graphs = graphs  # plain attribute (not in the state dict): monitoring of any graph
        self.added_mask_np = np.asarray(genome.added, dtype=bool)

        self.register_buffer("features", torch.from_numpy(genome.features.copy()))
        self.register_buffer("known", torch.from_numpy(~self.added_mask_np))
        # genes that occur in training records (all until fit_records says otherwise); saved with the weights
        self.register_buffer("seen", torch.ones(self.num_genes, dtype=torch.bool))
        for k, (name, cfg) in enumerate(self.graph_reg.items()):  # CSR Ã + valid rows, moved by .to(device)
            for part, t in normalized_adjacency(graphs[name], self.added_mask_np, cfg.transpose).items():
                self.register_buffer(f"graph{k}_{part}", t, persistent=False)
        for k, name in enumerate(graph_inputs):  # symmetric mean-over-neighbours operator per input graph
            for part, t in neighbour_mean(graphs[name], self.added_mask_np).items():
                self.register_buffer(f"input{k}_{part}", t, persistent=False)
        struct = structural_encoding([graphs[n] for n in graph_inputs], self.num_genes, structural_dim)
        self.register_buffer("structure", torch.from_numpy(struct))  # fixed features, saved with the weights
        n_label = len(graph_inputs) * (len(self.phenotype_names) + 1) if label_inputs else 0
        self.register_buffer("label_features", torch.zeros(self.num_genes, n_label))  # filled by fit_records
        for k, name in enumerate(graph_inputs if pair_graph_features else []):  # sorted keys a·N + b of the edges
            adj = graphs[name].adj
            adj = sp.coo_matrix(adj + adj.T)
            keys = np.unique(adj.row.astype(np.int64) * self.num_genes + adj.col.astype(np.int64))
            self.register_buffer(f"edgekeys{k}", torch.from_numpy(keys), persistent=False)
        self._graph_slot = {name: k for k, name in enumerate(self.graph_reg)}
        self._graph_cache: dict[str, dict[str, torch.Tensor]] = {}
        self._frozen_encoding: EncoderOutput | None = None
        self._dropped: torch.Tensor | None = None  # genes whose identity is dropped at this training step
        self.freeze_encoding_cache = False

        # encoder
        self.feature_proj = nn.Linear(self.num_features, d_model)
        self.gene_embed = nn.Embedding(self.num_genes, d_model)
        n_hop = len(graph_inputs) * input_hops
        self.hop_proj = nn.ModuleList([nn.Linear(d_model, d_model, bias=False) for _ in range(n_hop)])
        self.structure_proj = nn.Linear(struct.shape[1], d_model) if struct.shape[1] else None
        self.label_proj = nn.Linear(n_label, d_model) if n_label else None
        self.smoother = None
        if smoothing_features and graph_inputs:
            from cellformer.models.baselines.graph_smoothing import GraphSmoothing

            self.smoother = GraphSmoothing(genome, graphs, self.phenotype_names, graph_names=graph_inputs)
        n_smooth = 2 * len(self.phenotype_names) if self.smoother is not None else 0
        n_smooth += 3 * len(self.phenotype_names) if member_singles else 0
        self.member_pairs = member_pairs
        n_smooth += 2 * len(self.phenotype_names) if member_pairs else 0
        # the training doubles (sorted keys lo·N + hi, standardised values; sizes set by fit_records / the state dict)
        self.register_buffer("pair_keys", torch.zeros(0, dtype=torch.long))
        self.register_buffer("pair_values", torch.zeros(0, len(self.phenotype_names)))
        self.additive_estimate = None
        if additive_features:
            from cellformer.models.baselines.additive import CrossFittedAdditive

            self.additive_estimate = CrossFittedAdditive(self.num_genes, self.phenotype_names, additive_folds)
            n_smooth += 2 * len(self.phenotype_names)
        self.register_buffer("single_value", torch.zeros(self.num_genes, len(self.phenotype_names)))
        self.register_buffer("single_has", torch.zeros(self.num_genes, len(self.phenotype_names)))
        self.unknown_gene = nn.Parameter(torch.zeros(d_model))
        self.cls_token = nn.Parameter(torch.zeros(d_model))
        self.embed_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            [Block(d_model, n_heads, d_ff or 4 * d_model, dropout, attn_dropout) for _ in range(n_layers)]
        )
        self.norm_f = nn.LayerNorm(d_model)
        # perturbation head
        self.head = PerturbationHead(
            d_model,
            len(self.phenotype_names),
            pool,
            dropout,
            self.num_genes,
            pair_features,
            additive_path,
            n_extra=(len(graph_inputs) if pair_graph_features else 0) + n_smooth,
            readout_hidden=readout_hidden,
            gated_readout=gated_readout,
        )
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
        identity = self.identities()
        base = self.feature_proj(self.features) + identity + self.graph_context(identity)  # (N, d)
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

    def identities(self) -> torch.Tensor:
        """(N, d) identity part of every gene token: ``gene_embed`` for known genes seen in training, the
        ``unknown_gene`` vector for added genes, unseen genes (``mask_unseen``) and, while training, a random
        ``identity_dropout`` share of genes."""
        use = self.known & self.seen if self.mask_unseen else self.known.clone()
        self._dropped = None
        if self.training and self.identity_dropout > 0:
            keep = torch.rand(self.num_genes, generator=self.generator) >= self.identity_dropout
            use = use & keep.to(use.device)
            self._dropped = ~keep.to(use.device)  # these genes also hide their own records from the readout
        return torch.where(use[:, None], self.gene_embed.weight, self.unknown_gene)

    def graph_context(self, identity: torch.Tensor) -> torch.Tensor:
        """(N, d) graph-derived token part: projected neighbour means of identities over 1..hops, plus the
        projected structural encoding (zeros when no input graphs are configured)."""
        out = identity.new_zeros(identity.shape)
        if self.structure_proj is not None:
            out = out + self.structure_proj(self.structure)
        if self.label_proj is not None:
            out = out + self.label_proj(self.label_features)
        for k in range(len(self.graph_inputs)):
            row, col, val = (getattr(self, f"input{k}_{p}") for p in ("row", "col", "val"))
            x = identity
            for h in range(self.input_hops):
                x = torch.zeros_like(x).index_add(0, row, val[:, None] * x[col])  # Ã x (mean over neighbours)
                out = out + self.hop_proj[k * self.input_hops + h](x)
        return out

    def fit_records(self, data: PerturbationData, train_rows: np.ndarray) -> None:
        """Mark the genes that occur in the training records (the others get the ``unknown_gene`` identity)."""
        in_train = np.zeros(len(data), dtype=bool)
        in_train[np.asarray(train_rows, dtype=np.int64)] = True
        genes = data.gene_index[np.repeat(in_train, data.set_sizes)]
        seen = np.zeros(self.num_genes, dtype=bool)
        genes = genes[(genes >= 0) & (genes < self.num_genes)]
        seen[genes] = True
        self.seen.copy_(torch.from_numpy(seen))
        value, has = self._single_means(data, np.flatnonzero(in_train))
        if self.label_proj is not None:
            self.label_features.copy_(torch.from_numpy(self._neighbour_labels(value, has)))
        if self.smoother is not None:
            self.smoother.fit_records(data, np.flatnonzero(in_train))
        self.single_value.copy_(torch.from_numpy(value.astype(np.float32)))
        self.single_has.copy_(torch.from_numpy(has.astype(np.float32)))
        if self.member_pairs:
            self._fit_training_doubles(data, np.flatnonzero(in_train))
        if self.additive_estimate is not None:
            self.additive_estimate.fit(data, np.flatnonzero(in_train), self.phenotype_names, *self.target_scaling())

    def _fit_training_doubles(self, data: PerturbationData, rows: np.ndarray) -> None:
        """Store the training doubles of base-genome genes as sorted keys ``lo·N + hi`` and standardised values."""
        pairs = rows[data.set_sizes[rows] == 2]
        genes = data.gene_index[data.offsets[pairs][:, None] + np.arange(2)].astype(np.int64).reshape(-1, 2)
        ok = (genes < self.num_genes).all(1)
        keys = genes[ok].min(1) * self.num_genes + genes[ok].max(1)
        order = np.argsort(keys, kind="stable")
        cols = [data.phenotype_names.index(n) for n in self.phenotype_names]
        values = self.standardise(torch.from_numpy(data.phenotypes[pairs[ok]][:, cols].astype(np.float32)))
        device = self.pair_keys.device
        self.pair_keys = torch.from_numpy(keys[order]).to(device)
        self.pair_values = values[torch.from_numpy(order)].to(device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """The training-double buffers take the sizes stored in the checkpoint."""
        for name in ("pair_keys", "pair_values"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _single_means(self, data: PerturbationData, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, P) mean standardised single-mutant phenotypes over the training singles, and (N, P) has-data."""
        single = rows[data.set_sizes[rows] == 1]
        genes = data.gene_index[data.offsets[single]].astype(np.int64)
        ok = (genes >= 0) & (genes < self.num_genes)
        genes, single = genes[ok], single[ok]
        cols = [data.phenotype_names.index(n) for n in self.phenotype_names]
        y = self.standardise(torch.from_numpy(data.phenotypes[single][:, cols].astype(np.float32))).numpy()
        P = len(cols)
        value, count = np.zeros((self.num_genes, P)), np.zeros((self.num_genes, P))
        np.add.at(value, genes, np.nan_to_num(y))
        np.add.at(count, genes, ~np.isnan(y))
        value = np.divide(value, count, out=np.zeros_like(value), where=count > 0)
        return value, (count > 0).astype(np.float64)

    def _neighbour_labels(self, value: np.ndarray, measured: np.ndarray) -> np.ndarray:
        """(N, G·(P+1)): per input graph, the neighbours' mean of the per-gene single-mutant ``value`` (where
        ``measured``; 0 where none) and the share of neighbours with a measurement."""
        out = []
        for k in range(len(self.graph_inputs)):
            row, col, val = (getattr(self, f"input{k}_{p}").cpu().numpy() for p in ("row", "col", "val"))
            a = sp.csr_matrix((np.ones_like(val, dtype=np.float64), (row, col)), shape=(self.num_genes,) * 2)
            a.setdiag(0)  # never the gene's own value
            a.eliminate_zeros()
            s, c = a @ (value * measured), a @ measured
            deg = np.asarray(a.sum(axis=1)).ravel()[:, None]
            mean = np.divide(s, c, out=np.zeros_like(s), where=c > 0)
            share = np.divide(c[:, :1], deg, out=np.zeros_like(deg), where=deg > 0)
            out.append(np.concatenate([mean, share], axis=1))
        return np.concatenate(out, axis=1).astype(np.float32)

    def set_features(
        self, gene_index: torch.Tensor, types: torch.Tensor, ptr: torch.Tensor, own: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """Readout features of each set computed from the graphs and training records (None if none are on).

        ``own`` (B, P): while training, the samples' own measured values, left out of the smoothing estimate
        (and the samples read the cross-fitted additive estimate that never saw them).
        """
        # a gene whose identity is dropped this step (training) also hides its own records, as an unseen gene has none
        hidden = None
        if own is not None and self._dropped is not None:
            hidden = self._dropped[gene_index.clamp_max(self.num_genes - 1)] & (gene_index < self.num_genes)
        parts = [self.set_graph_features(gene_index, ptr), self.smoothed(gene_index, ptr, own)]
        parts.append(self.member_single_features(gene_index, ptr, leave_out_singles=own is not None, hidden=hidden))
        parts.append(self.member_pair_features(gene_index, ptr, self._dropped if own is not None else None))
        if self.additive_estimate is not None:
            mean, std = self.target_scaling()
            cross = own is not None
            parts.append(self.additive_estimate(gene_index, types, ptr, mean, std, cross_fitted=cross, hidden=hidden))
        parts = [f for f in parts if f is not None]
        return torch.cat(parts, dim=1) if parts else None

    @torch.no_grad()
    def member_single_features(
        self,
        gene_index: torch.Tensor,
        ptr: torch.Tensor,
        leave_out_singles: bool = False,
        hidden: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """(B, 3P): members' measured single-mutant phenotypes summed, their has-data flags summed, and the
        mean pairwise product (None unless ``member_singles``). ``leave_out_singles`` (training): a set of
        one gene is that gene's own training single, so its value is left out. ``hidden`` (nnz,) bool: members
        treated as unmeasured."""
        if not self.member_singles:
            return None
        B = ptr.numel() - 1
        batch = torch.repeat_interleave(torch.arange(B, device=ptr.device), ptr[1:] - ptr[:-1])
        known = gene_index < self.num_genes
        g = torch.where(known, gene_index, torch.zeros_like(gene_index)).long()
        has = self.single_has[g] * known[:, None].float()
        if hidden is not None:
            has = has * (~hidden)[:, None].float()
        if leave_out_singles:
            singleton = (ptr[1:] - ptr[:-1] == 1)[batch]
            has = has * (~singleton)[:, None].float()
        v = self.single_value[g] * has
        total = torch.zeros(B, v.shape[1], device=v.device).index_add(0, batch, v)
        count = torch.zeros(B, v.shape[1], device=v.device).index_add(0, batch, has)
        return torch.cat([total, count, PerturbationHead.pairwise(v, batch, B)], dim=1)

    @torch.no_grad()
    def member_pair_features(
        self, gene_index: torch.Tensor, ptr: torch.Tensor, dropped: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """(B, 2P): for sets of ≥ 3 genes, the mean standardised phenotypes of the member pairs measured as
        training doubles and the share of member pairs measured (zeros otherwise; None unless
        ``member_pairs``). ``dropped`` (N,) bool: genes whose records are hidden in this training step."""
        if not self.member_pairs:
            return None
        B, P = ptr.numel() - 1, len(self.phenotype_names)
        if self.pair_keys.numel() == 0:  # no training doubles
            return torch.zeros(B, 2 * P, device=ptr.device)
        a, b, sample = member_pairs(gene_index, ptr)
        large = ((ptr[1:] - ptr[:-1]) >= 3)[sample]
        use = large & (a < self.num_genes) & (b < self.num_genes)
        if dropped is not None:
            use = use & ~dropped[a.clamp_max(self.num_genes - 1)] & ~dropped[b.clamp_max(self.num_genes - 1)]
        pos, hit = sorted_lookup(self.pair_keys, torch.minimum(a, b) * self.num_genes + torch.maximum(a, b))
        values = self.pair_values[pos]
        has = (~torch.isnan(values)).float() * (hit & use)[:, None]
        v = torch.nan_to_num(values) * has
        total = torch.zeros(B, P, device=ptr.device).index_add(0, sample, v)
        count = torch.zeros(B, P, device=ptr.device).index_add(0, sample, has)
        n_pairs = torch.bincount(sample[large], minlength=B).clamp_min(1).float()[:, None]
        return torch.cat([total / count.clamp_min(1), count / n_pairs], dim=1)

    @torch.no_grad()
    def smoothed(
        self, gene_index: torch.Tensor, ptr: torch.Tensor, own: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """(B, 2P): the graph-smoothing estimate of each set's phenotypes (standardised; 0 where there is no
        neighbouring record) and a flag for whether there is one. ``own`` (B, P) removes each sample's own
        record (its contribution ``K(S, S)·y``) from the estimate: a leave-one-out estimate for training."""
        if self.smoother is None:
            return None
        sums, weights = self.smoother.estimate(gene_index, ptr, own)
        has = weights > 1e-9  # a leave-one-out weight can round to a tiny positive number
        value = np.divide(sums, weights, out=np.zeros_like(sums), where=has)
        v = self.standardise(torch.as_tensor(value, dtype=torch.float32, device=ptr.device))
        h = torch.as_tensor(has, dtype=torch.float32, device=ptr.device)
        return torch.cat([v * h, h], dim=1)

    def set_graph_features(self, gene_index: torch.Tensor, ptr: torch.Tensor) -> torch.Tensor | None:
        """(B, G): per input graph, the share of each set's member pairs that are neighbours (0 for singletons)."""
        if not self.pair_graph_features or not self.graph_inputs:
            return None
        a, b, sample = member_pairs(gene_index, ptr)
        B = ptr.numel() - 1
        n_pairs = torch.bincount(sample, minlength=B).clamp_min(1).to(torch.float32)
        out = []
        for k in range(len(self.graph_inputs)):
            _, hit = sorted_lookup(getattr(self, f"edgekeys{k}"), a * self.num_genes + b)
            hit = hit & (a < self.num_genes) & (b < self.num_genes)
            out.append(torch.zeros(B, device=ptr.device).index_add(0, sample, hit.float()) / n_pairs)
        return torch.stack(out, dim=1)

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
        extra = self.set_features(gene_index, types, ptr)
        pred, beta = self.head(enc, gene_index, types, ptr, batch, variant, return_attention, extra)
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
        own = batch.y if self.training else None  # training samples are training records: leave them out
        extra = self.set_features(batch.gene_index, batch.types, batch.ptr, own)
        pred, beta = self.head(
            enc, batch.gene_index, batch.types, batch.ptr, batch.batch, batch.variant, return_attention, extra
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
            raise unknown_name_error("graph", name, self.graphs.names)
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
        """Rows drawn uniformly without replacement (the model's own generator); ``n`` defaults to the
        configured rows."""
        if n is None:
            n = self.graph_reg[name].rows if name in self.graph_reg else None
        return sample_rows(self.valid_rows(name), n, self.generator)

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
        kl = []
        for layer in cfg.layers:
            log_alpha = head_log_attention(enc.layer_inputs[layer], self.blocks[layer].attn, cfg.head, rows)
            kl.append(row_kl(log_alpha, rows, g["crow"], g["col"], g["val"]).mean())
        return cfg.weight * torch.stack(kl).mean()

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


def sorted_lookup(keys: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Position of each query in the sorted ``keys`` and whether it is there (all False for empty keys)."""
    if keys.numel() == 0:
        return torch.zeros_like(queries), torch.zeros_like(queries, dtype=torch.bool)
    pos = torch.searchsorted(keys, queries).clamp_max(keys.numel() - 1)
    return pos, keys[pos] == queries


def member_pairs(gene_index: torch.Tensor, ptr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All member pairs i < j of every set in a CSR batch: (gene a, gene b, sample), grouped by set size."""
    sizes = ptr[1:] - ptr[:-1]
    parts_a, parts_b, parts_s = [], [], []
    for size in torch.unique(sizes).tolist():
        if size < 2:
            continue
        samples = torch.nonzero(sizes == size).squeeze(1)
        members = gene_index[ptr[samples][:, None] + torch.arange(size, device=ptr.device)]  # (n, size)
        i, j = torch.triu_indices(size, size, offset=1, device=ptr.device)
        parts_a.append(members[:, i].reshape(-1))
        parts_b.append(members[:, j].reshape(-1))
        parts_s.append(samples.repeat_interleave(i.numel()))
    if not parts_a:
        empty = gene_index.new_zeros(0, dtype=torch.long)
        return empty, empty, empty
    return torch.cat(parts_a).long(), torch.cat(parts_b).long(), torch.cat(parts_s)


def neighbour_mean(graph, added: np.ndarray) -> dict[str, torch.Tensor]:
    """COO (row, col, val) of the row-normalised symmetric adjacency ``D⁻¹(A + Aᵀ)`` without added genes.

    ``(Ã x)_i`` is the weighted mean of ``x`` over the neighbours of gene ``i`` (zero for genes without
    edges); directed graphs are read as undirected for token inputs.
    """
    n = len(added)
    adj = graph.adj if graph.num_nodes == n else graph.with_num_nodes(n).adj
    adj = sp.csr_matrix(adj + adj.T) if graph.directed else sp.csr_matrix(adj)
    keep = sp.diags((~np.asarray(added, dtype=bool)).astype(np.float32))
    adj = sp.coo_matrix(keep @ adj @ keep)
    deg = np.asarray(adj.sum(axis=1)).ravel()
    inv = np.divide(1.0, deg, out=np.zeros_like(deg), where=deg > 0)
    return {
        "row": torch.from_numpy(adj.row.astype(np.int64)),
        "col": torch.from_numpy(adj.col.astype(np.int64)),
        "val": torch.from_numpy((adj.data * inv[adj.row]).astype(np.float32)),
    }


def structural_encoding(graphs: Sequence, num_genes: int, dim: int) -> np.ndarray:
    """(N, dim · len(graphs)) regularised spectral embedding of each graph.

    For each graph: the leading non-trivial eigenvectors of ``D_τ^-1/2 (A + Aᵀ + τ/N · 11ᵀ) D_τ^-1/2`` with
    ``τ`` the mean degree (regularised spectral clustering: the τ term joins the many small components of a
    real interaction graph, so the leading vectors follow its communities instead of being an arbitrary
    basis of component indicators). A fixed, deterministic positional encoding of every gene, scaled to unit
    mean square per column, signs fixed so the largest entry is positive; genes without edges get zeros.
    Computed once when the model is built and saved with it.
    """
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    cols = []
    for graph in graphs if dim > 0 else []:
        adj = graph.adj if graph.num_nodes == num_genes else graph.with_num_nodes(num_genes).adj
        adj = sp.csr_matrix(adj + adj.T).astype(np.float64)
        deg = np.asarray(adj.sum(axis=1)).ravel()
        tau = max(float(deg.mean()), 1e-3)
        inv = 1.0 / np.sqrt(deg + tau)

        def matvec(x: np.ndarray, adj=adj, inv=inv, tau=tau) -> np.ndarray:
            y = inv * np.asarray(x).ravel()
            return inv * (adj @ y + tau / num_genes * y.sum())

        k = min(dim + 1, num_genes - 1)
        if num_genes <= 1500:
            dense = np.stack([matvec(e) for e in np.eye(num_genes)], axis=1)
            vals, vecs = np.linalg.eigh((dense + dense.T) / 2)
        else:
            op = LinearOperator((num_genes, num_genes), matvec=matvec, dtype=np.float64)
            try:
                vals, vecs = eigsh(op, k=k, which="LA", v0=np.full(num_genes, 1.0 / np.sqrt(num_genes)), tol=1e-6)
            except ArpackNoConvergence as exc:  # keep the converged ones
                vals, vecs = exc.eigenvalues, exc.eigenvectors
        vecs = vecs[:, np.argsort(vals)[::-1][1:k]]  # drop the trivial leading vector
        vecs = vecs * np.sqrt(num_genes)
        flip = np.sign(vecs[np.abs(vecs).argmax(axis=0), np.arange(vecs.shape[1])])
        vecs = vecs * np.where(flip == 0, 1.0, flip)
        vecs[deg == 0] = 0.0
        if vecs.shape[1] < dim:
            vecs = np.pad(vecs, ((0, 0), (0, dim - vecs.shape[1])))
        cols.append(vecs.astype(np.float32))
    return np.concatenate(cols, axis=1) if cols else np.zeros((num_genes, 0), np.float32)
