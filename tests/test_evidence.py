"""Smoke tests of the evidence harness (benchmarks/evidence.py): its outputs, its targets and its splits."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_graph, toy_genome

from cellformer.data.dataset import PerturbationData, PerturbationType
from cellformer.graphs import GraphSet

ROOT = Path(__file__).resolve().parents[1]
CDS = "ATG" + "GCTGAAAAACTGTTTGGCCGTATTAGCACC" * 3 + "TAA"


@pytest.fixture(scope="module")
def evidence():
    spec = importlib.util.spec_from_file_location("evidence_harness", ROOT / "benchmarks" / "evidence.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["evidence_harness"] = mod
    spec.loader.exec_module(mod)
    return mod


SIM = ["--screen", "sim", "--n-genes", "40", "--n-doubles", "200", "--n-triples", "60", "--steps", "6",
       "--eval-every", "3", "--baseline-steps", "6", "--seeds", "0", "--batch-size", "64",
       "--model-arg", "d_model=16", "--model-arg", "profile_dim=4", "--model-arg", "structural_dim=4"]  # fmt: skip


def check_statuses(targets: list[dict]) -> None:
    """Each "≥" / ">" target's status follows from its numbers; "on every seed" ones are met only if ahead."""
    assert targets and all(t["status"] in ("met", "MISSED") for t in targets), targets
    for t in targets:
        if "every seed" in t["target"] or "−" in t["target"]:
            if t["status"] == "met" and "> " in t["target"]:
                assert t["value"] > t["reference"] or math.isclose(t["value"], t["reference"]), t
            continue
        if " ≥ " in t["target"]:
            assert t["status"] == ("met" if t["value"] >= t["reference"] else "MISSED"), t


def test_sim_toy_run_writes_outputs_and_never_overwrites(evidence, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    arms = "cellformer,no_encoder,no_records,no_graph,rewired_graph,dango,per_gene,additive,graph_smoothing"
    args = SIM + ["--settings", "random@0.5,gene_holdout", "--arms", arms, "--out-dir", str(tmp_path), "--tag", "toy"]
    try:
        report = evidence.main(args)
        with pytest.raises(SystemExit, match="exists"):  # a written record is never overwritten silently
            evidence.main(args)
    finally:
        torch.set_num_threads(threads)
    md, js, png = (tmp_path / f"evidence_toy.{ext}" for ext in ("md", "json", "png"))
    assert md.exists() and js.exists() and png.exists() and png.stat().st_size > 0
    text = md.read_text()
    assert "## Targets" in text and "(a) CellFormer without encoder" in text and "sub-genome" in text
    assert "## Tuning" in text and "DANGO (tuned)" in text
    record = json.loads(js.read_text())
    assert record["config"]["grids"] == evidence.GRIDS["sim"]  # the grids it was tuned over travel with it
    runs = record["runs"]
    assert len(runs) == 2 * 9
    for r in runs:
        assert r["test"]["fitness"]["pearson"] is not None and math.isfinite(r["test"]["fitness"]["mse"])
        assert "aupr_neg" in r["test"]["epsilon"] and "aupr_neg" not in r["test"]["fitness"]
        expected = len(evidence.GRIDS["sim"].get(r["arm"], [{}]))
        assert len(r["grid"]) == expected  # every grid point was trained and judged on validation
        best = max(g["best_val"] for g in r["grid"])
        assert r["best_val_mean_pearson"] == pytest.approx(best)
    check_statuses(report["targets"])
    md.unlink()
    again = evidence.main(["--from-json", str(js)])  # re-rendered from the JSON alone, same targets
    assert md.exists() and [t["status"] for t in again["targets"]] == [t["status"] for t in report["targets"]]
    # per-seed records pool into one: a second "seed" (the same runs relabelled) doubles every summary list
    other = json.loads(js.read_text())
    other["seeds"], other["tag"] = [1], "toy_s1"
    for r in other["runs"]:
        r["seed"] = 1
    js1 = tmp_path / "evidence_toy_s1.json"
    js1.write_text(json.dumps(other))
    merged = evidence.main(["--merge", str(js), str(js1), "--tag", "toy_all", "--out-dir", str(tmp_path)])
    assert merged["seeds"] == [0, 1] and len(merged["runs"]) == 2 * len(runs)
    entry = merged["summary"]["gene_holdout/cellformer"]["epsilon"]["pearson"]
    assert len(entry) == 2 and entry[0] == entry[1]
    assert (tmp_path / "evidence_toy_all.md").exists()
    with pytest.raises(SystemExit, match="two records"):  # the same seed twice
        evidence.main(["--merge", str(js), str(js), "--tag", "toy_dup", "--out-dir", str(tmp_path)])
    # an arm re-run replaces its runs only when asked to
    redo = json.loads(js.read_text())
    redo["runs"] = [dict(r, test={**r["test"], "epsilon": {**r["test"]["epsilon"], "pearson": 0.5}})
                    for r in redo["runs"] if r["arm"] == "cellformer"]  # fmt: skip
    redo["arms"] = ["cellformer"]
    js2 = tmp_path / "redo_cellformer.json"
    js2.write_text(json.dumps(redo))
    with pytest.raises(SystemExit, match="two records"):
        evidence.main(["--merge", str(js), str(js2), "--tag", "toy_redo", "--out-dir", str(tmp_path)])
    updated = evidence.main(["--merge", str(js), str(js2), "--tag", "toy_redo", "--update", "--out-dir", str(tmp_path)])
    assert len(updated["runs"]) == len(runs) and updated["arms"] == report["arms"]
    assert updated["summary"]["gene_holdout/cellformer"]["epsilon"]["pearson"] == [0.5]
    same = [json.dumps(r["summary"]["gene_holdout/dango"], sort_keys=True) for r in (updated, report)]
    assert same[0] == same[1]  # the other arms' runs are untouched
    other["config"] = {**other["config"], "steps": 1}
    js1.write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="config"):  # only seeds and arms may differ
        evidence.main(["--merge", str(js), str(js1), "--tag", "toy_bad", "--out-dir", str(tmp_path)])
    # a changed CellFormer config may replace the CellFormer arms, all of them, and only with --update
    new_cfg = json.loads(js.read_text())
    new_cfg["config"]["cellformer"]["model_args"]["profile_impute"] = 1.0
    new_cfg["runs"] = [r for r in new_cfg["runs"] if r["arm"] in evidence.ENCODER_ARMS]
    new_cfg["arms"] = [a for a in new_cfg["arms"] if a in evidence.ENCODER_ARMS]
    js3 = tmp_path / "redo_config.json"
    js3.write_text(json.dumps(new_cfg))
    with pytest.raises(SystemExit, match="config"):
        evidence.main(["--merge", str(js), str(js3), "--tag", "toy_cfg", "--out-dir", str(tmp_path)])
    redone = evidence.main(["--merge", str(js), str(js3), "--tag", "toy_cfg", "--update", "--out-dir", str(tmp_path)])
    assert redone["config"]["cellformer"]["model_args"]["profile_impute"] == 1.0
    assert len(redone["runs"]) == len(runs)
    partial = dict(new_cfg, runs=[r for r in new_cfg["runs"] if r["arm"] != "no_encoder"])
    js3.write_text(json.dumps(partial))
    with pytest.raises(SystemExit, match="another CellFormer config"):  # (a) kept from the old config
        evidence.main(["--merge", str(js), str(js3), "--tag", "toy_cfg2", "--update", "--out-dir", str(tmp_path)])


def test_ablations_change_what_they_say(evidence) -> None:
    base = {"d_model": 16, "n_layers": 2, "graph_reg": {"g": {"layer": 0, "head": 0}}, "profile_dim": 8}
    cfg = evidence.RunConfig(
        steps=1,
        baseline_steps=1,
        eval_every=1,
        device="cpu",
        batch_size=8,
        cellformer={"model_args": base, "lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 1},
    )
    problem = toy_real_problem()
    _, a, *_ = evidence.model_spec("no_encoder", problem, problem.graphs, cfg)
    _, b, *_ = evidence.model_spec("no_records", problem, problem.graphs, cfg)
    _, c, *_ = evidence.model_spec("cellformer", problem, problem.graphs, cfg)
    assert a["n_layers"] == 0 and a["graph_reg"] == {} and a["profile_dim"] == 8
    assert b["n_layers"] == 2 and b["profile_dim"] == 0 and not b["member_singles"] and not b["additive_features"]
    assert c == base


def toy_real_problem(evidence=None):
    """A 40-gene screen of the real layout: every gene's single mutant (fitness) and random pairs (epsilon)."""
    mod = evidence or sys.modules["evidence_harness"]
    genome = toy_genome(40, features=87, scale=0.1)
    rng = np.random.default_rng(0)
    pairs = {tuple(sorted(rng.choice(40, 2, replace=False).tolist())) for _ in range(400)}
    sets = [[g] for g in range(40)] + [list(p) for p in sorted(pairs)]
    y = np.full((len(sets), 2), np.nan, np.float32)
    y[:40, 0] = rng.normal(1, 0.1, 40)
    y[40:, 1] = rng.normal(0, 0.05, len(sets) - 40)
    offsets = np.cumsum([0] + [len(s) for s in sets])
    data = PerturbationData(genes=list(genome.genes), offsets=offsets, gene_index=np.concatenate(sets),
                            types=np.full(offsets[-1], int(PerturbationType.DELETION)), phenotypes=y,
                            phenotype_names=["fitness", "epsilon"], genome_hash=genome.hash)  # fmt: skip
    graphs = GraphSet([random_graph(40, 80, False, name="g")], genome.hash)
    return mod.Problem("costanzo", genome, data, {}, "toy", graphs=graphs)


def test_real_screen_settings(evidence) -> None:
    """gene_holdout keeps every single in training and the held-out genes' pairs out of it; smf_holdout holds
    the held-out genes' singles out too; random splits the records."""
    problem = toy_real_problem(evidence)
    data = problem.data
    genes = [set(data.record(r)[0].tolist()) for r in range(len(data))]
    single = data.set_sizes == 1
    ho = evidence.setting_split(problem, evidence.Setting.parse("gene_holdout"), 1, 0.2, 0.3)
    held = set(ho["heldout_genes"].tolist())
    assert held and single[ho["train"]].sum() == 40
    assert not any(genes[r] & held for r in ho["train"] if not single[r])
    assert all(genes[r] & held and not single[r] for r in ho["test"])
    smf = evidence.setting_split(problem, evidence.Setting.parse("smf_holdout"), 1, 0.2, 0.3)
    held = set(smf["heldout_genes"].tolist())
    assert {next(iter(genes[r])) for r in smf["test"] if single[r]} == held
    rnd = evidence.setting_split(problem, evidence.Setting.parse("random"), 1, 0.2, 0.3)
    assert sum(len(rnd[k]) for k in ("train", "val", "test")) == len(data)


def test_real_screen_arm_and_heterologous_test(evidence) -> None:
    """A CellFormer arm on the toy real screen reports the strong-interaction metrics and the heterologous
    test: the held-out genes re-added from their CDS, against the unknown-gene vector alone."""
    problem = toy_real_problem(evidence)
    split = evidence.setting_split(problem, evidence.Setting.parse("smf_holdout"), 0, 0.2, 0.3)
    model_args = {"d_model": 16, "n_layers": 1, "n_heads": 2, "graph_reg": {"g": {"layer": 0, "head": 0}},
                  "profile_dim": 4, "structural_dim": 4}  # fmt: skip
    cfg = evidence.RunConfig(steps=4, baseline_steps=4, eval_every=2, device="cpu", batch_size=32,
                             cellformer={"model_args": model_args, "lr": 1e-3, "weight_decay": 0.0,
                                         "warmup_steps": 1})  # fmt: skip
    out = evidence.train_once(problem, "cellformer", model_args, problem.graphs, split, 0, 1e-3, 0.0, 1, 4, cfg)
    cds = {g: CDS[:-3] * (1 + i % 3) + "TAA" for i, g in enumerate(problem.genome.genes)}  # genes differ
    het = evidence.heterologous_test(out["model"], problem, split, "cpu", cds)
    assert het["n_genes"] == len(split["heldout_genes"])
    assert set(het) == {"n_genes", "n_pairs", "cds", "unknown_vector"}
    assert het["n_pairs"] > 0 and set(het["cds"]) == {"fitness", "epsilon"}
    assert het["cds"]["fitness"]["pearson"] != het["unknown_vector"]["fitness"]["pearson"]
    assert het["cds"]["epsilon"]["n"] == het["n_pairs"]
