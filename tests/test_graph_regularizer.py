"""The graph regulariser acts: it aligns its head, scales with λ, reaches only its head, matches a dense reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import clique_graph, dense_graph_kl, toy_genome

from cellformer.data.dataset import collate_perturbations
from cellformer.genome import Genome
from cellformer.graphs import GeneGraph, GraphSet
from cellformer.models.cellformer import CellFormer

N, F_DIM = 60, 6


def toy_model(graph_reg: dict, graphs: GraphSet | None = None, genome: Genome | None = None, seed: int = 0, **kw):
    torch.manual_seed(seed)
    graphs = graphs or GraphSet([clique_graph(n=N)])
    hp = {"d_model": 32, "n_layers": 2, "n_heads": 2, "dropout": 0.0} | kw
    return CellFormer(genome or toy_genome(N, features=F_DIM), graphs, ["fitness"], graph_reg=graph_reg, **hp)


def test_trained_head_aligns_with_graph_and_free_head_does_not():
    model = toy_model({"cliques": {"layer": 0, "head": 0, "weight": 1.0, "rows": 30}})
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with torch.no_grad():
        before = float(model.attention_alignment("cliques", 0, 0))
    for _ in range(200):
        opt.zero_grad()
        loss = model.graph_loss("cliques")
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        tied = float(model.attention_alignment("cliques", 0, 0))
        free = float(model.attention_alignment("cliques", 0, 1))
    assert before < 0.4
    assert tied > 0.8, f"regularised head puts only {tied:.2f} of its mass on neighbours"
    assert free < 0.4, f"unregularised head aligned too ({free:.2f})"


def test_graph_term_is_linear_in_lambda():
    m1 = toy_model({"cliques": {"layer": 1, "head": 1, "weight": 1.0, "rows": 17}})
    m3 = toy_model({"cliques": {"layer": 1, "head": 1, "weight": 3.0, "rows": 17}})
    m1.generator.manual_seed(5)
    l1 = m1.graph_loss("cliques").item()
    m3.generator.manual_seed(5)
    l3 = m3.graph_loss("cliques").item()
    assert l1 > 0
    assert abs(l3 / l1 - 3.0) < 1e-5


def test_gradient_reaches_only_the_tied_head():
    model = toy_model({"cliques": {"layer": 1, "head": 0, "rows": 25}}, n_heads=4)
    model.zero_grad()
    model.graph_loss("cliques").backward()
    attn = model.blocks[1].attn
    grad = attn.qkv.weight.grad
    d = model.d_model
    for h in range(model.n_heads):
        q_rows, k_rows = attn.head_slices(h)
        gq, gk = grad[q_rows], grad[k_rows]
        if h == 0:
            assert gq.abs().sum() > 0 and gk.abs().sum() > 0
        else:
            assert torch.equal(gq, torch.zeros_like(gq)) and torch.equal(gk, torch.zeros_like(gk))
    # values, the output projection and later parts of the model play no part in the term
    assert torch.equal(grad[2 * d :], torch.zeros_like(grad[2 * d :]))
    assert attn.proj.weight.grad is None or not attn.proj.weight.grad.any()
    assert model.head.score.weight.grad is None
    # ... but the layer-1 input does depend on layer 0 and the embeddings
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.tokens.gene_embed.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("layer,head", [(0, 1), (1, 0)])
def test_sampled_kl_matches_dense_reference(weighted, layer, head):
    graphs = GraphSet([clique_graph(n=N, weighted=weighted)])
    model = toy_model({"cliques": {"layer": layer, "head": head, "weight": 0.7, "rows": 13}}, graphs=graphs)
    model.eval()
    with torch.no_grad():
        full = model.graph_loss("cliques", rows=model.regularizer.rows_of("cliques").valid)
        assert torch.allclose(full, dense_graph_kl(model, "cliques"), atol=1e-5)
        model.generator.manual_seed(3)
        sampled = model.graph_loss("cliques")
        model.generator.manual_seed(3)
        rows = model.regularizer.sample("cliques")
        assert rows.numel() == 13 and rows.unique().numel() == 13
        assert torch.allclose(sampled, dense_graph_kl(model, "cliques", rows=rows), atol=1e-5)
        # the forward pass reports the same term (eval mode: no dropout, sampling right after encoding)
        batch = collate_perturbations([(0, np.array([1, 2]), np.array([1, 1]), np.zeros(1, np.float32))], N)
        model.generator.manual_seed(3)
        out = model(batch)
        assert torch.allclose(out.losses["graph/cliques"], sampled, atol=1e-6)


def test_row_sampling_leaves_the_global_rng_alone():
    """Rows come from the model's own generator, so arms with and without a graph term see the same batches."""
    model = toy_model({"cliques": {"layer": 0, "head": 0, "rows": 10}})
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    model.regularizer.sample("cliques")
    model.graph_loss("cliques")
    assert torch.equal(torch.rand(3), expected)


def test_rows_are_reproducible_and_uniform():
    model = toy_model({"cliques": {"layer": 0, "head": 0, "rows": 10}})
    model.generator.manual_seed(0)
    a = model.regularizer.sample("cliques")
    model.generator.manual_seed(0)
    b = model.regularizer.sample("cliques")
    assert torch.equal(a, b)
    counts = torch.zeros(N)
    for _ in range(600):
        counts[model.regularizer.sample("cliques")] += 1
    assert counts.min() > 50 and counts.max() < 150  # expectation 100 per gene


def test_masked_rows_never_enter():
    # genes 0-9 have no edges; genes 50-59 are added genes of the genome, whose edges are dropped
    graph = clique_graph(n=N)
    adj = graph.adj.tolil()
    adj[0:10, :] = 0
    adj[:, 0:10] = 0
    graphs = GraphSet([GeneGraph("cliques", adj.tocsr())])
    added = np.zeros(N, dtype=bool)
    added[50:] = True
    model = toy_model(
        {"cliques": {"layer": 0, "head": 1, "rows": 7}},
        graphs=graphs,
        genome=toy_genome(N, features=F_DIM, added=added),
    )
    model.eval()
    valid = model.regularizer.rows_of("cliques").valid
    assert torch.equal(valid, torch.arange(10, 50))
    seen = torch.cat([model.regularizer.sample("cliques") for _ in range(300)]).unique()
    assert torch.equal(seen, torch.arange(10, 50))
    # no target mass on added genes' keys; still an exact distribution over the other genes
    g = model.regularizer.rows_of("cliques")
    assert not (g.col >= 50).any()
    assert torch.allclose(g.val.sum(), torch.tensor(float(valid.numel())))
    with torch.no_grad():
        assert torch.allclose(model.graph_loss("cliques", rows=valid), dense_graph_kl(model, "cliques"), atol=1e-5)
        with pytest.raises(ValueError, match="not valid rows"):
            model.graph_loss("cliques", rows=torch.tensor([3, 20]))

    # a heterologous variant in the batch changes neither the rows drawn nor the term
    het = np.random.default_rng(2).normal(size=(2, F_DIM)).astype(np.float32)
    y = np.zeros(1, np.float32)
    plain = collate_perturbations([(0, np.array([12]), np.array([1]), y)], N, het)
    mixed = collate_perturbations([(0, np.array([12]), np.array([1]), y), (1, np.array([N]), np.array([4]), y)], N, het)
    assert len(mixed.variants) == 2
    with torch.no_grad():
        model.generator.manual_seed(11)
        l_plain = model(plain).losses["graph/cliques"]
        rows_plain = model.regularizer.sample("cliques")
        model.generator.manual_seed(11)
        l_mixed = model(mixed).losses["graph/cliques"]
        rows_mixed = model.regularizer.sample("cliques")
    assert torch.equal(rows_plain, rows_mixed)
    assert torch.allclose(l_plain, l_mixed, atol=1e-6)


def test_bad_graph_reg_raises_at_construction():
    with pytest.raises(ValueError, match="unknown graph in graph_reg 'string'; available: cliques"):
        toy_model({"string": {"layer": 0, "head": 0}})
    with pytest.raises(ValueError, match=r"valid heads are 0\.\.1"):
        toy_model({"cliques": {"layer": 0, "head": 2}})
    with pytest.raises(ValueError, match=r"valid layers are 0\.\.1"):
        toy_model({"cliques": {"layer": 5, "head": 0}})
    with pytest.raises(ValueError, match="unknown key 'lambda'"):
        toy_model({"cliques": {"layer": 0, "head": 0, "lambda": 1.0}})
    with pytest.raises(ValueError, match="unknown key 'wieght'.*did you mean weight"):
        toy_model({"cliques": {"layer": 0, "head": 0, "wieght": 1.0}})
    with pytest.raises(ValueError, match="weight must be a finite number"):
        toy_model({"cliques": {"layer": 0, "head": 0, "weight": float("nan")}})
    with pytest.raises(ValueError, match="weight must be a finite number"):
        toy_model({"cliques": {"layer": 0, "head": 0, "weight": -1.0}})


def test_graph_buffers_follow_the_model_and_hparams_are_json():
    import json

    model = toy_model({"cliques": {"layer": 0, "head": 0, "weight": 0.5, "rows": 8}})
    names = {n for n, _ in model.named_buffers()}
    tied = {f"regularizer.graphs.0.{p}" for p in ("crow", "col", "val", "valid")}
    assert tied | {"tokens.features", "tokens.known"} <= names
    assert not tied & set(model.state_dict())  # rebuilt from the graphs, not saved
    hp = json.loads(json.dumps(model.hparams_dict))
    assert hp["graph_reg"] == {"cliques": {"layer": 0, "head": 0, "weight": 0.5, "rows": 8, "transpose": False}}
    # a rebuilt model from the hyper-parameters loads the state dict
    rebuilt = CellFormer(toy_genome(N, features=F_DIM), GraphSet([clique_graph(n=N)]), ["fitness"], **hp)
    rebuilt.load_state_dict(model.state_dict())
