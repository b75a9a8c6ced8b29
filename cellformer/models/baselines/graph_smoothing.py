"""Graph smoothing: predict a gene set's phenotype from the training records of its graph neighbours.

The first thing a biologist would try, with no gradient training (:meth:`GraphSmoothing.fit_records`
aggregates the training records by gene set; prediction is a lookup):

* **singles** ``{g}``: the mean phenotype of the training single-gene records of ``g``'s neighbours
  ``N(g)`` (``g`` itself excluded);
* **pairs and triples** ``{q_1, …, q_k}``: the mean of the training records that replace exactly one member
  ``q_j`` by one of its neighbours ``c ∈ N(q_j)`` (``{c, b}`` and ``{a, d}`` for a pair ``{a, b}``), each
  weighted by the edge weight (1 unless ``weighted``). This is the one-substitution form of neighbour
  smoothing (:func:`~cellformer.models.record_features.substitution_estimate`): records that differ from the
  query in two or more genes are not read, so a query costs O(k · neighbours) lookups whatever the number of
  training records, and a record never enters its own estimate.

``W`` is the union of the chosen graphs (``graph_names``, default all graphs of the context), made
undirected (an edge in either direction makes two genes neighbours); with ``weighted=True`` a pair's
weight is its largest weight over the graphs; each gene keeps its ``neighbours`` strongest neighbours.
The estimate is NaN-aware per phenotype (a record counts for the phenotypes it measures). When no
neighbouring record measures a phenotype, or the set is larger than ``max_set_size``, or a gene is not in
the base genome, the prediction falls back to the training mean of records of that set size (the overall
training mean if there are none); :meth:`fallback_stats` reports how often that happened, and each forward
pass returns the per-sample flags in ``extras["fallback"]``.

Predictions are computed in original units (this model is not standardised). The aggregated records are
buffers, so a checkpoint restores the fitted model (their sizes are set from the state dict).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from cellformer.data.dataset import PerturbationBatch, PerturbationData
from cellformer.errors import UserError
from cellformer.genome import Genome
from cellformer.graphs import GraphSet
from cellformer.models.base import ModelOutput, PhenotypeModel
from cellformer.models.record_features import (
    MAX_TABLE_SET,
    Neighbours,
    SetTable,
    padded_members,
    substitution_estimate,
    union_adjacency,
)


class GraphSmoothing(PhenotypeModel):
    """Neighbour-averaged training records (see module docstring).

    Args:
        genome: the genome (``N`` genes; heterologous genes have no neighbours: fallback).
        graphs: the context's graphs.
        phenotype_names: output columns.
        graph_names: graphs whose union defines the neighbourhoods (default: all of ``graphs``).
        weighted: weight neighbours by edge weight (default: every neighbour counts 1).
        max_set_size: largest set size smoothed from neighbours; larger sets get the size mean.
    """

    def __init__(
        self,
        genome: Genome,
        graphs: GraphSet,
        phenotype_names: list[str],
        graph_names: list[str] | None = None,
        weighted: bool = False,
        max_set_size: int = 3,
        neighbours: int = 64,
    ):
        super().__init__()
        if not 1 <= max_set_size <= MAX_TABLE_SET:
            raise UserError(f"graph_smoothing: max_set_size must be in 1..{MAX_TABLE_SET}, got {max_set_size}")
        if neighbours < 1:
            raise UserError(f"graph_smoothing: neighbours must be ≥ 1, got {neighbours}")
        names = list(graphs.names) if graph_names is None else list(graph_names)
        for name in names:
            if name not in graphs:
                raise UserError(f"graph_smoothing: graph {name!r} is not among the data's graphs {graphs.names}")
        self.phenotype_names = list(phenotype_names)
        self.hparams_dict = {"graph_names": graph_names, "weighted": weighted, "max_set_size": max_set_size,
                             "neighbours": neighbours}  # fmt: skip
        self.graph_names = names
        self.weighted = weighted
        self.max_set_size = max_set_size
        self.num_genes = len(genome)
        p = len(self.phenotype_names)
        self.neighbours = Neighbours(union_adjacency(graphs, names, self.num_genes, weighted), neighbours)
        self.sets = SetTable(self.num_genes, p)
        # row k: training mean of records of size k (row 0: over all records); NaN where nothing was measured
        self.register_buffer("size_mean", torch.full((max_set_size + 2, p), float("nan")))
        self.reset_fallback_stats()

    # ------------------------------------------------------------------ fitting
    def fit_records(self, data: PerturbationData, train_rows: np.ndarray) -> None:
        """Aggregate the training records of sizes 1..``max_set_size`` by set, and the per-size means."""
        cols = [data.phenotype_names.index(n) for n in self.phenotype_names]
        rows = np.asarray(train_rows, dtype=np.int64)
        sizes = data.set_sizes[rows]
        y = data.phenotypes[rows][:, cols].astype(np.float64)
        p = len(cols)
        size_mean = np.full((self.max_set_size + 2, p), np.nan)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN on purpose
            size_mean[0] = np.nanmean(y, axis=0) if len(y) else np.nan
            for k in range(1, self.max_set_size + 2):  # the last row: every size above max_set_size
                sel = sizes == k if k <= self.max_set_size else sizes > self.max_set_size
                if sel.any():
                    size_mean[k] = np.nanmean(y[sel], axis=0)
        self.size_mean = torch.as_tensor(size_mean, dtype=torch.float32)
        self.sets.fit(data, rows[sizes <= self.max_set_size], cols)
        self.reset_fallback_stats()

    # ------------------------------------------------------------------ prediction
    def estimate(self, batch: PerturbationBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Sums and weights (B, P) of the neighbouring training records of every set of a batch (zero weight
        for sets larger than ``max_set_size`` or with a gene outside the base genome)."""
        members, sizes = padded_members(batch.gene_index, batch.ptr, batch.batch)
        known = ((members >= 0) & (members < self.num_genes)).sum(1) == sizes
        valid = known & (sizes >= 1) & (sizes <= self.max_set_size)
        return substitution_estimate(members, sizes, valid, self.sets, self.neighbours)

    def forward(self, batch: PerturbationBatch) -> ModelOutput:
        sizes = (batch.ptr[1:] - batch.ptr[:-1]).clamp(max=self.max_set_size + 1)
        size_mean = torch.where(self.size_mean.isnan(), self.size_mean[0], self.size_mean)  # NaN -> overall mean
        fallback = torch.where((sizes > 0)[:, None], size_mean[sizes], self.size_mean[0])
        sums, weights = self.estimate(batch)
        have = weights > 0
        pred = torch.where(have, sums / weights.clamp_min(1e-30), fallback)
        self._count_fallbacks(sizes.cpu().numpy(), (~have).cpu().numpy())
        return ModelOutput(pred=pred, extras={"fallback": ~have})

    # ------------------------------------------------------------------ fallback bookkeeping
    def reset_fallback_stats(self) -> None:
        """Zero the fallback counters."""
        self._queries: dict[int, int] = {}
        self._fallbacks: dict[int, np.ndarray] = {}

    def _count_fallbacks(self, sizes: np.ndarray, fell_back: np.ndarray) -> None:
        for k in np.unique(sizes):
            sel = sizes == k
            self._queries[int(k)] = self._queries.get(int(k), 0) + int(sel.sum())
            prev = self._fallbacks.get(int(k), np.zeros(fell_back.shape[1], dtype=np.int64))
            self._fallbacks[int(k)] = prev + fell_back[sel].sum(0)

    def fallback_stats(self) -> dict[str, float]:
        """Share of predictions that fell back to the set-size mean since the last reset.

        Keys ``size{k}/{phenotype}`` (and ``all/{phenotype}``); a share is over the samples of that size.
        """
        out: dict[str, float] = {}
        total = sum(self._queries.values())
        for k in sorted(self._queries):
            for i, name in enumerate(self.phenotype_names):
                out[f"size{k}/{name}"] = float(self._fallbacks[k][i] / max(self._queries[k], 1))
        for i, name in enumerate(self.phenotype_names):
            fb = sum(int(v[i]) for v in self._fallbacks.values())
            out[f"all/{name}"] = fb / total if total else math.nan
        return out

    def monitor(self, rows: int = 256) -> dict[str, float]:
        """The fallback shares of everything predicted since the last call (then the counters reset)."""
        stats = {f"fallback/{k}": v for k, v in self.fallback_stats().items() if not math.isnan(v)}
        self.reset_fallback_stats()
        return stats
