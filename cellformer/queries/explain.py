"""Attention reports of a trained CellFormer: graph-tied heads, cross-attention and head–graph alignment.

:func:`explain` writes into one directory:

* ``head_<graph>_L<layer>H<head>.tsv`` / ``.png`` — for every regularised head, the gene's attention
  over all genes (top genes, each flagged as a neighbour of the gene in that head's graph or not) and
  a bar plot of it;
* ``cross_attention.tsv`` / ``.png`` — the perturbation head's cross-attention ``β`` of the query set S
  (default S = {gene}) over the genome, top genes;
* ``alignment.tsv`` / ``alignment.png`` — the attention–graph alignment (mean attention mass a graph's
  rows put on their neighbours) of every (layer, head) against every graph, with the chance level;
* ``summary.json`` — the predictions for S, and per regularised head the neighbour mass of the gene.

The files are written into a temporary folder next to the directory and moved in once all of them are
complete: a failed report leaves neither a half-written nor an empty folder (:func:`explain_files` lists
them, so that a command can refuse to overwrite them beforehand).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellformer.data.dataset import PerturbationType
from cellformer.errors import UserError
from cellformer.paths import staged_directory


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _write_tsv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(header)
        for r in rows:
            w.writerow([f"{x:.6g}" if isinstance(x, float) else x for x in r])


def _bar_plot(path: Path, labels: list[str], values: np.ndarray, flags: np.ndarray, title: str, flag_name: str) -> None:
    plt = _plt()
    k = len(labels)
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.22 * k + 1.2)))
    colors = np.where(flags, "#d62728", "#7f7f7f")
    y = np.arange(k)[::-1]
    ax.barh(y, values, color=colors)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xlabel("attention")
    ax.set_title(title, fontsize=9)
    from matplotlib.patches import Patch

    ax.legend(
        handles=[Patch(color="#d62728", label=flag_name), Patch(color="#7f7f7f", label=f"not {flag_name}")],
        fontsize=7,
        loc="lower right",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _neighbours(graph: Any, i: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Out-neighbours of gene ``i`` (the row of ``Ã`` the regulariser uses) and their edge weights."""
    if i >= graph.num_nodes:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    a = graph.adj
    lo, hi = a.indptr[i], a.indptr[i + 1]
    cols, w = a.indices[lo:hi].astype(np.int64), a.data[lo:hi]
    keep = cols < n
    return cols[keep], w[keep]


def head_report(predictor: Any, gene: int, out_dir: Path, top: int = 30) -> list[dict[str, Any]]:
    """One TSV + PNG per regularised head: the gene's attention vs its neighbours in the head's graph."""
    model = predictor.model
    genome = predictor.base_genome
    enc = predictor.encoding(())
    n = len(genome)
    summaries = []
    for name, cfg in getattr(model, "graph_reg", {}).items():
        layer, head = int(cfg.layer), int(cfg.head)
        with torch.inference_mode():
            alpha = model.attention_rows(layer, head, [gene], enc=enc)[0].float().cpu().numpy()
        nb, w = _neighbours(predictor.graphs[name], gene, n)
        is_nb = np.zeros(n, dtype=bool)
        is_nb[nb] = True
        weight = np.zeros(n, dtype=np.float32)
        weight[nb] = w
        order = np.argsort(-alpha, kind="stable")[:top]
        stem = f"head_{name}_L{layer}H{head}"
        _write_tsv(
            out_dir / f"{stem}.tsv",
            ["rank", "gene", "alias", "attention", "neighbour", "edge_weight"],
            [
                [r + 1, genome.genes[j], genome.aliases[j], float(alpha[j]), int(is_nb[j]), float(weight[j])]
                for r, j in enumerate(order.tolist())
            ],
        )
        mass = float(alpha[is_nb].sum())
        chance = float(is_nb.sum() / n)
        _bar_plot(
            out_dir / f"{stem}.png",
            [genome.display(j) for j in order.tolist()],
            alpha[order],
            is_nb[order],
            f"{genome.display(gene)}: layer {layer} head {head} (tied to {name})\n"
            f"mass on {int(is_nb.sum())} neighbours {mass:.3f} (chance {chance:.3f})",
            f"{name} neighbour",
        )
        summaries.append(
            {
                "graph": name,
                "layer": layer,
                "head": head,
                "neighbours": int(is_nb.sum()),
                "neighbour_mass": mass,
                "chance": chance,
                "neighbours_in_top": int(is_nb[order].sum()),
                "table": f"{stem}.tsv",
            }
        )
    return summaries


def cross_attention_report(
    predictor: Any, query: Sequence[str], types: Sequence[str] | None, out_dir: Path, top: int = 30
) -> dict[str, Any]:
    """The cross-attention β of the perturbation head for query S over the genome (top genes)."""
    model = predictor.model
    idx_sets, type_sets = predictor.resolve([list(query)], None if types is None else [list(types)])
    batch = predictor.make_batch(idx_sets, type_sets).to(predictor.device)
    key = batch.variants[0]
    added = predictor._variant_names(key)
    with torch.inference_mode():
        if predictor.has_encoder_cache:
            enc = predictor.encoding(added)
            pred, beta = model.predict_from_encoding(
                enc, batch.gene_index, batch.types, batch.ptr, batch.batch, return_attention=True
            )
        else:
            out = model(batch, return_attention=True)
            pred, beta = out.pred, out.extras.get("beta")
    if beta is None:
        raise UserError(f"{type(model).__name__} exposes no cross-attention weights")
    beta = beta[0].float().cpu().numpy()
    genome = predictor.base_genome
    labels = list(genome.genes) + list(added)
    aliases = list(genome.aliases) + [""] * len(added)
    beta = beta[: len(labels)]
    members = set(batch.gene_index.cpu().tolist())
    order = np.argsort(-beta, kind="stable")[:top]
    _write_tsv(
        out_dir / "cross_attention.tsv",
        ["rank", "gene", "alias", "beta", "in_set"],
        [[r + 1, labels[j], aliases[j], float(beta[j]), int(j in members)] for r, j in enumerate(order.tolist())],
    )
    set_names = [labels[j] for j in batch.gene_index.cpu().tolist()]
    _bar_plot(
        out_dir / "cross_attention.png",
        [f"{labels[j]} ({aliases[j]})" if aliases[j] else labels[j] for j in order.tolist()],
        beta[order],
        np.array([j in members for j in order.tolist()], dtype=bool),
        f"cross-attention β of S = {{{', '.join(set_names)}}}",
        "member of S",
    )
    return {
        "set": set_names,
        "types": [PerturbationType(t).name.lower() for t in batch.types.cpu().tolist()],
        "predictions": dict(zip(predictor.phenotype_names, pred[0].float().cpu().tolist(), strict=True)),
        "beta_mass_on_set": float(sum(beta[j] for j in members if j < len(beta))),
    }


def alignment_report(predictor: Any, out_dir: Path, rows: int | None = 1024, seed: int = 0) -> list[dict[str, Any]]:
    """Alignment of every (layer, head) with every graph (TSV + heatmap); ``rows`` sampled per graph (None = all)."""
    model = predictor.model
    enc = predictor.encoding(())
    gen = torch.Generator().manual_seed(seed)
    graph_names = list(predictor.graphs.names)
    tied = {(int(c.layer), int(c.head)): g for g, c in getattr(model, "graph_reg", {}).items()}
    n = len(predictor.base_genome)
    records = []
    values = np.full((model.n_layers * model.n_heads, len(graph_names)), np.nan)
    for gi, name in enumerate(graph_names):
        valid = model.regularizer.rows_of(name).valid
        if rows is not None and valid.numel() > rows:
            pick = torch.randperm(valid.numel(), generator=gen)[:rows].sort().values
            r = valid[pick.to(valid.device)]
        else:
            r = valid
        gt = model.regularizer.rows_of(name)
        deg = (gt.crow[r + 1] - gt.crow[r]).float()
        chance = float(deg.mean() / n) if r.numel() else float("nan")
        for layer in range(model.n_layers):
            for head in range(model.n_heads):
                with torch.inference_mode():
                    a = float(model.attention_alignment(name, layer, head, r, enc=enc))
                values[layer * model.n_heads + head, gi] = a
                records.append(
                    {
                        "graph": name,
                        "layer": layer,
                        "head": head,
                        "alignment": a,
                        "chance": chance,
                        "ratio_to_chance": a / chance if chance > 0 else float("nan"),
                        "tied_graph": tied.get((layer, head), ""),
                        "rows": int(r.numel()),
                    }
                )
    _write_tsv(
        out_dir / "alignment.tsv",
        ["graph", "layer", "head", "alignment", "chance", "ratio_to_chance", "tied_graph", "rows"],
        [
            [d[k] for k in ("graph", "layer", "head", "alignment", "chance", "ratio_to_chance", "tied_graph", "rows")]
            for d in records
        ],
    )
    plt = _plt()
    chance = np.array([next(d["chance"] for d in records if d["graph"] == g) for g in graph_names])
    ratio = values / np.where(chance > 0, chance, np.nan)[None, :]
    nr, nc = values.shape
    fig, ax = plt.subplots(figsize=(1.4 * nc + 2.5, 0.5 * nr + 1.8))
    vmax = max(2.0, float(np.nanmax(ratio))) if np.isfinite(ratio).any() else 2.0
    im = ax.imshow(ratio, aspect="auto", cmap="viridis", vmin=0.0, vmax=vmax)
    ax.set_xticks(range(nc))
    ax.set_xticklabels(graph_names, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(nr))
    ax.set_yticklabels([f"L{ell} H{h}" for ell in range(model.n_layers) for h in range(model.n_heads)], fontsize=8)
    for i in range(nr):
        for j in range(nc):
            ell, h = divmod(i, model.n_heads)
            mark = "*" if tied.get((ell, h)) == graph_names[j] else ""
            text = f"{values[i, j]:.3g}{mark}\n×{ratio[i, j]:.2g}"
            ax.text(j, i, text, ha="center", va="center", fontsize=6.5, color="white")
    fig.colorbar(im, ax=ax, label="alignment / chance")
    ax.set_title("attention mass on graph neighbours (× chance; * = regularised head)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / "alignment.png", dpi=120)
    plt.close(fig)
    return records


def explain_files(model: Any) -> list[str]:
    """The names of the files :func:`explain` writes for ``model``."""
    heads = [f"head_{name}_L{int(c.layer)}H{int(c.head)}" for name, c in getattr(model, "graph_reg", {}).items()]
    stems = [*heads, "cross_attention", "alignment"]
    return [f"{stem}{ext}" for stem in stems for ext in (".tsv", ".png")] + ["summary.json"]


def explain(
    predictor: Any,
    gene: str,
    out_dir: str | Path,
    query: Sequence[str] | None = None,
    types: Sequence[str] | None = None,
    top: int = 30,
    alignment_rows: int | None = 1024,
) -> dict[str, Any]:
    """Write the attention reports for ``gene`` (and query S, default {gene}) into ``out_dir``.

    Needs a CellFormer-like model (``attention_rows``, ``attention_alignment``, ``graph_reg``); returns
    the summary that is also written to ``summary.json``. ``top`` must be positive and
    ``alignment_rows`` positive or None (all rows); an empty ``query`` is an error.
    """
    if top <= 0:
        raise UserError(f"top must be a positive number of genes, got {top}")
    if alignment_rows is not None and alignment_rows <= 0:
        raise UserError(f"alignment rows must be positive (or all), got {alignment_rows}")
    if query is not None and not list(query):
        raise UserError("the query set is empty")
    model = predictor.model
    missing = [m for m in ("attention_rows", "attention_alignment", "regularizer") if not hasattr(model, m)]
    if missing or not predictor.has_encoder_cache:
        raise UserError(
            f"explain needs a CellFormer checkpoint; {type(model).__name__} has no attention maps "
            f"(missing: {', '.join(missing) or 'encode_genome'})"
        )
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out-dir {out_dir} is a file; give a directory")
    g = predictor.base_genome.index(gene, "--gene")
    summary: dict[str, Any] = {"gene": predictor.base_genome.display(g)}
    with staged_directory(out_dir) as tmp:
        summary["heads"] = head_report(predictor, g, tmp, top)
        summary["cross_attention"] = cross_attention_report(predictor, list(query or [gene]), types, tmp, top)
        summary["alignment"] = alignment_report(predictor, tmp, alignment_rows)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary
