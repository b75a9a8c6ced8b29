"""Lightning training through the CLI: checkpoints, resume, DDP (2 CPU processes), imported screens."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cellformer.cli import main as cli_main
from cellformer.data import PerturbationDataset, collate_perturbations
from cellformer.data.simulate import simulate
from cellformer.genome import Genome
from cellformer.graphs import GeneGraph, GraphSet, save_edge_list
from cellformer.models.checkpoint import load_checkpoint
from cellformer.training.datamodule import PerturbationDataModule

FIXTURES = Path(__file__).parent / "fixtures"


def toy_problem(tmp_path: Path, n_blocks: int = 8, block: int = 10) -> dict:
    """A toy genome (gene table), two edge-list graphs and a simulated screen on disk."""
    n = n_blocks * block
    genes = [f"G{i:03d}" for i in range(n)]
    genes_tsv = tmp_path / "genes.tsv"
    genes_tsv.write_text("systematic_name\tstandard_name\n" + "".join(f"{g}\tA{g}\n" for g in genes))
    genome = Genome.from_tsv(genes_tsv)
    rng = np.random.default_rng(0)
    src, dst = [], []
    for b in range(n_blocks):
        idx = np.arange(b * block, (b + 1) * block)
        for i in idx:
            for j in idx:
                if i < j and rng.random() < 0.6:
                    src.append(i)
                    dst.append(j)
    modules = GeneGraph.from_edges("modules", n, np.array(src), np.array(dst))
    rand = GeneGraph.from_edges("random", n, rng.integers(0, n, 150), rng.integers(0, n, 150))
    paths = {}
    for g in (modules, rand):
        paths[g.name] = tmp_path / f"{g.name}.tsv"
        save_edge_list(g, genome, paths[g.name])
    data = simulate(
        genome, GraphSet([modules, rand], genome.hash), truth_graph="modules", n_doubles=600, n_triples=100, seed=0
    )
    data.save(tmp_path / "toy.h5")
    return {"genes": genes_tsv, "graphs": paths, "dataset": tmp_path / "toy.h5", "genome": genome}


def toy_config(tmp_path: Path, toy: dict, max_steps: int = 6, **trainer) -> Path:
    cfg = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": max_steps,
            "val_check_interval": 3,
            "check_val_every_n_epoch": None,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "default_root_dir": str(tmp_path / "runs"),
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(tmp_path / "runs")},
            },
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True},
                },
                {
                    "class_path": "cellformer.training.callbacks.ParameterFingerprint",
                    "init_args": {"dirpath": str(tmp_path / "fingerprints")},
                },
            ],
            **trainer,
        },
        "model": {
            "model": "cellformer",
            "lr": 0.003,
            "warmup_steps": 2,
            "model_args": {
                "d_model": 16,
                "n_layers": 2,
                "n_heads": 2,
                "dropout": 0.0,
                "graph_reg": {"modules": {"layer": 0, "head": 0, "weight": 0.5, "rows": 16}},
            },
        },
        "data": {
            "dataset": str(toy["dataset"]),
            "genome": str(toy["genes"]),
            "graphs": [f"{k}={v}" for k, v in toy["graphs"].items()],
            "split": "stored",
            "batch_size": 32,
        },
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_fit_writes_weights_only_checkpoint_that_reproduces_predictions(tmp_path, capsys):
    toy = toy_problem(tmp_path)
    cfg = toy_config(tmp_path, toy)
    assert cli_main(["fit", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "test metrics (cellformer)" in out and "| epsilon |" in out
    last = tmp_path / "ckpt" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)  # must not need pickle
    meta = ckpt["cellformer"]
    assert meta["genome"]["genes"] == toy["genome"].genes
    assert meta["genome"]["hash"] == toy["genome"].hash
    assert meta["graph_names"] == ["modules", "random"]
    assert meta["phenotype_names"] == ["fitness", "epsilon", "tau"]
    assert meta["model_hparams"]["graph_reg"]["modules"]["layer"] == 0
    assert ckpt["global_step"] == 6

    # the rebuilt model reproduces the trained parameters' predictions
    model, ctx = load_checkpoint(last)
    trained = torch.load(tmp_path / "fingerprints" / "params_rank0.pt", weights_only=True)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, trained[f"model.{name}"])
    dm = PerturbationDataModule(str(toy["dataset"]), str(toy["genes"]), [f"{k}={v}" for k, v in toy["graphs"].items()])
    ds = PerturbationDataset(dm.data, dm.split_index["test"][:10])
    batch = collate_perturbations([ds[i] for i in range(len(ds))], len(ctx.genome))
    with torch.no_grad():
        pred = model(batch).pred
    assert pred.shape == (10, 3) and torch.isfinite(pred).all()


def test_resume_from_checkpoint_continues_the_step_count(tmp_path):
    toy = toy_problem(tmp_path)
    cfg = toy_config(tmp_path, toy, max_steps=3)  # checkpoints are written at validation, every 3 steps
    assert cli_main(["fit", "--config", str(cfg), "--test_after_fit", "false"]) == 0
    last = tmp_path / "ckpt" / "last.ckpt"
    first = torch.load(last, weights_only=True)
    assert first["global_step"] == 3
    assert (
        cli_main(
            [
                "fit",
                "--config",
                str(cfg),
                "--trainer.max_steps",
                "6",
                "--ckpt_path",
                str(last),
                "--test_after_fit",
                "false",
            ]
        )
        == 0
    )
    resumed = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 6
    assert resumed["optimizer_states"][0]["state"][0]["step"] == 6  # the optimizer state carried over too


def test_unknown_graph_or_phenotype_in_config_is_an_error(tmp_path):
    toy = toy_problem(tmp_path)
    graphs = [f"{k}={v}" for k, v in toy["graphs"].items()]
    with pytest.raises(ValueError, match="unknown phenotype 'fitnes'.*did you mean fitness"):
        PerturbationDataModule(str(toy["dataset"]), str(toy["genes"]), graphs, phenotypes=["fitnes"])
    dm = PerturbationDataModule(str(toy["dataset"]), str(toy["genes"]), graphs)
    from cellformer.training.module import PhenotypeModule

    with pytest.raises(ValueError, match="modulez"):
        PhenotypeModule(model_args={"graph_reg": {"modulez": {"layer": 0, "head": 0}}}, context=dm.context)
    with pytest.raises(ValueError, match="unknown model"):
        PhenotypeModule(model="transformer", context=dm.context)
    with pytest.raises(ValueError, match="phenotype_weights"):
        PhenotypeModule(phenotype_weights={"growth": 1.0}, context=dm.context)


def test_ddp_two_cpu_processes_end_with_identical_parameters(tmp_path):
    toy = toy_problem(tmp_path)
    cfg = toy_config(tmp_path, toy, max_steps=4, devices=2, strategy="ddp")
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "MASTER_PORT": "29517"}
    proc = subprocess.run(
        [sys.executable, "-m", "cellformer.cli", "fit", "--config", str(cfg), "--test_after_fit", "false"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    p0 = torch.load(tmp_path / "fingerprints" / "params_rank0.pt", weights_only=True)
    p1 = torch.load(tmp_path / "fingerprints" / "params_rank1.pt", weights_only=True)
    assert p0.keys() == p1.keys() and len(p0) > 10
    for k in p0:
        torch.testing.assert_close(p0[k], p1[k], rtol=0, atol=0)
    # and the ranks did train: the final weights moved away from the step-3 checkpoint
    at_step3 = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]
    assert at_step3 and any(not torch.equal(at_step3[k], p0[k]) for k in p0)


def test_fit_on_imported_costanzo_fixture_through_cli(tmp_path, capsys):
    h5 = tmp_path / "costanzo.h5"
    fixture = FIXTURES / "importers" / "costanzo2016_clean.txt"
    assert cli_main(["data", "import-screen", "--format", "costanzo2016", str(fixture), "--out", str(h5)]) == 0
    cfg = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "max_steps": 2,
            "logger": False,
            "default_root_dir": str(tmp_path),
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "limit_val_batches": 1,
        },
        "model": {
            "model": "cellformer",
            "model_args": {
                "d_model": 8,
                "n_layers": 1,
                "n_heads": 2,
                "dropout": 0.0,
                "graph_reg": {"string_database": {"layer": 0, "head": 0, "weight": 0.1, "rows": 8}},
                "profile_dim": 4,
                "profile_impute": 1.0,
                "impute_attention": 0,
            },
        },
        "data": {
            "dataset": str(h5),
            "genome": "yeast",
            "graphs": ["string_database"],
            "split": "random",
            "val_fraction": 0.2,
            "test_fraction": 0.2,
            "phenotypes": ["fitness", "epsilon"],
            "batch_size": 8,
        },
    }
    path = tmp_path / "costanzo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli_main(["fit", "--config", str(path)]) == 0
    assert "test metrics (cellformer)" in capsys.readouterr().out


CONFIGS = Path(__file__).parents[1] / "configs"


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("*.yaml")))
def test_every_shipped_config_parses(name, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["fit", "--config", str(CONFIGS / f"{name}.yaml"), "--print_config"])
    assert exc.value.code == 0
    assert "model:" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["additive", "dango", "lazy", "neighbor"])
def test_baseline_configs_train_through_the_cli(tmp_path, name, capsys):
    """Each baseline's shipped model block trains (a few steps) through `cellformer fit` on a toy screen."""
    toy = toy_problem(tmp_path)
    cfg = yaml.safe_load(toy_config(tmp_path, toy, max_steps=3).read_text())
    cfg["model"] = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["model"]
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli_main(["fit", "--config", str(path)]) == 0
    assert f"test metrics ({name})" in capsys.readouterr().out
