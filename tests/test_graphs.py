"""Gene graphs: edge-list loading with reports, rewiring controls, neighbourhoods, edge_index."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
from conftest import random_graph, toy_genome

from cellformer.errors import UserError
from cellformer.genome import Genome
from cellformer.graphs import GeneGraph, load_edge_list, yeast_graphs


def genome(n: int = 6) -> Genome:
    return toy_genome(n, aliases="A{i}", name="toy")


def test_edge_list_with_unmapped_row(tmp_path):
    p = tmp_path / "edges.tsv"
    p.write_text("gene_a\tgene_b\tscore\nG0\tG1\t0.9\n# comment\nG1\tNOPE\t0.5\na2\tg3\t0.2\nG0\tG1\t0.95\n")
    with pytest.warns(UserWarning, match="NOPE"):
        g, rep = load_edge_list(p, genome())
    assert (rep.rows, rep.loaded, rep.unmapped_rows, rep.duplicates) == (4, 3, 1, 1)
    assert rep.unmapped_examples == [(4, "NOPE")]
    assert "line 4: NOPE" in rep.summary()
    assert g.num_edges == 2 and not g.directed
    assert g.adj[0, 1] == pytest.approx(0.95) and g.adj[1, 0] == pytest.approx(0.95)  # max weight kept
    assert g.adj[2, 3] == pytest.approx(0.2)


def test_edge_list_threshold_and_bad_score(tmp_path):
    p = tmp_path / "edges.tsv"
    p.write_text("G0\tG1\t0.9\nG1\tG2\t0.1\nG2\tG3\t0.5\n")
    g, rep = load_edge_list(p, genome(), min_score=0.4)
    assert rep.below_threshold == 1 and g.num_edges == 2
    bad = tmp_path / "bad.tsv"
    bad.write_text("G0\tG1\t0.9\nG1\tG2\thigh\n")
    with pytest.raises(ValueError, match=r"bad.tsv:2: score 'high'"):
        load_edge_list(bad, genome())


def test_directed_edge_list(tmp_path):
    p = tmp_path / "reg.tsv"
    p.write_text("regulator\ttarget\nG0\tG1\nG0\tG2\nG3\tG0\n")
    g, _ = load_edge_list(p, genome())
    assert g.directed and g.num_edges == 3
    assert g.adj[0, 1] == 1 and g.adj[1, 0] == 0
    assert g.degree().tolist() == [2, 0, 0, 1, 0, 0]
    assert g.in_degree().tolist() == [1, 1, 1, 0, 0, 0]


@pytest.mark.parametrize("directed", [False, True])
def test_rewired_keeps_degrees_and_changes_edges(directed):
    g = random_graph(120, 600, directed)
    r = g.rewired(1.0, seed=3)
    assert r.num_edges == g.num_edges and r.directed == directed
    assert np.array_equal(r.degree(), g.degree())
    assert np.array_equal(r.in_degree(), g.in_degree())
    kept = (g.adj.multiply(r.adj) > 0).sum() / g.adj.nnz
    assert kept < 0.4
    assert np.array_equal(r.adj.toarray(), g.rewired(1.0, seed=3).adj.toarray())  # seeded


@pytest.mark.parametrize("directed", [False, True])
def test_rewired_fraction_keeps_most_edges(directed):
    g = random_graph(200, 1000, directed)
    r = g.rewired(0.2, seed=1)
    kept = (g.adj.multiply(r.adj) > 0).sum() / g.adj.nnz
    assert 0.7 < kept < 0.9
    assert np.array_equal(r.degree(), g.degree()) and np.array_equal(r.in_degree(), g.in_degree())


def test_rewired_weights_travel():
    g = random_graph(80, 300, False)
    w = np.random.default_rng(0).random(g.adj.nnz // 2).astype(np.float32)
    a = g.adj.tocoo()
    up = a.row < a.col
    g = GeneGraph.from_edges("w", 80, a.row[up], a.col[up], w, directed=False)
    r = g.rewired(0.5, seed=0)
    assert np.allclose(np.sort(r.adj.data), np.sort(g.adj.data))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_k_hop_matches_networkx(k):
    g = random_graph(100, 150, False, seed=2)
    nxg = g.to_networkx()
    for start in [[0], [5, 17]]:
        expect = set()
        for s in start:
            expect |= set(nx.single_source_shortest_path_length(nxg, s, cutoff=k))
        assert g.k_hop(start, k).tolist() == sorted(expect)


def test_k_hop_directed_ignores_direction():
    g = GeneGraph.from_edges("d", 5, np.array([0, 2]), np.array([1, 1]), directed=True)
    assert g.k_hop([0], 2).tolist() == [0, 1, 2]


@pytest.mark.parametrize("directed", [False, True])
def test_edge_index_round_trip(directed):
    g = random_graph(50, 120, directed, seed=4)
    ei, w = g.edge_index()
    assert ei.shape == (2, g.adj.nnz) and w.shape == (g.adj.nnz,)
    back = GeneGraph.from_edges("back", 50, ei[0].numpy(), ei[1].numpy(), w.numpy(), directed=directed)
    assert (back.adj != g.adj).nnz == 0


def test_shipped_regulatory_graph_reports_unmapped_rows():
    graphs, reports = yeast_graphs(["regulatory"])
    rep = reports["regulatory"]
    assert graphs["regulatory"].directed
    assert 900 <= rep.unmapped_rows <= 1000
    assert rep.unmapped_examples and all(line > 1 for line, _ in rep.unmapped_examples)
    assert rep.loaded + rep.unmapped_rows == rep.rows
    with pytest.raises(UserError, match="unknown graph 'no_such_graph'; available: .*string_database"):
        yeast_graphs(["no_such_graph"])
