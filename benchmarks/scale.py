"""Scale benchmark: screens of millions of pairs over the real genome, per-step cost against their size.

For each size (default 1 M, 5 M and 20 M pairs) and layout (``plain``: a ``cellformer data import`` table;
``costanzo``: the 11-column Costanzo 2016 pair-wise file for ``data import-screen``) it writes a seeded
synthetic screen over the embedded yeast genome (every gene's single mutant plus uniformly drawn distinct
pairs; ε, fitness and the other columns random) and measures, each command in its own process:

* **import** -- wall time and peak RSS of the import command;
* **info** -- wall time of ``cellformer data info`` on the result;
* **fit start / step** -- CellFormer with ``configs/quickstart.yaml``'s model and batch size on it (random
  split): wall time from the start of the process to the end of the first optimiser step (data loading,
  target scaling, fitting the record tables, the first step), then the median time of the following steps;
  a checkpoint is written. It predicts every column of a plain table, and fitness and ε of a Costanzo file
  (:data:`PHENOTYPES`);
* **screen** -- ``cellformer screen --order 2`` of all pairs among 100 genes with that checkpoint: pairs/s and
  peak RSS;
* **predict** -- ``cellformer predict`` of one pair: wall time.

Writes ``benchmarks/results/scale_<device>.{md,json}``. Targets (2 CPU cores; reported, not asserted):
step at 20 M ≤ 1.5× the step at 1 M; fit start at 20 M ≤ 90 s; import of 20 M ≤ 150 s and ≤ 4 GiB peak
RSS; ``data info`` ≤ 30 s; screen peak RSS ≤ 2 GiB at every size and pairs/s at 20 M within 1.5× of 1 M.

    python benchmarks/scale.py                  # 1 M, 5 M, 20 M, both layouts (about an hour on 2 cores)
    python benchmarks/scale.py --quick          # 20 k and 100 k pairs, plain layout (a minute)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: run a cellformer command in this process and print its peak RSS (KiB) last
RUN = (
    "import resource, sys; from cellformer.cli import main; code = main(sys.argv[1:]); "
    "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True); sys.exit(code)"
)

#: the fit-start / step probe: quickstart's model and batch size on a dataset (argv: dataset, steps, ckpt, config,
#: phenotypes to predict as a comma list or "all")
FIT = r"""
import sys, time
t0 = time.perf_counter()
import numpy as np, torch, yaml, lightning as L
from pathlib import Path
from cellformer.training.datamodule import PerturbationDataModule
from cellformer.training.module import PhenotypeModule
dataset, steps, ckpt = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cfg = yaml.safe_load(open(sys.argv[4]))
torch.manual_seed(0)
phenotypes = None if sys.argv[5] == "all" else sys.argv[5].split(",")
dm = PerturbationDataModule(dataset, graphs=cfg["data"]["graphs"], split="random", batch_size=cfg["data"]["batch_size"],
                            phenotypes=phenotypes)
module = PhenotypeModule(model="cellformer", model_args=cfg["model"]["model_args"], lr=cfg["model"]["lr"],
                         context=dm.context)
times = []
class Clock(L.Callback):
    def on_train_batch_start(self, *a):
        self.t = time.perf_counter()
    def on_train_batch_end(self, trainer, *a):
        now = time.perf_counter()
        if not times:
            print("FIT_START_S", now - t0, flush=True)
        times.append(now - self.t)
trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                    num_sanity_val_steps=0, callbacks=[Clock()])
trainer.fit(module, datamodule=dm)
trainer.save_checkpoint(ckpt)
print("STEP_MS", 1000 * float(np.median(times[1:] if len(times) > 1 else times)), flush=True)
"""


def write_screen(path: Path, layout: str, pairs: int, seed: int = 0) -> None:
    """A synthetic screen over the yeast genome: every gene's single mutant and ``pairs`` distinct pairs."""
    from cellformer.genome import yeast_genome

    genome = yeast_genome()
    names = np.array(genome.genes)
    n = len(names)
    rng = np.random.default_rng(seed)
    # distinct unordered pairs: codes into the n(n-1)/2 pairs a < b, row a starting at start[a]
    total = n * (n - 1) // 2
    codes = np.sort(rng.choice(total, size=min(pairs, total), replace=False))
    start = np.arange(n, dtype=np.int64) * n - np.arange(n, dtype=np.int64) * (np.arange(n) + 1) // 2
    a = np.searchsorted(start, codes, side="right") - 1
    b = codes - start[a] + a + 1
    order = rng.permutation(len(codes))
    a, b = a[order], b[order]
    smf = np.round(rng.uniform(0.3, 1.1, n), 3)
    eps = np.round(rng.normal(0, 0.05, len(a)), 4)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        if layout == "plain":
            fh.write("genes\tfitness\tepsilon\n")
            fh.writelines(f"{g}\t{f}\tNA\n" for g, f in zip(names, smf, strict=True))
            for lo in range(0, len(a), 500_000):
                sl = slice(lo, lo + 500_000)
                fh.write("".join(f"{x};{y}\tNA\t{e}\n" for x, y, e in zip(names[a[sl]], names[b[sl]], eps[sl],
                                                                             strict=True)))  # fmt: skip
        else:
            from cellformer.data.importers.screens import COSTANZO_HEADER

            fh.write("\t".join(COSTANZO_HEADER) + "\n")
            pval = np.round(rng.uniform(0, 1, len(a)), 4)
            for lo in range(0, len(a), 500_000):
                sl = slice(lo, lo + 500_000)
                qa, ab = a[sl], b[sl]
                dmf = np.round(smf[qa] * smf[ab] + eps[sl], 4)
                fh.write("".join(
                    f"{names[x]}_sn{x}\t{names[x].lower()}Δ\t{names[y]}_dma{y}\t{names[y].lower()}Δ\tDMA30\t{e}\t{p}\t"
                    f"{smf[x]}\t{smf[y]}\t{d}\t0.02\n"
                    for x, y, e, p, d in zip(qa, ab, eps[sl], pval[sl], dmf, strict=True)))  # fmt: skip
    tmp.replace(path)


def run(args: list[str], timeout: int = 7200) -> tuple[float, str, int]:
    """Run a command; return (wall s, stdout + stderr, exit status)."""
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    return time.perf_counter() - t0, proc.stdout + proc.stderr, proc.returncode


def value(output: str, key: str) -> float:
    for line in output.splitlines()[::-1]:
        if line.startswith(key):
            return float(line.split()[1])
    raise RuntimeError(f"{key} not found in the output:\n{output[-3000:]}")


#: what the fit probe predicts: a plain table's columns; of a Costanzo file's six columns, fitness and ε (as
#: ``configs/costanzo.yaml`` does: the p-value, sd, count and significance call are annotations, not targets)
PHENOTYPES = {"plain": "all", "costanzo": "fitness,epsilon"}


def cellformer(*argv: str) -> tuple[float, float, str]:
    """``cellformer argv`` in a fresh process: (wall s, peak RSS GiB, output)."""
    wall, out, code = run([sys.executable, "-c", RUN, *argv])
    if code:
        raise RuntimeError(f"cellformer {' '.join(argv)} failed ({code}):\n{out[-3000:]}")
    return wall, value(out, "PEAK_RSS_KIB") / 2**20, out


def measure(size: int, layout: str, work: Path, steps: int) -> dict:
    """Every measurement of one screen size and layout."""
    src = work / f"{layout}_{size}.{'tsv' if layout == 'plain' else 'txt'}"
    if not src.exists():
        t0 = time.perf_counter()
        write_screen(src, layout, size)
        print(f"  wrote {src.name} ({src.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s",
              flush=True)  # fmt: skip
    h5 = work / f"{layout}_{size}.h5"
    if layout == "plain":
        imp = cellformer("data", "import", str(src), "--out", str(h5), "--force")
    else:
        imp = cellformer("data", "import-screen", "--format", "costanzo2016", str(src), "--out", str(h5), "--force")
    info_s, _, _ = cellformer("data", "info", str(h5))
    ckpt = work / f"{layout}_{size}.ckpt"
    wall, out, code = run([sys.executable, "-c", FIT, str(h5), str(steps), str(ckpt),
                           str(ROOT / "configs" / "quickstart.yaml"), PHENOTYPES[layout]])  # fmt: skip
    if code:
        raise RuntimeError(f"fit probe failed:\n{out[-3000:]}")
    genes = work / "genes100.txt"
    from cellformer.genome import yeast_genome

    genes.write_text("\n".join(yeast_genome().genes[:100]) + "\n")
    top = work / f"top_{layout}_{size}.tsv"
    screen_s, screen_rss, screen_out = cellformer("screen", "--ckpt", str(ckpt), "--order", "2", "--by", "epsilon",
                                                  "--genes", str(genes), "--top", "100", "--out", str(top),
                                                  "--force")  # fmt: skip
    pred_s, _, _ = cellformer("predict", "--ckpt", str(ckpt), "--genes", f"{yeast_genome().genes[0]};ACT1")
    n_pairs = 100 * 99 // 2
    return {
        "pairs": size, "layout": layout, "file_mib": src.stat().st_size / 2**20,
        "import_s": imp[0], "import_rss_gib": imp[1], "info_s": info_s,
        "fit_start_s": value(out, "FIT_START_S"), "step_ms": value(out, "STEP_MS"),
        "screen_s": screen_s, "screen_pairs_per_s": n_pairs / screen_s, "screen_rss_gib": screen_rss,
        "predict_s": pred_s,
    }  # fmt: skip


def markdown(report: dict) -> str:
    rows = report["rows"]
    lines = [
        "# Scale benchmark", "",
        f"Synthetic screens over the real yeast genome ({report['genes']} genes): every gene's single mutant plus "
        "the given number of distinct random pairs. CellFormer with `configs/quickstart.yaml`'s model and batch "
        f"size ({report['batch_size']}), random split; {report['steps']} steps timed. Each command in a fresh process "
        f"on {report['cpus']} CPU cores ({report['machine']}), torch {report['torch']}. Command: "
        f"`{report['command']}`."
        + ("" if report.get("complete", True) else " **Incomplete: the run stopped before every size was measured.**"),
        "",
        "| pairs | layout | file MiB | import s | import peak RSS GiB | info s | fit start s | step ms | "
        "screen pairs/s (s for 4,950) | screen peak RSS GiB | predict s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['pairs']:,} | {r['layout']} | {r['file_mib']:.0f} | {r['import_s']:.1f} | "
                     f"{r['import_rss_gib']:.2f} | {r['info_s']:.1f} | {r['fit_start_s']:.1f} | {r['step_ms']:.0f} | "
                     f"{r['screen_pairs_per_s']:,.0f} ({r['screen_s']:.1f}) | {r['screen_rss_gib']:.2f} | "
                     f"{r['predict_s']:.1f} |")  # fmt: skip
    lines += ["", "## Targets", "", "| target | measured | status |", "|---|---|---|"]
    for t in report["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {t['status']} |")
    lines += [
        "",
        "Screen and predict times include starting the process and loading the checkpoint (the "
        "screen of 4,950 pairs is dominated by them; `benchmarks/screen.py` measures the screening loop).",
    ]
    return "\n".join(lines) + "\n"


def targets(rows: list[dict]) -> list[dict]:
    out = []

    def add(text: str, measured: str, ok: bool) -> None:
        out.append({"target": text, "measured": measured, "status": "met" if ok else "MISSED"})

    sizes = sorted({r["pairs"] for r in rows})
    lo, hi = sizes[0], sizes[-1]
    for layout in sorted({r["layout"] for r in rows}):
        by = {r["pairs"]: r for r in rows if r["layout"] == layout}
        if lo not in by or hi not in by:
            continue
        a, b = by[lo], by[hi]
        ratio = b["step_ms"] / a["step_ms"]
        add(f"{layout}: step at {hi:,} ≤ 1.5× step at {lo:,}", f"{b['step_ms']:.0f} / {a['step_ms']:.0f} ms = "
            f"{ratio:.2f}×", ratio <= 1.5)  # fmt: skip
        add(f"{layout}: fit start at {hi:,} ≤ 90 s", f"{b['fit_start_s']:.1f} s", b["fit_start_s"] <= 90)
        add(f"{layout}: import of {hi:,} ≤ 150 s and ≤ 4 GiB", f"{b['import_s']:.0f} s, {b['import_rss_gib']:.2f} GiB",
            b["import_s"] <= 150 and b["import_rss_gib"] <= 4)  # fmt: skip
        add(f"{layout}: data info ≤ 30 s", f"{b['info_s']:.1f} s", b["info_s"] <= 30)
        worst = max(r["screen_rss_gib"] for r in by.values())
        add(f"{layout}: screen peak RSS ≤ 2 GiB at every size", f"max {worst:.2f} GiB", worst <= 2)
        ratio = a["screen_pairs_per_s"] / b["screen_pairs_per_s"]
        add(f"{layout}: screen pairs/s at {hi:,} within 1.5× of {lo:,}", f"{b['screen_pairs_per_s']:,.0f} vs "
            f"{a['screen_pairs_per_s']:,.0f} pairs/s ({ratio:.2f}×)", ratio <= 1.5)  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    p.add_argument("--sizes", default="1000000,5000000,20000000", help="pairs per screen, comma list")
    p.add_argument("--layouts", default="plain,costanzo", help="comma list of plain, costanzo")
    p.add_argument("--steps", type=int, default=12, help="optimiser steps timed per size")
    p.add_argument("--quick", action="store_true", help="20,000 and 100,000 pairs, plain layout, 4 steps")
    p.add_argument("--workdir", default=None, help="where the screens are written (default: a temporary folder)")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--tag", default="cpu")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.layouts, args.steps = "20000,100000", "plain", 4
    sizes = [int(s) for s in args.sizes.split(",")]
    layouts = [s.strip() for s in args.layouts.split(",")]
    import yaml

    cfg = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for layout in layouts:
            for size in sizes:
                print(f"[scale] {layout}, {size:,} pairs", flush=True)
                r = measure(size, layout, work, args.steps)
                print("  " + json.dumps(r), flush=True)
                rows.append(r)
                report = write_report(rows, args, cfg, argv, done=False)  # a table after every size
    report = write_report(rows, args, cfg, argv, done=True)
    print(markdown(report))
    return report


def write_report(rows: list[dict], args: argparse.Namespace, cfg: dict, argv, done: bool) -> dict:
    """Write ``scale_<tag>.{md,json}`` for the rows measured so far (``done``: all of them)."""
    import torch

    from cellformer.genome import yeast_genome

    command = "python benchmarks/scale.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = {
        "rows": rows, "targets": targets(rows), "genes": len(yeast_genome()), "batch_size": cfg["data"]["batch_size"],
        "steps": args.steps, "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__, "command": command, "complete": done,
    }  # fmt: skip
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = f"scale_{args.tag}{'_quick' if args.quick else ''}"
    (out / f"{name}.md").write_text(markdown(report))
    (out / f"{name}.json").write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
