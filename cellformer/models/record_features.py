"""What the training records say about a gene set: compact tables fitted once, looked up per batch.

:meth:`RecordFeatures.fit` reads the training records once and keeps only tables whose size is bounded by
the genes and the distinct measured sets -- per-gene single mutants, one sorted key per measured set of up
to three genes (:class:`SetTable`), the strongest graph neighbours of every gene (:class:`Neighbours`), the
additive model's cross-fitted effects. :meth:`RecordFeatures.forward` turns a CSR batch into set features
with tensor operations only (gathers, ``searchsorted``, scatters of static shape): no scipy or numpy, no
host synchronisation, and a cost per batch of O(B · neighbours · log(measured sets)) that does not grow
with the number of training records beyond that logarithm.

Readout features, in output order (each switchable):

* ``pair_graph`` -- per input graph, the share of the set's member pairs that are graph neighbours (G);
* ``smoothing`` -- the neighbour-substitution estimate of the set's phenotypes (2P: standardised estimate,
  has-data flag; :func:`substitution_estimate`);
* ``member_singles`` -- the members' own measured single mutants: standardised values summed, has-data
  counts, and their mean pairwise product (3P);
* ``member_pairs`` -- for a set of three or more genes, its member pairs measured as doubles: standardised
  mean over the measured pairs and the share measured (2P);
* ``additive`` -- the cross-fitted ridge estimate of the additive model and the share of members with
  records (2P; :class:`~cellformer.models.baselines.additive.CrossFittedAdditive`);
* ``profile_pairs`` -- the mean over member pairs of the product of their interaction profiles (the
  token inputs below, as this pass saw them), ``p_a ⊙ p_b`` (P·k): a readout that is linear in it is a
  low-rank completion of the interaction matrix.
* ``inferred_pairs`` -- the same product of the profiles the encoder infers for every gene (``imputed``),
  measured or not (P·k).

Token inputs, per gene (N, ·):

* ``label_inputs`` -- per input graph, the mean standardised single-mutant phenotypes of each gene's
  neighbours (never its own) and the share of its neighbours that have one (G·(P+1));
* ``profile_inputs`` -- a sketch of the gene's measured interaction profile (:class:`InteractionProfiles`):
  per phenotype, ``Σ_r y_r · mean_{j ∈ r, j ≠ i} u_j`` over the training records ``r`` of two or more genes
  that contain gene ``i``, with ``u`` the leading eigenvectors of the training pairs' matrix (P·k). While
  training, the batch's own records are taken out of the profiles before the encoder sees them.

**No record sees its own label.** The substitution estimate only reads sets that differ from the query in
one gene, so a record never enters its own estimate; while training, a single does not read its own value,
a record reads the additive fit of the folds without it, the batch's records are removed from the interaction
profiles, and genes hidden for the step (identity dropout: ``hidden``) read as unmeasured in the member
features, the additive estimate and their own profile.

Sets are handled up to :data:`MAX_SET` genes (the padded width); larger sets, and sets with a heterologous
gene, get no record-derived values (zeros, has-data flags 0). The set tables hold sets of up to
:data:`MAX_TABLE_SET` genes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch_geometric.utils import scatter

from cellformer.data.dataset import PerturbationData
from cellformer.graphs import GraphSet
from cellformer.models.head import PerturbationHead
from cellformer.models.pairs import is_dense, pattern_codes, pattern_matrix

#: padded set width of the batch-side lookups (larger sets get no record-derived values)
MAX_SET = 4
#: largest set stored in a :class:`SetTable` (keys of sorted tuples must fit in int64: N < 2,097,152)
MAX_TABLE_SET = 3
#: member pairs (i < j) of a padded set of MAX_SET genes
_PAIR_I, _PAIR_J = np.triu_indices(MAX_SET, k=1)


# ---------------------------------------------------------------------- batch-side helpers
def padded_members(gene_index: torch.Tensor, ptr: torch.Tensor, batch: torch.Tensor, width: int = MAX_SET):
    """(B, width) member genes of each set (-1 past its end) and (B,) set sizes, with static shapes.

    Members beyond ``width`` are dropped (the set size still says how many there were).
    """
    B = ptr.numel() - 1
    pos = torch.arange(gene_index.numel(), device=ptr.device) - ptr[batch]
    out = torch.full((B, width + 1), -1, dtype=torch.long, device=ptr.device)
    out[batch, pos.clamp(max=width)] = gene_index.long()  # column ``width`` collects the overflow
    return out[:, :width], ptr[1:] - ptr[:-1]


def set_keys(members: torch.Tensor, sizes: torch.Tensor, num_genes: int) -> torch.Tensor:
    """One int64 key per set: members (..., W) with -1 padding, sizes (...) ≤ :data:`MAX_TABLE_SET`.

    Sorted members ``g_1 < … < g_s`` give ``Σ_i g_i · N^(s-i) + offset(s)``, where the offsets keep sets of
    different sizes apart (sizes 1, 2, 3 occupy ``[0, N)``, ``[N, N + N²)``, ``[N + N², …)``).
    """
    w = members.shape[-1]
    m = torch.where(members >= 0, members, num_genes).sort(dim=-1).values
    weights, offsets = _key_weights(num_genes, w, members.device)
    s = sizes.long().clamp(0, MAX_TABLE_SET + 1)
    return (m * weights[s]).sum(-1) + offsets[s]


def _key_weights(num_genes: int, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(sizes, width) weight of each sorted position in the key of a set of that size, and (sizes,) offsets."""
    n, sizes = num_genes, MAX_TABLE_SET + 2
    weights = torch.zeros(sizes, width, dtype=torch.long)
    for s in range(1, min(sizes, width + 1)):
        weights[s, :s] = torch.tensor([n ** (s - 1 - i) for i in range(s)])
    offsets = torch.tensor([sum(n**t for t in range(1, max(s, 1))) for s in range(sizes)])
    return weights.to(device), offsets.to(device)


def numpy_set_keys(genes: np.ndarray, num_genes: int) -> np.ndarray:
    """:func:`set_keys` of (R, s) member arrays of one size ``s`` (numpy, for fitting)."""
    genes = np.sort(genes.astype(np.int64), axis=1)
    s = genes.shape[1]
    key = np.zeros(len(genes), dtype=np.int64)
    for i in range(s):
        key = key * num_genes + genes[:, i]
    return key + sum(num_genes**t for t in range(1, s))


def sorted_lookup(keys: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Position of each query in the sorted ``keys`` and whether it is there (all False for empty keys)."""
    if keys.numel() == 0:
        return torch.zeros_like(queries), torch.zeros_like(queries, dtype=torch.bool)
    pos = torch.searchsorted(keys, queries).clamp_max(keys.numel() - 1)
    return pos, keys[pos] == queries


# ---------------------------------------------------------------------- tables
class SetTable(nn.Module):
    """The distinct measured sets of 1..:data:`MAX_TABLE_SET` base-genome genes among some records.

    ``keys`` (S,) sorted :func:`set_keys`; ``total`` (S, P) the sum of the measured values of its records
    and ``count`` (S, P) how many were measured (a set measured twice counts twice), in original units.
    Buffers: saved with the model, sized from the state dict on load.
    """

    def __init__(self, num_genes: int, num_phenotypes: int):
        super().__init__()
        self.num_genes = num_genes
        self.register_buffer("keys", torch.zeros(0, dtype=torch.long))
        self.register_buffer("total", torch.zeros(0, num_phenotypes))
        self.register_buffer("count", torch.zeros(0, num_phenotypes))

    def fit(self, data: PerturbationData, rows: np.ndarray, cols: Sequence[int]) -> None:
        """Aggregate records ``rows`` of ``data`` (phenotype columns ``cols``) by gene set."""
        keys, codes, values, n = [], [], [], self.num_genes
        sizes = data.set_sizes[rows]
        for k in range(1, MAX_TABLE_SET + 1):
            sel = rows[sizes == k]
            if not len(sel):
                continue
            genes = data.gene_index[data.offsets[sel][:, None] + np.arange(k)].astype(np.int64)
            base = (genes < n).all(1)
            offset = sum(n**t for t in range(1, k))  # sets of one size occupy [offset, offset + n^k)
            pattern, (code,) = pattern_codes([numpy_set_keys(genes[base], n) - offset], n**k)
            codes.append(code + sum(len(x) for x in keys))
            keys.append(pattern + offset)
            values.append(data.phenotypes[sel[base]][:, list(cols)].astype(np.float64))
        p = self.total.shape[1]
        if not keys:
            self.keys, self.total, self.count = torch.zeros(0, dtype=torch.long), torch.zeros(0, p), torch.zeros(0, p)
            return
        unique, inverse = np.concatenate(keys), np.concatenate(codes)  # sizes in order: the keys stay sorted
        y = np.concatenate(values)
        has = ~np.isnan(y)
        total = np.stack([np.bincount(inverse, np.where(has[:, j], y[:, j], 0.0), len(unique)) for j in range(p)], 1)
        count = np.stack([np.bincount(inverse, has[:, j], len(unique)) for j in range(p)], 1).astype(float)
        device = self.keys.device
        self.keys = torch.from_numpy(unique).to(device)
        self.total = torch.from_numpy(total.astype(np.float32)).to(device)
        self.count = torch.from_numpy(count.astype(np.float32)).to(device)

    def lookup(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(total, count)`` (..., P) of sets given by ``keys`` (...); zeros for sets never measured."""
        pos, hit = sorted_lookup(self.keys, keys)
        if self.keys.numel() == 0:
            zeros = torch.zeros(*keys.shape, self.total.shape[1], device=keys.device)
            return zeros, zeros
        f = hit[..., None].to(self.total.dtype)
        return self.total[pos] * f, self.count[pos] * f

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        for name in ("keys", "total", "count"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def union_adjacency(graphs: GraphSet, names: Sequence[str], num_genes: int, weighted: bool) -> sp.csr_matrix:
    """``W`` (N, N): the undirected union of graphs ``names`` (a pair's largest weight, or 1 unless
    ``weighted``), without self-loops."""
    w = sp.csr_matrix((num_genes, num_genes), dtype=np.float64)
    for name in names:
        a = graphs[name].adj.astype(np.float64).tocsr()
        if a.shape[0] > num_genes:
            raise ValueError(f"graph {name!r} has more nodes ({a.shape[0]}) than the genome has genes ({num_genes})")
        a.resize((num_genes, num_genes))
        w = w.maximum(a).maximum(a.T.tocsr())
    w.setdiag(0)
    w.eliminate_zeros()
    if not weighted:
        w.data[:] = 1.0
    return w.tocsr()


class Neighbours(nn.Module):
    """Every gene's ``k`` strongest neighbours in an adjacency ``W``: ``index`` (N, k) (-1 padded) and
    ``weight`` (N, k) (0 on padding). Ties are broken by a fixed hash of the pair, so a hub keeps a
    reproducible, unbiased sample of its equally weighted neighbours. Rebuilt from the graphs (not saved)."""

    def __init__(self, adjacency: sp.csr_matrix, k: int):
        super().__init__()
        n = adjacency.shape[0]
        adj = adjacency.tocsr()
        adj.sort_indices()
        deg = np.diff(adj.indptr)
        k = max(1, min(int(k), int(deg.max()) if len(deg) and deg.max() > 0 else 1))
        row = np.repeat(np.arange(n), deg)
        tie = ((row * 2654435761 + adj.indices * 40503) % 1000003) / 1000003.0
        order = np.lexsort((tie, -adj.data, row))  # by row, then weight descending, then the hash
        rank = np.arange(len(order)) - np.repeat(adj.indptr[:-1], deg)
        keep = rank < k
        index = np.full((n, k), -1, dtype=np.int64)
        weight = np.zeros((n, k), dtype=np.float32)
        index[row[order][keep], rank[keep]] = adj.indices[order][keep]
        weight[row[order][keep], rank[keep]] = adj.data[order][keep]
        self.register_buffer("index", torch.from_numpy(index), persistent=False)
        self.register_buffer("weight", torch.from_numpy(weight), persistent=False)


def substitution_estimate(
    members: torch.Tensor, sizes: torch.Tensor, valid: torch.Tensor, table: SetTable, neighbours: Neighbours
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums and weights (B, P) of the neighbour-substitution estimate of every set.

    A set ``S = {q_1, …, q_s}`` reads the measured sets that replace exactly one member ``q_j`` by one of
    its graph neighbours ``c`` (not already in S), each with the edge weight ``W[q_j, c]``: for a single the
    neighbours' single mutants, for a pair ``{a, b}`` the records ``{c, b}`` and ``{a, d}``. The estimate is
    ``sum / weight``, per phenotype over the records that measure it. This is the one-substitution form of
    graph smoothing: sets that differ from S in two or more genes are not read, so the cost is
    O(s · k) lookups per set (``k`` neighbours kept per gene, :class:`Neighbours`), and S itself never enters.

    ``members`` (B, W) padded with -1, ``sizes`` (B,), ``valid`` (B,) bool: sets to estimate (others get 0).
    """
    members = members[:, :MAX_TABLE_SET]
    B, W = members.shape
    P = table.total.shape[1]
    total = torch.zeros(B, P, device=members.device)
    weight = torch.zeros(B, P, device=members.device)
    k = neighbours.index.shape[1]
    for j in range(W):
        active = valid & (sizes > j)
        gene = members[:, j].clamp(0, table.num_genes - 1)  # other rows are not active
        cand = neighbours.index[gene]  # (B, k)
        w = neighbours.weight[gene] * active[:, None]
        clash = (members[:, None, :] == cand[:, :, None]).any(-1)  # c is already a member
        w = w * ((cand >= 0) & ~clash)
        substituted = members[:, None, :].expand(B, k, W).clone()
        substituted[:, :, j] = cand
        t, c = table.lookup(set_keys(substituted, sizes[:, None].expand(B, k), table.num_genes))
        total = total + (w[..., None] * t).sum(1)
        weight = weight + (w[..., None] * c).sum(1)
    return total, weight


# ---------------------------------------------------------------------- interaction profiles
def _pair_codes(genes: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The pattern of the symmetric (n, n) matrix of pairs ``genes`` (R, 2) and the codes of (a, b) then (b, a)."""
    a, b = genes[:, 0], genes[:, 1]
    pattern, (code,) = pattern_codes([np.r_[a * n + b, b * n + a]], n * n)
    return pattern, code


def _sym_matrix(coded: tuple[np.ndarray, np.ndarray], values: np.ndarray, n: int):
    """Symmetric (n, n) matrices of pair values (:func:`_pair_codes` of their genes), the mean over duplicate
    measurements and the sum: dense or CSR (:func:`~cellformer.models.pairs.pattern_matrix`)."""
    pattern, code = coded
    total = np.bincount(code, np.r_[values, values], len(pattern))
    count = np.bincount(code, minlength=len(pattern))
    dense = is_dense(pattern, n)
    return pattern_matrix(pattern, total / count, n, dense), pattern_matrix(pattern, total, n, dense)


#: records per chunk when the profile sums of larger sets are fitted (bounds the fit's memory at any size)
FIT_CHUNK = 100_000
#: up to this many genes with pairs the profile basis is an exact dense eigendecomposition
DENSE_EIGEN = 3000


def top_eigenvectors(
    matrix: sp.csr_matrix, k: int, iterations: int = 6, oversample: int = 16, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` eigenpairs of largest magnitude of a symmetric sparse matrix, approximately: randomised block
    subspace iteration (Halko, Martinsson & Tropp 2011, Alg. 4.4) with a Rayleigh-Ritz step.

    Each iteration is one sparse × dense product with ``k + oversample`` columns, so the cost is
    ``O(iterations · nnz · k)``; a Lanczos solver (``eigsh``) needs thousands of single products for ``k`` in
    the tens. Deterministic for a given ``seed``. Returns ``(values (k,), vectors (n, k))``.
    """
    n = matrix.shape[0]
    width = min(n, k + oversample)
    q = np.linalg.qr(matrix @ np.random.default_rng(seed).normal(size=(n, width)))[0]
    for _ in range(iterations):
        q = np.linalg.qr(matrix @ q)[0]
    vals, small = np.linalg.eigh(q.T @ (matrix @ q))
    order = np.argsort(-np.abs(vals))[:k]
    return vals[order], q @ small[:, order]


#: interaction-profile token entries are clipped to ± this many RMS (after the batch's own records are removed)
PROFILE_CLIP = 5.0


class InteractionProfiles(nn.Module):
    """A k-dimensional sketch of every gene's measured interaction profile, per phenotype.

    For phenotype ``p``: ``u^p`` (N, k) are the leading eigenvectors (by |eigenvalue|) of the symmetric matrix of
    the standardised training pair values (exact up to :data:`DENSE_EIGEN` genes with pairs, by randomised
    subspace iteration above: :func:`top_eigenvectors`), scaled to unit mean square over the genes that have pairs; gene
    ``i``'s profile is ``Σ_r y_rp · mean_{j ∈ r, j ≠ i} u^p_j`` over the training records ``r`` of 2..MAX_SET
    genes containing ``i``, divided by the square root of their number, each dimension scaled to unit RMS over
    the genes with records (fixed at fit) and clipped to ± :data:`PROFILE_CLIP`. The sketch is linear in the records, so
    a batch's own records are removed in O(B·k) (:meth:`tokens`); nothing on a step's path grows with the
    number of training records. Buffers: saved with the model.
    """

    def __init__(self, num_genes: int, num_phenotypes: int, dim: int):
        super().__init__()
        self.num_genes, self.dim = num_genes, dim
        self.register_buffer("basis", torch.zeros(num_genes, num_phenotypes, dim))  # u_j per phenotype
        self.register_buffer("total", torch.zeros(num_genes, num_phenotypes, dim))  # Σ_r y_r · mean u of the others
        self.register_buffer("count", torch.zeros(num_genes, num_phenotypes))  # records measuring p with gene i
        self.register_buffer("scale", torch.ones(num_phenotypes, dim))  # 1 / RMS of each sketch dimension

    @property
    def width(self) -> int:
        return self.basis.shape[1] * self.dim

    def fit(self, data: PerturbationData, rows: np.ndarray, cols: Sequence[int], mean, std) -> None:
        """Eigenvectors of the training pairs' matrix and the profile sums of the training records ``rows``."""
        n, k = self.num_genes, self.dim
        sizes = data.set_sizes[rows]
        basis = np.zeros((n, len(cols), k), np.float64)
        pairs = rows[sizes == 2]
        genes = data.gene_index[data.offsets[pairs][:, None] + np.arange(2)].astype(np.int64)
        base = (genes < n).all(1)
        y2 = (data.phenotypes[pairs][:, list(cols)].astype(np.float64) - mean) / std
        total = np.zeros((n, len(cols), k))
        count = np.zeros((n, len(cols)))
        last = None  # (selection, codes): phenotypes measured on the same pairs share the pattern
        for p in range(len(cols)):
            sel = base & ~np.isnan(y2[:, p])
            if last is None or not np.array_equal(last[0], sel):
                last = (sel, _pair_codes(genes[sel], n))
            means, sums = _sym_matrix(last[1], y2[sel, p], n)
            count[:, p] += np.bincount(genes[sel].ravel(), minlength=n)
            active = np.flatnonzero(count[:, p] > 0)
            m = min(k, len(active) - 1)
            matrix = means[np.ix_(active, active)] if isinstance(means, np.ndarray) else means[active][:, active]
            if m < 1 or not np.any(matrix if isinstance(matrix, np.ndarray) else matrix.data):
                continue
            if len(active) <= DENSE_EIGEN:  # dense is exact and fast at this size
                vals, vecs = np.linalg.eigh(matrix if isinstance(matrix, np.ndarray) else matrix.toarray())
            else:
                vals, vecs = top_eigenvectors(matrix, m)
            order = np.argsort(-np.abs(vals))[:m]
            vecs = vecs[:, order] * np.sqrt(len(active))
            vecs *= np.where(vecs[np.abs(vecs).argmax(0), np.arange(vecs.shape[1])] < 0, -1.0, 1.0)  # fixed signs
            basis[active, p, : vecs.shape[1]] = vecs
            # pairs: gene a gains y_ab · u_b and b gains y_ab · u_a, i.e. one sparse product with the matrix of
            # summed pair values (cost O(pairs · k), no per-record arrays)
            total[:, p] += sums @ basis[:, p]
        for s in range(3, MAX_SET + 1):
            sel = rows[sizes == s]
            if not len(sel):
                continue
            for lo in range(0, len(sel), FIT_CHUNK):  # in chunks: (records, s, P, k) would not fit at 20 M records
                part = sel[lo : lo + FIT_CHUNK]
                members = data.gene_index[data.offsets[part][:, None] + np.arange(s)].astype(np.int64)
                keep = (members < n).all(1)
                members = members[keep]
                y = (data.phenotypes[part[keep]][:, list(cols)].astype(np.float64) - mean) / std
                has = ~np.isnan(y)
                summed = basis[members].sum(1)  # (R, P, k)
                for i in range(s):
                    other = (summed - basis[members[:, i]]) / (s - 1)
                    for p in range(len(cols)):
                        onto = sp.csr_matrix((np.where(has[:, p], y[:, p], 0.0), (members[:, i], np.arange(len(y)))),
                                             shape=(n, len(y)))  # fmt: skip
                        total[:, p] += onto @ other[:, p]
                        count[:, p] += np.bincount(members[:, i], has[:, p], n)
        # Unit RMS per sketch dimension over the genes with records: eigenvectors of a sparse screen are often
        # localised, so a unit-mean-square vector can put entries of order sqrt(genes) on a few genes.
        profile = total / np.sqrt(np.maximum(count, 1))[..., None]
        scale = np.ones((len(cols), k))
        for p in range(len(cols)):
            rms = np.sqrt(np.mean(profile[count[:, p] > 0, p] ** 2, axis=0)) if (count[:, p] > 0).any() else 0
            scale[p] = np.where(rms > 0, 1.0 / np.where(rms > 0, rms, 1.0), 1.0)
        self.basis.copy_(torch.from_numpy(basis.astype(np.float32)))
        self.total.copy_(torch.from_numpy(total.astype(np.float32)))
        self.count.copy_(torch.from_numpy(count.astype(np.float32)))
        self.scale.copy_(torch.from_numpy(scale.astype(np.float32)))

    def tokens(
        self,
        members: torch.Tensor,
        sizes: torch.Tensor,
        own: torch.Tensor | None,
        mean: torch.Tensor,
        std: torch.Tensor,
        hidden: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(N, P·k) profiles; ``own`` (B, P): the batch's values when its records are training records (they are
        removed from the profiles first); ``hidden`` (N,) genes read as genes without records (zeros)."""
        total = self.total
        if own is not None:
            valid = (sizes >= 2) & (sizes <= MAX_SET) & (((members >= 0) & (members < self.num_genes)).sum(1) == sizes)
            y = torch.nan_to_num((own.to(total.dtype) - mean) / std) * valid[:, None]
            g = members.clamp(0, self.num_genes - 1)
            u = self.basis[g] * (members >= 0)[..., None, None]  # (B, W, P, k)
            summed = u.sum(1)
            for i in range(members.shape[1]):
                other = (summed - u[:, i]) / (sizes - 1).clamp_min(1)[:, None, None]
                active = (sizes > i)[:, None, None]
                total = total.index_add(0, g[:, i], -(y[..., None] * other * active))
        out = (total / self.count.clamp_min(1).sqrt()[..., None] * self.scale).clamp(-PROFILE_CLIP, PROFILE_CLIP)
        if hidden is not None:
            out = out * ~hidden[:, None, None]
        return out.flatten(1)

    def measured(self, hidden: torch.Tensor | None = None, groups: bool = False) -> torch.Tensor:
        """(N, P·k) bool: profile entries with training records behind them (and not of a ``hidden`` (N,) gene),
        laid out as :meth:`tokens`' output; with ``groups`` (N, P), one column per phenotype."""
        has = self.count > 0
        if hidden is not None:
            has = has & ~hidden[:, None]
        return has if groups else has[..., None].expand(-1, -1, self.dim).flatten(1)


# ---------------------------------------------------------------------- the readout features
class RecordFeatures(nn.Module):
    """Readout and token inputs of CellFormer computed from the graphs and the training records.

    Args:
        num_genes: genes of the base genome (indices ≥ it are heterologous: no records).
        phenotype_names: the phenotypes (P).
        graphs: the data's graphs; ``graph_names`` are the input graphs (G).
        pair_graph, smoothing, member_singles, member_pairs, additive, label_inputs: which features are on.
        additive_folds: folds of the cross-fitted additive estimate.
        smoothing_neighbours: neighbours kept per gene for the substitution estimate.
        profile_dim: dimensions of the interaction-profile token inputs per phenotype (0 = none).
        inferred_pairs: the ``inferred_pairs`` feature (needs ``profile_dim``; :meth:`forward` needs ``imputed``).
    """

    def __init__(
        self,
        num_genes: int,
        phenotype_names: Sequence[str],
        graphs: GraphSet,
        graph_names: Sequence[str],
        pair_graph: bool = True,
        smoothing: bool = True,
        member_singles: bool = True,
        member_pairs: bool = True,
        additive: bool = True,
        label_inputs: bool = True,
        additive_folds: int = 5,
        smoothing_neighbours: int = 64,
        profile_dim: int = 0,
        inferred_pairs: bool = False,
    ):
        super().__init__()
        self.num_genes, self.phenotype_names = num_genes, list(phenotype_names)
        self.graph_names = list(graph_names)
        P, G = len(self.phenotype_names), len(self.graph_names)
        self.pair_graph = pair_graph and G > 0
        self.smoothing = smoothing and G > 0
        self.member_singles, self.member_pairs = member_singles, member_pairs
        self.label_inputs = label_inputs and G > 0
        # input graphs as binary symmetric adjacencies (pair relations, neighbour labels)
        self._adjacency = [union_adjacency(graphs, [n], num_genes, weighted=False) for n in self.graph_names]
        if self.pair_graph:  # sorted keys g·N² + a·N + b of every input graph's edges (both directions)
            keys = [g * num_genes**2 + a.tocoo().row * num_genes + a.tocoo().col for g, a in enumerate(self._adjacency)]
            self.register_buffer("edge_keys", torch.from_numpy(np.sort(np.concatenate(keys)).astype(np.int64)),
                                 persistent=False)  # fmt: skip
        self.sets = SetTable(num_genes, P) if (self.smoothing or member_pairs) else None
        if self.smoothing:
            union = union_adjacency(graphs, self.graph_names, num_genes, weighted=False)
            self.neighbours = Neighbours(union, smoothing_neighbours)
        self.register_buffer("single_value", torch.zeros(num_genes, P))  # standardised mean single mutant
        self.register_buffer("single_has", torch.zeros(num_genes, P))
        self.register_buffer("label_features", torch.zeros(num_genes, G * (P + 1) if self.label_inputs else 0))
        self.profiles = InteractionProfiles(num_genes, P, profile_dim) if profile_dim > 0 else None
        self.inferred_pairs = inferred_pairs and self.profiles is not None
        self.additive = None
        if additive:
            from cellformer.models.baselines.additive import CrossFittedAdditive

            self.additive = CrossFittedAdditive(num_genes, self.phenotype_names, additive_folds)

    def slices(self) -> dict[str, slice]:
        """Where each switched-on feature sits in the output of :meth:`forward`, in order."""
        P = len(self.phenotype_names)
        widths = {"pair_graph": len(self.graph_names) * self.pair_graph, "smoothing": 2 * P * self.smoothing,
                  "member_singles": 3 * P * self.member_singles, "member_pairs": 2 * P * self.member_pairs,
                  "additive": 2 * P * (self.additive is not None),
                  "profile_pairs": self.profiles.width if self.profiles is not None else 0,
                  "inferred_pairs": self.profiles.width if self.inferred_pairs else 0}  # fmt: skip
        out, start = {}, 0
        for name, w in widths.items():
            if w:
                out[name] = slice(start, start + w)
                start += w
        return out

    @property
    def width(self) -> int:
        """Number of readout features per set."""
        return sum(s.stop - s.start for s in self.slices().values())

    @property
    def token_width(self) -> int:
        """Width of the per-gene token inputs (:meth:`token_inputs`)."""
        return self.label_features.shape[1] + (self.profiles.width if self.profiles is not None else 0)

    @torch.no_grad()
    def token_inputs(
        self,
        batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
        mean: torch.Tensor,
        std: torch.Tensor,
        own: torch.Tensor | None = None,
        hidden: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """(N, :attr:`token_width`) per-gene inputs: neighbour labels, then interaction profiles (None if none).

        ``batch`` (gene_index, ptr, batch ids) and ``own`` (B, P) values: the training batch whose records leave
        the profiles for this step (None outside training). ``hidden`` (N,): genes without records this step.
        """
        if self.token_width == 0:
            return None
        parts = [self.label_features] if self.label_features.shape[1] else []
        if self.profiles is not None:
            members, sizes = (None, None) if batch is None else padded_members(*batch)
            parts.append(self.profiles.tokens(members, sizes, own if batch is not None else None, mean, std, hidden))
        return torch.cat(parts, dim=1)

    def profile_inputs(self, token_inputs: torch.Tensor) -> torch.Tensor:
        """The (N, P·k) interaction profiles within the per-gene inputs of :meth:`token_inputs`."""
        return token_inputs[:, self.label_features.shape[1] :]

    def imputation_loss(
        self,
        imputed: torch.Tensor,
        hidden: torch.Tensor,
        batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        own: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
    ) -> torch.Tensor:
        """Mean squared error of imputed profiles (N, P·k) against the measured ones over the ``hidden`` genes
        that have a measured profile; the training ``batch``'s own records (values ``own``) are removed from the
        targets as from the tokens, so no record's label reaches its own prediction through them."""
        target = self.profile_inputs(self.token_inputs(batch, mean, std, own, None))
        use = (self.profiles.measured() & hidden[:, None]).to(imputed.dtype)
        return ((imputed - target) ** 2 * use).sum() / use.sum().clamp_min(1.0)

    # ------------------------------------------------------------------ fitting
    def fit(self, data: PerturbationData, train_rows: np.ndarray, mean, std) -> None:
        """Build every table from the training records ``data[train_rows]``; ``mean``/``std`` (P,) are the model's
        target scaling (standardised = (y − mean) / std)."""
        mean, std = (np.asarray(torch.as_tensor(v).cpu(), dtype=np.float64) for v in (mean, std))
        rows = np.sort(np.asarray(train_rows, dtype=np.int64))
        cols = [data.phenotype_names.index(n) for n in self.phenotype_names]
        value, has = self._single_means(data, rows, cols, mean, std)
        self.single_value.copy_(torch.from_numpy(value.astype(np.float32)))
        self.single_has.copy_(torch.from_numpy(has.astype(np.float32)))
        if self.label_inputs:
            self.label_features.copy_(torch.from_numpy(self._neighbour_labels(value, has)))
        if self.sets is not None:
            self.sets.fit(data, rows, cols)
        if self.profiles is not None:
            self.profiles.fit(data, rows, cols, mean, std)
        if self.additive is not None:
            self.additive.fit(data, rows, self.phenotype_names, mean, std)

    def _single_means(self, data: PerturbationData, rows: np.ndarray, cols: list[int], mean: np.ndarray,
                      std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """(N, P) mean standardised single-mutant phenotypes over the training singles, and (N, P) has-data."""
        single = rows[data.set_sizes[rows] == 1]
        genes = data.gene_index[data.offsets[single]].astype(np.int64)
        ok = (genes >= 0) & (genes < self.num_genes)
        genes, single = genes[ok], single[ok]
        y = data.phenotypes[single][:, cols].astype(np.float64)
        y = (y - mean) / std
        has = ~np.isnan(y)
        n, p = self.num_genes, len(cols)
        value = np.stack([np.bincount(genes, np.where(has[:, j], y[:, j], 0), n) for j in range(p)], 1).astype(float)
        count = np.stack([np.bincount(genes, has[:, j], n) for j in range(p)], 1).astype(float)
        value = np.divide(value, count, out=np.zeros_like(value), where=count > 0)
        return value, (count > 0).astype(np.float64)

    def _neighbour_labels(self, value: np.ndarray, measured: np.ndarray) -> np.ndarray:
        """(N, G·(P+1)): per input graph, the neighbours' mean of ``value`` (where ``measured``; 0 where none)
        and the share of neighbours with a measurement."""
        out = []
        for a in self._adjacency:
            s, c = a @ (value * measured), a @ measured
            deg = np.asarray(a.sum(axis=1)).ravel()[:, None]
            mean = np.divide(s, c, out=np.zeros_like(s), where=c > 0)
            share = np.divide(c[:, :1], deg, out=np.zeros_like(deg), where=deg > 0)
            out.append(np.concatenate([mean, share], axis=1))
        return np.concatenate(out, axis=1).astype(np.float32)

    # ------------------------------------------------------------------ lookup
    @torch.no_grad()
    def forward(
        self,
        gene_index: torch.Tensor,
        types: torch.Tensor,
        ptr: torch.Tensor,
        batch: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        training: bool = False,
        hidden: torch.Tensor | None = None,
        token_inputs: torch.Tensor | None = None,
        imputed: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """(B, :attr:`width`) readout features of a CSR batch (None when every feature is off).

        ``token_inputs``: the (N, :attr:`token_width`) per-gene inputs of this pass (:meth:`token_inputs`), whose
        interaction profiles the ``profile_pairs`` feature multiplies (computed afresh when not given).
        ``imputed`` (N, P·k): profiles inferred for every gene; the entries without a measured profile in this
        pass (no training records of that phenotype, or a ``hidden`` gene) read them instead, as an input (no
        gradient flows back: the inference is fitted to measured profiles only, :meth:`imputation_loss`).
        ``mean``/``std`` (P,): the model's target scaling. ``training``: the sets are training records (a
        single hides its own value; the additive estimate is cross-fitted). ``hidden`` (N,) bool: genes whose
        records are hidden in this step.
        """
        if self.width == 0:
            return None
        B = ptr.numel() - 1
        members, sizes = padded_members(gene_index, ptr, batch)
        known = (members >= 0) & (members < self.num_genes)
        base = (sizes <= MAX_SET) & (known.sum(1) == sizes) & (sizes > 0)  # every member in the base genome
        member_hidden = None
        if hidden is not None:
            member_hidden = hidden[gene_index.clamp(0, self.num_genes - 1)] & (gene_index < self.num_genes)
        parts = []
        if self.pair_graph:
            parts.append(self._pair_graph(members, sizes, known))
        if self.smoothing:
            valid = base & (sizes <= MAX_TABLE_SET)
            total, weight = substitution_estimate(members, sizes, valid, self.sets, self.neighbours)
            has = weight > 1e-9
            est = (total / weight.clamp_min(1e-9) - mean) / std
            parts.append(torch.cat([est * has, has.float()], dim=1))
        if self.member_singles:
            parts.append(self._member_singles(gene_index, ptr, batch, B, training, member_hidden))
        if self.member_pairs:
            parts.append(self._member_pairs(members, sizes, known, hidden, mean, std))
        if self.additive is not None:
            parts.append(self.additive(gene_index, types, ptr, mean, std, training, member_hidden))
        if self.profiles is not None:
            if token_inputs is None:
                token_inputs = self.token_inputs(None, mean, std, hidden=hidden)
            profile = self.profile_inputs(token_inputs)
            if imputed is not None:  # the inferred profile where none was measured
                profile = torch.where(self.profiles.measured(hidden), profile, imputed.to(profile.dtype))
            parts.append(self._pair_product(profile, members, known))
            if self.inferred_pairs:
                if imputed is None:
                    raise ValueError("the inferred_pairs feature needs the inferred profiles (imputed)")
                parts.append(self._pair_product(imputed.to(profile.dtype), members, known))
        return torch.cat(parts, dim=1)

    def _pair_product(self, profile: torch.Tensor, members: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """(B, P·k) mean over the member pairs of ``profile[a] ⊙ profile[b]`` (zeros for singles)."""
        a, b = members[:, _PAIR_I], members[:, _PAIR_J]
        ok = (known[:, _PAIR_I] & known[:, _PAIR_J]).float()[..., None]
        n = self.num_genes
        product = profile[a.clamp(0, n - 1)] * profile[b.clamp(0, n - 1)] * ok  # (B, pairs, P·k)
        return product.sum(1) / ok.sum(1).clamp_min(1)

    def _pair_graph(self, members: torch.Tensor, sizes: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """(B, G) share of member pairs that are neighbours in each input graph (0 for singles)."""
        a, b = members[:, _PAIR_I], members[:, _PAIR_J]  # (B, pairs)
        ok = known[:, _PAIR_I] & known[:, _PAIR_J]
        n_pairs = (sizes.clamp(max=MAX_SET) * (sizes.clamp(max=MAX_SET) - 1) // 2).clamp_min(1).float()
        n = self.num_genes
        out = []
        for g in range(len(self.graph_names)):
            _, hit = sorted_lookup(self.edge_keys, g * n * n + a.clamp_min(0) * n + b.clamp_min(0))
            out.append((hit & ok).float().sum(1) / n_pairs)
        return torch.stack(out, dim=1)

    def _member_singles(self, gene_index, ptr, batch, B: int, training: bool, member_hidden) -> torch.Tensor:
        """(B, 3P): members' standardised single mutants summed, has-data counts, mean pairwise product."""
        known = gene_index < self.num_genes
        g = gene_index.clamp(0, self.num_genes - 1).long()
        has = self.single_has[g] * known[:, None]
        if member_hidden is not None:
            has = has * ~member_hidden[:, None]
        if training:  # a training single is its own record: it does not read its own value
            has = has * ((ptr[1:] - ptr[:-1]) != 1)[batch][:, None]
        v = self.single_value[g] * has
        total = scatter(v, batch, dim=0, dim_size=B, reduce="sum")
        count = scatter(has, batch, dim=0, dim_size=B, reduce="sum")
        return torch.cat([total, count, PerturbationHead.pairwise(v, batch, B)], dim=1)

    def _member_pairs(self, members, sizes, known, hidden, mean, std) -> torch.Tensor:
        """(B, 2P): for sets of ≥ 3 genes, the standardised mean of their member pairs measured as doubles
        and the share of member pairs measured (zeros otherwise)."""
        a, b = members[:, _PAIR_I], members[:, _PAIR_J]
        large = (sizes >= 3) & (sizes <= MAX_SET)
        use = large[:, None] & known[:, _PAIR_I] & known[:, _PAIR_J]
        if hidden is not None:
            n = self.num_genes
            use = use & ~hidden[a.clamp(0, n - 1)] & ~hidden[b.clamp(0, n - 1)]
        pair = torch.stack([a, b], -1)
        total, count = self.sets.lookup(set_keys(pair, torch.full_like(a, 2), self.num_genes))
        value = (total / count.clamp_min(1) - mean) / std
        has = (count > 0) & use[..., None]
        n_pairs = (sizes.clamp(max=MAX_SET) * (sizes.clamp(max=MAX_SET) - 1) // 2).clamp_min(1)[:, None].float()
        found = has.float().sum(1)
        return torch.cat([(value * has).sum(1) / found.clamp_min(1), found / n_pairs * large[:, None]], dim=1)
