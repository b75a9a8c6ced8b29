"""Evidence harness: is CellFormer the most accurate model here, and does the graph prior make it so?

Every arm of one seed and setting sees the same data, the same train/val/test records, the same batch
order (the loader has its own seeded generator; CellFormer draws graph rows and identity dropout from its
own generator too) and selects its checkpoint by the phenotype metric alone (best mean validation
Pearson, evaluated every ``--eval-every`` steps; auxiliary losses never enter the selection).

Arms:

* ``cellformer``     CellFormer with the truth graph: KL-tied head plus graph-derived token inputs;
* ``no_graph``       the same architecture with no graph at all (λ = 0, no graph inputs);
* ``lambda0``        graph-derived token inputs from the truth graph, λ = 0 (the KL tie ablated);
* ``kl_only``        KL tie on the truth graph, no graph-derived inputs (the tie alone);
* ``rewired_graph``  as ``cellformer`` with a degree-preserving, fully rewired copy of the truth graph;
* ``noisy_graph``    as ``cellformer`` with ``--noise-share`` of the edges rewired;
* ``dango``          DANGO given the truth graph;
* ``additive``       the no-interaction baseline, at its tuned learning rate and step budget (constant
  ε/τ: their Pearson is undefined);
* ``graph_smoothing`` neighbour means over the truth graph (no gradient training).

Settings (``--settings``): ``random@F`` (the stored random split, a seeded share F of its training
records), ``gene_holdout`` (test = records with at least one held-out gene; val likewise with other
genes), ``gene_holdout_strict`` (test = records whose genes are *all* held out; mixed records are dropped).
Gene hold-outs draw their genes with the seed. Besides per-phenotype test metrics every run reports the
single-mutant fitness of the test singles (in gene hold-out: the held-out genes themselves).

Modes::

    python benchmarks/evidence.py --mode quick              # CPU: simulated screen on a ~600-gene sub-genome
    python benchmarks/evidence.py --mode full --device cuda # the embedded full-yeast screen (data/yeast_sim.h5)

Outputs ``benchmarks/results/evidence_<tag>.{md,json,png}``; an existing record is never overwritten
unless ``--force`` is given.
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

CELLFORMER_ARMS = ("cellformer", "no_graph", "lambda0", "kl_only", "rewired_graph", "noisy_graph")
BASELINE_ARMS = ("dango", "additive", "graph_smoothing")
ARMS = CELLFORMER_ARMS + BASELINE_ARMS
DEFAULT_ARMS = ("cellformer", "no_graph", "lambda0", "rewired_graph", "dango", "additive", "graph_smoothing")
ARM_LABELS = {
    "cellformer": "CellFormer (true graph)",
    "no_graph": "CellFormer, no graph",
    "lambda0": "CellFormer, graph inputs, λ=0",
    "kl_only": "CellFormer, KL tie only",
    "rewired_graph": "CellFormer (rewired graph)",
    "noisy_graph": "CellFormer (noisy graph)",
    "dango": "DANGO (true graph)",
    "additive": "additive (tuned)",
    "graph_smoothing": "graph smoothing (true graph)",
}
#: the graph each arm is given (a key of :func:`control_graphs`), None = none
ARM_GRAPH = {
    "cellformer": "true_graph",
    "no_graph": None,
    "lambda0": "true_graph",
    "kl_only": "true_graph",
    "rewired_graph": "rewired_graph",
    "noisy_graph": "noisy_graph",
    "dango": "true_graph",
    "additive": None,
    "graph_smoothing": "true_graph",
}
#: per-mode defaults (any of them can be overridden on the command line)
MODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "quick": {
        "steps": 400,
        "eval_every": 50,
        "settings": "random@0.8,random@0.05,gene_holdout,gene_holdout_strict",
        "seeds": "0,1,2",
        "d_model": 64,
        "batch_size": 256,
        "device": "cpu",
    },
    "full": {
        "steps": 3000,
        "eval_every": 250,
        "settings": "random@0.8,random@0.05,gene_holdout,gene_holdout_strict",
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


# ---------------------------------------------------------------------- settings and splits
def _stored_split(data: PerturbationData) -> dict[str, np.ndarray]:
    from cellformer.data.dataset import SPLITS

    return {k: np.flatnonzero(data.split == v) for k, v in SPLITS.items()}


@dataclass(frozen=True)
class Setting:
    """A split kind and, for ``random``, the share of the stored training records that is used."""

    kind: str  # random | gene_holdout | gene_holdout_strict
    fraction: float = 1.0

    @property
    def name(self) -> str:
        return f"random@{self.fraction:g}" if self.kind == "random" else self.kind

    @classmethod
    def parse(cls, text: str) -> Setting:
        kind, _, frac = text.strip().partition("@")
        if kind not in ("random", "gene_holdout", "gene_holdout_strict"):
            raise SystemExit(f"setting {text!r}: expected random@F, gene_holdout or gene_holdout_strict")
        return cls(kind, float(frac) if frac else 1.0)


def train_subset(train: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The first ``fraction`` of a seeded permutation of the training records (nested across fractions)."""
    perm = np.random.default_rng([seed, 7]).permutation(len(train))
    return np.sort(train[perm[: max(1, int(round(fraction * len(train))))]])


def setting_split(problem: Problem, setting: Setting, seed: int, holdout: float, strict_holdout: float) -> dict:
    """Train/val/test record indices (and held-out genes) of a setting for one seed."""
    from cellformer.data.dataset import SPLITS
    from cellformer.data.splits import gene_holdout_split

    if setting.kind == "random":
        split = dict(problem.split)
        split["train"] = train_subset(split["train"], setting.fraction, seed)
        return split
    strict = setting.kind.endswith("strict")
    share = strict_holdout if strict else holdout
    codes, genes = gene_holdout_split(problem.data, share, share, strict=strict, seed=seed)
    out = {k: np.flatnonzero(codes == v) for k, v in SPLITS.items()}
    out["heldout_genes"] = genes["test"]
    return out


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
@torch.no_grad()
def predict(model: torch.nn.Module, data: PerturbationData, rows: np.ndarray, device: str) -> np.ndarray:
    """Predictions (len(rows), P) of ``model`` in eval mode, in original units."""
    was = model.training
    model.eval()
    ds = PerturbationDataset(data, rows)
    model.set_encoding_cache(True)
    out = []
    for lo in range(0, len(rows), 2048):
        batch = ds.collate_rows(rows[lo : lo + 2048]).to(device)
        kwargs = {"graph_losses": False} if _is_cellformer(model) else {}
        out.append(model(batch, **kwargs).pred.float().cpu().numpy())
    model.set_encoding_cache(False)
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
    identity_dropout: float
    structural_dim: int
    input_hops: int
    additive_lr: float
    additive_steps: int
    device: str
    model_args: dict[str, Any] = field(default_factory=dict)  # more CellFormer arguments (--model-arg)


def parse_model_args(items: list[str]) -> dict[str, Any]:
    """``["key=value", …]`` (values read as YAML) -> dict; a malformed item is an error."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--model-arg {item!r}: expected KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    return out


def more_args(cfg: dict) -> str:
    """The ``--model-arg`` settings of a record, as a clause of the training sentence ('' when none)."""
    extra = cfg.get("model_args") or {}
    return "; " + ", ".join(f"{k} = {v}" for k, v in extra.items()) if extra else ""


def model_spec(arm: str, graph_name: str | None, cfg: RunConfig) -> tuple[str, dict[str, Any]]:
    """Registered model name and its arguments for an arm."""
    if arm == "additive":
        return "additive", {}
    if arm == "graph_smoothing":
        return "graph_smoothing", {}
    if arm == "dango":
        return "dango", {"d_model": cfg.d_model}
    reg = {}
    if arm not in ("no_graph", "lambda0"):
        reg = {graph_name: {"layer": cfg.reg_layer, "head": cfg.reg_head, "weight": cfg.reg_weight,
                            "rows": cfg.reg_rows}}  # fmt: skip
    inputs = [] if arm in ("no_graph", "kl_only") else [graph_name]
    args = {"d_model": cfg.d_model, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "dropout": cfg.dropout,
            "pool": "mean", "graph_reg": reg, "graph_inputs": inputs, "identity_dropout": cfg.identity_dropout,
            "structural_dim": cfg.structural_dim, "input_hops": cfg.input_hops}  # fmt: skip
    return "cellformer", {**args, **cfg.model_args}


def evaluate(pred: np.ndarray, data: PerturbationData, rows: np.ndarray, names: list[str]) -> dict:
    """Per-phenotype test metrics, plus ``fitness_singles``: fitness of the single-gene test records."""
    out = regression_metrics(pred, data.phenotypes[rows], names)
    singles = data.set_sizes[rows] == 1
    if "fitness" in names and singles.any():
        k = names.index("fitness")
        out["fitness_singles"] = regression_metrics(pred[singles][:, [k]], data.phenotypes[rows][singles][:, [k]],
                                                    ["fitness"])["fitness"]  # fmt: skip
        out["fitness_singles"]["n"] = int(singles.sum())
    return out


def run_arm(
    problem: Problem, arm: str, graphs: dict[str, GeneGraph], split: dict, seed: int, cfg: RunConfig
) -> dict[str, Any]:
    """Train one arm with Lightning, select the best validation step, return its test metrics."""
    import logging

    import lightning as L

    from cellformer.data.context import DataContext
    from cellformer.training.module import PhenotypeModule

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    t0 = time.perf_counter()
    key = ARM_GRAPH[arm]
    given = graphs[key] if key else None
    gs = GraphSet([given] if given is not None else [], problem.genome.hash)
    names = list(problem.data.phenotype_names)
    name, args = model_spec(arm, None if given is None else given.name, cfg)
    steps = cfg.additive_steps if arm == "additive" else cfg.steps
    L.seed_everything(seed, verbose=False)
    module = PhenotypeModule(
        model=name,
        model_args=args,
        lr=cfg.additive_lr if arm == "additive" else cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=min(cfg.warmup_steps, max(1, steps // 5)),
        context=DataContext(problem.genome, gs, names),
    )
    data, train_rows, val_rows, test_rows = problem.data, split["train"], split["val"], split["test"]
    module.fit_data(data, train_rows)  # target standardisation (+ closed-form fitting, unseen-gene mask)
    best: dict[str, Any] = {"score": -math.inf, "step": 0, "state": None}
    curve: list[tuple[int, float]] = []

    def consider(step: int, model: torch.nn.Module) -> None:
        pred = predict(model, data, val_rows, cfg.device)
        score = _mean_pearson(regression_metrics(pred, data.phenotypes[val_rows], names))
        curve.append((step, score))
        if score > best["score"] or best["state"] is None:
            best.update(score=score, step=step, state=copy.deepcopy(model.state_dict()))

    if module.model.trainable:

        class SelectBest(L.Callback):
            """Evaluate the validation Pearson every ``eval_every`` steps and keep the best weights."""

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                if trainer.global_step % cfg.eval_every == 0 or trainer.global_step == steps:
                    consider(trainer.global_step, pl_module.model)

        class Batches(L.LightningDataModule):
            def train_dataloader(self):
                from torch.utils.data import DataLoader

                gen = torch.Generator().manual_seed(seed)
                ds = PerturbationDataset(data, train_rows)
                bs = cfg.batch_size
                return DataLoader(ds, batch_size=bs, shuffle=True, collate_fn=identity_collate, generator=gen)

            def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
                return batch.to(device)

        trainer = L.Trainer(
            accelerator="gpu" if cfg.device.startswith("cuda") else "cpu", devices=1, max_steps=steps,
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            limit_val_batches=0, num_sanity_val_steps=0, gradient_clip_val=1.0, callbacks=[SelectBest()],
        )  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(module, datamodule=Batches())
    model = module.model.to(cfg.device)
    if best["state"] is None:  # closed-form model
        consider(0, model)
    model.load_state_dict(best["state"])
    test = evaluate(predict(model, data, test_rows, cfg.device), data, test_rows, names)
    result: dict[str, Any] = {
        "arm": arm,
        "seed": seed,
        "n_train": int(len(train_rows)),
        "n_test": int(len(test_rows)),
        "best_step": int(best["step"]),
        "best_val_mean_pearson": float(best["score"]),
        "val_curve": curve,
        "test": test,
    }
    if arm in CELLFORMER_ARMS and arm not in ("no_graph", "lambda0"):
        result["alignment"] = alignment(model, problem.truth, given, cfg)
    if given is not None:
        result["given_graph_edge_overlap_with_truth"] = edge_overlap(given, problem.truth)
    result["wall_s"] = time.perf_counter() - t0
    return result


@torch.no_grad()
def alignment(model, truth: GeneGraph, trained: GeneGraph, cfg: RunConfig) -> dict[str, float]:
    """Attention mass of the regularised head on its graph's neighbours (all valid rows), and of the other
    heads of that layer (a control); ``chance`` is the mean neighbour share deg_i / N."""
    model.eval()
    enc = model.encode_genome()
    layer, head = cfg.reg_layer, cfg.reg_head
    others = [h for h in range(cfg.n_heads) if h != head]
    deg = trained.degree()
    return {
        "trained": float(model.attention_alignment(trained.name, layer, head, enc=enc)),
        "other_heads": float(np.mean([float(model.attention_alignment(trained.name, layer, h, enc=enc))
                                      for h in others])) if others else float("nan"),  # fmt: skip
        "chance": float(np.mean(deg[deg > 0]) / trained.num_nodes),
    }


# ---------------------------------------------------------------------- summaries
METRIC_KEYS = ("fitness", "epsilon", "tau", "fitness_singles")


def _vals(runs: list[dict], key: str, metric: str = "pearson") -> list[float]:
    return [r["test"][key][metric] for r in runs if key in r["test"]]


def _fmt(vals: Sequence[float], digits: int = 3) -> str:
    v = np.asarray([x for x in vals if x is not None and not math.isnan(x)], dtype=float)
    if len(v) == 0:
        return "n/a"
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def summarise(runs: list[dict], settings: list[str], arms: list[str], keys: list[str]) -> dict:
    """Per setting × arm: lists over seeds of test Pearson (and R² of single-mutant fitness)."""
    out: dict = {}
    for st in settings:
        for arm in arms:
            rs = [r for r in runs if r["setting"] == st and r["arm"] == arm]
            if rs:
                entry: dict[str, Any] = {k: _vals(rs, k) for k in keys}
                entry["fitness_singles_r2"] = _vals(rs, "fitness_singles", "r2")
                entry["n_train"] = rs[0]["n_train"]
                entry["n_test"] = rs[0]["n_test"]
                if "alignment" in rs[0]:
                    entry["align"] = [r["alignment"]["trained"] for r in rs]
                    entry["align_other"] = [r["alignment"]["other_heads"] for r in rs]
                    entry["align_chance"] = rs[0]["alignment"]["chance"]
                out[f"{st}/{arm}"] = entry
    return out


def _pearson(r: dict, key: str) -> float:
    """Test Pearson of a run; an undefined one (a constant prediction, no correlation) counts as 0."""
    v = r["test"][key]["pearson"]
    return 0.0 if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def paired(runs: list[dict], setting: str, a: str, b: str, key: str) -> list[float]:
    """Per-seed test-Pearson differences ``a − b`` in one setting (same split, batches and seed).

    A run whose predictions are constant (undefined Pearson) counts as 0: it carries no correlation.
    """
    by_seed: dict[int, dict[str, dict]] = {}
    for r in runs:
        if r["setting"] == setting and r["arm"] in (a, b):
            by_seed.setdefault(r["seed"], {})[r["arm"]] = r
    out = []
    for s in sorted(by_seed):
        pair = by_seed[s]
        if len(pair) == 2 and key in pair[a]["test"] and key in pair[b]["test"]:
            out.append(_pearson(pair[a], key) - _pearson(pair[b], key))
    return out


def _mean(v: Sequence[float]) -> float:
    v = [x for x in v if x is not None and not math.isnan(x)]
    return float(np.mean(v)) if v else float("nan")


def targets(summary: dict, runs: list[dict]) -> list[dict]:
    """The accuracy targets, each with the measured values and met / missed (n/a when an arm is absent)."""
    rows: list[dict] = []

    def get(setting: str, arm: str, key: str) -> float:
        e = summary.get(f"{setting}/{arm}")
        return _mean(e[key]) if e and key in e else float("nan")

    def add(text: str, lhs: float, rhs: float, ok: bool | None) -> None:
        status = "n/a" if ok is None or math.isnan(lhs) or math.isnan(rhs) else ("met" if ok else "MISSED")
        rows.append({"target": text, "value": lhs, "reference": rhs, "status": status})

    cf = "cellformer"
    a, b = get("random@0.8", cf, "epsilon"), get("random@0.8", "dango", "epsilon")
    add("random 80 %: CellFormer ε ≥ DANGO ε", a, b, a >= b)
    a, b = get("random@0.8", cf, "fitness"), get("random@0.8", "additive", "fitness")
    add("random 80 %: CellFormer fitness ≥ tuned additive fitness", a, b, a >= b)
    a, b = get("random@0.05", cf, "epsilon"), get("random@0.05", "dango", "epsilon")
    add("random 5 %: CellFormer ε within 0.05 of DANGO", a, b, a >= b - 0.05)
    for st in ("gene_holdout", "gene_holdout_strict"):
        a = get(st, cf, "epsilon")
        for other in ("dango", "graph_smoothing"):
            b = get(st, other, "epsilon")
            add(f"{st}: CellFormer ε ≥ {other} ε", a, b, a >= b)
        a, b = get(st, cf, "fitness_singles"), get(st, "graph_smoothing", "fitness_singles")
        add(f"{st}: held-out single-mutant fitness, CellFormer Pearson ≥ graph_smoothing", a, b, a >= b)
        r2 = get(st, cf, "fitness_singles_r2")
        add(f"{st}: held-out single-mutant fitness, CellFormer R² > 0", r2, 0.0, r2 > 0)
        for ctl, what in (("no_graph", "λ = 0, no graph at all"), ("rewired_graph", "rewired graph")):
            d = paired(runs, st, cf, ctl, "epsilon")
            ok = bool(d) and _mean(d) >= 0.05 and all(x > 0 for x in d)
            add(f"{st}: true graph − {what} ({ctl}) on ε ≥ 0.05, same sign every seed", _mean(d), 0.05,
                ok if d else None)  # fmt: skip
    return rows


def markdown(report: dict) -> str:
    """The markdown report: settings, Pearson tables, paired differences, targets, alignment."""
    cfg, keys, settings, arms = report["config"], report["metric_keys"], report["settings"], report["arms"]
    summ = report["summary"]
    lines = [
        f"# Evidence ({report['tag']})",
        "",
        f"**Data.** {report['problem']}",
        "",
        f"**Training.** {cfg['steps']} steps, batch {cfg['batch_size']}, AdamW lr {cfg['lr']} (warm-up + cosine); "
        f"CellFormer d_model {cfg['d_model']}, {cfg['n_layers']} layers, {cfg['n_heads']} heads; graph term on "
        f"layer {cfg['reg_layer']} head {cfg['reg_head']}, λ = {cfg['reg_weight']}, {cfg['reg_rows'] or 'all valid'} "
        f"rows/step; graph inputs: {cfg['input_hops']} hops + {cfg['structural_dim']} eigenvectors; identity "
        f"dropout {cfg['identity_dropout']}{more_args(cfg)}. Additive: lr {cfg['additive_lr']}, "
        f"{cfg['additive_steps']} steps "
        "(tuned to convergence). Checkpoint selection: best mean validation Pearson, every "
        f"{cfg['eval_every']} steps. Seeds {report['seeds']}. Device {cfg['device']}, wall time "
        f"{report['wall_s'] / 60:.1f} min. Command: `{report['command']}`.",
        "",
        "## Targets",
        "",
        "| target | CellFormer | reference | status |",
        "|---|---:|---:|---|",
    ]
    for t in report["targets"]:
        lines.append(f"| {t['target']} | {t['value']:.3f} | {t['reference']:.3f} | {t['status']} |")
    labels = {"fitness_singles": "fitness of singles"}
    for st in settings:
        e0 = next((summ[f"{st}/{a}"] for a in arms if f"{st}/{a}" in summ), None)
        if e0 is None:
            continue
        lines += ["", f"## {st}: test Pearson (mean ± sd over seeds; n train {e0['n_train']}, n test "
                  f"{e0['n_test']})", ""]  # fmt: skip
        lines += ["| arm | " + " | ".join(labels.get(k, k) for k in keys) + " | R² fitness of singles |",
                  "|---|" + "---:|" * (len(keys) + 1)]  # fmt: skip
        for arm in arms:
            e = summ.get(f"{st}/{arm}")
            if e:
                cells = " | ".join(_fmt(e[k]) for k in keys)
                lines.append(f"| {ARM_LABELS.get(arm, arm)} | {cells} | {_fmt(e['fitness_singles_r2'])} |")
    lines += ["", "## Paired differences (test Pearson, per seed: mean ± sd)", "",
              "A constant prediction (undefined Pearson, e.g. no graph for genes never seen) counts as 0.", "",
              "| setting | comparison | " + " | ".join(labels.get(k, k) for k in keys) + " |",
              "|---|---|" + "---:|" * len(keys)]  # fmt: skip
    for st in settings:
        for ctl in ("no_graph", "lambda0", "kl_only", "rewired_graph", "noisy_graph", "dango", "graph_smoothing"):
            if "cellformer" in arms and ctl in arms:
                d = {k: paired(report["runs"], st, "cellformer", ctl, k) for k in keys}
                if any(d.values()):
                    per_seed = lambda v: _fmt(v) + (" (" + ", ".join(f"{x:+.3f}" for x in v) + ")" if v else "")  # noqa: E731
                    lines.append(f"| {st} | cellformer − {ctl} | " + " | ".join(per_seed(d[k]) for k in keys) + " |")
    al = [(st, arm) for st in settings for arm in arms if "align" in summ.get(f"{st}/{arm}", {})]
    if al:
        lines += ["", f"## Attention alignment of layer {cfg['reg_layer']} head {cfg['reg_head']}", "",
                  "Attention mass on the neighbours of its graph over all valid rows (best-val weights).", "",
                  "| setting | arm | tied head | other heads | chance |", "|---|---|---:|---:|---:|"]  # fmt: skip
        for st, arm in al:
            e = summ[f"{st}/{arm}"]
            lines.append(f"| {st} | {ARM_LABELS[arm]} | {_fmt(e['align'])} | {_fmt(e['align_other'])} | "
                         f"{e['align_chance']:.3f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Bar chart: test Pearson per arm (mean ± sd over seeds), one panel per setting × phenotype."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in report["metric_keys"]]
    settings, arms, summ = report["settings"], report["arms"], report["summary"]
    fig, axes = plt.subplots(len(settings), len(keys), figsize=(3.6 * len(keys), 2.8 * len(settings)), squeeze=False)
    colors = plt.cm.tab10(np.arange(len(arms)) % 10)
    for i, st in enumerate(settings):
        for j, k in enumerate(keys):
            ax = axes[i][j]
            for a, arm in enumerate(arms):
                v = [x for x in summ.get(f"{st}/{arm}", {}).get(k, []) if x is not None and not math.isnan(x)]
                if v:
                    ax.bar(a, np.mean(v), yerr=np.std(v, ddof=1) if len(v) > 1 else 0, color=colors[a], capsize=2)
            ax.set_xticks(range(len(arms)), [ARM_LABELS.get(a, a) for a in arms], rotation=60, ha="right",
                          fontsize=6)  # fmt: skip
            ax.set_title(f"{st}: {k}", fontsize=8)
            ax.grid(axis="y", alpha=0.3)
            ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
    fig.suptitle(f"evidence ({report['tag']}): test Pearson, mean ± sd over seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars/arrays -> Python."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# ---------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Run `--mode quick` on CPU, `--mode full --device cuda` on a GPU. Outputs "
        "benchmarks/results/evidence_<tag>.{md,json,png}.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--mode", choices=sorted(MODE_DEFAULTS), default="quick",
                   help="quick: simulated sub-genome screen on CPU; full: a stored dataset (default the full "
                   "embedded yeast screen) with a larger step budget")  # fmt: skip
    p.add_argument("--dataset", default=None, help="HDF5 dataset (full mode default: data/yeast_sim.h5)")
    p.add_argument("--genome", default="yeast", help="genome of --dataset: 'yeast' or a gene-table TSV")
    p.add_argument("--truth-graph", default=None,
                   help="the graph given to the graph arms: a shipped yeast graph name or name=edges.tsv "
                   "(default: the dataset's recorded truth graph; quick mode: string_database)")  # fmt: skip
    p.add_argument("--n-genes", type=int, default=600, help="quick mode: genes in the sub-genome")
    p.add_argument("--subgenome", choices=("modules", "bfs"), default="modules",
                   help="quick mode: how the sub-genome is chosen (modules: whole Louvain modules of the truth "
                   "graph; bfs: a BFS ball around its highest-degree gene)")  # fmt: skip
    p.add_argument("--n-doubles", type=int, default=9000, help="quick mode: simulated double mutants")
    p.add_argument("--n-triples", type=int, default=3000, help="quick mode: simulated triple mutants")
    p.add_argument("--sim-seed", type=int, default=0, help="quick mode: simulator seed")
    p.add_argument("--arms", default=",".join(DEFAULT_ARMS), help=f"comma list among {', '.join(ARMS)}")
    p.add_argument("--settings", default=None,
                   help="comma list of random@FRACTION, gene_holdout, gene_holdout_strict")  # fmt: skip
    p.add_argument("--holdout", type=float, default=0.1, help="gene_holdout: share of genes held out for test "
                   "(and again for val)")  # fmt: skip
    p.add_argument("--strict-holdout", type=float, default=0.3,
                   help="gene_holdout_strict: share of genes held out for test (and again for val)")  # fmt: skip
    p.add_argument("--seeds", default=None, help="comma list of seeds (>= 3 for spread)")
    p.add_argument("--noise-share", type=float, default=0.3, help="share of edges rewired in the noisy graph")
    p.add_argument("--steps", type=int, default=None, help="optimisation steps per run")
    p.add_argument("--eval-every", type=int, default=None, help="validation interval (steps) for model selection")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--d-model", type=int, default=None)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--reg-layer", type=int, default=0, help="layer of the regularised head")
    p.add_argument("--reg-head", type=int, default=0, help="regularised head")
    p.add_argument("--lambda", dest="reg_weight", type=float, default=1.0, help="graph-term weight λ")
    p.add_argument("--rows", type=int, default=256, help="graph rows sampled per step (0 = all valid rows)")
    p.add_argument("--identity-dropout", type=float, default=0.3)
    p.add_argument("--structural-dim", type=int, default=16, help="eigenvectors of the structural encoding")
    p.add_argument("--input-hops", type=int, default=2, help="hops of neighbour-averaged identities")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="another CellFormer argument for every CellFormer arm, VALUE read as YAML "
                        "(e.g. member_singles=false); repeatable")  # fmt: skip
    p.add_argument("--additive-lr", type=float, default=None, help="default: the additive model's tuned lr")
    p.add_argument("--additive-steps", type=int, default=None, help="default: its tuned step budget")
    p.add_argument("--device", default=None, help="cpu or cuda")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads on CPU (1 is fastest on a shared 2-core machine)")  # fmt: skip
    p.add_argument("--tag", default=None, help="output name: evidence_<tag>.* (default: the mode)")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--force", action="store_true", help="overwrite an existing evidence_<tag> record")
    p.add_argument("--from-json", default=None,
                   help="re-render the md/png (and targets) of a saved evidence JSON without training")  # fmt: skip
    args = p.parse_args(argv)
    for k, v in MODE_DEFAULTS[args.mode].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def tuned_additive() -> dict[str, float]:
    """The additive baseline's tuned lr and step budget (``cellformer.models.baselines.additive.TUNED``)."""
    from cellformer.models.baselines import additive

    return dict(getattr(additive, "TUNED", {"lr": 0.05, "steps": 1000}))


def rerender(path: Path) -> dict:
    """Recompute the summary, targets, markdown and plot of a saved evidence JSON (no training)."""
    report = json.loads(path.read_text())

    def nan(x: Any) -> Any:  # JSON null -> NaN inside metric dicts
        if isinstance(x, dict):
            return {k: nan(v) for k, v in x.items()}
        if isinstance(x, list):
            return [nan(v) for v in x]
        return float("nan") if x is None else x

    report["runs"] = [nan(r) for r in report["runs"]]
    report["summary"] = summarise(report["runs"], report["settings"], report["arms"], report["metric_keys"])
    report["targets"] = targets(report["summary"], report["runs"])
    md = markdown(report)
    path.with_suffix(".md").write_text(md)
    path.write_text(json.dumps(_clean(report), indent=1))
    plot(report, path.with_suffix(".png"))
    print(md)
    return report


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.from_json:
        return rerender(Path(args.from_json))
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise SystemExit(f"unknown arms {sorted(unknown)}; choose from {', '.join(ARMS)}")
    settings = [Setting.parse(s) for s in args.settings.split(",") if s.strip()]
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    tag = args.tag or (args.mode if args.dataset is None else f"{args.mode}_{Path(args.dataset).stem}")
    out = Path(args.out_dir)
    if (out / f"evidence_{tag}.json").exists() and not args.force:
        raise SystemExit(f"{out}/evidence_{tag}.json exists (a cited record?): pass --tag NEW or --force")

    print(f"[evidence] building the problem ({args.mode} mode)", flush=True)
    if args.mode == "quick" and args.dataset is None:
        problem = sub_genome_problem(args.n_genes, args.n_doubles, args.n_triples, args.sim_seed,
                                     args.truth_graph or "string_database", args.subgenome)  # fmt: skip
    else:
        problem = dataset_problem(args.dataset or ROOT / "data" / "yeast_sim.h5", args.genome, args.truth_graph)
    print(f"[evidence] {problem.description}", flush=True)
    tuned = tuned_additive()
    cfg = RunConfig(
        steps=args.steps, eval_every=args.eval_every, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, d_model=args.d_model,
        n_layers=args.n_layers, n_heads=args.n_heads, dropout=args.dropout, reg_layer=args.reg_layer,
        reg_head=args.reg_head, reg_weight=args.reg_weight, reg_rows=args.rows or None,
        identity_dropout=args.identity_dropout, structural_dim=args.structural_dim, input_hops=args.input_hops,
        additive_lr=args.additive_lr or float(tuned["lr"]), additive_steps=args.additive_steps or int(tuned["steps"]),
        device=args.device, model_args=parse_model_args(args.model_arg),
    )  # fmt: skip
    phenos = list(problem.data.phenotype_names)
    keys = phenos + (["fitness_singles"] if "fitness" in phenos else [])
    runs: list[dict] = []
    jobs = [(s, st, a) for s in seeds for st in settings for a in arms]
    bar = tqdm(jobs, desc="evidence runs", file=sys.stdout, mininterval=5)
    graphs_by_seed: dict[int, dict[str, GeneGraph]] = {}
    splits: dict[tuple[int, str], dict] = {}
    for seed, st, arm in bar:
        if seed not in graphs_by_seed:
            graphs_by_seed[seed] = control_graphs(problem.truth, seed, args.noise_share)
        if (seed, st.name) not in splits:
            splits[seed, st.name] = setting_split(problem, st, seed, args.holdout, args.strict_holdout)
        r = run_arm(problem, arm, graphs_by_seed[seed], splits[seed, st.name], seed, cfg)
        r["setting"] = st.name
        runs.append(r)
        pear = " ".join(f"{k}={r['test'][k]['pearson']:.3f}" for k in keys if k in r["test"])
        bar.write(f"  seed {seed} {st.name:20s} {arm:16s} n={r['n_train']:6d} best@{r['best_step']:4d} {pear} "
                  f"({r['wall_s']:.0f}s)")  # fmt: skip

    names = [s.name for s in settings]
    summary = summarise(runs, names, arms, keys)
    report = {
        "tag": tag,
        "mode": args.mode,
        "problem": problem.description,
        "phenotypes": phenos,
        "metric_keys": keys,
        "settings": names,
        "seeds": seeds,
        "arms": arms,
        "config": {**vars(cfg), "noise_share": args.noise_share, "threads": args.threads,
                   "holdout": args.holdout, "strict_holdout": args.strict_holdout},  # fmt: skip
        "command": "python benchmarks/evidence.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()},
        "runs": runs,
        "summary": summary,
        "targets": targets(summary, runs),
        "wall_s": time.perf_counter() - t0,
    }
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(report)
    (out / f"evidence_{tag}.md").write_text(md)
    (out / f"evidence_{tag}.json").write_text(json.dumps(_clean(report), indent=1))
    plot(report, out / f"evidence_{tag}.png")
    print(md)
    print(f"[evidence] wrote {out.name}/evidence_{tag}.{{md,json,png}} in {report['wall_s'] / 60:.1f} min", flush=True)
    return report


if __name__ == "__main__":
    main()
