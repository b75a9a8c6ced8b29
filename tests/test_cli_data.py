"""``cellformer data``: simulate, info, import (exit codes and messages)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cellformer.cli import main as cellformer_main
from cellformer.data import PerturbationData
from cellformer.data.cli import main

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "small.h5"
    args = ["simulate", "--out", str(out), "--singles", "300", "--doubles", "400", "--triples", "100", "--seed", "2"]
    assert main(args) == 0
    return out


def test_simulate_writes_dataset(simulated, capsys):
    d = PerturbationData.load(simulated)
    assert np.bincount(d.set_sizes).tolist() == [0, 300, 400, 100]
    assert d.attrs["seed"] == "2" and d.attrs["truth_graph"] == "string_database"
    # refuses to overwrite without --force
    assert main(["simulate", "--out", str(simulated), "--doubles", "10"]) == 2
    assert "--force" in capsys.readouterr().err


def test_simulate_bad_option_value(tmp_path, capsys):
    assert main(["simulate", "--out", str(tmp_path / "x.h5"), "--off-graph-share", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "off_graph_share" in err and "Traceback" not in err
    assert main(["simulate", "--truth-graph", "nope"]) == 2


def test_info_prints_coverage(simulated, capsys):
    assert main(["info", str(simulated)]) == 0
    out = capsys.readouterr().out
    assert "phenotype coverage" in out
    lines = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.strip().startswith(("fitness", "epsilon"))}
    assert lines["fitness"][1] == "800" and lines["epsilon"][1] == "400"
    assert "set size 3: 100" in out and "splits: train" in out
    assert "regulatory" in out and "unmapped rows" in out


def test_info_missing_dataset(tmp_path, capsys):
    assert main(["info", str(tmp_path / "none.h5")]) == 2
    assert "cellformer data simulate" in capsys.readouterr().err


def test_import_bad_row_exit_code_and_line(tmp_path, capsys):
    out = tmp_path / "screen.h5"
    assert main(["import", str(FIXTURES / "table_bad_gene.tsv"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "table_bad_gene.tsv:4" in err and "ACT11" in err and "ACT1" in err and "Traceback" not in err
    assert not out.exists()
    # skipping the bad row works and writes the rejects
    rejects = tmp_path / "rej.tsv"
    args = ["import", str(FIXTURES / "table_bad_gene.tsv"), "--out", str(out), "--skip-bad-rows", "--rejects"]
    assert main([*args, str(rejects)]) == 0
    assert "1 rows rejected" in capsys.readouterr().out
    assert len(PerturbationData.load(out)) == 3
    assert rejects.read_text().splitlines()[1].startswith("ACT11\t0.7\tline 4: ")


def test_import_good_table(tmp_path, capsys):
    out = tmp_path / "good.h5"
    assert cellformer_main(["data", "import", str(FIXTURES / "table_good.tsv"), "--out", str(out)]) == 0
    d = PerturbationData.load(out)
    assert len(d) == 4 and d.split.tolist() == [0, 1, 2, -1]
    assert main(["import", str(FIXTURES / "table_good.tsv"), "--out", str(out)]) == 2  # exists
    assert main(["import", str(FIXTURES / "table_good.tsv"), "--out", str(out), "--force"]) == 0


def test_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "simulate" in out and "import" in out and "info" in out
    for cmd in ["simulate", "import", "info"]:
        assert main([cmd, "--help"]) == 0
    assert main(["no-such-command"]) == 2
