"""The GNN kit shared by the graph baselines (LazySubgraph, NeighborSubgraph, DANGO, graph smoothing).

* batch helpers: :func:`check_base_genes`, :func:`membership`;
* graph helpers: :func:`undirected_union` (the unique undirected edges of a union of graphs, with
  multiplicity), :func:`graph_key` (a ``ModuleDict``-safe key for a graph name);
* message passing: :func:`mean_adjacency` builds a row-normalised sparse CSR adjacency together with
  its transpose (:class:`PairedAdjacency`), :func:`spmm` multiplies by it with the transpose in the
  backward pass, :class:`MeanGraphConv` is PyG's ``GraphConv`` aggregating through that product, and
  :class:`GraphEncoder` stacks ``n_layers`` of them;
* :func:`resolve_hparams`: the common hyper-parameter names (``d_model``, ``n_layers``, ``n_heads``,
  ``dropout``), with the former names (``d``, ``num_layers``, ``heads``) still accepted.

The CSR matrices come from PyG's ``to_torch_csr_tensor``; ``GraphConv`` supplies the layer maths.
What is kept here is the pairing with the transpose: ``torch.sparse.mm`` would transpose a CSR matrix
in every backward pass (a full sort of the edges), which dominates the step time of a full-graph GNN.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch_geometric.nn import GraphConv
from torch_geometric.utils import coalesce, to_torch_csr_tensor

from cellformer.data.dataset import PerturbationBatch
from cellformer.errors import UserError, did_you_mean
from cellformer.graphs import GraphSet

#: former hyper-parameter name -> the common one
LEGACY_HPARAMS = {"d": "d_model", "num_layers": "n_layers", "heads": "n_heads"}


def resolve_hparams(model: str, given: dict, legacy: dict) -> dict:
    """Map the former names in ``legacy`` (``d``, ``num_layers``, ``heads``) onto the common names.

    ``given`` holds the constructor's values of the common names; a former name overrides its
    default (with a ``DeprecationWarning``) unless the common name is also given explicitly.
    Anything else in ``legacy`` is an unknown hyper-parameter (a :class:`UserError` with close matches).
    """
    out = dict(given)
    for old, value in legacy.items():
        new = LEGACY_HPARAMS.get(old)
        if new is None or new not in given:
            choices = [*given, *(k for k, v in LEGACY_HPARAMS.items() if v in given)]
            raise UserError(
                f"{model}: unknown hyper-parameter {old!r}; known: {', '.join(given)}{did_you_mean(old, choices)}"
            )
        warnings.warn(f"{model}: hyper-parameter {old!r} is now called {new!r}", DeprecationWarning, stacklevel=3)
        out[new] = value
    return out


def check_base_genes(batch: PerturbationBatch, num_genes: int, model: str) -> None:
    """Graph baselines only know the base genome: reject heterologous (added) genes clearly."""
    if batch.gene_index.numel() and int(batch.gene_index.max()) >= num_genes:
        raise ValueError(f"{model} does not support heterologous (added) genes; use CellFormer for those samples")


def membership(batch: PerturbationBatch, num_genes: int) -> torch.Tensor:
    """``(B, N)`` bool: ``in_s[b, i]`` is True when gene ``i`` is perturbed in sample ``b``."""
    in_s = torch.zeros(batch.num_samples, num_genes, dtype=torch.bool, device=batch.gene_index.device)
    in_s[batch.batch, batch.gene_index] = True
    return in_s


def graph_key(name: str) -> str:
    """A ``ModuleDict``-safe key for a graph name (prefixed: a graph may be called ``modules`` or ``type``)."""
    return "graph_" + re.sub(r"[^0-9A-Za-z_]", "_", name)


def undirected_union(graphs: GraphSet, num_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique undirected edges of the union (both directions), sorted by (row, col), with multiplicity.

    The multiplicity counts in how many graphs (and directions, for directed graphs) a pair occurs.
    """
    if len(graphs) == 0:
        return torch.zeros(2, 0, dtype=torch.long), torch.zeros(0)
    ei, _ = graphs.union_edge_index()
    both = torch.cat([ei, ei.flip(0)], dim=1)
    w = torch.ones(both.shape[1])
    both, w = coalesce(both, w, num_nodes=num_nodes, reduce="sum")  # sorted by (row, col)
    return both, w / 2.0


def sorted_csr(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """A ``(num_nodes, num_nodes)`` sparse CSR tensor from COO entries whose ``rows`` are already sorted.

    Repeated entries stay separate (a product sums them, as a multigraph's parallel edges should).
    """
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return to_torch_csr_tensor(torch.stack([rows, cols]), values, size=num_nodes, is_coalesced=True)


@dataclass
class PairedAdjacency:
    """A sparse CSR matrix ``A`` together with its transpose ``At`` (built once, both row-sorted)."""

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


def graph_mean_adjacency(edge_index: torch.Tensor, weight: torch.Tensor | None, num_nodes: int) -> PairedAdjacency:
    """:func:`mean_adjacency` of one ``(2, E)`` ``[src, dst]`` edge list in any order (sorted here)."""
    src, dst = edge_index[0], edge_index[1]
    by_dst = torch.argsort(dst * num_nodes + src)
    by_src = torch.argsort(src * num_nodes + dst)
    w_a = None if weight is None else weight[by_dst]
    w_b = None if weight is None else weight[by_src]
    return mean_adjacency((dst[by_dst], src[by_dst], w_a), (src[by_src], dst[by_src], w_b), num_nodes)


class MeanGraphConv(GraphConv):
    """PyG ``GraphConv`` (``lin_rel(aggregate) + lin_root(x)``) whose aggregation is a paired sparse product.

    Same parameters and maths as ``GraphConv`` with sum aggregation over the adjacency's values
    (here row-normalised, i.e. a weighted mean over in-neighbours). ``lin_rel(mean) + lin_root(x)`` is
    GraphSAGE's ``W [x, mean]`` written as two matrices.
    """

    def forward(self, x: torch.Tensor, adj: PairedAdjacency) -> torch.Tensor:  # type: ignore[override]
        # the sparse aggregation runs in the adjacency's dtype (fp32); under autocast the linear maps still
        # run in bf16
        agg = spmm(adj, x.to(adj.dtype))
        return self.lin_rel(agg) + self.lin_root(x)


class GraphEncoder(nn.Module):
    """``n_layers`` :class:`MeanGraphConv` layers of width ``d_model`` with an activation between them.

    Args:
        d_model: input, hidden and output width.
        n_layers: number of layers.
        act: the activation (default ReLU).
        act_last: also apply it after the last layer.
    """

    def __init__(
        self,
        d_model: int,
        n_layers: int = 2,
        act: Callable[[torch.Tensor], torch.Tensor] | None = None,
        act_last: bool = False,
    ):
        super().__init__()
        self.convs = nn.ModuleList([MeanGraphConv(d_model, d_model, aggr="add") for _ in range(n_layers)])
        self.act = act if act is not None else nn.ReLU()
        self.act_last = act_last

    def forward(self, x: torch.Tensor, adj: PairedAdjacency) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(x, adj)
            if i < len(self.convs) - 1 or self.act_last:
                x = self.act(x)
        return x
