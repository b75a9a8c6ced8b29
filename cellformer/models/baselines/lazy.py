"""LazySubgraph: the difference-form baseline ``h(pool F(G) - pool F(G \\ S))``, run per sample.

The graph encoder ``F`` (``n_layers`` PyG ``GraphConv`` layers of the shared GNN kit,
:mod:`cellformer.models.baselines.gnn`, over a learnable gene embedding) runs once per
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

import torch
from torch import nn

from cellformer.data.dataset import PerturbationBatch
from cellformer.genome import Genome
from cellformer.graphs import GraphSet
from cellformer.models.base import ModelOutput, PhenotypeModel
from cellformer.models.baselines.gnn import GraphEncoder, check_base_genes, mean_adjacency, membership, resolve_hparams


class LazySubgraph(PhenotypeModel):
    """``pred = MLP(mean_i F(G)_i - mean_{i not in S} F(G \\ S)_i)`` with a per-sample masked graph pass.

    Args:
        genome: the genome (``N`` genes; heterologous genes are not supported).
        graphs: the graphs whose union (a multigraph: an edge present in two graphs counts twice) is ``G``.
        phenotype_names: output columns.
        d_model: embedding / hidden width (formerly ``d``).
        n_layers: GNN layers (formerly ``num_layers``).
        dropout: dropout in the output MLP.
    """

    def __init__(
        self,
        genome: Genome,
        graphs: GraphSet,
        phenotype_names: list[str],
        d_model: int = 64,
        n_layers: int = 2,
        dropout: float = 0.0,
        **legacy,
    ):
        super().__init__()
        hp = resolve_hparams("lazy", {"d_model": d_model, "n_layers": n_layers, "dropout": dropout}, legacy)
        d, n_layers, dropout = hp["d_model"], hp["n_layers"], hp["dropout"]
        self.phenotype_names = list(phenotype_names)
        self.hparams_dict = hp
        self.num_genes = len(genome)
        self.embedding = nn.Embedding(self.num_genes, d)
        nn.init.normal_(self.embedding.weight, std=0.1)
        self.encoder = GraphEncoder(d, n_layers)
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
