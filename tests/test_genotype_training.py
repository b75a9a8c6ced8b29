"""Genotype mode: linkage blocks, the one-pass Rijal model, gradient boosting, early stopping and the shared
training base (tiny seeded populations, CPU, seconds)."""

from __future__ import annotations

import warnings

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping

from cellformer.errors import UserError
from cellformer.genotype.blocks import block_anchors, ld_blocks, parse_blocks
from cellformer.genotype.data import GenotypeData, Loci, random_genotype_split
from cellformer.genotype.explain import locus_attribution
from cellformer.genotype.models import BlockTokens, Lasso, RijalAttention, SignEmbedding, build_genotype_model
from cellformer.genotype.training import (
    GenotypeDataModule,
    GenotypeModule,
    KeepBest,
    ValidationCurve,
    load_genotype_checkpoint,
    predict_genotypes,
)

warnings.filterwarnings("ignore", ".*does not have many workers.*")


def _trainer(**kw) -> L.Trainer:
    base = dict(
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    return L.Trainer(**{**base, **kw})


def blocky_population(n: int = 300, seed: int = 0) -> GenotypeData:
    """Two chromosomes; markers 0-2 copies of one haplotype, 3-4 of another, 5 independent; on chromosome 2
    markers 6-8 copies, 9 independent. Trait 0 is driven by marker 1, trait 1 by marker 7 and marker 9."""
    rng = np.random.default_rng(seed)
    h = rng.choice([-1, 1], size=(n, 5)).astype(np.int8)
    x = np.stack([h[:, 0], h[:, 0], h[:, 0], h[:, 1], h[:, 1], h[:, 2], h[:, 3], h[:, 3], h[:, 3], h[:, 4]], 1)
    y = np.stack([1.5 * x[:, 1] + 0.3 * rng.normal(size=n), x[:, 7] - x[:, 9] + 0.3 * rng.normal(size=n)], 1)
    loci = Loci([f"m{j}" for j in range(10)], [1] * 6 + [2] * 4, np.arange(10) * 100 + 1, [""] * 10)
    return GenotypeData(
        x,
        y.astype(np.float32),
        ["t0", "t1"],
        loci,
        [f"s{i}" for i in range(n)],
        split=random_genotype_split(n, 0.15, 0.15, seed=seed),
    )


# ---------------------------------------------------------------------- blocks
def test_blocks_group_adjacent_linked_markers_within_chromosomes():
    pop = blocky_population()
    blocks = ld_blocks(pop.genotypes, pop.loci.chrom, r2=0.9)
    np.testing.assert_array_equal(blocks, [0, 0, 0, 1, 1, 2, 3, 3, 3, 4])
    np.testing.assert_array_equal(block_anchors(blocks), [0, 3, 5, 6, 9])
    # without chromosome codes, the last marker of chromosome 1 and the first of chromosome 2 could merge only
    # if linked: they are independent, so the grouping is the same
    np.testing.assert_array_equal(ld_blocks(pop.genotypes, None, r2=0.9), blocks)
    # max_tokens lowers the threshold until the blocks fit, never across a chromosome boundary
    few = ld_blocks(pop.genotypes, pop.loci.chrom, max_tokens=3)
    assert few[-1] + 1 <= 3 and few[5] != few[6]
    assert np.array_equal(ld_blocks(pop.genotypes, pop.loci.chrom, max_tokens=10), np.arange(10))
    with pytest.raises(UserError, match="chromosomes"):
        ld_blocks(pop.genotypes, pop.loci.chrom, max_tokens=1)
    assert parse_blocks("r2=0.8,max_tokens=5") == {"r2": 0.8, "max_tokens": 5}
    assert parse_blocks(None) is None and parse_blocks({}) is None
    for bad in ("r2", "r2=2", {"size": 3}, "max_tokens=0"):
        with pytest.raises(UserError):
            parse_blocks(bad)


def test_blocks_are_computed_on_training_rows_only():
    pop = blocky_population()
    x = pop.genotypes.copy()
    rest = np.flatnonzero(pop.split != 0)
    x[rest, 2] = -x[rest, 2]  # marker 2 breaks from markers 0-1 outside the training split only ...
    x[rest[: len(rest) // 2], 2] = 1  # ... (and is no longer a perfect copy anywhere but in training)
    pop = GenotypeData(x, pop.phenotypes, pop.phenotype_names, pop.loci, pop.sample_ids, split=pop.split)
    dm = GenotypeDataModule(data=pop, blocks="r2=0.9", batch_size=32)
    np.testing.assert_array_equal(dm.context.blocks, ld_blocks(x[dm.split_index["train"]], pop.loci.chrom, r2=0.9))
    assert dm.context.blocks[2] == dm.context.blocks[0]  # linked on the training rows
    assert ld_blocks(x, pop.loci.chrom, r2=0.9)[2] != 0  # not on all rows


def test_block_tokens_sum_their_markers_tokens():
    torch.manual_seed(0)
    blocks = np.array([0, 0, 1, 2, 2, 2])
    emb = SignEmbedding(6, 4, blocks)
    x = torch.tensor([[1.0, -1, 1, 0, 1, -1], [-1, -1, 1, 1, 1, 1]])
    per = x[..., None] * emb.embed.weight
    ref = torch.stack([per[:, :2].sum(1), per[:, 2], per[:, 3:].sum(1)], 1)
    torch.testing.assert_close(emb(x), ref)
    bt = BlockTokens(6, blocks)
    bias = torch.randn(6, 4)
    torch.testing.assert_close(bt.linear(x, emb.embed.weight, bias), bt(per + bias))
    # no blocks: one token per marker, unchanged
    torch.testing.assert_close(SignEmbedding(6, 4)(x).shape, per.shape)


@pytest.mark.parametrize("name", ["vanilla_transformer", "rijal_attention", "fariello_transformer", "cellformer"])
def test_a_blocked_model_trains_round_trips_and_explains_per_marker(name, tmp_path):
    L.seed_everything(0)
    pop = blocky_population()
    args = {
        "vanilla_transformer": {"d_model": 8, "n_layers": 1, "n_heads": 2, "d_ff": 16, "dropout": 0.0},
        "rijal_attention": {"d_model": 4, "n_layers": 2},
        "fariello_transformer": {"d_model": 8, "n_layers": 1, "n_heads": 2, "d_ff": 16, "dropout": 0.0},
        "cellformer": {
            "d_model": 8,
            "n_layers": 1,
            "n_heads": 2,
            "graph_reg": {"ld": {"layer": 0, "head": 0, "weight": 0.1, "rows": 4}},
        },
    }[name]
    dm = GenotypeDataModule(
        data=pop,
        blocks={"r2": 0.9},
        batch_size=32,
        locus_graphs={"ld": {"kind": "ld", "top_k": 2}} if name == "cellformer" else None,
    )
    module = GenotypeModule(name, args, lr=1e-2, warmup_steps=2, context=dm.context)
    if name == "cellformer":
        assert dm.context.graphs["ld"].num_nodes == 5  # the locus graph is over the blocks
    trainer = _trainer(max_epochs=4, callbacks=[KeepBest()])
    trainer.fit(module, datamodule=dm)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    model, context, _ = load_genotype_checkpoint(path)
    np.testing.assert_array_equal(context.blocks, dm.context.blocks)  # the grouping is saved
    x = pop.genotypes[:16].astype(np.float32)
    np.testing.assert_allclose(
        predict_genotypes(model, context, x), predict_genotypes(module.model, dm.context, x), rtol=1e-5, atol=1e-5
    )
    importance, effect = locus_attribution(model, x, context.y_std)
    assert importance.shape == (2, 10) and effect.shape == (2, 10)  # per marker, not per block
    assert np.count_nonzero(importance[:, :3].std(1)) >= 0 and (importance >= 0).all()


def test_markers_of_one_block_get_their_own_attribution():
    """Within a block, each marker keeps its own embedding, so a gradient attribution can tell them apart."""
    torch.manual_seed(0)
    model = build_genotype_model("canonical_transformer", 4, 1, blocks=np.array([0, 0, 1, 1]), d_model=4, n_layers=1)
    with torch.no_grad():
        model.tokens.embed.weight[1].zero_()  # marker 1 contributes nothing to its block's token
    x = np.array([[1, -1, 1, 1], [-1, 1, -1, 1]], np.float32)
    importance, _ = locus_attribution(model, x, np.ones(1))
    assert importance[0, 1] == 0 and importance[0, 0] > 0


# ---------------------------------------------------------------------- Rijal: one pass for all phenotypes
def test_rijal_joint_pass_is_one_pass_and_phenotypes_do_not_interact():
    torch.manual_seed(0)
    model = RijalAttention(7, 3, d_model=4, n_layers=2)
    x = torch.randint(0, 2, (5, 7)).float() * 2 - 1
    shapes = []
    hook = model.layers[0].register_forward_hook(lambda m, i, o: shapes.append(tuple(i[0].shape)))
    out = model(x)
    hook.remove()
    assert out.shape == (5, 3) and shapes == [(5, 7 + 3, 5)]  # one sequence per genotype, all phenotypes in it
    # each phenotype's output is what a model holding only that phenotype's token gives
    single = RijalAttention(7, 1, d_model=4, n_layers=2)
    single.load_state_dict({k: (v[1:2] if k == "phenotype_embed.weight" else v) for k, v in model.state_dict().items()})
    torch.testing.assert_close(single(x)[:, 0], out[:, 1])
    # dense reference: locus tokens attend to loci; phenotype tokens to loci and themselves
    loci = x[..., None] * model.random_embedding
    seq = torch.cat([loci, model.phenotype_embed.weight[None].expand(5, -1, -1)], 1)
    seq = torch.cat([seq, torch.ones(*seq.shape[:-1], 1)], -1)
    allowed = torch.zeros(10, 10, dtype=torch.bool)
    allowed[:, :7] = True
    allowed[7:, 7:] = torch.eye(3, dtype=torch.bool)
    for layer in model.layers:
        logits = layer.q(seq) @ layer.k(seq).transpose(1, 2)
        seq = torch.softmax(logits.masked_fill(~allowed, float("-inf")), -1) @ layer.v(seq)
    torch.testing.assert_close(model.readout(seq[:, 7:]).squeeze(-1), out)
    # the published per-phenotype passes remain available (locus tokens then also see the phenotype token)
    sep = RijalAttention(7, 3, d_model=4, n_layers=2, phenotype_pass="separate")
    sep.load_state_dict(model.state_dict())
    assert sep(x).shape == (5, 3) and not torch.allclose(sep(x), out)


# ---------------------------------------------------------------------- gradient boosting
def test_gradient_boosting_stops_on_validation_and_checkpoints_as_text(tmp_path):
    from cellformer.cli import main

    L.seed_everything(0)
    pop = blocky_population(400)
    dm = GenotypeDataModule(data=pop, batch_size=64)
    module = GenotypeModule(
        "gbm", {"n_estimators": 500, "early_stopping_rounds": 20, "min_data_in_leaf": 5}, context=dm.context
    )
    trainer = _trainer(max_epochs=1, callbacks=[KeepBest()])
    trainer.fit(module, datamodule=dm)
    rounds = module.closed_form_info["best_iteration"]
    assert all(1 <= r < 500 for r in rounds)  # early stopping on the validation rows ended each booster
    trainer.test(module, datamodule=dm, verbose=False)
    assert module.last_metrics["test"]["t0"]["r2"] > 0.8
    path = tmp_path / "gbm.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)  # nothing pickled
    dumps = ckpt["state_dict"]["model._extra_state"]["boosters"]
    assert all(isinstance(d, str) and d.startswith("tree") for d in dumps)
    model, context, meta = load_genotype_checkpoint(path)
    x = pop.genotypes[:30].astype(np.float32)
    np.testing.assert_allclose(
        predict_genotypes(model, context, x), predict_genotypes(module.model, dm.context, x), rtol=1e-6, atol=1e-6
    )
    # explain: split gain per marker; trait 0 is driven by markers 0-2 (copies), trait 1 by markers 6-9
    importance, effect = locus_attribution(model, x, context.y_std)
    assert int(np.argmax(importance[0])) in (0, 1, 2) and int(np.argmax(importance[1])) in (6, 7, 8, 9)
    top = int(np.argmax(importance[0]))
    assert 0 < effect[0, top] <= 1.8  # flip effect in phenotype units (+1.5 per +1 allele, shared by 3 copies)
    # the CLI's predict path reads the same checkpoint
    table = tmp_path / "q.tsv"
    lines = ["sample\t" + "\t".join(pop.loci.ids)]
    lines += [f"s{i}\t" + "\t".join(str(int(v)) for v in row) for i, row in enumerate(pop.genotypes[:5])]
    table.write_text("\n".join(lines) + "\n")
    out = tmp_path / "pred.tsv"
    assert main(["predict", "--ckpt", str(path), "--genotypes", str(table), "--out", str(out)]) == 0
    got = np.array([[float(v) for v in r.split("\t")[1:]] for r in out.read_text().strip().split("\n")[1:]])
    np.testing.assert_allclose(
        got, predict_genotypes(model, context, pop.genotypes[:5].astype(np.float32)), rtol=1e-4, atol=1e-5
    )


def test_lasso_dense_panel_form_meets_the_optimality_conditions():
    rng = np.random.default_rng(0)
    n, L_ = 40, 120  # more loci than rows: the X form, no L × L Gram matrix
    x = rng.choice([-1.0, 1.0], size=(n, L_))
    y = (2 * x[:, 3] - x[:, 50] + 0.1 * rng.normal(size=n))[:, None]
    model = Lasso(L_, 1, max_iter=5000, tol=1e-10)
    ws, bs, lam_max = model._path(x, y, np.array([0.1]))
    w, lam = ws[0, :, 0], lam_max[0] * 0.1
    xc, yc = x - x.mean(0), y[:, 0] - y[:, 0].mean()
    g = xc.T @ (yc - xc @ w) / n  # KKT: |g| ≤ λ, and g = λ·sign(w) where w ≠ 0
    assert np.all(np.abs(g) <= lam + 1e-6)
    nz = w != 0
    np.testing.assert_allclose(g[nz], lam * np.sign(w[nz]), atol=1e-6)
    assert set(np.flatnonzero(nz)) >= {3, 50}


# ---------------------------------------------------------------------- early stopping and the curve
def test_early_stopping_ends_training_on_the_validation_plateau():
    L.seed_everything(0)
    dm = GenotypeDataModule(data=blocky_population(), batch_size=32)
    module = GenotypeModule("mlp", {"d_hidden": 16}, lr=1e-2, warmup_steps=1, context=dm.context)
    curve, stop = ValidationCurve(), EarlyStopping(monitor="val_loss", patience=3, mode="min", min_delta=1e-4)
    trainer = _trainer(max_epochs=500, callbacks=[KeepBest(), curve, stop])
    trainer.fit(module, datamodule=dm)
    summary = curve.summary()
    assert trainer.current_epoch < 499 and stop.wait_count >= 3  # stopped by the plateau, not the cap
    assert summary["validations"] == len(curve.curve) == trainer.current_epoch + 1 or summary["validations"] > 3
    best = min(curve.curve, key=lambda c: c["val_loss"])
    assert summary["best_step"] == best["step"] and summary["best_val_r2"] > 0.5
    assert all(c["val_loss"] >= best["val_loss"] for c in curve.curve[-3:])


# ---------------------------------------------------------------------- the shared base
def test_both_modes_share_the_training_base():
    from cellformer.genotype.training import GenotypeDataModule as GDM
    from cellformer.training.base import RegressionModule, SplitDataModule
    from cellformer.training.datamodule import PerturbationDataModule
    from cellformer.training.module import PhenotypeModule

    assert issubclass(PhenotypeModule, RegressionModule) and issubclass(GenotypeModule, RegressionModule)
    assert issubclass(PerturbationDataModule, SplitDataModule) and issubclass(GDM, SplitDataModule)
    # the genotype module logs its auxiliary graph term next to the phenotype loss, never inside val_loss
    L.seed_everything(0)
    pop = blocky_population()
    dm = GenotypeDataModule(data=pop, batch_size=32, locus_graphs={"ld": {"kind": "ld", "top_k": 2}})
    module = GenotypeModule(
        "cellformer",
        {
            "d_model": 8,
            "n_layers": 1,
            "n_heads": 2,
            "graph_reg": {"ld": {"layer": 0, "head": 0, "weight": 5.0, "rows": 4}},
        },
        context=dm.context,
    )
    trainer = _trainer(max_steps=3, val_check_interval=3, check_val_every_n_epoch=None)
    trainer.fit(module, datamodule=dm)
    m = trainer.callback_metrics
    total, pheno, graph = (
        float(m[k]) for k in ("train/total_loss_epoch", "train/phenotype_loss_epoch", "train/graph/ld_epoch")
    )
    assert graph > 0 and total == pytest.approx(pheno + graph, rel=1e-5)
    assert float(m["val_loss"]) == pytest.approx(float(m["val/phenotype_loss"]))
    assert "val/mean_r2" in m and "val/r2/t0" in m


# ---------------------------------------------------------------------- shipped configs
GENOTYPE_CONFIGS = sorted(
    p
    for p in (__import__("pathlib").Path(__file__).parents[1] / "configs" / "genotype").glob("*.yaml")
    if p.name != "callbacks.yaml"
)


@pytest.mark.parametrize("path", GENOTYPE_CONFIGS, ids=lambda p: p.stem)
def test_every_genotype_config_parses_with_early_stopping(path, capsys):
    from cellformer.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(path), "--print_config"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "cellformer.genotype.training.GenotypeModule" in out and "EarlyStopping" in out


def test_a_bloom_shaped_cross_fits_in_linkage_blocks():
    from cellformer.genotype.simulate import BLOOM_2013_SHAPE, bloom_like_cross

    data = bloom_like_cross(seed=3)
    assert data.genotypes.shape == BLOOM_2013_SHAPE and data.phenotypes.shape == (1008, 2)
    assert len(data.truth["pairs"]) == 8 and data.truth["V_I"].min() > 0.2  # epistatic pairs among 16 QTL
    assert np.corrcoef(data.truth["additive"].T)[0, 1] > 0.5  # the two traits share their QTL effects
    train = data.split_indices("train")
    blocks = ld_blocks(data.genotypes[train], data.loci.chrom, r2=0.9)
    assert 7 * (blocks[-1] + 1) < data.genotypes.shape[1]  # ≥ 7 markers per token on average (r² ≥ 0.9)
    # every block is a run of adjacent markers on one chromosome
    assert np.all(np.diff(blocks) >= 0) and all(len(set(data.loci.chrom[blocks == b])) == 1 for b in range(0, 50))
