"""NeighborSubgraph: a GNN on the k-hop neighbourhood of the perturbed genes, per sample.

For each sample the node set is the k-hop neighbourhood of S in the union of the configured graphs
(treated as undirected), the same set ``torch_geometric.utils.k_hop_subgraph`` returns (tested against
it and networkx). Instead of calling ``k_hop_subgraph`` once per sample we expand all B frontiers at
once with a sparse ``(N, N) @ (N, B)`` product per hop, then take the induced edges with a ``(B, E)``
mask and relabel nodes by a cumulative sum, giving one disjoint PyG-style batch graph. Node features
are a learnable gene-identity embedding plus a learned "perturbed" flag embedding; two ``GraphConv``
layers (mean over neighbours, multi-edges weighted by how many graphs contain them); the readout is
``[mean over subgraph nodes, mean over perturbed nodes]`` -> MLP.
"""

from __future__ import annotations

import torch
from torch import nn

from cellformer.data.dataset import PerturbationBatch
from cellformer.genome import Genome
from cellformer.graphs import GraphSet
from cellformer.models.base import ModelOutput, PhenotypeModel
from cellformer.models.baselines.gnn import (
    GraphEncoder,
    check_base_genes,
    mean_adjacency,
    membership,
    resolve_hparams,
    sorted_csr,
    undirected_union,
)


class NeighborSubgraph(PhenotypeModel):
    """k-hop subgraph GNN (k = ``hops``).

    Args:
        genome: the genome (``N`` genes; heterologous genes are not supported).
        graphs: graphs whose undirected union defines the neighbourhoods and the message passing.
        phenotype_names: output columns.
        hops: neighbourhood radius k (1, 2 or 3 in the benchmarks; any k >= 0 works).
        d_model: embedding / hidden width (formerly ``d``).
        n_layers: GNN layers (formerly ``num_layers``).
        dropout: dropout in the output MLP.
    """

    def __init__(
        self,
        genome: Genome,
        graphs: GraphSet,
        phenotype_names: list[str],
        hops: int = 1,
        d_model: int = 64,
        n_layers: int = 2,
        dropout: float = 0.0,
        **legacy,
    ):
        super().__init__()
        if hops < 0:
            raise ValueError(f"hops must be >= 0, got {hops}")
        given = {"hops": hops, "d_model": d_model, "n_layers": n_layers, "dropout": dropout}
        hp = resolve_hparams("neighbor", given, legacy)
        d, n_layers, dropout = hp["d_model"], hp["n_layers"], hp["dropout"]
        self.phenotype_names = list(phenotype_names)
        self.hparams_dict = hp
        self.hops = hops
        self.num_genes = len(genome)
        self.id_embedding = nn.Embedding(self.num_genes, d)
        self.flag_embedding = nn.Embedding(2, d)
        nn.init.normal_(self.id_embedding.weight, std=0.1)
        nn.init.normal_(self.flag_embedding.weight, std=0.1)
        self.encoder = GraphEncoder(d, n_layers)
        self.head = nn.Sequential(
            nn.Linear(2 * d, d), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d, len(self.phenotype_names))
        )
        ei, w = undirected_union(graphs, self.num_genes)
        self.register_buffer("row", ei[0].contiguous(), persistent=False)  # symmetric: row = message target
        self.register_buffer("col", ei[1].contiguous(), persistent=False)
        self.register_buffer("weight", w.float(), persistent=False)

    @torch.no_grad()
    def k_hop_mask(self, in_s: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` bool: genes within ``hops`` of each sample's perturbed set (S included)."""
        mask = in_s.clone()
        if self.hops == 0 or self.row.numel() == 0:
            return mask
        ones = torch.ones(self.row.numel(), device=self.row.device)
        adj = sorted_csr(self.row, self.col, ones, self.num_genes)
        for _ in range(self.hops):
            reached = torch.sparse.mm(adj, mask.t().float()).t() > 0
            mask = mask | reached
        return mask

    def subgraphs(self, in_s: torch.Tensor) -> dict[str, torch.Tensor]:
        """The batched disjoint graph of the B k-hop subgraphs.

        Returns ``gene`` (n_total,) original gene of each node, ``sample`` (n_total,) its sample,
        ``perturbed`` (n_total,) bool, ``edge_index`` (2, e_total) relabelled (sorted by target) and
        ``edge_weight`` (e_total,).
        """
        bsz, n = in_s.shape
        mask = self.k_hop_mask(in_s)
        flat = mask.reshape(-1)
        node = flat.nonzero(as_tuple=True)[0]
        new_id = torch.cumsum(flat.long(), 0) - 1
        keep = mask[:, self.row] & mask[:, self.col]  # (B, E): both ends in the subgraph
        b, e = keep.nonzero(as_tuple=True)
        rows = new_id[b * n + self.row[e]]
        cols = new_id[b * n + self.col[e]]
        return {
            "gene": node % n,
            "sample": node // n,
            "perturbed": in_s.reshape(-1)[node],
            "edge_index": torch.stack([cols, rows]),  # PyG convention: [source, target]
            "edge_weight": self.weight[e],
        }

    def forward(self, batch: PerturbationBatch) -> ModelOutput:
        check_base_genes(batch, self.num_genes, "NeighborSubgraph")
        bsz = batch.num_samples
        in_s = membership(batch, self.num_genes)
        sg = self.subgraphs(in_s)
        n_total = sg["gene"].numel()
        x = self.id_embedding(sg["gene"]) + self.flag_embedding(sg["perturbed"].long())
        # symmetric edge set: the listing sorted by target, read as [source, target], is also sorted by source
        src, dst, w = sg["edge_index"][0], sg["edge_index"][1], sg["edge_weight"]
        adj = mean_adjacency((dst, src, w), (dst, src, w), n_total)
        h = self.encoder(x, adj)
        d = h.shape[1]
        sample = sg["sample"]
        count = torch.zeros(bsz, device=h.device).index_add_(0, sample, torch.ones_like(sample, dtype=h.dtype))
        pool_all = torch.zeros(bsz, d, device=h.device, dtype=h.dtype).index_add_(0, sample, h)
        pool_all = pool_all / count.clamp_min(1.0).unsqueeze(1)
        pert = sg["perturbed"].to(h.dtype)
        count_s = torch.zeros(bsz, device=h.device).index_add_(0, sample, pert)
        pool_s = torch.zeros(bsz, d, device=h.device, dtype=h.dtype).index_add_(0, sample, h * pert.unsqueeze(1))
        pool_s = pool_s / count_s.clamp_min(1.0).unsqueeze(1)
        pred = self.head(torch.cat([pool_all, pool_s], dim=1))
        extras = {
            "nodes_per_sample": torch.tensor(n_total / max(bsz, 1)),
            "edges_per_sample": torch.tensor(sg["edge_index"].shape[1] / max(bsz, 1)),
        }
        return ModelOutput(pred=self.unscale(pred), extras=extras)
