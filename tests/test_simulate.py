"""The phenotype simulator: determinism, the epsilon/tau formulas, interactions that follow the graph."""

from __future__ import annotations

import itertools
import math

import networkx as nx
import numpy as np
import pytest
from conftest import toy_genome

from cellformer.data import PerturbationData, PerturbationType
from cellformer.data.simulate import PHENOTYPES, SimulationTruth, graph_modules, simulate
from cellformer.genome import Genome
from cellformer.graphs import GeneGraph, GraphSet


def toy(n_blocks: int = 12, block: int = 25, isolated: int = 40, seed: int = 0) -> tuple[Genome, GraphSet]:
    """A planted-partition graph (dense blocks, sparse between) plus genes without edges.

    The graph stays local: the simulator's modules need noisy blocks with edges between them and isolated
    genes, which none of conftest's graphs (disjoint cliques, a ring, G(n, m)) has.
    """
    g = nx.planted_partition_graph(n_blocks, block, p_in=0.3, p_out=0.004, seed=seed)
    n = n_blocks * block + isolated
    e = np.array(g.edges())
    graph = GeneGraph.from_edges("truth", n, e[:, 0], e[:, 1], directed=False)
    genome = toy_genome(n, fmt="G{i:04d}", name="toy")
    return genome, GraphSet([graph], genome.hash)


GENOME, GRAPHS = toy()
SMALL = dict(truth_graph="truth", n_doubles=3000, n_triples=800)


def sim(**kw) -> PerturbationData:
    return simulate(GENOME, GRAPHS, **{**SMALL, **kw})


def test_deterministic_given_seed():
    a, b, c = sim(seed=3), sim(seed=3), sim(seed=4)
    for name in ["offsets", "gene_index", "types", "split"]:
        assert np.array_equal(getattr(a, name), getattr(b, name))
    np.testing.assert_array_equal(a.phenotypes, b.phenotypes)
    assert a.meta.keys() == b.meta.keys()
    for k in a.meta:
        np.testing.assert_array_equal(a.meta[k], b.meta[k])
    assert not np.array_equal(a.gene_index, c.gene_index)
    assert not np.array_equal(a.meta["single_cost"], c.meta["single_cost"])


def test_noise_does_not_change_truth_or_records():
    a, b = sim(noise=0.0), sim(noise=0.05)
    assert np.array_equal(a.gene_index, b.gene_index)
    np.testing.assert_array_equal(a.meta["record_true_phenotypes"], b.meta["record_true_phenotypes"])
    resid = b.phenotypes - b.meta["record_true_phenotypes"]
    assert np.nanstd(resid) == pytest.approx(0.05, rel=0.1)
    np.testing.assert_allclose(a.phenotypes, a.meta["record_true_phenotypes"])


def test_records_and_columns():
    d = sim()
    n = len(GENOME)
    assert d.phenotype_names == PHENOTYPES == ["fitness", "epsilon", "tau"]
    sizes = d.set_sizes
    assert np.bincount(sizes).tolist() == [0, n, 3000, 800]
    assert (d.types == int(PerturbationType.DELETION)).all()
    ph = d.phenotypes
    assert not np.isnan(ph[:, 0]).any()
    assert (~np.isnan(ph[:, 1]) == (sizes == 2)).all()
    assert (~np.isnan(ph[:, 2]) == (sizes == 3)).all()
    sets = {tuple(d.record(r)[0].tolist()) for r in range(len(d))}
    assert len(sets) == len(d)  # unique records
    tenth = round(0.1 * len(d))
    assert np.bincount(d.split).tolist() == [len(d) - 2 * tenth, tenth, tenth]
    assert d.attrs["truth_graph"] == "truth" and d.attrs["simulator"].startswith("cellformer.simulate/")
    assert d.attrs["off_graph_share"] == "0.2" and d.attrs["seed"] == "0"


def fitness_from_meta(meta):
    """``f(genes)`` straight from the stored truth (independent of the simulator's vectorised code)."""
    module, s = meta["module"], meta["single_cost"].astype(np.float64)
    terms = {(int(a), int(b)): float(t) for (a, b), t in zip(meta["pairs"], meta["pair_term"], strict=True)}

    def f(*genes: int) -> float:
        cost = sum(s[g] for g in genes)
        for a, b in itertools.combinations(sorted(genes), 2):
            cost += terms.get((a, b), 0.0)
        if len(genes) == 3 and len({int(module[g]) for g in genes}) == 1:
            cost += float(meta["module_triple_term"][module[genes[0]]])
        return math.exp(-cost)

    return f


def test_epsilon_and_tau_formulas_hold_without_noise():
    d = sim(noise=0.0, seed=1)
    meta = d.meta
    f = fitness_from_meta(meta)
    rng = np.random.default_rng(0)
    sizes = d.set_sizes
    rows = np.concatenate([rng.choice(np.flatnonzero(sizes == k), 150, replace=False) for k in (1, 2, 3)])
    for r in rows:
        genes, _, y = d.record(r)
        genes = genes.tolist()
        assert y[0] == pytest.approx(f(*genes), abs=1e-5)
        if len(genes) == 2:
            a, b = genes
            assert y[1] == pytest.approx(f(a, b) - f(a) * f(b), abs=1e-5)
        if len(genes) == 3:
            a, b, c = genes
            e_ab, e_ac, e_bc = f(a, b) - f(a) * f(b), f(a, c) - f(a) * f(c), f(b, c) - f(b) * f(c)
            tau = f(a, b, c) - f(a) * f(b) * f(c) - e_ab * f(c) - e_ac * f(b) - e_bc * f(a)
            assert y[2] == pytest.approx(tau, abs=1e-5)
    # singles give f_i = exp(-s_i)
    single = sizes == 1
    np.testing.assert_allclose(d.phenotypes[single, 0], np.exp(-meta["single_cost"]), rtol=1e-5)


def test_truth_from_meta_reproduces_records(tmp_path):
    d = sim(noise=0.0)
    d.save(tmp_path / "s.h5")
    e = PerturbationData.load(tmp_path / "s.h5")
    truth = SimulationTruth.from_meta(e.meta)
    sets = np.full((len(e), 3), -1)
    for r in range(len(e)):
        g = e.record(r)[0]
        sets[r, : len(g)] = g
    np.testing.assert_allclose(truth.fitness(sets), e.phenotypes[:, 0], rtol=1e-5)


def test_modules_and_interaction_list():
    d = sim(off_graph_share=0.2)
    meta = d.meta
    module = meta["module"]
    graph = GRAPHS["truth"]
    isolated = graph.degree() == 0
    sizes = np.bincount(module)
    assert (sizes[module[isolated]] == 1).all()  # genes without edges are singleton modules
    assert sizes.max() <= 50
    on = meta["pair_on_graph"]
    pairs = meta["pairs"]
    assert (module[pairs[on, 0]] == module[pairs[on, 1]]).all()
    assert (module[pairs[~on, 0]] != module[pairs[~on, 1]]).all()
    assert not meta["pair_is_edge"][~on].any()  # off-graph pairs are not graph edges
    assert np.array_equal(meta["pair_is_edge"], np.asarray(graph.adj[pairs[:, 0], pairs[:, 1]]).ravel() > 0)
    assert (~on).mean() == pytest.approx(0.2, abs=0.01)
    assert (pairs[:, 0] < pairs[:, 1]).all()
    terms = meta["pair_term"]
    assert (terms > 0).mean() > 0.5 and (terms < 0).any()  # mostly negative epistasis, some positive
    assert (meta["single_cost"] >= 0).all() and np.median(np.exp(-meta["single_cost"])) > 0.9
    assert not sim(off_graph_share=0.0).meta["pair_on_graph"].__invert__().any()


def test_interactions_are_enriched_for_truth_graph_edges():
    d = sim(noise=0.02)
    adj = GRAPHS["truth"].adj
    doubles = np.flatnonzero(d.set_sizes == 2)
    pairs = d.gene_index.reshape(-1)[d.offsets[doubles][:, None] + np.arange(2)]
    eps = d.phenotypes[doubles, 1]
    strong = np.abs(eps) > 0.08
    is_edge = np.asarray(adj[pairs[:, 0], pairs[:, 1]]).ravel() > 0
    rng = np.random.default_rng(0)
    rand = rng.integers(0, len(GENOME), size=(20000, 2))
    rand = rand[rand[:, 0] != rand[:, 1]]
    p0 = (np.asarray(adj[rand[:, 0], rand[:, 1]]).ravel() > 0).mean()
    p1 = is_edge[strong].mean()
    odds = (p1 / (1 - p1)) / (p0 / (1 - p0))
    assert strong.sum() > 300 and odds > 5
    # and a share of the strong interactions follow no graph (off-graph pairs are measured)
    assert 0.05 < (~is_edge[strong]).mean() < 0.9


def test_graph_modules_split_large_communities():
    genome, graphs = toy(n_blocks=3, block=60, isolated=5)
    m = graph_modules(graphs["truth"], seed=0, max_module_size=40)
    assert np.bincount(m).max() <= 40
    assert np.array_equal(m, graph_modules(graphs["truth"], seed=0, max_module_size=40))


def test_bad_arguments():
    with pytest.raises(ValueError, match="off_graph_share"):
        sim(off_graph_share=1.0)
    with pytest.raises(KeyError, match="unknown graph"):
        sim(truth_graph="nope")


def test_real_yeast_small():
    from cellformer.genome import yeast_genome
    from cellformer.graphs import yeast_graphs

    genome = yeast_genome()
    graphs, _ = yeast_graphs(["string_database"], genome=genome)
    d = simulate(genome, graphs, n_singles=500, n_doubles=2000, n_triples=300, seed=0)
    assert np.bincount(d.set_sizes).tolist() == [0, 500, 2000, 300]
    assert d.genome_hash == genome.hash and d.genes == genome.genes
    assert d.attrs["truth_graph"] == "string_database"
    doubles = np.flatnonzero(d.set_sizes == 2)
    pairs = d.gene_index.reshape(-1)[d.offsets[doubles][:, None] + np.arange(2)]
    strong = np.abs(d.phenotypes[doubles, 1]) > 0.08
    is_edge = np.asarray(graphs["string_database"].adj[pairs[:, 0], pairs[:, 1]]).ravel() > 0
    density = 2 * graphs["string_database"].num_edges / (len(genome) * (len(genome) - 1))
    assert is_edge[strong].mean() > 20 * density
