"""Baselines behind the same :class:`~cellformer.models.base.PhenotypeModel` interface as CellFormer.

* :class:`Dango` -- per-STRING-channel GraphSAGE pretrained by adjacency reconstruction, channel
  meta-embedding, HyperSAGNN with a diagonal mask (GNN once per step).
* :class:`LazySubgraph` -- difference form ``h(pool F(G) - pool F(G \\ S))`` with a per-sample masked
  full-graph pass (the expensive one).
* :class:`NeighborSubgraph` -- GNN on the per-sample k-hop neighbourhood of S (``hops`` = 1, 2, 3).
* :class:`Additive` -- no interactions: log-additive fitness, constant epsilon / tau.
* :class:`GraphSmoothing` -- no training: a set's phenotype is the mean of the training records of its
  graph neighbours (singles: neighbours' singles; pairs / triples: records with one gene replaced by a
  neighbour).
* :class:`PerGene` -- no training: per-gene ridge effects in closed form (for ε, the per-gene mean model).

The GNN layers and helpers they share live in :mod:`cellformer.models.baselines.gnn`.
"""

from cellformer.models.baselines.additive import Additive
from cellformer.models.baselines.dango import Dango
from cellformer.models.baselines.graph_smoothing import GraphSmoothing
from cellformer.models.baselines.lazy import LazySubgraph
from cellformer.models.baselines.neighbor import NeighborSubgraph
from cellformer.models.baselines.per_gene import PerGene

__all__ = ["Additive", "Dango", "GraphSmoothing", "LazySubgraph", "NeighborSubgraph", "PerGene"]
