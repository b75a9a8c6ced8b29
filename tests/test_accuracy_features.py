"""Selection, scaling and graph information for unseen genes: each mechanism does what it claims."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import clique_graph, toy_genome
from test_training import toy_config, toy_problem

from cellformer.cli import main as cli_main
from cellformer.data.context import DataContext
from cellformer.data.dataset import PerturbationData, collate_perturbations
from cellformer.errors import UserError
from cellformer.genome import Genome
from cellformer.graphs import GeneGraph, GraphSet
from cellformer.models.checkpoint import load_checkpoint, read_checkpoint
from cellformer.models.registry import build_model
from cellformer.training.datamodule import PerturbationDataModule
from cellformer.training.module import PhenotypeModule

N = 40


def cliques() -> GeneGraph:
    """Five cliques of 8 genes (the graph of every model here)."""
    return clique_graph(n=N, size=8)


def model(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    genome = toy_genome(N)
    graphs = GraphSet([cliques()], genome.hash)
    hp = {"d_model": 16, "n_layers": 2, "n_heads": 2, "dropout": 0.0} | kw
    return build_model("cellformer", genome, graphs, ["fitness"], **hp)


def set_features(m, sets, training: bool = False, hidden: torch.Tensor | None = None, types=None) -> dict:
    """The record features of ``sets`` (lists of gene indices) by feature name, from ``m.records``."""
    batch = collate_perturbations(
        [(i, np.asarray(g), np.ones(len(g), np.int8) if types is None else types[i], np.zeros(1, np.float32))
         for i, g in enumerate(sets)], N + 2)  # fmt: skip
    mean, std = m.target_scaling()
    out = m.records(batch.gene_index, batch.types, batch.ptr, batch.batch, mean, std, training, hidden)
    return {name: out[:, sl] for name, sl in m.records.slices().items()} | {"all": out}


# ---------------------------------------------------------------------- data module
@pytest.mark.parametrize("split", ["stored", "random"])
def test_max_records_keeps_an_80_10_10_split(tmp_path: Path, split: str):
    toy = toy_problem(tmp_path)
    n = len(PerturbationData.load(toy["dataset"]))
    dm = PerturbationDataModule(str(toy["dataset"]), str(toy["genes"]), [f"modules={toy['graphs']['modules']}"],
                                split=split, max_records=n // 2)  # fmt: skip
    sizes = {k: len(v) for k, v in dm.split_index.items()}
    assert sum(sizes.values()) == n // 2
    assert abs(sizes["train"] / (n // 2) - 0.8) < 0.05 and sizes["val"] > 0 and sizes["test"] > 0


def test_empty_training_split_is_a_user_error(tmp_path: Path):
    toy = toy_problem(tmp_path)
    data = PerturbationData.load(toy["dataset"])
    data.split[:] = 2  # every record stored as test
    data.save(tmp_path / "all_test.h5")
    with pytest.raises(UserError, match="training split is empty"):
        graphs = [f"modules={toy['graphs']['modules']}"]
        PerturbationDataModule(str(tmp_path / "all_test.h5"), str(toy["genes"]), graphs)


# ---------------------------------------------------------------------- scaling and selection
def test_targets_are_standardised_with_training_statistics_and_predictions_come_back_in_units(tmp_path: Path):
    toy = toy_problem(tmp_path)
    cfg = toy_config(tmp_path, toy, max_steps=4)
    assert cli_main(["fit", "--config", str(cfg)]) == 0
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    model, ctx = load_checkpoint(ckpt)
    data = PerturbationData.load(toy["dataset"])
    train = data.phenotypes[data.split == 0].astype(np.float64)
    np.testing.assert_allclose(model.y_mean.numpy(), np.nanmean(train, 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.y_std.numpy(), np.nanstd(train, 0), rtol=1e-5, atol=1e-6)
    # a model that outputs 0 in standardised units predicts the training mean in original units
    assert torch.allclose(model.unscale(torch.zeros(1, 3)), model.y_mean[None])
    assert torch.allclose(model.standardise(model.unscale(torch.ones(2, 3))), torch.ones(2, 3))
    assert "state_dict" in read_checkpoint(ckpt)


def test_val_loss_is_the_phenotype_loss_alone(tmp_path: Path):
    toy = toy_problem(tmp_path)
    dm = PerturbationDataModule(str(toy["dataset"]), str(toy["genes"]), [f"modules={toy['graphs']['modules']}"])
    reg = {"modules": {"layer": 0, "head": 0, "weight": 50.0, "rows": None}}
    module = PhenotypeModule(model_args={"d_model": 16, "n_layers": 1, "n_heads": 2, "graph_reg": reg},
                             context=dm.context)  # fmt: skip
    module.fit_data(dm.data, dm.split_index["train"])
    logged = {}
    module.log_dict = lambda d, **kw: logged.update({k: float(v) for k, v in d.items()})
    module.log = lambda k, v, **kw: logged.update({k: float(v)})
    batch = dm.dataset("val").collate_rows(dm.split_index["val"][:64])
    module._loss(batch, "val")
    assert logged["val/graph/modules"] > 1.0  # λ = 50: the graph term is large …
    assert logged["val_loss"] == pytest.approx(logged["val/phenotype_loss"])  # … and never in val_loss
    assert logged["val/total_loss"] == pytest.approx(logged["val/phenotype_loss"] + logged["val/graph/modules"])


def test_negative_or_nan_phenotype_weight_is_rejected(tmp_path: Path):
    ctx = DataContext(toy_genome(N), GraphSet([cliques()]), ["fitness"])
    for bad in (-1.0, float("nan")):
        with pytest.raises(UserError, match="phenotype_weights must be finite and ≥ 0"):
            PhenotypeModule(model="additive", phenotype_weights={"fitness": bad}, context=ctx)


def test_checkpoint_of_another_gene_order_is_refused_by_test(tmp_path: Path, capsys):
    toy = toy_problem(tmp_path)
    cfg = toy_config(tmp_path, toy, max_steps=2)
    assert cli_main(["fit", "--config", str(cfg), "--test_after_fit", "false"]) == 0
    # the same genes in another order: another genome hash
    lines = toy["genes"].read_text().splitlines()
    shuffled = tmp_path / "shuffled.tsv"
    shuffled.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    other = PerturbationData.load(toy["dataset"])
    genome = Genome.from_tsv(shuffled)
    other.genome_hash = genome.hash
    other.save(tmp_path / "other.h5")
    code = cli_main(["test", "--config", str(cfg), "--data.dataset", str(tmp_path / "other.h5"), "--data.genome",
                     str(shuffled), "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt")])  # fmt: skip
    assert code == 2
    assert "same genes in another order" in capsys.readouterr().err


# ---------------------------------------------------------------------- graph information for every gene
def test_unseen_genes_use_the_unknown_identity_and_their_graph_context():
    m = model(identity_dropout=0.0, structural_dim=0).eval()
    data = PerturbationData(genes=[f"G{i}" for i in range(N)], offsets=np.array([0, 1, 3]),
                            gene_index=np.array([0, 1, 2], np.int32), types=np.ones(3, np.int8),
                            phenotypes=np.zeros((2, 1), np.float32), phenotype_names=["fitness"])  # fmt: skip
    m.fit_records(data, np.array([0, 1]))
    assert m.tokens.seen[:3].all() and not m.tokens.seen[3:].any()
    ident, dropped = m.tokens.identities(0.0, True, None)
    assert dropped is None
    assert torch.equal(ident[0], m.tokens.gene_embed.weight[0])
    assert torch.equal(ident[5], m.tokens.unknown_gene)  # never trained: never used
    # gene 5's token depends on its neighbours' identities (genes 0..7 form a clique) …
    before = m.embed([])[0][0, 1 + 5].clone()
    with torch.no_grad():
        m.tokens.gene_embed.weight[1] += 1.0
    assert (m.embed([])[0][0, 1 + 5] - before).abs().max() > 1e-4
    # … and not on its own (unused) identity vector
    before = m.embed([])[0][0, 1 + 5].clone()
    with torch.no_grad():
        m.tokens.gene_embed.weight[5] += 1.0
    assert torch.equal(m.embed([])[0][0, 1 + 5], before)


def test_identity_dropout_only_in_training_and_off_the_global_rng():
    m = model(identity_dropout=0.5, mask_unseen=False)
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    m.train()
    dropped = m.embed([])[2]
    assert torch.equal(torch.rand(2), expected)
    assert 0.2 < float(dropped.float().mean()) < 0.8
    assert m.encode().hidden is not None  # the pass reports which genes it hid (their records hide too)
    m.eval()
    assert m.embed([])[2] is None and m.encode().hidden is None


def test_structural_encoding_is_deterministic_and_saved():
    a, b = model(), model()
    assert a.tokens.structure.shape == (N, 16) and torch.equal(a.tokens.structure, b.tokens.structure)
    assert "tokens.structure" in a.state_dict()
    # genes of one clique share their leading eigenvector coordinates
    s = a.tokens.structure.numpy()
    within = np.abs(s[0] - s[1]).sum()
    across = np.abs(s[0] - s[8]).sum()
    assert within < across


def test_graph_inputs_none_and_unknown():
    assert len(model(graph_inputs=[], structural_dim=0).tokens.hop_proj) == 0
    with pytest.raises(UserError, match="unknown graph in graph_inputs 'clique'.*did you mean cliques"):
        model(graph_inputs=["clique"])


def test_kl_ties_in_several_layers_reach_each_layer():
    m = model(graph_reg={"cliques": {"layer": [0, 1], "head": 1, "rows": None}}, identity_dropout=0.0)
    loss = m.graph_loss("cliques")
    loss.backward()
    for layer in (0, 1):
        q_rows, _ = m.blocks[layer].attn.head_slices(1)
        assert m.blocks[layer].attn.qkv.weight.grad[q_rows].abs().sum() > 0
    assert m.hparams_dict["graph_reg"]["cliques"]["layer"] == [0, 1]


def test_transpose_ties_targets_to_their_regulators():
    genome = toy_genome(N)
    star = GeneGraph.from_edges("reg", N, np.zeros(10, np.int64), np.arange(1, 11), directed=True)  # TF 0 -> 1..10
    graphs = GraphSet([star], genome.hash)
    plain = build_model("cellformer", genome, graphs, ["fitness"], d_model=16, n_layers=1, n_heads=2,
                        graph_reg={"reg": {"layer": 0, "head": 0}})  # fmt: skip
    tr = build_model("cellformer", genome, graphs, ["fitness"], d_model=16, n_layers=1, n_heads=2,
                     graph_reg={"reg": {"layer": 0, "head": 0, "transpose": True}})  # fmt: skip
    assert plain.regularizer.rows_of("reg").valid.tolist() == [0]
    assert tr.regularizer.rows_of("reg").valid.tolist() == list(range(1, 11))


def test_pairwise_summary_is_symmetric_and_zero_for_singletons():
    m = model().eval()
    batch = collate_perturbations([(0, np.array([1, 9]), np.array([1, 1]), np.zeros(1, np.float32)),
                                   (1, np.array([9, 1]), np.array([1, 1]), np.zeros(1, np.float32)),
                                   (2, np.array([3]), np.array([1]), np.zeros(1, np.float32))], N)  # fmt: skip
    with torch.no_grad():
        pred = m(batch).pred
        x = torch.randn(3, 4)
        pair = m.head.pairwise(x, torch.tensor([0, 0, 1]), 2)
    assert torch.allclose(pred[0], pred[1], atol=1e-6)
    assert torch.allclose(pair[0], x[0] * x[1]) and torch.equal(pair[1], torch.zeros(4))


def test_label_inputs_are_neighbour_means_of_training_singles_never_the_gene_itself():
    m = model(identity_dropout=0.0)
    # singles of genes 0, 1, 9 (fitness 1, 3, 5) and a pair; gene 0's clique is 0..7, gene 9's is 8..15
    data = PerturbationData(genes=[f"G{i}" for i in range(N)], offsets=np.array([0, 1, 2, 3, 5]),
                            gene_index=np.array([0, 1, 9, 2, 3], np.int32), types=np.ones(5, np.int8),
                            phenotypes=np.array([[1.0], [3.0], [5.0], [7.0]], np.float32),
                            phenotype_names=["fitness"])  # fmt: skip
    m.set_target_scaling(np.array([2.0]), np.array([2.0]))  # standardised: (y − 2) / 2
    m.fit_records(data, np.arange(4))
    f = m.records.label_features.numpy()  # one graph: [mean of neighbours' singles, share of neighbours measured]
    assert f[0, 0] == pytest.approx((3.0 - 2) / 2) and f[0, 1] == pytest.approx(1 / 7)  # only gene 1, not itself
    assert f[2, 0] == pytest.approx(((1 - 2) / 2 + (3 - 2) / 2) / 2) and f[2, 1] == pytest.approx(2 / 7)
    assert f[9, 0] == 0 and f[9, 1] == 0  # no measured neighbour in 8..15 but itself
    assert f[8, 0] == pytest.approx((5.0 - 2) / 2)


def test_set_graph_features_count_adjacent_member_pairs():
    m = model()
    sets = [[0, 1], [0, 9], [0, 1, 9], [3], [0, N], [0, 1, 2, 9]]  # N: an added gene, never adjacent
    feats = set_features(m, sets)["pair_graph"][:, 0].tolist()
    assert feats == pytest.approx([1.0, 0.0, 1 / 3, 0.0, 0.0, 3 / 6])


def test_smoothing_features_are_the_substitution_estimate_and_never_read_the_record_itself():
    """The estimate of a set is the mean of the training records that replace one member by one of its graph
    neighbours (brute force below), the same in training and evaluation: a record never enters its own estimate;
    the graph-smoothing baseline computes the same estimate."""
    from cellformer.models.baselines.graph_smoothing import GraphSmoothing

    rng = np.random.default_rng(0)
    sets = [[int(g)] for g in range(0, N, 2)] + [sorted(rng.choice(N, 2, replace=False).tolist()) for _ in range(200)]
    sets += [sorted(rng.choice(8, 3, replace=False).tolist()) for _ in range(10)]  # triples in the first clique
    sets += [[0, 1], [2, 3], [1, 2, 3]]
    offsets = np.cumsum([0] + [len(x) for x in sets])
    y = rng.normal(size=(len(sets), 1)).astype(np.float32)
    data = PerturbationData(genes=[f"G{i}" for i in range(N)], offsets=offsets,
                            gene_index=np.concatenate(sets).astype(np.int32), types=np.ones(offsets[-1], np.int8),
                            phenotypes=y, phenotype_names=["fitness"])  # fmt: skip
    m = model()
    m.set_target_scaling(np.array([0.0]), np.array([1.0]))
    m.fit_records(data, np.arange(len(sets)))
    probe = [[0, 1], [2, 3], [1, 2, 3], [4], [0, 9]]
    train, evaluate = set_features(m, probe, training=True)["smoothing"], set_features(m, probe)["smoothing"]
    assert torch.equal(train, evaluate)
    clique = {g: set(range(g // 8 * 8, g // 8 * 8 + 8)) - {g} for g in range(N)}
    by_set: dict[frozenset, list[float]] = {}
    for genes, value in zip(sets, y[:, 0], strict=True):
        by_set.setdefault(frozenset(genes), []).append(float(value))
    for j, query in enumerate(probe):
        reads = [v for i, g in enumerate(query) for c in clique[g] - set(query)
                 for v in by_set.get(frozenset(query[:i] + [c] + query[i + 1:]), [])]  # fmt: skip
        assert reads, query  # every probe has neighbouring records
        assert float(train[j, 0]) == pytest.approx(np.mean(reads), abs=1e-5) and float(train[j, 1]) == 1.0
    ref = GraphSmoothing(toy_genome(N), GraphSet([cliques()], toy_genome(N).hash), ["fitness"])
    ref.fit_records(data, np.arange(len(sets)))
    batch = collate_perturbations([(i, np.asarray(g), np.ones(len(g), np.int8), np.zeros(1, np.float32))
                                   for i, g in enumerate(probe)], N)  # fmt: skip
    assert torch.allclose(ref(batch).pred[:, 0], train[:, 0], atol=1e-5)


def test_member_singles_use_each_members_single_but_never_a_training_singles_own():
    m = model(member_singles=True)
    # training singles of genes 0 (y=1) and 1 (y=3), a pair {0, 1}
    data = PerturbationData(genes=[f"G{i}" for i in range(N)], offsets=np.array([0, 1, 2, 4]),
                            gene_index=np.array([0, 1, 0, 1], np.int32), types=np.ones(4, np.int8),
                            phenotypes=np.array([[1.0], [3.0], [5.0]], np.float32),
                            phenotype_names=["fitness"])  # fmt: skip
    m.set_target_scaling(np.array([0.0]), np.array([1.0]))
    m.fit_records(data, np.arange(3))
    sets = [[1], [0, 1], [0], [5]]
    train = set_features(m, sets, training=True)["member_singles"]
    infer = set_features(m, sets)["member_singles"]
    # columns: sum of values, count, mean pairwise product
    assert train[:, 0].tolist() == [0.0, 4.0, 0.0, 0.0] and train[:, 1].tolist() == [0.0, 2.0, 0.0, 0.0]
    assert infer[:, 0].tolist() == [3.0, 4.0, 1.0, 0.0] and infer[:, 1].tolist() == [1.0, 2.0, 1.0, 0.0]
    assert train[1, 2] == pytest.approx(3.0) and train[0, 2] == 0.0


def additive_toy(seed: int = 0) -> tuple[PerturbationData, np.ndarray]:
    """Singles, doubles and triples over N genes with a log-additive fitness and an additive score."""
    rng = np.random.default_rng(seed)
    sets = [[g] for g in range(N)] + [sorted(rng.choice(N, k, replace=False).tolist()) for k in [2] * 300 + [3] * 60]
    offsets = np.cumsum([0] + [len(x) for x in sets])
    effect = rng.normal(0, 0.3, size=N)
    fitness = np.array([np.exp(-abs(effect[s]).sum()) for s in sets]) + rng.normal(0, 0.01, len(sets))
    score = np.array([effect[s].sum() for s in sets]) + rng.normal(0, 0.05, len(sets))
    data = PerturbationData(genes=[f"G{i}" for i in range(N)], offsets=offsets,
                            gene_index=np.concatenate(sets).astype(np.int32), types=np.ones(offsets[-1], np.int8),
                            phenotypes=np.stack([fitness, score], 1).astype(np.float32),
                            phenotype_names=["fitness", "score"])  # fmt: skip
    return data, np.arange(len(sets))


def test_cross_fitted_additive_solves_the_ridge_problem_and_never_sees_a_training_record():
    """The full fit equals the dense ridge solution; a training record's estimate comes from the fit that
    left its fold out, so changing its own label leaves its estimate unchanged (and changes the full fit)."""
    from cellformer.models.baselines.additive import CrossFittedAdditive, set_folds

    data, rows = additive_toy()
    est = CrossFittedAdditive(N, data.phenotype_names, folds=4, penalties=(1.0,))
    mean, std = np.nanmean(data.phenotypes, 0), np.nanstd(data.phenotypes, 0)
    est.fit(data, rows, data.phenotype_names, mean, std)
    X = np.zeros((len(rows), N))
    for r in rows:
        X[r, data.gene_index[data.offsets[r] : data.offsets[r + 1]]] = 1
    targets = [np.log(np.maximum(data.phenotypes[:, 0], 0.01)), (data.phenotypes[:, 1] - mean[1]) / std[1]]
    for p, target in enumerate(targets):
        # dense reference: target ≈ b + μ·|S| + X δ with only δ penalised (λ = 1), intercept unpenalised
        Z = np.c_[np.ones(len(rows)), X.sum(1), X]
        w = np.linalg.solve(Z.T @ Z + np.diag(np.r_[0.0, 0.0, np.ones(N)]), Z.T @ target)
        fitted = est.effect[4].view(N, -1, 2)[:, 1, p].numpy()  # (gene, DELETION) columns of the full fit
        np.testing.assert_allclose(fitted, w[2:], atol=1e-4)
        assert float(est.slope[4, p]) == pytest.approx(w[1], abs=1e-4)
        assert float(est.bias[4, p]) == pytest.approx(w[0], abs=1e-4)

    gi, ptr = torch.as_tensor(data.gene_index.astype(np.int64)), torch.as_tensor(data.offsets)
    m, s = torch.as_tensor(mean), torch.as_tensor(std)
    crossed = est(gi, torch.ones_like(gi), ptr, m, s, cross_fitted=True)
    full = est(gi, torch.ones_like(gi), ptr, m, s, cross_fitted=False)
    batch = torch.repeat_interleave(torch.arange(len(rows)), ptr[1:] - ptr[:-1])
    folds = set_folds(gi, batch, len(rows), 4)
    assert sorted(torch.unique(folds).tolist()) == [0, 1, 2, 3]
    assert set_folds(gi.flip(0), batch.flip(0), len(rows), 4).equal(folds)  # member order does not matter

    r = N + 5  # a double
    changed = PerturbationData(**{**data.__dict__, "phenotypes": data.phenotypes.copy()})
    changed.phenotypes[r] += 3.0
    est2 = CrossFittedAdditive(N, data.phenotype_names, folds=4, penalties=(1.0,))
    est2.fit(changed, rows, data.phenotype_names, mean, std)
    crossed2 = est2(gi, torch.ones_like(gi), ptr, m, s, cross_fitted=True)
    full2 = est2(gi, torch.ones_like(gi), ptr, m, s, cross_fitted=False)
    same_fold = folds == folds[r]
    assert torch.allclose(crossed2[same_fold], crossed[same_fold])  # nothing in r's fold saw r's label
    assert not torch.allclose(full2[r], full[r])
    assert (full[:, 2:] == 1).all()  # every member of every record has training records


@pytest.mark.parametrize("bins", ["dense", "sorted"])
def test_cross_fitted_additive_fold_fits_and_penalty_match_the_dense_solution(monkeypatch, bins):
    """Every fold's fit equals the dense ridge solution without that fold, records with heterologous members
    count only their base-genome members, and λ is the grid point of least out-of-fold error; the same with
    the Gram pattern found by sorting instead of counting into bins, and held sparse instead of dense."""
    import cellformer.models.pairs as pairs
    from cellformer.models.baselines.additive import CrossFittedAdditive, set_folds

    if bins == "sorted":
        monkeypatch.setattr(pairs, "DENSE_BINS", 0)
        monkeypatch.setattr(pairs, "DENSE_SHARE", 2.0)
    data, rows = additive_toy()
    gene_index = data.gene_index.copy()
    gene_index[data.offsets[N + 7]] = N  # a heterologous member (index N: outside the base genome)
    data = PerturbationData(**{**data.__dict__, "gene_index": gene_index, "genes": data.genes + ["GFP"]})
    penalties = (0.1, 3.0, 300.0)
    est = CrossFittedAdditive(N, data.phenotype_names, folds=3, penalties=penalties)
    mean, std = np.nanmean(data.phenotypes, 0), np.nanstd(data.phenotypes, 0)
    est.fit(data, rows, data.phenotype_names, mean, std)
    X = np.zeros((len(rows), N))
    for r in rows:
        g = gene_index[data.offsets[r] : data.offsets[r + 1]]
        X[r, g[g < N]] = 1
    gi, ptr = torch.as_tensor(gene_index.astype(np.int64)), torch.as_tensor(data.offsets)
    batch = torch.repeat_interleave(torch.arange(len(rows)), ptr[1:] - ptr[:-1])
    fold = set_folds(gi, batch, len(rows), 3).numpy()
    target = (data.phenotypes[:, 1] - mean[1]) / std[1]
    Z = np.c_[np.ones(len(rows)), X.sum(1), X]

    def ridge(sel: np.ndarray, lam: float) -> np.ndarray:
        return np.linalg.solve(Z[sel].T @ Z[sel] + np.diag(np.r_[1e-8, 1e-8, np.full(N, lam)]), Z[sel].T @ target[sel])

    errors = []
    for lam in penalties:
        pred = np.zeros(len(rows))
        for f in range(3):
            pred[fold == f] = Z[fold == f] @ ridge(fold != f, lam)
        errors.append(np.sum((pred - target) ** 2))
    lam = penalties[int(np.argmin(errors))]
    assert float(est.penalty[1]) == pytest.approx(lam)
    for f, sel in enumerate([fold != 0, fold != 1, fold != 2, np.ones(len(rows), bool)]):
        w = ridge(sel, lam)
        np.testing.assert_allclose(est.effect[f].view(N, -1, 2)[:, 1, 1].numpy(), w[2:], atol=1e-4)
        assert float(est.slope[f, 1]) == pytest.approx(w[1], abs=1e-4)
        assert float(est.bias[f, 1]) == pytest.approx(w[0], abs=1e-4)


def test_cross_fitted_additive_estimate_tracks_the_truth_and_reaches_the_readout():
    """On a log-additive toy the estimate correlates with held-out fitness; CellFormer gets 2P more readout
    inputs, a heterologous or unmeasured member counts as not measured, and the fit survives a checkpoint."""
    data, rows = additive_toy()
    train, test = rows[rows % 5 != 0], rows[rows % 5 == 0]
    m2 = build_model("cellformer", toy_genome(N), GraphSet([cliques()], toy_genome(N).hash), ["fitness", "score"],
                     d_model=16, n_layers=1, n_heads=2, additive_features=True, additive_folds=3)  # fmt: skip
    m2.set_target_scaling(np.nanmean(data.phenotypes[train], 0), np.nanstd(data.phenotypes[train], 0))
    m2.fit_records(data, train)
    sub = data.subset(test)
    gi, ptr = torch.as_tensor(sub.gene_index.astype(np.int64)), torch.as_tensor(sub.offsets)
    batch = torch.repeat_interleave(torch.arange(ptr.numel() - 1), ptr[1:] - ptr[:-1])
    feats = m2.records(gi, torch.ones_like(gi), ptr, batch, m2.y_mean, m2.y_std)
    est = m2.records.additive(gi, torch.ones_like(gi), ptr, m2.y_mean, m2.y_std, cross_fitted=False)
    assert torch.equal(feats[:, m2.records.slices()["additive"]], est)  # estimate and measured share per phenotype
    truth = (sub.phenotypes - m2.y_mean.numpy()) / m2.y_std.numpy()
    for p in range(2):
        assert np.corrcoef(est[:, p].numpy(), truth[:, p])[0, 1] > 0.9
    other = m2.records.additive(torch.tensor([0, N + 1]), torch.ones(2, dtype=torch.long), torch.tensor([0, 2]),
                                 m2.y_mean, m2.y_std, cross_fitted=False)  # fmt: skip
    assert other[0, 2:].tolist() == [0.5, 0.5]  # the added gene (index N + 1) has no training records
    fresh = build_model("cellformer", toy_genome(N), GraphSet([cliques()], toy_genome(N).hash), ["fitness", "score"],
                        d_model=16, n_layers=1, n_heads=2, additive_features=True, additive_folds=3)  # fmt: skip
    fresh.load_state_dict(m2.state_dict())
    assert torch.equal(fresh.records.additive(gi, torch.ones_like(gi), ptr, m2.y_mean, m2.y_std, False), est)


def test_a_gene_with_a_dropped_identity_hides_its_own_records_in_training():
    """Identity dropout stands for "an unseen gene": in that step the gene's member single and additive
    effect are hidden too (read as unmeasured); outside training nothing is hidden."""
    data, rows = additive_toy()
    m = model(member_singles=True, additive_features=True, additive_folds=2, identity_dropout=0.5,
              smoothing_features=False, pair_graph_features=False)  # fmt: skip
    m.set_target_scaling(np.array([0.5]), np.array([0.2]))
    fit_data = PerturbationData(
        **{**data.__dict__, "phenotypes": data.phenotypes[:, :1], "phenotype_names": ["fitness"]}
    )
    m.fit_records(fit_data, rows)
    sets = [[0, 1], [2, 3, 4]]
    m.train()
    hidden = m.encode().hidden
    dropped = hidden[:5]
    assert 0 < int(dropped.sum()) < 5
    feats = set_features(m, sets, training=True, hidden=hidden)
    count = torch.zeros(2).index_add(0, torch.tensor([0, 0, 1, 1, 1]), (~dropped).float())
    assert feats["member_singles"][:, 1].tolist() == count.tolist()  # every member has a single; dropped: hidden
    assert feats["additive"][:, -1].tolist() == pytest.approx((count / torch.tensor([2.0, 3.0])).tolist())
    m.eval()
    assert m.encode().hidden is None and set_features(m, sets)["member_singles"][:, 1].tolist() == [2.0, 3.0]


def test_member_pairs_read_the_training_doubles_among_a_triples_members():
    """A triple reads its member pairs' training doubles (mean and share measured); a double never reads its
    own record; a gene dropped in a training step hides its pairs."""
    m = model(member_pairs=True)
    sets = [[0, 1], [1, 2], [5, 6]]
    data = PerturbationData(genes=[f"G{i}" for i in range(N)], offsets=np.array([0, 2, 4, 6]),
                            gene_index=np.concatenate(sets).astype(np.int32), types=np.ones(6, np.int8),
                            phenotypes=np.array([[1.0], [3.0], [7.0]], np.float32),
                            phenotype_names=["fitness"])  # fmt: skip
    m.set_target_scaling(np.array([0.0]), np.array([1.0]))
    m.fit_records(data, np.arange(3))
    sets = [[2, 1, 0], [0, 1], [3, 4, 9]]
    out = set_features(m, sets)["member_pairs"]
    assert out[0].tolist() == pytest.approx([2.0, 2 / 3])  # mean of {0,1}=1 and {1,2}=3; 2 of 3 pairs
    assert out[1].tolist() == [0.0, 0.0] and out[2].tolist() == [0.0, 0.0]
    dropped = torch.zeros(N, dtype=torch.bool)
    dropped[0] = True
    assert set_features(m, sets, True, dropped)["member_pairs"][0].tolist() == pytest.approx([3.0, 1 / 3])
    fresh = model(member_pairs=True)  # the table survives a checkpoint (buffers sized from the state dict)
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(set_features(fresh, sets)["member_pairs"], out)
    no_graph = model(member_pairs=True, graph_inputs=[])  # needs no graph
    no_graph.set_target_scaling(np.array([0.0]), np.array([1.0]))
    no_graph.fit_records(data, np.arange(3))
    assert torch.equal(set_features(no_graph, sets)["member_pairs"], out)
