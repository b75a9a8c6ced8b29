"""Linkage blocks: adjacent markers in high LD grouped into one token, so dense panels fit a transformer.

A dense panel (Bloom et al. 2013: 11,623 SNPs in 1,008 segregants) has far more markers than a CPU can
attend over, but in a cross most neighbouring markers carry nearly the same information. A *block* is a
run of adjacent markers (file order, never across a chromosome boundary) whose squared correlation with
the run's first marker (its *anchor*) is at least ``r2``, measured on the **training rows only**:

* ``r2=0.9`` -- the greedy anchor rule above at that threshold;
* ``max_tokens=1500`` -- the highest threshold whose blocks number at most 1,500 (bisection on ``r2``);
* both -- the threshold ``r2``, lowered further if it still gives more than ``max_tokens`` blocks.

A model with blocks keeps one input per *marker*: the token of block ``b`` is the sum of its markers'
per-marker token vectors (``Σ_{m∈b} x_m E_m`` for the sign-embedding models), so no marker is dropped,
a block of size 1 is exactly the marker's own token, and gradient attributions
(:mod:`cellformer.genotype.explain`) stay per marker. The grouping (one block index per marker) is part
of the data context and is saved in the checkpoint, so ``predict`` and ``explain`` use the same tokens.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from cellformer.errors import UserError

BLOCK_KEYS = {"r2", "max_tokens"}


def parse_blocks(spec: Mapping | str | None) -> dict | None:
    """``{"r2": float | None, "max_tokens": int | None}`` from ``{r2: 0.9}``, ``"r2=0.9"`` or
    ``"max_tokens=1500,r2=0.95"``; None (or an empty spec) means one token per marker."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in {"", "none", "null"}):
        return None
    if isinstance(spec, str):
        out: dict = {}
        for part in spec.split(","):
            key, sep, value = part.partition("=")
            if not sep:
                raise UserError(f"blocks {spec!r}: expected key=value pairs such as r2=0.9 or max_tokens=1500")
            out[key.strip()] = value.strip()
        spec = out
    if not isinstance(spec, Mapping):
        raise UserError(f"blocks must be a mapping like {{r2: 0.9}} or a string like 'r2=0.9', got {spec!r}")
    extra = set(spec) - BLOCK_KEYS
    if extra:
        raise UserError(f"blocks: unknown keys {sorted(extra)}; allowed: {sorted(BLOCK_KEYS)}")
    if not spec:
        return None
    try:
        r2 = None if spec.get("r2") is None else float(spec["r2"])
        max_tokens = None if spec.get("max_tokens") is None else int(spec["max_tokens"])
    except (TypeError, ValueError) as exc:
        raise UserError(f"blocks {dict(spec)}: {exc}") from None
    if r2 is not None and not 0.0 <= r2 <= 1.0:
        raise UserError(f"blocks: r2 must be in [0, 1], got {r2}")
    if max_tokens is not None and max_tokens < 1:
        raise UserError(f"blocks: max_tokens must be >= 1, got {max_tokens}")
    return {"r2": r2, "max_tokens": max_tokens}


def _standardised(genotypes: np.ndarray) -> np.ndarray:
    """Columns of (n, M) genotypes centred and scaled to unit norm (missing calls, 0, at the column mean)."""
    x = np.asarray(genotypes, dtype=np.float32)
    observed = x != 0
    mean = x.sum(0) / np.maximum(observed.sum(0), 1)
    x = np.where(observed, x, mean) - mean
    norm = np.sqrt((x**2).sum(0))
    return x / np.where(norm > 0, norm, 1.0)


def _runs(chrom: np.ndarray) -> np.ndarray:
    """Start index of each run of equal chromosome codes (file order)."""
    chrom = np.asarray(chrom)
    return np.flatnonzero(np.r_[True, chrom[1:] != chrom[:-1]])


def _greedy(zt: np.ndarray, starts: set[int], threshold: float) -> np.ndarray:
    """Block index per marker by the anchor rule at ``threshold`` (``zt``: (M, n) standardised markers)."""
    M = zt.shape[0]
    out = np.empty(M, dtype=np.int64)
    block, anchor = -1, 0
    for m in range(M):
        if m in starts or float(zt[anchor] @ zt[m]) ** 2 < threshold:
            block, anchor = block + 1, m
        out[m] = block
    return out


def ld_blocks(
    genotypes: np.ndarray,
    chrom: np.ndarray | None = None,
    r2: float | None = None,
    max_tokens: int | None = None,
    iterations: int = 24,
) -> np.ndarray:
    """Block index (M,) int64 per marker, 0-based, non-decreasing in file order (see the module docstring).

    Args:
        genotypes: (n, M) training-row genotypes in {-1, 0, +1}.
        chrom: (M,) chromosome codes; blocks never span two runs of codes (None: one chromosome).
        r2: the LD threshold with the anchor marker.
        max_tokens: the most blocks allowed.
    """
    x = np.asarray(genotypes)
    n, M = x.shape
    if r2 is None and max_tokens is None:
        return np.arange(M, dtype=np.int64)
    if n < 3:
        raise UserError(f"linkage blocks need at least 3 training samples, got {n}")
    chrom = np.zeros(M, np.int16) if chrom is None else np.asarray(chrom)
    starts = set(_runs(chrom).tolist())
    if max_tokens is not None and len(starts) > max_tokens:
        raise UserError(
            f"blocks: max_tokens {max_tokens} is below the number of chromosomes ({len(starts)}); "
            "blocks never span two chromosomes"
        )
    z = np.ascontiguousarray(_standardised(x).T)
    if r2 is not None:
        blocks = _greedy(z, starts, r2)
        if max_tokens is None or blocks[-1] + 1 <= max_tokens:
            return blocks
        hi = r2
    else:
        hi = 1.0 + 1e-6  # r² ≤ 1: above it, every marker is its own block
    lo = 0.0  # r² ≥ 0 always: one block per chromosome, which fits (checked above)
    best = _greedy(z, starts, lo)
    for _ in range(iterations):  # the highest threshold that still fits
        mid = 0.5 * (lo + hi)
        blocks = _greedy(z, starts, mid)
        if blocks[-1] + 1 <= max_tokens:
            lo, best = mid, blocks
        else:
            hi = mid
    return best


def block_anchors(blocks: np.ndarray) -> np.ndarray:
    """Index of the first marker of each block (its anchor), (T,)."""
    blocks = np.asarray(blocks)
    return np.flatnonzero(np.r_[True, blocks[1:] != blocks[:-1]])


def check_blocks(blocks: np.ndarray, n_markers: int) -> np.ndarray:
    """Validate a block index vector: length M, values 0..T-1, non-decreasing, every block used."""
    blocks = np.asarray(blocks, dtype=np.int64).reshape(-1)
    if len(blocks) != n_markers:
        raise UserError(f"blocks: {len(blocks)} entries for {n_markers} markers")
    if n_markers and (blocks[0] != 0 or np.any(np.diff(blocks) < 0) or np.any(np.diff(blocks) > 1)):
        raise UserError("blocks: block indices must start at 0 and grow by 0 or 1 along the markers")
    return blocks


def describe_blocks(blocks: np.ndarray) -> dict:
    """Token count and block sizes (for logs and reports)."""
    sizes = np.bincount(np.asarray(blocks, dtype=np.int64))
    return {
        "markers": int(sizes.sum()),
        "tokens": int(len(sizes)),
        "mean_size": float(sizes.mean()),
        "max_size": int(sizes.max()),
    }
