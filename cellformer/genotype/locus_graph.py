"""Locus graphs: which loci a graph-tied attention head of the locus CellFormer should attend to.

Three builders, each returning a :class:`~cellformer.graphs.graph.GeneGraph` whose nodes are the L loci:

* :func:`ld_graph` -- linkage: ``|r|`` or ``r²`` between loci, computed on the **training rows only**,
  keeping each locus's ``top_k`` strongest partners above ``min_r2``;
* :func:`gene_graph_loci` -- a gene graph carried to loci through each locus's nearest gene
  (``Loci.gene``): loci i and j are linked with the weight of the edge between their genes (and,
  optionally, with weight 1 when they share a nearest gene);
* a degree-preserving rewired control of either (``rewire`` share of edges, :meth:`GeneGraph.rewired`).

With linkage blocks (:mod:`cellformer.genotype.blocks`) the nodes are the blocks, each represented by
its anchor marker.

:func:`build_locus_graphs` reads the ``locus_graphs`` option of the data module, e.g.::

    locus_graphs:
      ld: {kind: ld, top_k: 8, measure: r2}
      ld_rewired: {kind: ld, top_k: 8, rewire: 1.0, seed: 0}
      string: {kind: gene, graph: string_database, genome: yeast}
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import scipy.sparse as sp

from cellformer.errors import UserError
from cellformer.graphs.graph import GeneGraph

LD_KEYS = {"kind", "top_k", "min_r2", "measure", "rewire", "seed"}
GENE_KEYS = {"kind", "graph", "genome", "same_gene", "rewire", "seed"}


def ld_graph(
    genotypes: np.ndarray, name: str = "ld", top_k: int = 8, min_r2: float = 0.0, measure: str = "r2", block: int = 1024
) -> GeneGraph:
    """Undirected LD graph over the columns of ``genotypes`` (n, L) in {-1, 0, +1} (0 = missing → mean).

    Each locus keeps its ``top_k`` partners by r² among those with ``r² ≥ min_r2`` (the union over both
    ends is kept); the edge weight is ``r²`` or ``|r|`` (``measure``). Correlations are computed in
    blocks of ``block`` loci, so memory is O(block · L), never L².
    """
    if measure not in {"r2", "abs_r"}:
        raise UserError(f"LD measure must be 'r2' or 'abs_r', got {measure!r}")
    x = np.asarray(genotypes, dtype=np.float32)
    n, L = x.shape
    if n < 3:
        raise UserError(f"an LD graph needs at least 3 training samples, got {n}")
    observed = x != 0
    mean = x.sum(0) / np.maximum(observed.sum(0), 1)
    x = np.where(observed, x, mean) - mean
    norm = np.sqrt((x**2).sum(0))
    z = x / np.where(norm > 0, norm, 1.0)
    k = max(0, min(int(top_k), L - 1))
    src, dst, wt = [], [], []
    for lo in range(0, L, block):
        r = z[:, lo : lo + block].T @ z  # (b, L)
        r2 = r * r
        rows = np.arange(r.shape[0])
        r2[rows, lo + rows] = -1.0  # no self loops
        if k == 0:
            continue
        part = np.argpartition(-r2, k - 1, axis=1)[:, :k] if k < L else np.argsort(-r2, axis=1)
        for i in range(r.shape[0]):
            j = part[i]
            keep = r2[i, j] >= max(min_r2, 1e-12)
            src.append(np.full(int(keep.sum()), lo + i))
            dst.append(j[keep])
            wt.append(r2[i, j[keep]] if measure == "r2" else np.abs(r[i, j[keep]]))
    if not src:
        return GeneGraph(name, sp.csr_matrix((L, L), dtype=np.float32))
    return GeneGraph.from_edges(name, L, np.concatenate(src), np.concatenate(dst), np.concatenate(wt))


def gene_graph_loci(
    locus_genes: list[str], genome, graph: GeneGraph, name: str = "gene", same_gene: bool = True
) -> tuple[GeneGraph, dict]:
    """Carry a gene graph to loci through their nearest genes; returns the graph and a mapping report.

    ``A_loci = M A Mᵀ`` with ``M`` the (L × genes) nearest-gene incidence (plus ``M Mᵀ`` when
    ``same_gene``); loci without a gene, or with a gene unknown to the genome, have no edges.
    """
    idx = np.array([genome.lookup(g) if g else -1 for g in locus_genes], dtype=np.int64)
    mapped = idx >= 0
    L = len(locus_genes)
    rows = np.flatnonzero(mapped)
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, idx[mapped])), shape=(L, graph.num_nodes))
    adj = m @ graph.adj @ m.T
    if same_gene:
        adj = adj.maximum(m @ m.T)
    adj = sp.csr_matrix(adj, dtype=np.float32)
    if not graph.directed:
        adj = adj.maximum(adj.T)
    report = {
        "loci": L,
        "with_gene": int(sum(1 for g in locus_genes if g)),
        "mapped": int(mapped.sum()),
        "unknown_genes": sorted({g for g, i in zip(locus_genes, idx, strict=True) if g and i < 0})[:10],
    }
    return GeneGraph(name, adj, graph.directed), report


def _check_keys(name: str, spec: Mapping, allowed: set[str]) -> None:
    extra = set(spec) - allowed
    if extra:
        raise UserError(f"locus_graphs[{name!r}]: unknown keys {sorted(extra)}; allowed: {sorted(allowed)}")


def build_locus_graph(name: str, spec: Mapping, data, train_rows: np.ndarray) -> GeneGraph:
    """One locus graph from its spec (``kind: ld`` or ``kind: gene``; optional ``rewire``/``seed``)."""
    kind = spec.get("kind", "ld")
    if kind == "ld":
        _check_keys(name, spec, LD_KEYS)
        g = ld_graph(
            data.genotypes[train_rows],
            name=name,
            top_k=int(spec.get("top_k", 8)),
            min_r2=float(spec.get("min_r2", 0.0)),
            measure=str(spec.get("measure", "r2")),
        )
    elif kind == "gene":
        _check_keys(name, spec, GENE_KEYS)
        from cellformer.genome import load_genome
        from cellformer.graphs import load_graphs

        if "graph" not in spec:
            raise UserError(f"locus_graphs[{name!r}]: kind 'gene' needs 'graph' (a shipped graph name or name=path)")
        genome = load_genome(spec.get("genome", "yeast"))
        gene_graph = load_graphs([str(spec["graph"])], genome)
        g, report = gene_graph_loci(
            data.loci.gene,
            genome,
            next(iter(gene_graph.values())),
            name=name,
            same_gene=bool(spec.get("same_gene", True)),
        )
        if report["mapped"] == 0:
            raise UserError(
                f"locus_graphs[{name!r}]: no locus has a nearest gene known to genome {spec.get('genome', 'yeast')!r} "
                f"({report['with_gene']} of {report['loci']} loci name a gene)"
            )
    else:
        raise UserError(f"locus_graphs[{name!r}]: kind must be 'ld' or 'gene', got {kind!r}")
    share = float(spec.get("rewire", 0.0))
    if share > 0:
        g = g.rewired(share, seed=int(spec.get("seed", 0)), name=name)
    return g


def build_locus_graphs(
    specs: Mapping[str, Mapping] | None, data, train_rows: np.ndarray, blocks: np.ndarray | None = None
) -> dict[str, GeneGraph]:
    """All locus graphs of a ``locus_graphs`` option, by name.

    With ``blocks`` (a block index per locus, :mod:`cellformer.genotype.blocks`) the graphs are over the
    blocks, each block standing for its anchor (first) marker: LD between anchors, a block's nearest gene
    that of its anchor.
    """
    if blocks is not None and specs:
        from types import SimpleNamespace

        from cellformer.genotype.blocks import block_anchors

        anchors = block_anchors(blocks)
        data = SimpleNamespace(genotypes=data.genotypes[:, anchors], loci=data.loci.subset(anchors))
    out = {}
    for name, spec in (specs or {}).items():
        if not isinstance(spec, Mapping):
            raise UserError(f"locus_graphs[{name!r}] must be a mapping like {{kind: ld, top_k: 8}}, got {spec!r}")
        out[name] = build_locus_graph(name, spec, data, train_rows)
    return out
