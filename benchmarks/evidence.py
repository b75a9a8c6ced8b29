"""Evidence harness: does the graph prior help CellFormer predict fitness, digenic ε and trigenic τ?

Arms (every arm of one seed sees the same data, the same train/val/test records and, for the CellFormer
arms, the same initial weights and batch order):

* ``no_graph``       (a) CellFormer with λ = 0: same architecture, no graph term;
* ``true_graph``     (b) graph term on the *truth graph* (the graph the simulated interactions follow);
* ``rewired_graph``  (c) graph term on a degree-preserving, fully rewired copy of it (random-graph control);
* ``noisy_graph``    (d) graph term on a copy with ``--noise-share`` of its edges rewired;
* ``dango``          DANGO-style baseline given the truth graph;
* ``additive``       the no-interaction baseline (constant ε/τ: its ε/τ Pearson is undefined).

For each seed × training fraction × arm it trains with Lightning (:class:`PhenotypeModule`), selects the
step with the best mean validation Pearson (evaluated every ``--eval-every`` steps), and reports test
Pearson per phenotype, plus for the CellFormer arms the attention–graph alignment of the regularised
head (attention mass on TRUE-graph neighbours and on the graph it was trained on; chance ≈ degree / N).

Modes::

    python benchmarks/evidence.py --mode quick              # CPU, < 15 min: simulated screen on a sub-genome
    python benchmarks/evidence.py --mode full --device cuda # the embedded full-yeast screen (data/yeast_sim.h5)
    python benchmarks/evidence.py --mode full --dataset my.h5 --truth-graph string_database --device cuda

``quick`` builds a smaller screen with the same simulator (:func:`cellformer.data.simulate.simulate`,
default mechanism) on a sub-genome of about ``--n-genes`` genes: whole Louvain modules of the truth graph
(STRING v9.1 "database") drawn in seeded random order (``--subgenome modules``, the default; ``bfs`` takes a
breadth-first ball around the highest-degree gene instead), with the induced subgraph as truth graph.
``full`` (and ``--dataset``) uses a stored dataset and its stored split.
Outputs: ``benchmarks/results/evidence_<tag>.{md,json,png}``.

Before the model drew its gene identity embeddings at unit scale (it used std 0.02) most CellFormer runs
collapsed (gene embeddings over-smoothed); ``--gene-embed-init-std`` re-draws them (all CellFormer arms
alike) to reproduce that diagnosis. ``--lambda 1.0 --rows 0 --steps 1000`` gives a prior strong enough to
align the head (see ``benchmarks/EVIDENCE.md``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cellformer.data.dataset import PerturbationData, PerturbationDataset, identity_collate  # noqa: E402
from cellformer.genome import Genome  # noqa: E402
from cellformer.graphs import GeneGraph, GraphSet  # noqa: E402
from cellformer.training.metrics import regression_metrics  # noqa: E402

CELLFORMER_ARMS = ("no_graph", "true_graph", "rewired_graph", "noisy_graph")
BASELINE_ARMS = ("dango", "additive")
ARMS = CELLFORMER_ARMS + BASELINE_ARMS
ARM_LABELS = {
    "no_graph": "(a) CellFormer, λ=0",
    "true_graph": "(b) CellFormer + true graph",
    "rewired_graph": "(c) CellFormer + rewired graph",
    "noisy_graph": "(d) CellFormer + noisy graph",
    "dango": "DANGO (true graph)",
    "additive": "additive",
}
#: per-mode defaults (any of them can be overridden on the command line)
MODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "quick": {
        "steps": 300,
        "eval_every": 50,
        "train_fractions": "0.05,0.2,0.8",
        "seeds": "0,1,2",
        "d_model": 64,
        "batch_size": 256,
        "device": "cpu",
    },
    "full": {
        "steps": 3000,
        "eval_every": 250,
        "train_fractions": "0.05,0.2,0.8",
        "seeds": "0,1,2",
        "d_model": 64,
        "batch_size": 256,
        "device": "cuda",
    },
}


# ---------------------------------------------------------------------- problem
@dataclass
class Problem:
    """A dataset with its genome and truth graph, and the stored train/val/test record indices."""

    genome: Genome
    truth: GeneGraph
    data: PerturbationData
    split: dict[str, np.ndarray]
    description: str
    extra: dict[str, Any] = field(default_factory=dict)


def sub_genome_genes(truth: GeneGraph, n_genes: int, kind: str = "modules", seed: int = 0) -> np.ndarray:
    """Sorted indices of a sub-genome of about ``n_genes`` genes of the truth graph.

    * ``modules`` (default): whole Louvain communities of the full truth graph
      (:func:`~cellformer.data.simulate.graph_modules`, the simulator's own module finder), drawn in a
      seeded random order among those of size >= 2 until ``n_genes`` is reached. Genes keep their
      within-module neighbourhoods and the induced subgraph has about the mean degree of the full graph.
    * ``bfs``: the first ``n_genes`` genes of a breadth-first search from the highest-degree gene (a
      connected, very dense core: a degree-preserving rewiring of it keeps many true edges).
    """
    if kind == "bfs":
        from scipy.sparse.csgraph import breadth_first_order

        hub = int(truth.degree().argmax())
        return np.sort(breadth_first_order(truth.adj, hub, directed=False, return_predecessors=False)[:n_genes])
    if kind != "modules":
        raise ValueError(f"sub-genome kind {kind!r}: expected modules or bfs")
    from cellformer.data.simulate import graph_modules

    module = graph_modules(truth, seed=seed)
    size = np.bincount(module)
    keep: list[int] = []
    for m in np.random.default_rng([seed, 11]).permutation(np.flatnonzero(size >= 2)):
        if len(keep) >= n_genes:
            break
        keep.extend(np.flatnonzero(module == m).tolist())
    return np.sort(np.asarray(keep, dtype=np.int64))


def sub_genome_problem(
    n_genes: int,
    n_doubles: int,
    n_triples: int,
    sim_seed: int = 0,
    truth_graph: str = "string_database",
    kind: str = "modules",
) -> Problem:
    """Quick mode: simulate a screen (default mechanism) on a sub-genome of the yeast truth graph.

    The genes come from :func:`sub_genome_genes`; the sub-genome keeps their real sequence features and
    the truth graph is the induced subgraph. The simulator then finds its own modules on that subgraph.
    """
    from cellformer.data.simulate import simulate
    from cellformer.genome import yeast_genome
    from cellformer.graphs import yeast_graphs

    full = yeast_genome()
    g = yeast_graphs([truth_graph], full)[0][truth_graph]
    keep = sub_genome_genes(g, n_genes, kind, sim_seed)
    genome = Genome(
        [full.genes[i] for i in keep],
        [full.aliases[i] for i in keep],
        features=full.features[keep],
        name=f"yeast_{kind}{len(keep)}",
    )
    truth = GeneGraph(truth_graph, g.adj[keep][:, keep], g.directed)
    data = simulate(genome, GraphSet([truth], genome.hash), truth_graph, n_doubles=n_doubles, n_triples=n_triples,
                    seed=sim_seed)  # fmt: skip
    stats = truth.degree_stats()
    how = (
        f"whole Louvain modules (size >= 2) of the full {truth_graph!r} graph drawn in seeded random order "
        f"until >= {n_genes} genes"
        if kind == "modules"
        else f"the first {n_genes} genes of a breadth-first search of {truth_graph!r} from its highest-degree gene"
    )
    desc = (
        f"quick mode: sub-genome of {len(keep)} yeast genes = {how}; truth graph = induced subgraph "
        f"({truth.num_edges} edges, mean degree {stats['mean_degree']:.1f}, {stats['nodes_with_edges']} genes "
        f"with edges); {data.description}; default simulator mechanism; stored random 80/10/10 split"
    )
    return Problem(genome, truth, data, _stored_split(data), desc, {"genes": list(genome.genes)})


def dataset_problem(path: str | Path, genome_spec: str, truth_spec: str | None) -> Problem:
    """A stored dataset (HDF5) with its genome (``yeast`` or a gene TSV) and truth graph (name or name=path)."""
    from cellformer.genome import load_genome
    from cellformer.graphs import load_graphs

    path = Path(path)
    if not path.exists():
        if path.resolve() == (ROOT / "data" / "yeast_sim.h5").resolve():
            from cellformer.data.simulate import build_default_dataset

            build_default_dataset(path)
        else:
            raise FileNotFoundError(f"dataset {path} does not exist")
    data = PerturbationData.load(path)
    genome = load_genome(genome_spec)
    if data.genome_hash and data.genome_hash != genome.hash:
        raise ValueError(f"dataset {path} was built for another genome than {genome_spec!r} (hash mismatch)")
    truth_spec = truth_spec or data.attrs.get("truth_graph")
    if not truth_spec:
        raise ValueError(f"{path} records no truth graph: pass --truth-graph NAME (or name=edges.tsv)")
    truth = load_graphs([truth_spec], genome)[truth_spec.split("=", 1)[0]]
    if data.split is None:
        raise ValueError(f"{path} stores no train/val/test split")
    desc = f"dataset {path.name}: {data.description or len(data)} ({len(genome)} genes); truth graph {truth.name!r}"
    return Problem(genome, truth, data, _stored_split(data), desc)


def _stored_split(data: PerturbationData) -> dict[str, np.ndarray]:
    from cellformer.data.dataset import SPLITS

    return {k: np.flatnonzero(data.split == v) for k, v in SPLITS.items()}


def train_subset(train: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The first ``fraction`` of a seeded permutation of the training records (nested across fractions)."""
    perm = np.random.default_rng([seed, 7]).permutation(len(train))
    return np.sort(train[perm[: max(1, int(round(fraction * len(train))))]])


def control_graphs(truth: GeneGraph, seed: int, noise_share: float) -> dict[str, GeneGraph]:
    """The truth graph and its controls, keyed by arm: fully rewired and ``noise_share`` rewired."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "true_graph": truth,
            "rewired_graph": truth.rewired(1.0, seed=seed, name=f"{truth.name}_rewired"),
            "noisy_graph": truth.rewired(noise_share, seed=seed, name=f"{truth.name}_noisy"),
        }


def edge_overlap(a: GeneGraph, b: GeneGraph) -> float:
    """Share of the edges of ``a`` that are also edges of ``b``."""
    if a.adj.nnz == 0:
        return float("nan")
    both = a.adj.astype(bool).multiply(b.adj.astype(bool))
    return float(both.nnz / a.adj.nnz)


# ---------------------------------------------------------------------- training one arm
def _loader(data: PerturbationData, rows: np.ndarray, batch_size: int, shuffle: bool):
    from torch.utils.data import DataLoader

    return DataLoader(
        PerturbationDataset(data, rows), batch_size=batch_size, shuffle=shuffle, collate_fn=identity_collate
    )


@torch.no_grad()
def predict(model: torch.nn.Module, data: PerturbationData, rows: np.ndarray, device: str) -> np.ndarray:
    """Predictions (len(rows), P) of ``model`` in eval mode."""
    was = model.training
    model.eval()
    ds = PerturbationDataset(data, rows)
    out = []
    for lo in range(0, len(rows), 2048):
        batch = ds.collate_rows(rows[lo : lo + 2048]).to(device)
        kwargs = {"graph_losses": False} if _is_cellformer(model) else {}
        out.append(model(batch, **kwargs).pred.float().cpu().numpy())
    model.train(was)
    return np.concatenate(out) if out else np.zeros((0, len(data.phenotype_names)), np.float32)


def _is_cellformer(model: torch.nn.Module) -> bool:
    from cellformer.models.cellformer import CellFormer

    return isinstance(model, CellFormer)


def _mean_pearson(metrics: dict[str, dict[str, float]]) -> float:
    vals = [m["pearson"] for m in metrics.values() if not math.isnan(m["pearson"])]
    return float(np.mean(vals)) if vals else -math.inf


@dataclass
class RunConfig:
    """Training settings shared by every arm."""

    steps: int
    eval_every: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    d_model: int
    n_layers: int
    n_heads: int
    dropout: float
    reg_layer: int
    reg_head: int
    reg_weight: float
    reg_rows: int | None
    device: str
    gene_embed_init_std: float | None = None


def model_spec(arm: str, graph_name: str | None, cfg: RunConfig) -> tuple[str, dict[str, Any]]:
    """Registered model name and its arguments for an arm."""
    if arm == "additive":
        return "additive", {}
    if arm == "dango":
        return "dango", {"d": cfg.d_model, "heads": 4}
    reg = {}
    if arm != "no_graph":
        reg = {graph_name: {"layer": cfg.reg_layer, "head": cfg.reg_head, "weight": cfg.reg_weight,
                            "rows": cfg.reg_rows}}  # fmt: skip
    args = {"d_model": cfg.d_model, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "dropout": cfg.dropout,
            "pool": "mean", "graph_reg": reg}  # fmt: skip
    return "cellformer", args


def run_arm(
    problem: Problem,
    arm: str,
    graphs: dict[str, GeneGraph],
    train_rows: np.ndarray,
    seed: int,
    cfg: RunConfig,
    keep_model: bool = False,
) -> dict[str, Any]:
    """Train one arm with Lightning, select the best validation step, return test metrics and alignment.

    ``keep_model`` adds the trained (best-validation) model under ``"_model"`` (for diagnostics).
    """
    import logging

    import lightning as L

    from cellformer.data.context import DataContext

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from cellformer.training.module import PhenotypeModule

    t0 = time.perf_counter()
    truth = problem.truth
    trained = graphs.get(arm)
    if arm in CELLFORMER_ARMS:  # every CellFormer arm sees all three graphs (monitoring), regularises at most one
        gs = GraphSet(list(graphs.values()), problem.genome.hash)
    else:
        gs = GraphSet([truth], problem.genome.hash)
    names = list(problem.data.phenotype_names)
    name, args = model_spec(arm, None if trained is None else trained.name, cfg)
    L.seed_everything(seed, verbose=False)
    module = PhenotypeModule(
        model=name,
        model_args=args,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=min(cfg.warmup_steps, max(1, cfg.steps // 5)),
        context=DataContext(problem.genome, gs, names),
    )
    if cfg.gene_embed_init_std is not None and arm in CELLFORMER_ARMS:
        # diagnostic work-around (same for every CellFormer arm of a seed): re-draw the gene identity embeddings
        torch.nn.init.normal_(module.model.gene_embed.weight, std=cfg.gene_embed_init_std)
    data, val_rows, test_rows = problem.data, problem.split["val"], problem.split["test"]
    best: dict[str, Any] = {"score": -math.inf, "step": 0, "state": None}
    curve: list[tuple[int, float]] = []

    class SelectBest(L.Callback):
        """Evaluate the validation Pearson every ``eval_every`` steps and keep the best weights."""

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            step = trainer.global_step
            if step % cfg.eval_every and step != cfg.steps:
                return
            pred = predict(pl_module.model, data, val_rows, cfg.device)
            score = _mean_pearson(regression_metrics(pred, data.phenotypes[val_rows], names))
            curve.append((step, score))
            if score > best["score"] or best["state"] is None:
                best.update(score=score, step=step, state=copy.deepcopy(pl_module.model.state_dict()))

    class Batches(L.LightningDataModule):
        def train_dataloader(self):
            return _loader(data, train_rows, cfg.batch_size, shuffle=True)

        def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
            return batch.to(device)

    trainer = L.Trainer(
        accelerator="gpu" if cfg.device.startswith("cuda") else "cpu",
        devices=1,
        max_steps=cfg.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        gradient_clip_val=1.0,
        callbacks=[SelectBest()],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=Batches())
    model = module.model.to(cfg.device)
    last = regression_metrics(predict(model, data, test_rows, cfg.device), data.phenotypes[test_rows], names)
    model.load_state_dict(best["state"])
    test = regression_metrics(predict(model, data, test_rows, cfg.device), data.phenotypes[test_rows], names)
    result: dict[str, Any] = {
        "arm": arm,
        "seed": seed,
        "n_train": int(len(train_rows)),
        "best_step": int(best["step"]),
        "best_val_mean_pearson": float(best["score"]),
        "val_curve": curve,
        "test": test,
        "test_last_step": last,
    }
    if arm in CELLFORMER_ARMS:
        result["alignment"] = alignment(model, truth, trained, cfg)
    if trained is not None:
        result["trained_graph_edge_overlap_with_truth"] = edge_overlap(trained, truth)
    result["wall_s"] = time.perf_counter() - t0
    if keep_model:
        result["_model"] = model
    return result


@torch.no_grad()
def alignment(model, truth: GeneGraph, trained: GeneGraph | None, cfg: RunConfig) -> dict[str, float]:
    """Attention mass of the (would-be) regularised head on true-graph neighbours and on its trained graph.

    All valid rows are used. ``*_other_heads`` is the mean over the other heads of that layer (a control);
    ``chance_true`` is the mean neighbour share deg_i / N over the valid rows of the truth graph.
    """
    model.eval()
    enc = model.encode_genome()
    layer, head = cfg.reg_layer, cfg.reg_head
    others = [h for h in range(cfg.n_heads) if h != head]
    deg = truth.degree()
    out = {
        "true": float(model.attention_alignment(truth.name, layer, head, enc=enc)),
        "true_other_heads": float(
            np.mean([float(model.attention_alignment(truth.name, layer, h, enc=enc)) for h in others])
        )
        if others
        else float("nan"),
        "chance_true": float(np.mean(deg[deg > 0]) / truth.num_nodes),
        "trained": float("nan"),
    }
    if trained is not None:
        out["trained"] = float(model.attention_alignment(trained.name, layer, head, enc=enc))
    return out


# ---------------------------------------------------------------------- summaries
def _fmt(vals: Sequence[float], digits: int = 3) -> str:
    v = np.asarray([x for x in vals if x is not None and not math.isnan(x)], dtype=float)
    if len(v) == 0:
        return "n/a"
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def summarise(runs: list[dict], fractions: list[float], arms: list[str], phenos: list[str]) -> dict:
    """Per arm × fraction: lists of test Pearson per phenotype and alignment values (over seeds)."""
    out: dict = {}
    for arm in arms:
        for f in fractions:
            rs = [r for r in runs if r["arm"] == arm and r["train_fraction"] == f]
            if not rs:
                continue
            entry = {p: [r["test"][p]["pearson"] for r in rs] for p in phenos}
            if arm in CELLFORMER_ARMS:
                entry["align_true"] = [r["alignment"]["true"] for r in rs]
                entry["align_trained"] = [r["alignment"]["trained"] for r in rs]
                entry["align_true_other_heads"] = [r["alignment"]["true_other_heads"] for r in rs]
            entry["n_train"] = rs[0]["n_train"]
            out[f"{arm}@{f}"] = entry
    return out


def paired_differences(runs: list[dict], fractions: list[float], phenos: list[str], a: str, b: str) -> dict:
    """Per fraction and phenotype: per-seed test-Pearson differences ``a − b`` (same split, same init)."""
    out: dict = {}
    for f in fractions:
        by_seed = {}
        for r in runs:
            if r["train_fraction"] == f and r["arm"] in (a, b):
                by_seed.setdefault(r["seed"], {})[r["arm"]] = r
        for p in phenos:
            d = [s[a]["test"][p]["pearson"] - s[b]["test"][p]["pearson"] for s in by_seed.values() if len(s) == 2]
            out[f"{f}/{p}"] = d
    return out


def markdown(report: dict) -> str:
    """The markdown report: settings, Pearson table, paired differences, alignment table."""
    cfg, phenos, fractions, arms = report["config"], report["phenotypes"], report["train_fractions"], report["arms"]
    summ = report["summary"]
    std = cfg.get("gene_embed_init_std")
    embed_init = "model default (std 1.0)" if std is None else f"RE-DRAWN N(0, {std:g}²) (diagnostic)"
    lines = [
        f"# Graph-prior evidence ({report['tag']})",
        "",
        f"**Data.** {report['problem']}",
        "",
        f"**Training.** {cfg['steps']} steps, batch {cfg['batch_size']}, AdamW lr {cfg['lr']} (warm-up + cosine), "
        f"CellFormer d_model {cfg['d_model']}, {cfg['n_layers']} layers, {cfg['n_heads']} heads, dropout "
        f"{cfg['dropout']}; graph term on layer {cfg['reg_layer']} head {cfg['reg_head']}, λ = {cfg['reg_weight']}, "
        f"{cfg['reg_rows'] or 'all valid'} rows/step; gene-embedding init {embed_init}; "
        f"noisy graph = {cfg['noise_share']:g} of "
        "edges rewired. Model selection: best "
        f"mean validation Pearson, evaluated every {cfg['eval_every']} steps. Seeds {report['seeds']} (seed = "
        "training subset, init, batch order, control rewiring; the test set is fixed). Device "
        f"{cfg['device']}, wall time {report['wall_s'] / 60:.1f} min.",
        "",
        "## Test Pearson (mean ± sd over seeds)",
        "",
        "| arm | train fraction | n train | " + " | ".join(phenos) + " |",
        "|---|---:|---:|" + "---:|" * len(phenos),
    ]
    for arm in arms:
        for f in fractions:
            e = summ.get(f"{arm}@{f}")
            if e is None:
                continue
            cells = " | ".join(_fmt(e[p]) for p in phenos)
            lines.append(f"| {ARM_LABELS.get(arm, arm)} | {f:g} | {e['n_train']} | {cells} |")
    unavailable = report.get("unavailable", {})
    for arm, why in unavailable.items():
        lines.append(f"| {ARM_LABELS.get(arm, arm)} | – | – | " + " | ".join("unavailable" for _ in phenos) + " |")
        lines.append("")
        lines.append(f"_{arm} unavailable: {why}_")
    if "additive" in arms:
        lines += ["", "_additive predicts a constant ε and τ by construction: its ε/τ Pearson is undefined (n/a)._"]
    for a, b in (("true_graph", "no_graph"), ("true_graph", "rewired_graph"), ("true_graph", "noisy_graph")):
        if a in arms and b in arms:
            d = report["paired"][f"{a}-{b}"]
            lines += ["", f"## Paired difference {a} − {b} (test Pearson, per seed, mean ± sd)", ""]
            lines += ["| train fraction | " + " | ".join(phenos) + " |", "|---:|" + "---:|" * len(phenos)]
            for f in fractions:
                lines.append(f"| {f:g} | " + " | ".join(_fmt(d[f"{f}/{p}"]) for p in phenos) + " |")
    cf = [a for a in arms if a in CELLFORMER_ARMS]
    if cf:
        lines += [
            "",
            f"## Attention alignment of layer {cfg['reg_layer']} head {cfg['reg_head']} (best-val weights)",
            "",
            "Mean attention mass on graph neighbours over all valid rows; chance (deg/N on the truth graph) "
            f"= {report['chance_true']:.3f}. 'other heads' = mean of the unregularised heads of that layer "
            "on the truth graph.",
            "",
            "| arm | train fraction | on TRUE graph | on its trained graph | other heads on TRUE |",
            "|---|---:|---:|---:|---:|",
        ]
        for arm in cf:
            for f in fractions:
                e = summ.get(f"{arm}@{f}")
                if e is None:
                    continue
                lines.append(
                    f"| {ARM_LABELS[arm]} | {f:g} | {_fmt(e['align_true'])} | {_fmt(e['align_trained'])} | "
                    f"{_fmt(e['align_true_other_heads'])} |"
                )
        ov = report.get("edge_overlap", {})
        if ov:
            lines += ["", "Edge overlap of the trained graph with the truth graph: "
                      + ", ".join(f"{k} {v:.2f}" for k, v in ov.items()) + "."]  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Pearson vs train fraction per arm (mean ± sd error bars), one panel per phenotype."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phenos, fractions, summ = report["phenotypes"], report["train_fractions"], report["summary"]
    fig, axes = plt.subplots(1, len(phenos), figsize=(4.6 * len(phenos), 4.2), squeeze=False)
    for ax, p in zip(axes[0], phenos, strict=True):
        for k, arm in enumerate(report["arms"]):
            xs, ms, ss = [], [], []
            for f in fractions:
                e = summ.get(f"{arm}@{f}")
                v = [x for x in (e[p] if e else []) if x is not None and not math.isnan(x)]
                if v:
                    xs.append(f * (1 + 0.03 * (k - len(report["arms"]) / 2)))  # small dodge
                    ms.append(np.mean(v))
                    ss.append(np.std(v, ddof=1) if len(v) > 1 else 0.0)
            if xs:
                ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, label=ARM_LABELS.get(arm, arm))
        ax.set_xscale("log")
        ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
        ax.minorticks_off()
        ax.set_xlabel("training fraction")
        ax.set_ylabel("test Pearson")
        ax.set_title(p)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=min(len(labels), 6) or 1)
    fig.suptitle(f"graph-prior evidence ({report['tag']}): test Pearson, mean ± sd over seeds", fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# ---------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Run `--mode quick` on CPU (< 15 min), `--mode full --device cuda` on a GPU. "
        "Outputs benchmarks/results/evidence_<tag>.{md,json,png}.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--mode", choices=sorted(MODE_DEFAULTS), default="quick",
                   help="quick: simulated sub-genome screen on CPU; full: a stored dataset (default the full "
                   "embedded yeast screen) with a larger step budget")  # fmt: skip
    p.add_argument("--dataset", default=None, help="HDF5 dataset (full mode default: data/yeast_sim.h5)")
    p.add_argument("--genome", default="yeast", help="genome of --dataset: 'yeast' or a gene-table TSV")
    p.add_argument("--truth-graph", default=None,
                   help="graph of arm (b): a shipped yeast graph name or name=edges.tsv (default: the dataset's "
                   "recorded truth graph; quick mode: string_database)")  # fmt: skip
    p.add_argument("--n-genes", type=int, default=600, help="quick mode: genes in the sub-genome")
    p.add_argument("--subgenome", choices=("modules", "bfs"), default="modules",
                   help="quick mode: how the sub-genome is chosen (modules: whole Louvain modules of the truth "
                   "graph; bfs: a BFS ball around its highest-degree gene)")  # fmt: skip
    p.add_argument("--n-doubles", type=int, default=9000, help="quick mode: simulated double mutants")
    p.add_argument("--n-triples", type=int, default=3000, help="quick mode: simulated triple mutants")
    p.add_argument("--sim-seed", type=int, default=0, help="quick mode: simulator seed")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma list among {', '.join(ARMS)}")
    p.add_argument("--train-fractions", default=None, help="comma list of training-set fractions")
    p.add_argument("--seeds", default=None, help="comma list of seeds (>= 3 for error bars)")
    p.add_argument("--noise-share", type=float, default=0.3, help="share of edges rewired in the noisy graph")
    p.add_argument("--steps", type=int, default=None, help="optimisation steps per run")
    p.add_argument("--eval-every", type=int, default=None, help="validation interval (steps) for model selection")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--d-model", type=int, default=None)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--reg-layer", type=int, default=0, help="layer of the regularised head")
    p.add_argument("--reg-head", type=int, default=0, help="regularised head")
    p.add_argument("--lambda", dest="reg_weight", type=float, default=0.1, help="graph-term weight λ (arms b-d)")
    p.add_argument("--rows", type=int, default=128, help="graph rows sampled per step (0 = all valid rows)")
    p.add_argument("--gene-embed-init-std", type=float, default=None,
                   help="diagnostic: re-initialise CellFormer's gene identity embeddings N(0, std²) after "
                   "construction (all CellFormer arms alike); default: the model's own init (std 1.0; "
                   "std 0.02 reproduces the collapse described in benchmarks/EVIDENCE.md)")  # fmt: skip
    p.add_argument("--device", default=None, help="cpu or cuda")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads on CPU (1 is fastest on a shared 2-core machine)")  # fmt: skip
    p.add_argument("--tag", default=None, help="output name: evidence_<tag>.* (default: the mode)")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    for k, v in MODE_DEFAULTS[args.mode].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def check_arms(arms: list[str]) -> dict[str, str]:
    """Arms whose model cannot be imported (baselines still being written) -> the reason."""
    from cellformer.models.registry import model_class

    bad = {}
    for arm in arms:
        if arm in BASELINE_ARMS:
            try:
                model_class(arm)
            except Exception as e:  # noqa: BLE001 - any import failure makes the arm unavailable
                bad[arm] = f"{type(e).__name__}: {e}"
    return bad


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise SystemExit(f"unknown arms {sorted(unknown)}; choose from {', '.join(ARMS)}")
    fractions, seeds = _floats(args.train_fractions), _ints(args.seeds)
    tag = args.tag or (args.mode if args.dataset is None else f"{args.mode}_{Path(args.dataset).stem}")

    print(f"[evidence] building the problem ({args.mode} mode)", flush=True)
    if args.mode == "quick" and args.dataset is None:
        problem = sub_genome_problem(args.n_genes, args.n_doubles, args.n_triples, args.sim_seed,
                                     args.truth_graph or "string_database", args.subgenome)  # fmt: skip
    else:
        problem = dataset_problem(args.dataset or ROOT / "data" / "yeast_sim.h5", args.genome, args.truth_graph)
    print(f"[evidence] {problem.description}", flush=True)
    unavailable = check_arms(arms)
    for arm, why in unavailable.items():
        print(f"[evidence] arm {arm} unavailable ({why})", flush=True)
    run_arms = [a for a in arms if a not in unavailable]

    cfg = RunConfig(
        steps=args.steps, eval_every=args.eval_every, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, d_model=args.d_model,
        n_layers=args.n_layers, n_heads=args.n_heads, dropout=args.dropout, reg_layer=args.reg_layer,
        reg_head=args.reg_head, reg_weight=args.reg_weight, reg_rows=args.rows or None, device=args.device,
        gene_embed_init_std=args.gene_embed_init_std,
    )  # fmt: skip
    phenos = list(problem.data.phenotype_names)
    runs: list[dict] = []
    overlaps: dict[str, list[float]] = {}
    jobs = [(s, f, a) for s in seeds for f in fractions for a in run_arms]
    bar = tqdm(jobs, desc="evidence runs", file=sys.stdout, mininterval=5)
    graphs_by_seed: dict[int, dict[str, GeneGraph]] = {}
    for seed, frac, arm in bar:
        if seed not in graphs_by_seed:
            graphs_by_seed[seed] = control_graphs(problem.truth, seed, args.noise_share)
            for k in ("rewired_graph", "noisy_graph"):
                overlaps.setdefault(k, []).append(edge_overlap(graphs_by_seed[seed][k], problem.truth))
        rows = train_subset(problem.split["train"], frac, seed)
        r = run_arm(problem, arm, graphs_by_seed[seed], rows, seed, cfg)
        r["train_fraction"] = frac
        runs.append(r)
        pear = " ".join(f"{p}={r['test'][p]['pearson']:.3f}" for p in phenos)
        al = r.get("alignment")
        al_s = f" align(true)={al['true']:.3f} align(trained)={al['trained']:.3f}" if al else ""
        bar.write(f"  seed {seed} frac {frac:g} {arm:14s} n={r['n_train']:6d} best@{r['best_step']:5d} "
                  f"{pear}{al_s} ({r['wall_s']:.1f}s)")  # fmt: skip

    pairs = [("true_graph", "no_graph"), ("true_graph", "rewired_graph"), ("true_graph", "noisy_graph")]
    deg = problem.truth.degree()
    report = {
        "tag": tag,
        "mode": args.mode,
        "problem": problem.description,
        "phenotypes": phenos,
        "train_fractions": fractions,
        "seeds": seeds,
        "arms": run_arms,
        "unavailable": unavailable,
        "config": {**vars(cfg), "noise_share": args.noise_share, "threads": args.threads},
        "command": "python benchmarks/evidence.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()},
        "chance_true": float(np.mean(deg[deg > 0]) / problem.truth.num_nodes),
        "edge_overlap": {k: float(np.mean(v)) for k, v in overlaps.items()},
        "runs": runs,
        "summary": summarise(runs, fractions, run_arms, phenos),
        "paired": {f"{a}-{b}": paired_differences(runs, fractions, phenos, a, b) for a, b in pairs},
        "wall_s": time.perf_counter() - t0,
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(report)
    (out / f"evidence_{tag}.md").write_text(md)
    (out / f"evidence_{tag}.json").write_text(json.dumps(_clean(report), indent=1))
    plot(report, out / f"evidence_{tag}.png")
    print(md)
    print(f"[evidence] wrote {out}/evidence_{tag}.{{md,json,png}} in {report['wall_s'] / 60:.1f} min", flush=True)
    return report


if __name__ == "__main__":
    main()
