"""Genotype datasets: the HDF5 type, the importers (tables, npy splits), the simulator and the CLI."""

from __future__ import annotations

import gzip

import h5py
import numpy as np
import pytest

from cellformer.data.cli import main as data_main
from cellformer.data.dataset import SPLITS
from cellformer.errors import UserError
from cellformer.genotype import GenotypeData, Loci, random_genotype_split
from cellformer.genotype.importers import (
    NPY_PHENOTYPE_NAMES,
    parse_chromosome,
    parse_marker_name,
    read_genotype_table,
    read_npy_splits,
)
from cellformer.genotype.simulate import genetic_values, n_qtl_for_scaling, n_samples_for_scaling, simulate_genotypes


@pytest.fixture(scope="module")
def linked_pop() -> GenotypeData:
    return simulate_genotypes(3000, 400, n_traits=2, n_qtl=10, additive_share=[1.0, 0.5], h2=0.8, seed=3)


def _write(path, text: str):
    if str(path).endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------- table importer
GENO_01 = """\
# segregant genotypes, 0/1 coded
sample\tm1\tm2\tm3
s1\t0\t1\t1
s2\t1\tNA\t0
s3\t1\t1
s4\t0\t2\t1

s5\t1\t0\t-
s2\t0\t0\t0
s6\t0\t0\t1
"""
PHENO = """\
sample\tgrowth\tlactate
s1\t0.5\tNA
s2\t-1.25\t2
s5\tabc\t1
s6\t0.75\t
s9\t1.0\t1.0
"""
MARKERS = """\
marker\tchrom\tpos\tgene
m1\tchrI\t100\tYAL001C
m2\tchr02\t2500\t
m3\tXVI\t7000\tNA
"""


def test_table_01_with_markers_rejects_and_unmatched_samples(tmp_path):
    geno = _write(tmp_path / "geno.tsv", GENO_01)
    pheno = _write(tmp_path / "pheno.tsv", PHENO)
    markers = _write(tmp_path / "markers.tsv", MARKERS)
    rejects = tmp_path / "rejects.tsv"
    data, report = read_genotype_table(geno, pheno, marker_table=markers, rejects=rejects)

    assert data.sample_ids == ["s1", "s2", "s5", "s6"]
    # 0/1 coding: 1 -> +1, 0 -> -1, NA and '-' missing (0)
    np.testing.assert_array_equal(data.genotypes, [[-1, 1, 1], [1, 0, -1], [1, -1, 0], [-1, -1, 1]])
    assert data.genotypes.dtype == np.int8
    assert data.phenotype_names == ["growth", "lactate"]
    ph = data.phenotypes
    assert ph[0, 0] == 0.5 and np.isnan(ph[0, 1])
    assert ph[1].tolist() == [-1.25, 2.0]
    assert np.isnan(ph[2]).all()  # s5's phenotype row was rejected: kept with NaN, reported
    assert ph[3, 0] == 0.75 and np.isnan(ph[3, 1])
    assert data.loci.ids == ["m1", "m2", "m3"]
    assert data.loci.chrom.tolist() == [1, 2, 16] and data.loci.pos.tolist() == [100, 2500, 7000]
    assert data.loci.gene == ["YAL001C", "", ""]

    # rejected rows: line 5 (field count), 6 (unknown allele '2'), 9 (duplicate s2), pheno line 4 (abc)
    assert report.rejected == 4
    assert dict(report.rejected_by_kind) == {"field_count": 1, "bad_allele": 1, "duplicate_sample": 1, "bad_value": 1}
    assert report.rows == 7 + 5 and report.imported == 4 + 4
    lines = rejects.read_text().splitlines()
    assert lines[0] == "file\tline\tkind\treason\trow"
    rows = [ln.split("\t") for ln in lines[1:]]
    assert [
        (r[0].endswith(name), r[1], r[2]) for r, name in zip(rows, ["geno.tsv"] * 3 + ["pheno.tsv"], strict=True)
    ] == [
        (True, "5", "field_count"),
        (True, "6", "bad_allele"),
        (True, "9", "duplicate_sample"),
        (True, "4", "bad_value"),
    ]
    assert "'2'" in rows[1][3] and "'m2'" in rows[1][3] and "line 4" in rows[2][3]
    assert rows[0][4:] == ["s3", "1", "1"]  # the original row follows
    assert report.rejects_path == str(rejects)
    # unmatched samples are reported, not silently dropped
    assert report.genotyped_without_phenotypes == 1  # s5 (its phenotype row was rejected)
    assert report.phenotyped_without_genotypes == 1  # s9
    text = report.summary()
    assert "s9" in text and "s5" in text and "4 rows rejected" in text and "1 read as +1" in text


def test_table_pm1_csv_gz_positions_from_names(tmp_path):
    geno = _write(
        tmp_path / "geno.csv.gz",
        "id,27915_chr01_27915_T_C,chrXVI:120_A_G,snp7\nx1,1,-1,0\nx2,-1,+1,1\nx3,-1,-1,-1\n",
    )
    with pytest.raises(UserError, match=r"geno.csv.gz:2: marker 'snp7': call '0'.*both 0 \(1\) and -1 \(5\)"):
        read_genotype_table(geno, None)  # 0 and -1 together: neither coding, so it is said, not guessed
    data, report = read_genotype_table(geno, None, allele_coding="pm1")  # a 0 in a ±1 table is missing
    np.testing.assert_array_equal(data.genotypes, [[1, -1, 0], [-1, 1, 1], [-1, -1, -1]])
    assert data.loci.chrom.tolist() == [1, 16, 0] and data.loci.pos.tolist() == [27915, 120, -1]
    assert data.phenotypes.shape == (3, 0) and data.phenotype_names == []
    assert report.rejected == 0 and any("no known position" in n for n in report.notes)


def test_table_letters_reference_allele(tmp_path):
    text = "strain\tm1\tm2\nA01\tR\tB\nA02\tB\tb\nA03\tN\tR\nA04\tB\tX\n"
    geno = _write(tmp_path / "geno.tsv", text)
    data, report = read_genotype_table(geno, None, rejects=tmp_path / "r.tsv")
    # default: the first letter seen (R) is the reference, +1; X is rejected (line 5)
    np.testing.assert_array_equal(data.genotypes, [[1, -1], [-1, -1], [0, 1]])
    assert report.rejected_by_kind["bad_allele"] == 1 and report.examples[0][0] == 5
    data_b, _ = read_genotype_table(geno, None, reference_allele="B")
    np.testing.assert_array_equal(data_b.genotypes, -data.genotypes)
    with pytest.raises(UserError, match="does not occur"):
        read_genotype_table(geno, None, reference_allele="Q")


def test_table_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_genotype_table(tmp_path / "nope.tsv", None)
    dup = _write(tmp_path / "dup.tsv", "s\tm1\tm1\na\t0\t1\n")
    with pytest.raises(UserError, match=r"dup.tsv:1: marker 'm1' appears twice"):
        read_genotype_table(dup, None)
    allbad = _write(tmp_path / "bad.tsv", "s\tm1\na\t0\t1\n")
    with pytest.raises(UserError, match="no genotype rows"):
        read_genotype_table(allbad, None)
    letters = _write(tmp_path / "letters.tsv", "s\tm1\na\tB\nb\tR\n")
    with pytest.raises(UserError, match=r"no 0/1 allele calls.*found B, R"):
        read_genotype_table(letters, None, allele_coding="01")
    with pytest.raises(UserError, match="no letter allele calls"):
        read_genotype_table(_write(tmp_path / "num.tsv", "s\tm1\na\t0\nb\t1\n"), None, allele_coding="letters")
    binary = tmp_path / "binary.tsv"
    binary.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(UserError, match=r"genotype table .*binary.tsv.*not UTF-8"):
        read_genotype_table(binary, None)
    with pytest.raises(UserError, match=r"phenotype table .*binary.tsv.*not UTF-8"):
        read_genotype_table(letters, binary)
    big = tmp_path / "big.tsv.gz"
    with gzip.open(big, "wt") as fh:
        fh.write("s\tm1\tm2\n" + "".join(f"s{i}\t{i % 2}\t{(i // 2) % 2}\n" for i in range(5000)))
    truncated = tmp_path / "truncated.tsv.gz"
    truncated.write_bytes(big.read_bytes()[:500])
    with pytest.raises(UserError, match="truncated or corrupt gzip"):
        read_genotype_table(truncated, None)


def test_name_parsers():
    assert [parse_chromosome(c) for c in ("chr01", "chrIV", "XVI", "12", "chrM", "chromosome3")] == [1, 4, 16, 12, 0, 3]
    assert parse_marker_name("27915_chr01_27915_T_C") == (1, 27915)
    assert parse_marker_name("chrXII_1054") == (12, 1054)
    assert parse_marker_name("snp_42") == (0, -1)


# ---------------------------------------------------------------------- npy splits
def _npy_dir(tmp_path, sizes=(8, 3, 2), L=5, P=18, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, n in zip(("train", "val", "test"), sizes, strict=True):
        g = rng.choice([-1.0, 1.0], size=(n, L))
        p = rng.standard_normal((n, P))
        np.save(tmp_path / f"geno_{name}.npy", g)
        np.save(tmp_path / f"pheno_{name}.npy", p)
        arrays[name] = (g, p)
    return arrays


def test_npy_splits_layout(tmp_path):
    arrays = _npy_dir(tmp_path)
    data = read_npy_splits(tmp_path)
    assert len(data) == 13 and data.num_loci == 5
    assert data.phenotype_names == list(NPY_PHENOTYPE_NAMES) and data.phenotype_names[-1] == "4NQO"
    for name in ("train", "val", "test"):
        idx = data.split_indices(name)
        np.testing.assert_array_equal(data.genotypes[idx], arrays[name][0])
        np.testing.assert_allclose(data.phenotypes[idx], arrays[name][1], rtol=1e-6)
    assert data.sample_ids[0] == "train_000000" and data.loci.ids[0] == "locus_0000"
    assert (data.loci.chrom == 0).all() and (data.loci.pos == -1).all()


def test_npy_splits_errors(tmp_path):
    _npy_dir(tmp_path, P=3)
    assert read_npy_splits(tmp_path).phenotype_names == ["pheno_0", "pheno_1", "pheno_2"]
    with pytest.raises(UserError, match="3 phenotype columns"):
        read_npy_splits(tmp_path, phenotype_names=["a"])
    np.save(tmp_path / "geno_val.npy", np.ones((2, 5)))  # 3 phenotype rows
    with pytest.raises(UserError, match="does not match"):
        read_npy_splits(tmp_path)
    np.save(tmp_path / "geno_val.npy", np.ones((3, 4)))
    with pytest.raises(UserError, match="4 loci"):
        read_npy_splits(tmp_path)
    g = np.ones((3, 5))
    g[1, 2] = 0
    np.save(tmp_path / "geno_val.npy", g)
    with pytest.raises(UserError, match=r"-1 or \+1.*row 1, column 2"):
        read_npy_splits(tmp_path)
    (tmp_path / "pheno_test.npy").unlink()
    with pytest.raises(UserError, match="missing pheno_test.npy"):
        read_npy_splits(tmp_path)
    with pytest.raises(UserError, match="not a directory"):
        read_npy_splits(tmp_path / "nothing")


# ---------------------------------------------------------------------- dataset type
def test_round_trip_and_foreign_files(tmp_path, linked_pop):
    path = tmp_path / "pop.h5"
    data = linked_pop.subset(np.arange(200))
    data.fold = (np.arange(200) % 5).astype(np.int16)
    data.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["pop.h5"]  # no temporary file left
    back = GenotypeData.load(path)
    np.testing.assert_array_equal(back.genotypes, data.genotypes)
    np.testing.assert_array_equal(back.phenotypes, data.phenotypes)
    np.testing.assert_array_equal(back.split, data.split)
    np.testing.assert_array_equal(back.fold, data.fold)
    assert back.sample_ids == data.sample_ids and back.phenotype_names == data.phenotype_names
    assert back.loci.ids == data.loci.ids and back.loci.gene == data.loci.gene
    np.testing.assert_array_equal(back.loci.chrom, data.loci.chrom)
    np.testing.assert_array_equal(back.loci.pos, data.loci.pos)
    np.testing.assert_array_equal(back.truth["pairs"], data.truth["pairs"])
    np.testing.assert_allclose(back.truth["V_A"], data.truth["V_A"])
    assert back.truth["sample_genetic_value"].shape == (200, 2)
    assert back.truth["requested"]["n_qtl"] == 10 and back.truth["requested"]["linked"] is True
    assert back.attrs["source"] == "simulated"
    with h5py.File(path) as f:
        assert f.attrs["format"] == "cellformer-genotypes" and int(f.attrs["version"]) == 1

    text = tmp_path / "x.h5"
    text.write_text("not hdf5")
    with pytest.raises(UserError, match="not an HDF5 file"):
        GenotypeData.load(text)
    with pytest.raises(UserError, match="does not exist"):
        GenotypeData.load(tmp_path / "missing.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_group("records")
    with pytest.raises(UserError, match="not a cellformer genotype dataset.*perturbation"):
        GenotypeData.load(tmp_path / "other.h5")
    cut = tmp_path / "cut.h5"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(UserError, match="truncated or damaged genotype dataset"):
        GenotypeData.load(cut)


def test_validation_and_splits():
    loci = Loci.unknown(3)

    def make(**kw):
        args = {
            "genotypes": np.array([[1, -1, 0], [1, 1, 1]]),
            "phenotypes": np.zeros((2, 1)),
            "phenotype_names": ["p"],
            "loci": loci,
            "sample_ids": ["a", "b"],
        }
        return GenotypeData(**{**args, **kw})

    assert make().genotypes.dtype == np.int8
    with pytest.raises(UserError, match="found \\[2\\]"):
        make(genotypes=np.array([[1, 2, 0], [1, 1, 1]], dtype=np.int8))
    with pytest.raises(UserError, match="sample id 'a' appears more than once"):
        make(sample_ids=["a", "a"])
    with pytest.raises(UserError, match="infinite"):
        make(phenotypes=np.array([[np.inf], [0.0]]))
    with pytest.raises(UserError, match="marker id 'x' appears more than once"):
        Loci(ids=["x", "x"], chrom=[1, 1], pos=[1, 2], gene=["", ""])
    with pytest.raises(UserError, match="3 loci"):
        make(loci=Loci.unknown(2))
    with pytest.raises(UserError, match="stores no split"):
        make().split_indices("train")
    s = random_genotype_split(1000, val=0.1, test=0.2, seed=1)
    assert s.dtype == np.int8 and np.bincount(s).tolist() == [700, 100, 200]
    np.testing.assert_array_equal(s, random_genotype_split(1000, val=0.1, test=0.2, seed=1))
    d = make(split=np.array([SPLITS["train"], SPLITS["test"]]))
    assert d.split_indices("test").tolist() == [1] and d.subset([1]).sample_ids == ["b"]
    with pytest.raises(UserError, match="unknown split"):
        d.split_indices("dev")


# ---------------------------------------------------------------------- simulator
def _r2_linear(X: np.ndarray, y: np.ndarray) -> float:
    X1 = np.column_stack([np.ones(len(X)), X])
    coef, *_ = np.linalg.lstsq(X1, y, rcond=None)
    return 1 - np.var(y - X1 @ coef) / np.var(y)


def test_simulator_is_deterministic():
    a = simulate_genotypes(300, 60, n_traits=2, n_qtl=6, additive_share=0.5, pleiotropy=0.5, n_dilution=5, seed=7)
    b = simulate_genotypes(300, 60, n_traits=2, n_qtl=6, additive_share=0.5, pleiotropy=0.5, n_dilution=5, seed=7)
    c = simulate_genotypes(300, 60, n_traits=2, n_qtl=6, additive_share=0.5, pleiotropy=0.5, n_dilution=5, seed=8)
    np.testing.assert_array_equal(a.genotypes, b.genotypes)
    np.testing.assert_array_equal(a.phenotypes, b.phenotypes)
    np.testing.assert_array_equal(a.split, b.split)
    for k in ("causal", "additive", "pairs", "epistatic"):
        np.testing.assert_array_equal(a.truth[k], b.truth[k])
    assert a.loci.ids == b.loci.ids
    assert not np.array_equal(a.genotypes, c.genotypes)
    assert a.num_loci == 65 and a.truth["dilution"].sum() == 5
    assert not a.truth["dilution"][a.truth["causal"]].any()


@pytest.mark.parametrize("share", [1.0, 0.5])
def test_variance_components_hit_the_request(share):
    n, q = 5000, 20
    d = simulate_genotypes(n, 200, n_qtl=q, additive_share=share, h2=0.7, seed=11, linked=True)
    t = d.truth
    g = t["sample_genetic_value"][:, 0].astype(np.float64)
    y = d.phenotypes[:, 0].astype(np.float64)
    # the truth reproduces the stored genetic values
    np.testing.assert_allclose(genetic_values(d.genotypes, t)[:, 0], g, atol=1e-5)
    # V_A/V_G measured independently: the share of V_G a linear model on the causal loci explains
    linear_share = _r2_linear(d.genotypes[:, t["causal"]].astype(np.float64), g)
    assert abs(linear_share - share) < 0.05
    assert abs(t["additive_share"][0] - share) < 0.05
    # H² = V_G / V_P on the population
    assert abs(np.var(g) / np.var(y) - 0.7) < 0.03 and abs(t["h2"][0] - 0.7) < 0.03
    assert abs(y.mean()) < 1e-5 and abs(y.std() - 1) < 1e-4
    assert len(t["pairs"]) == q // 2 and set(t["pairs"].ravel()) <= set(t["causal"].tolist())


def test_linear_model_recovers_additive_effects(linked_pop):
    t = linked_pop.truth
    train = linked_pop.split_indices("train")
    X = linked_pop.genotypes[train][:, t["causal"]].astype(np.float64)
    y = linked_pop.phenotypes[train, 0].astype(np.float64)
    X1 = np.column_stack([np.ones(len(X)), X])
    coef = np.linalg.solve(X1.T @ X1 + 1.0 * np.eye(X1.shape[1]), X1.T @ y)[1:]  # ridge, λ = 1
    assert np.corrcoef(coef, t["additive"][:, 0])[0, 1] > 0.9
    # held-out R² of that model is close to H² for the purely additive trait, well below for the epistatic one
    test = linked_pop.split_indices("test")
    Xt = linked_pop.genotypes[test][:, t["causal"]].astype(np.float64)
    r2 = _r2_linear(Xt, linked_pop.phenotypes[test, 0])
    assert r2 > 0.7
    assert t["additive_share"][1] == pytest.approx(0.5, abs=0.05)


def test_pleiotropy_correlates_effects():
    d = simulate_genotypes(500, 300, n_traits=3, n_qtl=200, pleiotropy=0.9, h2=1.0, seed=2, linked=False)
    r = np.corrcoef(d.truth["additive"].T)
    assert r[0, 1] > 0.8 and r[1, 2] > 0.8
    assert np.corrcoef(d.phenotypes.T)[0, 1] > 0.7


def test_linkage(linked_pop):
    g = linked_pop.genotypes.astype(np.float64)
    chrom, pos = linked_pop.loci.chrom, linked_pop.loci.pos
    assert set(np.unique(chrom).tolist()) == set(range(1, 17))
    assert (np.diff(pos)[np.diff(chrom) == 0] > 0).all()  # sorted along each chromosome
    r = np.corrcoef(g.T)
    close = [(i, i + 1) for i in range(len(pos) - 1) if chrom[i] == chrom[i + 1] and pos[i + 1] - pos[i] < 5000]
    assert len(close) >= 5
    assert min(abs(r[i, j]) for i, j in close) > 0.8
    between = np.abs(r[np.ix_(chrom == 1, chrom == 4)])
    assert between.mean() < 0.03 and between.max() < 0.1
    assert abs(g.mean()) < 0.05

    u = simulate_genotypes(3000, 100, n_qtl=4, linked=False, seed=3)
    ru = np.abs(np.corrcoef(u.genotypes.astype(np.float64).T)[np.triu_indices(100, k=1)])
    assert ru.max() < 0.1 and (u.loci.chrom == 0).all() and u.loci.ids[0] == "locus_0000"


def test_simulator_arguments_and_scaling():
    assert n_samples_for_scaling(100, 1.0) == 4950 and n_samples_for_scaling(20, 0.1) == 1900
    assert n_qtl_for_scaling(4950, 1.0) == 100
    with pytest.raises(UserError, match="n_qtl"):
        simulate_genotypes(100, 10, n_qtl=11)
    with pytest.raises(UserError, match="additive_share"):
        simulate_genotypes(100, 10, n_qtl=4, additive_share=1.5)
    with pytest.raises(UserError, match="one per trait"):
        simulate_genotypes(100, 10, n_traits=2, n_qtl=4, additive_share=[1, 0.5, 0.3])
    with pytest.raises(UserError, match="at least 2 QTL"):
        simulate_genotypes(100, 10, n_qtl=1, additive_share=0.5)
    d = simulate_genotypes(400, 50, n_qtl=10, additive_share=0.3, epistatic_pairs=45, h2=1.0, seed=1)
    assert len(d.truth["pairs"]) == 45 and d.truth["V_E"][0] == pytest.approx(0, abs=1e-9)


# ---------------------------------------------------------------------- public sources
def test_manifest_genotype_entries():
    import importlib

    from cellformer.data.importers.fetch import load_manifest

    m = load_manifest()
    names = {"rijal2025-100k-segregants-npy", "nguyenba2022-bbq-segregants", "bloom2013-segregants"}
    assert names <= set(m)
    for name in names:
        e = m[name]
        assert e.url.startswith("https://") and e.licence and e.citation and e.notes
        assert e.sha256 is None and e.size is None  # never pinned without a verified download
        module, func = e.importer.rsplit(".", 1)
        assert callable(getattr(importlib.import_module(module), func))
    assert m["rijal2025-100k-segregants-npy"].format == "npy-splits"
    assert "nature11867" in m["bloom2013-segregants"].citation


# ---------------------------------------------------------------------- CLI
def test_cli_simulate_genotypes(tmp_path, capsys):
    out = tmp_path / "sim.h5"
    argv = ["simulate-genotypes", "--out", str(out), "--samples", "300", "--loci", "80", "--traits", "2"]
    argv += ["--qtl", "6", "--additive-share", "1", "0.3", "--h2", "0.9", "--dilution", "4", "--seed", "5"]
    assert data_main(argv) == 0
    text = capsys.readouterr().out
    assert "300 samples × 84 loci" in text and "V_A/V_G" in text
    data = GenotypeData.load(out)
    assert data.truth["additive_share"][1] == pytest.approx(0.3, abs=0.08)
    assert data_main(argv) == 2  # exists, no --force
    assert "already exists" in capsys.readouterr().err
    assert data_main([*argv, "--force", "--unlinked"]) == 0
    assert (GenotypeData.load(out).loci.chrom == 0).all()
    assert data_main(["simulate-genotypes", "--out", str(tmp_path / "b.h5"), "--qtl", "5000"]) == 2
    assert not (tmp_path / "b.h5").exists()


def test_cli_import_genotypes(tmp_path, capsys):
    geno = _write(tmp_path / "geno.tsv", GENO_01)
    pheno = _write(tmp_path / "pheno.tsv", PHENO)
    out = tmp_path / "g.h5"
    assert data_main(["import-genotypes", str(geno), "--phenotypes", str(pheno), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "4 rows rejected" in text and "4 samples × 3 loci" in text
    assert (tmp_path / "g.rejects.tsv").exists()
    data = GenotypeData.load(out)
    assert data.sample_ids == ["s1", "s2", "s5", "s6"] and data.split is not None

    npy = tmp_path / "npy"
    npy.mkdir()
    _npy_dir(npy)
    out2 = tmp_path / "n.h5"
    assert data_main(["import-genotypes", str(npy), "--out", str(out2)]) == 0
    assert GenotypeData.load(out2).split_indices("val").size == 3
    # bad input: exit 2 and no output file
    bad = _write(tmp_path / "bad.tsv", "s\tm1\na\t0\t1\n")
    assert data_main(["import-genotypes", str(bad), "--out", str(tmp_path / "bad.h5")]) == 2
    assert "no genotype rows" in capsys.readouterr().err and not (tmp_path / "bad.h5").exists()
    assert data_main(["import-genotypes", str(tmp_path / "missing.tsv"), "--out", str(tmp_path / "m.h5")]) == 2
    assert data_main(["import-genotypes", str(npy), "--out", str(out2)]) == 2  # exists


@pytest.mark.parametrize("problem", ["missing", "binary", "directory", "wrong_shape_npy"])
def test_cli_import_genotypes_bad_input_is_one_line(tmp_path, capsys, problem):
    """A bad input file gives exit status 2 and one ``error:`` line naming the file, no traceback."""
    src = tmp_path / "geno.tsv"
    if problem == "binary":
        src.write_bytes(bytes(range(256)) * 8)
    elif problem == "directory":
        src.mkdir()  # read as an npy-splits directory without geno_train.npy
    elif problem == "wrong_shape_npy":
        src = tmp_path / "npy"
        src.mkdir()
        np.save(src / "geno_train.npy", np.ones(4, dtype=np.int8))
        np.save(src / "pheno_train.npy", np.zeros((4, 1), dtype=np.float32))
    out = tmp_path / "g.h5"
    assert data_main(["import-genotypes", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0] and src.name in err[0], err
    assert not out.exists()
