"""Training-step throughput of CellFormer against the graph baselines, under identical conditions.

Every timed step is a FULL training step: collate (the dataset's vectorised ``__getitems__``) +
host->device copy + forward + loss (masked MSE + the model's extra loss terms) + backward + AdamW step,
with ``torch.cuda.synchronize()`` before the clock is read on GPU.

Each method is built as a user trains it: its architecture (``model.model_args``) and its graphs
(``data.graphs``) are read at run time from its training config, so the benchmark follows the configs:

=============  ==========================================================
method         config (``--config-dir``, default ``configs/``)
=============  ==========================================================
cellformer     ``quickstart.yaml``
dango          ``dango.yaml``
lazy           ``lazy.yaml``
1/2/3-hop      ``neighbor.yaml`` with ``hops`` set to 1, 2, 3
additive       ``additive.yaml``
=============  ==========================================================

Nothing is fitted before timing (no target scaling, no DANGO pre-training): only the steady-state cost
of a gradient step is measured. ``graph_smoothing`` has no gradient step and is not benchmarked.

Every method runs at every batch size of ``--sweep`` plus ``--equal-batch``. The report has two tables:
*equal batch* (all methods at ``--equal-batch``, with each method's samples/s divided by CellFormer's at
the same batch size, measured in the same run) and *best batch* (each method at the batch size of its
highest samples/s over the sweep, divided by CellFormer's best). The per-sample graph methods (lazy and
the k-hop neighbourhoods), whose step cost grows with the batch size, skip a size whose step is predicted
(from the smaller sizes already measured) to take more than ``--max-step-seconds``; such cells are
reported as ``skipped (> cap)``.

Examples::

    python benchmarks/throughput.py --device cpu --quick --sweep 16,64,256,1024
    python benchmarks/throughput.py --device cuda --bf16 --sweep 16,64,256,1024,4096

Writes ``benchmarks/results/throughput_<device>.{md,json,png}``.

Attention FLOPs (encoder-only timing, GPU): per layer and head, ``Q K^T`` costs ``2 T^2 d_head`` FLOPs
(multiply + add) and ``A V`` another ``2 T^2 d_head``; over ``H`` heads that is ``4 T^2 d`` per layer,
``4 L T^2 d`` for the forward pass (``T = N + 1`` tokens with CLS, ``d = d_model``), and x3 for
forward + backward (the backward computes two matmuls per forward matmul). Projections, FFN and
softmax are not counted, so the "attention TFLOP/s" of the whole encoder step is a lower bound of
the attention kernels' own rate; the reference is ``F.scaled_dot_product_attention`` alone at the
same ``T``, heads and head dim, timed in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import threading
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import numpy as np
import psutil
import torch
import torch.nn.functional as F
import yaml
from timing import device_name, device_tag, free_memory, is_oom, sync
from torch.utils.data import DataLoader, RandomSampler

from cellformer.data.dataset import PerturbationData, PerturbationDataset, PerturbationType, identity_collate
from cellformer.defaults import DEFAULT_DATASET, YEAST_GRAPHS
from cellformer.defaults import ROOT as CELLFORMER_HOME
from cellformer.genome import Genome, yeast_genome
from cellformer.graphs import GraphSet, load_graphs
from cellformer.models.base import PhenotypeModel

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
CONFIG_DIR = REPO_ROOT / "configs"
#: benchmarked method -> (training config, registered model name, fixed model_args overrides)
METHODS: dict[str, tuple[str, str, dict]] = {
    "cellformer": ("quickstart.yaml", "cellformer", {}),
    "dango": ("dango.yaml", "dango", {}),
    "lazy": ("lazy.yaml", "lazy", {}),
    "1-hop": ("neighbor.yaml", "neighbor", {"hops": 1}),
    "2-hop": ("neighbor.yaml", "neighbor", {"hops": 2}),
    "3-hop": ("neighbor.yaml", "neighbor", {"hops": 3}),
    "additive": ("additive.yaml", "additive", {}),
}
ALL_METHODS = list(METHODS)
#: methods whose CPU step takes seconds at yeast size: few timed steps in --quick mode
SLOW_ON_CPU = {"cellformer", "lazy", "2-hop", "3-hop"}
#: methods that run a graph per sample, so their step cost grows with the batch size (subject to the step cap)
COST_GROWS_WITH_B = {"lazy", "1-hop", "2-hop", "3-hop"}
SKIPPED_CAP = "skipped (> cap)"


def rel_path(path: str | Path) -> str:
    """``path`` relative to the repository root (or to ``$CELLFORMER_HOME``), so reports hold no machine paths.

    Paths elsewhere (e.g. a temporary directory) are returned as given.
    """
    p = Path(path)
    if not p.is_absolute():
        return str(path)
    for base, prefix in ((REPO_ROOT, ""), (CELLFORMER_HOME, "$CELLFORMER_HOME/")):
        try:
            return prefix + str(p.resolve().relative_to(Path(base).resolve()))
        except ValueError:
            continue
    return str(path)


def rel_command(argv: list[str]) -> str:
    """The command line with every path under the repository root written relative to it."""
    out = []
    for a in argv:
        if "=" in a and a.startswith("--"):
            key, val = a.split("=", 1)
            out.append(f"{key}={rel_path(val)}")
        else:
            out.append(rel_path(a))
    return " ".join(shlex.quote(a) for a in out)


# ---------------------------------------------------------------------- data
def synthetic_data(genome: Genome, num_samples: int, seed: int = 0) -> PerturbationData:
    """Random singles / doubles / triples over ``genome`` with fitness, epsilon and tau (for timing only).

    Fitness is a product of random per-gene single fitnesses; epsilon (doubles) and tau (triples) are
    small random numbers; other entries are NaN, as in a real screen.
    """
    rng = np.random.default_rng(seed)
    n = len(genome)
    sizes = rng.choice([1, 2, 3], size=num_samples, p=[0.1, 0.6, 0.3])
    sets = [rng.choice(n, s, replace=False) for s in sizes]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    single = rng.uniform(0.3, 1.05, n)
    y = np.full((num_samples, 3), np.nan, dtype=np.float32)
    y[:, 0] = [np.prod(single[s]) for s in sets]
    y[sizes == 2, 1] = rng.normal(0, 0.08, (sizes == 2).sum())
    y[sizes == 3, 2] = rng.normal(0, 0.05, (sizes == 3).sum())
    return PerturbationData(
        genes=list(genome.genes),
        offsets=offsets,
        gene_index=np.concatenate(sets),
        types=np.full(offsets[-1], int(PerturbationType.DELETION)),
        phenotypes=y,
        phenotype_names=["fitness", "epsilon", "tau"],
        genome_hash=genome.hash,
        description="synthetic throughput data",
    )


def load_data(args: argparse.Namespace, genome: Genome) -> tuple[PerturbationData, str]:
    """The benchmark subset (``args.samples`` records) and a label saying where it came from.

    A missing default dataset is simulated on the fly into a temporary file (seconds; the repository's
    ``data/`` is not touched); ``--synthetic`` uses random deletions instead.
    """
    path = Path(args.dataset)
    with tempfile.TemporaryDirectory() as tmp:
        label = rel_path(path)
        if args.synthetic:
            f = Path(tmp) / "synthetic.h5"  # through the HDF5 path like a real dataset
            synthetic_data(genome, args.samples, args.seed).save(f)
            return PerturbationData.load(f), f"synthetic ({args.samples} random 1-3 gene deletions, --synthetic)"
        if not path.exists():
            if path.resolve() != Path(DEFAULT_DATASET).resolve():
                raise FileNotFoundError(f"dataset {path} does not exist")
            from cellformer.data.simulate import build_default_dataset

            print(f"[throughput] {path} not found: simulating the default dataset into a temp file", file=sys.stderr)
            path = build_default_dataset(Path(tmp) / path.name, progress=False)
            label = f"the default simulated yeast screen (built on the fly; {rel_path(DEFAULT_DATASET)} was missing)"
        data = PerturbationData.load(path)
    if data.genes != list(genome.genes):
        raise ValueError(f"{path} was built on a different gene list than the yeast genome")
    rng = np.random.default_rng(args.seed)
    pool = data.split_indices("train") if data.split is not None else np.arange(len(data))
    rows = np.sort(rng.choice(pool, min(args.samples, len(pool)), replace=False))
    which = "train " if data.split is not None else ""
    return data.subset(rows), f"{label}: {len(rows)} random {which}records of {len(data)}"


# ---------------------------------------------------------------------- models
@dataclass
class MethodSpec:
    """How a benchmarked method is built: registered model, hyper-parameters and graphs from its config."""

    method: str
    config: str  # relative to the repository root when inside it
    model: str
    model_args: dict
    graphs: list[str]
    graph_controls: dict = field(default_factory=dict)
    config_batch_size: int | None = None

    def summary(self) -> dict:
        """JSON-able description (for the report)."""
        return {
            "config": self.config,
            "model": self.model,
            "model_args": self.model_args,
            "graphs": self.graphs,
            "graph_controls": self.graph_controls,
            "config_batch_size": self.config_batch_size,
        }


def method_spec(method: str, config_dir: Path) -> MethodSpec:
    """Read ``method``'s training config: ``model.model_args`` and ``data.graphs`` (null = every shipped graph)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(ALL_METHODS)}")
    fname, model, overrides = METHODS[method]
    path = config_dir / fname
    cfg = yaml.safe_load(path.read_text()) or {}
    model_cfg, data_cfg = cfg.get("model") or {}, cfg.get("data") or {}
    if model_cfg.get("model", model) != model:
        raise ValueError(f"{rel_path(path)}: model.model is {model_cfg['model']!r}, expected {model!r} for {method}")
    graphs = data_cfg.get("graphs")
    return MethodSpec(
        method=method,
        config=rel_path(path),
        model=model,
        model_args={**(model_cfg.get("model_args") or {}), **overrides},
        graphs=list(YEAST_GRAPHS) if graphs is None else [str(g) for g in graphs],
        graph_controls=dict(data_cfg.get("graph_controls") or {}),
        config_batch_size=data_cfg.get("batch_size"),
    )


def build(spec: MethodSpec, genome: Genome, graphs: GraphSet, phenotype_names: list[str]) -> PhenotypeModel:
    """The model of ``spec`` with random weights (registry class; no target scaling or closed-form fitting)."""
    from cellformer.models.registry import model_class

    return model_class(spec.model)(genome, graphs, list(phenotype_names), **spec.model_args)


def masked_mse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MSE over the measured (non-NaN) entries."""
    m = ~torch.isnan(y)
    return ((pred.float() - torch.nan_to_num(y)) ** 2 * m).sum() / m.sum().clamp_min(1)


# ---------------------------------------------------------------------- measurement helpers
class PeakRSS:
    """Samples the process RSS in a background thread; ``growth_mb`` = peak minus the value at entry."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.proc = interval, psutil.Process(os.getpid())
        self.start = self.peak = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.start) / 2**20


# ---------------------------------------------------------------------- one timed run
def train_step(model: PhenotypeModel, opt: torch.optim.Optimizer, batch, autocast=None):
    """One full training step on a batch already on the device; returns the model output."""
    with autocast or nullcontext():
        out = model(batch)
    loss = masked_mse(out.pred, batch.y)
    for extra in out.losses.values():
        loss = loss + extra.float()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return out


def time_training(
    spec: MethodSpec,
    args: argparse.Namespace,
    genome: Genome,
    graphs: GraphSet,
    dataset: PerturbationDataset,
    batch_size: int,
    steps: int,
    warmup: int,
    device: torch.device,
) -> dict:
    """Warm-up, then ``steps`` timed full training steps of ``spec``'s model at ``batch_size``."""
    row = {"method": spec.method, "batch_size": batch_size, "steps": steps, "warmup": warmup, "status": "ok"}
    model = opt = None
    try:
        torch.manual_seed(args.seed)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                model = build(spec, genome, graphs, dataset.data.phenotype_names).to(device)
        except Exception as err:  # noqa: BLE001 - report, do not crash the other methods
            if is_oom(err):
                raise
            return {**row, "status": f"unavailable: {type(err).__name__}: {err}"}
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        row["params"] = sum(p.numel() for p in model.parameters())
        gen = torch.Generator().manual_seed(args.seed)
        sampler = RandomSampler(dataset, replacement=True, num_samples=batch_size * (steps + warmup), generator=gen)
        loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=identity_collate)
        it = iter(loader)
        autocast = (
            torch.autocast(device_type="cuda", dtype=torch.bfloat16) if args.bf16 and device.type == "cuda" else None
        )
        nodes: list[float] = []
        edges: list[float] = []

        def step() -> None:
            out = train_step(model, opt, next(it).to(device, non_blocking=True), autocast)
            if "nodes_per_sample" in out.extras:
                nodes.append(float(out.extras["nodes_per_sample"]))
                edges.append(float(out.extras["edges_per_sample"]))

        for _ in range(warmup):
            step()
        sync(device)
        nodes.clear()
        edges.clear()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        with PeakRSS() if device.type == "cpu" else nullcontext() as rss:
            for _ in range(steps):
                t0 = time.perf_counter()
                step()
                sync(device)
                times.append(time.perf_counter() - t0)
        total = sum(times)
        row.update(
            it_per_s=steps / total,
            samples_per_s=steps * batch_size / total,
            step_ms_median=1e3 * float(np.median(times)),
            step_s_max=float(max(times)),
            peak_mem_mb=(torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else rss.growth_mb),
            nodes_per_sample=float(np.mean(nodes)) if nodes else None,
            edges_per_sample=float(np.mean(edges)) if edges else None,
        )
    except Exception as err:  # noqa: BLE001
        if not is_oom(err):
            raise
        row["status"] = f"OOM at B={batch_size}"
    finally:
        model = opt = None  # noqa: F841 - drop the references before freeing memory
        free_memory(device)
    return row


# ---------------------------------------------------------------------- GPU: encoder FLOPs
def attention_flops(n_layers: int, tokens: int, d_model: int) -> float:
    """Forward + backward FLOPs of the attention matmuls: ``3 * 4 * L * T^2 * d`` (see module docstring)."""
    return 3.0 * 4.0 * n_layers * tokens**2 * d_model


def encoder_step(model, dtype: torch.dtype) -> None:
    """CellFormer wild-type encoder forward + backward (autocast when ``dtype`` is bf16)."""
    ctx = torch.autocast("cuda", dtype=dtype) if dtype == torch.bfloat16 else nullcontext()
    with ctx:
        enc = model.encode()
    loss = enc.genes.float().pow(2).mean() + enc.cls.float().pow(2).mean()
    model.zero_grad(set_to_none=True)
    loss.backward()


def sdpa_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad: torch.Tensor) -> None:
    """Bare ``scaled_dot_product_attention`` forward + backward."""
    F.scaled_dot_product_attention(q, k, v).backward(grad)


def encoder_benchmark(
    spec: MethodSpec, args: argparse.Namespace, genome: Genome, graphs: GraphSet, device: torch.device
) -> list[dict]:
    """CellFormer encoder fwd+bwd (no head, no optimizer) vs. a bare SDPA fwd+bwd at the same shape.

    The encoder is ``spec``'s CellFormer without graph regularisation and without dropout.
    """

    from cellformer.models.cellformer import CellFormer

    rows = []
    kw = {**spec.model_args, "graph_reg": {}, "dropout": 0.0}
    model = CellFormer(genome, graphs, ["fitness"], **kw).to(device)
    d, layers, heads = model.hparams_dict["d_model"], model.hparams_dict["n_layers"], model.hparams_dict["n_heads"]
    tokens = len(genome) + 1
    flops = attention_flops(layers, tokens, d)
    for dtype in (torch.bfloat16, torch.float32):
        name = "bf16" if dtype == torch.bfloat16 else "fp32"
        shape = (1, heads, tokens, d // heads)
        q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
        grad = torch.randn(shape, device=device, dtype=dtype)
        steps = (
            ("encoder step", partial(encoder_step, model, dtype), flops),
            ("SDPA reference", partial(sdpa_step, q, k, v, grad), flops / layers),
        )
        for label, fn, f in steps:
            try:
                for _ in range(max(args.warmup, 2)):
                    fn()
                sync(device)
                t0 = time.perf_counter()
                n = max(args.steps, 5)
                for _ in range(n):
                    fn()
                sync(device)
                dt = (time.perf_counter() - t0) / n
                rows.append({"what": label, "dtype": name, "ms": 1e3 * dt, "tflops": f / dt / 1e12})
            except Exception as err:  # noqa: BLE001
                if not is_oom(err):
                    raise
                rows.append({"what": label, "dtype": name, "ms": None, "tflops": None, "status": "OOM"})
            free_memory(device)
    ref = {r["dtype"]: r["tflops"] for r in rows if r["what"] == "SDPA reference"}
    for r in rows:
        if r["what"] == "encoder step" and r["tflops"] and ref.get(r["dtype"]):
            r["fraction_of_sdpa"] = r["tflops"] / ref[r["dtype"]]
    del model
    free_memory(device)
    return rows


# ---------------------------------------------------------------------- sweep bookkeeping
def predicted_step_s(measured: list[tuple[int, float]], batch_size: int) -> float | None:
    """Step seconds at ``batch_size`` extrapolated from ``(B, median step s)`` already measured at smaller B.

    Two or more points: the line through the two largest (slope clipped at >= 0); one point: proportional
    to B (an upper bound when part of the step does not depend on B); none: unknown.
    """
    pts = sorted(p for p in measured if p[0] < batch_size)
    if not pts:
        return None
    if len(pts) == 1:
        b, t = pts[0]
        return t * batch_size / b
    (b1, t1), (b2, t2) = pts[-2:]
    slope = max((t2 - t1) / (b2 - b1), 0.0)
    return t2 + slope * (batch_size - b2)


def summarise(rows: list[dict], methods: list[str], equal_batch: int) -> tuple[list[dict], list[dict]]:
    """The equal-batch and best-batch tables: one entry per method, with ratios to CellFormer's samples/s."""

    def ok(r: dict) -> bool:
        return r["status"].split(";")[0] == "ok" and bool(r.get("samples_per_s"))

    equal, best = [], []
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        at_eq = next((r for r in mine if r["batch_size"] == equal_batch), None)
        equal.append(dict(at_eq) if at_eq else {"method": m, "batch_size": equal_batch, "status": "not run"})
        good = [r for r in mine if ok(r)]
        if good:
            top = max(good, key=lambda r: r["samples_per_s"])
            others = [f"B={r['batch_size']}: {r['status']}" for r in mine if not ok(r)]
            status = "; ".join(["ok", *others])
            best.append({**top, "sizes_timed": [r["batch_size"] for r in good], "status": status})
        else:
            reasons = sorted({r["status"] for r in mine}) or ["not run"]
            best.append({"method": m, "batch_size": None, "status": "; ".join(reasons)})
    for table in (equal, best):
        cf = next((r for r in table if r["method"] == "cellformer" and ok(r)), None)
        for r in table:
            r["ratio_to_cellformer"] = r["samples_per_s"] / cf["samples_per_s"] if cf and ok(r) else None
    return equal, best


# ---------------------------------------------------------------------- reporting
def _fmt(x, spec: str = ",.1f") -> str:
    return "—" if x is None else format(x, spec)


def _sig(x: float) -> str:
    """About three significant digits, without exponent notation."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _ratio(x) -> str:
    return "—" if x is None else f"{x:,.3g}×"


def _load(cfg: dict) -> str:
    la = cfg.get("load_average")
    return "—" if not la else " / ".join(f"{x:.1f}" for x in la)


def _args(args: dict) -> str:
    """Compact ``key=value`` list of model hyper-parameters (graph_reg: the tied graphs and their heads)."""
    parts = []
    for k, v in args.items():
        if k == "graph_reg" and isinstance(v, dict):
            v = "{" + ", ".join(f"{g}: L{c.get('layer')}H{c.get('head')}" for g, c in v.items()) + "}"
        parts.append(f"{k}={v}")
    return ", ".join(parts) or "(defaults)"


def write_reports(results: dict, out_dir: Path, tag: str) -> dict[str, Path]:
    """Markdown tables, JSON and a PNG chart (samples/s vs. batch size per method, log-log)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = results["config"]
    paths = {ext: out_dir / f"throughput_{tag}.{ext}" for ext in ("md", "json", "png")}
    paths["json"].write_text(json.dumps(results, indent=2))
    cuda = cfg["device"] == "cuda"
    mem_col = "peak mem (MB)"
    quick_note = " (--quick: slow methods fewer, see the sweep table)" if cfg["quick"] else ""

    lines = [
        f"# Training throughput — {cfg['device_name']}",
        "",
        f"- date: {cfg['date']}",
        f"- command: `{cfg['command']}`",
        f"- device: {cfg['device']} — {cfg['device_name']}; torch {cfg['torch']}; bf16 autocast: {cfg['bf16']}",
        f"- genome: {cfg['num_genes']} genes",
        f"- dataset: {cfg['dataset']}",
        f"- host load average at the end (1/5/15 min): {_load(cfg)} — other processes distort CPU timings",
        f"- equal batch: B = {cfg['equal_batch']}; sweep: B ∈ {{{', '.join(map(str, cfg['sweep']))}}}",
        f"- steps: {cfg['warmup']} warm-up + {cfg['steps']} timed full training steps per method and batch size"
        + quick_note,
        "- a step = collate + host→device + forward + loss + backward + AdamW step"
        + (" (cuda synchronised before reading the clock)" if cuda else "")
        + "; random initial weights, nothing fitted beforehand (no target scaling, no DANGO pre-training)",
        f"- step cap: {', '.join(sorted(COST_GROWS_WITH_B))} skip a batch size whose step is predicted (from the "
        f"smaller sizes) to exceed {cfg['max_step_seconds']:g} s: `{SKIPPED_CAP}`"
        if cfg["max_step_seconds"]
        else "- step cap: none",
        f"- {mem_col}: "
        + (
            "CUDA max_memory_allocated during the timed steps"
            if cuda
            else "process peak RSS growth during the timed steps (sampled every 2 ms; 0 = no growth beyond what "
            "the warm-up already reached)"
        ),
        "- nodes/edges per sample: the graph each sample is run on (edges as directed entries); DANGO and "
        "CellFormer encode the wild type once per step instead (DANGO: nodes = |S|)",
        "",
        "## Models (as trained from their configs)",
        "",
        "| method | config | graphs (edges) | model_args | config batch |",
        "|---|---|---|---|---:|",
    ]
    for m, sp in cfg["methods"].items():
        graphs = ", ".join(f"{g} ({cfg['graph_edges'].get(g, 0):,})" for g in sp["graphs"])
        lines.append(
            f"| {m} | `{sp['config']}` | {graphs} | {_args(sp['model_args'])} | {_fmt(sp['config_batch_size'], 'd')} |"
        )

    lines += [
        "",
        f"## Equal batch: every method at B = {cfg['equal_batch']}",
        "",
        "samples/s ÷ CellFormer = this method's samples/s over CellFormer's at the same B in this run "
        "(> 1: faster than CellFormer).",
        "",
        f"| method | B | samples/s | step ms (median) | samples/s ÷ CellFormer | {mem_col} | nodes/sample "
        "| edges/sample | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results["equal_batch"]:
        lines.append(
            f"| {r['method']} | {r['batch_size']} | {_fmt(r.get('samples_per_s'))} | {_fmt(r.get('step_ms_median'))} "
            f"| {_ratio(r.get('ratio_to_cellformer'))} | {_fmt(r.get('peak_mem_mb'))} "
            f"| {_fmt(r.get('nodes_per_sample'))} | {_fmt(r.get('edges_per_sample'))} | {r['status']} |"
        )
    lines += [
        "",
        "## Best batch: every method at its own best batch size over the sweep",
        "",
        "samples/s ÷ CellFormer = this method's best samples/s over CellFormer's best samples/s in this run.",
        "",
        f"| method | best B | samples/s | step ms (median) | samples/s ÷ CellFormer's best | {mem_col} "
        "| sizes timed | status |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results["best_batch"]:
        timed = ", ".join(map(str, r.get("sizes_timed", []))) or "—"
        lines.append(
            f"| {r['method']} | {_fmt(r.get('batch_size'), 'd')} | {_fmt(r.get('samples_per_s'))} "
            f"| {_fmt(r.get('step_ms_median'))} | {_ratio(r.get('ratio_to_cellformer'))} "
            f"| {_fmt(r.get('peak_mem_mb'))} | {timed} | {r['status']} |"
        )

    sizes = sorted({r["batch_size"] for r in results["rows"]})
    lines += [
        "",
        "## Sweep: samples/s per method and batch size",
        "",
        "Each cell: samples/s (median step ms); `q` = --quick reduced steps; otherwise the reason it was not timed.",
        "",
        "| method | " + " | ".join(f"B={b}" for b in sizes) + " |",
        "|---|" + "---:|" * len(sizes),
    ]
    for m in cfg["methods"]:
        cells = []
        for b in sizes:
            r = next((r for r in results["rows"] if r["method"] == m and r["batch_size"] == b), None)
            if r is None:
                cells.append("—")
            elif r["status"] == "ok":
                q = " q" if r.get("reduced") else ""
                cells.append(f"{_sig(r['samples_per_s'])} ({_fmt(r['step_ms_median'], ',.0f')} ms){q}")
            else:
                cells.append(r["status"].split(":")[0])
        lines.append(f"| {m} | " + " | ".join(cells) + " |")

    enc = cfg.get("encoder_shape") or {}
    if results.get("encoder"):
        lines += [
            "",
            "## CellFormer encoder step vs. the device's SDPA",
            "",
            f"Attention FLOPs per fwd+bwd = 3 · 4 · L · T² · d with L={enc['n_layers']}, T={cfg['num_genes'] + 1}, "
            f"d={enc['d_model']} (QKᵀ and AV only); the SDPA reference is one layer's attention "
            f"(1 × {enc['n_heads']} heads × T × {enc['d_model'] // enc['n_heads']}) fwd+bwd.",
            "",
            "| what | dtype | ms / step | attention TFLOP/s | fraction of SDPA |",
            "|---|---|---:|---:|---:|",
        ]
        for r in results["encoder"]:
            lines.append(
                f"| {r['what']} | {r['dtype']} | {_fmt(r['ms'], '.3f')} | {_fmt(r['tflops'], '.3g')} "
                f"| {_fmt(r.get('fraction_of_sdpa'), '.2f')} |"
            )
    elif results.get("encoder_note"):
        lines += ["", f"Encoder FLOP measurement: {results['encoder_note']}"]
    paths["md"].write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    plotted = False
    for m in cfg["methods"]:
        pts = sorted(
            (r["batch_size"], r["samples_per_s"])
            for r in results["rows"]
            if r["method"] == m and r["status"] == "ok" and r.get("samples_per_s")
        )
        if not pts:
            continue
        style = {"lw": 2.5, "color": "black"} if m == "cellformer" else {}
        ax.plot(*zip(*pts, strict=True), "o-", label=m, **style)
        plotted = True
        skipped = [r["batch_size"] for r in results["rows"] if r["method"] == m and r["status"] != "ok"]
        if skipped:  # mark where the line stops because larger sizes were skipped / failed
            ax.annotate(
                f"{m}: B≥{min(skipped)} not run", pts[-1], fontsize=7, xytext=(4, -10), textcoords="offset points"
            )
    ax.axvline(cfg["equal_batch"], color="grey", ls=":", lw=1, label=f"equal batch (B={cfg['equal_batch']})")
    ax.set_xscale("log", base=2)
    ax.set_xticks(cfg["sweep"], [str(b) for b in cfg["sweep"]])
    ax.minorticks_off()
    if plotted:
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    ax.set_xlabel("batch size B")
    ax.set_ylabel("samples / s (full training step)")
    ax.set_title(f"{cfg['device_name'][:70]}", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(paths["png"], dpi=120)
    plt.close(fig)
    return paths


# ---------------------------------------------------------------------- CLI
class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults (except None, whose meaning the help text gives) and keeps the epilog's layout."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def _int_list(text: str | None) -> list[int]:
    return [int(b) for b in (text or "").split(",") if b.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see ``--help``)."""
    p = argparse.ArgumentParser(
        description="Time FULL training steps (collate + H2D + forward + backward + AdamW) of CellFormer and the "
        "baselines, each built from its training config, on the same data at the same batch sizes; writes "
        "benchmarks/results/throughput_<device>.{md,json,png}.",
        formatter_class=_HelpFormatter,
        epilog="Examples::" + __doc__.split("Examples::", 1)[1].split("\n\nWrites", 1)[0],
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--methods", default=",".join(ALL_METHODS), help=f"comma list from {', '.join(ALL_METHODS)}")
    p.add_argument(
        "--config-dir",
        default=str(CONFIG_DIR),
        help="training configs the models and graphs are read from (quickstart.yaml for CellFormer, dango.yaml, "
        "lazy.yaml, neighbor.yaml, additive.yaml)",
    )
    p.add_argument(
        "--dataset",
        default=str(DEFAULT_DATASET),
        help="HDF5 perturbation dataset (the default is simulated on the fly if missing)",
    )
    p.add_argument(
        "--synthetic", action="store_true", help="random 1-3 gene deletions over the yeast genome instead of --dataset"
    )
    p.add_argument("--samples", type=int, default=None, help="records in the subset (default 10000; 2000 --quick)")
    p.add_argument("--equal-batch", type=int, default=256, help="the batch size every method is compared at")
    p.add_argument(
        "--sweep", default=None, help="batch sizes every method is also timed at, e.g. 16,64,256,1024 (best batch)"
    )
    p.add_argument("--batch-sizes", default=None, help="deprecated: extra batch sizes, added to --sweep")
    p.add_argument(
        "--max-step-seconds",
        type=float,
        default=20.0,
        help="skip a batch size of a per-sample graph method (lazy, k-hop) whose step is predicted to take longer "
        "(0 = no cap)",
    )
    p.add_argument("--steps", type=int, default=None, help="timed steps per run (default 50; 10 --quick)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per run (default 5; 2 --quick)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="small subset and few steps; on CPU the slow methods (cellformer, lazy, 2-hop, 3-hop) run only "
        "2 timed steps after 1 warm-up (marked in the sweep table) so the run takes minutes",
    )
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the forward passes (cuda only)")
    p.add_argument("--no-encoder-flops", action="store_true", help="skip the GPU encoder-vs-SDPA FLOP measurement")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default=str(RESULTS_DIR), help="where the md/json/png go")
    args = p.parse_args(argv)
    q = args.quick
    args.samples = args.samples or (2000 if q else 10000)
    args.steps = args.steps if args.steps is not None else (10 if q else 50)
    args.warmup = args.warmup if args.warmup is not None else (2 if q else 5)
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in args.method_list:
        if m not in ALL_METHODS:
            p.error(f"unknown method {m!r}; choose from {', '.join(ALL_METHODS)}")
    args.sweep_list = _int_list(args.sweep)
    if args.batch_sizes:
        print("[throughput] --batch-sizes is deprecated: its sizes are added to --sweep", file=sys.stderr)
        args.sweep_list += _int_list(args.batch_sizes)
    if args.equal_batch < 1 or any(b < 1 for b in args.sweep_list):
        p.error("batch sizes must be >= 1")
    args.batch_size_list = sorted({args.equal_batch, *args.sweep_list})
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; writes the report and returns the results dict."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    t_start = time.perf_counter()
    genome = yeast_genome()
    specs = {m: method_spec(m, Path(args.config_dir)) for m in args.method_list}
    graph_sets: dict[str, GraphSet] = {}
    for m, sp in specs.items():
        graph_sets[m] = load_graphs(sp.graphs, genome, sp.graph_controls)
    data, data_label = load_data(args, genome)
    dataset = PerturbationDataset(data)
    print(f"[throughput] {len(genome)} genes, {len(dataset)} records, device {device}", file=sys.stderr)

    def plan(method: str) -> tuple[int, int, bool]:
        if args.quick and device.type == "cpu" and method in SLOW_ON_CPU:
            return min(args.steps, 2), min(args.warmup, 1), True
        return args.steps, args.warmup, False

    rows = []
    for method, spec in specs.items():
        steps, warmup, reduced = plan(method)
        measured: list[tuple[int, float]] = []
        stop = ""  # once set, the larger sizes are not run, with this reason
        for bsz in args.batch_size_list:
            base = {"method": method, "batch_size": bsz, "steps": steps, "warmup": warmup, "reduced": reduced}
            pred = predicted_step_s(measured, bsz) if method in COST_GROWS_WITH_B else None
            if stop:
                row = {**base, "status": stop}
            elif args.max_step_seconds and pred is not None and pred > args.max_step_seconds:
                row = {**base, "status": SKIPPED_CAP, "predicted_step_s": pred}
            else:
                t0 = time.perf_counter()
                print(f"[throughput] {method} B={bsz}: {warmup}+{steps} steps", file=sys.stderr)
                row = time_training(spec, args, genome, graph_sets[method], dataset, bsz, steps, warmup, device)
                row.update(reduced=reduced, wall_s=time.perf_counter() - t0)
                if pred is not None:
                    row["predicted_step_s"] = pred
                if row["status"] == "ok":
                    measured.append((bsz, row["step_ms_median"] / 1e3))
                elif row["status"].startswith("OOM"):
                    stop = f"skipped (OOM at B={bsz})"
                else:
                    stop = row["status"]
            print(
                f"[throughput]   {method} B={bsz} -> {row['status']} {_fmt(row.get('samples_per_s'))} samples/s",
                file=sys.stderr,
            )
            rows.append(row)
    equal, best = summarise(rows, args.method_list, args.equal_batch)

    encoder, encoder_note, encoder_shape = [], "", {}
    if "cellformer" not in args.method_list:
        encoder_note = "skipped (cellformer not among --methods)"
    elif device.type != "cuda":
        encoder_note = "GPU only (skipped on CPU)"
    elif args.no_encoder_flops:
        encoder_note = "skipped (--no-encoder-flops)"
    else:
        try:
            encoder = encoder_benchmark(specs["cellformer"], args, genome, graph_sets["cellformer"], device)
        except Exception as err:  # noqa: BLE001 - the main tables are still worth writing
            encoder_note = f"failed: {type(err).__name__}: {err}"
    if "cellformer" in specs:
        ma = specs["cellformer"].model_args
        encoder_shape = {k: ma.get(k) for k in ("d_model", "n_layers", "n_heads")}

    argv_used = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    results = {
        "config": {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": rel_command(argv_used),
            "device": device.type,
            "device_name": device_name(device, threads=True),
            "torch": torch.__version__,
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "bf16": bool(args.bf16 and device.type == "cuda"),
            "num_genes": len(genome),
            "dataset": data_label,
            "samples": len(dataset),
            "equal_batch": args.equal_batch,
            "sweep": args.batch_size_list,
            "batch_size": args.equal_batch,
            "max_step_seconds": args.max_step_seconds,
            "steps": args.steps,
            "warmup": args.warmup,
            "quick": args.quick,
            "config_dir": rel_path(Path(args.config_dir).resolve()),
            "methods": {m: sp.summary() for m, sp in specs.items()},
            "graph_edges": {n: g.num_edges for gs in graph_sets.values() for n, g in gs.items()},
            "encoder_shape": encoder_shape,
        },
        "rows": rows,
        "equal_batch": equal,
        "best_batch": best,
        "encoder": encoder,
        "encoder_note": encoder_note,
    }
    results["config"]["wall_s"] = time.perf_counter() - t_start
    paths = write_reports(results, Path(args.out_dir), device_tag(device))
    print(paths["md"].read_text())
    wrote = ", ".join(rel_path(p) for p in paths.values())
    print(f"[throughput] wrote {wrote} in {time.perf_counter() - t_start:.0f}s")
    return results


if __name__ == "__main__":
    main()
