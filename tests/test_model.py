"""CellFormer forward pass: shapes, set invariance, the O(B·N·d) head, heterologous variants, gradients."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import clique_graph, ring_graph

from cellformer.data.dataset import PerturbationType, collate_perturbations
from cellformer.genome import Genome
from cellformer.graphs import GraphSet
from cellformer.models.base import ModelOutput
from cellformer.models.cellformer import CellFormer
from cellformer.models.diagnostics import oversmoothing

N, F_DIM, P = 40, 5, 3
RNG = np.random.default_rng(0)
HET = RNG.normal(size=(3, F_DIM)).astype(np.float32)  # three heterologous genes (indices N, N+1, N+2)


def graphs() -> GraphSet:
    return GraphSet([clique_graph("cliques", n=N, size=10), ring_graph("ring", n=N)])


def make_model(pool: str = "mean", seed: int = 0, dropout: float = 0.0, **kw) -> CellFormer:
    """A small model whose parameters are re-drawn at a larger scale, so predictions are O(1), not ~1e-3."""
    torch.manual_seed(seed)
    genome = Genome([f"G{i}" for i in range(N)], features=RNG.normal(size=(N, F_DIM)).astype(np.float32))
    reg = {"cliques": {"layer": 0, "head": 1, "rows": 16}, "ring": {"layer": 1, "head": 0, "weight": 0.5}}
    hp = {"d_model": 16, "n_layers": 2, "n_heads": 2, "dropout": dropout, "pool": pool, "graph_reg": reg} | kw
    model = CellFormer(genome, graphs(), [f"p{i}" for i in range(P)], **hp)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0.0, 0.5 if p.ndim == 1 else 1.0 / p.shape[-1] ** 0.5)
    return model


def item(r: int, genes: list[int], types: list[int]):
    return r, np.array(genes), np.array(types), np.zeros(P, np.float32)


T = PerturbationType
D, K, O, A = (int(t) for t in (T.DELETION, T.KNOCKDOWN, T.OVEREXPRESSION, T.ADDITION))
ITEMS = [item(0, [1, 2], [D, D]), item(1, [5], [K]), item(2, [7, 3, 30], [D, O, K]), item(3, [], [])]


@pytest.mark.parametrize("pool", ["mean", "sum", "attention"])
def test_forward_shapes_and_losses(pool):
    model = make_model(pool)
    batch = collate_perturbations(ITEMS, N)
    out = model(batch, return_attention=True)
    assert isinstance(out, ModelOutput)
    assert out.pred.shape == (4, P) and torch.isfinite(out.pred).all()
    assert set(out.losses) == {"graph/cliques", "graph/ring"}
    assert all(v.ndim == 0 and v > 0 for v in out.losses.values())
    assert out.extras["beta"].shape == (4, N)
    assert torch.allclose(out.extras["beta"].sum(-1), torch.ones(4))
    assert model(batch, graph_losses=False).losses == {}
    assert "beta" not in model(batch).extras


@pytest.mark.parametrize("pool", ["mean", "sum", "attention"])
def test_prediction_invariant_to_order_within_set(pool):
    model = make_model(pool).eval()
    a = collate_perturbations([item(0, [7, 3, 30], [D, O, K])], N)
    b = collate_perturbations([item(0, [30, 7, 3], [K, D, O])], N)
    with torch.no_grad():
        assert torch.allclose(model(a).pred, model(b).pred, atol=1e-6)


@pytest.mark.parametrize("pool", ["mean", "attention"])
def test_head_equals_naive_dense_type_reference(pool):
    model = make_model(pool).eval()
    batch = collate_perturbations(ITEMS, N)
    head = model.head
    with torch.no_grad():
        enc = model.encode_genome()
        pred = model.predict_from_encoding(enc, batch.gene_index, batch.types, batch.ptr, batch.batch)
        H, cls = enc.genes[0], enc.cls[0]
        for b, (genes, types) in enumerate(
            zip(batch.sets(), np.split(batch.types.numpy(), batch.ptr[1:-1]), strict=True)
        ):
            m = torch.full((N,), int(PerturbationType.PRESENT))  # dense per-sample type vector M(S)
            m[genes] = torch.as_tensor(types)
            members = torch.as_tensor(genes, dtype=torch.long)
            q = head.pool(H[members], torch.zeros(len(genes), dtype=torch.long), 1)[0]
            beta = torch.softmax(head.score(q) @ H.T / model.d_model**0.5 + head.type_score_bias[m], dim=-1)
            z = beta @ head.phi(H, m)
            phi_s = head.phi(H[members], torch.as_tensor(types))  # naive pairwise mean over i < j
            pairs = [phi_s[i] * phi_s[j] for i in range(len(genes)) for j in range(i + 1, len(genes))]
            pair = torch.stack(pairs).mean(0) if pairs else torch.zeros_like(z)
            pairs_ij = list(itertools.combinations(genes, 2))  # share of member pairs adjacent in each graph
            adjacent = [np.mean([model.graphs[g].adj[a, b] > 0 for a, b in pairs_ij]) if pairs_ij else 0.0
                        for g in model.graph_inputs]  # fmt: skip
            ptr, ids = torch.tensor([0, len(genes)]), torch.zeros(len(genes), dtype=torch.long)
            one = (members, torch.as_tensor(types), ptr, ids)
            extra = model.records(*one, torch.zeros(P), torch.ones(P))[0]  # what the records say (tested elsewhere)
            assert extra[model.records.slices()["pair_graph"]].tolist() == pytest.approx(adjacent)
            ref = head.readout(torch.cat([cls, z, pair, extra])) + head.additive(phi_s).sum(0)
            assert torch.allclose(pred[b], ref, atol=1e-5), (b, pred[b], ref)


def test_heterologous_variant_batch():
    model = make_model("attention").eval()
    base = [item(0, [1, 2], [D, D]), item(1, [5], [K])]
    with_het = base + [item(2, [N + 1, 4], [A, D]), item(3, [N, N + 2], [A, A])]
    plain = collate_perturbations(base, N, HET)
    mixed = collate_perturbations(with_het, N, HET)
    assert len(mixed.variants) == 3 and mixed.variant.tolist() == [0, 0, 1, 2]
    no_add = collate_perturbations([item(2, [4], [D])], N, HET)
    with torch.no_grad():
        p_plain = model(plain).pred
        out = model(mixed, return_attention=True)
        p_no_add = model(no_add).pred
    # unchanged base samples predict the same as in a batch without variants
    assert torch.allclose(out.pred[:2], p_plain, atol=1e-5)
    # adding a gene changes the prediction
    assert (out.pred[2] - p_no_add[0]).abs().max() > 1e-3  # numerical noise is ~1e-6
    # attention covers the padded genome: one padded key for variant 1, none for variant 2
    beta = out.extras["beta"]
    assert beta.shape == (4, N + 2)
    assert beta[2, N + 1] == 0 and beta[3, N + 1] > 0 and beta[0, N:].sum() == 0
    # a single-variant encoding (what a predictor caches) gives the same answer
    with torch.no_grad():
        enc = model.encode_genome(torch.from_numpy(HET[[1]]))
        single = collate_perturbations([item(2, [N + 1, 4], [A, D])], N, HET)
        p = model.predict_from_encoding(enc, single.gene_index, single.types, single.ptr, single.batch)
    assert torch.allclose(p[0], out.pred[2], atol=1e-5)


@pytest.mark.parametrize("attn_dropout", [0.0, 0.1])
def test_gradient_reaches_every_parameter(attn_dropout):
    model = make_model("attention", dropout=0.1, attn_dropout=attn_dropout).train()
    with torch.no_grad():  # as if fit_records had found neighbours with single-mutant data
        model.records.label_features.normal_()
    batch = collate_perturbations(ITEMS + [item(4, [N, 3], [A, D])], N, HET)
    out = model(batch)
    loss = out.pred.square().sum() + sum(out.losses.values())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reaches {missing}"


def test_oversmoothing_measure():
    torch.manual_seed(0)
    spread = torch.randn(500, 32)
    collapsed = torch.randn(1, 32) + 1e-3 * torch.randn(500, 32)
    assert oversmoothing(spread) > 0.95
    assert oversmoothing(collapsed) < 1e-3
    assert 0.0 <= float(oversmoothing(spread + 3.0)) <= 1.0
    mask = torch.ones(2, 500, dtype=torch.bool)
    assert oversmoothing(torch.stack([spread, collapsed]), mask).shape == (2,)


def test_monitor_and_attention_helpers():
    model = make_model().eval()
    rows = torch.tensor([0, 11, 25])
    with torch.no_grad():
        alpha = model.attention_rows(1, 0, rows)
        align = model.attention_alignment("ring", 1, 0, rows)
    assert alpha.shape == (3, N) and torch.allclose(alpha.sum(-1), torch.ones(3))
    nbr = alpha[0, [1, N - 1]].sum() + alpha[1, [10, 12]].sum() + alpha[2, [24, 26]].sum()
    assert torch.allclose(align, nbr / 3, atol=1e-6)
    values = model.monitor(rows=8)
    assert {"oversmoothing", "graph_kl/cliques", "alignment/ring", "alignment_other_heads/ring"} <= set(values)


def test_bf16_autocast_cpu():
    model = make_model()
    batch = collate_perturbations(ITEMS, N, HET)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(batch)
    except RuntimeError as e:  # pragma: no cover - platform without bf16 kernels
        pytest.skip(f"bf16 autocast unsupported here: {e}")
    assert out.pred.shape == (4, P) and torch.isfinite(out.pred.float()).all()
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in out.losses.values())
    (out.pred.float().sum() + sum(out.losses.values())).backward()


def test_encoding_cache_reuses_one_encoding_and_matches_fresh_encoding():
    """The per-epoch encoding cache (evaluation loops) gives the same predictions and encodes once."""
    model = make_model().eval()
    b1 = collate_perturbations(ITEMS[:2], N)
    b2 = collate_perturbations(ITEMS[2:], N)
    calls = []
    original = model.encode
    with torch.no_grad():
        fresh = [model(b).pred for b in (b1, b2)]
        model.encode = lambda added: calls.append(1) or original(added)  # count encoder passes
        model.set_encoding_cache(True)
        cached = [model(b).pred for b in (b1, b2)]
        model.set_encoding_cache(False)
        model(b1)
    assert len(calls) == 2  # once for the cached epoch, once after the cache was switched off
    for a, b in zip(fresh, cached, strict=True):
        torch.testing.assert_close(a, b)


def test_gated_readout_multiplies_two_projections():
    """The gated readout is ``out(GELU(fc x) ⊙ gate x)``: it can form products (x1·x2), a plain one cannot
    without a wide hidden layer; the plain form is ``out(GELU(fc x))``."""
    from cellformer.models.layers import MLP

    torch.manual_seed(0)
    x = torch.randn(5, 3)
    gated, plain = MLP(3, 4, 2, 0.0, gated=True), MLP(3, 4, 2, 0.0)
    ref = gated.out(torch.nn.functional.gelu(gated.fc(x)) * gated.gate(x))
    assert torch.allclose(gated(x), ref) and plain.gate is None
    assert torch.allclose(plain(x), plain.out(torch.nn.functional.gelu(plain.fc(x))))
    m = make_model("mean")
    assert m.head.readout.gate is not None and m.head.readout.fc.out_features == 4 * m.d_model
