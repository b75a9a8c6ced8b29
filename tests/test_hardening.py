"""Issue #18 through the real ``cellformer`` entry point: no code from a checkpoint URL, no input overwritten
by an output, genotype predictions independent of file order, and one clear line for every user error.

Fixtures follow the issue: a toy screen (a 30-gene genome, a random 60-edge graph, a 120-record screen
imported with ``--genome``, a 2-step fit) and genotype tables (300 segregants × 40 markers coded B/R whose
first call is R, a phenotype table, a ridge fit, query tables in two row orders).
"""

from __future__ import annotations

import gzip
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from test_hostile_inputs import user_error

from cellformer.cli import main
from cellformer.data.dataset import PerturbationData

FIXTURES = Path(__file__).parent / "fixtures"
COSTANZO = FIXTURES / "importers" / "costanzo2016_clean.txt"
N_GENES, N_MARKERS, N_SEGREGANTS = 30, 40, 300


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------- the toy screen
@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict:
    """Genome, graph and screen files, the imported dataset, and ``toy.ckpt`` (2 steps) of the issue."""
    d = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(0)
    genes = write(d / "genes.tsv", "systematic_name\tstandard_name\n" + "".join(f"Y{i:03d}\tG{i}\n" for i in range(30)))
    pairs = [rng.choice(N_GENES, 2, replace=False) for _ in range(60)]
    edges = write(d / "edges.tsv", "gene_a\tgene_b\n" + "".join(f"G{a}\tG{b}\n" for a, b in pairs))
    rows = []
    for i in range(120):
        sets = rng.choice(N_GENES, int(rng.integers(1, 3)), replace=False)
        split = ("train", "train", "train", "val", "test")[i % 5]
        rows.append(f"{';'.join(f'G{g}' for g in sets)}\t{split}\t{rng.normal():.3f}\t{rng.normal():.3f}\n")
    screen = write(d / "screen.tsv", "genes\tsplit\tfitness\tepsilon\n" + "".join(rows))
    dataset = d / "toy.h5"
    assert main(["data", "import", str(screen), "--genome", str(genes), "--out", str(dataset)]) == 0
    data_args = ["--data.dataset", str(dataset), "--data.genome", str(genes), "--data.graphs", f"[edges={edges}]"]
    model_args = ["--model.model_args", '{"d_model": 16, "n_layers": 2, "n_heads": 2, "structural_dim": 4}']
    quiet = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.max_steps", "2"]
    fit_args = [*data_args, *model_args, *quiet]
    checkpoint = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"dirpath": str(d), "filename": "toy"},
    }
    ckpt_cb = json.dumps([checkpoint])
    assert main(["fit", *fit_args, "--trainer.callbacks", ckpt_cb, "--test_after_fit", "false"]) == 0
    assert (d / "toy.ckpt").exists()
    return {
        "dir": d,
        "genes": genes,
        "edges": edges,
        "screen": screen,
        "dataset": dataset,
        "ckpt": d / "toy.ckpt",
        "fit_args": fit_args,
    }


class _Evil:
    """Unpickling this creates ``path``: the stand-in for code a checkpoint would run."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


# ---------------------------------------------------------------------- 1. checkpoint URLs
def test_checkpoint_url_is_refused_and_runs_no_code(toy, tmp_path, capsys, monkeypatch):
    pwned = tmp_path / "PWNED"
    www = tmp_path / "www"
    www.mkdir()
    torch.save({"state_dict": _Evil(str(pwned)), "cellformer": {}}, www / "evil.ckpt")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # where a download would land
    requests: list = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(www), **kwargs)

        def log_message(self, *args):
            requests.append(args)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.timeout = 5
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/evil.ckpt"
        for cmd in ("test", "fit"):
            user_error(capsys, [cmd, *toy["fit_args"], "--ckpt_path", url], "evil.ckpt", "URL")
        cfg = write(tmp_path / "c.yaml", f"ckpt_path: {url}\n")  # the same from a config file
        user_error(capsys, ["test", *toy["fit_args"], "--config", str(cfg)], "URL")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
    assert not pwned.exists()
    assert requests == []  # nothing was even downloaded


def test_weights_only_false_is_refused(toy, capsys):
    user_error(
        capsys,
        ["test", *toy["fit_args"], "--ckpt_path", str(toy["ckpt"]), "--weights_only", "false"],
        "--weights_only false",
    )


@pytest.mark.parametrize("kind", ["empty", "truncated", "garbage", "missing", "not-a-checkpoint"])
@pytest.mark.parametrize("cmd", ["test", "fit"])
def test_corrupt_ckpt_path_is_one_line(toy, tmp_path, capsys, kind, cmd):
    bad = tmp_path / "bad.ckpt"
    if kind == "empty":
        bad.write_bytes(b"")
    elif kind == "truncated":
        whole = toy["ckpt"].read_bytes()
        bad.write_bytes(whole[: len(whole) // 2])
    elif kind == "garbage":
        bad.write_bytes(b"\x00\x01 not a checkpoint" * 50)
    elif kind == "not-a-checkpoint":
        torch.save({"weights": torch.zeros(3)}, bad)
    line = user_error(capsys, [cmd, *toy["fit_args"], "--ckpt_path", str(bad)], "bad.ckpt")
    assert "weights_only" not in line


# ---------------------------------------------------------------------- 2. data import --rejects
def test_import_rejects_is_never_the_input(tmp_path, capsys):
    t = write(tmp_path / "t.tsv", "genes\tfitness\nTFC3\t0.5\nNOPE\t0.1\n")
    before = t.read_text()
    user_error(capsys, ["data", "import", str(t), "--skip-bad-rows", "--rejects", str(t)], "input file itself")
    assert t.read_text() == before
    # a table named x.rejects.tsv is the default rejects file of its default output x.h5
    x = write(tmp_path / "x.rejects.tsv", before)
    user_error(capsys, ["data", "import", str(x), "--skip-bad-rows"], "--rejects", "input file itself")
    assert x.read_text() == before and not (tmp_path / "x.h5").exists()
    # and two outputs are never the same file
    user_error(
        capsys,
        ["data", "import", str(t), "--out", str(tmp_path / "o.h5"), "--rejects", str(tmp_path / "o.h5")],
        "is also --out",
    )


def test_stale_rejects_do_not_survive_a_clean_reimport(tmp_path, capsys):
    t = write(tmp_path / "t.tsv", "genes\tfitness\nTFC3\t0.5\nNOPE\t0.1\n")
    out, rejects = tmp_path / "t.h5", tmp_path / "t.rejects.tsv"
    assert main(["data", "import", str(t), "--skip-bad-rows"]) == 0
    assert "NOPE" in rejects.read_text()
    write(t, "genes\tfitness\nTFC3\t0.5\n")
    user_error(capsys, ["data", "import", str(t), "--skip-bad-rows"], "already exists", "--force")
    assert main(["data", "import", str(t), "--skip-bad-rows", "--force"]) == 0
    assert out.exists() and not rejects.exists()


# ---------------------------------------------------------------------- genotype tables
def _genotype_tables(d: Path) -> dict:
    rng = np.random.default_rng(1)
    calls = rng.integers(0, 2, (N_SEGREGANTS, N_MARKERS))
    calls[0, 0] = 1  # the file's first call is R
    markers = [f"m{j}_chr01_{1000 * j + 1}" for j in range(N_MARKERS)]
    head = "sample\t" + "\t".join(markers) + "\n"
    letters = lambda row: "\t".join("R" if v else "B" for v in row)  # noqa: E731
    geno = write(d / "geno.tsv", head + "".join(f"s{i}\t{letters(calls[i])}\n" for i in range(N_SEGREGANTS)))
    beta = rng.normal(size=N_MARKERS)
    y = (2 * calls - 1) @ beta * 0.3 + rng.normal(size=N_SEGREGANTS) * 0.3
    pheno = write(d / "pheno.tsv", "sample\ttrait\n" + "".join(f"s{i}\t{v:.5f}\n" for i, v in enumerate(y)))
    queries = {"Q1": [1] * N_MARKERS, "Q2": [0] * N_MARKERS, "Q3": rng.integers(0, 2, N_MARKERS).tolist()}
    q = write(d / "query.tsv", head + "".join(f"{k}\t{letters(queries[k])}\n" for k in ("Q1", "Q2", "Q3")))
    qb = write(d / "query_Bfirst.tsv", head + "".join(f"{k}\t{letters(queries[k])}\n" for k in ("Q2", "Q1", "Q3")))
    return {"geno": geno, "pheno": pheno, "query": q, "query_Bfirst": qb, "head": head, "markers": markers}


@pytest.fixture(scope="module")
def ridge(tmp_path_factory) -> dict:
    """The genotype tables, their import and ``ridge.ckpt``."""
    d = tmp_path_factory.mktemp("ridge")
    files = _genotype_tables(d)
    data = d / "seg.h5"
    assert (
        main(["data", "import-genotypes", str(files["geno"]), "--phenotypes", str(files["pheno"]), "--out", str(data)])
        == 0
    )
    cfg = write(
        d / "ridge.yaml",
        f"""seed_everything: 0
trainer:
  accelerator: cpu
  max_epochs: 1
  logger: false
  enable_progress_bar: false
  callbacks: [{{class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: {{dirpath: {d}, filename: ridge}}}}]
model:
  class_path: cellformer.genotype.training.GenotypeModule
  init_args: {{model: ridge}}
data:
  class_path: cellformer.genotype.training.GenotypeDataModule
  init_args: {{dataset: {data}, batch_size: 64}}
""",
    )
    assert main(["fit", "--config", str(cfg), "--test_after_fit", "false"]) == 0
    return {**files, "dir": d, "data": data, "config": cfg, "ckpt": d / "ridge.ckpt"}


def _predictions(capsys, ckpt: Path, table: Path) -> dict[str, float]:
    capsys.readouterr()
    assert main(["predict", "--ckpt", str(ckpt), "--genotypes", str(table)]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    return {r.split("\t")[0]: float(r.split("\t")[1]) for r in rows[1:]}


# ---------------------------------------------------------------------- 3, 4. import-genotypes outputs
def test_import_genotypes_outputs_are_never_inputs(ridge, tmp_path, capsys):
    geno, pheno = ridge["geno"].read_text(), ridge["pheno"].read_text()
    args = ["data", "import-genotypes", str(ridge["geno"]), "--phenotypes", str(ridge["pheno"])]
    user_error(
        capsys,
        [*args, "--out", str(tmp_path / "a.h5"), "--rejects", str(ridge["geno"])],
        "--rejects",
        "input file itself",
    )
    user_error(capsys, [*args, "--out", str(ridge["pheno"]), "--force"], "--out", "input file itself")
    user_error(capsys, [*args, "--out", str(ridge["data"])], "already exists")
    assert ridge["geno"].read_text() == geno and ridge["pheno"].read_text() == pheno


# ---------------------------------------------------------------------- 5. one stray -1
def test_stray_minus_one_in_a_01_table_is_an_error(tmp_path, capsys):
    rng = np.random.default_rng(0)
    calls = rng.integers(0, 2, (200, 30))
    text = "s\t" + "\t".join(f"m{j}" for j in range(30)) + "\n"
    lines = [f"x{i}\t" + "\t".join(str(v) for v in row) for i, row in enumerate(calls)]
    lines[57] = lines[57].rsplit("\t", 1)[0] + "\t-1"  # file line 59, marker m29
    geno = write(tmp_path / "g.tsv", text + "\n".join(lines) + "\n")
    out = tmp_path / "g.h5"
    user_error(
        capsys, ["data", "import-genotypes", str(geno), "--out", str(out)], "g.tsv:59", "'m29'", "'-1'", "--coding"
    )
    assert not out.exists()
    assert main(["data", "import-genotypes", str(geno), "--out", str(out), "--coding", "01"]) == 0  # told: -1 is bad
    from cellformer.genotype.data import GenotypeData

    data = GenotypeData.load(out)
    assert len(data) == 199 and (data.genotypes != 0).all()  # no 0 call became "missing"


# ---------------------------------------------------------------------- 6. row order
def test_genotype_predictions_do_not_depend_on_row_order(ridge, capsys):
    a = _predictions(capsys, ridge["ckpt"], ridge["query"])
    b = _predictions(capsys, ridge["ckpt"], ridge["query_Bfirst"])
    assert a == b
    from cellformer.genotype.training import load_genotype_checkpoint, predict_genotypes

    model, context, _ = load_genotype_checkpoint(ridge["ckpt"])
    assert context.alleles == {"coding": "letters", "plus": "R", "minus": "B"}  # recorded at import, kept by fit
    all_r = predict_genotypes(model, context, np.ones((1, N_MARKERS), np.float32))[0, 0]
    assert a["Q1"] == pytest.approx(float(f"{all_r:.6g}"))  # Q1 (all R) is read as all +1, as in training


def test_query_options_may_not_contradict_the_checkpoint(ridge, capsys):
    args = ["predict", "--ckpt", str(ridge["ckpt"]), "--genotypes", str(ridge["query"])]
    user_error(capsys, [*args, "--reference-allele", "B"], "contradicts the checkpoint", "R = +1")
    user_error(capsys, [*args, "--allele-coding", "01"], "contradicts the checkpoint")
    assert main([*args, "--reference-allele", "r"]) == 0


# ---------------------------------------------------------------------- 7. query rows are never dropped
@pytest.mark.parametrize(
    "edit,fragments",
    [
        (lambda rows: rows.__setitem__(2, rows[2].rsplit("\t", 1)[0]), ["query.tsv:3", "fields"]),
        (lambda rows: rows.__setitem__(2, rows[2][:-1] + "X"), ["query.tsv:3", "'X'"]),
        (lambda rows: rows.__setitem__(3, "Q1" + rows[3][2:]), ["query.tsv:4", "'Q1'", "line 2"]),
    ],
    ids=["ragged", "unknown-allele", "duplicate-id"],
)
def test_bad_query_rows_are_errors(ridge, tmp_path, capsys, edit, fragments):
    rows = ridge["query"].read_text().splitlines()
    edit(rows)
    q = write(tmp_path / "query.tsv", "\n".join(rows) + "\n")
    user_error(capsys, ["predict", "--ckpt", str(ridge["ckpt"]), "--genotypes", str(q)], *fragments)


# ---------------------------------------------------------------------- 8. predict --genotypes --out
def test_genotype_predict_out_is_never_an_input(ridge, tmp_path, capsys):
    ckpt_bytes, query = ridge["ckpt"].read_bytes(), ridge["query"].read_text()
    args = ["predict", "--ckpt", str(ridge["ckpt"]), "--genotypes", str(ridge["query"])]
    user_error(capsys, [*args, "--out", str(ridge["ckpt"]), "--force"], "input file itself", "--ckpt")
    user_error(capsys, [*args, "--out", str(ridge["query"]), "--force"], "input file itself", "--genotypes")
    assert ridge["ckpt"].read_bytes() == ckpt_bytes and ridge["query"].read_text() == query
    out = write(tmp_path / "p.tsv", "keep me\n")
    user_error(capsys, [*args, "--out", str(out)], "already exists", "--force")
    assert out.read_text() == "keep me\n"
    assert main([*args, "--out", str(out), "--force"]) == 0 and out.read_text().startswith("sample\ttrait")


@pytest.mark.parametrize("kind", ["empty", "truncated", "garbage", "missing", "not-a-checkpoint", "perturbation"])
def test_corrupt_genotype_checkpoint_is_one_line(ridge, toy, tmp_path, capsys, kind):
    bad = tmp_path / "bad.ckpt"
    if kind == "empty":
        bad.write_bytes(b"")
    elif kind == "truncated":
        whole = ridge["ckpt"].read_bytes()
        bad.write_bytes(whole[: len(whole) // 2])
    elif kind == "garbage":
        bad.write_bytes(b"PK\x03\x04 not really a zip" * 30)
    elif kind == "not-a-checkpoint":
        torch.save({"state_dict": {}, "cellformer_genotype": {"version": 1}}, bad)  # loads, cannot be rebuilt
    elif kind == "perturbation":
        bad.write_bytes(toy["ckpt"].read_bytes())
    line = user_error(capsys, ["predict", "--ckpt", str(bad), "--genotypes", str(ridge["query"])], "bad.ckpt")
    assert "weights_only" not in line
    if kind != "not-a-checkpoint":  # (a hand-made file with the right sections is Lightning's to refuse)
        user_error(capsys, ["fit", "--config", str(ridge["config"]), "--ckpt_path", str(bad)], "bad.ckpt")


# ---------------------------------------------------------------------- 9, 10. screen outputs
def test_screen_state_and_outputs_never_collide(trained, tmp_path, capsys):
    ckpt = tmp_path / "toy.ckpt"
    ckpt.write_bytes(Path(trained["path"]).read_bytes())
    before = ckpt.read_bytes()
    genes = write(tmp_path / "genes.txt", "G1\nG2\nG3\nG4\n")
    top = tmp_path / "top.tsv"
    base = ["screen", "--ckpt", str(ckpt), "--by", "fitness", "--no-progress", "--top", "3"]
    user_error(capsys, [*base, "--state", str(ckpt), "--out", str(top)], "--state", "input file itself")
    assert ckpt.read_bytes() == before
    user_error(capsys, [*base, "--state", str(top), "--out", str(top)], "--state", "is also --out")
    user_error(capsys, [*base, "--genes", str(genes), "--state", str(genes), "--out", str(top)], "input file itself")
    assert genes.read_text() == "G1\nG2\nG3\nG4\n"
    user_error(capsys, [*base, "--all-scores", str(top), "--out", str(top)], "--all-scores", "is also --out")
    assert not top.exists()
    # a left-over state is continued only when asked to
    state = tmp_path / "top.tsv.state.pt"
    state.write_bytes(b"from an interrupted screen")
    user_error(capsys, [*base, "--genes", str(genes), "--out", str(top)], "state file", "--resume", "--force")
    user_error(capsys, [*base, "--genes", str(genes), "--out", str(top), "--resume"], "state file", "top.tsv.state.pt")
    assert main([*base, "--genes", str(genes), "--out", str(top), "--force"]) == 0
    assert len(top.read_text().splitlines()) == 4 and not state.exists()


# ---------------------------------------------------------------------- 11. fit without a logger
def test_fit_without_logger_keeps_config_yaml(toy, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = write(tmp_path / "config.yaml", "# my own config\ntrainer:\n  max_steps: 1\n")
    before = cfg.read_text()
    argv = [
        "fit",
        "--config",
        "config.yaml",
        *toy["fit_args"],
        "--test_after_fit",
        "false",
        "--trainer.enable_checkpointing",
        "false",
    ]
    assert main(argv) == 0
    assert cfg.read_text() == before
    assert "config of this run is not saved" in capsys.readouterr().out


# ---------------------------------------------------------------------- 12. very wide headers
def test_a_million_column_header_is_checked_in_linear_time(tmp_path, capsys):
    names = [f"p{i}" for i in range(1_000_000)]
    path = tmp_path / "wide.tsv"
    path.write_text("genes\t" + "\t".join(names) + "\tp17\n" + "TFC3" + "\t1" * (len(names) + 1) + "\n")
    user_error(capsys, ["data", "import", str(path), "--out", str(tmp_path / "w.h5")], "duplicate column", "p17")


# ---------------------------------------------------------------------- 13. one rule for every output
def test_existing_outputs_need_force(trained, toy, tmp_path, capsys):
    ckpt = str(trained["path"])
    keep = "keep me\n"
    # predict --out
    out = write(tmp_path / "p.tsv", keep)
    user_error(capsys, ["predict", "--ckpt", ckpt, "--genes", "G1", "--out", str(out)], "already exists", "--force")
    assert out.read_text() == keep
    assert main(["predict", "--ckpt", ckpt, "--genes", "G1", "--out", str(out), "--force"]) == 0
    assert out.read_text().startswith("genes\t")
    # screen --out
    top = write(tmp_path / "top.tsv", keep)
    screen = ["screen", "--ckpt", ckpt, "--by", "fitness", "--no-progress", "--top", "2", "--out", str(top)]
    user_error(capsys, screen, "already exists")
    assert top.read_text() == keep
    # explain: the report's files
    ex = tmp_path / "ex"
    ex.mkdir()
    write(ex / "summary.json", keep)
    explain = ["explain", "--ckpt", ckpt, "--gene", "G1", "--out-dir", str(ex)]
    user_error(capsys, explain, "summary.json", "already exists")
    assert (ex / "summary.json").read_text() == keep
    assert main([*explain, "--force"]) == 0 and (ex / "summary.json").read_text() != keep
    # import-graph: a graph file in --out-dir, and one equal to the input
    gdir = tmp_path / "graphs"
    gdir.mkdir()
    write(gdir / "edges.tsv.gz", keep)
    graph = [
        "data",
        "import-graph",
        str(toy["edges"]),
        "--format",
        "edge-list",
        "--genome",
        str(toy["genes"]),
        "--out-dir",
        str(gdir),
    ]
    user_error(capsys, graph, "edges.tsv.gz", "already exists")
    assert (gdir / "edges.tsv.gz").read_text() == keep
    assert main([*graph, "--force"]) == 0 and gzip.open(gdir / "edges.tsv.gz", "rt").readline().startswith("gene_a")
    src = gdir / "edges.tsv.gz"
    user_error(
        capsys,
        [
            "data",
            "import-graph",
            str(src),
            "--format",
            "edge-list",
            "--genome",
            str(toy["genes"]),
            "--out-dir",
            str(gdir),
            "--force",
        ],
        "input file itself",
    )
    # import-screen --out
    h5 = write(tmp_path / "s.h5", keep)
    user_error(
        capsys, ["data", "import-screen", "--format", "costanzo2016", str(COSTANZO), "--out", str(h5)], "already exists"
    )
    assert h5.read_text() == keep
    assert main(["data", "import-screen", "--format", "costanzo2016", str(COSTANZO), "--out", str(h5), "--force"]) == 0


# ---------------------------------------------------------------------- WEAK: genotype-mode configs
@pytest.mark.parametrize(
    "extra,fragments",
    [
        (["--model.init_args.model", "ridgee"], ["unknown genotype model 'ridgee'", "did you mean ridge"]),
        (["--data.init_args.phenotypes", "[traitt]"], ["unknown phenotype 'traitt'", "did you mean trait"]),
        (["--data.init_args.simulate", "{n_samples: 100}"], ["exactly one of data.dataset", "data.simulate"]),
        (["--model.init_args.model_args", "{cv_folds: 0}"], ["cv_folds", "0"]),
        (["--model.init_args.model_args", "{lambdas: [-1]}"], ["lambdas[0]", "-1"]),
    ],
)
def test_genotype_config_errors_are_one_line(ridge, capsys, extra, fragments):
    user_error(capsys, ["fit", "--config", str(ridge["config"]), *extra], *fragments)


def test_genotype_config_with_a_wrong_file_type(ridge, toy, capsys):
    cfg = ["fit", "--config", str(ridge["config"])]
    user_error(capsys, [*cfg, "--data.init_args.dataset", str(toy["dataset"])], "not a cellformer genotype dataset")
    user_error(capsys, [*cfg, "--data.init_args.dataset", str(toy["genes"])], "not an HDF5 file")


# ---------------------------------------------------------------------- WEAK: bad numbers in configs
@pytest.mark.parametrize(
    "extra,key",
    [
        (["--data.batch_size", "0"], "data.batch_size"),
        (["--model.lr", "-1"], "model.lr"),
        (["--model.model_args", '{"n_heads": 0}'], "n_heads"),
        (["--model.model_args", '{"dropout": 2}'], "dropout"),
        (["--model.model_args", '{"d_model": "big"}'], "d_model"),
        (["--model.model_args", '{"d_model": 0}'], "d_model"),
        (["--trainer.max_steps", "-5"], "trainer.max_steps"),
        (["--data.val_fraction", "1.5"], "data.val_fraction"),
        (["--seed_everything", "-1"], "seed_everything"),
    ],
)
def test_bad_numbers_in_configs_name_the_key(toy, capsys, extra, key):
    line = user_error(capsys, ["fit", *toy["fit_args"], *extra], key, "expected")
    assert "not allowed" in line


# ---------------------------------------------------------------------- WEAK: values and empty results
def test_non_finite_and_overflowing_values_are_refused(tmp_path, capsys):
    lines = COSTANZO.read_text().splitlines()
    fields = lines[1].split("\t")
    fields[5] = "inf"  # epsilon
    screen = write(tmp_path / "inf.txt", "\n".join([lines[0], "\t".join(fields), *lines[2:]]) + "\n")
    out = tmp_path / "s.h5"
    args = ["data", "import-screen", "--format", "costanzo2016", str(screen), "--out", str(out)]
    user_error(capsys, args, "inf.txt:2", "'inf'", "not a finite number")
    assert main([*args, "--skip-bad-rows"]) == 0
    data = PerturbationData.load(out)
    assert np.isfinite(data.phenotypes[~np.isnan(data.phenotypes)]).all()
    # the same rule, in the same words, as a perturbation table
    t = write(tmp_path / "t.tsv", "genes\tfitness\nTFC3\t-inf\n")
    user_error(capsys, ["data", "import", str(t)], "t.tsv:2", "'-inf'", "not a finite number")
    # graph weights: non-negative float32
    g = ["data", "import-graph", "--format", "edge-list", "--out-dir", str(tmp_path / "g")]
    user_error(capsys, [*g, str(write(tmp_path / "neg.tsv", "TFC3\tACT1\t-1\n"))], "neg.tsv:1", "'-1'")
    user_error(capsys, [*g, str(write(tmp_path / "big.tsv", "TFC3\tACT1\t1e39\n"))], "big.tsv:1", "'1e39'")
    assert not (tmp_path / "g").exists()


def test_tables_without_phenotype_values_are_refused(tmp_path, capsys):
    none = write(tmp_path / "none.tsv", "genes\tsplit\nTFC3\ttrain\n")
    user_error(capsys, ["data", "import", str(none)], "none.tsv:1", "no phenotype column")
    na = write(tmp_path / "na.tsv", "genes\tfitness\tepsilon\nTFC3\tNA\t\nACT1\tnan\tNA\n")
    user_error(capsys, ["data", "import", str(na)], "na.tsv", "no measured phenotype value")
    assert not (tmp_path / "none.h5").exists() and not (tmp_path / "na.h5").exists()


def test_fit_on_a_phenotype_without_training_values(toy, tmp_path, capsys):
    data = PerturbationData.load(toy["dataset"])
    data.phenotypes[:, 1] = np.nan
    path = tmp_path / "na.h5"
    data.save(path)
    args = [a if a != str(toy["dataset"]) else str(path) for a in toy["fit_args"]]
    user_error(capsys, ["fit", *args], "epsilon", "no measured value in the training split")


def test_screens_with_no_records_are_refused(tmp_path, capsys):
    header_only = write(tmp_path / "header.txt", COSTANZO.read_text().splitlines()[0] + "\n")
    other_genes = write(tmp_path / "g.tsv", "systematic_name\tstandard_name\nQQQ1\tQ1\nQQQ2\tQ2\n")
    for src, genome in ((header_only, []), (COSTANZO, ["--genome", str(other_genes)])):  # empty; nothing maps
        out = tmp_path / "s.h5"
        argv = ["data", "import-screen", "--format", "costanzo2016", str(src), "--out", str(out), *genome]
        user_error(capsys, argv, src.name, "no records")
        assert not out.exists()


# ---------------------------------------------------------------------- WEAK: messages
def test_non_utf8_byte_is_reported_on_its_line(tmp_path, capsys):
    body = "".join(f"TFC3\t{i}\n" for i in range(5000)).encode()
    path = tmp_path / "u.tsv"
    path.write_bytes(b"genes\tfitness\n" + body + b"ACT1\t\xff\n")  # line 5,002
    user_error(capsys, ["data", "import", str(path)], "u.tsv:5002", "not UTF-8")


def test_long_values_are_cut_in_messages(tmp_path, capsys):
    path = write(tmp_path / "long.tsv", "genes\tfitness\n" + "A" * 20_000_000 + "\t1\n")
    line = user_error(capsys, ["data", "import", str(path)], "long.tsv:2", "unknown gene", "20,000,000 characters")
    assert len(line) < 500


# ---------------------------------------------------------------------- WEAK: silent inconsistencies
def test_import_graph_reads_a_regulator_target_header_as_directed(tmp_path, capsys):
    src = write(tmp_path / "tf.tsv", "regulator\ttarget\nTFC3\tACT1\nACT1\tCDC28\n")
    assert main(["data", "import-graph", str(src), "--format", "edge-list", "--out-dir", str(tmp_path / "g")]) == 0
    assert "2 directed edges" in capsys.readouterr().out
    with gzip.open(tmp_path / "g" / "tf.tsv.gz", "rt") as fh:
        assert fh.readline().startswith("regulator\ttarget")


def test_addition_type_for_a_native_gene_is_refused_at_import(tmp_path, capsys):
    t = write(tmp_path / "t.tsv", "genes\ttypes\tfitness\nTFC3;ACT1\tdeletion;addition\t0.5\n")
    user_error(capsys, ["data", "import", str(t)], "t.tsv:2", "ACT1", "'addition' is for added")


def test_rows_with_an_empty_split_are_announced(tmp_path, capsys):
    t = write(tmp_path / "t.tsv", "genes\tsplit\tfitness\nTFC3\ttrain\t0.5\nACT1\t\t0.7\nCDC28\ttest\t0.1\n")
    assert main(["data", "import", str(t)]) == 0
    out = capsys.readouterr().out
    assert "1 rows have an empty split (first on line 3)" in out and "unassigned" in out


def test_a_failed_explain_leaves_no_folder(trained, tmp_path, capsys, monkeypatch):
    ckpt = str(trained["path"])
    out = tmp_path / "ex"
    user_error(capsys, ["explain", "--ckpt", ckpt, "--gene", "NOPE", "--out-dir", str(out)], "NOPE")
    assert not out.exists()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("cellformer.queries.explain.alignment_report", broken)  # after the first files are written
    with pytest.raises(RuntimeError, match="disk full"):
        main(["explain", "--ckpt", ckpt, "--gene", "G1", "--out-dir", str(out)])
    assert not out.exists() and list(tmp_path.iterdir()) == []
