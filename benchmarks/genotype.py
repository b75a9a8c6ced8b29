"""Benchmark: genotype → phenotype models on simulated segregant populations, trained to their plateau (2 CPU cores).

    python benchmarks/genotype.py            # default mode (≤ 40 min on 2 cores), writes benchmarks/results/
    python benchmarks/genotype.py --quick    # a tiny version (seconds; the smoke test), writes genotype_quick.*

Every model is trained through :class:`~cellformer.genotype.training.GenotypeModule` (the module the CLI
uses) on the same split of the same population: gradient-trained models validate every ``epoch`` (at most
every 50 steps), **stop early** when the validation phenotype loss has not improved for ``patience``
validations, and are tested with the weights of their best validation (a step and time cap guards the
budget; the report says for each model whether it stopped on its plateau or on the cap). Ridge and LASSO
choose λ on the validation split; gradient boosting stops its rounds on the validation split per phenotype.
The token models read linkage blocks (``max_tokens``, computed on the training split) where the panel is
dense; ridge, LASSO, GBM and the MLP read every marker.

Parts:

(a) **scaling** (epistasis vs deep learning): 20 unlinked causal loci, one trait, V_A/V_G in ``shares``,
    training samples ``C(20, 2) / scaling``; test R² of every model over seeds.
(b) **model table**: an F1 population with 1,164 linked loci and pleiotropic traits, half additive
    (V_A/V_G = 1) and half epistatic, samples ≥ C(QTL, 2).
(c) **Bloom-like cross**: 1,008 segregants × 11,623 markers, few large-effect QTL, epistatic pairs, two
    correlated traits; ridge, LASSO, GBM, MLP, the transformers (multi-trait and single-trait) and the
    locus CellFormer with its LD tie against λ = 0 and a rewired LD graph over seeds.

Targets (reported met / missed, never tuned to pass) are listed in :func:`targets`.
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

from cellformer.genotype.blocks import describe_blocks  # noqa: E402
from cellformer.genotype.simulate import bloom_like_cross, n_samples_for_scaling, simulate_genotypes  # noqa: E402
from cellformer.genotype.training import (  # noqa: E402
    GenotypeDataModule,
    GenotypeModule,
    KeepBest,
    ValidationCurve,
)

ATTENTION = ["rijal_attention", "canonical_transformer", "vanilla_transformer", "fariello_transformer", "cellformer"]
TRANSFORMERS = ATTENTION  # every attention model counts as a transformer in the targets

# CPU-sized hyper-parameters (published sizes in the README) and learning rate per model. No dropout in the
# transformers: attention dropout sends SDPA to its unfused path (a third of a CPU step went to the dropout mask)
SIZES = {
    "ridge": ({}, 0.0),
    "lasso": ({"max_iter": 300}, 0.0),
    "gbm": ({"n_estimators": 2000, "learning_rate": 0.05, "num_leaves": 15, "early_stopping_rounds": 50}, 0.0),
    "mlp": ({"d_hidden": 256, "dropout": 0.1}, 1e-3),
    "rijal_attention": ({"d_model": 12, "n_layers": 3}, 3e-3),
    "canonical_transformer": ({"d_model": 32, "n_layers": 3}, 1e-3),
    "vanilla_transformer": ({"d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 128, "dropout": 0.0}, 1e-3),
    "fariello_transformer": ({"d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 128, "dropout": 0.0}, 1e-3),
    "cellformer": ({"d_model": 32, "n_layers": 2, "n_heads": 4, "dropout": 0.0, "graph_samples": 4}, 1e-3),
}
TIE_ARMS = {  # name -> (graph_reg weight, locus graph spec)
    "LD tie (λ=0.1)": (0.1, {"kind": "ld", "top_k": 8}),
    "λ = 0": (0.0, {"kind": "ld", "top_k": 8}),
    "rewired LD (λ=0.1)": (0.1, {"kind": "ld", "top_k": 8, "rewire": 1.0, "seed": 0}),
}
ALL = ["ridge", "lasso", "gbm", "mlp", *ATTENTION]

MODES = {
    "default": {
        "train": {"patience": 8, "max_epochs": 80, "max_seconds": 240},
        "scaling": {
            "n_qtl": 20,
            "scalings": [0.3, 1, 3],
            "shares": [1.0, 0.3],
            "seeds": [0, 1, 2],
            "n_eval": 200,
            "batch": 32,
            "models": [
                "ridge",
                "gbm",
                "mlp",
                "rijal_attention",
                "canonical_transformer",
                "vanilla_transformer",
                "cellformer",
            ],
        },
        "table": {
            "n_samples": 3000,
            "n_loci": 1164,
            "n_traits": 12,
            "n_qtl": 40,
            "n_additive": 6,
            "epistatic_share": 0.4,
            "pleiotropy": 0.6,
            "h2": 0.7,
            "max_tokens": 128,
            "batch": 64,
            "models": ALL,
        },
        "bloom": {
            "n_samples": 1008,
            "n_loci": 11623,
            "n_qtl": 16,
            "additive_share": 0.6,
            "h2": 0.85,
            "pleiotropy": 0.8,
            "max_tokens": 128,
            "batch": 32,
            "models": ALL,
            # the λ path stops at 2 % of λ_max: the densest solutions are the slow ones on 11,623 markers
            "lasso": {"n_lambdas": 12, "min_ratio": 0.02, "max_iter": 200},
            "single_trait": ["vanilla_transformer", "fariello_transformer"],
            "tie_seeds": [0, 1, 2],
        },
    },
    "quick": {
        "train": {"patience": 2, "max_epochs": 2, "max_seconds": 10},
        "scaling": {
            "n_qtl": 6,
            "scalings": [0.3],
            "shares": [1.0, 0.3],
            "seeds": [0],
            "n_eval": 40,
            "batch": 32,
            "models": ["ridge", "mlp", "canonical_transformer"],
        },
        "table": {
            "n_samples": 160,
            "n_loci": 40,
            "n_traits": 4,
            "n_qtl": 6,
            "n_additive": 2,
            "epistatic_share": 0.4,
            "pleiotropy": 0.6,
            "h2": 0.7,
            "max_tokens": 24,
            "batch": 32,
            "models": ["ridge", "lasso", "gbm", "rijal_attention", "vanilla_transformer"],
        },
        "bloom": {
            "n_samples": 150,
            "n_loci": 300,
            "n_qtl": 4,
            "additive_share": 0.6,
            "h2": 0.85,
            "pleiotropy": 0.8,
            "max_tokens": 24,
            "batch": 32,
            "models": ["ridge", "lasso", "gbm", "canonical_transformer", "cellformer"],
            "lasso": {},
            "single_trait": ["canonical_transformer"],
            "tie_seeds": [0],
        },
    },
}


def quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _mean(x) -> float:
    x = [v for v in x if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(x)) if x else float("nan")


def train_and_test(
    name: str,
    data,
    train_cfg: dict,
    *,
    seed: int,
    batch_size: int,
    model_args: dict | None = None,
    locus_graphs: dict | None = None,
    blocks: dict | None = None,
    phenotypes: list[str] | None = None,
) -> dict:
    """Fit ``name`` on ``data`` (stored split) to its validation plateau; test metrics, steps and the curve."""
    L.seed_everything(seed, verbose=False)
    args, lr = SIZES[name]
    args = {**args, **(model_args or {})}
    if name == "gbm":
        args["seed"] = seed
    dm = GenotypeDataModule(
        data=data,
        batch_size=batch_size,
        locus_graphs=locus_graphs,
        phenotypes=phenotypes,
        blocks=blocks if name in ATTENTION else None,
    )
    n_train = len(dm.split_index["train"])
    steps_per_epoch = max(1, n_train // batch_size)
    interval = min(steps_per_epoch, 50)
    max_steps = train_cfg["max_epochs"] * steps_per_epoch
    module = GenotypeModule(name, args, lr=lr, warmup_steps=min(20, max_steps // 10 + 1), context=dm.context)
    common = dict(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        num_sanity_val_steps=0,
    )
    curve, stop = ValidationCurve(), None
    if module.model.closed_form:
        trainer = L.Trainer(max_epochs=1, callbacks=[KeepBest(), curve], **common)
    else:
        stop = EarlyStopping(monitor="val_loss", patience=train_cfg["patience"], mode="min", min_delta=1e-4)
        trainer = L.Trainer(
            max_steps=max_steps,
            val_check_interval=interval,
            check_val_every_n_epoch=None,
            max_time={"seconds": train_cfg["max_seconds"]},
            gradient_clip_val=1.0,
            callbacks=[KeepBest(), curve, stop],
            **common,
        )
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    seconds = time.perf_counter() - t0
    trainer.test(module, datamodule=dm, verbose=False)
    metrics = module.last_metrics["test"]
    if module.model.closed_form:
        info = module.closed_form_info
        steps = int(np.max(info["best_iteration"])) if "best_iteration" in info else 1
        stopped = "validation (closed form)" if name != "gbm" else "early stopping (rounds per phenotype)"
    else:
        steps = int(trainer.global_step)
        stopped = "plateau" if stop is not None and stop.wait_count >= stop.patience else "cap"
    res = {
        "r2": {k: v["r2"] for k, v in metrics.items()},
        "pearson": {k: v["pearson"] for k, v in metrics.items()},
        "seconds": seconds,
        "steps": steps,
        "stopped": stopped,
        "n_train": n_train,
        "curve": curve.curve,
        **curve.summary(),
    }
    if module.model.closed_form and "best_iteration" in module.closed_form_info:
        res["rounds"] = module.closed_form_info["best_iteration"]
    if dm.context.blocks is not None:
        res["tokens"] = describe_blocks(dm.context.blocks)
    res["mean_r2"] = _mean(res["r2"].values())
    return res


# ---------------------------------------------------------------------- (a) scaling
def run_scaling(cfg: dict, train_cfg: dict, log) -> list[dict]:
    rows = []
    q, n_eval = cfg["n_qtl"], cfg["n_eval"]
    for a in cfg["shares"]:
        for s in cfg["scalings"]:
            n_train = n_samples_for_scaling(q, s)
            total = n_train + 2 * n_eval
            for seed in cfg["seeds"]:
                data = simulate_genotypes(
                    total,
                    q,
                    n_traits=1,
                    n_qtl=q,
                    additive_share=a,
                    h2=0.9,
                    linked=False,
                    val=n_eval / total,
                    test=n_eval / total,
                    seed=1000 * seed + 17,
                )
                for name in cfg["models"]:
                    r = train_and_test(name, data, train_cfg, seed=seed, batch_size=cfg["batch"])
                    rows.append(
                        {
                            "additive_share": a,
                            "scaling": s,
                            "seed": seed,
                            "model": name,
                            "n_train": r["n_train"],
                            "r2": r["r2"]["trait_0"],
                            "pearson": r["pearson"]["trait_0"],
                            "steps": r["steps"],
                            "stopped": r["stopped"],
                            "seconds": r["seconds"],
                        }
                    )
                log(
                    f"(a) V_A/V_G={a} scaling={s} n_train={n_train} seed={seed}: "
                    + ", ".join(f"{x['model']} {x['r2']:.3f}" for x in rows[-len(cfg["models"]) :])
                )
    return rows


def summarise_scaling(rows: list[dict], cfg: dict) -> dict:
    out = {}
    for a in cfg["shares"]:
        for s in cfg["scalings"]:
            for name in cfg["models"]:
                mine = [r for r in rows if r["additive_share"] == a and r["scaling"] == s and r["model"] == name]
                r2 = [r["r2"] for r in mine]
                out[f"{a}|{s}|{name}"] = {
                    "additive_share": a,
                    "scaling": s,
                    "model": name,
                    "n_train": mine[0]["n_train"],
                    "r2": _mean(r2),
                    "r2_sd": float(np.std(r2, ddof=1)) if len(r2) > 1 else 0.0,
                    "steps": _mean(r["steps"] for r in mine),
                }
    return out


# ---------------------------------------------------------------------- (b) model table
def table_population(t: dict):
    shares = [1.0] * t["n_additive"] + [t["epistatic_share"]] * (t["n_traits"] - t["n_additive"])
    return simulate_genotypes(
        t["n_samples"],
        t["n_loci"],
        n_traits=t["n_traits"],
        n_qtl=t["n_qtl"],
        additive_share=shares,
        h2=t["h2"],
        pleiotropy=t["pleiotropy"],
        linked=True,
        seed=7,
    )


def run_table(t: dict, train_cfg: dict, log) -> dict:
    data = table_population(t)
    out = {"population": {**{k: v for k, v in t.items() if k != "models"}, "split": data.split_sizes()}, "models": {}}
    for name in t["models"]:
        r = train_and_test(
            name,
            data,
            train_cfg,
            seed=0,
            batch_size=t["batch"],
            blocks={"max_tokens": t["max_tokens"]},
            locus_graphs={"ld": TIE_ARMS["LD tie (λ=0.1)"][1]} if name == "cellformer" else None,
            model_args=_tie_args(0.1) if name == "cellformer" else None,
        )
        out["models"][name] = r
        log(
            f"(b) {name}: mean test R² {r['mean_r2']:.3f}; {r['steps']} steps in {r['seconds']:.0f} s "
            f"({r['stopped']}, best val R² {r['best_val_r2']:.3f} at step {r['best_step']})"
        )
    return out


def _tie_args(weight: float) -> dict:
    return {"graph_reg": {"ld": {"layer": 0, "head": 0, "weight": weight, "rows": 32}}}


# ---------------------------------------------------------------------- (c) Bloom-like cross
def run_bloom(b: dict, train_cfg: dict, log) -> dict:
    data = bloom_like_cross(
        seed=11,
        n_samples=b["n_samples"],
        n_markers=b["n_loci"],
        n_qtl=b["n_qtl"],
        additive_share=b["additive_share"],
        h2=b["h2"],
        pleiotropy=b["pleiotropy"],
    )
    blocks = {"max_tokens": b["max_tokens"]}
    out = {
        "population": {
            **{k: v for k, v in b.items() if k not in ("models", "single_trait", "lasso")},
            "split": data.split_sizes(),
        },
        "models": {},
        "single_trait": {},
        "tie": {},
    }
    for name in b["models"]:
        kw = {"model_args": b["lasso"]} if name == "lasso" else {}
        if name == "cellformer":
            kw = {"locus_graphs": {"ld": TIE_ARMS["LD tie (λ=0.1)"][1]}, "model_args": _tie_args(0.1)}
        r = train_and_test(name, data, train_cfg, seed=0, batch_size=b["batch"], blocks=blocks, **kw)
        out["models"][name] = r
        log(
            f"(c) {name}: mean test R² {r['mean_r2']:.3f}; {r['steps']} steps in {r['seconds']:.0f} s "
            f"({r['stopped']}, best val R² {r['best_val_r2']:.3f} at step {r['best_step']})"
        )
    for name in b["single_trait"]:
        per = {}
        for trait in data.phenotype_names:
            r = train_and_test(name, data, train_cfg, seed=0, batch_size=b["batch"], blocks=blocks, phenotypes=[trait])
            per[trait] = {"r2": r["r2"][trait], "steps": r["steps"], "seconds": r["seconds"], "stopped": r["stopped"]}
        out["single_trait"][name] = per
        log(f"(c) {name} single-trait: " + ", ".join(f"{k} {v['r2']:.3f}" for k, v in per.items()))
    for arm, (weight, spec) in TIE_ARMS.items():
        out["tie"][arm] = []
        for seed in b["tie_seeds"]:
            if seed == 0 and arm == "LD tie (λ=0.1)" and "cellformer" in out["models"]:
                r = out["models"]["cellformer"]
            else:
                r = train_and_test(
                    "cellformer",
                    data,
                    train_cfg,
                    seed=seed,
                    batch_size=b["batch"],
                    blocks=blocks,
                    locus_graphs={"ld": spec},
                    model_args=_tie_args(weight),
                )
            out["tie"][arm].append(
                {
                    "seed": seed,
                    "mean_r2": r["mean_r2"],
                    "steps": r["steps"],
                    "stopped": r["stopped"],
                    "seconds": r["seconds"],
                }
            )
            log(f"(c) tie seed {seed} {arm}: mean test R² {r['mean_r2']:.3f}")
    return out


# ---------------------------------------------------------------------- targets and report
def _target(text: str, met: bool, detail: str) -> dict:
    return {"target": text, "met": bool(met), "detail": detail}


def targets(result: dict) -> list[dict]:
    cfg, sc, tab, bl = result["config"], result["scaling_summary"], result["table"], result["bloom"]
    out = []
    # 1. additive traits: the table's additive traits and the scaling cells with V_A/V_G = 1, scaling ≤ 1
    n_add = cfg["table"]["n_additive"]
    add_traits = [f"trait_{i}" for i in range(n_add)]
    add = {m: _mean(r["r2"][t] for t in add_traits) for m, r in tab["models"].items()}
    close = [m for m in ("vanilla_transformer", "canonical_transformer") if m in add]
    ok = all(add[m] >= add["ridge"] - 0.02 for m in close)
    out.append(
        _target(
            "additive traits (model table): vanilla and canonical within 0.02 R² of ridge",
            ok and close,
            f"ridge {add['ridge']:.3f}; "
            + ", ".join(f"{m} {add[m]:.3f} ({add[m] - add['ridge']:+.3f})" for m in close),
        )
    )
    att = [m for m in ATTENTION if m in add]
    out.append(
        _target(
            "additive traits (model table): every attention model R² > 0.5 × ridge's",
            att and all(add[m] > 0.5 * add["ridge"] for m in att),
            f"0.5 × ridge = {0.5 * add['ridge']:.3f}; " + ", ".join(f"{m} {add[m]:.3f}" for m in att),
        )
    )
    s_cfg = cfg["scaling"]
    cells = [(a, s) for a in s_cfg["shares"] if a >= 1.0 for s in s_cfg["scalings"] if s <= 1]
    s_close = [m for m in ("vanilla_transformer", "canonical_transformer") if m in s_cfg["models"]]
    if cells and s_close:
        gaps = {m: _mean(sc[f"{a}|{s}|{m}"]["r2"] - sc[f"{a}|{s}|ridge"]["r2"] for a, s in cells) for m in s_close}
        out.append(
            _target(
                "additive traits (scaling, samples ≥ C(QTL, 2)): vanilla and canonical within 0.02 R² of "
                "ridge (mean over cells and seeds)",
                all(g >= -0.02 for g in gaps.values()),
                ", ".join(f"{m} {g:+.3f}" for m, g in gaps.items()),
            )
        )
    # 2. epistatic traits where samples ≥ C(QTL, 2): best transformer beats ridge and the MLP
    ep_cells = [(a, s) for a in s_cfg["shares"] if a < 1.0 for s in s_cfg["scalings"] if s <= 1]
    s_tr = [m for m in s_cfg["models"] if m in TRANSFORMERS]
    wins, parts = 0, []
    for a, s in ep_cells:
        get = {m: sc[f"{a}|{s}|{m}"]["r2"] for m in s_cfg["models"]}
        best = max(s_tr, key=lambda m: get[m])
        win = get[best] > get["ridge"] and ("mlp" not in get or get[best] > get["mlp"])
        wins += win
        parts.append(
            f"V_A/V_G {a}, scaling {s}: {best} {get[best]:.3f} vs ridge {get['ridge']:.3f}"
            + (f", MLP {get['mlp']:.3f}" if "mlp" in get else "")
            + (" ✓" if win else " ✗")
        )
    ep_traits = [f"trait_{i}" for i in range(n_add, cfg["table"]["n_traits"])]
    ep = {m: _mean(r["r2"][t] for t in ep_traits) for m, r in tab["models"].items()}
    t_tr = [m for m in ep if m in TRANSFORMERS]
    if t_tr:
        best = max(t_tr, key=lambda m: ep[m])
        win = ep[best] > ep["ridge"] and ("mlp" not in ep or ep[best] > ep["mlp"])
        wins += win
        ep_cells.append(("table", 0))
        parts.append(
            f"model table epistatic traits: {best} {ep[best]:.3f} vs ridge {ep['ridge']:.3f}"
            + (f", MLP {ep['mlp']:.3f}" if "mlp" in ep else "")
            + (" ✓" if win else " ✗")
        )
    out.append(
        _target(
            "epistatic traits, samples ≥ C(QTL, 2): the best transformer beats ridge and the MLP (test R²)",
            ep_cells and wins == len(ep_cells),
            f"{wins}/{len(ep_cells)}: " + "; ".join(parts),
        )
    )
    # 3. multi-trait ≥ single-trait (Bloom-like, two correlated traits)
    parts, ok = [], True
    for m, per in bl["single_trait"].items():
        single = _mean(v["r2"] for v in per.values())
        multi = bl["models"][m]["mean_r2"]
        ok &= multi >= single
        parts.append(f"{m} multi {multi:.3f} vs single {single:.3f} ({multi - single:+.3f})")
    out.append(
        _target(
            "multi-trait ≥ single-trait on correlated traits (Bloom-like, mean test R² of the two traits)",
            parts and ok,
            "; ".join(parts),
        )
    )
    # 4. the LD tie on every seed
    tie = {arm: {r["seed"]: r["mean_r2"] for r in rs} for arm, rs in bl["tie"].items()}
    tied = tie["LD tie (λ=0.1)"]
    for other in ("λ = 0", "rewired LD (λ=0.1)"):
        delta = {s: tied[s] - tie[other][s] for s in tied}
        out.append(
            _target(
                f"locus CellFormer: LD tie beats {other} on every seed (Bloom-like, mean test R²)",
                all(d > 0 for d in delta.values()),
                "Δ per seed " + ", ".join(f"{d:+.4f}" for d in delta.values()),
            )
        )
    # 5. GBM vs transformers vs LASSO: stated
    ms = bl["models"]
    tr = [m for m in ms if m in TRANSFORMERS]
    best_tr = max(tr, key=lambda m: ms[m]["mean_r2"]) if tr else None
    contenders = {k: ms[k]["mean_r2"] for k in ("gbm", "lasso") if k in ms}
    if best_tr:
        contenders[best_tr] = ms[best_tr]["mean_r2"]
    winner = max(contenders, key=contenders.get)
    out.append(
        _target(
            "Bloom-like cross: GBM vs the best transformer vs LASSO, the winner stated",
            True,
            f"winner {winner}; " + ", ".join(f"{k} {v:.3f}" for k, v in contenders.items()),
        )
    )
    return out


def _fmt(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _model_rows(models: dict, traits: list[str] | None = None) -> list[str]:
    lines = [
        "| model | mean test R² | steps | stopped | best val R² (step) | validations | tokens | training (s) |",
        "|---|---:|---:|---|---|---:|---:|---:|",
    ]
    for name, r in models.items():
        tokens = r.get("tokens", {}).get("tokens", "markers")
        lines.append(
            f"| {name} | {_fmt(r['mean_r2'])} | {r['steps']} | {r['stopped']} | {_fmt(r['best_val_r2'])} "
            f"({r['best_step']}) | {r['validations']} | {tokens} | {r['seconds']:.0f} |"
        )
    return lines


def write_markdown(path: Path, result: dict) -> None:
    cfg, sc, tab, bl = result["config"], result["scaling_summary"], result["table"], result["bloom"]
    quick = " --quick" if result["mode"] == "quick" else ""
    lines = [
        f"# Genotype → phenotype benchmark ({result['mode']} mode)",
        "",
        f"Measured {result['date']} on {result['machine']['cpus']} CPU cores (shared machine), torch "
        f"{result['machine']['torch']}; total {result['total_seconds'] / 60:.1f} min. "
        f"Reproduce: `python benchmarks/genotype.py{quick}`.",
        "",
        f"Training: validation every epoch (at most every 50 steps); early stopping after "
        f"{cfg['train']['patience']} validations without a lower validation phenotype loss; the best "
        f"validation's weights are tested; caps {cfg['train']['max_epochs']} epochs and "
        f"{cfg['train']['max_seconds']} s per model "
        "(`stopped: cap` = the cap ended the run before the plateau). Ridge / LASSO: λ on validation; GBM: "
        "boosting rounds stopped on validation per phenotype (steps = the most rounds kept).",
        "",
        "## Targets",
        "",
        "| target | result | detail |",
        "|---|---|---|",
    ]
    for t in result["targets"]:
        lines.append(f"| {t['target']} | {'met' if t['met'] else '**missed**'} | {t['detail']} |")
    s = cfg["scaling"]
    lines += [
        "",
        f"## (a) Scaling: test R² (mean ± sd over {len(s['seeds'])} seeds)",
        "",
        f"{s['n_qtl']} unlinked causal loci (every locus causal), one trait, H² 0.9, {s['n_eval']} validation "
        f"and {s['n_eval']} test samples; training samples = C({s['n_qtl']}, 2) / scaling.",
        "",
    ]
    for a in s["shares"]:
        lines += [
            f"**V_A/V_G = {a}**",
            "",
            "| scaling | n_train | " + " | ".join(s["models"]) + " |",
            "|---:|---:|" + "---:|" * len(s["models"]),
        ]
        for x in s["scalings"]:
            cells = [sc[f"{a}|{x}|{m}"] for m in s["models"]]
            lines.append(
                f"| {x} | {cells[0]['n_train']} | "
                + " | ".join(f"{c['r2']:.3f} ± {c['r2_sd']:.3f}" for c in cells)
                + " |"
            )
        lines.append("")
    t = cfg["table"]
    pop = tab["population"]
    lines += [
        "## (b) Model table",
        "",
        f"{t['n_samples']} simulated F1 segregants × {t['n_loci']} linked loci (16 chromosomes), {t['n_traits']} "
        f"traits sharing {t['n_qtl']} QTL (effect correlation {t['pleiotropy']}, H² {t['h2']}): trait_0…"
        f"trait_{t['n_additive'] - 1} additive (V_A/V_G = 1), the others V_A/V_G {t['epistatic_share']}; split "
        f"{pop['split']}. Token models read {t['max_tokens']} linkage blocks (training split).",
        "",
    ]
    lines += _model_rows(tab["models"])
    n_add = t["n_additive"]
    lines += ["", "| model | additive traits R² | epistatic traits R² |", "|---|---:|---:|"]
    for name, r in tab["models"].items():
        vals = list(r["r2"].values())
        lines.append(f"| {name} | {_fmt(_mean(vals[:n_add]))} | {_fmt(_mean(vals[n_add:]))} |")
    b = cfg["bloom"]
    lines += [
        "",
        "## (c) Bloom-like cross",
        "",
        f"{b['n_samples']} segregants × {b['n_loci']} markers, {b['n_qtl']} QTL with a disjoint epistatic "
        f"pairing (V_A/V_G {b['additive_share']}, H² {b['h2']}), two traits with effect correlation "
        f"{b['pleiotropy']}; "
        f"split {bl['population']['split']}. Token models read {b['max_tokens']} linkage blocks.",
        "",
    ]
    lines += _model_rows(bl["models"])
    lines += ["", "Per-trait test R²:", "", "| model | trait_0 | trait_1 |", "|---|---:|---:|"]
    for name, r in bl["models"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(v) for v in r["r2"].values()) + " |")
    if bl["single_trait"]:
        lines += [
            "",
            "Multi-trait (one model, both traits) vs single-trait (one model per trait), test R²:",
            "",
            "| model | multi trait_0 | multi trait_1 | single trait_0 | single trait_1 |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, per in bl["single_trait"].items():
            multi = bl["models"][name]["r2"]
            lines.append(
                f"| {name} | "
                + " | ".join(_fmt(multi[k]) for k in per)
                + " | "
                + " | ".join(_fmt(v["r2"]) for v in per.values())
                + " |"
            )
    lines += [
        "",
        "Locus CellFormer, head 0 of layer 0 tied to the LD graph of the blocks (training split, top 8):",
        "",
        "| arm | mean test R² per seed | mean |",
        "|---|---|---:|",
    ]
    for arm, rs in bl["tie"].items():
        lines.append(
            f"| {arm} | " + ", ".join(f"{r['mean_r2']:.3f}" for r in rs) + f" | {_mean(r['mean_r2'] for r in rs):.3f} |"
        )
    path.write_text("\n".join(lines) + "\n")


def plot(path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, r in result["table"]["models"].items():
        if r["curve"] and len(r["curve"]) > 1:
            axes[0].plot([c["step"] for c in r["curve"]], [c["val_r2"] for c in r["curve"]], label=name)
    axes[0].set_xlabel("optimiser step")
    axes[0].set_ylabel("validation mean R²")
    axes[0].set_title("(b) validation curves")
    axes[0].legend(fontsize=6)
    parts = ((axes[1], result["table"], "(b) model table"), (axes[2], result["bloom"], "(c) Bloom-like"))
    for ax, part, title in parts:
        names = list(part["models"])
        ax.barh(names, [part["models"][n]["mean_r2"] for n in names], color="#3b6ea8")
        ax.set_xlabel("mean test R²")
        ax.set_title(title)
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds): the smoke test")
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    quiet()
    mode = "quick" if args.quick else "default"
    cfg = json.loads(json.dumps(MODES[mode]))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", flush=True)

    threads = torch.get_num_threads()
    # one thread: on 2 shared cores, 2 OpenMP threads were 5-60× slower per step than one (they spin-wait for a
    # core another job holds); GBM uses one thread by default for the same reason
    torch.set_num_threads(1)
    scaling_rows = run_scaling(cfg["scaling"], cfg["train"], log)
    table = run_table(cfg["table"], cfg["train"], log)
    bloom = run_bloom(cfg["bloom"], cfg["train"], log)
    torch.set_num_threads(threads)
    result = {
        "mode": mode,
        "date": time.strftime("%Y-%m-%d"),
        "config": cfg,
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()},
        "scaling_rows": scaling_rows,
        "scaling_summary": summarise_scaling(scaling_rows, cfg["scaling"]),
        "table": table,
        "bloom": bloom,
    }
    result["targets"] = targets(result)
    result["total_seconds"] = time.perf_counter() - t0
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
