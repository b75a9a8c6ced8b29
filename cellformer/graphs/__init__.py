"""Gene graphs: sparse weighted adjacency, loaders, controls (rewiring), neighbourhoods."""

from __future__ import annotations

import warnings
from collections.abc import Iterable

from cellformer.defaults import YEAST_DIR, YEAST_GRAPHS
from cellformer.genome import Genome, yeast_genome
from cellformer.graphs.graph import GeneGraph, GraphSet
from cellformer.graphs.io import LoadReport, build_graph, load_edge_list, save_edge_list

_CACHE: dict[str, tuple[GeneGraph, LoadReport]] = {}


def yeast_graphs(
    names: Iterable[str] | None = None, genome: Genome | None = None, verbose: bool = False
) -> tuple[GraphSet, dict[str, LoadReport]]:
    """Load shipped yeast graphs by name (all when ``names`` is None) with their load reports.

    Unknown names raise ``KeyError`` listing the available graphs. Unmapped rows are reported in the
    returned :class:`LoadReport` objects (and printed when ``verbose``), never silently dropped.
    """
    genome = genome or yeast_genome()
    names = list(YEAST_GRAPHS) if names is None else list(names)
    graphs, reports = [], {}
    for name in names:
        if name not in YEAST_GRAPHS:
            raise KeyError(f"unknown graph {name!r}; shipped yeast graphs: {', '.join(YEAST_GRAPHS)}")
        key = f"{genome.hash}:{name}"
        if key not in _CACHE:
            fname, directed = YEAST_GRAPHS[name]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _CACHE[key] = load_edge_list(YEAST_DIR / fname, genome, name=name, directed=directed)
        g, rep = _CACHE[key]
        if verbose and rep.unmapped_rows:
            print(rep.summary())
        graphs.append(g)
        reports[name] = rep
    return GraphSet(graphs, genome.hash), reports


__all__ = [
    "GeneGraph",
    "GraphSet",
    "LoadReport",
    "build_graph",
    "load_edge_list",
    "save_edge_list",
    "yeast_graphs",
]
