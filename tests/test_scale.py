"""The scale benchmark's synthetic screens (benchmarks/scale.py): importable, distinct pairs, both layouts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from cellformer.data.importers.screens import read_costanzo2016
from cellformer.data.table import import_table
from cellformer.genome import yeast_genome

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scale():
    spec = importlib.util.spec_from_file_location("scale_benchmark", ROOT / "benchmarks" / "scale.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["scale_benchmark"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("layout", ["plain", "costanzo"])
def test_synthetic_screens_import_with_distinct_pairs(scale, tmp_path, layout):
    path = tmp_path / f"s.{layout}"
    scale.write_screen(path, layout, 3000, seed=1)
    genome = yeast_genome()
    if layout == "plain":
        data, report = import_table(path, genome)
        assert report.rejected == 0 and (data.set_sizes == 1).sum() == len(genome)
    else:
        data, report = read_costanzo2016(path, genome)
        assert report.rejected == 0 and report.interaction_rows == 3000
    pairs = data.set_sizes == 2
    assert pairs.sum() == 3000
    g = data.gene_index[np.repeat(pairs, data.set_sizes)].reshape(-1, 2).astype(np.int64)
    keys = np.minimum(g[:, 0], g[:, 1]) * len(genome) + np.maximum(g[:, 0], g[:, 1])
    assert len(np.unique(keys)) == 3000 and (g[:, 0] != g[:, 1]).all()


def test_targets_follow_the_measurements(scale):
    row = {"layout": "plain", "import_s": 100.0, "import_rss_gib": 2.0, "info_s": 5.0, "fit_start_s": 30.0,
           "screen_rss_gib": 1.0}  # fmt: skip
    rows = [row | {"pairs": 1, "step_ms": 100.0, "screen_pairs_per_s": 1000.0},
            row | {"pairs": 2, "step_ms": 160.0, "screen_pairs_per_s": 900.0, "import_s": 200.0}]  # fmt: skip
    status = {t["target"].split(":")[1].split()[0]: t["status"] for t in scale.targets(rows)}
    assert status["step"] == "MISSED" and status["import"] == "MISSED"  # 1.6x; 200 s
    assert status["fit"] == "met" and status["screen"] == "met" and status["data"] == "met"
