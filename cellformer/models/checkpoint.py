"""Checkpoints: what cellformer writes into a Lightning checkpoint, and how a model is rebuilt from it.

A checkpoint carries, next to the weights, everything needed to query it: the genome (gene list,
aliases, features, hash), the graphs (CSR), the phenotype names, the model name and its
hyper-parameters. The target standardisation (training-split mean and sd per phenotype) is part of
the model's state dict. It loads with ``torch.load(weights_only=True)``: nothing in it runs code.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from cellformer.data.context import DataContext
from cellformer.errors import UserError
from cellformer.genome import Genome
from cellformer.graphs import GeneGraph, GraphSet
from cellformer.models.base import PhenotypeModel
from cellformer.models.registry import build_model

CHECKPOINT_KEY = "cellformer"
#: 2: CellFormer's record tables (``records.*``), tokens (``tokens.*``) and graph regulariser are submodules
#: and its hyper-parameters are a :class:`~cellformer.models.cellformer.CellFormerConfig`.
CHECKPOINT_VERSION = 2


def context_to_checkpoint(context: DataContext, model_name: str, model_hparams: dict) -> dict:
    """Everything needed to query a checkpoint, as tensors and plain Python (``weights_only``-safe)."""
    g = context.genome
    graphs = {}
    for name, graph in context.graphs.items():
        adj = graph.adj
        graphs[name] = {
            "indptr": torch.from_numpy(adj.indptr.astype(np.int64)),
            "indices": torch.from_numpy(adj.indices.astype(np.int64)),
            "data": torch.from_numpy(adj.data.astype(np.float32)),
            "num_nodes": int(graph.num_nodes),
            "directed": bool(graph.directed),
        }
    return {
        "version": CHECKPOINT_VERSION,
        "model": model_name,
        "model_hparams": model_hparams,
        "phenotype_names": list(context.phenotype_names),
        "genome": {
            "name": g.name,
            "genes": list(g.genes),
            "aliases": list(g.aliases),
            "features": torch.from_numpy(g.features),
            "added": torch.from_numpy(g.added.astype(np.bool_)),
            "sequences": dict(g.sequences),
            "hash": g.hash,
        },
        "graph_names": list(context.graphs.names),
        "graphs": graphs,
    }


def context_from_checkpoint(meta: dict) -> DataContext:
    """The genome, graphs and phenotype names stored by :func:`context_to_checkpoint`."""
    g = meta["genome"]
    genome = Genome(
        g["genes"],
        g["aliases"],
        features=g["features"].numpy(),
        sequences=g["sequences"],
        added=g["added"].numpy(),
        name=g["name"],
    )
    if genome.hash != g["hash"]:
        raise UserError(f"checkpoint genome hash {g['hash']} does not match its stored genes ({genome.hash})")
    graphs = []
    for name in meta["graph_names"]:
        d = meta["graphs"][name]
        n = d["num_nodes"]
        adj = sp.csr_matrix((d["data"].numpy(), d["indices"].numpy(), d["indptr"].numpy()), shape=(n, n))
        graphs.append(GeneGraph(name, adj, d["directed"]))
    return DataContext(genome, GraphSet(graphs, genome.hash), list(meta["phenotype_names"]))


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """``torch.load(path, weights_only=True)`` with one clear :class:`UserError` for anything unreadable.

    Missing, empty, truncated or foreign files, and checkpoints that are not cellformer's, are user
    errors. Nothing in a checkpoint is ever executed, and the message never suggests
    ``weights_only=False``.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a directory, not a checkpoint file")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint {path} is empty")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in first or "Weights only load failed" in first:
            first = "it holds objects other than tensors and plain Python values (refused: nothing is executed)"
        raise UserError(f"checkpoint {path} cannot be read as a cellformer checkpoint: {first}") from None
    if not isinstance(ckpt, dict) or CHECKPOINT_KEY not in ckpt or "state_dict" not in ckpt:
        raise UserError(f"{path} is not a cellformer checkpoint (no {CHECKPOINT_KEY!r} section)")
    meta = ckpt[CHECKPOINT_KEY]
    if meta.get("version") != CHECKPOINT_VERSION:
        raise UserError(
            f"{path}: checkpoint format version {meta.get('version')}, this cellformer reads version "
            f"{CHECKPOINT_VERSION} (a checkpoint of another version cannot be queried by this one: retrain it)"
        )
    return ckpt


def check_genome(meta: dict, genome: Genome, source: str) -> None:
    """Refuse to use a checkpoint with data of another genome (other genes, or the same genes in another order)."""
    stored = meta["genome"]
    if stored["hash"] == genome.hash:
        return
    genes = list(stored["genes"])
    if sorted(genes) == sorted(genome.genes):
        detail = "the same genes in another order"
    else:
        only_ckpt = [g for g in genes if g not in set(genome.genes)][:3]
        only_data = [g for g in genome.genes if g not in set(genes)][:3]
        detail = f"{len(genes)} genes against {len(genome.genes)}"
        if only_ckpt:
            detail += f"; only in the checkpoint: {', '.join(only_ckpt)}"
        if only_data:
            detail += f"; only in the data: {', '.join(only_data)}"
    raise UserError(
        f"checkpoint {source} was trained on genome {stored['name']!r} (hash {stored['hash']}) but the data's genome "
        f"{genome.name!r} has hash {genome.hash} ({detail})"
    )


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[PhenotypeModel, DataContext]:
    """Load ``(model in eval mode, data context)`` from a Lightning checkpoint written by cellformer."""
    ckpt = read_checkpoint(path, map_location)
    meta = ckpt[CHECKPOINT_KEY]
    context = context_from_checkpoint(meta)
    model = build_model(meta["model"], context.genome, context.graphs, context.phenotype_names, **meta["model_hparams"])
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    return model.eval(), context
