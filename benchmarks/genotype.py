"""Benchmark: genotype → phenotype models on simulated segregant populations (2 CPU cores).

    python benchmarks/genotype.py            # default mode (≤ 30 min on 2 cores), writes benchmarks/results/
    python benchmarks/genotype.py --quick    # a tiny version (< 1 min; the smoke test), writes genotype_quick.*

Three parts, every model trained through :class:`~cellformer.genotype.training.GenotypeModule` (the module
the CLI uses) with the weights of the best validation phenotype loss restored before testing:

(a) **scaling** -- the epistasis-vs-DL simulation: ``n_qtl`` unlinked causal loci (all loci causal), one
    trait with V_A/V_G in {1, 0.5, 0.15} (broad-sense H² 0.9), training samples chosen by
    ``scaling = C(n_qtl, 2) / samples`` in {0.1, 0.3, 1, 3, 10}; validation and test sets of fixed size.
    Reported: test Pearson of each model minus ridge's (mean ± sd over seeds).
(b) **model table** -- an 18-trait F1 population with 1,164 linked loci, pleiotropic traits: mean and
    per-trait test R² and wall-clock training time of every model. On 2 CPU cores the attention models
    over 1,164 tokens get a fixed wall-clock budget per model (``--table-budget``), far below what they
    need to converge; the table says so.
(c) **locus-graph tie** -- the locus CellFormer on a linked population, head 0 of layer 0 tied to the
    training-split LD graph (λ > 0) against λ = 0 and against a degree-preserving rewired LD graph.

Targets (reported met / missed, never tuned): on additive traits every neural model within 0.02 R² of
ridge; where scaling ≤ 1 on epistatic traits the best transformer beats ridge and the MLP; the tie
against λ = 0 and against the rewired graph.

Writes ``benchmarks/results/genotype_<mode>.{md,json,png}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import EarlyStopping  # noqa: E402

from cellformer.genotype.simulate import n_samples_for_scaling, simulate_genotypes  # noqa: E402
from cellformer.genotype.training import GenotypeDataModule, GenotypeModule, KeepBest  # noqa: E402

TRANSFORMERS = ["rijal_attention", "canonical_transformer", "vanilla_transformer", "fariello_transformer", "cellformer"]
NEURAL = ["mlp", *TRANSFORMERS]

# CPU-sized hyper-parameters (published sizes in the README); lr per model
SIZES = {
    "ridge": ({}, 0.0),
    "lasso": ({"max_iter": 200}, 0.0),
    "mlp": ({"d_hidden": 256}, 3e-3),
    "rijal_attention": ({"d_model": 12, "n_layers": 3}, 3e-3),
    "canonical_transformer": ({"d_model": 32, "n_layers": 3}, 3e-3),
    "vanilla_transformer": ({"d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 128, "dropout": 0.0}, 3e-3),
    "fariello_transformer": ({"d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 128, "dropout": 0.0}, 3e-3),
    "cellformer": ({"d_model": 32, "n_layers": 2, "n_heads": 4, "dropout": 0.0}, 3e-3),
}

# (b) batch sizes: attention over 1,164 tokens keeps (batch × heads × 1,165²) maps per layer for the backward
# pass on CPU; Rijal's model runs one sequence per (sample, phenotype), 18 per sample
TABLE_BATCH = {"rijal_attention": 4, "canonical_transformer": 16, "vanilla_transformer": 16,
               "fariello_transformer": 16, "cellformer": 16}

MODES = {
    "default": {
        "scaling": [0.1, 0.3, 1, 3, 10], "additive_share": [1.0, 0.5, 0.15], "seeds": [0, 1, 2], "n_qtl": 20,
        "n_eval": 300, "steps": 200,
        "scaling_models": ["ridge", "mlp", "rijal_attention", "canonical_transformer", "vanilla_transformer",
                           "cellformer"],
        "table": {"n_samples": 2000, "n_loci": 1164, "n_traits": 18, "n_qtl": 60}, "table_budget": 45.0,
        "table_steps": 400, "table_models": ["ridge", "lasso", *NEURAL],
        "tie": {"n_samples": 1500, "n_loci": 120, "n_qtl": 16, "seeds": [0, 1, 2], "steps": 200},
    },
    "quick": {
        "scaling": [0.3], "additive_share": [1.0, 0.15], "seeds": [0], "n_qtl": 8, "n_eval": 60,
        "steps": 10, "scaling_models": ["ridge", "mlp", "canonical_transformer"],
        "table": {"n_samples": 200, "n_loci": 30, "n_traits": 3, "n_qtl": 6}, "table_budget": 3.0,
        "table_steps": 10, "table_models": ["ridge", "lasso", "canonical_transformer"],
        "tie": {"n_samples": 200, "n_loci": 20, "n_qtl": 4, "seeds": [0], "steps": 10},
    },
}


def quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def train_and_test(name: str, data, *, steps: int, seed: int, budget_s: float | None = None,
                   batch_size: int = 64, model_args: dict | None = None, locus_graphs: dict | None = None) -> dict:
    """Fit ``name`` on ``data`` (stored split) and return its test metrics and training time."""
    L.seed_everything(seed, verbose=False)
    args, lr = SIZES[name]
    args = {**args, **(model_args or {})}
    dm = GenotypeDataModule(data=data, batch_size=batch_size, locus_graphs=locus_graphs)
    module = GenotypeModule(name, args, lr=lr, warmup_steps=min(20, steps // 10 + 1), context=dm.context)
    n_train = len(dm.split_index["train"])
    common = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                  accelerator="cpu", devices=1)
    if module.model.closed_form:
        trainer = L.Trainer(max_epochs=1, callbacks=[KeepBest()], **common)
    else:  # validate every `steps/10` steps; stop after 5 validations without improvement; keep the best
        stop = EarlyStopping(monitor="val_loss", patience=5, mode="min")
        trainer = L.Trainer(max_steps=steps, val_check_interval=max(5, steps // 10), check_val_every_n_epoch=None,
                            max_time=None if budget_s is None else {"seconds": budget_s},
                            callbacks=[KeepBest(), stop], **common)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    seconds = time.perf_counter() - t0
    trainer.test(module, datamodule=dm, verbose=False)
    metrics = module.last_metrics["test"]
    return {
        "r2": {k: v["r2"] for k, v in metrics.items()},
        "pearson": {k: v["pearson"] for k, v in metrics.items()},
        "seconds": seconds,
        "steps": int(trainer.global_step),
        "n_train": n_train,
    }


def _mean(x) -> float:
    x = [v for v in x if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(x)) if x else float("nan")


# ---------------------------------------------------------------------- (a) scaling
def run_scaling(cfg: dict, log) -> list[dict]:
    rows = []
    q, n_eval = cfg["n_qtl"], cfg["n_eval"]
    for a in cfg["additive_share"]:
        for s in cfg["scaling"]:
            n_train = n_samples_for_scaling(q, s)
            total = n_train + 2 * n_eval
            for seed in cfg["seeds"]:
                data = simulate_genotypes(total, q, n_traits=1, n_qtl=q, additive_share=a, h2=0.9, linked=False,
                                          val=n_eval / total, test=n_eval / total, seed=1000 * seed + 17)
                for name in cfg["scaling_models"]:
                    res = train_and_test(name, data, steps=cfg["steps"], seed=seed, batch_size=64)
                    row = {"additive_share": a, "scaling": s, "seed": seed, "model": name, "n_train": res["n_train"],
                           "pearson": res["pearson"]["trait_0"], "r2": res["r2"]["trait_0"],
                           "seconds": res["seconds"]}
                    rows.append(row)
                log(f"(a) V_A/V_G={a} scaling={s} n_train={n_train} seed={seed}: " + ", ".join(
                    f"{r['model']} {r['pearson']:.3f}" for r in rows[-len(cfg['scaling_models']):]))
    return rows


def summarise_scaling(rows: list[dict], cfg: dict) -> dict:
    out: dict = {}
    for a in cfg["additive_share"]:
        for s in cfg["scaling"]:
            cell = [r for r in rows if r["additive_share"] == a and r["scaling"] == s]
            ridge = {r["seed"]: r for r in cell if r["model"] == "ridge"}
            for name in cfg["scaling_models"]:
                mine = [r for r in cell if r["model"] == name]
                dp = [r["pearson"] - ridge[r["seed"]]["pearson"] for r in mine]
                dr = [r["r2"] - ridge[r["seed"]]["r2"] for r in mine]
                out[f"{a}|{s}|{name}"] = {
                    "additive_share": a, "scaling": s, "model": name, "n_train": mine[0]["n_train"],
                    "pearson": _mean(r["pearson"] for r in mine), "r2": _mean(r["r2"] for r in mine),
                    "d_pearson": _mean(dp), "d_pearson_sd": float(np.std(dp, ddof=1)) if len(dp) > 1 else 0.0,
                    "d_r2": _mean(dr),
                }
    return out


# ---------------------------------------------------------------------- (b) table
def run_table(cfg: dict, log) -> dict:
    t = cfg["table"]
    data = simulate_genotypes(t["n_samples"], t["n_loci"], n_traits=t["n_traits"], n_qtl=t["n_qtl"],
                              additive_share=0.7, h2=0.7, pleiotropy=0.5, linked=True, seed=7)
    out = {"population": {**t, "additive_share": 0.7, "h2": 0.7, "pleiotropy": 0.5, "linked": True,
                          "split": data.split_sizes()}, "models": {}}
    for name in cfg["table_models"]:
        budget = None if name in ("ridge", "lasso", "mlp") else cfg["table_budget"]
        batch = TABLE_BATCH.get(name, 64)
        res = train_and_test(name, data, steps=cfg["table_steps"], seed=0, budget_s=budget, batch_size=batch)
        res["mean_r2"] = _mean(res["r2"].values())
        res["budget_s"], res["batch_size"] = budget, batch
        out["models"][name] = res
        log(f"(b) {name}: mean test R² {res['mean_r2']:.3f} in {res['seconds']:.1f} s ({res['steps']} steps)")
    return out


# ---------------------------------------------------------------------- (c) locus-graph tie
def run_tie(cfg: dict, log) -> dict:
    t = cfg["tie"]
    arms = {
        "untied (λ=0)": ({"graph_reg": {"ld": {"layer": 0, "head": 0, "weight": 0.0, "rows": 32}}},
                         {"ld": {"kind": "ld", "top_k": 8}}),
        "LD graph (λ=0.1)": ({"graph_reg": {"ld": {"layer": 0, "head": 0, "weight": 0.1, "rows": 32}}},
                             {"ld": {"kind": "ld", "top_k": 8}}),
        "rewired LD graph (λ=0.1)": ({"graph_reg": {"ld": {"layer": 0, "head": 0, "weight": 0.1, "rows": 32}}},
                                     {"ld": {"kind": "ld", "top_k": 8, "rewire": 1.0, "seed": 0}}),
    }
    res: dict = {"population": {**t, "n_traits": 3, "additive_share": 0.3, "h2": 0.8, "linked": True},
                 "arms": {k: [] for k in arms}}
    for seed in t["seeds"]:
        data = simulate_genotypes(t["n_samples"], t["n_loci"], n_traits=3, n_qtl=t["n_qtl"], additive_share=0.3,
                                  h2=0.8, pleiotropy=0.5, linked=True, seed=300 + seed)
        for arm, (args, graphs) in arms.items():
            r = train_and_test("cellformer", data, steps=t["steps"], seed=seed, model_args=args, locus_graphs=graphs)
            res["arms"][arm].append({"seed": seed, "mean_r2": _mean(r["r2"].values()),
                                     "mean_pearson": _mean(r["pearson"].values()), "seconds": r["seconds"]})
            log(f"(c) seed {seed} {arm}: mean R² {res['arms'][arm][-1]['mean_r2']:.3f}")
    return res


# ---------------------------------------------------------------------- targets and report
def targets(scaling: dict, cfg: dict, tie: dict) -> list[dict]:
    out = []
    neural = [m for m in cfg["scaling_models"] if m != "ridge"]
    add = [v for v in scaling.values() if v["additive_share"] == 1.0 and v["model"] in neural]
    worst = {m: _mean(v["d_r2"] for v in add if v["model"] == m) for m in neural}
    ok = all(d >= -0.02 for d in worst.values())
    detail = ", ".join(f"{m} {d:+.3f}" for m, d in worst.items())
    out.append({"target": "additive traits (V_A/V_G = 1): every neural model within 0.02 R² of ridge "
                          "(mean over scalings and seeds)", "met": ok, "detail": detail})
    transformers = [m for m in neural if m in TRANSFORMERS]
    cells, wins = [], 0
    for a in cfg["additive_share"]:
        if a >= 1.0:
            continue
        for s in cfg["scaling"]:
            if s > 1:
                continue
            get = {m: scaling[f"{a}|{s}|{m}"]["pearson"] for m in cfg["scaling_models"]}
            best = max(transformers, key=lambda m: get[m])
            win = get[best] > get["ridge"] and ("mlp" not in get or get[best] > get["mlp"])
            wins += win
            cells.append(f"V_A/V_G {a}, scaling {s}: {best} {get[best]:.3f} vs ridge {get['ridge']:.3f}"
                         + (f", MLP {get['mlp']:.3f}" if "mlp" in get else "") + (" ✓" if win else " ✗"))
    out.append({"target": "epistatic traits, scaling ≤ 1: the best transformer beats ridge and the MLP (Pearson)",
                "met": bool(cells) and wins == len(cells), "detail": f"{wins}/{len(cells)} cells; " + "; ".join(cells)})
    arms = {k: [r["mean_r2"] for r in v] for k, v in tie["arms"].items()}
    tied = np.array(arms["LD graph (λ=0.1)"])
    for label, other in (("λ = 0", "untied (λ=0)"), ("the rewired LD graph", "rewired LD graph (λ=0.1)")):
        delta = tied - np.array(arms[other])
        out.append({"target": f"locus-graph tie (LD, λ=0.1) beats {label} (mean test R², by > 0.005)",
                    "met": bool(delta.mean() > 0.005),
                    "detail": f"tied {tied.mean():.4f} vs {np.mean(arms[other]):.4f}; Δ per seed "
                              + ", ".join(f"{d:+.4f}" for d in delta)})
    return out


def write_markdown(path: Path, result: dict) -> None:
    cfg, sc, tab, tie = result["config"], result["scaling_summary"], result["table"], result["tie"]
    lines = [f"# Genotype → phenotype benchmark ({result['mode']} mode)", "",
             f"Measured {result['date']} on {result['machine']['cpus']} CPU cores (shared machine), torch "
             f"{result['machine']['torch']}; total {result['total_seconds'] / 60:.1f} min. "
             f"Reproduce: `python benchmarks/genotype.py{' --quick' if result['mode'] == 'quick' else ''}`.", "",
             "## Targets", "", "| target | result | detail |", "|---|---|---|"]
    for t in result["targets"]:
        lines.append(f"| {t['target']} | {'met' if t['met'] else '**missed**'} | {t['detail']} |")
    lines += ["", f"## (a) Scaling: test Pearson minus ridge (mean ± sd over {len(cfg['seeds'])} seeds)", "",
              f"{cfg['n_qtl']} unlinked causal loci, one trait, H² 0.9, {cfg['n_eval']} validation and "
              f"{cfg['n_eval']} test samples; training samples = C({cfg['n_qtl']}, 2) / scaling; "
              f"{cfg['steps']} optimiser steps (batch 64), best validation loss kept.", ""]
    models = [m for m in cfg["scaling_models"] if m != "ridge"]
    for a in cfg["additive_share"]:
        lines += [f"**V_A/V_G = {a}**", "", "| scaling | n_train | ridge r | " + " | ".join(models) + " |",
                  "|---:|---:|---:|" + "---:|" * len(models)]
        for s in cfg["scaling"]:
            r = sc[f"{a}|{s}|ridge"]
            cells = [f"{sc[f'{a}|{s}|{m}']['d_pearson']:+.3f} ± {sc[f'{a}|{s}|{m}']['d_pearson_sd']:.3f}"
                     for m in models]
            lines.append(f"| {s} | {r['n_train']} | {r['pearson']:.3f} | " + " | ".join(cells) + " |")
        lines.append("")
    pop = tab["population"]
    lines += ["## (b) Model table: simulated F1 population", "",
              f"{pop['n_samples']} segregants × {pop['n_loci']} linked loci (16 chromosomes), {pop['n_traits']} "
              f"traits sharing {pop['n_qtl']} QTL (effect correlation {pop['pleiotropy']}), V_A/V_G "
              f"{pop['additive_share']}, H² {pop['h2']}; split {pop['split']}. Ridge/LASSO are solved in closed form; "
              f"the MLP trains up to {cfg['table_steps']} steps; the attention models over {pop['n_loci']} tokens get "
              f"a wall-clock budget of {cfg['table_budget']:.0f} s each on this CPU (**not converged**: their "
              "numbers measure what 2 CPU cores buy, not the architectures).", "",
              "| model | mean test R² | training time (s) | optimiser steps |", "|---|---:|---:|---:|"]
    for name, r in tab["models"].items():
        lines.append(f"| {name} | {r['mean_r2']:.3f} | {r['seconds']:.1f} | {r['steps']} |")
    names = list(next(iter(tab["models"].values()))["r2"])
    lines += ["", "Batch sizes: " + ", ".join(f"{n} {r['batch_size']}" for n, r in tab["models"].items()) + ".",
              "", "Per-trait test R²:", "", "| model | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for name, r in tab["models"].items():
        lines.append(f"| {name} | " + " | ".join(f"{r['r2'][n]:.3f}" for n in names) + " |")
    tp = tie["population"]
    lines += ["", "## (c) Locus-graph tie (locus CellFormer)", "",
              f"{tp['n_samples']} segregants × {tp['n_loci']} linked loci, 3 traits, {tp['n_qtl']} QTL, V_A/V_G "
              f"{tp['additive_share']}, H² {tp['h2']}; {tp['steps']} steps; head 0 of layer 0 tied to the LD graph "
              "(r², top 8 partners per locus, training split only).", "",
              "| arm | mean test R² (per seed) | mean |", "|---|---|---:|"]
    for arm, rs in tie["arms"].items():
        lines.append(f"| {arm} | " + ", ".join(f"{r['mean_r2']:.3f}" for r in rs) + f" | "
                     f"{_mean(r['mean_r2'] for r in rs):.3f} |")
    path.write_text("\n".join(lines) + "\n")


def plot(path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, sc, tab = result["config"], result["scaling_summary"], result["table"]
    shares = cfg["additive_share"]
    fig, axes = plt.subplots(1, len(shares) + 1, figsize=(4.2 * (len(shares) + 1), 3.6))
    for ax, a in zip(axes[:-1], shares, strict=True):
        for m in cfg["scaling_models"]:
            if m == "ridge":
                continue
            y = [sc[f"{a}|{s}|{m}"]["d_pearson"] for s in cfg["scaling"]]
            e = [sc[f"{a}|{s}|{m}"]["d_pearson_sd"] for s in cfg["scaling"]]
            ax.errorbar(cfg["scaling"], y, yerr=e, marker="o", ms=3, capsize=2, label=m)
        ax.axhline(0, color="k", lw=0.8, ls="--")
        ax.axvline(1, color="grey", lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("scaling = C(QTL, 2) / samples")
        ax.set_title(f"V_A/V_G = {a}")
    axes[0].set_ylabel("test Pearson − ridge")
    axes[0].legend(fontsize=6)
    names = list(tab["models"])
    axes[-1].barh(names, [tab["models"][n]["mean_r2"] for n in names], color="#3b6ea8")
    axes[-1].set_xlabel("mean test R² (18-trait F1 table)")
    axes[-1].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (< 1 min): the smoke test")
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--table-budget", type=float, default=None, help="seconds per attention model in (b)")
    args = parser.parse_args(argv)
    quiet()
    mode = "quick" if args.quick else "default"
    cfg = json.loads(json.dumps(MODES[mode]))
    if args.table_budget is not None:
        cfg["table_budget"] = args.table_budget
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", flush=True)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: one thread per process is faster on 2 shared cores
    scaling_rows = run_scaling(cfg, log)
    scaling = summarise_scaling(scaling_rows, cfg)
    torch.set_num_threads(min(2, os.cpu_count() or 1))  # 1,164-token models use both cores
    table = run_table(cfg, log)
    torch.set_num_threads(1)
    tie = run_tie(cfg, log)
    torch.set_num_threads(threads)
    result = {
        "mode": mode, "date": time.strftime("%Y-%m-%d"), "config": cfg,
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
                    "threads": {"scaling_and_tie": 1, "table": min(2, os.cpu_count() or 1)}},
        "scaling_rows": scaling_rows, "scaling_summary": scaling, "table": table, "tie": tie,
        "targets": targets(scaling, cfg, tie), "total_seconds": time.perf_counter() - t0,
    }
    stem = out / f"genotype_{mode}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1, default=float))
    write_markdown(stem.with_suffix(".md"), result)
    plot(stem.with_suffix(".png"), result)
    for t in result["targets"]:
        log(f"target {'MET' if t['met'] else 'MISSED'}: {t['target']} -- {t['detail']}")
    log(f"wrote {stem}.md/.json/.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
