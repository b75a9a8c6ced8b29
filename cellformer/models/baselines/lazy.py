"""LazySubgraph: the difference-form baseline ``h(pool F(G) - pool F(G \\ S))``, run per sample.

The graph encoder ``F`` (two PyG ``GraphConv`` layers over a learnable gene embedding) runs once per
step on the wild-type multigraph ``G`` (the union of the configured graphs) and once *per sample*
on ``G \\ S``: every edge touching a perturbed gene is removed. The B perturbed copies are batched
PyG-style as one disjoint graph of ``B * N`` nodes; the masked, offset edge list is built with tensor
ops only (a ``(B, E)`` keep-mask, no Python loop over edges). This is the deliberately expensive
baseline: its cost grows as ``O(B L |E|)`` (the note's "cost issue").

Message passing uses a row-normalised sparse CSR adjacency (``GraphConv`` with sum aggregation over
edge values ``1 / in-degree``, i.e. a mean over in-neighbours, computed *after* masking), so the
``|E| x d`` message tensor is never materialised.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch_geometric.nn import GraphConv

from cellformer.data.dataset import PerturbationBatch
from cellformer.genome import Genome
from cellformer.graphs import GraphSet
from cellformer.models.base import ModelOutput, PhenotypeModel


def check_base_genes(batch: PerturbationBatch, num_genes: int, model: str) -> None:
    """Graph baselines only know the base genome: reject heterologous (added) genes clearly."""
    if batch.gene_index.numel() and int(batch.gene_index.max()) >= num_genes:
        raise ValueError(f"{model} does not support heterologous (added) genes; use CellFormer for those samples")


def membership(batch: PerturbationBatch, num_genes: int) -> torch.Tensor:
    """``(B, N)`` bool: ``in_s[b, i]`` is True when gene ``i`` is perturbed in sample ``b``."""
    in_s = torch.zeros(batch.num_samples, num_genes, dtype=torch.bool, device=batch.gene_index.device)
    in_s[batch.batch, batch.gene_index] = True
    return in_s


def sorted_csr(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """A ``(num_nodes, num_nodes)`` sparse CSR tensor from COO entries whose ``rows`` are already sorted."""
    counts = torch.bincount(rows, minlength=num_nodes)
    crow = torch.zeros(num_nodes + 1, dtype=torch.long, device=rows.device)
    crow[1:] = torch.cumsum(counts, 0)
    with warnings.catch_warnings():  # "sparse CSR support is in beta" / "invariant checks disabled"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols, values, (num_nodes, num_nodes))


@dataclass
class PairedAdjacency:
    """A sparse CSR matrix ``A`` together with its transpose ``At`` (built once, both row-sorted).

    ``torch.sparse.mm`` would transpose a CSR matrix in every backward pass (a full sort of the
    edges); keeping ``At`` makes the backward another plain sparse product.
    """

    A: torch.Tensor
    At: torch.Tensor

    @property
    def dtype(self) -> torch.dtype:
        return self.A.dtype


class _PairedSpMM(torch.autograd.Function):
    """``A @ x`` with gradient ``At @ grad`` (no gradient for the adjacency values)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, at: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.at = at
        return torch.sparse.mm(a, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, None, torch.sparse.mm(ctx.at, grad.contiguous())


def spmm(adj: PairedAdjacency, x: torch.Tensor) -> torch.Tensor:
    """``adj.A @ x`` (dense ``x``), differentiable in ``x``."""
    return _PairedSpMM.apply(adj.A, adj.At, x)


def mean_adjacency(
    by_dst: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    by_src: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    num_nodes: int,
) -> PairedAdjacency:
    """Row-normalised adjacency ``A[t, s] = w_st / sum_s' w_s't``: ``A @ x`` is the mean over in-neighbours.

    The same edge multiset is given twice, as ``(dst, src, weight)`` sorted by ``dst`` and as
    ``(src, dst, weight)`` sorted by ``src`` (for ``At``); weights ``None`` mean 1.
    """
    dst_a, src_a, w_a = by_dst
    src_b, dst_b, w_b = by_src
    w_a = torch.ones(dst_a.numel(), device=dst_a.device) if w_a is None else w_a.float()
    w_b = torch.ones(src_b.numel(), device=src_b.device) if w_b is None else w_b.float()
    inv_deg = 1.0 / torch.zeros(num_nodes, device=dst_a.device).index_add_(0, dst_a, w_a).clamp_min(1e-12)
    return PairedAdjacency(
        sorted_csr(dst_a, src_a, w_a * inv_deg[dst_a], num_nodes),
        sorted_csr(src_b, dst_b, w_b * inv_deg[dst_b], num_nodes),
    )


class MeanGraphConv(GraphConv):
    """PyG ``GraphConv`` (``lin_rel(aggregate) + lin_root(x)``) whose aggregation is a paired sparse product.

    Same parameters and maths as ``GraphConv`` with sum aggregation over the adjacency's values
    (here row-normalised, i.e. a weighted mean over in-neighbours).
    """

    def forward(self, x: torch.Tensor, adj: PairedAdjacency) -> torch.Tensor:  # type: ignore[override]
        # the sparse aggregation runs in the adjacency's dtype (fp32); under autocast the linear maps still
        # run in bf16
        agg = spmm(adj, x.to(adj.dtype))
        return self.lin_rel(agg) + self.lin_root(x)


class GraphEncoder(nn.Module):
    """``num_layers`` :class:`MeanGraphConv` layers with ReLU between them."""

    def __init__(self, d: int, num_layers: int = 2):
        super().__init__()
        self.convs = nn.ModuleList([MeanGraphConv(d, d, aggr="add") for _ in range(num_layers)])
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor, adj: PairedAdjacency) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(x, adj)
            if i < len(self.convs) - 1:
                x = self.act(x)
        return x


class LazySubgraph(PhenotypeModel):
    """``pred = MLP(mean_i F(G)_i - mean_{i not in S} F(G \\ S)_i)`` with a per-sample masked graph pass.

    Args:
        genome: the genome (``N`` genes; heterologous genes are not supported).
        graphs: the graphs whose union (a multigraph: an edge present in two graphs counts twice) is ``G``.
        phenotype_names: output columns.
        d: embedding / hidden width.
        num_layers: GNN layers.
        dropout: dropout in the output MLP.
    """

    def __init__(
        self,
        genome: Genome,
        graphs: GraphSet,
        phenotype_names: list[str],
        d: int = 64,
        num_layers: int = 2,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.phenotype_names = list(phenotype_names)
        self.hparams_dict = {"d": d, "num_layers": num_layers, "dropout": dropout}
        self.num_genes = len(genome)
        self.embedding = nn.Embedding(self.num_genes, d)
        nn.init.normal_(self.embedding.weight, std=0.1)
        self.encoder = GraphEncoder(d, num_layers)
        self.head = nn.Sequential(
            nn.Linear(d, d), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d, len(self.phenotype_names))
        )
        ei, _ = graphs.union_edge_index()
        n_graph = next(iter(graphs.values())).num_nodes if len(graphs) else self.num_genes
        if n_graph > self.num_genes:
            raise ValueError(f"graphs have {n_graph} nodes but the genome only {self.num_genes} genes")
        # messages flow src -> dst. Two listings of the same edges: sorted by (dst, src) for A and by
        # (src, dst) for its transpose; per-sample offset copies of a sorted listing stay sorted.
        src, dst = ei[0], ei[1]
        by_dst = torch.argsort(dst * self.num_genes + src)
        by_src = torch.argsort(src * self.num_genes + dst)
        self.register_buffer("src", src[by_dst].contiguous(), persistent=False)
        self.register_buffer("dst", dst[by_dst].contiguous(), persistent=False)
        self.register_buffer("src_t", src[by_src].contiguous(), persistent=False)
        self.register_buffer("dst_t", dst[by_src].contiguous(), persistent=False)

    @property
    def num_edges(self) -> int:
        return int(self.src.numel())

    def masked_edge_index(self, in_s: torch.Tensor, transposed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Edges of the B disjoint copies of ``G \\ S_b`` (node ``i`` of sample ``b`` is ``b * N + i``).

        Returns ``(edge_index (2, E') as [src, dst], sample of each edge (E',))``, sorted by
        (sample, dst, src) -- or by (sample, src, dst) when ``transposed``.
        """
        src, dst = (self.src_t, self.dst_t) if transposed else (self.src, self.dst)
        keep = ~(in_s[:, src] | in_s[:, dst])  # (B, E)
        b, e = keep.nonzero(as_tuple=True)  # row-major: sorted by sample, then by edge order
        offset = b * self.num_genes
        return torch.stack([src[e] + offset, dst[e] + offset]), b

    def forward(self, batch: PerturbationBatch) -> ModelOutput:
        check_base_genes(batch, self.num_genes, "LazySubgraph")
        n, bsz = self.num_genes, batch.num_samples
        x = self.embedding.weight
        # wild type, once per step
        adj_wt = mean_adjacency((self.dst, self.src, None), (self.src_t, self.dst_t, None), n)
        pool_wt = self.encoder(x, adj_wt).mean(0)
        # B perturbed copies as one disjoint graph of B * N nodes
        in_s = membership(batch, n)
        ei, _ = self.masked_edge_index(in_s)
        ei_t, _ = self.masked_edge_index(in_s, transposed=True)
        adj = mean_adjacency((ei[1], ei[0], None), (ei_t[0], ei_t[1], None), bsz * n)
        h = self.encoder(x.repeat(bsz, 1), adj).view(bsz, n, -1)
        present = (~in_s).unsqueeze(-1).to(h.dtype)  # deleted genes leave the pool
        pool_pert = (h * present).sum(1) / present.sum(1).clamp_min(1.0)
        pred = self.head(pool_wt.unsqueeze(0) - pool_pert)
        extras = {
            "nodes_per_sample": torch.tensor(float(n)),
            "edges_per_sample": torch.tensor(ei.shape[1] / max(bsz, 1)),
        }
        return ModelOutput(pred=self.unscale(pred), extras=extras)
