"""Baselines: end-to-end training on a toy problem, masking / k-hop correctness, throughput script."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch
from torch_geometric.utils import k_hop_subgraph

from cellformer.data.dataset import PerturbationData, PerturbationDataset
from cellformer.genome import Genome
from cellformer.graphs import GeneGraph, GraphSet
from cellformer.models.base import ModelOutput
from cellformer.models.baselines import Additive, Dango, LazySubgraph, NeighborSubgraph
from cellformer.models.baselines.lazy import membership

N = 40
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny problems: one intra-op thread is faster (no OpenMP contention) and deterministic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def toy() -> tuple[Genome, GraphSet, PerturbationData]:
    """40 genes, a ring graph and a random graph, singles + doubles with fitness and epsilon."""
    rng = np.random.default_rng(0)
    genome = Genome([f"G{i}" for i in range(N)])
    ring = GeneGraph.from_edges("ring", N, np.arange(N), (np.arange(N) + 1) % N)
    src, dst = rng.integers(0, N, 60), rng.integers(0, N, 60)
    rand = GeneGraph.from_edges("random", N, src, dst, directed=True)
    graphs = GraphSet([ring, rand])
    # records: all singles + 200 doubles
    doubles = np.array([rng.choice(N, 2, replace=False) for _ in range(200)])
    sets = [[i] for i in range(N)] + [list(d) for d in doubles]
    f1 = rng.uniform(0.4, 1.0, N)
    adjacent = ring.adj.toarray() > 0
    y = np.full((len(sets), 2), np.nan, dtype=np.float32)
    for r, s in enumerate(sets):
        eps = 0.0
        if len(s) == 2:
            eps = -0.3 if adjacent[s[0], s[1]] else 0.1 * np.sin(s[0] + s[1])
            y[r, 1] = eps
        y[r, 0] = np.prod(f1[s]) + eps
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sets])])
    data = PerturbationData(
        genes=genome.genes,
        offsets=offsets,
        gene_index=np.concatenate(sets),
        types=np.ones(offsets[-1]),
        phenotypes=y,
        phenotype_names=["fitness", "epsilon"],
    )
    return genome, graphs, data


def masked_mse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    m = ~torch.isnan(y)
    return ((pred - torch.nan_to_num(y)) ** 2)[m].mean()


MODELS = {
    "dango": (Dango, {"d": 16, "heads": 2, "recon_edges": 64}),
    "lazy": (LazySubgraph, {"d": 16}),
    "1-hop": (NeighborSubgraph, {"hops": 1, "d": 16}),
    "2-hop": (NeighborSubgraph, {"hops": 2, "d": 16}),
    "3-hop": (NeighborSubgraph, {"hops": 3, "d": 16}),
    "additive": (Additive, {}),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_trains_end_to_end(toy, name):
    genome, graphs, data = toy
    torch.manual_seed(0)
    cls, hp = MODELS[name]
    model = cls(genome, graphs, data.phenotype_names, **hp)
    json.dumps(model.hparams_dict)  # checkpoint-able
    assert model.phenotype_names == ["fitness", "epsilon"]
    full = PerturbationDataset(data).collate_rows(np.arange(len(data)))

    def evaluate() -> float:
        model.eval()
        with torch.no_grad():
            out = model(full)
        model.train()
        assert isinstance(out, ModelOutput) and out.pred.shape == (len(data), 2)
        return float(masked_mse(out.pred, full.y))

    initial = evaluate()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ds = PerturbationDataset(data)
    rng = np.random.default_rng(0)
    for _ in range(100):
        batch = ds.collate_rows(rng.choice(len(data), 64, replace=False))
        out = model(batch)
        loss = masked_mse(out.pred, batch.y) + sum(out.losses.values(), torch.zeros(()))
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = evaluate()
    assert final < 0.7 * initial, (name, initial, final)


def test_dango_reports_reconstruction_losses(toy):
    genome, graphs, data = toy
    model = Dango(genome, graphs, data.phenotype_names, d=8, heads=2, recon_weight=0.5, recon_edges=16)
    out = model(PerturbationDataset(data).collate_rows(np.arange(45)))
    assert set(out.losses) == {"recon/ring", "recon/random"}
    assert all(v.ndim == 0 and v > 0 for v in out.losses.values())
    assert out.extras["channel_weights"].shape == (2,)
    model.eval()
    assert model(PerturbationDataset(data).collate_rows(np.arange(3))).losses == {}


def test_additive_has_no_interactions(toy):
    genome, graphs, data = toy
    model = Additive(genome, graphs, ["fitness", "epsilon", "tau", "size"])
    assert model.kinds == ["multiplicative", "interaction", "interaction", "additive"]
    with torch.no_grad():
        model.effect.normal_()
        model.bias.normal_()
    batch = PerturbationDataset(data).collate_rows(np.array([0, 1, N + 5]))
    pred = model(batch).pred
    i, j = batch.sets()[2]
    single = pred[:2, 0] / torch.exp(model.bias[0])
    expected = torch.exp(model.bias[0] + model.effect[i, 0] + model.effect[j, 0])
    torch.testing.assert_close(pred[2, 0], expected)
    torch.testing.assert_close(single, torch.exp(model.effect[:2, 0]))
    assert torch.allclose(pred[:, 1], model.bias[1]) and torch.allclose(pred[:, 2], model.bias[2])


def test_lazy_masks_exactly_the_edges_touching_s(toy):
    genome, graphs, data = toy
    model = LazySubgraph(genome, graphs, data.phenotype_names, d=8)
    rows = np.array([0, 7, N, N + 1, N + 50])
    batch = PerturbationDataset(data).collate_rows(rows)
    ei_all, _ = graphs.union_edge_index()
    all_edges = sorted(map(tuple, ei_all.t().tolist()))
    for transposed in (False, True):
        ei, sample = model.masked_edge_index(membership(batch, N), transposed=transposed)
        for b, s in enumerate(batch.sets()):
            local = (ei[:, sample == b] - b * N).t().tolist()
            assert all(0 <= u < N and 0 <= v < N for u, v in local)
            assert not any(u in s or v in s for u, v in local)
            expected = [e for e in all_edges if e[0] not in s and e[1] not in s]
            assert sorted(map(tuple, local)) == expected  # same multiset: nothing else dropped
    out = model(batch)
    assert out.extras["nodes_per_sample"] == N


@pytest.mark.parametrize("hops", [1, 2, 3])
def test_neighbor_node_sets_match_networkx(toy, hops):
    genome, graphs, data = toy
    model = NeighborSubgraph(genome, graphs, data.phenotype_names, hops=hops, d=8)
    g = nx.Graph()
    g.add_nodes_from(range(N))
    for graph in graphs.values():
        g.add_edges_from(graph.to_networkx().to_undirected().edges())
    ei_union, _ = graphs.union_edge_index()
    rows = np.array([0, 3, N, N + 11, N + 99])
    batch = PerturbationDataset(data).collate_rows(rows)
    sg = model.subgraphs(membership(batch, N))
    offsets = np.concatenate([[0], np.cumsum(np.bincount(sg["sample"].numpy(), minlength=len(rows)))])
    for b, s in enumerate(batch.sets()):
        nodes = sg["gene"][sg["sample"] == b].tolist()
        ref = set()
        for u in s:
            ref |= set(nx.single_source_shortest_path_length(g, u, cutoff=hops))
        assert nodes == sorted(ref)
        pyg, *_ = k_hop_subgraph(torch.tensor(s), hops, torch.cat([ei_union, ei_union.flip(0)], 1), num_nodes=N)
        assert nodes == pyg.tolist()
        # induced edges, relabelled into this sample's block
        e = sg["edge_index"]
        local = e[:, (e[0] >= offsets[b]) & (e[0] < offsets[b + 1])] - offsets[b]
        assert (local >= 0).all() and (local < len(nodes)).all()
        got = {(nodes[u], nodes[v]) for u, v in local.t().tolist()}
        sub = g.subgraph(nodes)
        assert got == {(u, v) for u, v in sub.edges()} | {(v, u) for u, v in sub.edges()}
        assert sg["perturbed"][sg["sample"] == b].sum() == len(s)


def test_throughput_script_tiny(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import throughput
    finally:
        sys.path.pop(0)
    out = tmp_path / "res"
    args = "--synthetic --samples 200 --steps 1 --warmup 1 --methods dango,additive,1-hop --device cpu"
    results = throughput.main([*args.split(), "--out-dir", str(out)])
    assert {r["method"] for r in results["rows"]} == {"dango", "additive", "1-hop"}
    assert all(r["status"] == "ok" and r["samples_per_s"] > 0 for r in results["rows"])
    for ext in ("md", "json", "png"):
        assert (out / f"throughput_cpu.{ext}").stat().st_size > 0
    md = (out / "throughput_cpu.md").read_text()
    assert "samples/s" in md and "dango" in md and torch.__version__ in md
    assert json.loads((out / "throughput_cpu.json").read_text())["config"]["batch_size"] == 64
