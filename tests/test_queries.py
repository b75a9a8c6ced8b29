"""Queries of a checkpoint: Predictor, exhaustive screens (top-k, resume), explain, and the CLI."""

from __future__ import annotations

import itertools

import h5py
import numpy as np
import pytest
import torch
from conftest import QUERY_N as N
from conftest import QUERY_PHENOTYPES as PHENOTYPES

from cellformer.data.dataset import PerturbationData, PerturbationDataset, PerturbationType
from cellformer.genome import SequenceError, UnknownGeneError
from cellformer.models.checkpoint import load_checkpoint
from cellformer.queries import Predictor, screen_pairs, screen_triples
from cellformer.queries import screen as screen_mod
from cellformer.queries.cli import main as cli_main
from cellformer.queries.screen import ScreenAborted, unrank_pairs, unrank_triples

CDS = "ATG" + "GCTGAAAAACTGTTTGGCCGTATTAGCACC" * 3 + "TAA"


@pytest.fixture()
def predictor(trained) -> Predictor:
    return Predictor.from_checkpoint(trained["path"])


def record_names(data: PerturbationData, r: int) -> list[str]:
    g, _, _ = data.record(r)
    return [data.genes[i] for i in g.tolist()]


# ---------------------------------------------------------------------- predictor
def test_checkpoint_is_weights_only(trained):
    ckpt = torch.load(trained["path"], weights_only=True)
    assert "cellformer" in ckpt
    model, ctx = load_checkpoint(trained["path"])
    assert ctx.phenotype_names == PHENOTYPES and len(ctx.genome) == N


def test_predict_matches_test_loop(trained, predictor):
    data = trained["data"]
    assert predictor.has_encoder_cache
    table = predictor.predict([record_names(data, r) for r in range(len(data))], batch_size=7)
    assert table.phenotype_names == PHENOTYPES
    np.testing.assert_allclose(table.values, trained["preds"].numpy(), atol=1e-5)
    # and the plain forward of the loaded model on a dataset batch
    batch = PerturbationDataset(data).collate_rows(np.arange(len(data)))
    with torch.no_grad():
        ref = predictor.model(batch).pred
    np.testing.assert_allclose(table.values, ref.numpy(), atol=1e-5)
    assert len(predictor._cache) == 1  # the encoder ran once for the base genome


def test_names_aliases_and_table(predictor):
    a = predictor.predict([["g3", "G4"]])
    b = predictor.predict([["alias3", "g4"]])
    np.testing.assert_array_equal(a.values, b.values)
    assert a.genes == [["G3", "G4"]] and a.types == [["deletion", "deletion"]]
    text = a.to_tsv()
    assert text.splitlines()[0].split("\t") == ["genes", "types", *PHENOTYPES]
    assert text.splitlines()[1].startswith("G3;G4\tdeletion;deletion\t")
    c = predictor.predict([["G3", "G4"]], types=[["knockdown", "deletion"]])
    assert np.abs(a.values - c.values).max() > 1e-3


def test_unknown_and_duplicate_genes(predictor):
    with pytest.raises(UnknownGeneError) as err:
        predictor.predict([["G1", "G3X"]])
    assert "G3" in str(err.value) and err.value.suggestions
    with pytest.raises(ValueError, match="G3"):
        predictor.predict([["G3", "alias3"]])
    with pytest.raises(ValueError, match="addition"):
        predictor.predict([["G3"]], types=[["addition"]])


def test_add_gene_from_fasta(trained, predictor, tmp_path):
    fa = tmp_path / "new.fa"
    fa.write_text(f">NEWGENE some description\n{CDS[:40]}\n{CDS[40:]}\n")
    base = predictor.predict([["G1"], ["G2", "G5"]])
    base_cls = predictor.encoding(()).cls.clone()
    assert predictor.add_fasta(fa) == ["NEWGENE"]
    cls = predictor.encoding(("NEWGENE",)).cls
    assert not torch.equal(cls, base_cls)
    t1 = predictor.predict([["NEWGENE", "G1"], ["G1"], ["newgene"]])
    assert t1.types[0] == ["addition", "deletion"]
    t2 = predictor.predict([["NEWGENE", "G1"], ["G1"], ["newgene"]])
    np.testing.assert_array_equal(t1.values, t2.values)
    np.testing.assert_allclose(t1.values[1], base.values[0], atol=1e-6)  # queries without it: base genome
    assert np.abs(t1.values[0] - base.values[0]).max() > 1e-3
    # a fresh predictor gives the same numbers; and so does the model's own forward on a dataset record
    other = Predictor.from_checkpoint(trained["path"])
    other.add_genes({"NEWGENE": CDS})
    np.testing.assert_allclose(other.predict([["NEWGENE", "G1"]]).values, t1.values[:1], atol=1e-6)
    data = PerturbationData(
        genes=list(trained["genome"].genes),
        offsets=np.array([0, 2]),
        gene_index=np.array([N, 1]),
        types=np.array([int(PerturbationType.ADDITION), int(PerturbationType.DELETION)]),
        phenotypes=np.full((1, 2), np.nan, np.float32),
        phenotype_names=PHENOTYPES,
        heterologous={"NEWGENE": CDS},
    )
    with torch.no_grad():
        ref = predictor.model(PerturbationDataset(data).collate_rows(np.array([0]))).pred
    np.testing.assert_allclose(t1.values[:1], ref.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="addition"):
        predictor.predict([["NEWGENE"]], types=[["deletion"]])


def test_add_gene_validation(predictor):
    with pytest.raises(SequenceError, match="position"):
        predictor.add_genes({"BAD": "ATGXXXTAA"})
    with pytest.raises(SequenceError, match="multiple of 3"):
        predictor.add_genes({"BAD": "ATGAT"})
    with pytest.raises(ValueError, match="already has"):
        predictor.add_genes({"alias3": CDS})
    with pytest.warns(UserWarning, match="start codon"):
        predictor.add_genes({"NOSTART": "GCT" * 10 + "TAA"})
    with pytest.warns(UserWarning, match="stop codon"):
        predictor.add_genes({"NOSTOP": "ATG" + "GCT" * 10})
    assert list(predictor.added) == ["NOSTART", "NOSTOP"]


# ---------------------------------------------------------------------- screens
def test_unranking_matches_itertools():
    for n in (2, 3, 7, 12):
        pairs = np.array(list(itertools.combinations(range(n), 2)))
        np.testing.assert_array_equal(unrank_pairs(np.arange(len(pairs)), n), pairs)
        if n >= 3:
            triples = np.array(list(itertools.combinations(range(n), 3)))
            np.testing.assert_array_equal(unrank_triples(np.arange(len(triples)), n), triples)
    n = 6410  # the yeast genome: boundaries of every row are exact
    a = np.arange(n - 1)
    starts = a * n - a * (a + 1) // 2
    ranks = np.concatenate([starts, starts[1:] - 1, [n * (n - 1) // 2 - 1]])
    got = unrank_pairs(ranks, n)
    assert (got[:, 0] < got[:, 1]).all() and (got[:, 1] < n).all()
    back = got[:, 0] * n - got[:, 0] * (got[:, 0] + 1) // 2 + got[:, 1] - got[:, 0] - 1
    np.testing.assert_array_equal(back, ranks)


def _brute_force(predictor, combos, by, top, ascending=False):
    sets = [[predictor.base_genome.genes[i] for i in c] for c in combos]
    values = predictor.predict(sets).values
    col = PHENOTYPES.index(by)
    key = values[:, col] if ascending else -values[:, col]
    order = np.argsort(key, kind="stable")[:top]
    return [tuple(combos[i]) for i in order], values[order]


@pytest.mark.parametrize("ascending", [False, True])
def test_screen_pairs_equals_brute_force(predictor, ascending):
    res = screen_pairs(predictor, by="epsilon", top=25, batch_size=64, ascending=ascending, progress=False)
    combos = list(itertools.combinations(range(N), 2))
    want, values = _brute_force(predictor, combos, "epsilon", 25, ascending)
    assert res.complete and res.num_total == len(combos) == 435
    assert [tuple(c) for c in res.combos.tolist()] == want
    np.testing.assert_allclose(res.scores, values, atol=1e-5)
    lines = res.to_tsv().splitlines()
    assert lines[0].split("\t") == ["rank", "genes", *PHENOTYPES] and len(lines) == 26


def test_screen_triples_on_subset(predictor, monkeypatch):
    subset = [f"G{i}" for i in (2, 5, 7, 8, 11, 13, 17, 19, 23, 29)] + ["alias0"]
    res = screen_triples(predictor, subset, by="fitness", top=15, batch_size=32, progress=False)
    idx = [predictor.base_genome.index(g) for g in subset]
    combos = [tuple(idx[j] for j in c) for c in itertools.combinations(range(len(idx)), 3)]
    want, values = _brute_force(predictor, combos, "fitness", 15)
    assert [tuple(c) for c in res.combos.tolist()] == want
    np.testing.assert_allclose(res.scores, values, atol=1e-5)
    monkeypatch.setattr(screen_mod, "MAX_TRIPLE_GENES", 10)
    with pytest.raises(ValueError, match="165 triples.*--force"):
        screen_triples(predictor, subset, by="fitness", progress=False)
    with pytest.raises(ValueError, match="fitness, epsilon"):
        screen_pairs(predictor, by="tau", progress=False)


def test_screen_resume_is_identical(predictor, tmp_path):
    kw = {"by": "epsilon", "top": 20, "batch_size": 40, "progress": False}
    full = screen_pairs(predictor, all_scores=tmp_path / "full.h5", **kw)
    state = tmp_path / "top.tsv.state.pt"

    def stop_after_3(done, total):
        if done == 3:
            raise ScreenAborted("simulated interruption")

    with pytest.raises(ScreenAborted):
        screen_pairs(predictor, state_path=state, all_scores=tmp_path / "part.h5", on_chunk=stop_after_3, **kw)
    assert state.exists() and torch.load(state, weights_only=True)["chunks_done"] == 3
    partial = screen_pairs(
        predictor, state_path=state, resume=True, max_chunks=4, all_scores=tmp_path / "part.h5", **kw
    )
    assert not partial.complete and partial.num_scored == 7 * 40
    resumed = screen_pairs(predictor, state_path=state, resume=True, all_scores=tmp_path / "part.h5", **kw)
    assert resumed.complete
    np.testing.assert_array_equal(resumed.ranks, full.ranks)
    np.testing.assert_array_equal(resumed.scores, full.scores)
    with h5py.File(tmp_path / "full.h5") as a, h5py.File(tmp_path / "part.h5") as b:
        np.testing.assert_array_equal(a["scores"][()], b["scores"][()])
        np.testing.assert_array_equal(b["combos"][()], np.array(list(itertools.combinations(range(N), 2))))
    with pytest.raises(ValueError, match="different screen"):
        screen_pairs(predictor, state_path=state, resume=True, **{**kw, "top": 5})


# ---------------------------------------------------------------------- explain
def test_explain_writes_reports(predictor, tmp_path):
    from cellformer.queries.explain import explain

    summary = explain(predictor, "alias3", tmp_path / "ex", query=["G3", "G7"], top=10)
    files = {p.name for p in (tmp_path / "ex").iterdir()}
    assert {"head_g1_L0H0.tsv", "head_g1_L0H0.png", "head_g2_L1H1.tsv", "head_g2_L1H1.png"} <= files
    assert {"cross_attention.tsv", "cross_attention.png", "alignment.tsv", "alignment.png", "summary.json"} <= files
    assert summary["cross_attention"]["set"] == ["G3", "G7"]
    rows = (tmp_path / "ex" / "alignment.tsv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 2 * 2  # graphs x layers x heads
    head = (tmp_path / "ex" / "head_g1_L0H0.tsv").read_text().splitlines()
    assert head[0].split("\t") == ["rank", "gene", "alias", "attention", "neighbour", "edge_weight"]
    assert len(head) == 11


# ---------------------------------------------------------------------- CLI
def test_cli_predict(trained, tmp_path, capsys):
    ckpt = str(trained["path"])
    assert cli_main(["predict", "--ckpt", ckpt, "--genes", "G1;alias3", "--genes", "G2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "genes\ttypes\tfitness\tepsilon" and out[1].startswith("G1;G3\t") and len(out) == 3
    table = tmp_path / "q.tsv"
    table.write_text("genes\ttypes\tfitness\nG1;G3\tdeletion;deletion\t0.5\nG2\t\tNA\n")
    assert cli_main(["predict", "--ckpt", ckpt, "--table", str(table)]) == 0
    assert capsys.readouterr().out.splitlines() == out
    fa = tmp_path / "g.fa"
    fa.write_text(f">x\n{CDS}\n")
    code = cli_main(["predict", "--ckpt", ckpt, "--add-gene", f"GFP={fa}", "--genes", "GFP;G1", "--out", "-"])
    assert code == 0


def test_cli_errors(trained, tmp_path, capsys):
    ckpt = str(trained["path"])
    assert cli_main(["predict", "--ckpt", ckpt, "--genes", "G1;G3X"]) == 2
    err = capsys.readouterr().err
    assert "G3X" in err and "close matches" in err and "G3" in err and "Traceback" not in err
    assert cli_main(["predict", "--ckpt", ckpt, "--genes", "G1;g1"]) == 2
    assert "appears more than once" in capsys.readouterr().err
    assert cli_main(["screen", "--ckpt", ckpt, "--by", "tau", "--no-progress"]) == 2
    assert "fitness, epsilon" in capsys.readouterr().err
    assert cli_main(["predict", "--ckpt", str(tmp_path / "missing.ckpt"), "--genes", "G1"]) == 2


def test_cli_screen_and_explain(trained, tmp_path, capsys):
    ckpt = str(trained["path"])
    out = tmp_path / "top.tsv"
    args = ["screen", "--ckpt", ckpt, "--by", "fitness", "--top", "5", "--out", str(out), "--no-progress"]
    assert cli_main(args) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 6 and lines[1].startswith("1\t")
    assert not (tmp_path / "top.tsv.state.pt").exists()
    subset = tmp_path / "subset.txt"
    subset.write_text("G1\nG2 # comment\nG3;G4\n")
    assert cli_main(["screen", "--ckpt", ckpt, "--order", "3", "--genes", str(subset), "--by", "fitness"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1 + 4
    assert cli_main(["explain", "--ckpt", ckpt, "--gene", "G5", "--out-dir", str(tmp_path / "ex")]) == 0
    assert (tmp_path / "ex" / "alignment.png").exists()
