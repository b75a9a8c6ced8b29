"""Baselines behind the same :class:`~cellformer.models.base.PhenotypeModel` interface as CellFormer.

* :class:`Dango` -- per-graph GraphSAGE + channel meta-embedding + HyperSAGNN (GNN once per step).
* :class:`LazySubgraph` -- difference form ``h(pool F(G) - pool F(G \\ S))`` with a per-sample masked
  full-graph pass (the expensive one).
* :class:`NeighborSubgraph` -- GNN on the per-sample k-hop neighbourhood of S (``hops`` = 1, 2, 3).
* :class:`Additive` -- no interactions: log-additive fitness, constant epsilon / tau.
"""

from cellformer.models.baselines.additive import Additive
from cellformer.models.baselines.dango import Dango
from cellformer.models.baselines.lazy import LazySubgraph
from cellformer.models.baselines.neighbor import NeighborSubgraph

__all__ = ["Additive", "Dango", "LazySubgraph", "NeighborSubgraph"]
