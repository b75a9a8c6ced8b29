"""Gene graphs over one genome: weighted sparse adjacency (CSR), directed or not."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import networkx as nx
import numpy as np
import scipy.sparse as sp
import torch
from torch_geometric.utils import k_hop_subgraph

from cellformer.errors import UserError, did_you_mean


class UnknownGraphError(UserError, KeyError):
    """A graph name that is not in a :class:`GraphSet` (also a ``KeyError``, as mappings raise)."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])


@dataclass
class GeneGraph:
    """One named graph ``A`` over ``num_nodes`` genes.

    ``adj[i, j]`` is the weight of edge i -> j. Undirected graphs are stored symmetric; self loops
    are not kept. Genes beyond ``adj.shape[0]`` (heterologous genes added later) have no edges.
    """

    name: str
    adj: sp.csr_matrix
    directed: bool = False

    def __post_init__(self) -> None:
        adj = sp.csr_matrix(self.adj, dtype=np.float32)
        adj.setdiag(0)
        adj.eliminate_zeros()
        adj.sort_indices()
        if not self.directed and (abs(adj - adj.T) > 1e-6).nnz:
            raise ValueError(f"graph {self.name!r} is marked undirected but its adjacency is not symmetric")
        self.adj = adj

    @classmethod
    def from_edges(
        cls,
        name: str,
        num_nodes: int,
        src: np.ndarray,
        dst: np.ndarray,
        weight: np.ndarray | None = None,
        directed: bool = False,
    ) -> GeneGraph:
        """Build from edge arrays; undirected edges are symmetrised, duplicates keep the max weight."""
        src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
        w = np.ones(len(src), dtype=np.float32) if weight is None else np.asarray(weight, dtype=np.float32)
        if not directed:
            src, dst, w = np.concatenate([src, dst]), np.concatenate([dst, src]), np.concatenate([w, w])
        keep = src != dst
        src, dst, w = src[keep], dst[keep], w[keep]
        # duplicate edges: keep the largest weight (sort by weight so the last write wins)
        order = np.argsort(w, kind="stable")
        key = src[order] * num_nodes + dst[order]
        _, last = np.unique(key[::-1], return_index=True)
        sel = order[::-1][last]
        adj = sp.csr_matrix((w[sel], (src[sel], dst[sel])), shape=(num_nodes, num_nodes))
        return cls(name, adj, directed)

    # ------------------------------------------------------------------ basic facts
    @property
    def num_nodes(self) -> int:
        return self.adj.shape[0]

    @property
    def num_edges(self) -> int:
        """Edges as listed: undirected edges counted once."""
        return int(self.adj.nnz if self.directed else self.adj.nnz // 2)

    def degree(self) -> np.ndarray:
        """Number of (out-)neighbours of each gene."""
        return np.diff(self.adj.indptr).astype(np.int64)

    def in_degree(self) -> np.ndarray:
        return np.bincount(self.adj.indices, minlength=self.num_nodes).astype(np.int64)

    def degree_stats(self) -> dict[str, float]:
        """Summary of the degree distribution (over all genes of the genome)."""
        d = self.degree()
        nz = d[d > 0]
        return {
            "nodes_with_edges": int((d > 0).sum()),
            "mean_degree": float(d.mean()) if len(d) else 0.0,
            "median_degree_nonzero": float(np.median(nz)) if len(nz) else 0.0,
            "max_degree": int(d.max()) if len(d) else 0,
        }

    def row_normalized(self) -> sp.csr_matrix:
        """``Ã`` with each non-empty row summing to 1 (rows without edges stay 0)."""
        s = np.asarray(self.adj.sum(axis=1)).ravel()
        inv = np.divide(1.0, s, out=np.zeros_like(s), where=s > 0)
        return sp.csr_matrix(sp.diags(inv.astype(np.float32)) @ self.adj)

    def edge_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """PyG ``edge_index`` (2, nnz) and ``edge_weight`` (nnz,); undirected edges appear both ways."""
        coo = self.adj.tocoo()
        ei = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
        return ei, torch.from_numpy(coo.data.astype(np.float32))

    def k_hop(self, nodes: Iterable[int], k: int) -> np.ndarray:
        """Sorted gene indices within ``k`` hops of ``nodes`` (the nodes included), ignoring direction."""
        ei, _ = self.edge_index()
        if not self.directed:
            flow_ei = ei
        else:
            flow_ei = torch.cat([ei, ei.flip(0)], dim=1)
        subset, *_ = k_hop_subgraph(
            torch.as_tensor(list(nodes), dtype=torch.long), k, flow_ei, num_nodes=self.num_nodes
        )
        return subset.numpy()

    def to_networkx(self) -> nx.Graph:
        g = nx.DiGraph() if self.directed else nx.Graph()
        g.add_nodes_from(range(self.num_nodes))
        coo = sp.triu(self.adj).tocoo() if not self.directed else self.adj.tocoo()
        g.add_weighted_edges_from(zip(coo.row.tolist(), coo.col.tolist(), coo.data.tolist(), strict=True))
        return g

    # ------------------------------------------------------------------ controls
    def rewired(self, fraction: float = 1.0, seed: int = 0, name: str | None = None) -> GeneGraph:
        """A degree-preserving randomised copy (the control for graph-prior experiments).

        About ``fraction`` of the edges are moved by random swaps (networkx's ``double_edge_swap`` /
        ``directed_edge_swap``; ``-ln(1 - fraction) * E / k`` swaps of k = 2 (3 directed) edges each):
        1.0 gives a fully randomised graph with the same degree sequence, 0.2 a "noisy" graph keeping
        ~80% of its edges. Every node keeps its (in- and out-) degree; weights travel with the edges.
        """
        if not 0.0 <= fraction <= 1.0:
            raise UserError(f"rewire fraction must be in [0, 1], got {fraction}")
        g = self.to_networkx()
        g.remove_nodes_from([n for n, d in list(g.degree()) if d == 0])
        # a swap moves k random edges (k = 2 undirected, 3 directed), so after S swaps about exp(-k S / E) of the
        # edges are untouched: choose S so that ~`fraction` of the edges move (capped at 95%: fully randomised)
        per_swap = 3 if self.directed else 2
        nswap = int(round(-np.log1p(-min(fraction, 0.95)) * self.num_edges / per_swap))
        if nswap > 0:
            tries = max(100 * nswap, 1000)
            if self.directed:
                nx.directed_edge_swap(g, nswap=nswap, max_tries=tries, seed=seed)
            else:
                nx.double_edge_swap(g, nswap=nswap, max_tries=tries, seed=seed)
        edges = np.array([(u, v) for u, v in g.edges()], dtype=np.int64).reshape(-1, 2)
        # surviving edges keep their weight; the weights of removed edges go, shuffled, to new edges
        old = self.adj if self.directed else sp.triu(self.adj, format="csr")
        src, dst = edges[:, 0], edges[:, 1]
        if not self.directed:
            src, dst = np.minimum(src, dst), np.maximum(src, dst)
        w = np.asarray(old[src, dst]).ravel().astype(np.float32)
        new_mask = w == 0
        kept = sp.csr_matrix((np.ones(len(src)), (src, dst)), shape=old.shape)
        removed = old - old.multiply(kept)
        removed.eliminate_zeros()
        rng = np.random.default_rng(seed)
        w[new_mask] = rng.permutation(removed.data)[: int(new_mask.sum())]
        return GeneGraph.from_edges(name or f"{self.name}_rewired", self.num_nodes, src, dst, w, self.directed)

    def with_num_nodes(self, num_nodes: int) -> GeneGraph:
        """The same edges over a longer gene list (added genes get empty rows and columns)."""
        if num_nodes < self.num_nodes:
            raise ValueError("cannot shrink a graph")
        a = self.adj.tocoo()
        adj = sp.csr_matrix((a.data, (a.row, a.col)), shape=(num_nodes, num_nodes))
        return GeneGraph(self.name, adj, self.directed)


class GraphSet(Mapping[str, GeneGraph]):
    """An ordered, named collection of K graphs over the same genome (by hash)."""

    def __init__(self, graphs: Iterable[GeneGraph], genome_hash: str = ""):
        self._graphs: dict[str, GeneGraph] = {}
        self.genome_hash = genome_hash
        for g in graphs:
            if g.name in self._graphs:
                raise ValueError(f"two graphs are named {g.name!r}")
            if self._graphs and g.num_nodes != next(iter(self._graphs.values())).num_nodes:
                raise ValueError(f"graph {g.name!r} has {g.num_nodes} nodes, the others differ")
            self._graphs[g.name] = g

    def __getitem__(self, name: str) -> GeneGraph:
        try:
            return self._graphs[name]
        except KeyError:
            hint = did_you_mean(str(name), self._graphs, cutoff=0.5)
            raise UnknownGraphError(f"unknown graph {name!r}; available: {', '.join(self._graphs)}{hint}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._graphs)

    def __len__(self) -> int:
        return len(self._graphs)

    @property
    def names(self) -> list[str]:
        return list(self._graphs)

    def select(self, names: Iterable[str]) -> GraphSet:
        """The named graphs only (unknown names raise with the available list)."""
        return GraphSet([self[n] for n in names], self.genome_hash)

    def union_edge_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``edge_index`` of the multigraph (all graphs stacked) and the graph id of each edge."""
        eis, types = [], []
        for k, g in enumerate(self._graphs.values()):
            ei, _ = g.edge_index()
            eis.append(ei)
            types.append(torch.full((ei.shape[1],), k, dtype=torch.long))
        return torch.cat(eis, dim=1), torch.cat(types)

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}: {g.num_edges} edges" for n, g in self._graphs.items())
        return f"GraphSet({inner})"
