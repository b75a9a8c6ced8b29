"""Rebuild a trained model from a checkpoint alone (``torch.load(weights_only=True)``)."""

from __future__ import annotations

from pathlib import Path

import scipy.sparse as sp
import torch

from cellformer.genome import Genome
from cellformer.graphs import GeneGraph, GraphSet
from cellformer.models.base import PhenotypeModel
from cellformer.models.registry import build_model
from cellformer.training.datamodule import DataContext
from cellformer.training.module import CHECKPOINT_KEY, CHECKPOINT_VERSION


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
        raise ValueError(f"checkpoint genome hash {g['hash']} does not match its stored genes ({genome.hash})")
    graphs = []
    for name in meta["graph_names"]:
        d = meta["graphs"][name]
        n = d["num_nodes"]
        adj = sp.csr_matrix((d["data"].numpy(), d["indices"].numpy(), d["indptr"].numpy()), shape=(n, n))
        graphs.append(GeneGraph(name, adj, d["directed"]))
    return DataContext(genome, GraphSet(graphs, genome.hash), list(meta["phenotype_names"]))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[PhenotypeModel, DataContext]:
    """Load ``(model in eval mode, data context)`` from a Lightning checkpoint written by cellformer."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    meta = ckpt.get(CHECKPOINT_KEY)
    if meta is None:
        raise ValueError(f"{path} is not a cellformer checkpoint (no {CHECKPOINT_KEY!r} section)")
    if meta["version"] != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {meta['version']}, this cellformer reads {CHECKPOINT_VERSION}")
    context = context_from_checkpoint(meta)
    model = build_model(meta["model"], context.genome, context.graphs, context.phenotype_names, **meta["model_hparams"])
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    return model.eval(), context
