"""Shared test builders: toy genomes and graphs, a trained toy checkpoint, and the dense graph-KL reference.

Test modules import the plain builders with ``from conftest import …`` (pytest puts ``tests/`` on the path);
the trained checkpoint is the session fixture :func:`trained`.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence

import lightning  # noqa: F401  (imported before any test captures stderr: its log handlers keep the real one)
import networkx as nx
import numpy as np
import pytest
import torch

from cellformer.data.dataset import PerturbationData, PerturbationType
from cellformer.genome import Genome
from cellformer.graphs import GeneGraph, GraphSet


# ---------------------------------------------------------------------- genomes
def toy_genome(
    n: int,
    *,
    features: np.ndarray | int | None = None,
    aliases: Sequence[str] | str | None = None,
    name: str = "genome",
    fmt: str = "G{i}",
    seed: int = 0,
    scale: float = 1.0,
    added: np.ndarray | None = None,
) -> Genome:
    """``n`` genes named ``fmt.format(i=i)``.

    ``features``: an array, or a width ``F`` for ``scale * normal(seed)`` features of shape ``(n, F)``
    (None: the genome's default, zero sequence features). ``aliases``: a list, or a format such as
    ``"A{i}"`` giving every gene one.
    """
    if isinstance(features, int):
        features = np.random.default_rng(seed).normal(size=(n, features)).astype(np.float32) * scale
    if isinstance(aliases, str):
        aliases = [aliases.format(i=i) for i in range(n)]
    return Genome([fmt.format(i=i) for i in range(n)], aliases, features=features, added=added, name=name)


# ---------------------------------------------------------------------- graphs
def clique_graph(name: str = "cliques", n: int = 60, size: int = 10, weighted: bool = False) -> GeneGraph:
    """Disjoint cliques of ``size`` consecutive genes (weights uniform in [0.5, 2) with ``weighted``)."""
    src, dst = [], []
    for c in range(n // size):
        for a, b in itertools.combinations(range(c * size, (c + 1) * size), 2):
            src.append(a)
            dst.append(b)
    w = np.random.default_rng(1).uniform(0.5, 2.0, len(src)) if weighted else None
    return GeneGraph.from_edges(name, n, np.array(src), np.array(dst), w)


def ring_graph(name: str = "ring", n: int = 40) -> GeneGraph:
    """The undirected cycle ``0 - 1 - … - n-1 - 0``."""
    return GeneGraph.from_edges(name, n, np.arange(n), (np.arange(n) + 1) % n)


def random_graph(n: int, m: int, directed: bool, seed: int = 0, name: str = "rand") -> GeneGraph:
    """A G(n, m) random graph (networkx ``gnm_random_graph``)."""
    g = nx.gnm_random_graph(n, m, seed=seed, directed=directed)
    e = np.array(g.edges())
    return GeneGraph.from_edges(name, n, e[:, 0], e[:, 1], directed=directed)


# ---------------------------------------------------------------------- perturbation sets
def random_sets(
    n_records: int, n_genes: int, seed: int | np.random.Generator = 0, max_size: int = 3
) -> list[np.ndarray]:
    """``n_records`` sets of 1..``max_size`` distinct genes out of ``n_genes``, uniformly drawn.

    ``seed`` may be a Generator, which the draws then advance (for builders that go on drawing from it).
    """
    rng = np.random.default_rng(seed)
    return [rng.choice(n_genes, size=int(rng.integers(1, max_size + 1)), replace=False) for _ in range(n_records)]


# ---------------------------------------------------------------------- the query toy and its checkpoint
QUERY_N = 30
QUERY_PHENOTYPES = ["fitness", "epsilon"]


def query_genome() -> Genome:
    """30 genes G0..G29, every third with an alias ALIASi, small random 87-wide features."""
    aliases = [f"ALIAS{i}" if i % 3 == 0 else "" for i in range(QUERY_N)]
    return toy_genome(QUERY_N, features=87, scale=0.1, aliases=aliases, name="toy")


def query_graphs(genome: Genome) -> GraphSet:
    """An undirected graph ``g1`` and a directed graph ``g2`` of random edges."""
    rng = np.random.default_rng(1)
    g1 = GeneGraph.from_edges("g1", QUERY_N, rng.integers(0, QUERY_N, 60), rng.integers(0, QUERY_N, 60))
    g2 = GeneGraph.from_edges("g2", QUERY_N, rng.integers(0, QUERY_N, 50), rng.integers(0, QUERY_N, 50), directed=True)
    return GraphSet([g1, g2], genome.hash)


def query_data(genome: Genome) -> PerturbationData:
    """64 random deletion sets of 1-3 genes with two random phenotypes."""
    rng = np.random.default_rng(2)
    sets = random_sets(64, QUERY_N, rng)
    sizes = [len(s) for s in sets]
    return PerturbationData(
        genes=list(genome.genes),
        offsets=np.concatenate([[0], np.cumsum(sizes)]),
        gene_index=np.concatenate(sets),
        types=np.full(sum(sizes), int(PerturbationType.DELETION)),
        phenotypes=rng.normal(size=(64, 2)).astype(np.float32),
        phenotype_names=QUERY_PHENOTYPES,
        genome_hash=genome.hash,
    )


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict:
    """A CellFormer trained for two steps on the query toy: its checkpoint path, data and test-loop predictions."""
    import lightning as L
    from torch.utils.data import DataLoader

    from cellformer.data.context import DataContext
    from cellformer.data.dataset import PerturbationDataset, identity_collate
    from cellformer.training.module import PhenotypeModule

    torch.manual_seed(0)
    genome = query_genome()
    context = DataContext(genome, query_graphs(genome), QUERY_PHENOTYPES)
    module = PhenotypeModule(
        model="cellformer",
        model_args={
            "d_model": 16,
            "n_layers": 2,
            "n_heads": 2,
            "dropout": 0.0,
            "graph_reg": {"g1": {"layer": 0, "head": 0, "weight": 0.1, "rows": 8}, "g2": {"layer": 1, "head": 1}},
        },
        warmup_steps=1,
        context=context,
    )
    data = query_data(genome)
    loader = DataLoader(PerturbationDataset(data), batch_size=16, collate_fn=identity_collate)
    kw = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = L.Trainer(max_steps=2, enable_model_summary=False, **kw)
        trainer.fit(module, train_dataloaders=loader)
        with torch.no_grad():  # two steps barely move the weights: spread them so that effects are visible
            for p in module.model.parameters():
                p.add_(torch.randn_like(p) * 0.2)
        path = tmp_path_factory.mktemp("ckpt") / "toy.ckpt"
        trainer.save_checkpoint(path)
        preds = torch.cat(trainer.predict(module, dataloaders=loader)).float()
    return {"path": path, "data": data, "preds": preds, "genome": genome}


# ---------------------------------------------------------------------- dense graph-KL reference
@torch.no_grad()
def dense_attention(model, layer: int, head: int) -> torch.Tensor:
    """(N, N) gene–gene attention of ``(layer, head)`` of a CellFormer, rows renormalised over gene keys.

    Reference for tests (small N, eval mode): an explicit forward pass that builds the full (N+1)×(N+1)
    attention maps with plain softmax, independent of SDPA and of the sampled path.
    """
    x = model.embed([])[0]  # (1, 1+N, d)
    for ell, block in enumerate(model.blocks):
        h = block.norm1(x)
        q, k, v = block.attn.qkv(h).split(model.d_model, dim=-1)
        d_head = model.d_model // model.n_heads
        q, k, v = (t.view(1, -1, model.n_heads, d_head).transpose(1, 2) for t in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d_head), dim=-1)  # (1, H, 1+N, 1+N)
        if ell == layer:
            gene_block = att[0, head, 1:, 1:]
            return gene_block / gene_block.sum(-1, keepdim=True)
        y = (att @ v).transpose(1, 2).reshape(1, -1, model.d_model)
        x = x + block.attn.proj(y)
        x = x + block.mlp(block.norm2(x))
    raise ValueError(f"layer {layer} out of range")


@torch.no_grad()
def dense_graph_kl(model, name: str, rows: torch.Tensor | None = None) -> torch.Tensor:
    """O(N²) reference of ``graph_kl`` (eval mode, small N): full attention map, dense ``Ã``.

    ``rows`` defaults to all valid rows of the graph; pass the rows a sampled call used to compare.
    """
    cfg = model.graph_reg[name]
    alpha = dense_attention(model, cfg.layer, cfg.head)
    added = model.added_mask_np
    a = model.graphs[name].adj.toarray()
    a = np.pad(a, ((0, len(added) - a.shape[0]), (0, len(added) - a.shape[1])))
    a[added, :] = 0
    a[:, added] = 0
    deg = a.sum(1, keepdims=True)
    a = np.divide(a, deg, out=np.zeros_like(a), where=deg > 0)
    a_t = torch.as_tensor(a, dtype=alpha.dtype, device=alpha.device)
    if rows is None:
        rows = torch.as_tensor(np.flatnonzero((deg[:, 0] > 0) & ~added), device=alpha.device)
    a_r, alpha_r = a_t[rows], alpha[rows]
    safe = torch.where(a_r > 0, a_r, torch.ones_like(a_r))
    kl = (a_r * (safe.log() - alpha_r.log())).sum(-1)
    return cfg.weight * kl.mean()
