"""Baselines: end-to-end training on a toy problem, masking / k-hop correctness, graph smoothing against a
brute-force reference, DANGO's diagonal mask and channels, throughput script."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch
import yaml
from conftest import ring_graph, toy_genome
from torch_geometric.utils import k_hop_subgraph

from cellformer.data.dataset import PerturbationData, PerturbationDataset
from cellformer.defaults import STRING_CHANNELS
from cellformer.genome import Genome
from cellformer.graphs import GeneGraph, GraphSet
from cellformer.models.base import ModelOutput
from cellformer.models.baselines import Additive, Dango, GraphSmoothing, LazySubgraph, NeighborSubgraph
from cellformer.models.baselines.gnn import membership
from cellformer.models.registry import build_model

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
    genome = toy_genome(N)
    ring = ring_graph("ring", N)
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
    "dango": (Dango, {"d_model": 16, "n_heads": 2, "recon_rows": 16, "pretrain_steps": 5, "dropout": 0.0}),
    "lazy": (LazySubgraph, {"d_model": 16}),
    "1-hop": (NeighborSubgraph, {"hops": 1, "d_model": 16}),
    "2-hop": (NeighborSubgraph, {"hops": 2, "d_model": 16}),
    "3-hop": (NeighborSubgraph, {"hops": 3, "d_model": 16}),
    "additive": (Additive, {}),
}


def scaled(model, data: PerturbationData):
    """Give a model the training-split target scaling, as the training module does."""
    model.register_target_scaling(len(data.phenotype_names))
    with np.errstate(all="ignore"):
        model.set_target_scaling(np.nanmean(data.phenotypes, 0), np.nanstd(data.phenotypes, 0))
    return model


@pytest.mark.parametrize("name", list(MODELS))
def test_trains_end_to_end(toy, name):
    genome, graphs, data = toy
    torch.manual_seed(0)
    cls, hp = MODELS[name]
    model = scaled(cls(genome, graphs, data.phenotype_names, **hp), data)
    model.fit_records(data, np.arange(len(data)))
    json.dumps(model.hparams_dict)  # checkpoint-able
    assert {"d_model", "n_layers", "dropout"} <= set(model.hparams_dict) or name == "additive"
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
    # predictions come back in original units: unscale(standardised output)
    if name != "additive":
        model.eval()
        with torch.no_grad():
            out = model(full).pred
            model.set_target_scaling(model.y_mean + 10.0, model.y_std * 2)
            shifted = model(full).pred
        torch.testing.assert_close(shifted, (out - model.y_mean + 10.0) * 2 + model.y_mean, atol=1e-4, rtol=1e-4)


def test_additive_multiplicative_in_original_units_others_unscaled(toy):
    genome, graphs, data = toy
    model = scaled(Additive(genome, graphs, ["fitness", "epsilon"]), data)
    batch = PerturbationDataset(data).collate_rows(np.arange(3))
    pred = model(batch).pred
    assert torch.allclose(pred[:, 0], torch.ones(3))  # exp(0): the wild type, whatever the scaling
    assert torch.allclose(pred[:, 1], model.y_mean[1].expand(3))  # standardised 0 -> the training mean


def test_legacy_hyperparameter_names_map_to_the_common_ones(toy):
    genome, graphs, data = toy
    with pytest.warns(DeprecationWarning, match="d_model"):
        model = LazySubgraph(genome, graphs, data.phenotype_names, d=8, num_layers=1)
    assert model.hparams_dict == {"d_model": 8, "n_layers": 1, "dropout": 0.0}
    with pytest.raises(ValueError, match="d_model"):
        NeighborSubgraph(genome, graphs, data.phenotype_names, d_modle=8)


def test_dango_reports_reconstruction_losses(toy):
    genome, graphs, data = toy
    model = Dango(genome, graphs, data.phenotype_names, d_model=8, n_heads=2, recon_weight=0.5, recon_rows=16)
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
    model = LazySubgraph(genome, graphs, data.phenotype_names, d_model=8)
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
    model = NeighborSubgraph(genome, graphs, data.phenotype_names, hops=hops, d_model=8)
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
    args = "--synthetic --samples 200 --steps 1 --warmup 1 --methods dango,additive,1-hop --device cpu --equal-batch 64"
    results = throughput.main([*args.split(), "--out-dir", str(out)])
    assert {r["method"] for r in results["rows"]} == {"dango", "additive", "1-hop"}
    assert all(r["status"] == "ok" and r["samples_per_s"] > 0 for r in results["rows"])
    for ext in ("md", "json", "png"):
        assert (out / f"throughput_cpu.{ext}").stat().st_size > 0
    md = (out / "throughput_cpu.md").read_text()
    assert "samples/s" in md and "dango" in md and torch.__version__ in md
    assert json.loads((out / "throughput_cpu.json").read_text())["config"]["batch_size"] == 64


# ---------------------------------------------------------------------- graph smoothing
@pytest.fixture(scope="module")
def smoothing_toy() -> tuple[Genome, GraphSet, PerturbationData, np.ndarray]:
    """30 genes, a weighted undirected and a weighted directed graph; singles, pairs, triples, one
    quadruple; 20 % of the values NaN; a 70 % training split."""
    n = 30
    rng = np.random.default_rng(1)
    genome = Genome([f"G{i}" for i in range(n)])
    g1 = GeneGraph.from_edges("a", n, rng.integers(0, n, 40), rng.integers(0, n, 40), rng.uniform(0.1, 1, 40))
    g2 = GeneGraph.from_edges(
        "b", n, rng.integers(0, n, 30), rng.integers(0, n, 30), rng.uniform(0.1, 1, 30), directed=True
    )
    sets = (
        [[i] for i in range(n)]
        + [list(rng.choice(n, 2, replace=False)) for _ in range(150)]
        + [list(rng.choice(n, 3, replace=False)) for _ in range(100)]
        + [[1, 2, 3, 4]]
    )
    y = rng.normal(size=(len(sets), 2)).astype(np.float32)
    y[rng.random(y.shape) < 0.2] = np.nan
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sets])])
    data = PerturbationData(
        genes=genome.genes,
        offsets=offsets,
        gene_index=np.concatenate(sets),
        types=np.ones(offsets[-1]),
        phenotypes=y,
        phenotype_names=["fitness", "epsilon"],
    )
    train = rng.permutation(len(sets))[: int(0.7 * len(sets))]
    return genome, GraphSet([g1, g2]), data, train


def smoothing_reference(graphs: GraphSet, data: PerturbationData, train: np.ndarray, weighted: bool) -> np.ndarray:
    """Brute force: loop over queries and training records (see the model's docstring). A record of the
    query's size counts when it replaces exactly one query gene ``g`` by a neighbour ``c`` of it, with weight
    ``W[g, c]``."""
    n = len(data.genes)
    w = np.zeros((n, n))
    for g in graphs.values():
        a = g.adj.toarray()
        w = np.maximum(w, np.maximum(a, a.T))
    np.fill_diagonal(w, 0)
    if not weighted:
        w = (w > 0).astype(float)
    sets = [list(data.record(r)[0]) for r in range(len(data))]
    y = data.phenotypes.astype(np.float64)
    overall = np.nanmean(y[train], 0)
    ref = np.zeros(y.shape)
    for qi, q in enumerate(sets):
        k = len(q)
        recs = [(sets[r], y[r]) for r in train if len(sets[r]) == k]
        for p in range(y.shape[1]):
            measured = [v[p] for _, v in recs if not np.isnan(v[p])]
            size_mean = np.mean(measured) if measured else overall[p]
            num = den = 0.0
            if k <= 3:
                for s, v in recs:
                    out, new = set(q) - set(s), set(s) - set(q)
                    if np.isnan(v[p]) or len(out) != 1:
                        continue
                    kern = w[out.pop(), new.pop()]
                    num, den = num + kern * v[p], den + kern
            ref[qi, p] = num / den if den > 0 else size_mean
    return ref


@pytest.mark.parametrize("weighted", [False, True])
def test_graph_smoothing_matches_brute_force(smoothing_toy, weighted):
    genome, graphs, data, train = smoothing_toy
    model = build_model("graph_smoothing", genome, graphs, data.phenotype_names, weighted=weighted)
    assert not model.trainable and isinstance(model, GraphSmoothing)
    model.set_target_scaling(np.zeros(2), np.ones(2) * 3)  # not used: predictions are in original units
    model.fit_records(data, train)
    out = model(PerturbationDataset(data).collate_rows(np.arange(len(data))))
    ref = smoothing_reference(graphs, data, train, weighted)
    np.testing.assert_allclose(out.pred.numpy(), ref, atol=1e-5)
    # fallbacks are flagged and counted: the quadruple always falls back
    assert out.extras["fallback"].shape == (len(data), 2) and out.extras["fallback"][-1].all()
    stats = model.fallback_stats()
    assert stats["size4/fitness"] == 1.0 and 0 <= stats["all/fitness"] < 1
    assert set(model.monitor()) >= {"fallback/all/fitness", "fallback/size2/epsilon"}


def test_graph_smoothing_one_graph_differs_and_validates_names(smoothing_toy):
    genome, graphs, data, train = smoothing_toy
    one = build_model("graph_smoothing", genome, graphs, data.phenotype_names, graph_names=["a"])
    one.fit_records(data, train)
    ref = smoothing_reference(graphs.select(["a"]), data, train, weighted=False)
    pred = one(PerturbationDataset(data).collate_rows(np.arange(len(data)))).pred.numpy()
    np.testing.assert_allclose(pred, ref, atol=1e-5)
    with pytest.raises(ValueError, match="not among"):
        build_model("graph_smoothing", genome, graphs, data.phenotype_names, graph_names=["nope"])


def test_graph_smoothing_checkpoint_round_trip(smoothing_toy):
    genome, graphs, data, train = smoothing_toy
    model = build_model("graph_smoothing", genome, graphs, data.phenotype_names)
    model.fit_records(data, train)
    batch = PerturbationDataset(data).collate_rows(np.arange(len(data)))
    expected = model(batch).pred
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = build_model("graph_smoothing", genome, graphs, data.phenotype_names, **model.hparams_dict)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(batch).pred, expected)


# ---------------------------------------------------------------------- DANGO
def test_dango_diagonal_mask_a_gene_never_attends_to_itself(toy):
    genome, graphs, data = toy
    torch.manual_seed(0)
    model = Dango(genome, graphs, data.phenotype_names, d_model=16, n_heads=2, dropout=0.0).eval()
    hs = model.hypersagnn
    x = torch.randn(2, 3, 16)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    base = hs.attend(x, x, mask)
    for i in range(2):
        changed = x.clone()
        changed[:, i] += torch.randn(2, 16)  # perturb gene i's keys and values only
        out = hs.attend(x, changed, mask)
        torch.testing.assert_close(out[:, i], base[:, i])  # its own attention output does not move
        others = [j for j in range(3) if j != i]
        assert not torch.allclose(out[0, others], base[0, others])  # the other members' do
    # a single gene has nobody to attend to: zero attention output
    single = hs.attend(x[:, :1], x[:, :1], torch.ones(2, 1, dtype=torch.bool))
    assert torch.count_nonzero(single) == 0


def test_dango_uses_all_string_channels_by_default():
    n = 12
    genome = Genome([f"G{i}" for i in range(n)])
    ring = (np.arange(n), (np.arange(n) + 1) % n)
    names = [*STRING_CHANNELS, "ppi_physical"]
    graphs = GraphSet([GeneGraph.from_edges(name, n, *ring) for name in names])
    model = Dango(genome, graphs, ["fitness"], d_model=8, n_heads=2)
    assert model.graph_names == STRING_CHANNELS
    # without any STRING channel, every graph is a channel; an explicit list wins
    other = GraphSet([GeneGraph.from_edges("truth", n, *ring)])
    assert Dango(genome, other, ["fitness"], d_model=8, n_heads=2).graph_names == ["truth"]
    assert Dango(genome, graphs, ["fitness"], d_model=8, n_heads=2, graph_names=["ppi_physical"]).graph_names == [
        "ppi_physical"
    ]
    config = yaml.safe_load((ROOT / "configs" / "dango.yaml").read_text())
    assert set(STRING_CHANNELS) <= set(config["data"]["graphs"])
    assert config["model"]["model_args"]["graph_names"] is None


def test_dango_pretraining_reduces_reconstruction_loss(toy):
    genome, graphs, data = toy
    torch.manual_seed(0)
    model = Dango(genome, graphs, data.phenotype_names, d_model=16, n_heads=2, recon_rows=N, pretrain_lr=1e-2)
    rows = torch.arange(N)

    def recon() -> float:
        with torch.no_grad():
            return sum(float(model.reconstruction_loss(k, h, rows)) for k, h in enumerate(model.channel_embeddings()))

    before = recon()
    history = model.pretrain(60)
    assert len(history) == 60 and recon() < 0.5 * before
    # the HyperSAGNN is untouched by pretraining (only the channels are)
    assert all(p.grad is None for p in model.hypersagnn.parameters())


def test_additive_config_uses_the_tuned_settings():
    from cellformer.models.baselines.additive import TUNED

    config = yaml.safe_load((ROOT / "configs" / "additive.yaml").read_text())
    assert config["model"]["lr"] == TUNED["lr"] and config["trainer"]["max_steps"] == TUNED["steps"]
