"""Importers: STRING / BioGRID / edge-list graphs and Costanzo 2016 / Kuzmin 2018, 2020 screens."""

from __future__ import annotations

import argparse
import gzip
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from cellformer.data.dataset import PerturbationData, PerturbationType
from cellformer.data.importers import (
    COSTANZO_PHENOTYPES,
    KUZMIN_PHENOTYPES,
    ImportFormatError,
    parse_strain_id,
    read_biogrid_tab3,
    read_costanzo2016,
    read_edge_list,
    read_kuzmin2018,
    read_kuzmin2020,
    read_string_detailed,
    read_tf_targets,
    significance_call,
    trigenic_significance_call,
)
from cellformer.data.importers.cli import register
from cellformer.genome import yeast_genome
from cellformer.graphs.io import load_edge_list

FIX = Path(__file__).parent / "fixtures" / "importers"
DEL, KD = int(PerturbationType.DELETION), int(PerturbationType.KNOCKDOWN)


@pytest.fixture(scope="module")
def genome():
    return yeast_genome()


def _find(data: PerturbationData, genome, orfs: list[str], condition: str | None = None, fitness_record=None):
    """Rows whose gene set is exactly ``orfs`` (optionally with that condition / record kind)."""
    want = sorted(genome.index(o) for o in orfs)
    n_col = data.phenotype_index("fitness_n")
    out = []
    for r in range(len(data)):
        g, _, y = data.record(r)
        if sorted(g.tolist()) != want:
            continue
        if condition is not None and data.condition[r] != condition:
            continue
        if fitness_record is not None and (not math.isnan(y[n_col])) != fitness_record:
            continue
        out.append(r)
    return out


def _value(data: PerturbationData, r: int, name: str) -> float:
    return float(data.phenotypes[r, data.phenotype_index(name)])


# ---------------------------------------------------------------------- helpers
def test_significance_call():
    assert significance_call(-0.12, 0.01) == 1.0
    assert significance_call(0.12, 0.01) == 1.0
    assert significance_call(0.08, 0.01) == 0.0  # strictly greater
    assert significance_call(-0.5, 0.05) == 0.0  # strictly smaller p
    assert math.isnan(significance_call(float("nan"), 0.01))
    np.testing.assert_array_equal(significance_call(np.array([0.1, 0.01]), np.array([0.01, 0.01])), [1.0, 0.0])
    assert significance_call(0.05, 0.01, eps_cut=0.04) == 1.0
    assert trigenic_significance_call(-0.1, 0.01) == 1.0
    assert trigenic_significance_call(0.1, 0.01) == 0.0  # trigenic call is negative only


def test_parse_strain_id():
    s = parse_strain_id("YAL002W_sn1234")
    assert s.orfs == ("YAL002W",) and s.allele_class == "sn"
    assert parse_strain_id("YER011W_damp").allele_class == "damp"
    assert parse_strain_id("YAR002C-A_dma12").orfs == ("YAR002C-A",)
    assert parse_strain_id("YAL015C+YDL227C_tm461").orfs == ("YAL015C", "YDL227C")
    for bad in ["YAL002W", "YAL002W_", "_sn1", "YAL002W_12sn"]:
        with pytest.raises(ValueError):
            parse_strain_id(bad)


# ---------------------------------------------------------------------- Costanzo 2016
def test_costanzo_clean_counts(genome):
    data, rep = read_costanzo2016(FIX / "costanzo2016_clean.txt", genome)
    assert data.phenotype_names == COSTANZO_PHENOTYPES
    assert data.genes == genome.genes and data.genome_hash == genome.hash
    assert rep.rows == rep.imported == 10 and rep.rejected == 0 and rep.unmapped_rows == 0
    assert rep.records_by_size == {1: 14, 2: 10}
    assert len(data) == 24 and np.bincount(data.set_sizes).tolist() == [0, 14, 10]
    assert rep.fitness_records == 14 and rep.fitness_observations == 20 and rep.interaction_rows == 10
    # singles de-duplicated per (ORF, allele class, condition), count kept
    (r,) = _find(data, genome, ["YAL002W"], "DMA30")
    assert _value(data, r, "fitness_n") == 3
    assert _value(data, r, "fitness") == pytest.approx((0.90 + 0.92 + 0.90) / 3)
    assert math.isnan(_value(data, r, "epsilon")) and math.isnan(_value(data, r, "gi_significant"))
    (r,) = _find(data, genome, ["YAL002W"], "DMA26")
    assert _value(data, r, "fitness_n") == 1
    (r,) = _find(data, genome, ["YBL021C"], "DMA26")
    assert _value(data, r, "fitness") == pytest.approx(0.895) and _value(data, r, "fitness_n") == 2
    # the same ORF as query (sn) and array (dma) in one condition: two records (allele classes differ)
    assert len(_find(data, genome, ["YAL015C"], "DMA30")) == 2
    # a double: phenotypes, condition, types
    (r,) = _find(data, genome, ["YBR123C", "YAL001C"], "TSA30")
    g, t, _ = data.record(r)
    assert g.tolist() == [genome.index("YBR123C"), genome.index("YAL001C")]
    assert t.tolist() == [KD, KD]  # tsq query and tsa array are temperature-sensitive knockdowns
    assert _value(data, r, "epsilon") == pytest.approx(-0.30)
    assert _value(data, r, "epsilon_pvalue") == pytest.approx(0.001)
    assert _value(data, r, "fitness") == pytest.approx(0.13)
    assert _value(data, r, "fitness_sd") == pytest.approx(0.02)
    assert math.isnan(_value(data, r, "fitness_n"))
    assert _value(data, r, "gi_significant") == 1.0
    # DAmP is a knockdown, sn/dma deletions
    (r,) = _find(data, genome, ["YAL015C", "YER011W"], "TSA26")
    assert data.record(r)[1].tolist() == [DEL, KD]
    # conditions kept
    assert set(data.condition) == {"DMA26", "DMA30", "TSA26", "TSA30"}
    # the significance call over all doubles
    dbl = np.flatnonzero(data.set_sizes == 2)
    calls = data.phenotypes[dbl, data.phenotype_index("gi_significant")]
    assert calls.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0]
    assert "24 records" in rep.summary()


def test_costanzo_malformed_raises_with_line(genome):
    with pytest.raises(ImportFormatError) as exc:
        read_costanzo2016(FIX / "costanzo2016_malformed.txt", genome)
    assert exc.value.line == 7
    assert "costanzo2016_malformed.txt:7:" in str(exc.value) and "11" in str(exc.value)


def test_costanzo_malformed_skipped_and_reported(genome):
    data, rep = read_costanzo2016(FIX / "costanzo2016_malformed.txt", genome, skip_bad_rows=True)
    assert rep.rows == 10
    assert rep.rejected == 3 and [ln for ln, _ in rep.examples] == [7, 8, 10] and rep.imported == 7
    assert rep.rejected_by_kind == {"malformed": 3}
    assert "not a number" in rep.examples[1][1] and "YAL002Wsn1234" in rep.examples[2][1]
    assert rep.unmapped_rows == 1 and rep.unmapped_examples == [(9, "YXX999W")]
    assert rep.unmapped_genes == {"YXX999W"}
    assert rep.records_by_size == {1: 9, 2: 6}
    # the mapped query of the unmapped row still gives its SMF observation
    (r,) = _find(data, genome, ["YAL002W"], "DMA30")
    assert _value(data, r, "fitness_n") == 4
    text = rep.summary()
    assert "3 rows rejected (malformed: 3)" in text and "line 7" in text and "line 9: YXX999W" in text


def test_costanzo_round_trip_and_gzip(genome, tmp_path):
    gz = tmp_path / "sga.txt.gz"
    with open(FIX / "costanzo2016_clean.txt", "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    data, _ = read_costanzo2016(gz, genome)
    data.save(tmp_path / "c.h5")
    back = PerturbationData.load(tmp_path / "c.h5")
    assert back.phenotype_names == data.phenotype_names and back.condition == data.condition
    np.testing.assert_array_equal(back.offsets, data.offsets)
    np.testing.assert_array_equal(back.gene_index, data.gene_index)
    np.testing.assert_array_equal(back.types, data.types)
    np.testing.assert_array_equal(back.phenotypes, data.phenotypes)
    assert back.attrs["import_format"] == "costanzo2016" and back.genome_hash == genome.hash


def test_costanzo_bad_header(genome, tmp_path):
    p = tmp_path / "x.txt"
    p.write_text("YAL002W_sn1\tfoo\n")
    with pytest.raises(ImportFormatError, match=r"x.txt:1: expected a header"):
        read_costanzo2016(p, genome)


# ---------------------------------------------------------------------- Kuzmin 2018 / 2020
def test_kuzmin2018_clean_counts(genome):
    data, rep = read_kuzmin2018(FIX / "kuzmin2018_clean.txt", genome)
    assert data.phenotype_names == KUZMIN_PHENOTYPES and data.condition is None
    assert rep.rows == 9 and rep.rejected == 0 and rep.unmapped_rows == 0 and not rep.notes
    assert rep.records_by_size == {1: 6, 2: 7, 3: 4}
    assert rep.skipped["hoΔ markers dropped from digenic queries"] == 5
    assert rep.skipped["fitness observations missing (NaN) and not averaged"] == 1
    ho = genome.index("YDL227C")
    assert ho not in data.gene_index.tolist()
    # digenic: hoΔ dropped, epsilon = adjusted score
    (r,) = _find(data, genome, ["YAL015C", "YBL023C"], fitness_record=False)
    g, t, _ = data.record(r)
    assert g.tolist() == [genome.index("YAL015C"), genome.index("YBL023C")] and t.tolist() == [DEL, KD]
    assert _value(data, r, "epsilon") == pytest.approx(-0.12) and _value(data, r, "epsilon_raw") == pytest.approx(-0.12)
    assert math.isnan(_value(data, r, "tau")) and _value(data, r, "gi_significant") == 1.0
    assert _value(data, r, "fitness") == pytest.approx(0.75)
    # trigenic: triple with tau
    (r,) = _find(data, genome, ["YAL015C", "YAL002W", "YBL007C"])
    assert _value(data, r, "tau") == pytest.approx(-0.11) and _value(data, r, "tau_raw") == pytest.approx(-0.15)
    assert math.isnan(_value(data, r, "epsilon")) and _value(data, r, "pvalue") == pytest.approx(0.01)
    assert _value(data, r, "fitness") == pytest.approx(0.70) and _value(data, r, "fitness_sd") == pytest.approx(0.04)
    assert _value(data, r, "gi_significant") == 1.0
    (r,) = _find(data, genome, ["YAL001C", "YBR123C", "YBL024W"])
    assert data.record(r)[1].tolist() == [KD, KD, DEL]  # ts query alleles from the allele names
    # query fitness: single for hoΔ control queries, double for double-mutant queries
    (r,) = _find(data, genome, ["YAL015C"])
    assert _value(data, r, "fitness_n") == 3 and _value(data, r, "fitness") == pytest.approx(0.962)
    (r,) = _find(data, genome, ["YAL002W"])
    assert _value(data, r, "fitness_n") == 1  # the empty query fitness is not averaged
    (r,) = _find(data, genome, ["YAL015C", "YAL002W"], fitness_record=True)
    assert _value(data, r, "fitness_n") == 3 and _value(data, r, "fitness") == pytest.approx((0.85 + 0.86 + 0.85) / 3)
    assert math.isnan(_value(data, r, "epsilon")) and math.isnan(_value(data, r, "tau"))
    (r,) = _find(data, genome, ["YBL007C"])
    assert _value(data, r, "fitness_n") == 3


def test_kuzmin2020_clean_counts(genome, tmp_path):
    data, rep = read_kuzmin2020(FIX / "kuzmin2020_clean.txt", genome)
    assert rep.rows == 5 and not rep.notes
    assert rep.records_by_size == {1: 5, 2: 4, 3: 3}
    (r,) = _find(data, genome, ["YAL015C", "YAL002W"], fitness_record=True)
    assert _value(data, r, "fitness_n") == 2 and _value(data, r, "fitness") == pytest.approx(0.855)
    assert np.nansum(data.phenotypes[:, data.phenotype_index("tau")] < 0) == 2
    data.save(tmp_path / "k.h5")
    back = PerturbationData.load(tmp_path / "k.h5")
    assert back.condition is None
    np.testing.assert_array_equal(back.phenotypes, data.phenotypes)
    np.testing.assert_array_equal(back.gene_index, data.gene_index)


def test_kuzmin_header_mismatch_is_noted(genome):
    # the 2018 file read as 2020: same column count, last two names differ -> read by position, noted
    data, rep = read_kuzmin2020(FIX / "kuzmin2018_clean.txt", genome)
    assert len(rep.notes) == 2 and "Combined mutant fitness" in rep.notes[0]
    assert len(data) == 17


def test_kuzmin2018_malformed(genome):
    with pytest.raises(ImportFormatError) as exc:
        read_kuzmin2018(FIX / "kuzmin2018_malformed.txt", genome)
    assert exc.value.line == 6 and "expected 12" in str(exc.value)
    data, rep = read_kuzmin2018(FIX / "kuzmin2018_malformed.txt", genome, skip_bad_rows=True)
    assert rep.rows == 10
    assert [ln for ln, _ in rep.examples] == [6, 7, 9, 10] and rep.rejected == 4
    assert "quadgenic" in rep.examples[3][1]
    assert rep.unmapped_examples == [(8, "YXX999W")] and rep.unmapped_rows == 1
    assert rep.records_by_size == {1: 5, 2: 5, 3: 1}
    (r,) = _find(data, genome, ["YAL015C"])
    assert _value(data, r, "fitness_n") == 4


# ---------------------------------------------------------------------- graphs
def test_string_detailed(genome, tmp_path):
    res = read_string_detailed(FIX / "string_detailed_clean.txt", genome, ["coexpression", "experimental"])
    assert set(res) == {"coexpression", "experimental"}
    g, rep = res["coexpression"]
    assert g.name == "string_coexpression" and not g.directed
    assert rep.rows == 6 and rep.loaded == 3 and rep.below_threshold == 1 and rep.unmapped_rows == 2
    assert rep.duplicates == 0 and g.num_edges == 3
    assert rep.filtered["mirrored rows (B A after A B) folded into their pair"] == 6
    assert {gene for _, gene in rep.unmapped_examples} == {"YXX999W", "9606.ENSP00000000233"}
    a, b = genome.index("YAL001C"), genome.index("YBR123C")
    assert g.adj[a, b] == pytest.approx(0.5) and g.adj[b, a] == pytest.approx(0.5)
    assert g.adj[genome.index("YBR123C"), genome.index("YBL007C")] == pytest.approx(0.4)  # score == min_score kept
    g2, rep2 = res["experimental"]
    assert g2.num_edges == 2 and rep2.below_threshold == 3 and rep2.unmapped_rows == 1
    assert "mirrored" in rep2.summary()
    # gzip + a different threshold
    gz = tmp_path / "s.txt.gz"
    gz.write_bytes(gzip.compress((FIX / "string_detailed_clean.txt").read_bytes()))
    g3, _ = read_string_detailed(gz, genome, "string_combined_score", min_score=900)["combined_score"]
    assert g3.num_edges == 1


def test_string_errors(genome):
    with pytest.raises(ValueError, match="valid channels: neighborhood, fusion, cooccurence"):
        read_string_detailed(FIX / "string_detailed_clean.txt", genome, ["coexpresion"])
    with pytest.raises(ImportFormatError, match=r"string_detailed_malformed.txt:4: expected 10"):
        read_string_detailed(FIX / "string_detailed_malformed.txt", genome, ["coexpression"])


def test_biogrid_tab3(genome):
    g, rep = read_biogrid_tab3(FIX / "biogrid_tab3.txt", genome)
    assert g.name == "biogrid_physical" and g.num_edges == 2
    assert rep.rows == 6 and rep.loaded == 3 and rep.duplicates == 1 and rep.self_loops == 1
    assert rep.unmapped_rows == 2 and [ln for ln, _ in rep.unmapped_examples] == [7, 8]
    assert rep.unmapped_examples[0][1].startswith("-") and "FOO1" in rep.unmapped_examples[0][1]
    assert rep.filtered["rows with an interactor outside organism 559292"] == 1
    assert rep.filtered["rows of system type 'genetic' (not physical)"] == 2
    g2, rep2 = read_biogrid_tab3(FIX / "biogrid_tab3.txt", genome, system_type="genetic", name="gi")
    assert g2.name == "gi" and g2.num_edges == 2 and rep2.rows == 2
    assert rep2.filtered["rows of system type 'physical' (not genetic)"] == 6
    with pytest.raises(ValueError, match="physical, genetic"):
        read_biogrid_tab3(FIX / "biogrid_tab3.txt", genome, system_type="chemical")


def test_edge_list_and_tf_targets(genome):
    g, rep = read_edge_list(FIX / "edges.tsv", genome)
    assert not g.directed and g.num_edges == 2 and rep.duplicates == 1 and rep.unmapped_rows == 1
    t, trep = read_tf_targets(FIX / "tf_targets.tsv", genome, name="tf")
    assert t.directed and t.name == "tf" and t.num_edges == 3 and trep.unmapped_rows == 1
    a, b = genome.index("YAL001C"), genome.index("YAL002W")
    assert t.adj[a, b] == pytest.approx(0.5) and t.adj[b, a] == 0


# ---------------------------------------------------------------------- CLI
def _cli(argv: list[str]) -> int:
    from cellformer.data.cli import main

    return main(argv)


def test_cli_import_graph(genome, tmp_path, capsys):
    out = tmp_path / "graphs"
    argv = ["import-graph", "--format", "string-detailed", str(FIX / "string_detailed_clean.txt")]
    assert _cli(argv + ["--channels", "coexpression,experimental", "--out-dir", str(out)]) == 0
    g, _ = load_edge_list(out / "string_coexpression.tsv.gz", genome)
    assert g.num_edges == 3
    assert (out / "string_experimental.tsv.gz").exists()
    assert "mirrored" in capsys.readouterr().out
    argv = ["import-graph", "--format", "biogrid-tab3", str(FIX / "biogrid_tab3.txt"), "--out-dir", str(out)]
    assert _cli(argv + ["--system-type", "genetic"]) == 0
    assert load_edge_list(out / "biogrid_genetic.tsv.gz", genome)[0].num_edges == 2
    argv = ["import-graph", "--format", "edge-list", str(FIX / "tf_targets.tsv"), "--directed", "--name", "tf"]
    assert _cli(argv + ["--out-dir", str(out)]) == 0
    tf, _ = load_edge_list(out / "tf.tsv.gz", genome)
    assert tf.directed and tf.num_edges == 3
    assert _cli(["import-graph", "--format", "string-detailed", str(FIX / "string_detailed_clean.txt"),
                 "--channels", "bogus", "--out-dir", str(out)]) == 2  # fmt: skip


def test_cli_import_screen(tmp_path, capsys):
    out = tmp_path / "k.h5"
    argv = ["import-screen", "--format", "kuzmin2018", str(FIX / "kuzmin2018_malformed.txt"), "--out", str(out)]
    assert _cli(argv) == 2
    assert "kuzmin2018_malformed.txt:6" in capsys.readouterr().err
    assert _cli(argv + ["--skip-bad-rows", "--seed", "3"]) == 0
    data = PerturbationData.load(out)
    assert len(data) == 11 and data.split is not None and set(np.unique(data.split)) <= {0, 1, 2}
    assert "4 rows rejected (malformed: 4)" in capsys.readouterr().out
    out2 = tmp_path / "c.h5"
    argv = ["import-screen", "--format", "costanzo2016", str(FIX / "costanzo2016_clean.txt"), "--out", str(out2)]
    assert _cli(argv + ["--split", "none"]) == 0
    assert PerturbationData.load(out2).split is None


def test_cli_help_texts():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    register(sub)
    for cmd in ["import-graph", "import-screen", "fetch"]:
        text = sub.choices[cmd].format_help()
        assert "--" in text and len(text) > 300
