"""Benchmark: pair-screen throughput (pairs/s) of a CellFormer checkpoint with the cached encoder.

    python benchmarks/screen.py --device cpu            # 200k pairs, extrapolated to all yeast pairs
    python benchmarks/screen.py --device cuda           # all ~20.5 M yeast pairs, timed end to end
    python benchmarks/screen.py --ckpt runs/best.ckpt   # a trained checkpoint instead

Without ``--ckpt`` it builds an untrained CellFormer exactly as ``configs/quickstart.yaml`` does (its model
arguments and graphs) on the embedded yeast genome with random weights — throughput does not
depend on training — writes it as a cellformer checkpoint and loads it back through the normal path
(:meth:`Predictor.from_checkpoint`). The measured loop is :func:`cellformer.queries.screen.screen` itself
(vectorised pair generation, the head on the cached encoding, the top-k merge), by ``fitness``.

Writes ``benchmarks/results/screen_<device>.md`` and ``.json`` (device, torch, N, threads, numbers).
Targets (reported, not asserted): >= 20,000 pairs/s on 2 CPU cores; all yeast pairs < 30 s on an
H100-class GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from timing import device_name, timed  # noqa: E402

from cellformer.queries import Predictor  # noqa: E402
from cellformer.queries.screen import screen  # noqa: E402

QUICKSTART = ROOT / "configs" / "quickstart.yaml"
CPU_TARGET_PAIRS_PER_S = 20_000
GPU_TARGET_ALL_PAIRS_S = 30.0


def build_random_checkpoint(path: Path, seed: int = 0) -> Path:
    """An untrained CellFormer built as ``configs/quickstart.yaml`` builds it, saved as a cellformer checkpoint."""
    import yaml

    from cellformer.data.context import DataContext
    from cellformer.data.simulate import PHENOTYPES
    from cellformer.genome import yeast_genome
    from cellformer.graphs import yeast_graphs
    from cellformer.models.checkpoint import CHECKPOINT_KEY, context_to_checkpoint
    from cellformer.models.registry import build_model

    config = yaml.safe_load(QUICKSTART.read_text())
    model_args, graph_names = config["model"]["model_args"], config["data"]["graphs"]
    torch.manual_seed(seed)
    genome = yeast_genome()
    graphs, _ = yeast_graphs(graph_names, genome)
    context = DataContext(genome, graphs, list(PHENOTYPES))
    model = build_model("cellformer", genome, graphs, list(PHENOTYPES), **model_args)
    ckpt = {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        CHECKPOINT_KEY: context_to_checkpoint(context, "cellformer", model.hparams_dict),
    }
    torch.save(ckpt, path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="checkpoint to benchmark (default: a random quickstart-size CellFormer)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--pairs", type=int, help="pairs to score (default: 200,000 on CPU, all pairs on CUDA)")
    p.add_argument("--batch-size", type=int, help="pairs per model call (default: 1024 CPU, 32768 CUDA)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)

    device = torch.device(args.device)
    load_before = os.getloadavg()[0]
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    batch_size = args.batch_size or (32768 if device.type == "cuda" else 1024)

    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        with timed(device, times, "build"):
            ckpt = Path(args.ckpt) if args.ckpt else build_random_checkpoint(Path(tmp) / "random_quickstart.ckpt")
        with timed(device, times, "load"):
            predictor = Predictor.from_checkpoint(ckpt, device=device)
    t_build, t_load = times["build"], times["load"]
    n = predictor.num_base_genes
    total = math.comb(n, 2)
    by = predictor.phenotype_names[0]

    with timed(device, times, "encode"):
        predictor.encoding(())
    t_encode = times["encode"]
    predictor.fingerprint()  # hashed once, outside the timed loop

    # warm-up (allocator, kernels), then the timed run
    screen(predictor, 2, by=by, top=1000, batch_size=batch_size, max_chunks=2, progress=False)
    pairs = args.pairs or (total if device.type == "cuda" else 200_000)
    pairs = min(pairs, total)
    chunks = max(1, pairs // batch_size) if pairs < total else -(-total // batch_size)
    with timed(device, times, "screen"):
        res = screen(predictor, 2, by=by, top=1000, batch_size=batch_size, max_chunks=chunks, progress=False)
    elapsed = times["screen"]
    scored = res.num_scored
    rate = scored / elapsed
    complete = scored >= total
    all_pairs_s = elapsed if complete else total / rate

    result = {
        "benchmark": f"pair screen (cellformer.queries.screen.screen, top 1000 by {by})",
        "device": device.type,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_average_1min_before": round(load_before, 2),
        "torch_threads": torch.get_num_threads(),
        "checkpoint": str(args.ckpt) if args.ckpt else "random quickstart-size CellFormer (untrained)",
        "model_hparams": {k: v for k, v in predictor.model.hparams_dict.items() if k != "graph_reg"},
        "num_genes": n,
        "num_phenotypes": len(predictor.phenotype_names),
        "all_pairs": total,
        "batch_size": batch_size,
        "pairs_scored": scored,
        "seconds": round(elapsed, 3),
        "pairs_per_s": round(rate, 1),
        "all_pairs_seconds": round(all_pairs_s, 1),
        "all_pairs_seconds_extrapolated": not complete,
        "encoder_seconds": round(t_encode, 3),
        "checkpoint_build_seconds": round(t_build, 2),
        "checkpoint_load_seconds": round(t_load, 2),
        "targets": {
            "cpu_pairs_per_s": CPU_TARGET_PAIRS_PER_S,
            "gpu_all_pairs_seconds": GPU_TARGET_ALL_PAIRS_S,
        },
    }
    if device.type == "cpu":
        result["meets_target"] = rate >= CPU_TARGET_PAIRS_PER_S
    else:
        result["meets_target"] = all_pairs_s < GPU_TARGET_ALL_PAIRS_S

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"screen_{device.type}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    label = "extrapolated from the measured rate" if not complete else "measured end to end"
    target = (
        f">= {CPU_TARGET_PAIRS_PER_S:,} pairs/s on 2 CPU cores"
        if device.type == "cpu"
        else f"all pairs < {GPU_TARGET_ALL_PAIRS_S:.0f} s on an H100-class GPU"
    )
    md = f"""# Pair-screen benchmark ({device.type})

`python benchmarks/screen.py --device {args.device}` — {result["checkpoint"]}, hyper-parameters
{result["model_hparams"]}.

| | |
|---|---|
| device | {result["device_name"]} ({result["cpu_count"]} CPUs visible, {result["torch_threads"]} torch threads) |
| load average (1 min) before the run | {result["load_average_1min_before"]} (> cores: CPUs were shared) |
| torch / python | {result["torch"]} / {result["python"]} |
| genes N / all pairs | {n:,} / {total:,} |
| batch size | {batch_size:,} |
| pairs scored (timed) | {scored:,} in {elapsed:.2f} s |
| **pairs/s** | **{rate:,.0f}** |
| all {total:,} pairs | {all_pairs_s:,.1f} s ({label}) |
| encoder pass (once, cached) | {t_encode:.3f} s |
| target | {target}: {"met" if result["meets_target"] else "NOT met"} |

The timed loop is the real screen: vectorised pair generation, the perturbation head on the cached
encoder output (O(B·N·d) per batch), and the top-1000 merge.
"""
    stem.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {stem}.md and {stem}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
