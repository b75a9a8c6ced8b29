"""Checkpoints: what cellformer writes into a Lightning checkpoint, and how a model is rebuilt from it.

A checkpoint carries, next to the weights, everything needed to query it: the genome (gene list,
aliases, features, hash), the graphs (CSR), the phenotype names, the model name and its
hyper-parameters. The target standardisation (training-split mean and sd per phenotype) is part of
the model's state dict. It loads with ``torch.load(weights_only=True)``: nothing in it runs code.

:func:`load_torch_file` is the one loader of torch files (checkpoints of both modes, screen states):
local files only, ``weights_only=True``, one :class:`UserError` line for anything unreadable.
:func:`check_ckpt_path` puts Lightning's ``--ckpt_path`` through it before Lightning loads the file.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from cellformer.data.context import DataContext
from cellformer.errors import UserError, shorten
from cellformer.genome import Genome
from cellformer.graphs import GeneGraph, GraphSet
from cellformer.models.base import PhenotypeModel
from cellformer.models.registry import build_model

CHECKPOINT_KEY = "cellformer"
#: 2: CellFormer's record tables (``records.*``), tokens (``tokens.*``) and graph regulariser are submodules
#: and its hyper-parameters are a :class:`~cellformer.models.cellformer.CellFormerConfig`.
CHECKPOINT_VERSION = 3


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


#: ``scheme://…``: a URL (http, https, s3, gs, hf…), which no checkpoint load follows.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
#: Values of Lightning's ``ckpt_path`` that name a checkpoint the same run wrote (resolved by Lightning).
LIGHTNING_CKPT_KEYWORDS = frozenset({"best", "last", "hpc"})


def is_remote(path: str | Path) -> bool:
    """Whether ``path`` is a URL (``http://…``, ``s3://…``) or a Lightning model-registry name."""
    text = str(path).strip()
    return bool(_URL.match(text)) or text.lower() == "registry" or text.lower().startswith("registry:")


def load_torch_file(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    *,
    what: str = "checkpoint",
    require: tuple[str, ...] = (),
    kind: str = "cellformer checkpoint",
) -> dict:
    """The one way cellformer reads a torch file: ``torch.load(path, weights_only=True)`` of a local file.

    A URL is refused (nothing is downloaded). A missing, empty, truncated or foreign file, or one holding
    anything but tensors and plain Python values, is one :class:`UserError` naming the file (as ``what``);
    nothing in the file is ever executed and the message never suggests ``weights_only=False``. The
    result must be a dict with the keys ``require`` (else "not a ``kind``").
    """
    if is_remote(path):
        raise UserError(
            f"{what} {shorten(path)} is a URL: remote checkpoints are not loaded (nothing is downloaded); "
            "download the file yourself and give its local path"
        )
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} {path} does not exist")
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory, not a file")
    if path.stat().st_size == 0:
        raise UserError(f"{what} {path} is empty")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever torch raises on a file it cannot read is the file's fault
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Weights only load failed" in first:
            first = "it holds objects other than tensors and plain Python values (refused: nothing is executed)"
        raise UserError(f"{what} {path} cannot be read as a {kind}: {shorten(first, 200)}") from None
    if not isinstance(obj, dict) or any(k not in obj for k in require):
        section = f" (no {require[0]!r} section)" if require else ""
        raise UserError(f"{what} {path} is not a {kind}{section}")
    return obj


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """:func:`load_torch_file` of a cellformer checkpoint (its section and version checked).

    Missing, empty, truncated or foreign files, URLs, and checkpoints that are not cellformer's, are user
    errors. Nothing in a checkpoint is ever executed.
    """
    ckpt = load_torch_file(path, map_location, require=(CHECKPOINT_KEY, "state_dict"))
    meta = ckpt[CHECKPOINT_KEY]
    if not isinstance(meta, dict) or meta.get("version") != CHECKPOINT_VERSION:
        version = meta.get("version") if isinstance(meta, dict) else None
        raise UserError(
            f"{path}: checkpoint format version {version}, this cellformer reads version {CHECKPOINT_VERSION} "
            "(a checkpoint of another version cannot be queried by this one: retrain it)"
        )
    return ckpt


def check_ckpt_path(ckpt_path: str | None, reader=read_checkpoint) -> None:
    """Check Lightning's ``--ckpt_path`` before Lightning sees it: the keywords ``best``/``last``/``hpc``
    pass (Lightning resolves them to files the run wrote), a URL or registry name is refused, and a local
    file must be readable by ``reader`` (the project's safe loader), so that a corrupt or foreign file is
    one clear error rather than a torch traceback."""
    if ckpt_path is None or str(ckpt_path) in LIGHTNING_CKPT_KEYWORDS:
        return
    reader(ckpt_path)


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
    try:
        context = context_from_checkpoint(meta)
        model = build_model(
            meta["model"], context.genome, context.graphs, context.phenotype_names, **meta["model_hparams"]
        )
        state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
        model.load_state_dict(state)
    except UserError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:  # a damaged or edited file
        raise UserError(f"checkpoint {path} is damaged: {shorten(exc, 200)}") from None
    return model.eval(), context
