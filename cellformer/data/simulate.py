"""A seeded, deterministic phenotype simulator whose genetic interactions follow a real gene graph.

The embedded default dataset (``data/yeast_sim.h5``) is built by :func:`build_default_dataset`: the real
yeast genome and STRING v9.1 "database" channel as the *truth graph*, simulated single, double and triple
deletion screens. The simulator is a known ground truth, so a model's use of graphs can be checked
(the truth follows one graph; a share of it follows none).

Mechanism
---------
1. **Modules.** Genes are grouped into modules, the communities of the truth graph
   (``networkx.community.louvain_communities`` with weights and the seed; directed graphs are read as
   undirected). Communities larger than ``max_module_size`` are split again by Louvain on their own
   subgraph at twice the resolution until they fit (or cannot be split). Genes without edges are
   singleton modules.
2. **Single-mutant costs** ``s_i >= 0``: most genes get a small cost (exponential, mean 0.03), 12% a
   moderate one (uniform 0.2-1.0), 5% a large one (uniform 1.5-3.5); in ``essential_module_share`` of
   the modules (size >= 2) every member is raised to at least a uniform 0.5-2.5 ("essential
   complexes"). Single-mutant fitness is ``f_i = exp(-s_i)``: mostly near 1, some sick.
3. **Interaction terms.** Each module ``m`` of size >= 2 has a pair term ``kappa_m`` and a triple term
   ``eta_m``. ``kappa_m`` is usually a positive cost (negative epistasis: redundancy / buffering,
   log-normal with median 0.25, clipped to [0.02, 1.5]) and sometimes negative (positive epistasis: the
   complex is already broken by one deletion, ``kappa_m = -u * median(s in m)``, ``u ~ U(0.4, 0.9)``;
   probability 0.2, or 0.5 in essential modules). ``eta_m = kappa_m * U(0.1, 0.4)`` (same sign,
   smaller).
4. **Off-graph interactions.** ``off_graph_share`` of all interacting pairs are put on random gene pairs
   that are neither in the same module nor an edge of the truth graph: with ``W`` same-module pairs in
   total, ``round(W * share / (1 - share))`` such pairs get a term ``omega_ab`` drawn like ``kappa``
   (positive epistasis: ``-u * min(s_a, s_b)``). These interactions follow no graph.
5. **Fitness** of a deletion set ``D``::

       f(D) = exp(-( sum_{i in D} s_i
                     + sum_{same-module pairs {a,b} in D} kappa_m
                     + sum_{same-module triples {a,b,c} in D} eta_m
                     + sum_{off-graph pairs {a,b} in D} omega_ab ))

Sampled records (ascertainment)
-------------------------------
* **singles**: every gene (or ``n_singles`` random genes);
* **doubles**: ``within_module_share`` (default half) are same-module pairs (a random gene in a module
  of size >= 2, then a random partner from its module); the rest are pairs across modules, of which
  a part are off-graph interacting pairs, as many as make ``off_graph_share`` of the measured
  interacting doubles follow no graph (like a real screen enriched by design for candidate pairs from
  independent evidence), and the remainder uniform random pairs (nearly all non-interacting);
* **triples**: ``triple_within_module_share`` (default 0.75) are three genes of one module (size >= 3);
  of the others a share ``off_graph_share`` are an off-graph interacting pair plus a random gene, the
  rest three random genes.

Records are unique sets; all genes have type DELETION.

Phenotypes (columns, in this order)
-----------------------------------
* ``fitness``: ``f(D)`` for every record;
* ``epsilon``: doubles only (NaN otherwise), ``eps_ab = f_ab - f_a f_b``;
* ``tau``: triples only (NaN otherwise), Kuzmin et al. 2018:
  ``tau_abc = f_abc - f_a f_b f_c - eps_ab f_c - eps_ac f_b - eps_bc f_a``,
  with the *true* ``f`` and ``eps`` of the sub-sets.

Each observed value gets independent Gaussian measurement noise (sd ``noise``). The ground truth goes in
``PerturbationData.meta`` (see :func:`simulate`) and the record split is a seeded random 80/10/10.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import numpy as np

from cellformer.data.dataset import PerturbationData, PerturbationType
from cellformer.data.splits import random_split
from cellformer.defaults import DEFAULT_DATASET
from cellformer.errors import UserError
from cellformer.genome.genome import Genome
from cellformer.graphs.graph import GeneGraph, GraphSet

SIMULATOR_VERSION = "cellformer.simulate/1"
PHENOTYPES = ["fitness", "epsilon", "tau"]
DEFAULT_TRUTH_GRAPH = "string_database"

# single-mutant cost mixture
_SMALL_COST_MEAN = 0.03
_MODERATE_SHARE, _MODERATE_RANGE = 0.12, (0.2, 1.0)
_LARGE_SHARE, _LARGE_RANGE = 0.05, (1.5, 3.5)
_ESSENTIAL_RANGE = (0.5, 2.5)
# interaction terms
_NEG_EPISTASIS_MEDIAN, _NEG_EPISTASIS_SIGMA, _NEG_EPISTASIS_CLIP = 0.25, 0.5, (0.02, 1.5)
_POS_EPISTASIS_P, _POS_EPISTASIS_P_ESSENTIAL, _POS_EPISTASIS_U = 0.2, 0.5, (0.4, 0.9)
_TRIPLE_RATIO = (0.1, 0.4)


@dataclass
class SimulationTruth:
    """The ground truth of a simulation (what :func:`simulate` stores in ``meta``).

    Attributes:
        module: (N,) module id of each gene (modules numbered by decreasing size; singletons last).
        single_cost: (N,) ``s_i``.
        module_pair_term: (M,) ``kappa_m`` (0 for singleton modules).
        module_triple_term: (M,) ``eta_m`` (0 for modules smaller than 3).
        off_pairs: (P_off, 2) off-graph interacting pairs (``a < b``) and ``off_terms`` (P_off,) ``omega_ab``.
    """

    module: np.ndarray
    single_cost: np.ndarray
    module_pair_term: np.ndarray
    module_triple_term: np.ndarray
    off_pairs: np.ndarray
    off_terms: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.module)
        self._n = n
        self._module_size = np.bincount(self.module, minlength=len(self.module_pair_term))
        keys = self.off_pairs[:, 0].astype(np.int64) * n + self.off_pairs[:, 1] if len(self.off_pairs) else []
        order = np.argsort(keys)
        self._off_keys = np.asarray(keys, dtype=np.int64)[order]
        self._off_vals = np.asarray(self.off_terms, dtype=np.float64)[order]

    @classmethod
    def from_meta(cls, meta: dict[str, np.ndarray]) -> SimulationTruth:
        """Rebuild the truth from a simulated dataset's ``meta``."""
        on = np.asarray(meta["pair_on_graph"], dtype=bool)
        return cls(
            module=np.asarray(meta["module"], dtype=np.int64),
            single_cost=np.asarray(meta["single_cost"], dtype=np.float64),
            module_pair_term=np.asarray(meta["module_pair_term"], dtype=np.float64),
            module_triple_term=np.asarray(meta["module_triple_term"], dtype=np.float64),
            off_pairs=np.asarray(meta["pairs"], dtype=np.int64)[~on].reshape(-1, 2),
            off_terms=np.asarray(meta["pair_term"], dtype=np.float64)[~on],
        )

    def pair_term(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Interaction cost of gene pairs ``(a, b)`` (vectorised; 0 for non-interacting pairs)."""
        a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        ma, mb = self.module[lo], self.module[hi]
        same = (ma == mb) & (lo != hi)
        out = np.where(same, self.module_pair_term[ma], 0.0)
        if len(self._off_keys):
            key = lo * self._n + hi
            pos = np.clip(np.searchsorted(self._off_keys, key), 0, len(self._off_keys) - 1)
            hit = (self._off_keys[pos] == key) & ~same
            out = out + np.where(hit, self._off_vals[pos], 0.0)
        return out

    def cost(self, sets: np.ndarray) -> np.ndarray:
        """Total cost of deletion sets given as an (R, k) array, -1 padding for smaller sets (k <= 3)."""
        sets = np.asarray(sets, dtype=np.int64)
        if sets.ndim != 2 or sets.shape[1] > 3:
            raise ValueError("sets must be an (R, k<=3) array padded with -1")
        valid = sets >= 0
        safe = np.where(valid, sets, 0)
        total = np.where(valid, self.single_cost[safe], 0.0).sum(axis=1)
        k = sets.shape[1]
        for i in range(k):
            for j in range(i + 1, k):
                both = valid[:, i] & valid[:, j]
                total += np.where(both, self.pair_term(safe[:, i], safe[:, j]), 0.0)
        if k == 3:
            m = self.module[safe]
            trip = valid.all(axis=1) & (m[:, 0] == m[:, 1]) & (m[:, 1] == m[:, 2])
            total += np.where(trip, self.module_triple_term[m[:, 0]], 0.0)
        return total

    def fitness(self, sets: np.ndarray) -> np.ndarray:
        """True fitness ``exp(-cost)`` of (R, k) padded deletion sets."""
        return np.exp(-self.cost(sets))


# ---------------------------------------------------------------------- building blocks
def graph_modules(
    graph: GeneGraph, seed: int = 0, resolution: float = 1.0, max_module_size: int | None = 50
) -> np.ndarray:
    """Module id of every gene: Louvain communities of ``graph`` (genes without edges are singletons).

    Communities above ``max_module_size`` are split by Louvain on their subgraph at doubled resolution.
    Modules are numbered by decreasing size (ties by smallest member), so ids are deterministic.
    """
    g = graph.to_networkx()
    if graph.directed:
        g = g.to_undirected()
    g.remove_nodes_from([n for n, d in list(g.degree()) if d == 0])
    todo = [(set(c), resolution) for c in nx.community.louvain_communities(g, resolution=resolution, seed=seed)]
    done: list[set[int]] = []
    while todo:
        comm, res = todo.pop()
        if max_module_size is None or len(comm) <= max_module_size or res > 1e4:
            done.append(comm)
            continue
        parts = nx.community.louvain_communities(g.subgraph(comm), resolution=2 * res, seed=seed)
        if len(parts) == 1:
            todo.append((comm, 2 * res))
        else:
            todo.extend((set(p), 2 * res) for p in parts)
    covered = set().union(*done) if done else set()
    done.extend({i} for i in range(graph.num_nodes) if i not in covered)
    done.sort(key=lambda c: (-len(c), min(c)))
    module = np.empty(graph.num_nodes, dtype=np.int64)
    for m, comm in enumerate(done):
        module[list(comm)] = m
    return module


def _interaction_terms(rng: np.random.Generator, n: int, positive_p: np.ndarray, sick: np.ndarray) -> np.ndarray:
    """Draw ``n`` interaction costs: log-normal positive costs, or ``-u * sick`` with prob ``positive_p``."""
    neg = rng.lognormal(np.log(_NEG_EPISTASIS_MEDIAN), _NEG_EPISTASIS_SIGMA, n).clip(*_NEG_EPISTASIS_CLIP)
    pos = -rng.uniform(*_POS_EPISTASIS_U, n) * sick
    return np.where(rng.random(n) < positive_p, pos, neg)


def _members(module: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Genes sorted by module and module offsets (CSR): members of m are ``genes[ptr[m]:ptr[m+1]]``."""
    order = np.argsort(module, kind="stable")
    ptr = np.concatenate([[0], np.cumsum(np.bincount(module))])
    return order, ptr


def _sample_unique(draw, n: int, width: int, num_genes: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Up to ``n`` unique sorted gene sets from repeated calls of ``draw(m) -> (m, width)`` (rows with -1 dropped)."""
    base = np.array([num_genes**i for i in range(width)][::-1], dtype=np.int64)
    excl = np.zeros(0, dtype=np.int64) if exclude is None else np.asarray(exclude, dtype=np.int64)
    got = np.zeros((0, width), dtype=np.int64)
    keys = np.zeros(0, dtype=np.int64)
    for _ in range(50):
        need = n - len(got)
        if need <= 0:
            break
        cand = np.sort(draw(int(need * 1.3) + 16), axis=1)
        ok = (cand >= 0).all(axis=1) & (np.diff(cand, axis=1) > 0).all(axis=1)
        cand = cand[ok]
        ck = cand @ base
        _, first = np.unique(ck, return_index=True)
        first = np.sort(first)  # keep draw order: deterministic, unbiased truncation
        cand, ck = cand[first], ck[first]
        fresh = ~np.isin(ck, keys) & ~np.isin(ck, excl)
        cand, ck = cand[fresh][:need], ck[fresh][:need]
        got, keys = np.concatenate([got, cand]), np.concatenate([keys, ck])
    return got


def _pad(sets: np.ndarray, width: int = 3) -> np.ndarray:
    out = np.full((len(sets), width), -1, dtype=np.int64)
    out[:, : sets.shape[1]] = sets
    return out


# ---------------------------------------------------------------------- the simulator, in steps
@dataclass
class _Modules:
    """Module membership in CSR form: ``genes[ptr[m]:ptr[m+1]]`` are the members of module ``m``."""

    module: np.ndarray  # (N,) module id of each gene
    size: np.ndarray  # (M,) module sizes
    genes: np.ndarray  # genes sorted by module
    ptr: np.ndarray  # (M+1,) offsets into ``genes``

    @classmethod
    def of(cls, module: np.ndarray) -> _Modules:
        genes, ptr = _members(module)
        return cls(module, np.bincount(module, minlength=int(module.max()) + 1), genes, ptr)

    def draw_within(self, rng: np.random.Generator, m: int, k: int, pool: np.ndarray) -> np.ndarray:
        """``m`` draws of ``k`` genes of one module: a gene of ``pool``, then ``k - 1`` random members of its module."""
        a = pool[rng.integers(0, len(pool), m)]
        ma = self.module[a]
        cols = [a]
        for _ in range(k - 1):
            cols.append(self.genes[self.ptr[ma] + (rng.random(m) * self.size[ma]).astype(np.int64)])
        return np.stack(cols, axis=1)


def _checked_truth_graph(genome: Genome, graphs: GraphSet, truth_graph: str, **values: float | None) -> GeneGraph:
    """The truth graph, after rejecting settings :func:`simulate` cannot work with (:class:`UserError`)."""
    if not 0.0 <= values["off_graph_share"] < 1.0:
        raise UserError(f"off_graph_share must be in [0, 1), got {values['off_graph_share']}")
    if values["noise"] < 0:
        raise UserError(f"noise must be >= 0, got {values['noise']}")
    for name in ("n_doubles", "n_triples", "n_singles"):
        if (values[name] or 0) < 0:
            raise UserError(f"{name} must be >= 0, got {values[name]}")
    if genome.added.any():
        raise UserError("simulate() works on a native genome; this one has added (heterologous) genes")
    graph = graphs[truth_graph]
    n = len(genome)
    if graph.num_nodes != n:
        raise UserError(f"graph {truth_graph!r} has {graph.num_nodes} nodes but the genome has {n} genes")
    if n < 3:
        raise UserError("need at least 3 genes")
    return graph


def _draw_module_truth(
    rng: np.random.Generator, mods: _Modules, essential_module_share: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Single-mutant costs ``s`` (N,), module pair terms ``kappa`` (M,) and triple terms ``eta`` (M,)."""
    module, size = mods.module, mods.size
    n, n_mod = len(module), len(size)
    s = rng.exponential(_SMALL_COST_MEAN, n)
    u = rng.random(n)
    s = np.where(u < _MODERATE_SHARE, rng.uniform(*_MODERATE_RANGE, n), s)
    s = np.where(u > 1 - _LARGE_SHARE, rng.uniform(*_LARGE_RANGE, n), s)
    essential = (size >= 2) & (rng.random(n_mod) < essential_module_share)
    floor = rng.uniform(*_ESSENTIAL_RANGE, n_mod)
    s = np.where(essential[module], np.maximum(s, floor[module]), s)
    med_s = np.array([np.median(s[mods.genes[mods.ptr[m] : mods.ptr[m + 1]]]) for m in range(n_mod)])
    pos_p = np.where(essential, _POS_EPISTASIS_P_ESSENTIAL, _POS_EPISTASIS_P)
    kappa = np.where(size >= 2, _interaction_terms(rng, n_mod, pos_p, med_s), 0.0)
    eta = np.where(size >= 3, kappa * rng.uniform(*_TRIPLE_RATIO, n_mod), 0.0)
    return s, kappa, eta


def _draw_off_graph_pairs(
    rng: np.random.Generator, mods: _Modules, sym, s: np.ndarray, off_graph_share: float
) -> tuple[np.ndarray, np.ndarray]:
    """Off-graph interacting pairs (neither same-module nor a truth-graph edge) and their terms ``omega``."""
    module, size = mods.module, mods.size
    n = len(module)
    within_total = int((size * (size - 1) // 2).sum())
    n_off = int(round(within_total * off_graph_share / (1.0 - off_graph_share)))

    def draw_off(m: int) -> np.ndarray:
        c = rng.integers(0, n, size=(m, 2))
        bad = (module[c[:, 0]] == module[c[:, 1]]) | (np.asarray(sym[c[:, 0], c[:, 1]]).ravel() != 0)
        c[bad] = -1
        return c

    off_pairs = _sample_unique(draw_off, n_off, 2, n) if n_off else np.zeros((0, 2), dtype=np.int64)
    sick = np.minimum(s[off_pairs[:, 0]], s[off_pairs[:, 1]])
    off_terms = _interaction_terms(rng, len(off_pairs), np.full(len(off_pairs), _POS_EPISTASIS_P), sick)
    return off_pairs, off_terms


def _sample_singles(rng: np.random.Generator, n: int, n_singles: int | None) -> np.ndarray:
    """(R1, 1) single mutants: every gene, or ``n_singles`` random genes (sorted)."""
    if n_singles is None or n_singles >= n:
        return np.arange(n)[:, None]
    return np.sort(rng.choice(n, size=n_singles, replace=False))[:, None]


def _sample_doubles(
    rng: np.random.Generator,
    mods: _Modules,
    off_pairs: np.ndarray,
    n_doubles: int,
    within_module_share: float,
    off_graph_share: float,
) -> np.ndarray:
    """(R2, 2) unique doubles: same-module pairs, off-graph interacting pairs, then random pairs."""
    n = len(mods.module)
    in_mod2 = np.flatnonzero(mods.size[mods.module] >= 2)
    n_within = int(round(n_doubles * within_module_share)) if len(in_mod2) else 0
    within = _sample_unique(lambda m: mods.draw_within(rng, m, 2, in_mod2), n_within, 2, n)
    n_other = n_doubles - len(within)
    n_off = int(round(len(within) * off_graph_share / (1.0 - off_graph_share)))
    n_off = min(n_off, n_other, len(off_pairs))
    off = off_pairs[np.sort(rng.choice(len(off_pairs), n_off, replace=False))] if n_off else None
    taken = np.concatenate([within, off]) if off is not None else within
    rand = _sample_unique(lambda m: rng.integers(0, n, size=(m, 2)), n_other - n_off, 2, n, exclude=taken @ [n, 1])
    return np.concatenate([taken, rand]).astype(np.int64)


def _sample_triples(
    rng: np.random.Generator,
    mods: _Modules,
    off_pairs: np.ndarray,
    n_triples: int,
    triple_within_module_share: float,
    off_graph_share: float,
) -> np.ndarray:
    """(R3, 3) unique triples: three genes of one module, then off-graph pair + random gene, or random."""
    n = len(mods.module)
    in_mod3 = np.flatnonzero(mods.size[mods.module] >= 3)
    n_within = int(round(n_triples * triple_within_module_share)) if len(in_mod3) else 0
    within = _sample_unique(lambda m: mods.draw_within(rng, m, 3, in_mod3), n_within, 3, n)

    def draw_other(m: int) -> np.ndarray:
        t = rng.integers(0, n, size=(m, 3))
        if len(off_pairs):
            use = rng.random(m) < off_graph_share
            t[use, :2] = off_pairs[rng.integers(0, len(off_pairs), int(use.sum()))]
        return t

    other = _sample_unique(draw_other, n_triples - len(within), 3, n, exclude=within @ [n * n, n, 1])
    return np.concatenate([within, other]).astype(np.int64)


def _true_phenotypes(
    truth: SimulationTruth, singles: np.ndarray, doubles: np.ndarray, triples: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The padded (R, 3) record sets and their noise-free ``fitness``, ``epsilon``, ``tau`` (R, 3)."""
    sets = np.concatenate([_pad(singles), _pad(doubles), _pad(triples)])
    n1, n2 = len(singles), len(doubles)
    f = truth.fitness(sets)
    f1 = np.exp(-truth.single_cost)
    true = np.full((len(sets), 3), np.nan)
    true[:, 0] = f
    a, b = doubles[:, 0], doubles[:, 1]
    true[n1 : n1 + n2, 1] = f[n1 : n1 + n2] - f1[a] * f1[b]
    a, b, c = triples[:, 0], triples[:, 1], triples[:, 2]
    f_ab = truth.fitness(np.stack([a, b], axis=1))
    f_ac = truth.fitness(np.stack([a, c], axis=1))
    f_bc = truth.fitness(np.stack([b, c], axis=1))
    e_ab, e_ac, e_bc = f_ab - f1[a] * f1[b], f_ac - f1[a] * f1[c], f_bc - f1[b] * f1[c]
    f_abc = f[n1 + n2 :]
    true[n1 + n2 :, 2] = f_abc - f1[a] * f1[b] * f1[c] - e_ab * f1[c] - e_ac * f1[b] - e_bc * f1[a]
    return sets, true


def _interacting_pairs(mods: _Modules, truth: SimulationTruth, sym) -> dict[str, np.ndarray]:
    """The ground-truth list of interacting pairs for ``meta``: same-module pairs, then off-graph pairs."""
    w_pairs = []
    for m in np.flatnonzero(mods.size >= 2):
        mem = np.sort(mods.genes[mods.ptr[m] : mods.ptr[m + 1]])
        i, j = np.triu_indices(len(mem), k=1)
        w_pairs.append(np.stack([mem[i], mem[j]], axis=1))
    w_pairs_arr = np.concatenate(w_pairs) if w_pairs else np.zeros((0, 2), dtype=np.int64)
    off_pairs = truth.off_pairs
    pairs = np.concatenate([w_pairs_arr, off_pairs]).astype(np.int32)
    pair_term = np.concatenate([truth.module_pair_term[mods.module[w_pairs_arr[:, 0]]], truth.off_terms])
    pair_on_graph = np.concatenate([np.ones(len(w_pairs_arr), bool), np.zeros(len(off_pairs), bool)])
    pair_is_edge = np.asarray(sym[pairs[:, 0], pairs[:, 1]]).ravel() != 0 if len(pairs) else np.zeros(0, bool)
    return {
        "pairs": pairs,
        "pair_term": pair_term.astype(np.float32),
        "pair_on_graph": pair_on_graph,
        "pair_is_edge": pair_is_edge,
    }


# ---------------------------------------------------------------------- the simulator
def simulate(
    genome: Genome,
    graphs: GraphSet,
    truth_graph: str = DEFAULT_TRUTH_GRAPH,
    n_singles: int | None = None,
    n_doubles: int = 40000,
    n_triples: int = 10000,
    off_graph_share: float = 0.2,
    noise: float = 0.02,
    seed: int = 0,
    within_module_share: float = 0.5,
    triple_within_module_share: float = 0.75,
    essential_module_share: float = 0.1,
    resolution: float = 1.0,
    max_module_size: int | None = 50,
    val: float = 0.1,
    test: float = 0.1,
) -> PerturbationData:
    """Simulate single, double and triple deletion screens whose interactions follow ``truth_graph``.

    See the module docstring for the mechanism. Everything is determined by ``seed`` (independent
    random streams for the truth, the sampled records, the noise and the split, so e.g. changing
    ``noise`` leaves the truth and the records unchanged).

    Returns a :class:`PerturbationData` with phenotypes ``fitness``, ``epsilon``, ``tau``, a random
    split (``val``/``test`` shares), and the ground truth in ``meta``:

    * ``module`` (N,), ``single_cost`` (N,) = ``s_i``, ``module_pair_term`` (M,) = ``kappa_m``,
      ``module_triple_term`` (M,) = ``eta_m``;
    * ``pairs`` (P, 2) every interacting pair, ``pair_term`` (P,), ``pair_on_graph`` (P,) True for
      same-module pairs, False for off-graph ones, ``pair_is_edge`` (P,) whether it is a truth-graph edge;
    * ``record_true_phenotypes`` (R, 3): noise-free phenotypes of the records (indexed like the full file).

    and in ``attrs``: ``simulator``, ``truth_graph``, ``off_graph_share``, ``noise``, ``seed`` and the
    record counts.
    """
    graph = _checked_truth_graph(
        genome,
        graphs,
        truth_graph,
        off_graph_share=off_graph_share,
        noise=noise,
        n_doubles=n_doubles,
        n_triples=n_triples,
        n_singles=n_singles,
    )
    n = len(genome)
    truth_rng = np.random.default_rng([seed, 1])
    sample_rng = np.random.default_rng([seed, 2])
    noise_rng = np.random.default_rng([seed, 3])

    # the truth: modules, single costs, module terms, off-graph pairs
    mods = _Modules.of(graph_modules(graph, seed=seed, resolution=resolution, max_module_size=max_module_size))
    s, kappa, eta = _draw_module_truth(truth_rng, mods, essential_module_share)
    sym = graph.adj if not graph.directed else (graph.adj + graph.adj.T).tocsr()
    off_pairs, off_terms = _draw_off_graph_pairs(truth_rng, mods, sym, s, off_graph_share)
    truth = SimulationTruth(mods.module, s, kappa, eta, off_pairs, off_terms)

    # the records, their true and observed phenotypes
    singles = _sample_singles(sample_rng, n, n_singles)
    doubles = _sample_doubles(sample_rng, mods, off_pairs, n_doubles, within_module_share, off_graph_share)
    triples = _sample_triples(sample_rng, mods, off_pairs, n_triples, triple_within_module_share, off_graph_share)
    sets, true = _true_phenotypes(truth, singles, doubles, triples)
    observed = true + noise_rng.normal(0.0, noise, size=true.shape) if noise > 0 else true.copy()

    n1, n2, n3 = len(singles), len(doubles), len(triples)
    sizes = (sets >= 0).sum(axis=1)
    gene_index = sets[sets >= 0]
    return PerturbationData(
        genes=list(genome.genes),
        offsets=np.concatenate([[0], np.cumsum(sizes)]),
        gene_index=gene_index,
        types=np.full(len(gene_index), int(PerturbationType.DELETION), dtype=np.int8),
        phenotypes=observed.astype(np.float32),
        phenotype_names=list(PHENOTYPES),
        split=random_split(len(sets), val=val, test=test, seed=seed),
        genome_hash=genome.hash,
        genome_name=genome.name,
        description=(
            f"simulated deletion screen ({n1} singles, {n2} doubles, {n3} triples); interactions follow "
            f"modules of graph {truth_graph!r}, {off_graph_share:g} off-graph; noise sd {noise:g}; seed {seed}"
        ),
        meta={
            "module": mods.module.astype(np.int32),
            "single_cost": s.astype(np.float32),
            "module_pair_term": kappa.astype(np.float32),
            "module_triple_term": eta.astype(np.float32),
            **_interacting_pairs(mods, truth, sym),
            "record_true_phenotypes": true.astype(np.float32),
        },
        attrs={
            "simulator": SIMULATOR_VERSION,
            "truth_graph": truth_graph,
            "off_graph_share": str(off_graph_share),
            "noise": str(noise),
            "seed": str(seed),
            "n_singles": str(n1),
            "n_doubles": str(n2),
            "n_triples": str(n3),
        },
    )


def build_default_dataset(path: str | Path = DEFAULT_DATASET, force: bool = False, progress: bool = True) -> Path:
    """Build the embedded default dataset (real yeast genome and graph, simulated screens) at ``path``.

    Does nothing when the file exists, unless ``force``. Progress messages go to stderr.
    """
    import time

    from cellformer.genome import yeast_genome
    from cellformer.graphs import yeast_graphs

    path = Path(path)
    if path.exists() and not force:
        return path
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        if progress:
            print(f"[{time.perf_counter() - t0:5.1f}s] {msg}", file=sys.stderr, flush=True)

    say("loading the yeast genome and the truth graph")
    genome = yeast_genome()
    graphs, _ = yeast_graphs([DEFAULT_TRUTH_GRAPH], genome=genome)
    say(f"simulating on {len(genome)} genes (truth graph {DEFAULT_TRUTH_GRAPH})")
    data = simulate(genome, graphs)
    say(f"writing {len(data)} records to {path}")
    data.save(path)
    say("done")
    return path


__all__ = [
    "PHENOTYPES",
    "SIMULATOR_VERSION",
    "SimulationTruth",
    "build_default_dataset",
    "graph_modules",
    "simulate",
]
