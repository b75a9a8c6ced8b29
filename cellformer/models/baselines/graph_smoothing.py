"""Graph smoothing: predict a gene set's phenotype from the training records of its graph neighbours.

The first thing a biologist would try, with no gradient training (:meth:`GraphSmoothing.fit_records`
stores the training records; prediction is a sparse-matrix computation):

* **singles** ``{g}``: the mean phenotype of the training single-gene records of ``g``'s neighbours
  ``N(g)`` (``g`` itself excluded);
* **pairs and triples** ``{q_1, …, q_k}``: the mean of the training records of the same size
  ``{r_1, …, r_k}`` whose genes are neighbours of, or equal to, the query's genes: record ``r``
  counts with weight ``K(q, r) = sum over the assignments σ of prod_i W[q_i, r_σ(i)]`` over the closed
  neighbourhoods ``N[q_i]`` (``W[g, g] = 1``). With unweighted graphs ``K`` is the number of
  assignments that match (a record ``{c, d}`` with ``c ∈ N[a], d ∈ N[b]`` counts once; one that also
  has ``d ∈ N[a], c ∈ N[b]`` counts twice); with ``weighted=True`` ``W`` holds the edge weights.

``W`` is the union of the chosen graphs (``graph_names``, default all graphs of the context), made
undirected (an edge in either direction makes two genes neighbours); with ``weighted=True`` a pair's
weight is its largest weight over the graphs. The estimate is NaN-aware per phenotype (a record
counts for the phenotypes it measures). When no neighbouring record measures a phenotype, or the set
is larger than ``max_set_size``, or a gene is not in the base genome, the prediction falls back to
the training mean of records of that set size (the overall training mean if there are none);
:meth:`fallback_stats` reports how often that happened, and each forward pass returns the per-sample
flags in ``extras["fallback"]``.

Predictions are computed in original units (this model is not standardised). The training records
are buffers, so a checkpoint restores the fitted model (their sizes are set from the state dict).

Computation: for set size ``k`` and each of the ``k!`` orderings of every training record, a one-hot
matrix ``E_j`` (genes x oriented records) marks the record's ``j``-th gene; for a batch of queries
``X_j = W[q_j] @ E_j`` (sparse rows times sparse), ``K = X_1 ⊙ … ⊙ X_k`` and the sums are
``K @ values`` and ``K @ measured`` -- no Python loop over records or queries.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import scipy.sparse as sp
import torch

from cellformer.data.dataset import PerturbationBatch, PerturbationData
from cellformer.errors import UserError
from cellformer.genome import Genome
from cellformer.graphs import GraphSet
from cellformer.models.base import ModelOutput, PhenotypeModel


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
    ):
        super().__init__()
        if max_set_size < 1:
            raise UserError(f"graph_smoothing: max_set_size must be ≥ 1, got {max_set_size}")
        names = list(graphs.names) if graph_names is None else list(graph_names)
        for name in names:
            if name not in graphs:
                raise UserError(f"graph_smoothing: graph {name!r} is not among the data's graphs {graphs.names}")
        self.phenotype_names = list(phenotype_names)
        self.hparams_dict = {"graph_names": graph_names, "weighted": weighted, "max_set_size": max_set_size}
        self.graph_names = names
        self.weighted = weighted
        self.max_set_size = max_set_size
        self.num_genes = len(genome)
        p = len(self.phenotype_names)
        self.adjacency = self._union(graphs, names)
        # closed neighbourhoods (sets of two or more genes): a gene is its own neighbour with weight 1
        self.closed_adjacency = (self.adjacency + sp.identity(self.num_genes, format="csr")).tocsr()
        for k in range(1, max_set_size + 1):
            self.register_buffer(f"genes_{k}", torch.zeros(0, k, dtype=torch.long))
            self.register_buffer(f"values_{k}", torch.zeros(0, p))
        # row k: training mean of records of size k (row 0: over all records); NaN where nothing was measured
        self.register_buffer("size_mean", torch.full((max_set_size + 2, p), float("nan")))
        self._tables: dict[int, tuple[list[sp.csr_matrix], np.ndarray, np.ndarray]] | None = None
        self.reset_fallback_stats()

    # ------------------------------------------------------------------ graph
    def _union(self, graphs: GraphSet, names: list[str]) -> sp.csr_matrix:
        """Open-neighbourhood matrix ``W`` (N, N): undirected union of the graphs, binary or max weight."""
        n = self.num_genes
        w = sp.csr_matrix((n, n), dtype=np.float64)
        for name in names:
            a = graphs[name].adj.astype(np.float64)
            if a.shape[0] > n:
                raise UserError(f"graph {name!r} has more nodes ({a.shape[0]}) than the genome has genes ({n})")
            a = sp.csr_matrix((a.data, a.indices, a.indptr), shape=(a.shape[0], a.shape[1]))
            if a.shape[0] < n:
                a.resize((n, n))
            w = w.maximum(a).maximum(a.T.tocsr())
        w.setdiag(0)
        w.eliminate_zeros()
        if not self.weighted:
            w.data[:] = 1.0
        w.sort_indices()
        return w.tocsr()

    # ------------------------------------------------------------------ fitting
    def fit_records(self, data: PerturbationData, train_rows: np.ndarray) -> None:
        """Store the training records of sizes 1..``max_set_size`` and the per-size means (original units)."""
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
        for k in range(1, self.max_set_size + 1):
            sel = rows[sizes == k]
            starts = data.offsets[sel]
            genes = data.gene_index[starts[:, None] + np.arange(k)[None, :]].astype(np.int64) if len(sel) else (
                np.zeros((0, k), dtype=np.int64))
            base = (genes < self.num_genes).all(1)
            values = data.phenotypes[sel][:, cols][base]
            setattr(self, f"genes_{k}", torch.as_tensor(genes[base]))
            setattr(self, f"values_{k}", torch.as_tensor(values, dtype=torch.float32))
        self._tables = None
        self.reset_fallback_stats()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """The record buffers take the sizes stored in the checkpoint."""
        for k in range(1, self.max_set_size + 1):
            for name in (f"genes_{k}", f"values_{k}"):
                key = prefix + name
                if key in state_dict:
                    setattr(self, name, torch.empty_like(state_dict[key]))
        self._tables = None
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _table(self, k: int) -> tuple[list[sp.csr_matrix], np.ndarray, np.ndarray]:
        """``(E_1..E_k, values (O, P) with NaN as 0, measured (O, P))`` over the ``k!`` orientations."""
        if self._tables is None:
            self._tables = {}
        if k not in self._tables:
            genes = getattr(self, f"genes_{k}").cpu().numpy()
            values = getattr(self, f"values_{k}").cpu().numpy().astype(np.float64)
            perms = list(itertools.permutations(range(k)))
            oriented = np.concatenate([genes[:, list(perm)] for perm in perms]) if len(genes) else genes
            o = len(oriented)
            onehots = [
                sp.csr_matrix((np.ones(o), (oriented[:, j], np.arange(o))), shape=(self.num_genes, o))
                for j in range(k)
            ]
            measured = np.tile(~np.isnan(values), (len(perms), 1)).astype(np.float64)
            filled = np.tile(np.nan_to_num(values, nan=0.0), (len(perms), 1))
            self._tables[k] = (onehots, filled, measured)
        return self._tables[k]

    # ------------------------------------------------------------------ prediction
    def smooth(self, sets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sums and weights ``(Q, P)`` for ``sets`` (Q, k) of base-genome genes, all of one size k."""
        q, k = sets.shape
        onehots, filled, measured = self._table(k)
        w = self.adjacency if k == 1 else self.closed_adjacency
        kernel = None
        for j in range(k):
            x = w[sets[:, j]] @ onehots[j]
            kernel = x if kernel is None else kernel.multiply(x).tocsr()
        return np.asarray(kernel @ filled), np.asarray(kernel @ measured)

    def estimate(
        self, gene_index: torch.Tensor, ptr: torch.Tensor, own: torch.Tensor | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sums and weights ``(B, P)`` of the neighbouring training records of every set of a CSR batch.

        Sets larger than ``max_set_size`` or with a gene outside the base genome get zero weight. ``own``
        (B, P): the sets' own measured values, when every set is itself a training record; its own
        contribution ``K(S, S)·y`` is removed (a leave-one-out estimate).
        """
        ptr_np, genes = ptr.cpu().numpy(), gene_index.cpu().numpy().astype(np.int64)
        sizes = np.diff(ptr_np)
        sums = np.zeros((len(sizes), len(self.phenotype_names)))
        weights = np.zeros_like(sums)
        own_np = None if own is None else own.detach().float().cpu().numpy().astype(np.float64)
        for k in np.unique(sizes):
            if k < 1 or k > self.max_set_size:
                continue
            rows = np.flatnonzero(sizes == k)
            sets = genes[ptr_np[rows][:, None] + np.arange(k)[None, :]]
            ok = (sets < self.num_genes).all(1)
            rows, sets = rows[ok], sets[ok]
            if not len(rows):
                continue
            s, w = self.smooth(sets)
            if own_np is not None:
                k_self = self._self_kernel(sets)
                s = s - k_self[:, None] * np.nan_to_num(own_np[rows])
                w = w - k_self[:, None] * ~np.isnan(own_np[rows])
            sums[rows], weights[rows] = s, w
        return sums, weights

    def _self_kernel(self, sets: np.ndarray) -> np.ndarray:
        """``K(S, S)`` for sets (Q, k): the weight a record gives itself (0 for singles: open neighbourhoods)."""
        k = sets.shape[1]
        w = self.adjacency if k == 1 else self.closed_adjacency
        out = np.zeros(len(sets))
        for perm in itertools.permutations(range(k)):
            term = np.ones(len(sets))
            for j in range(k):
                term *= np.asarray(w[sets[:, j], sets[:, perm[j]]]).ravel()
            out += term
        return out

    def forward(self, batch: PerturbationBatch) -> ModelOutput:
        sizes = np.diff(batch.ptr.cpu().numpy())
        bsz, p = len(sizes), len(self.phenotype_names)
        size_mean = self.size_mean.cpu().numpy().astype(np.float64)
        fallback_of_size = np.where(np.isnan(size_mean), size_mean[0], size_mean)
        pred = np.empty((bsz, p))
        for k in np.unique(sizes):
            pred[sizes == k] = fallback_of_size[min(k, self.max_set_size + 1)] if k > 0 else size_mean[0]
        sums, weights = self.estimate(batch.gene_index, batch.ptr)
        have = weights > 0
        with np.errstate(all="ignore"):
            pred = np.where(have, sums / np.where(have, weights, 1.0), pred)
        fell_back = ~have
        self._count_fallbacks(sizes, fell_back)
        out = torch.as_tensor(pred, dtype=torch.float32, device=self.size_mean.device)
        extras = {"fallback": torch.as_tensor(fell_back, device=self.size_mean.device)}
        return ModelOutput(pred=out, extras=extras)

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

