"""Training-step throughput of CellFormer against the graph baselines, under identical conditions.

Unlike the design note's table (which timed only the batch transfer), every timed step here is a FULL
training step: collate (the dataset's vectorised ``__getitems__``) + host->device copy + forward +
loss (masked MSE + the model's extra loss terms) + backward + AdamW step, with
``torch.cuda.synchronize()`` before the clock is read on GPU.

Examples::

    python benchmarks/throughput.py --device cpu --quick
    python benchmarks/throughput.py --device cuda --bf16 --sweep 16,64,256,1024
    python benchmarks/throughput.py --device cuda --batch-sizes 64,28   # + the note's 64 (DANGO) / 28 setting

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
import re
import shlex
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import numpy as np
import psutil
import torch
import torch.nn.functional as F
from timing import device_name, device_tag, free_memory, is_oom, sync
from torch.utils.data import DataLoader, RandomSampler

from cellformer.data.dataset import PerturbationData, PerturbationDataset, PerturbationType, identity_collate
from cellformer.defaults import DEFAULT_DATASET
from cellformer.genome import Genome, yeast_genome
from cellformer.graphs import GraphSet, yeast_graphs
from cellformer.models.base import PhenotypeModel

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ALL_METHODS = ["cellformer", "dango", "lazy", "1-hop", "2-hop", "3-hop", "additive"]
#: methods whose CPU step takes seconds at yeast size: few timed steps in --quick mode
SLOW_ON_CPU = {"cellformer", "lazy", "2-hop", "3-hop"}
DEFAULT_GRAPHS = "string_neighborhood,string_database,ppi_physical,regulatory"


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
        label = str(path)
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
            label = f"the default simulated yeast screen (built on the fly; {DEFAULT_DATASET} was missing)"
        data = PerturbationData.load(path)
    if data.genes != list(genome.genes):
        raise ValueError(f"{path} was built on a different gene list than the yeast genome")
    rng = np.random.default_rng(args.seed)
    pool = data.split_indices("train") if data.split is not None else np.arange(len(data))
    rows = np.sort(rng.choice(pool, min(args.samples, len(pool)), replace=False))
    which = "train " if data.split is not None else ""
    return data.subset(rows), f"{label}: {len(rows)} random {which}records of {len(data)}"


# ---------------------------------------------------------------------- models
def cellformer_kwargs(args: argparse.Namespace, graph_names: list[str]) -> dict:
    """CellFormer size plus one regularised head per graph (layer 0 first, then the next layers)."""
    reg = {
        name: {"layer": i // args.cf_heads, "head": i % args.cf_heads, "weight": 0.1, "rows": 256}
        for i, name in enumerate(graph_names)
        if i < args.cf_heads * args.cf_layers
    }
    return {"d_model": args.cf_d_model, "n_layers": args.cf_layers, "n_heads": args.cf_heads, "graph_reg": reg}


def model_factory(method: str, args: argparse.Namespace) -> tuple[Callable[..., PhenotypeModel], dict]:
    """``(class, hyper-parameters)`` of a method (imports lazily; CellFormer may be unavailable)."""
    if method == "cellformer":
        from cellformer.models.cellformer import CellFormer

        return CellFormer, cellformer_kwargs(args, args.graph_names)
    if method == "dango":
        from cellformer.models.baselines import Dango

        return Dango, {"d": args.d, "heads": 4, "recon_weight": 1.0, "recon_edges": 1024}
    if method == "lazy":
        from cellformer.models.baselines import LazySubgraph

        return LazySubgraph, {"d": args.d}
    if re.fullmatch(r"\d-hop", method):
        from cellformer.models.baselines import NeighborSubgraph

        return NeighborSubgraph, {"hops": int(method[0]), "d": args.d}
    if method == "additive":
        from cellformer.models.baselines import Additive

        return Additive, {}
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(ALL_METHODS)}")


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
    method: str,
    args: argparse.Namespace,
    genome: Genome,
    graphs: GraphSet,
    dataset: PerturbationDataset,
    batch_size: int,
    steps: int,
    warmup: int,
    device: torch.device,
) -> dict:
    """Warm-up, then ``steps`` timed full training steps of ``method`` at ``batch_size``."""
    row = {"method": method, "batch_size": batch_size, "steps": steps, "warmup": warmup, "status": "ok"}
    try:
        cls, hparams = model_factory(method, args)
    except Exception as err:  # noqa: BLE001 - report, do not crash (e.g. CellFormer not written yet)
        return {**row, "status": f"unavailable: {type(err).__name__}: {err}"}
    model = opt = None
    try:
        torch.manual_seed(args.seed)
        model = cls(genome, graphs, dataset.data.phenotype_names, **hparams).to(device)
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


def encoder_benchmark(args: argparse.Namespace, genome: Genome, graphs: GraphSet, device: torch.device) -> list[dict]:
    """CellFormer encoder fwd+bwd (no head, no optimizer) vs. a bare SDPA fwd+bwd at the same shape."""

    from cellformer.models.cellformer import CellFormer

    rows = []
    kw = cellformer_kwargs(args, args.graph_names)
    kw["graph_reg"] = {}
    model = CellFormer(genome, graphs, ["fitness"], dropout=0.0, **kw).to(device)
    tokens, d, layers, heads = len(genome) + 1, args.cf_d_model, args.cf_layers, args.cf_heads
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


# ---------------------------------------------------------------------- reporting
def _fmt(x, spec: str = ",.1f") -> str:
    return "—" if x is None else format(x, spec)


def _load(cfg: dict) -> str:
    la = cfg.get("load_average")
    return "—" if not la else " / ".join(f"{x:.1f}" for x in la)


def write_reports(results: dict, out_dir: Path, tag: str) -> dict[str, Path]:
    """Markdown table, JSON and PNG chart."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = results["config"]
    paths = {ext: out_dir / f"throughput_{tag}.{ext}" for ext in ("md", "json", "png")}
    paths["json"].write_text(json.dumps(results, indent=2))

    graph_list = ", ".join(f"{k} ({v:,} edges)" for k, v in cfg["graphs"].items())
    lines = [
        f"# Training throughput — {cfg['device_name']}",
        "",
        f"- date: {cfg['date']}",
        f"- command: `{cfg['command']}`",
        f"- device: {cfg['device']} — {cfg['device_name']}; torch {cfg['torch']}; bf16 autocast: {cfg['bf16']}",
        f"- genome: {cfg['num_genes']} genes; graphs: {graph_list}",
        f"- dataset: {cfg['dataset']}",
        f"- host load average at the end (1/5/15 min): {_load(cfg)} — other processes distort CPU timings",
        f"- batch size: {cfg['batch_size']}"
        + (
            f" (plus the note's setting: DANGO at {cfg['batch_sizes'][0]}, others at {cfg['batch_sizes'][1]})"
            if len(cfg["batch_sizes"]) > 1
            else ""
        ),
        f"- steps: {cfg['warmup']} warm-up + {cfg['steps']} timed full training steps per method"
        + (" (--quick: slow methods fewer, see the steps column)" if cfg["quick"] else ""),
        "- a step = collate + host→device + forward + loss + backward + AdamW step"
        + (" (cuda synchronised before reading the clock)" if cfg["device"] == "cuda" else ""),
        "- peak mem: "
        + (
            "CUDA max_memory_allocated during the timed steps"
            if cfg["device"] == "cuda"
            else "process peak RSS growth during the timed steps (sampled every 2 ms; 0 = no growth beyond what "
            "the warm-up already reached)"
        ),
        "- nodes/edges per sample: the graph each sample is run on (edges as directed entries); DANGO and "
        "CellFormer encode the wild type once per step instead (DANGO: nodes = |S|)",
        "",
        "| method | B | steps (warm-up) | it/s | samples/s | speed-up vs DANGO | peak mem (MB) | nodes/sample "
        "| edges/sample | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results["rows"]:
        steps = f"{r['steps']} ({r['warmup']})" + (" quick: slow method" if r.get("reduced") else "")
        lines.append(
            f"| {r['method']}{' (sweep)' if r.get('sweep') else ''} | {r['batch_size']} | {steps} "
            f"| {_fmt(r.get('it_per_s'), ',.3f')} | {_fmt(r.get('samples_per_s'))} "
            f"| {_fmt(r.get('speedup_vs_dango'), ',.3g')}{'×' if r.get('speedup_vs_dango') else ''} "
            f"| {_fmt(r.get('peak_mem_mb'))} | {_fmt(r.get('nodes_per_sample'))} | {_fmt(r.get('edges_per_sample'))} "
            f"| {r['status']} |"
        )
    if results.get("encoder"):
        lines += [
            "",
            "## CellFormer encoder step vs. the device's SDPA",
            "",
            f"Attention FLOPs per fwd+bwd = 3 · 4 · L · T² · d with L={cfg['cf_layers']}, T={cfg['num_genes'] + 1}, "
            f"d={cfg['cf_d_model']} (QKᵀ and AV only); the SDPA reference is one layer's attention "
            f"(1 × {cfg['cf_heads']} heads × T × {cfg['cf_d_model'] // cfg['cf_heads']}) fwd+bwd.",
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

    main_rows = [r for r in results["rows"] if not r.get("sweep")]
    sweep_rows = [r for r in results["rows"] if r.get("sweep") and r.get("samples_per_s")]
    ncols = 2 if sweep_rows else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.5 * ncols, 4.2), squeeze=False)
    ax = axes[0, 0]
    labels = [f"{r['method']}\nB={r['batch_size']}" for r in main_rows]
    vals = [r.get("samples_per_s") or 0.0 for r in main_rows]
    bars = ax.bar(range(len(vals)), [v if v > 0 else np.nan for v in vals], color="tab:blue")
    for i, (b, r) in enumerate(zip(bars, main_rows, strict=True)):
        text = _fmt(r.get("samples_per_s"), ",.3g") if r.get("samples_per_s") else r["status"].split(":")[0]
        if vals[i] > 0:
            ax.annotate(text, (i, b.get_height()), ha="center", va="bottom", fontsize=7)
        else:  # OOM / unavailable: write the reason at the bottom of the axis
            ax.annotate(text, (i, 0.02), xycoords=("data", "axes fraction"), ha="center", fontsize=7, color="red")
    ax.set_xticks(range(len(vals)), labels, fontsize=7)
    if any(v > 0 for v in vals):
        ax.set_yscale("log")
    ax.set_ylabel("samples / s (full training step)")
    ax.set_title(f"{cfg['device_name'][:60]}", fontsize=8)
    if sweep_rows:
        ax2 = axes[0, 1]
        ax2.plot([r["batch_size"] for r in sweep_rows], [r["samples_per_s"] for r in sweep_rows], "o-")
        ax2.set_xscale("log", base=2)
        ax2.set_yscale("log")
        ax2.set_xlabel("batch size B")
        ax2.set_ylabel("samples / s")
        ax2.set_title("CellFormer batch-size sweep", fontsize=9)
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time FULL training steps (collate + H2D + forward + backward + AdamW) of CellFormer and the "
        "baselines on the same data, graphs and batch size; writes "
        "benchmarks/results/throughput_<device>.{md,json,png}.",
        formatter_class=_HelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--methods", default=",".join(ALL_METHODS), help=f"comma list from {', '.join(ALL_METHODS)}")
    p.add_argument(
        "--dataset",
        default=str(DEFAULT_DATASET),
        help="HDF5 perturbation dataset (the default is simulated on the fly if missing)",
    )
    p.add_argument(
        "--synthetic", action="store_true", help="random 1-3 gene deletions over the yeast genome instead of --dataset"
    )
    p.add_argument("--samples", type=int, default=None, help="records in the subset (default 10000; 2000 --quick)")
    p.add_argument("--graphs", default=DEFAULT_GRAPHS, help="comma list of shipped yeast graphs (>= 4 recommended)")
    p.add_argument(
        "--batch-sizes",
        default="64",
        help="'B' for every method, or 'B1,B2': all methods at B1, then the non-DANGO methods also at B2 "
        "(the note's setting is 64,28)",
    )
    p.add_argument("--steps", type=int, default=None, help="timed steps per method (default 50; 10 --quick)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per method (default 5; 2 --quick)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="small subset and few steps; on CPU the slow methods (cellformer, lazy, 2-hop, 3-hop) run only "
        "2 timed steps after 1 warm-up (marked in the table) so the run takes minutes",
    )
    p.add_argument("--sweep", default=None, help="CellFormer batch-size sweep, e.g. 16,64,256,1024")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the forward passes (cuda only)")
    p.add_argument("--no-encoder-flops", action="store_true", help="skip the GPU encoder-vs-SDPA FLOP measurement")
    p.add_argument("--d", type=int, default=64, help="hidden width of the baselines")
    p.add_argument("--cf-d-model", type=int, default=None, help="CellFormer d_model (default 128; 64 --quick)")
    p.add_argument("--cf-layers", type=int, default=None, help="CellFormer layers (default 4; 2 --quick)")
    p.add_argument("--cf-heads", type=int, default=None, help="CellFormer heads (default 8; 4 --quick)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default=str(RESULTS_DIR), help="where the md/json/png go")
    args = p.parse_args(argv)
    q = args.quick
    args.samples = args.samples or (2000 if q else 10000)
    args.steps = args.steps if args.steps is not None else (10 if q else 50)
    args.warmup = args.warmup if args.warmup is not None else (2 if q else 5)
    args.cf_d_model = args.cf_d_model or (64 if q else 128)
    args.cf_layers = args.cf_layers or (2 if q else 4)
    args.cf_heads = args.cf_heads or (4 if q else 8)
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in args.method_list:
        if m not in ALL_METHODS:
            p.error(f"unknown method {m!r}; choose from {', '.join(ALL_METHODS)}")
    args.batch_size_list = [int(b) for b in args.batch_sizes.split(",")]
    if not 1 <= len(args.batch_size_list) <= 2:
        p.error("--batch-sizes takes one or two values")
    args.sweep_list = [int(b) for b in (args.sweep or "").split(",") if b.strip()]
    args.graph_names = [g.strip() for g in args.graphs.split(",") if g.strip()]
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    t_start = time.perf_counter()
    genome = yeast_genome()
    graphs, _ = yeast_graphs(args.graph_names, genome=genome)
    data, data_label = load_data(args, genome)
    dataset = PerturbationDataset(data)
    print(f"[throughput] {len(genome)} genes, {graphs}, {len(dataset)} records, device {device}", file=sys.stderr)

    def plan(method: str) -> tuple[int, int, bool]:
        if args.quick and device.type == "cpu" and method in SLOW_ON_CPU:
            return min(args.steps, 2), min(args.warmup, 1), True
        return args.steps, args.warmup, False

    runs = [(m, args.batch_size_list[0], False) for m in args.method_list]
    if len(args.batch_size_list) == 2:
        runs += [(m, args.batch_size_list[1], False) for m in args.method_list if m != "dango"]
    if args.sweep_list and "cellformer" in args.method_list:
        runs += [("cellformer", b, True) for b in args.sweep_list]

    rows = []
    for method, bsz, sweep in runs:
        steps, warmup, reduced = plan(method)
        t0 = time.perf_counter()
        print(f"[throughput] {method} B={bsz}{' (sweep)' if sweep else ''}: {warmup}+{steps} steps", file=sys.stderr)
        row = time_training(method, args, genome, graphs, dataset, bsz, steps, warmup, device)
        row.update(sweep=sweep, reduced=reduced, wall_s=time.perf_counter() - t0)
        print(f"[throughput]   -> {row['status']} {_fmt(row.get('samples_per_s'))} samples/s", file=sys.stderr)
        rows.append(row)
    dango = next((r for r in rows if r["method"] == "dango" and r.get("samples_per_s")), None)
    for r in rows:
        if dango and r.get("samples_per_s"):
            r["speedup_vs_dango"] = r["samples_per_s"] / dango["samples_per_s"]

    encoder, encoder_note = [], ""
    if "cellformer" not in args.method_list:
        encoder_note = "skipped (cellformer not among --methods)"
    elif device.type != "cuda":
        encoder_note = "GPU only (skipped on CPU)"
    elif args.no_encoder_flops:
        encoder_note = "skipped (--no-encoder-flops)"
    else:
        try:
            encoder = encoder_benchmark(args, genome, graphs, device)
        except Exception as err:  # noqa: BLE001 - the main table is still worth writing
            encoder_note = f"failed: {type(err).__name__}: {err}"

    results = {
        "config": {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": " ".join(shlex.quote(a) for a in [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]),
            "device": device.type,
            "device_name": device_name(device, threads=True),
            "torch": torch.__version__,
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "bf16": bool(args.bf16 and device.type == "cuda"),
            "num_genes": len(genome),
            "graphs": {name: g.num_edges for name, g in graphs.items()},
            "dataset": data_label,
            "samples": len(dataset),
            "batch_size": args.batch_size_list[0],
            "batch_sizes": args.batch_size_list,
            "steps": args.steps,
            "warmup": args.warmup,
            "quick": args.quick,
            "d": args.d,
            "cf_d_model": args.cf_d_model,
            "cf_layers": args.cf_layers,
            "cf_heads": args.cf_heads,
        },
        "rows": rows,
        "encoder": encoder,
        "encoder_note": encoder_note,
    }
    results["config"]["wall_s"] = time.perf_counter() - t_start
    paths = write_reports(results, Path(args.out_dir), device_tag(device))
    print(paths["md"].read_text())
    print(f"[throughput] wrote {', '.join(str(p) for p in paths.values())} in {time.perf_counter() - t_start:.0f}s")
    return results


if __name__ == "__main__":
    main()
