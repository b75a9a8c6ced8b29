"""DANGO (Zhang, Ma & Ma 2020, "DANGO: predicting higher-order genetic interactions"), as the data allows.

Pipeline, written from the published description:

1. **One GNN per STRING channel**, pretrained by adjacency reconstruction. Every channel ``k`` has its
   own learnable gene embedding ``E_k`` (N x d) and an ``n_layers`` weighted-mean GraphSAGE encoder
   (``h_i' = act(W [h_i, sum_j w_ij h_j / sum_j w_ij])``, swish activation; PyG ``GraphConv`` through
   the shared GNN kit) giving ``H_k``. A linear decoder ``Linear(d, N)`` maps ``H_k[i]`` to the
   reconstruction ``â_i`` of row ``i`` of the channel's weighted adjacency; the loss is
   ``sum_j c_ij (â_ij - a_ij)^2`` averaged over sampled rows, with ``c_ij = 1`` on edges and
   ``recon_zero_weight`` (DANGO's λ) on zeros.

   *Schedule.* ``fit_records`` (called once when ``fit`` starts) pretrains every channel alone for
   ``pretrain_steps`` Adam steps on this loss. Afterwards the GNNs are fine-tuned with the phenotype
   model, and the reconstruction stays as an auxiliary term with the small weight ``recon_weight``
   (returned as ``losses["recon/<graph>"]`` in training mode; the training loop logs it apart from
   the phenotype loss, which alone drives checkpoint selection).
2. **Meta-embedding**: ``a_ik = softmax_k(w^T H_k[i])``, ``Z_i = sum_k a_ik H_k[i]``.
3. **HyperSAGNN** on each gene set S (a hyperedge): static embedding ``s_i = W_s W_v LN(z_i)``;
   dynamic embedding from multi-head self-attention among the genes of S with a **diagonal mask** (a
   gene attends to the *other* members only, never to itself), followed by a ReZero position-wise
   feed-forward; both are layer-normalised, and ``sum_{i in S} Linear((dyn_i - s_i)^2)`` is the
   prediction (one output column per phenotype, in standardised units, then unscaled).

By default the channels are every shipped STRING channel present in the data context
(:data:`cellformer.defaults.STRING_CHANNELS`); when the context has none (e.g. a synthetic graph),
every context graph is a channel. The GNNs run once per step on the wild-type graphs (never per
sample); during evaluation epochs the gene embeddings are computed once and reused.

Deviations from the paper that remain:

* 4 STRING v9.1 channels ship (neighborhood, database, co-occurrence, fusion); the paper's
  co-expression and experimental channels are not shipped, so DANGO sees 4 of its 6 networks.
* λ (``recon_zero_weight``) is one value for every channel (the paper set it per network from the
  share of zeros that became edges between STRING v9.1 and v11; 1 for all shipped channels there).
* Pretraining is a fixed number of steps on sampled rows (the paper trained to convergence on full
  rows), and the reconstruction term stays in the fine-tuning loss with a small weight.
* The paper trained an ensemble of models on trigenic scores only; here one model predicts every
  phenotype of the dataset (fitness, ε, τ) from sets of any size. Singles have no other member to
  attend to: their attention output is zero, so their prediction comes from the static embedding.
* No neighbour sampling in the GraphSAGE layers (all neighbours are averaged; the graphs are small).
* Hyper-parameters (width, heads, dropout, learning rate) follow this package's configs, not the
  paper's search.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import nn
from torch_geometric.utils import to_dense_batch

from cellformer.data.dataset import PerturbationBatch, PerturbationData
from cellformer.defaults import STRING_CHANNELS
from cellformer.errors import UserError
from cellformer.genome import Genome
from cellformer.graphs import GraphSet
from cellformer.models.base import ModelOutput, PhenotypeModel
from cellformer.models.baselines.gnn import (
    GraphEncoder,
    check_base_genes,
    graph_key,
    graph_mean_adjacency,
    resolve_hparams,
)


def default_channels(graphs: GraphSet) -> list[str]:
    """The STRING channels among ``graphs`` (in STRING order), or every graph when there are none."""
    string = [name for name in STRING_CHANNELS if name in graphs]
    return string or list(graphs.names)


class ChannelGNN(nn.Module):
    """One channel: gene embedding -> GraphSAGE encoder -> (embeddings, adjacency-row decoder)."""

    def __init__(self, num_genes: int, d_model: int, n_layers: int):
        super().__init__()
        self.embedding = nn.Embedding(num_genes, d_model)
        nn.init.normal_(self.embedding.weight, std=0.1)
        self.encoder = GraphEncoder(d_model, n_layers, act=nn.SiLU(), act_last=True)
        self.decoder = nn.Linear(d_model, num_genes)

    def forward(self, adj) -> torch.Tensor:
        return self.encoder(self.embedding.weight, adj)


class HyperSAGNN(nn.Module):
    """DANGO's hyperedge scorer with a diagonal attention mask (see module docstring).

    Args:
        d_model: width; n_heads: attention heads (``d_model`` divisible by it); dropout: on the
            attention / static projections and before the output layer; num_outputs: phenotypes.
    """

    def __init__(self, d_model: int, n_heads: int, num_outputs: int, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads:
            raise UserError(f"dango: d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.norm_q, self.norm_k, self.norm_v = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.w_q = nn.Linear(d_model, d_model, bias=False)
        self.w_k = nn.Linear(d_model, d_model, bias=False)
        self.w_v = nn.Linear(d_model, d_model, bias=False)
        self.out_dynamic = nn.Linear(d_model, d_model, bias=False)
        self.out_static = nn.Linear(d_model, d_model, bias=False)
        # position-wise feed-forward on the dynamic embedding, ReZero residual (alpha starts at 0)
        self.ff_norm = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, d_model), nn.SiLU(), nn.Linear(d_model, d_model))
        self.alpha = nn.Parameter(torch.zeros(1))
        self.norm_dynamic, self.norm_static = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(d_model, num_outputs)

    def attend(self, query: torch.Tensor, key_value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked multi-head attention ``(B, L, d)`` of ``query`` rows over the *other* rows of ``key_value``.

        ``mask`` (B, L) marks real members (the rest is padding). A member with no other member gets 0.
        """
        b, length, d = query.shape
        q = self.w_q(self.norm_q(query)).view(b, length, self.n_heads, self.d_head).transpose(1, 2)
        k = self.w_k(self.norm_k(key_value)).view(b, length, self.n_heads, self.d_head).transpose(1, 2)
        v = self.w_v(self.norm_v(key_value)).view(b, length, self.n_heads, self.d_head).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)  # (B, H, L, L)
        eye = torch.eye(length, dtype=torch.bool, device=query.device)
        allowed = mask[:, None, None, :] & ~eye  # the diagonal mask: never attend to oneself
        scores = scores.masked_fill(~allowed, -1e9)
        attn = torch.softmax(scores, dim=-1) * allowed.any(-1, keepdim=True)  # no key at all -> 0
        out = (attn @ v).transpose(1, 2).reshape(b, length, d)
        return self.dropout(self.out_dynamic(out))

    def dynamic(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Dynamic embeddings: diagonal-masked attention, then the ReZero feed-forward."""
        h = self.attend(x, x, mask)
        return h + self.alpha * self.ff(self.ff_norm(h))

    def static(self, x: torch.Tensor) -> torch.Tensor:
        """Static embeddings: a per-gene projection (through the attention's value map)."""
        return self.dropout(self.out_static(self.w_v(self.norm_v(x))))

    def forward(self, x: torch.Tensor, sample: torch.Tensor, batch_size: int) -> torch.Tensor:
        """``x`` (nnz, d) member embeddings, ``sample`` (nnz,) their sample -> (B, P)."""
        dense, mask = to_dense_batch(x, sample, batch_size=batch_size)  # (B, L, d), (B, L)
        if dense.shape[1] == 0:  # every set empty: only the bias remains
            return x.new_zeros(batch_size, self.out.out_features)
        dyn = self.norm_dynamic(self.dynamic(dense, mask))
        stat = self.norm_static(self.static(dense))
        score = self.out(self.dropout((dyn - stat) ** 2))  # (B, L, P)
        return (score * mask.unsqueeze(-1).to(score.dtype)).sum(1)


class Dango(PhenotypeModel):
    """DANGO (see module docstring).

    Args:
        genome: the genome (``N`` genes; heterologous genes are not supported).
        graphs: the context's graphs.
        phenotype_names: output columns.
        d_model: embedding width (formerly ``d``).
        n_layers: GraphSAGE layers per channel.
        n_heads: attention heads of the HyperSAGNN (formerly ``heads``).
        dropout: dropout in the HyperSAGNN.
        graph_names: the channels (default: every STRING channel in ``graphs``, else every graph).
        pretrain_steps: reconstruction-only Adam steps per channel when ``fit`` starts (0: none).
        pretrain_lr: their learning rate.
        recon_rows: adjacency rows sampled per channel and step (pretraining and auxiliary term).
        recon_weight: weight of the auxiliary reconstruction term after pretraining.
        recon_zero_weight: DANGO's λ, the weight of the zero entries of the adjacency.
    """

    def __init__(
        self,
        genome: Genome,
        graphs: GraphSet,
        phenotype_names: list[str],
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        dropout: float = 0.1,
        graph_names: list[str] | None = None,
        pretrain_steps: int = 100,
        pretrain_lr: float = 5e-3,
        recon_rows: int = 128,
        recon_weight: float = 0.1,
        recon_zero_weight: float = 1.0,
        **legacy,
    ):
        super().__init__()
        if legacy.pop("recon_edges", None) is not None:
            warnings.warn(
                "dango: 'recon_edges' is gone; reconstruction samples 'recon_rows' adjacency rows",
                DeprecationWarning,
                stacklevel=2,
            )
        given = {
            "d_model": d_model,
            "n_layers": n_layers,
            "n_heads": n_heads,
            "dropout": dropout,
            "graph_names": graph_names,
            "pretrain_steps": pretrain_steps,
            "pretrain_lr": pretrain_lr,
            "recon_rows": recon_rows,
            "recon_weight": recon_weight,
            "recon_zero_weight": recon_zero_weight,
        }
        hp = resolve_hparams("dango", given, legacy)
        if len(graphs) == 0:
            raise UserError("dango needs at least one graph (its STRING channels)")
        names = default_channels(graphs) if hp["graph_names"] is None else list(hp["graph_names"])
        for name in names:
            if name not in graphs:
                raise UserError(f"dango: channel {name!r} is not among the data's graphs {graphs.names}")
        self.phenotype_names = list(phenotype_names)
        self.hparams_dict = hp
        self.num_genes = len(genome)
        self.graph_names = names
        d = hp["d_model"]
        self.pretrain_steps, self.pretrain_lr = hp["pretrain_steps"], hp["pretrain_lr"]
        self.recon_rows, self.recon_weight = hp["recon_rows"], hp["recon_weight"]
        self.recon_zero_weight = hp["recon_zero_weight"]
        self.channels = nn.ModuleDict({graph_key(n): ChannelGNN(self.num_genes, d, hp["n_layers"]) for n in names})
        self.channel_score = nn.Linear(d, 1)
        self.hypersagnn = HyperSAGNN(d, hp["n_heads"], len(self.phenotype_names), hp["dropout"])
        for k, name in enumerate(names):
            g = graphs[name]
            if g.num_nodes > self.num_genes:
                raise UserError(f"graph {name!r} has more nodes than the genome has genes")
            a = g.adj.tocoo()
            # messages src -> dst; adjacency row i (for reconstruction) lists i's out-edges
            ei = torch.as_tensor(np.stack([a.row, a.col]), dtype=torch.long)
            w = torch.as_tensor(a.data, dtype=torch.float32)
            self.register_buffer(f"edge_index_{k}", ei, persistent=False)
            self.register_buffer(f"edge_weight_{k}", w, persistent=False)
        self._adj_cache: dict[int, object] = {}
        self._cache_enabled = False
        self._cached: tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]] | None = None

    # ------------------------------------------------------------------ graph pieces
    def _adjacency(self, k: int):
        """The channel's row-normalised paired CSR adjacency (messages src -> dst), built once per device."""
        ei = getattr(self, f"edge_index_{k}")
        key = (k, ei.device)
        if key not in self._adj_cache:
            self._adj_cache[key] = graph_mean_adjacency(ei, getattr(self, f"edge_weight_{k}"), self.num_genes)
        return self._adj_cache[key]

    def channel_embeddings(self) -> list[torch.Tensor]:
        """``H_k`` (N, d) of every channel."""
        return [self.channels[graph_key(n)](self._adjacency(k)) for k, n in enumerate(self.graph_names)]

    def gene_embeddings(self) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Wild-type pass: ``(Z (N, d), channel weights (N, K), per-channel H_k)``."""
        per_channel = self.channel_embeddings()
        stacked = torch.stack(per_channel, dim=1)  # (N, K, d)
        weights = torch.softmax(self.channel_score(stacked).squeeze(-1), dim=1)  # (N, K)
        z = (weights.unsqueeze(-1) * stacked).sum(1)
        return z, weights, per_channel

    def reconstruction_loss(self, k: int, h: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Weighted squared error of reconstructing adjacency rows of channel ``k`` from ``H_k``.

        ``rows``: the rows to reconstruct (default ``recon_rows`` sampled uniformly); the loss is the
        per-row sum ``sum_j c_ij (â_ij - a_ij)^2`` averaged over the rows.
        """
        n = self.num_genes
        if rows is None:
            rows = torch.randint(n, (min(self.recon_rows, n),), device=h.device)
        decoder = self.channels[graph_key(self.graph_names[k])].decoder
        recon = decoder(h[rows]).float()  # (R, N)
        ei, w = getattr(self, f"edge_index_{k}"), getattr(self, f"edge_weight_{k}")
        # dense target rows: scatter the edges whose source is a sampled row
        pos = torch.full((n,), -1, dtype=torch.long, device=h.device)
        pos[rows] = torch.arange(rows.numel(), device=h.device)  # a repeated row keeps one position
        hit = pos[ei[0]] >= 0
        target = torch.zeros_like(recon)
        target[pos[ei[0][hit]], ei[1][hit]] = w[hit]
        rows_kept = pos[rows] == torch.arange(rows.numel(), device=h.device)
        sq = (recon - target) ** 2
        if self.recon_zero_weight != 1.0:
            sq = sq * torch.where(target > 0, 1.0, self.recon_zero_weight)
        err = sq.sum(1)
        return err[rows_kept].mean()

    # ------------------------------------------------------------------ pretraining
    def fit_records(self, data: PerturbationData, train_rows: np.ndarray) -> None:
        """Pretrain every channel's GNN by adjacency reconstruction (the records are not used)."""
        self.pretrain()

    def pretrain(self, steps: int | None = None) -> list[float]:
        """``steps`` (default ``pretrain_steps``) Adam steps on the reconstruction losses alone.

        Each channel's embedding, encoder and decoder only see their own loss, so the channels are
        pretrained independently (as in the paper). Returns the summed loss per step.
        """
        steps = self.pretrain_steps if steps is None else steps
        if steps <= 0:
            return []
        was_training = self.training
        self.train()
        opt = torch.optim.Adam(self.channels.parameters(), lr=self.pretrain_lr)
        history = []
        for _ in range(steps):
            per_channel = self.channel_embeddings()
            loss = sum(self.reconstruction_loss(k, h) for k, h in enumerate(per_channel))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history.append(loss.item())
        self.train(was_training)
        self._cached = None
        return history

    # ------------------------------------------------------------------ forward
    def set_encoding_cache(self, enabled: bool) -> None:
        """Reuse one wild-type pass during an evaluation epoch (the weights do not change)."""
        self._cache_enabled = enabled
        self._cached = None

    def forward(self, batch: PerturbationBatch) -> ModelOutput:
        check_base_genes(batch, self.num_genes, "Dango")
        if self._cache_enabled and not self.training and self._cached is not None:
            z, weights, per_channel = self._cached
        else:
            z, weights, per_channel = self.gene_embeddings()
            if self._cache_enabled and not self.training:
                self._cached = (z, weights, per_channel)
        pred = self.hypersagnn(z[batch.gene_index], batch.batch, batch.num_samples)
        losses = {}
        if self.training and self.recon_weight > 0:
            for k, name in enumerate(self.graph_names):
                losses[f"recon/{name}"] = self.recon_weight * self.reconstruction_loss(k, per_channel[k])
        sizes = (batch.ptr[1:] - batch.ptr[:-1]).float()
        extras = {
            "channel_weights": weights.detach().mean(0),
            "nodes_per_sample": sizes.mean() if sizes.numel() else torch.tensor(0.0),
            "edges_per_sample": torch.tensor(0.0),
        }
        return ModelOutput(pred=self.unscale(pred), losses=losses, extras=extras)
