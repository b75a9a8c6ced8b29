"""DANGO-style baseline: per-graph GraphSAGE embeddings, a channel meta-embedding, HyperSAGNN on the set.

Pipeline (written from the published description, not from its code):

1. A shared learnable gene embedding ``E`` (N x d).
2. For every configured graph ``k`` a 2-layer GraphSAGE (PyG ``SAGEConv``) over ``E`` gives ``H_k``.
   It is trained jointly with an adjacency-reconstruction objective: per step ``recon_edges``
   sampled edges of graph ``k`` (positives) and as many uniformly random gene pairs (negatives)
   are scored by the dot product ``<H_k[i], H_k[j]>`` and a BCE-with-logits loss is returned as
   ``losses["recon/<graph>"]`` (times ``recon_weight``; training mode only).
3. Meta-embedding: a small MLP scores each channel's embedding of every gene; a softmax over the
   channels weights the sum ``Z = sum_k a_k H_k``.
4. HyperSAGNN on each perturbation set S: a static embedding (per-node FFN) and a dynamic one
   (multi-head self-attention among the genes of S); the squared difference per node goes
   through a final ``Linear(d, P)`` (one output head per phenotype) and is averaged over S.

The GNNs run once per step on the wild-type graphs (never per sample).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import SAGEConv
from torch_geometric.utils import to_dense_batch

from cellformer.data.dataset import PerturbationBatch
from cellformer.genome import Genome
from cellformer.graphs import GraphSet
from cellformer.models.base import ModelOutput, PhenotypeModel
from cellformer.models.baselines.lazy import check_base_genes


def _key(name: str) -> str:
    """A ``ModuleDict``-safe key for a graph name (prefixed: a graph may be called ``modules`` or ``type``)."""
    return "graph_" + re.sub(r"[^0-9A-Za-z_]", "_", name)


class SAGEEncoder(nn.Module):
    """Two ``SAGEConv`` layers with a ReLU between them."""

    def __init__(self, d: int):
        super().__init__()
        self.conv1 = SAGEConv(d, d)
        self.conv2 = SAGEConv(d, d)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x, edge_index)), edge_index)


class HyperSAGNN(nn.Module):
    """Static-vs-dynamic set scorer: ``mean_{i in S} W (dyn_i - static_i)^2 + b``, one column per phenotype."""

    def __init__(self, d: int, heads: int, num_outputs: int):
        super().__init__()
        self.static = nn.Sequential(nn.Linear(d, d), nn.Tanh())
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.out = nn.Linear(d, num_outputs, bias=False)  # per-node score, one column per phenotype
        self.bias = nn.Parameter(torch.zeros(num_outputs))

    def forward(self, x: torch.Tensor, sample: torch.Tensor, batch_size: int) -> torch.Tensor:
        """``x`` (nnz, d) member embeddings, ``sample`` (nnz,) their sample -> (B, P)."""
        dense, mask = to_dense_batch(x, sample, batch_size=batch_size)  # (B, S_max, d), (B, S_max)
        if dense.shape[1] == 0:  # every set empty: only the bias remains
            return self.bias.expand(batch_size, -1)
        static = self.static(dense)
        # samples with an empty set would make every key masked (NaN softmax): let them attend to padding
        pad = ~mask
        pad[~mask.any(1)] = False
        dynamic, _ = self.attn(dense, dense, dense, key_padding_mask=pad, need_weights=False)
        dynamic = torch.tanh(dynamic)
        score = self.out((dynamic - static) ** 2)  # (B, S_max, P)
        keep = mask.unsqueeze(-1).to(score.dtype)
        return (score * keep).sum(1) / keep.sum(1).clamp_min(1.0) + self.bias


class Dango(PhenotypeModel):
    """DANGO-style model (see module docstring).

    Args:
        genome: the genome (``N`` genes; heterologous genes are not supported).
        graphs: one GraphSAGE channel per graph (DANGO uses the STRING channels).
        phenotype_names: output columns.
        d: embedding width.
        heads: attention heads of the HyperSAGNN.
        recon_weight: weight of each graph's reconstruction loss.
        recon_edges: positive edges (and as many negative pairs) sampled per graph and step.
    """

    def __init__(
        self,
        genome: Genome,
        graphs: GraphSet,
        phenotype_names: list[str],
        d: int = 64,
        heads: int = 4,
        recon_weight: float = 1.0,
        recon_edges: int = 1024,
    ):
        super().__init__()
        if len(graphs) == 0:
            raise ValueError("Dango needs at least one graph")
        self.phenotype_names = list(phenotype_names)
        self.hparams_dict = {"d": d, "heads": heads, "recon_weight": recon_weight, "recon_edges": recon_edges}
        self.num_genes = len(genome)
        self.graph_names = list(graphs.names)
        self.recon_weight = recon_weight
        self.recon_edges = recon_edges
        self.embedding = nn.Embedding(self.num_genes, d)
        nn.init.normal_(self.embedding.weight, std=0.1)
        self.gnns = nn.ModuleDict({_key(name): SAGEEncoder(d) for name in self.graph_names})
        self.channel_score = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1, bias=False))
        self.hypersagnn = HyperSAGNN(d, heads, len(self.phenotype_names))
        for k, name in enumerate(self.graph_names):
            ei, _ = graphs[name].edge_index()
            if graphs[name].num_nodes > self.num_genes:
                raise ValueError(f"graph {name!r} has more nodes than the genome has genes")
            self.register_buffer(f"edge_index_{k}", ei, persistent=False)

    def _edge_index(self, k: int) -> torch.Tensor:
        return getattr(self, f"edge_index_{k}")

    def gene_embeddings(self) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Wild-type pass: ``(Z (N, d), channel weights (N, K), per-channel H_k)``."""
        x = self.embedding.weight
        per_channel = [self.gnns[_key(name)](x, self._edge_index(k)) for k, name in enumerate(self.graph_names)]
        stacked = torch.stack(per_channel, dim=1)  # (N, K, d)
        weights = torch.softmax(self.channel_score(stacked).squeeze(-1), dim=1)  # (N, K)
        z = (weights.unsqueeze(-1) * stacked).sum(1)
        return z, weights, per_channel

    def reconstruction_loss(self, h: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """BCE on dot products: sampled edges vs. uniformly random gene pairs."""
        m = edge_index.shape[1]
        if m == 0:
            return h.new_zeros(())
        pos = edge_index[:, torch.randint(m, (self.recon_edges,), device=h.device)]
        neg = torch.randint(self.num_genes, (2, self.recon_edges), device=h.device)
        pairs = torch.cat([pos, neg], dim=1)
        logits = (h[pairs[0]] * h[pairs[1]]).sum(-1).float()
        target = torch.cat([logits.new_ones(self.recon_edges), logits.new_zeros(self.recon_edges)])
        return F.binary_cross_entropy_with_logits(logits, target)

    def forward(self, batch: PerturbationBatch) -> ModelOutput:
        check_base_genes(batch, self.num_genes, "Dango")
        z, weights, per_channel = self.gene_embeddings()
        pred = self.hypersagnn(z[batch.gene_index], batch.batch, batch.num_samples)
        losses = {}
        if self.training and self.recon_weight > 0:
            for k, name in enumerate(self.graph_names):
                losses[f"recon/{name}"] = self.recon_weight * self.reconstruction_loss(
                    per_channel[k], self._edge_index(k)
                )
        sizes = (batch.ptr[1:] - batch.ptr[:-1]).float()
        extras = {
            "channel_weights": weights.detach().mean(0),
            "nodes_per_sample": sizes.mean() if sizes.numel() else torch.tensor(0.0),
            "edges_per_sample": torch.tensor(0.0),
        }
        return ModelOutput(pred=self.unscale(pred), losses=losses, extras=extras)
