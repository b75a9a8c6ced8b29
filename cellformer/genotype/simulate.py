"""Simulated segregant populations with known QTL, additive and epistatic effects.

The population is a cross of two haploid parents (alleles +1 and -1). With ``linked=True`` each
segregant inherits parental chromosome segments: loci lie along the 16 *S. cerevisiae* chromosomes
(S288C lengths, about 12.07 Mb in all), and crossovers fall on each chromosome as a Poisson process
with a uniform rate of one per :data:`KB_PER_CM` × 100 kb (about 2.7 kb per cM, so about 4,500 cM in
the genome and 45 crossovers per segregant), without interference. Loci close together are therefore
in strong linkage disequilibrium and loci on different chromosomes are independent. With
``linked=False`` every locus is an independent 50/50 draw.

Traits follow the epistasis-vs-deep-learning simulations (additive + additive × additive effects,
chosen V_A/V_G and broad-sense H²):

1. ``n_qtl`` causal loci are drawn among the ``n_loci`` markers; all traits share them.
2. Additive effects ``a_qt`` and epistatic effects ``b_kt`` on pairs ``(i_k, j_k)`` of causal loci are
   normal; across traits they are correlated with correlation ``pleiotropy``.
3. The genetic value of sample s for trait t is ``g = A + I`` with ``A = Σ_q a_qt x_sq`` and
   ``I = Σ_k b_kt x_s,i_k x_s,j_k`` (``x`` = ±1 genotypes). A and I are rescaled so that, *on the
   simulated population*, var(A) / (var(A) + var(I)) equals the requested ``additive_share``.
   With alleles at about 50/50, products of alleles are uncorrelated with single alleles, so I is
   (statistically) pure epistatic variance and a linear model captures A only.
4. Gaussian noise is added with var(E) = var(G)·(1 − h2)/h2 (again exactly, on the population), and
   the phenotype is standardised to mean 0 and variance 1 (the stored effects are on that scale).

``n_dilution`` extra uninformative markers are placed near causal loci (within
:data:`DILUTION_WINDOW_BP`, hence in LD with them) when linked, or independent when unlinked.

Everything is deterministic for a given seed; separate random streams drive the marker map, the
genotypes, the effects, the noise and the split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cellformer.errors import UserError
from cellformer.genotype.data import GenotypeData, Loci, random_genotype_split

SIMULATOR_VERSION = 1

#: S. cerevisiae S288C (R64) nuclear chromosome lengths in bp, chrI..chrXVI.
YEAST_CHROMOSOME_BP = (
    230_218,
    813_184,
    316_620,
    1_531_933,
    576_874,
    270_161,
    1_090_940,
    562_643,
    439_888,
    745_751,
    666_816,
    1_078_177,
    924_431,
    784_333,
    1_091_291,
    948_066,
)
#: Physical distance per centimorgan in yeast (about 2.7 kb/cM).
KB_PER_CM = 2.7
#: Dilution markers are placed within this distance of a causal locus (linked populations).
DILUTION_WINDOW_BP = 20_000
_CHUNK = 16_384


def n_samples_for_scaling(n_qtl: int, scaling: float) -> int:
    """Number of samples for a given ``scaling = C(n_qtl, 2) / samples`` (rounded, at least 1)."""
    if n_qtl < 2:
        raise UserError(f"scaling needs at least 2 QTL, got {n_qtl}")
    if not scaling > 0:
        raise UserError(f"scaling must be > 0, got {scaling}")
    return max(1, int(round(math.comb(n_qtl, 2) / scaling)))


def n_qtl_for_scaling(n_samples: int, scaling: float) -> int:
    """Number of QTL for ``scaling`` at ``n_samples``: ``(1 + sqrt(1 + 8·scaling·n)) / 2``, nearest even."""
    if n_samples < 1 or not scaling > 0:
        raise UserError(f"need n_samples >= 1 and scaling > 0, got {n_samples} and {scaling}")
    q = (1 + math.sqrt(1 + 8 * scaling * n_samples)) / 2
    return max(2, 2 * int(round(q / 2)))


def _per_trait(value: float | Sequence[float], n_traits: int, name: str, lo: float, hi: float) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if arr.ndim != 1 or len(arr) not in (1, n_traits):
        raise UserError(f"{name}: give one value or one per trait ({n_traits}), got {len(arr)}")
    if not np.all((arr >= lo) & (arr <= hi)):
        raise UserError(f"{name} must be in [{lo}, {hi}], got {arr.tolist()}")
    return np.broadcast_to(arr, (n_traits,)).copy()


def _correlated_normals(rng: np.random.Generator, n: int, n_traits: int, rho: float) -> np.ndarray:
    """(n, n_traits) standard normals with correlation ``rho`` between traits (0 <= rho <= 1)."""
    shared = rng.standard_normal((n, 1))
    own = rng.standard_normal((n, n_traits))
    return math.sqrt(rho) * shared + math.sqrt(1.0 - rho) * own


def _allocate(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers summing to ``total`` proportional to ``weights`` (largest remainder)."""
    raw = total * weights / weights.sum()
    out = np.floor(raw).astype(np.int64)
    out[np.argsort(-(raw - out), kind="stable")[: total - out.sum()]] += 1
    return out


def _marker_map(rng: np.random.Generator, n_loci: int) -> tuple[np.ndarray, np.ndarray]:
    """Chromosome (1-based) and sorted distinct positions of ``n_loci`` markers spread over the genome."""
    lengths = np.asarray(YEAST_CHROMOSOME_BP, dtype=np.int64)
    counts = _allocate(n_loci, lengths.astype(np.float64))
    chrom, pos = [], []
    for c, (m, length) in enumerate(zip(counts, lengths, strict=True), start=1):
        p = np.sort(rng.choice(length, size=int(m), replace=False)) + 1
        chrom.append(np.full(int(m), c, dtype=np.int16))
        pos.append(p.astype(np.int64))
    return np.concatenate(chrom), np.concatenate(pos)


def _segregants(rng: np.random.Generator, n: int, chrom: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """(n, L) int8 haploid F1 segregants: parental segments between Poisson crossovers per chromosome."""
    L = len(chrom)
    out = np.empty((n, L), dtype=np.int8)
    for c, length in enumerate(YEAST_CHROMOSOME_BP, start=1):
        cols = np.flatnonzero(chrom == c)
        if not len(cols):
            continue
        p = pos[cols]
        m = len(cols)
        rate = length / (KB_PER_CM * 1000 * 100)  # expected crossovers (Morgans)
        for start in range(0, n, _CHUNK):
            b = min(_CHUNK, n - start)
            k = rng.poisson(rate, size=b)
            where = rng.uniform(0, length, size=int(k.sum()))
            owner = np.repeat(np.arange(b), k)
            first_after = np.searchsorted(p, where)  # the crossover flips loci first_after..m-1
            flips = np.bincount(owner * (m + 1) + first_after, minlength=b * (m + 1)).reshape(b, m + 1)
            parity = np.cumsum(flips[:, :m], axis=1, dtype=np.int32) & 1
            first = rng.integers(0, 2, size=(b, 1), dtype=np.int8) * 2 - 1
            out[start : start + b, cols] = first * (1 - 2 * parity).astype(np.int8)
    return out


def _dilution_map(
    rng: np.random.Generator, n_dilution: int, causal_chrom: np.ndarray, causal_pos: np.ndarray, taken: set
) -> tuple[np.ndarray, np.ndarray]:
    """Chromosome and position of ``n_dilution`` markers within the window of random causal loci."""
    lengths = np.asarray(YEAST_CHROMOSOME_BP, dtype=np.int64)
    chrom = np.empty(n_dilution, dtype=np.int16)
    pos = np.empty(n_dilution, dtype=np.int64)
    for i in range(n_dilution):
        while True:
            k = int(rng.integers(len(causal_pos)))
            c = int(causal_chrom[k])
            p = int(causal_pos[k]) + int(rng.integers(-DILUTION_WINDOW_BP, DILUTION_WINDOW_BP + 1))
            p = min(max(p, 1), int(lengths[c - 1]))
            if (c, p) not in taken:
                taken.add((c, p))
                chrom[i], pos[i] = c, p
                break
    return chrom, pos


def _genetic_parts(
    geno: np.ndarray, causal: np.ndarray, additive: np.ndarray, pairs: np.ndarray, epistatic: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(A, I): the additive and epistatic parts, each (n, T) float64, computed in row chunks."""
    n, T = geno.shape[0], additive.shape[1]
    A = np.zeros((n, T))
    I = np.zeros((n, T))
    for s in range(0, n, _CHUNK):
        x = geno[s : s + _CHUNK].astype(np.float64)
        A[s : s + _CHUNK] = x[:, causal] @ additive
        if len(pairs):
            I[s : s + _CHUNK] = (x[:, pairs[:, 0]] * x[:, pairs[:, 1]]) @ epistatic
    return A, I


def genetic_values(genotypes: np.ndarray, truth: dict) -> np.ndarray:
    """Noise-free phenotypes (n, T) of any genotypes under a simulator's ground truth.

    ``g = intercept + Σ_q additive[q]·x[causal[q]] + Σ_k epistatic[k]·x[pairs[k,0]]·x[pairs[k,1]]``;
    missing calls (0) contribute nothing.
    """
    A, I = _genetic_parts(
        np.asarray(genotypes),
        np.asarray(truth["causal"], dtype=np.int64),
        np.asarray(truth["additive"], dtype=np.float64),
        np.asarray(truth["pairs"], dtype=np.int64).reshape(-1, 2),
        np.asarray(truth["epistatic"], dtype=np.float64).reshape(-1, np.asarray(truth["additive"]).shape[1]),
    )
    return np.asarray(truth["intercept"], dtype=np.float64) + A + I


def _choose_pairs(rng: np.random.Generator, n_qtl: int, n_pairs: int | None) -> np.ndarray:
    """Pairs of causal-QTL positions (0..n_qtl-1): by default a random disjoint pairing (n_qtl // 2 pairs)."""
    if n_qtl < 2:
        return np.zeros((0, 2), dtype=np.int64)
    if n_pairs is None:
        perm = rng.permutation(n_qtl)[: 2 * (n_qtl // 2)]
        pairs = perm.reshape(-1, 2)
    else:
        total = math.comb(n_qtl, 2)
        if not 1 <= n_pairs <= total:
            raise UserError(f"epistatic_pairs must be between 1 and C({n_qtl}, 2) = {total}, got {n_pairs}")
        flat = np.sort(rng.choice(total, size=n_pairs, replace=False))
        iu = np.triu_indices(n_qtl, k=1)
        pairs = np.stack([iu[0][flat], iu[1][flat]], axis=1)
    return np.sort(pairs, axis=1).astype(np.int64)


def simulate_genotypes(
    n_samples: int,
    n_loci: int,
    n_traits: int = 1,
    n_qtl: int = 20,
    additive_share: float | Sequence[float] = 1.0,
    h2: float | Sequence[float] = 0.8,
    pleiotropy: float = 0.0,
    n_dilution: int = 0,
    linked: bool = True,
    val: float = 0.1,
    test: float = 0.1,
    seed: int = 0,
    epistatic_pairs: int | None = None,
) -> GenotypeData:
    """Simulate a segregant population and its traits (mechanism in the module docstring).

    Args:
        n_samples: number of segregants n.
        n_loci: number of markers before dilution; the dataset has ``n_loci + n_dilution`` loci.
        n_traits: number of traits T (named ``trait_0``…).
        n_qtl: number of causal loci, shared by all traits (``<= n_loci``).
        additive_share: V_A/V_G in [0, 1], one value or one per trait (e.g. 1, 0.8, 0.5, 0.3, 0.15).
        h2: broad-sense heritability V_G/V_P in (0, 1], one value or one per trait.
        pleiotropy: correlation in [0, 1] of the QTL effects (additive and epistatic) between traits.
        n_dilution: extra uninformative markers near causal loci (linked) or independent (unlinked).
        linked: F1 segregants with crossovers along the 16 yeast chromosomes; False: unlinked 50/50 loci.
        val, test: shares of the seeded random split.
        seed: random seed; the same arguments and seed give identical arrays.
        epistatic_pairs: number of epistatic pairs; None = a random disjoint pairing of the QTL
            (``n_qtl // 2`` pairs, as in AlphaSimR's additive × additive traits), else that many random
            distinct pairs among all ``C(n_qtl, 2)``.

    Returns:
        a :class:`GenotypeData` whose ``truth`` holds: ``causal`` (Q,) locus indices; ``additive``
        (Q, T) effects; ``pairs`` (K, 2) locus indices and ``epistatic`` (K, T) effects; ``intercept``
        (T,); realised ``V_A``, ``V_I``, ``V_G``, ``V_E``, ``additive_share`` (V_A/V_G) and ``h2``
        (V_G/V_P), each (T,); ``dilution`` (L,) bool, the dilution markers; ``sample_genetic_value``
        (n, T) the noise-free phenotypes; and the requested parameters. The effects reproduce the
        genetic values exactly (see :func:`genetic_values`).
    """
    if n_samples < 2:
        raise UserError(f"n_samples must be at least 2, got {n_samples}")
    if n_loci < 1:
        raise UserError(f"n_loci must be at least 1, got {n_loci}")
    if n_traits < 1:
        raise UserError(f"n_traits must be at least 1, got {n_traits}")
    if not 1 <= n_qtl <= n_loci:
        raise UserError(f"n_qtl must be between 1 and n_loci ({n_loci}), got {n_qtl}")
    if n_dilution < 0:
        raise UserError(f"n_dilution must be >= 0, got {n_dilution}")
    if not 0.0 <= pleiotropy <= 1.0:
        raise UserError(f"pleiotropy must be in [0, 1], got {pleiotropy}")
    share = _per_trait(additive_share, n_traits, "additive_share", 0.0, 1.0)
    herit = _per_trait(h2, n_traits, "h2", 0.0, 1.0)
    if np.any(herit <= 0):
        raise UserError("h2 must be > 0 (a trait with h2 = 0 carries no genetic signal)")
    if n_qtl < 2 and np.any(share < 1):
        raise UserError("epistasis needs at least 2 QTL: use additive_share = 1 or n_qtl >= 2")
    if linked and n_loci + n_dilution > sum(YEAST_CHROMOSOME_BP) // 2:
        raise UserError("too many loci for the yeast genome map")

    ss = np.random.SeedSequence(seed)
    rng_map, rng_geno, rng_effects, rng_noise, _ = (np.random.default_rng(s) for s in ss.spawn(5))
    split = random_genotype_split(n_samples, val=val, test=test, seed=seed)

    # ---- marker map and causal loci (indices into the base markers, then into the final order)
    causal_base = np.sort(rng_map.choice(n_loci, size=n_qtl, replace=False))
    if linked:
        chrom, pos = _marker_map(rng_map, n_loci)
        taken = set(zip(chrom.tolist(), pos.tolist(), strict=True))
        d_chrom, d_pos = _dilution_map(rng_map, n_dilution, chrom[causal_base], pos[causal_base], taken)
        chrom, pos = np.concatenate([chrom, d_chrom]), np.concatenate([pos, d_pos])
        order = np.lexsort((pos, chrom))
    else:
        L = n_loci + n_dilution
        chrom = np.zeros(L, dtype=np.int16)
        pos = np.full(L, -1, dtype=np.int64)
        order = rng_map.permutation(L)  # dilution markers interleaved at random
    L = n_loci + n_dilution
    new_index = np.empty(L, dtype=np.int64)
    new_index[order] = np.arange(L)
    chrom, pos = chrom[order], pos[order]
    causal = np.sort(new_index[causal_base])
    dilution = np.zeros(L, dtype=bool)
    dilution[new_index[n_loci:]] = True

    # ---- genotypes
    if linked:
        geno = _segregants(rng_geno, n_samples, chrom, pos)
    else:
        geno = (rng_geno.integers(0, 2, size=(n_samples, L), dtype=np.int8) * 2 - 1).astype(np.int8)

    # ---- effects, scaled on the population
    additive = _correlated_normals(rng_effects, n_qtl, n_traits, pleiotropy)
    pair_q = _choose_pairs(rng_effects, n_qtl, epistatic_pairs)
    epistatic = _correlated_normals(rng_effects, len(pair_q), n_traits, pleiotropy)
    pairs = causal[pair_q] if len(pair_q) else np.zeros((0, 2), dtype=np.int64)
    A, I = _genetic_parts(geno, causal, additive, pairs, epistatic)
    va, vi = A.var(axis=0), I.var(axis=0)
    for t in range(n_traits):
        fa = math.sqrt(share[t] / va[t]) if share[t] > 0 and va[t] > 0 else 0.0
        fi = math.sqrt((1 - share[t]) / vi[t]) if share[t] < 1 and vi[t] > 0 else 0.0
        if share[t] < 1 and vi[t] == 0:
            raise UserError(
                "the epistatic pairs do not vary in this population (too few samples or QTL); "
                "use more samples or additive_share = 1"
            )
        additive[:, t] *= fa
        epistatic[:, t] *= fi
        A[:, t] *= fa
        I[:, t] *= fi
    G = A + I
    vg = G.var(axis=0)
    noise = rng_noise.standard_normal((n_samples, n_traits))
    noise -= noise.mean(axis=0)
    ve_target = vg * (1 - herit) / herit
    noise *= np.sqrt(ve_target / noise.var(axis=0))
    pheno = G + noise
    mean, sd = pheno.mean(axis=0), pheno.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    additive /= sd
    epistatic /= sd
    A, I, G, noise = A / sd, I / sd, (G - mean) / sd, noise / sd
    pheno = (pheno - mean) / sd
    va, vi, vg, ve = A.var(axis=0), I.var(axis=0), G.var(axis=0), noise.var(axis=0)

    truth = {
        "simulator_version": SIMULATOR_VERSION,
        "causal": causal.astype(np.int64),
        "additive": additive,
        "pairs": pairs.astype(np.int64).reshape(-1, 2),
        "epistatic": epistatic.reshape(-1, n_traits),
        "intercept": -mean / sd,
        "V_A": va,
        "V_I": vi,
        "V_G": vg,
        "V_E": ve,
        "additive_share": va / np.where(vg > 0, vg, 1.0),
        "h2": vg / (vg + ve),
        "dilution": dilution,
        "sample_genetic_value": G.astype(np.float32),
        "requested": {
            "n_samples": n_samples,
            "n_loci": n_loci,
            "n_traits": n_traits,
            "n_qtl": n_qtl,
            "additive_share": share,
            "h2": herit,
            "pleiotropy": float(pleiotropy),
            "n_dilution": n_dilution,
            "linked": bool(linked),
            "epistatic_pairs": -1 if epistatic_pairs is None else int(epistatic_pairs),
            "seed": seed,
        },
    }
    if linked:
        ids = [f"chr{c:02d}_{p}" for c, p in zip(chrom.tolist(), pos.tolist(), strict=True)]
        loci = Loci(ids=ids, chrom=chrom, pos=pos, gene=[""] * L)
    else:
        loci = Loci.unknown(L)
    width = len(str(n_samples - 1))
    params = (
        f"n_samples={n_samples}, n_loci={n_loci}, n_traits={n_traits}, n_qtl={n_qtl}, "
        f"additive_share={share.tolist()}, h2={herit.tolist()}, pleiotropy={pleiotropy}, "
        f"n_dilution={n_dilution}, linked={linked}, epistatic_pairs={epistatic_pairs}, seed={seed}"
    )
    return GenotypeData(
        genotypes=geno,
        phenotypes=pheno.astype(np.float32),
        phenotype_names=[f"trait_{t}" for t in range(n_traits)],
        loci=loci,
        sample_ids=[f"seg_{i:0{width}d}" for i in range(n_samples)],
        split=split,
        truth=truth,
        attrs={
            "source": "simulated",
            "simulator": f"cellformer.genotype.simulate v{SIMULATOR_VERSION}",
            "parameters": params,
            "seed": str(seed),
        },
    )


#: The shape of the Bloom et al. (2013) BY × RM cross: 1,008 segregants genotyped at 11,623 markers.
BLOOM_2013_SHAPE = (1008, 11623)


def bloom_like_cross(
    seed: int = 0,
    n_samples: int = BLOOM_2013_SHAPE[0],
    n_markers: int = BLOOM_2013_SHAPE[1],
    n_traits: int = 2,
    n_qtl: int = 16,
    additive_share: float | Sequence[float] = 0.6,
    h2: float | Sequence[float] = 0.85,
    pleiotropy: float = 0.8,
) -> GenotypeData:
    """A simulated cross shaped like Bloom et al. (2013): 1,008 F1 segregants, 11,623 markers along the 16
    yeast chromosomes (about 2.6 markers per cM, so neighbouring markers form linkage blocks), few
    large-effect QTL shared by correlated traits (``pleiotropy``) and epistatic pairs among them (a random
    disjoint pairing of the QTL, ``1 - additive_share`` of the genetic variance). Traits ``trait_0`` and
    ``trait_1`` play the part of the lactate and lactose growth traits of the published comparisons."""
    return simulate_genotypes(
        n_samples,
        n_markers,
        n_traits=n_traits,
        n_qtl=n_qtl,
        additive_share=additive_share,
        h2=h2,
        pleiotropy=pleiotropy,
        linked=True,
        seed=seed,
    )


__all__ = [
    "BLOOM_2013_SHAPE",
    "KB_PER_CM",
    "YEAST_CHROMOSOME_BP",
    "bloom_like_cross",
    "genetic_values",
    "n_qtl_for_scaling",
    "n_samples_for_scaling",
    "simulate_genotypes",
]
