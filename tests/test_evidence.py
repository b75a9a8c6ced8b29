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


def test_evidence_toy_run_writes_outputs(evidence, tmp_path: Path) -> None:
    """A few genes and steps, 1 seed, 2 arms: table, JSON (one entry per run, finite numbers) and plot."""
    threads = torch.get_num_threads()
    try:
        report = evidence.main(
            [
                "--mode", "quick", "--n-genes", "40", "--n-doubles", "200", "--n-triples", "60",
                "--steps", "6", "--eval-every", "3", "--seeds", "0", "--train-fractions", "0.5",
                "--arms", "no_graph,true_graph", "--d-model", "16", "--rows", "16",
                "--out-dir", str(tmp_path), "--tag", "toy",
            ]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    md, js, png = (tmp_path / f"evidence_toy.{ext}" for ext in ("md", "json", "png"))
    assert md.exists() and js.exists() and png.exists() and png.stat().st_size > 0
    text = md.read_text()
    assert "Test Pearson" in text and "(b) CellFormer + true graph" in text and "sub-genome" in text
    data = json.loads(js.read_text())
    runs = data["runs"]
    assert len(runs) == 2  # 1 fraction x 2 arms x 1 seed
    assert {(r["arm"], r["train_fraction"]) for r in runs} == {(a, 0.5) for a in ("no_graph", "true_graph")}
    for r in runs:
        assert r["test"]["fitness"]["pearson"] is not None and math.isfinite(r["test"]["fitness"]["pearson"])
        assert math.isfinite(r["test"]["fitness"]["mse"]) and math.isfinite(r["alignment"]["true"])
        assert 0.0 <= r["alignment"]["true"] <= 1.0
        if r["arm"] == "true_graph":  # the graph the head was trained on is the truth graph itself
            assert r["alignment"]["trained"] == pytest.approx(r["alignment"]["true"])
        else:
            assert r["alignment"]["trained"] is None  # no graph term: NaN, written as null
    assert report["summary"]["true_graph@0.5"]["n_train"] == runs[0]["n_train"]


def test_unavailable_arm_is_reported(evidence, monkeypatch) -> None:
    """A baseline that cannot be imported is reported as unavailable instead of failing the run."""
    import cellformer.models.registry as registry

    monkeypatch.setitem(registry.MODELS, "dango", "cellformer.models.baselines.missing_module:Nope")
    bad = evidence.check_arms(["no_graph", "dango", "additive"])
    assert set(bad) == {"dango"}
