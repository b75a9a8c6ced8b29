"""Smoke test of the graph-prior evidence harness (benchmarks/evidence.py) on a toy configuration."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def evidence():
    spec = importlib.util.spec_from_file_location("evidence_harness", ROOT / "benchmarks" / "evidence.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["evidence_harness"] = mod
    spec.loader.exec_module(mod)
    return mod


TOY = ["--mode", "quick", "--n-genes", "40", "--n-doubles", "200", "--n-triples", "60", "--steps", "6",
       "--eval-every", "3", "--seeds", "0", "--d-model", "16", "--rows", "16", "--additive-steps", "6"]  # fmt: skip


def test_evidence_toy_run_writes_outputs(evidence, tmp_path: Path) -> None:
    """Two settings, four arms, 1 seed: tables, targets, JSON (one entry per run, finite numbers) and plot."""
    threads = torch.get_num_threads()
    args = TOY + ["--settings", "random@0.5,gene_holdout", "--arms", "cellformer,no_graph,additive,graph_smoothing",
                  "--out-dir", str(tmp_path), "--tag", "toy"]  # fmt: skip
    try:
        report = evidence.main(args)
        with pytest.raises(SystemExit, match="exists"):  # a written record is never overwritten silently
            evidence.main(args)
    finally:
        torch.set_num_threads(threads)
    md, js, png = (tmp_path / f"evidence_toy.{ext}" for ext in ("md", "json", "png"))
    assert md.exists() and js.exists() and png.exists() and png.stat().st_size > 0
    text = md.read_text()
    assert "## Targets" in text and "CellFormer (true graph)" in text and "sub-genome" in text
    assert "cellformer − no_graph" in text
    data = json.loads(js.read_text())
    runs = data["runs"]
    assert len(runs) == 8  # 2 settings x 4 arms x 1 seed
    assert {r["setting"] for r in runs} == {"random@0.5", "gene_holdout"}
    for r in runs:
        assert r["test"]["fitness"]["pearson"] is not None and math.isfinite(r["test"]["fitness"]["mse"])
        if r["arm"] == "cellformer":
            assert 0.0 <= r["alignment"]["trained"] <= 1.0
    assert report["summary"]["gene_holdout/cellformer"]["n_train"] == next(
        r["n_train"] for r in runs if r["setting"] == "gene_holdout"
    )
    assert {t["status"] for t in report["targets"]} <= {"met", "MISSED", "n/a"}
    md.unlink()
    again = evidence.main(["--from-json", str(js)])  # re-rendered from the JSON alone, same targets
    assert md.exists() and [t["status"] for t in again["targets"]] == [t["status"] for t in report["targets"]]


def test_gene_holdout_settings_keep_held_out_genes_out_of_training(evidence) -> None:
    problem = evidence.sub_genome_problem(40, 200, 60)
    for kind in ("gene_holdout", "gene_holdout_strict"):
        split = evidence.setting_split(problem, evidence.Setting.parse(kind), seed=1, holdout=0.2, strict_holdout=0.3)
        held = set(split["heldout_genes"].tolist())
        data = problem.data
        genes = [set(data.record(int(r))[0].tolist()) for r in range(len(data))]
        assert not any(genes[r] & held for r in split["train"])
        assert all(genes[r] & held for r in split["test"])
        if kind.endswith("strict"):
            assert all(genes[r] <= held for r in split["test"])
