"""Gene tokens: what every gene is before the encoder sees it.

``token_i = Linear(standardised sequence features_i) + identity_i + graph context_i + Linear(record inputs_i)``

* **Sequence features** (:mod:`cellformer.genome.sequence`, from the coding sequence): standardised with the
  base genome's statistics over the genes that have a sequence; genes without one read zeros. A
  heterologous gene is embedded by the same projection.
* **Identity**: a learned vector per gene, or the learned *unknown-gene* vector for added genes, genes seen
  in no training record (their own vector was never trained) and, while training, an ``identity_dropout``
  share of genes (drawn from the model's generator), so the model learns to represent a gene without it.
* **Graph context** (``graph_inputs``): per input graph, neighbour means of the identities over 1..``hops``
  hops through their own linear maps, ``Σ_k Σ_h W_kh (Ã_k^h E')_i``, plus a fixed regularised spectral
  encoding (:func:`structural_encoding`) through one linear map.
* **Record inputs**: per-gene values computed from the training records (e.g. the neighbours' single
  mutants, :class:`~cellformer.models.record_features.RecordFeatures`), through one linear map.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from cellformer.graphs import GraphSet


class MeanOperator(nn.Module):
    """COO ``(row, col, val)`` of the row-normalised symmetric adjacency ``D⁻¹(A + Aᵀ)`` without added genes:
    ``(Ã x)_i`` is the mean of ``x`` over gene i's neighbours (0 without neighbours). Rebuilt from the graph."""

    def __init__(self, graph, added: np.ndarray):
        super().__init__()
        n = len(added)
        adj = graph.adj if graph.num_nodes == n else graph.with_num_nodes(n).adj
        adj = sp.csr_matrix(adj + adj.T) if graph.directed else sp.csr_matrix(adj)
        keep = sp.diags((~np.asarray(added, dtype=bool)).astype(np.float32))
        adj = sp.coo_matrix(keep @ adj @ keep)
        deg = np.asarray(adj.sum(axis=1)).ravel()
        inv = np.divide(1.0, deg, out=np.zeros_like(deg), where=deg > 0)
        index = torch.from_numpy(np.stack([adj.row, adj.col]).astype(np.int64))
        values = torch.from_numpy((adj.data * inv[adj.row]).astype(np.float32))
        matrix = torch.sparse_coo_tensor(index, values, (n, n), check_invariants=False).coalesce()
        # Dense buffers (DDP broadcasts module buffers and has no sparse support); the COO view is rebuilt
        # per call from already-coalesced indices, which costs no copy.
        self.register_buffer("index", matrix.indices(), persistent=False)
        self.register_buffer("values", matrix.values(), persistent=False)
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        matrix = torch.sparse_coo_tensor(
            self.index, self.values, (self.n, self.n), is_coalesced=True, check_invariants=False
        )
        with torch.autocast(x.device.type, enabled=False):  # sparse kernels run in float32
            return torch.sparse.mm(matrix, x.float()).to(x.dtype)


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


def feature_scaling(features: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and sd (sd 1 where constant) of the features of the base genome's genes that have
    any non-zero feature (a coding sequence)."""
    rows = features[known & np.any(features != 0, axis=1)]
    if not len(rows):
        return np.zeros(features.shape[1], np.float32), np.ones(features.shape[1], np.float32)
    sd = rows.std(axis=0)
    return rows.mean(axis=0).astype(np.float32), np.where(sd > 1e-8, sd, 1.0).astype(np.float32)


class GeneTokens(nn.Module):
    """The (N, d) gene tokens of the base genome and the tokens of added genes (see the module docstring).

    Args:
        features: (N, F) sequence features of the genome (zeros for genes without a sequence).
        added: (N,) mask of added genes (no identity, no graph edges).
        graphs: the data's graphs; ``graph_inputs`` build the graph context.
        d_model, input_hops, structural_dim: sizes.
        record_width: width of the per-gene record inputs (0 for none).
    """

    def __init__(
        self,
        features: np.ndarray,
        added: np.ndarray,
        graphs: GraphSet,
        graph_inputs: Sequence[str],
        d_model: int,
        input_hops: int,
        structural_dim: int,
        record_width: int = 0,
    ):
        super().__init__()
        n, f = features.shape
        self.num_genes, self.input_hops = n, input_hops
        mean, std = feature_scaling(features, ~added)
        self.register_buffer("feature_mean", torch.from_numpy(mean))
        self.register_buffer("feature_std", torch.from_numpy(std))
        self.register_buffer("features", torch.from_numpy(features.copy()))
        self.register_buffer("known", torch.from_numpy(~added))
        # genes that occur in training records (all until the model is fitted); saved with the weights
        self.register_buffer("seen", torch.ones(n, dtype=torch.bool))
        self.operators = nn.ModuleList(MeanOperator(graphs[name], added) for name in graph_inputs)
        struct = structural_encoding([graphs[name] for name in graph_inputs], n, structural_dim)
        self.register_buffer("structure", torch.from_numpy(struct))  # fixed features, saved with the weights
        self.feature_proj = nn.Linear(f, d_model)
        self.gene_embed = nn.Embedding(n, d_model)
        self.unknown_gene = nn.Parameter(torch.zeros(d_model))
        n_hop = len(graph_inputs) * input_hops
        self.hop_proj = nn.ModuleList(nn.Linear(d_model, d_model, bias=False) for _ in range(n_hop))
        self.structure_proj = nn.Linear(struct.shape[1], d_model) if struct.shape[1] else None
        self.record_proj = nn.Linear(record_width, d_model) if record_width else None

    def sequence(self, features: torch.Tensor) -> torch.Tensor:
        """``Linear(standardised features)``; rows without a sequence (all zeros) stay zero before the bias."""
        has = (features != 0).any(-1, keepdim=True)
        z = torch.where(has, (features - self.feature_mean) / self.feature_std, torch.zeros_like(features))
        return self.feature_proj(z)

    def identities(
        self, dropout: float, mask_unseen: bool, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, d) identity part of every token and the (N,) genes dropped in this pass (None without dropout).

        ``dropout`` > 0 (training): that share of genes, drawn from ``generator``, reads the unknown-gene vector.
        """
        use = self.known & self.seen if mask_unseen else self.known.clone()
        dropped = None
        if dropout > 0:
            keep = (torch.rand(self.num_genes, generator=generator) >= dropout).to(use.device)
            use, dropped = use & keep, ~keep
        return torch.where(use[:, None], self.gene_embed.weight, self.unknown_gene), dropped

    def forward(self, identity: torch.Tensor, record_inputs: torch.Tensor | None = None) -> torch.Tensor:
        """(N, d) base-genome tokens from the identities (and the per-gene record inputs)."""
        out = self.sequence(self.features) + identity
        if self.structure_proj is not None:
            out = out + self.structure_proj(self.structure)
        if self.record_proj is not None and record_inputs is not None:
            out = out + self.record_proj(record_inputs)
        for k, op in enumerate(self.operators):
            x = identity
            for h in range(self.input_hops):
                x = op(x)  # Ã x: the mean over neighbours
                out = out + self.hop_proj[k * self.input_hops + h](x)
        return out

    def added(self, features: torch.Tensor) -> torch.Tensor:
        """(n, d) tokens of added genes: their sequence features and the unknown-gene vector."""
        return self.sequence(features.to(self.features)) + self.unknown_gene
