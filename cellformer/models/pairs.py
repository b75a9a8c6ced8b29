"""Sums over coordinates ``(i, j)`` of an ``n × n`` matrix, as record tables over millions of records need.

A screen's pair records, or the member pairs of its records, land on at most ``n²`` coordinates. They are
coded once into the sorted distinct coordinates (the *pattern*), by counting into ``n²`` bins when that
fits in :data:`DENSE_BINS` (no sort: linear in the records) and by sorting otherwise; any weights are then
summed onto the pattern by one ``bincount`` of the codes. :func:`pattern_matrix` turns the sums into a
dense matrix when the pattern holds more than :data:`DENSE_SHARE` of the entries (20 M pairs among 6,400
genes fill half the matrix) and into a CSR matrix otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

#: the pattern is found by counting into n² bins up to this many bins (else by sorting the keys)
DENSE_BINS = 1 << 26
#: a matrix is held dense when more than this share of its entries is in the pattern
DENSE_SHARE = 0.25


def pattern_codes(keys: Sequence[np.ndarray], space: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """``(pattern, codes)``: the sorted distinct keys among the arrays ``keys`` (each in ``[0, space)``, e.g.
    ``i·n + j`` with ``space = n²``) and, per array, the position of each key in the pattern (int32, same
    shape). Counted into ``space`` bins up to :data:`DENSE_BINS`, else sorted."""
    if not keys or not sum(k.size for k in keys):
        return np.zeros(0, np.int64), [np.zeros(k.shape, np.int32) for k in keys]
    if space <= DENSE_BINS:
        seen = np.zeros(space, dtype=bool)
        for k in keys:
            seen[k.ravel()] = True
        pattern = np.flatnonzero(seen)
        position = np.zeros(space, dtype=np.int32)
        position[pattern] = np.arange(len(pattern), dtype=np.int32)
        return pattern, [position[k] for k in keys]
    pattern, inverse = np.unique(np.concatenate([k.ravel() for k in keys]), return_inverse=True)
    codes, lo = [], 0
    for k in keys:
        codes.append(inverse[lo : lo + k.size].reshape(k.shape).astype(np.int32))
        lo += k.size
    return pattern, codes


def pattern_matrix(pattern: np.ndarray, values: np.ndarray, n: int, dense: bool | None = None):
    """The ``(n, n)`` matrix with ``values`` at the keys ``pattern`` (zeros elsewhere): a dense array when
    ``dense`` (default: the pattern is fuller than :data:`DENSE_SHARE`), else CSR with the pattern's entries."""
    if dense is None:
        dense = is_dense(pattern, n)
    if dense:
        out = np.zeros(n * n, dtype=np.float64)
        out[pattern] = values
        return out.reshape(n, n)
    indptr = np.searchsorted(pattern // n, np.arange(n + 1))
    return sp.csr_matrix((np.asarray(values, np.float64), (pattern % n).astype(np.int32), indptr), shape=(n, n))


def is_dense(pattern: np.ndarray, n: int) -> bool:
    """Whether a matrix with this pattern is held dense (:data:`DENSE_SHARE`)."""
    return len(pattern) > DENSE_SHARE * n * n
