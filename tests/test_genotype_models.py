"""Genotype-mode models, training, checkpoints and queries on tiny seeded populations (CPU)."""

from __future__ import annotations

import dataclasses
import warnings

import lightning as L
import numpy as np
import pytest
import torch

from cellformer.genotype.data import GenotypeData, Loci, random_genotype_split
from cellformer.genotype.locus_graph import ld_graph
from cellformer.genotype.models import MODELS, LocusCellFormer, Ridge, build_genotype_model
from cellformer.genotype.training import (
    GenotypeDataModule,
    GenotypeModule,
    KeepBest,
    load_genotype_checkpoint,
    predict_genotypes,
)

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*configure_optimizers.*")

SMALL = {
    "ridge": {},
    "lasso": {},
    "gbm": {"n_estimators": 100, "min_data_in_leaf": 5, "num_threads": 1},
    "mlp": {"d_hidden": 32},
    "rijal_attention": {"d_model": 6, "n_layers": 2},
    "canonical_transformer": {"d_model": 16, "n_layers": 2},
    "vanilla_transformer": {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "dropout": 0.0},
    "fariello_transformer": {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "dropout": 0.0},
    "cellformer": {
        "d_model": 16,
        "n_layers": 1,
        "n_heads": 2,
        "graph_reg": {"ld": {"layer": 0, "head": 0, "weight": 0.1, "rows": 8}},
    },
}


def tiny_population(n: int = 240, n_loci: int = 16, seed: int = 0) -> GenotypeData:
    """Two traits: additive effects, one epistatic pair, a few NaNs; neighbouring loci in linkage."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, n_loci), dtype=np.int8)
    x[:, 0] = rng.choice([-1, 1], n)
    for j in range(1, n_loci):  # a Markov chain along the "chromosome": 15% recombination
        flip = rng.random(n) < 0.15
        x[:, j] = np.where(flip, -x[:, j - 1], x[:, j - 1])
    beta = rng.normal(size=(n_loci, 2)) * (rng.random((n_loci, 2)) < 0.4)
    y = x @ beta + 0.7 * (x[:, 2] * x[:, 9])[:, None] + 0.3 * rng.normal(size=(n, 2))
    y = y.astype(np.float32)
    y[:5, 1] = np.nan
    loci = Loci([f"m{j:02d}" for j in range(n_loci)], np.ones(n_loci), np.arange(n_loci) * 1000, [""] * n_loci)
    return GenotypeData(
        x, y, ["t0", "t1"], loci, [f"s{i}" for i in range(n)], split=random_genotype_split(n, 0.15, 0.15, seed=seed)
    )


def _trainer(epochs: int, **kw) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        **kw,
    )


@pytest.fixture(scope="module")
def population() -> GenotypeData:
    return tiny_population()


def test_ridge_matches_closed_form_reference():
    rng = np.random.default_rng(1)
    for n, n_loci in ((80, 12), (20, 50)):  # primal (n ≥ L) and kernel (L > n) forms
        x = rng.choice([-1.0, 1.0], size=(n, n_loci))
        y = rng.normal(size=(n, 3))
        y[:4, 2] = np.nan
        model = Ridge(n_loci, 3, lambdas=[3.0])
        model.fit_closed_form(x, y)
        for p in range(3):
            m = ~np.isnan(y[:, p])
            xc = x[m] - x[m].mean(0)
            yc = y[m, p] - y[m, p].mean()
            w = np.linalg.solve(xc.T @ xc + 3.0 * np.eye(n_loci), xc.T @ yc)
            b = y[m, p].mean() - x[m].mean(0) @ w
            np.testing.assert_allclose(model.weight[p].double().numpy(), w, atol=1e-5)
            assert abs(float(model.bias[p]) - b) < 1e-5


def test_ridge_and_lasso_choose_lambda_and_select_loci(population):
    x = population.genotypes.astype(np.float64)
    y = population.phenotypes.astype(np.float64)
    tr, va = population.split_indices("train"), population.split_indices("val")
    ridge = build_genotype_model("ridge", x.shape[1], 2)
    info = ridge.fit_closed_form(x[tr], y[tr])  # no validation: k-fold CV
    assert info["selection"].endswith("CV") and np.isfinite(info["lambda"]).all()
    lasso = build_genotype_model("lasso", x.shape[1], 2)
    lasso.fit_closed_form(x[tr], y[tr], x[va], y[va])
    assert 0 < len(lasso.selected_loci()) <= x.shape[1]


def test_rijal_random_matrix_is_fixed_and_has_no_norm_or_skip():
    model = build_genotype_model("rijal_attention", 10, 3, d_model=4, n_layers=2)
    names = {n for n, _ in model.named_parameters()}
    assert "random_embedding" not in names and "random_embedding" in dict(model.named_buffers())
    assert not any(isinstance(m, (torch.nn.LayerNorm, torch.nn.TransformerEncoderLayer)) for m in model.modules())
    # no skip connection: a layer's output is exactly its attention output
    seq = torch.randn(2, 5, 5)
    layer = model.layers[0]
    ref = torch.softmax(layer.q(seq) @ layer.k(seq).transpose(1, 2), -1) @ layer.v(seq)
    torch.testing.assert_close(layer(seq), ref)
    assert model(torch.ones(4, 10)).shape == (4, 3)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_trains_and_round_trips(name, population, tmp_path):
    L.seed_everything(0)
    # phenotypes far from standard units (mean ≈ 100, sd ≈ 10), so predictions left standardised would be caught
    population = dataclasses.replace(population, phenotypes=population.phenotypes * 10.0 + 100.0)
    dm = GenotypeDataModule(data=population, batch_size=32, locus_graphs={"ld": {"kind": "ld", "top_k": 3}})
    module = GenotypeModule(name, SMALL[name], lr=3e-3, warmup_steps=2, context=dm.context)
    x_tr, y_tr = (torch.from_numpy(a) for a in dm.arrays("train"))
    before = float(module.phenotype_loss(module.model.eval()(x_tr), y_tr)[0])
    module.model.train()
    trainer = _trainer(1 if module.model.closed_form else 6, callbacks=[KeepBest()], enable_checkpointing=False)
    trainer.fit(module, datamodule=dm)
    after = float(module.phenotype_loss(module.model.eval()(x_tr), y_tr)[0])
    assert after < before, f"{name}: training loss {before:.3f} -> {after:.3f}"
    path = tmp_path / f"{name}.ckpt"
    trainer.save_checkpoint(path)
    model, context, meta = load_genotype_checkpoint(path)  # torch.load(weights_only=True) inside
    assert meta["model"] == name and context.locus_ids == population.loci.ids
    x = population.genotypes[:20].astype(np.float32)
    expected = predict_genotypes(module.model, dm.context, x)
    np.testing.assert_allclose(predict_genotypes(model, context, x), expected, rtol=1e-5, atol=1e-5)
    # predictions are in original units: the standardisation is undone (mean ≈ 100, not ≈ 0; spread ≈ 10, not ≈ 1)
    y = population.phenotypes[:20]
    for p in range(y.shape[1]):
        assert abs(np.mean(expected[:, p]) - np.nanmean(y[:, p])) < 0.5 * np.nanstd(y[:, p]), name
        if name == "ridge":  # a fitted linear model spreads its predictions in phenotype units, not in sd units
            assert np.std(expected[:, p]) > 0.5 * np.nanstd(y[:, p]), name


def test_locus_graph_term_is_positive_and_reaches_the_tied_head(population):
    torch.manual_seed(0)
    graph = ld_graph(population.genotypes, "ld", top_k=3)
    assert graph.num_edges > 0
    model = LocusCellFormer(
        16,
        2,
        graphs={"ld": graph},
        d_model=16,
        n_layers=2,
        n_heads=2,
        graph_reg={"ld": {"layer": 1, "head": 1, "weight": 1.0, "rows": 8}},
    )
    x = torch.as_tensor(population.genotypes[:8], dtype=torch.float32)
    _, losses = model.forward_with_losses(x)
    term = losses["graph/ld"]
    assert float(term) > 0
    term.backward()
    grad = model.blocks[1].attn.qkv.weight.grad
    q_rows, k_rows = model.blocks[1].attn.head_slices(1)
    other_q, _ = model.blocks[1].attn.head_slices(0)
    assert grad[q_rows].abs().sum() > 0 and grad[k_rows].abs().sum() > 0
    assert grad[other_q].abs().sum() == 0  # only the tied head's queries move
    # a head tied with weight 0 contributes nothing
    model0 = LocusCellFormer(
        16,
        2,
        graphs={"ld": graph},
        d_model=16,
        n_layers=1,
        n_heads=2,
        graph_reg={"ld": {"layer": 0, "head": 0, "weight": 0.0}},
    )
    assert float(model0.forward_with_losses(x)[1]["graph/ld"]) == 0.0


def test_ld_graph_uses_training_rows_and_rewire_keeps_degrees(population):
    from cellformer.genotype.locus_graph import build_locus_graph

    tr = population.split_indices("train")
    g = build_locus_graph("ld", {"kind": "ld", "top_k": 2}, population, tr)
    ref = ld_graph(population.genotypes[tr], "ld", top_k=2)
    assert (g.adj != ref.adj).nnz == 0
    assert g.adj[0, 1] > 0  # neighbouring loci are linked
    ctl = build_locus_graph("ld", {"kind": "ld", "top_k": 2, "rewire": 1.0, "seed": 0}, population, tr)
    np.testing.assert_array_equal(np.sort(ctl.degree()), np.sort(g.degree()))
    assert (ctl.adj != g.adj).nnz > 0


def test_gene_graph_reaches_loci_through_nearest_genes():
    from cellformer.genotype.locus_graph import gene_graph_loci
    from cellformer.graphs.graph import GeneGraph

    class Genes:  # the part of a Genome the builder uses
        def lookup(self, name: str) -> int:
            return {"A": 0, "B": 1, "C": 2}.get(name, -1)

    genes = GeneGraph.from_edges("g", 3, np.array([0]), np.array([1]), np.array([0.5]))
    graph, report = gene_graph_loci(["A", "B", "A", "", "Z"], Genes(), genes, name="loci")
    adj = graph.adj.toarray()
    assert adj[0, 1] == adj[1, 2] == 0.5 and adj[0, 2] == 1.0  # gene edge; same nearest gene
    assert adj[3].sum() == adj[4].sum() == 0 and report["mapped"] == 3 and report["unknown_genes"] == ["Z"]


def _write_genotype_table(path, data: GenotypeData, drop: str | None = None) -> None:
    ids = [m for m in data.loci.ids if m != drop]
    cols = [data.loci.ids.index(m) for m in ids]
    lines = ["sample\t" + "\t".join(ids)]
    for s, row in zip(data.sample_ids, data.genotypes, strict=True):
        lines.append(s + "\t" + "\t".join(str(int(row[c])) for c in cols))
    path.write_text("\n".join(lines) + "\n")


def test_fit_predict_explain_through_the_cli(population, tmp_path, capsys):
    from cellformer.cli import main

    data_path = tmp_path / "pop.h5"
    population.save(data_path)
    cfg = tmp_path / "ridge.yaml"
    # default_root_dir: without a logger, the config that fit saves would otherwise land in the working directory
    cfg.write_text(f"""seed_everything: 0
trainer:
  accelerator: cpu
  max_epochs: 1
  logger: false
  default_root_dir: {tmp_path}
  enable_progress_bar: false
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: {tmp_path}/ckpt, monitor: val_loss, filename: best}}
model:
  class_path: cellformer.genotype.training.GenotypeModule
  init_args: {{model: ridge}}
data:
  class_path: cellformer.genotype.training.GenotypeDataModule
  init_args: {{dataset: {data_path}, batch_size: 64}}
""")
    assert main(["fit", "--config", str(cfg)]) == 0
    ckpt = tmp_path / "ckpt" / "best.ckpt"
    assert ckpt.exists()
    table = tmp_path / "new.tsv"
    _write_genotype_table(table, population.subset(np.arange(12)))
    out = tmp_path / "pred.tsv"
    assert main(["predict", "--ckpt", str(ckpt), "--genotypes", str(table), "--out", str(out)]) == 0
    rows = out.read_text().strip().split("\n")
    assert rows[0].split("\t") == ["sample", "t0", "t1"] and len(rows) == 13
    model, context, _ = load_genotype_checkpoint(ckpt)
    expected = predict_genotypes(model, context, population.genotypes[:12].astype(np.float32))
    got = np.array([[float(v) for v in r.split("\t")[1:]] for r in rows[1:]])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # explain: ridge attributions are the coefficients (in phenotype units)
    assert main(["explain", "--ckpt", str(ckpt), "--genotypes", str(table), "--out-dir", str(tmp_path / "ex")]) == 0
    assert (tmp_path / "ex" / "top_loci.tsv").exists() and (tmp_path / "ex" / "attribution.png").exists()
    top = (tmp_path / "ex" / "top_loci.tsv").read_text().split("\n")[1].split("\t")
    coef = model.coefficients()[0] * context.y_std[0]
    assert top[2] == context.locus_ids[int(np.argmax(np.abs(coef)))]
    assert abs(float(top[7]) - coef[int(np.argmax(np.abs(coef)))]) < 1e-4
    # a missing marker is a clear error (status 2, no traceback)
    bad = tmp_path / "bad.tsv"
    _write_genotype_table(bad, population.subset(np.arange(3)), drop="m03")
    capsys.readouterr()
    assert main(["predict", "--ckpt", str(ckpt), "--genotypes", str(bad)]) == 2
    assert "m03" in capsys.readouterr().err


def test_benchmark_quick_mode_writes_its_report(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "genotype.py"
    spec = importlib.util.spec_from_file_location("genotype_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "genotype_quick.json").read_text())
    names = [t["target"] for t in result["targets"]]
    for part in (
        "additive traits (model table)",
        "epistatic traits",
        "multi-trait ≥ single-trait",
        "LD tie beats λ = 0",
        "LD tie beats rewired",
        "GBM vs the best transformer vs LASSO",
    ):
        assert sum(part in n for n in names) >= 1, (part, names)
    assert all(isinstance(t["met"], bool) for t in result["targets"])
    assert set(result["table"]["models"]) == set(bench.MODES["quick"]["table"]["models"])
    for name, r in result["table"]["models"].items():  # every model reports its steps and validation curve
        assert r["steps"] >= 1 and r["validations"] >= 1 and r["stopped"], name
    assert set(result["bloom"]["tie"]) == set(bench.TIE_ARMS)
    assert (tmp_path / "genotype_quick.md").read_text().startswith("# Genotype")
    assert (tmp_path / "genotype_quick.png").stat().st_size > 0
