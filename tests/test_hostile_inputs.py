"""Hostile and careless inputs through the real ``cellformer`` entry point: one clear line and exit status 2
(or the correct result), never a traceback for a user error, while bugs keep theirs."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cellformer.cli import main
from cellformer.data.dataset import PerturbationData

CDS = "ATG" + "GCTGAAAAACTGTTTGGCCGTATTAGCACC" * 3 + "TAA"
LONG_CDS = "ATG" + "GCTGAAAAACTGTTTGGCCGTATTAGCACC" * 12 + "TAA"  # 366 bases: longer than a file name may be
FIXTURES = Path(__file__).parent / "fixtures"
#: ``fit`` without seeding (its log line would go to a stream captured by an earlier test)
FIT = ["fit", "--seed_everything", "false"]


def user_error(capsys, argv: list[str], *fragments: str) -> str:
    """Run ``cellformer argv``: exit status 2, one ``error:`` line on stderr containing ``fragments``, no
    traceback and no usage text (informational log lines, e.g. a seed being set, may come before it)."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if "error" in ln.lower()]  # not e.g. Lightning's "Seed set"
    assert code == 2, err
    assert len(lines) == 1 and "error: " in lines[0], err
    assert "Traceback" not in err and "usage:" not in err, err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def table(tmp_path: Path, text: str, name: str = "t.tsv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------- the one error path
def test_debug_shows_the_traceback_and_bugs_keep_theirs(tmp_path, capsys, monkeypatch):
    missing = str(tmp_path / "none.h5")
    user_error(capsys, ["data", "info", missing], "does not exist")
    assert main(["--debug", "data", "info", missing]) == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("CELLFORMER_DEBUG", "1")
    assert main(["data", "info", missing]) == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.delenv("CELLFORMER_DEBUG")

    def bug(args):
        raise KeyError("a programming error")

    monkeypatch.setattr("cellformer.data.cli._cmd_info", bug)
    with pytest.raises(KeyError):  # not reported as a user error: the traceback stays
        main(["data", "info", missing])


def test_broken_pipe_on_stdout_is_quiet(tmp_path, capsys, monkeypatch):
    from conftest import query_data, query_genome

    dataset = tmp_path / "toy.h5"
    query_data(query_genome()).save(dataset)

    class ClosedPipe:
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["data", "info", str(dataset)]) == 0
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------- data import / info
def test_import_value_overflowing_float32(tmp_path, capsys):
    t = table(tmp_path, "genes\tfitness\nTFC3\t0.5\nACT1\t3.5e38\n")
    user_error(capsys, ["data", "import", str(t), "--out", str(tmp_path / "o.h5")], "t.tsv:3", "fitness", "3.5e38")


def test_import_truncated_gz_and_binary_table(tmp_path, capsys):
    raw = gzip.compress(b"genes\tfitness\n" + b"TFC3\t0.5\n" * 2000)
    gz = tmp_path / "cut.tsv.gz"
    gz.write_bytes(raw[: len(raw) // 2])
    user_error(capsys, ["data", "import", str(gz), "--out", str(tmp_path / "a.h5")], "cut.tsv.gz", "gzip")
    binary = tmp_path / "blob.tsv"
    binary.write_bytes(bytes(range(256)) * 8)
    user_error(capsys, ["data", "import", str(binary), "--out", str(tmp_path / "b.h5")], "blob.tsv", "binary")


def test_import_accepts_a_bom(tmp_path, capsys):
    t = tmp_path / "bom.tsv"
    t.write_bytes("\ufeffgenes\tfitness\nTFC3\t0.5\nACT1\t0.7\n".encode())
    assert main(["data", "import", str(t), "--out", str(tmp_path / "bom.h5")]) == 0
    assert PerturbationData.load(tmp_path / "bom.h5").phenotype_names == ["fitness"]


def test_import_out_is_a_directory_or_the_input(tmp_path, capsys):
    t = table(tmp_path, "genes\tfitness\nTFC3\t0.5\n")
    (tmp_path / "dir").mkdir()
    user_error(capsys, ["data", "import", str(t), "--out", str(tmp_path / "dir")], "is a directory")
    user_error(capsys, ["data", "import", str(t), "--out", str(t), "--force"], "input file itself")
    assert t.read_text().startswith("genes")


def test_interrupted_import_leaves_no_tmp_and_a_stale_tmp_does_not_block(tmp_path, capsys, monkeypatch):
    t = table(tmp_path, "genes\tfitness\nTFC3\t0.5\n")
    out = tmp_path / "o.h5"

    def killed(self, tmp):
        Path(tmp).write_bytes(b"partial")
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(PerturbationData, "_write", killed)
        assert main(["data", "import", str(t), "--out", str(out)]) == 130
    assert not out.exists() and not list(tmp_path.glob("o.h5*tmp"))
    stale = tmp_path / "o.h5.1.tmp"  # left by a process killed outright
    stale.write_bytes(b"left by a killed run")
    assert main(["data", "import", str(t), "--out", str(out)]) == 0
    assert len(PerturbationData.load(out)) == 1 and list(tmp_path.glob("o.h5*tmp")) == [stale]


def test_parallel_saves_of_one_file_never_share_a_temporary_file(tmp_path):
    """Jobs that build the same dataset on first use at once each write their own temporary file."""
    import multiprocessing as mp

    data = PerturbationData(genes=["TFC3", "ACT1"], offsets=np.array([0, 1, 2]), gene_index=np.array([0, 1]),
                            types=np.ones(2, dtype=np.int64), phenotypes=np.array([[0.5], [0.7]]),
                            phenotype_names=["fitness"])  # fmt: skip
    out = tmp_path / "same.h5"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=data.save, args=(out,)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert len(PerturbationData.load(out)) == 2 and not list(tmp_path.glob("*tmp"))


def test_same_gene_set_in_train_and_test_with_different_values_is_reported(tmp_path, capsys):
    t = table(tmp_path, "genes\tsplit\tfitness\nTFC3\ttrain\t0.5\ntfc3\ttest\t0.9\nACT1\ttrain\t0.7\n")
    out = tmp_path / "o.h5"
    assert main(["data", "import", str(t), "--out", str(out)]) == 0
    assert "1 of them with different values" in capsys.readouterr().out
    assert main(["data", "info", str(out)]) == 0
    assert "train/test overlap" in capsys.readouterr().out


@pytest.mark.parametrize("content", [b"", b"garbage, not HDF5\n" * 10, "truncated"])
def test_broken_dataset_to_info_and_fit(tmp_path, capsys, content):
    bad = tmp_path / "bad.h5"
    if content == "truncated":
        t = table(tmp_path, "genes\tfitness\nTFC3\t0.5\nACT1\t0.7\n")
        assert main(["data", "import", str(t), "--out", str(tmp_path / "good.h5")]) == 0
        whole = (tmp_path / "good.h5").read_bytes()
        bad.write_bytes(whole[: len(whole) // 2])
    else:
        bad.write_bytes(content)
    capsys.readouterr()
    user_error(capsys, ["data", "info", str(bad)], "bad.h5")
    user_error(capsys, [*FIT, "--data.dataset", str(bad), "--trainer.max_steps", "1"], "bad.h5")


def test_import_graph_truncated_gz_and_empty_graph(tmp_path, capsys):
    raw = gzip.compress(b"gene_a\tgene_b\n" + b"TFC3\tACT1\n" * 3000)
    gz = tmp_path / "edges.tsv.gz"
    gz.write_bytes(raw[: len(raw) // 2])
    args = ["data", "import-graph", "--format", "edge-list", "--out-dir", str(tmp_path / "g")]
    user_error(capsys, [*args, str(gz)], "edges.tsv.gz", "gzip")
    unmapped = table(tmp_path, "gene_a\tgene_b\nNOPE1\tNOPE2\n", "unmapped.tsv")
    user_error(capsys, [*args, str(unmapped)], "no edges")
    assert not list(tmp_path.glob("g/*.tsv.gz"))


# ---------------------------------------------------------------------- checkpoints and queries
@pytest.mark.parametrize("kind", ["empty", "garbage", "truncated", "not-a-checkpoint"])
def test_broken_checkpoint(trained, tmp_path, capsys, kind):
    bad = tmp_path / "bad.ckpt"
    if kind == "empty":
        bad.write_bytes(b"")
    elif kind == "garbage":
        bad.write_bytes(b"\x00\x01 not a checkpoint" * 50)
    elif kind == "truncated":
        whole = Path(trained["path"]).read_bytes()
        bad.write_bytes(whole[: len(whole) // 2])
    else:
        torch.save({"weights": torch.zeros(3)}, bad)
    line = user_error(capsys, ["predict", "--ckpt", str(bad), "--genes", "G1"], "bad.ckpt")
    assert "weights_only" not in line


def test_predict_bad_batch_size(trained, capsys):
    ckpt = str(trained["path"])
    user_error(capsys, ["predict", "--ckpt", ckpt, "--genes", "G1", "--batch-size", "-1"], "--batch-size")
    user_error(capsys, ["predict", "--ckpt", ckpt, "--genes", "G1", "--batch-size", "0"], "--batch-size")


@pytest.mark.parametrize(
    "extra,fragment",
    [
        (["--top", "-1"], "--top"),
        (["--top", "0"], "--top"),
        (["--align-rows", "-5"], "--align-rows"),
        (["--set", ""], "--set"),
    ],
)
def test_explain_bad_numbers_and_empty_set(trained, tmp_path, capsys, extra, fragment):
    argv = ["explain", "--ckpt", str(trained["path"]), "--gene", "G1", "--out-dir", str(tmp_path / "ex"), *extra]
    user_error(capsys, argv, fragment)
    assert not (tmp_path / "ex").exists()


def test_add_gene_twice_and_long_inline_dna(trained, tmp_path, capsys):
    ckpt = str(trained["path"])
    a, b = tmp_path / "a.fa", tmp_path / "b.fa"
    a.write_text(f">a\n{CDS}\n")
    b.write_text(f">b\n{CDS}\n")
    argv = ["predict", "--ckpt", ckpt, "--add-gene", f"GFP={a}", "--add-gene", f"GFP={b}", "--genes", "GFP"]
    user_error(capsys, argv, "GFP", "twice")
    assert main(["predict", "--ckpt", ckpt, "--add-gene", f"GFP={LONG_CDS}", "--genes", "GFP;G1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[1].startswith("GFP;G1\taddition;deletion\t")


def test_empty_gene_name_same_for_genes_and_table(trained, tmp_path, capsys):
    ckpt = str(trained["path"])
    user_error(capsys, ["predict", "--ckpt", ckpt, "--genes", "G1;"], "empty gene name")
    t = table(tmp_path, "genes\nG1;\n")
    user_error(capsys, ["predict", "--ckpt", ckpt, "--table", str(t)], "empty gene name", "t.tsv:2")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda(trained, capsys):
    user_error(capsys, ["predict", "--ckpt", str(trained["path"]), "--genes", "G1", "--device", "cuda"], "CUDA")


def test_predict_out_is_a_directory_or_an_input(trained, tmp_path, capsys):
    ckpt = str(trained["path"])
    user_error(capsys, ["predict", "--ckpt", ckpt, "--genes", "G1", "--out", str(tmp_path)], "is a directory")
    t = table(tmp_path, "genes\nG1\n")
    user_error(capsys, ["predict", "--ckpt", ckpt, "--table", str(t), "--out", str(t)], "input file itself")
    assert t.read_text() == "genes\nG1\n"
    before = Path(ckpt).read_bytes()
    user_error(capsys, ["predict", "--ckpt", ckpt, "--genes", "G1", "--out", ckpt], "input file itself")
    assert Path(ckpt).read_bytes() == before


# ---------------------------------------------------------------------- fit config errors
@pytest.mark.parametrize(
    "extra,fragments",
    [
        (["--model.graph_regg", "1"], ["graph_regg", "did you mean model.model_args.graph_reg"]),
        (["--model.model_args", '{"d_modle": 8}'], ["d_modle", "did you mean d_model"]),
        (["--model.model", "transformer"], ["unknown model 'transformer'"]),
        (["--trainer.max_stepz", "3"], ["max_stepz", "did you mean trainer.max_steps"]),
    ],
)
def test_fit_config_errors_are_one_line(capsys, extra, fragments):
    user_error(capsys, [*FIT, *extra], *fragments)


def test_fit_unknown_graph_phenotype_and_head(capsys):
    user_error(capsys, [*FIT, "--data.graphs", "[string_databse]"], "string_databse", "did you mean string_database")
    user_error(capsys, [*FIT, "--data.phenotypes", "[fitnes]"], "fitnes", "did you mean fitness")
    reg = '{"graph_reg": {"string_database": {"layer": 0, "head": 9}}, "n_heads": 2}'
    user_error(capsys, [*FIT, "--model.model_args", reg], "head 9")


def test_import_screen_out_is_the_input(tmp_path, capsys):
    src = tmp_path / "screen.txt"
    original = (FIXTURES / "importers" / "costanzo2016_clean.txt").read_bytes()
    src.write_bytes(original)
    user_error(capsys, ["data", "import-screen", "--format", "costanzo2016", str(src), "--out", str(src)], "input")
    assert src.read_bytes() == original
