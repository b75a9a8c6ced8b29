"""The record-derived inputs as one component: identical values to the implementation they replace, and a
batch-side computation whose tables hold distinct measured sets, not records.

``fixtures/record_features_76ec2ff.npz`` holds a toy screen (40 genes, an undirected and a directed random
graph, 300 records of 1-3 genes with NaNs, 220 training records) and the set features CellFormer 0.1.0
computed for every record at commit 76ec2ff (``CellFormer.set_features``, evaluation and training mode, with
and without a fixed identity-dropout mask), plus its token inputs. Every feature must agree, except the
smoothing estimate of sets of two and three genes, whose definition changed on purpose (the one-substitution
form, tested against brute force in ``test_accuracy_features.py`` and ``test_baselines.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import toy_genome

from cellformer.data.dataset import PerturbationData, PerturbationDataset, PerturbationType
from cellformer.graphs import GeneGraph, GraphSet
from cellformer.models.record_features import SetTable, numpy_set_keys, padded_members, set_keys
from cellformer.models.registry import build_model

REFERENCE = Path(__file__).parent / "fixtures" / "record_features_76ec2ff.npz"
N = 40


@pytest.fixture(scope="module")
def reference() -> dict:
    ref = dict(np.load(REFERENCE))
    genome = toy_genome(N)
    g1 = GeneGraph.from_edges("g1", N, ref["g1_src"], ref["g1_dst"])
    g2 = GeneGraph.from_edges("g2", N, ref["g2_src"], ref["g2_dst"], directed=True)
    data = PerturbationData(genes=list(genome.genes), offsets=ref["offsets"], gene_index=ref["gene_index"],
                            types=np.full(len(ref["gene_index"]), int(PerturbationType.DELETION)),
                            phenotypes=ref["phenotypes"], phenotype_names=["fitness", "epsilon"],
                            genome_hash=genome.hash)  # fmt: skip
    model = build_model(
        "cellformer",
        genome,
        GraphSet([g1, g2], genome.hash),
        data.phenotype_names,
        d_model=16,
        n_layers=1,
        n_heads=2,
        profile_dim=0,
    )  # fmt: skip  (no profiles at 76ec2ff)
    train = ref["train"]
    y = data.phenotypes[train].astype(np.float64)
    model.set_target_scaling(np.nanmean(y, 0), np.nanstd(y, 0))
    model.fit_records(data, train)
    return {"ref": ref, "model": model, "data": data, "batch": PerturbationDataset(data).collate_rows(np.arange(300))}


def features(model, batch, training: bool = False, hidden=None) -> np.ndarray:
    mean, std = model.target_scaling()
    with torch.no_grad():
        return model.records(batch.gene_index, batch.types, batch.ptr, batch.batch, mean, std, training, hidden).numpy()


def test_token_inputs_are_unchanged(reference):
    np.testing.assert_allclose(reference["model"].records.label_features.numpy(), reference["ref"]["label_features"],
                               atol=1e-6)  # fmt: skip


@pytest.mark.parametrize("mode", ["eval", "train", "train_nodrop"])
def test_set_features_are_unchanged(reference, mode):
    ref, model, batch = reference["ref"], reference["model"], reference["batch"]
    hidden = torch.from_numpy(ref["dropped"]) if mode == "train" else None
    new = features(model, batch, training=mode != "eval", hidden=hidden)
    old = ref["train_features_nodrop" if mode == "train_nodrop" else f"{mode}_features"]
    slices = model.records.slices()
    assert list(slices) == ["pair_graph", "smoothing", "member_singles", "member_pairs", "additive"]
    assert new.shape == old.shape == (300, 20)
    singles = np.diff(ref["offsets"]) == 1
    for name, sl in slices.items():
        if name == "smoothing":  # the single-gene estimate (neighbours' singles) is unchanged
            np.testing.assert_allclose(new[singles, sl], old[singles, sl], atol=1e-5)
        else:
            np.testing.assert_allclose(new[:, sl], old[:, sl], atol=1e-5, err_msg=name)


def test_tables_hold_distinct_sets_and_keys_are_order_free():
    """A set measured twice is one table entry with two counted values; keys ignore member order and keep
    sizes apart; the padded batch view keeps sets up to the padded width."""
    n = 10
    data = PerturbationData(genes=[f"G{i}" for i in range(n)], offsets=np.array([0, 2, 4, 5, 8]),
                            gene_index=np.array([1, 2, 2, 1, 3, 4, 5, 6], np.int32), types=np.ones(8, np.int8),
                            phenotypes=np.array([[1.0], [3.0], [np.nan], [2.0]], np.float32),
                            phenotype_names=["x"])  # fmt: skip
    table = SetTable(n, 1)
    table.fit(data, np.arange(4), [0])
    assert table.keys.numel() == 3  # {1,2} twice, {3}, {4,5,6}
    total, count = table.lookup(torch.tensor(numpy_set_keys(np.array([[2, 1]]), n)))
    assert total.tolist() == [[4.0]] and count.tolist() == [[2.0]]
    total, count = table.lookup(torch.tensor(numpy_set_keys(np.array([[3]]), n)))
    assert count.tolist() == [[0.0]]  # measured, but NaN
    members = torch.tensor([[6, 4, 5, -1], [1, 2, -1, -1], [2, -1, -1, -1]])
    keys = set_keys(members, torch.tensor([3, 2, 1]), n)
    assert keys.tolist() == [numpy_set_keys(np.array([[4, 5, 6]]), n)[0], numpy_set_keys(np.array([[1, 2]]), n)[0], 2]
    assert len(set(numpy_set_keys(np.array(s), n)[0] for s in ([[1]], [[0, 1]], [[0, 0, 1]]))) == 3
    gi, ptr = torch.tensor([3, 1, 4, 1, 5, 9, 2]), torch.tensor([0, 2, 7])
    padded, sizes = padded_members(gi, ptr, torch.tensor([0, 0, 1, 1, 1, 1, 1]))
    assert padded.tolist() == [[3, 1, -1, -1], [4, 1, 5, 9]] and sizes.tolist() == [2, 5]


def test_interaction_profiles_leave_the_batch_out_exactly_and_stay_bounded(reference) -> None:
    """The profile tokens of a training step equal the sketch of the training records without the batch's own
    (same basis), each dimension has unit RMS over the genes with records, and no entry exceeds the clip."""
    from cellformer.models.record_features import PROFILE_CLIP, InteractionProfiles

    data, train = reference["data"], np.asarray(reference["ref"]["train"])
    mean, std = np.nanmean(data.phenotypes[train], 0), np.nanstd(data.phenotypes[train], 0)
    prof = InteractionProfiles(N, 2, 4)
    prof.fit(data, train, [0, 1], mean, std)
    count = prof.count.numpy()
    full = prof.tokens(torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, dtype=torch.long), None,
                       torch.tensor(mean), torch.tensor(std)).numpy().reshape(N, 2, 4)  # fmt: skip
    has = count[:, 0] > 0
    assert np.abs(full).max() <= PROFILE_CLIP + 1e-6
    unclipped = np.abs(full[has, 0]) < PROFILE_CLIP - 1e-6
    if unclipped.all():
        np.testing.assert_allclose(np.sqrt((full[has, 0] ** 2).mean(0)), 1.0, rtol=1e-4)
    # a batch of training records of 2-3 genes: remove them by hand from the sketch's definition
    sizes_all = data.set_sizes[train]
    batch_rows = train[sizes_all >= 2][:25]
    members = torch.full((len(batch_rows), 3), -1, dtype=torch.long)
    for r, row in enumerate(batch_rows):
        g = data.gene_index[data.offsets[row] : data.offsets[row + 1]]
        members[r, : len(g)] = torch.as_tensor(g)
    sizes = torch.as_tensor(data.set_sizes[batch_rows], dtype=torch.long)
    own = torch.as_tensor(data.phenotypes[batch_rows], dtype=torch.float32)
    step = prof.tokens(members, sizes, own, torch.tensor(mean, dtype=torch.float32),
                       torch.tensor(std, dtype=torch.float32)).numpy().reshape(N, 2, 4)  # fmt: skip
    basis, scale = prof.basis.numpy(), prof.scale.numpy()
    total = np.zeros((N, 2, 4))
    keep = np.setdiff1d(train[sizes_all >= 2], batch_rows)
    for row in keep:
        g = data.gene_index[data.offsets[row] : data.offsets[row + 1]]
        y = (data.phenotypes[row] - mean) / std
        for i in range(len(g)):
            other = np.delete(basis[g], i, axis=0).mean(0)  # (2, 4)
            total[g[i]] += np.where(np.isnan(y), 0.0, y)[:, None] * other
    expected = np.clip(total / np.sqrt(np.maximum(count, 1))[..., None] * scale, -PROFILE_CLIP, PROFILE_CLIP)
    np.testing.assert_allclose(step, expected, atol=1e-4)
    assert not np.allclose(step, full)  # the batch's records did leave
    # fitted in chunks of a few records (as at screen scale), the sketch is the same
    import cellformer.models.record_features as rf

    chunked = InteractionProfiles(N, 2, 4)
    old_chunk, rf.FIT_CHUNK = rf.FIT_CHUNK, 7
    try:
        chunked.fit(data, train, [0, 1], mean, std)
    finally:
        rf.FIT_CHUNK = old_chunk
    for name in ("basis", "total", "count", "scale"):
        np.testing.assert_allclose(getattr(chunked, name).numpy(), getattr(prof, name).numpy(), atol=1e-5)


def test_top_eigenvectors_match_the_dense_decomposition() -> None:
    """The randomised subspace iteration used above DENSE_EIGEN genes finds the leading eigenpairs (by
    magnitude, both signs) of a sparse symmetric matrix with a spectral gap, as the dense solver does."""
    import scipy.sparse as sp

    from cellformer.models.record_features import top_eigenvectors

    rng = np.random.default_rng(3)
    n, k = 400, 6
    basis = np.linalg.qr(rng.normal(size=(n, k)))[0]
    planted = basis @ np.diag([9.0, -8.0, 7.0, -6.0, 5.0, 4.0]) @ basis.T
    noise = sp.random(n, n, density=0.02, random_state=4)
    matrix = sp.csr_matrix(planted + 0.05 * (noise + noise.T).toarray())
    vals, vecs = top_eigenvectors(matrix, k)
    dense_vals, dense_vecs = np.linalg.eigh(matrix.toarray())
    order = np.argsort(-np.abs(dense_vals))[:k]
    np.testing.assert_allclose(vals, dense_vals[order], rtol=1e-6)
    np.testing.assert_allclose(np.abs(np.sum(vecs * dense_vecs[:, order], axis=0)), 1.0, atol=1e-6)
    again = top_eigenvectors(matrix, k)[1]
    assert np.array_equal(again, vecs)  # deterministic


def test_profile_fit_is_the_same_with_dense_or_sparse_pair_matrices(reference, monkeypatch) -> None:
    """The pair matrices of the profile fit may be dense (a full screen) or sparse, their pattern found by
    counting into bins or by sorting: the fitted sketch is the same."""
    import cellformer.models.pairs as pairs
    from cellformer.models.record_features import InteractionProfiles

    data, train = reference["data"], np.asarray(reference["ref"]["train"])
    mean, std = np.nanmean(data.phenotypes[train], 0), np.nanstd(data.phenotypes[train], 0)
    fits = []
    for bins, share in [(1 << 26, 0.0), (1 << 26, 2.0), (0, 2.0)]:
        monkeypatch.setattr(pairs, "DENSE_BINS", bins)
        monkeypatch.setattr(pairs, "DENSE_SHARE", share)
        prof = InteractionProfiles(N, 2, 4)
        prof.fit(data, train, [0, 1], mean, std)
        fits.append(prof)
    assert fits[0].count.sum() > 0
    for other in fits[1:]:
        for name in ("basis", "total", "count", "scale"):
            np.testing.assert_allclose(getattr(other, name).numpy(), getattr(fits[0], name).numpy(), atol=1e-5)


def fitted_profile_model(reference: dict, **model_args):
    """A seeded CellFormer on the toy screen (graph g1) with its target scaling and record tables fitted on the
    reference training rows; returns it with the data, those rows and a collated batch of the first 64."""
    data = reference["data"]
    genome = toy_genome(N)
    graphs = GraphSet([GeneGraph.from_edges("g1", N, reference["ref"]["g1_src"], reference["ref"]["g1_dst"])],
                      genome.hash)  # fmt: skip
    torch.manual_seed(0)
    model = build_model("cellformer", genome, graphs, data.phenotype_names, **model_args)
    train = np.asarray(reference["ref"]["train"])
    y = data.phenotypes[train].astype(np.float64)
    model.set_target_scaling(np.nanmean(y, 0), np.nanstd(y, 0))
    model.fit_records(data, train)
    return model, data, train, PerturbationDataset(data).collate_rows(train[:64])


def test_profile_imputation_task_reads_hidden_genes_profiles_without_the_batch_labels(reference) -> None:
    """``profile_impute``: a training step adds λ · MSE between the profiles read off the encoder output and the
    measured profiles of the genes hidden in that step (the batch's own records removed from the targets);
    the profile product reads the inferred profile wherever none is measured, as an input; the term's gradient
    reaches the encoder; evaluation has no such term; it needs profile tokens."""
    from cellformer.errors import UserError

    with pytest.raises(UserError, match="profile_dim"):
        fitted_profile_model(reference, profile_dim=0, profile_impute=1.0)
    model, data, train, batch = fitted_profile_model(reference, d_model=16, n_layers=1, n_heads=2, profile_dim=4,
                                                     profile_impute=0.5, identity_dropout=0.5)  # fmt: skip
    model.train()
    out = model(batch)
    loss = out.losses["profile/impute"]
    # the term by hand: hidden genes with a measured profile, against targets without the batch's records
    mean, std = model.target_scaling()
    own = (batch.gene_index, batch.ptr, batch.batch)
    width = model.records.label_features.shape[1]
    target = model.records.token_inputs(own, mean, std, batch.y, None)[:, width:]
    assert not torch.allclose(target, model.records.token_inputs(None, mean, std)[:, width:])  # labels left
    hidden = torch.rand(N, generator=torch.Generator().manual_seed(3)) < 0.5
    use = model.records.profiles.measured() & hidden[:, None]
    assert 0 < int(use.sum()) < use.numel()
    guess = torch.randn(N, target.shape[1], generator=torch.Generator().manual_seed(4))
    expected = ((guess - target)[use] ** 2).mean()
    got = model.records.imputation_loss(guess, hidden, own, batch.y, mean, std)
    assert float(got) == pytest.approx(float(expected), rel=1e-5)
    # the profile product reads the inferred profile exactly where none is measured (here: hidden genes)
    slot = model.records.slices()["profile_pairs"]
    args = (batch.gene_index, batch.types, batch.ptr, batch.batch, mean, std, True, hidden)
    plain = model.records(*args)
    inferred = model.records(*args, None, guess.requires_grad_())
    members, _ = padded_members(batch.gene_index, batch.ptr, batch.batch)
    touched = (hidden | ~model.records.profiles.measured()[:, ::4].any(1))[members.clamp_min(0)] & (members >= 0)
    differs = (plain[:, slot] != inferred[:, slot]).any(1)
    assert differs.any() and not differs[~touched.any(1)].any()
    torch.testing.assert_close(plain[:, : slot.start], inferred[:, : slot.start])
    assert not inferred.requires_grad  # an input: only the profile loss fits the inference
    model.eval()
    with torch.no_grad():
        assert "profile/impute" not in model(batch).losses
    model.train()
    loss.backward()
    assert model.profile_head.weight.grad.abs().sum() > 0
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert float(loss.detach()) > 0


def test_value_attention_reads_only_allowed_keys_through_the_layers_own_heads() -> None:
    """ValueAttention: per column group, the head-weighted softmax(q·k/√d_h) mean of the values over the allowed
    keys only, with the queries and keys of the given attention layer; a group without keys reads zeros."""
    from cellformer.models.layers import SelfAttention, ValueAttention

    torch.manual_seed(0)
    attn, L, W = SelfAttention(8, 2, 0.0), 7, 3
    reader = ValueAttention(2, 2 * W)
    with torch.no_grad():
        reader.mix.copy_(torch.tensor([0.3, -0.4]))
        reader.gain.copy_(torch.linspace(0.5, 1.5, 2 * W))
    x, values = torch.randn(L, 8), torch.randn(L, 2 * W)
    keys = torch.tensor([[1, 0], [0, 0], [1, 0], [1, 0], [0, 0], [1, 0], [0, 0]], dtype=torch.bool)
    got = reader(x, attn, values, keys)
    q, k = (x @ attn.qkv.weight[s].T + attn.qkv.bias[s] for s in (slice(0, 8), slice(8, 16)))
    expected = torch.zeros(L, W)
    for h, w in enumerate(reader.mix.softmax(0)):
        logits = q[:, 4 * h : 4 * h + 4] @ k[:, 4 * h : 4 * h + 4].T / 2.0
        expected += w * logits.masked_fill(~keys[:, 0], -torch.inf).softmax(1) @ values[:, :W]
    torch.testing.assert_close(got[:, :W], expected * reader.gain[:W].detach())
    assert torch.equal(got[:, W:], torch.zeros(L, W))
    changed = values.clone()
    changed[~keys[:, 0], :W] += 100.0  # the values of keys that may not be read change nothing
    torch.testing.assert_close(reader(x, attn, changed, keys), got)


def test_impute_attention_infers_held_out_profiles_through_the_tied_heads(reference) -> None:
    """``impute_attention``: the inferred profiles add the layer's attention over the measured profiles of the
    pass (hidden genes are never read), the profile loss reaches that layer's query/key weights, and the
    option is checked (needs profile_impute and an existing layer)."""
    from cellformer.errors import UserError

    common = dict(d_model=16, n_heads=2, profile_dim=4, identity_dropout=0.5)
    for bad in [dict(profile_impute=0.0, n_layers=1), dict(profile_impute=1.0, n_layers=0),
                dict(profile_impute=1.0, n_layers=1, impute_attention=1)]:  # fmt: skip
        with pytest.raises(UserError, match="impute_attention"):
            fitted_profile_model(reference, **(common | {"impute_attention": 0} | bad))
    model, _, _, batch = fitted_profile_model(reference, n_layers=2, profile_impute=1.0, impute_attention=1, **common)
    model.train()
    enc = model.encode([None], batch)
    linear = model.profile_head(enc.genes[0, :N])
    values = model.records.profile_inputs(enc.record_inputs)
    keys = model.records.profiles.measured(enc.hidden, groups=True)
    assert keys.any() and not keys[enc.hidden].any()
    direct = model.profile_attention(enc.layer_inputs[1][1:], model.blocks[1].attn, values, keys)
    torch.testing.assert_close(enc.imputed, linear + direct)
    model.train()
    loss = model(batch).losses["profile/impute"]
    loss.backward()
    qk = model.blocks[1].attn.qkv.weight.grad[:32]
    assert qk.abs().sum() > 0 and model.profile_attention.mix.grad.abs().sum() > 0


def test_inferred_pairs_reads_the_inferred_profiles_of_every_member(reference) -> None:
    """``inferred_pairs``: one more readout block, the member pairs' mean product of the *inferred* profiles
    (measured genes included), computed from ``imputed`` alone; the features before the profiles do not read
    it; the option needs profile_impute, and the feature refuses to run without the inferred profiles."""
    from cellformer.errors import UserError

    common = dict(d_model=16, n_layers=1, n_heads=2, profile_dim=4)
    with pytest.raises(UserError, match="inferred_pairs"):
        fitted_profile_model(reference, inferred_pairs=True, **common)
    model, _, _, batch = fitted_profile_model(reference, profile_impute=1.0, inferred_pairs=True, **common)
    slots = model.records.slices()
    assert list(slots)[-2:] == ["profile_pairs", "inferred_pairs"]
    assert slots["inferred_pairs"].stop - slots["inferred_pairs"].start == model.records.profiles.width
    mean, std = model.target_scaling()
    args = (batch.gene_index, batch.types, batch.ptr, batch.batch, mean, std, False, None)
    guess = torch.randn(N, model.records.profiles.width, generator=torch.Generator().manual_seed(5))
    out = model.records(*args, None, guess)
    members, sizes = padded_members(batch.gene_index, batch.ptr, batch.batch)
    for row in range(out.shape[0]):  # by hand: the mean over member pairs of guess[a] * guess[b]
        genes = [int(g) for g in members[row, : int(sizes[row])]]
        pairs = [(a, b) for i, a in enumerate(genes) for b in genes[i + 1 :]]
        want = torch.stack([guess[a] * guess[b] for a, b in pairs]).mean(0) if pairs else torch.zeros(guess.shape[1])
        torch.testing.assert_close(out[row, slots["inferred_pairs"]], want)
    assert (sizes >= 2).any() and out[:, slots["inferred_pairs"]].abs().sum() > 0
    other = model.records(*args, None, guess * 2)
    torch.testing.assert_close(out[:, : slots["profile_pairs"].start], other[:, : slots["profile_pairs"].start])
    with pytest.raises(ValueError, match="imputed"):
        model.records(*args)
    model.train()
    assert torch.isfinite(model(batch).pred).all()
