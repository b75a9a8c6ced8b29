"""Gene graphs: sparse weighted adjacency, loaders, controls (rewiring), neighbourhoods."""

from __future__ import annotations

import warnings
from collections.abc import Iterable

from cellformer.defaults import YEAST_DIR, YEAST_GRAPHS
from cellformer.errors import UserError, unknown_name_error
from cellformer.genome import Genome, yeast_genome
from cellformer.graphs.graph import GeneGraph, GraphSet, UnknownGraphError
from cellformer.graphs.io import LoadReport, build_graph, load_edge_list, save_edge_list

_CACHE: dict[str, tuple[GeneGraph, LoadReport]] = {}


def yeast_graphs(
    names: Iterable[str] | None = None, genome: Genome | None = None, verbose: bool = False
) -> tuple[GraphSet, dict[str, LoadReport]]:
    """Load shipped yeast graphs by name (all when ``names`` is None) with their load reports.

    Unknown names raise :class:`~cellformer.errors.UserError` listing the available graphs. Unmapped rows are
    reported in the returned :class:`LoadReport` objects (and printed when ``verbose``), never silently dropped.
    """
    genome = genome or yeast_genome()
    names = list(YEAST_GRAPHS) if names is None else list(names)
    graphs, reports = [], {}
    for name in names:
        if name not in YEAST_GRAPHS:
            raise unknown_name_error("graph", name, YEAST_GRAPHS)
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


def load_graphs(specs: list[str], genome: Genome, controls: dict[str, dict] | None = None) -> GraphSet:
    """Graphs by name: shipped yeast graph names, or ``name=path[:directed]`` for an edge-list file.

    ``controls`` replaces a graph by a degree-preserving rewired copy under the same name, e.g.
    ``{"string_database": {"rewire": 1.0, "seed": 0}}`` (the random-graph control) or ``rewire: 0.3``
    (a noisy graph). Unknown names raise with the list of shipped graphs.
    """
    controls = dict(controls or {})
    graphs: list[GeneGraph] = []
    shipped = [s for s in specs if "=" not in s]
    if shipped and genome.name == "yeast":
        graphs_by_name = dict(yeast_graphs(shipped, genome)[0].items())
    elif shipped:
        raise UserError(
            f"graphs {shipped} are shipped yeast graphs but the genome is {genome.name!r}; "
            "give graphs as name=path.tsv for other genomes"
        )
    else:
        graphs_by_name = {}
    for spec in specs:
        if "=" in spec:
            name, path = spec.split("=", 1)
            directed = path.endswith(":directed")
            path = path.removesuffix(":directed")
            graphs.append(load_edge_list(path, genome, name=name, directed=directed or None)[0])
        else:
            graphs.append(graphs_by_name[spec])
    gs = GraphSet(graphs, genome.hash)
    for name, ctl in controls.items():
        if name not in gs:
            raise UserError(f"graph_controls names {name!r}, which is not among the graphs {gs.names}")
        unknown = set(ctl) - {"rewire", "seed"}
        if unknown:
            raise UserError(f"graph_controls[{name!r}]: unknown keys {sorted(unknown)}; expected rewire, seed")
        g = gs[name].rewired(float(ctl.get("rewire", 1.0)), seed=int(ctl.get("seed", 0)), name=name)
        gs = GraphSet([g if n == name else gs[n] for n in gs.names], genome.hash)
    return gs


__all__ = [
    "GeneGraph",
    "GraphSet",
    "LoadReport",
    "build_graph",
    "load_edge_list",
    "load_graphs",
    "save_edge_list",
    "UnknownGraphError",
    "yeast_graphs",
]
