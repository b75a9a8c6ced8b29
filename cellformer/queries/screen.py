"""Exhaustive in-silico screens: score every pair (or triple) of genes and keep the top k.

The combinations of ``n`` candidate genes are numbered in lexicographic order (``rank`` 0 is
``(0, 1)`` / ``(0, 1, 2)``) and scored in fixed chunks of ``batch_size`` consecutive ranks. The index
tuples of a chunk are generated vectorised from the ranks (:func:`unrank_pairs`, :func:`unrank_triples`),
so no Python loop runs per combination. A :class:`TopK` keeper merges each chunk with ``torch.topk``;
ties are broken by rank, so the result is a deterministic function of the scores.

Resumability: every ``save_every_s`` seconds (and when interrupted) the screen writes a state file —
the number of chunks done and the current top k — next to its output. Re-running with ``resume=True``
checks that the state belongs to the same screen (model fingerprint, genes, settings) and continues
with the next chunk; since chunks are processed in the same order from the same kept state, the final
top k is identical to an uninterrupted run. With ``all_scores`` every score is also written to an
HDF5 file (row = rank), flushed before each state save.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from cellformer.data.dataset import PerturbationType
from cellformer.errors import UserError
from cellformer.queries.predictor import tsv_text

#: above this many candidate genes a triple screen needs ``force=True``.
MAX_TRIPLE_GENES = 500
STATE_VERSION = 1


class ScreenAborted(RuntimeError):
    """Raised by an ``on_chunk`` callback (or ``max_chunks``) to stop a screen early; the state is saved."""


# ---------------------------------------------------------------------- enumeration
def num_combinations(n: int, order: int) -> int:
    """``C(n, order)``."""
    return math.comb(int(n), int(order))


def _pair_start(a: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Rank of the first pair ``(a, a+1)`` among the pairs of ``m`` elements."""
    return a * m - a * (a + 1) // 2


def unrank_pairs(rank: np.ndarray, m: int | np.ndarray) -> np.ndarray:
    """``(len(rank), 2)`` pairs ``a < b < m`` with the given lexicographic ranks (``m`` may vary per rank)."""
    r = np.asarray(rank, dtype=np.int64)
    m = np.broadcast_to(np.asarray(m, dtype=np.int64), r.shape)
    # closed form from the quadratic a*m - a(a+1)/2 <= r, then an exact integer correction
    disc = (2 * m - 1).astype(np.float64) ** 2 - 8.0 * r.astype(np.float64)
    a = np.floor(((2 * m - 1) - np.sqrt(np.maximum(disc, 0.0))) / 2.0).astype(np.int64)
    a = np.clip(a, 0, np.maximum(m - 2, 0))
    for _ in range(2):
        a = np.where(_pair_start(a, m) > r, a - 1, a)
        a = np.where((a + 1 <= m - 2) & (_pair_start(a + 1, m) <= r), a + 1, a)
    b = r - _pair_start(a, m) + a + 1
    return np.stack([a, b], axis=1)


def unrank_triples(rank: np.ndarray, n: int) -> np.ndarray:
    """``(len(rank), 3)`` triples ``a < b < c < n`` with the given lexicographic ranks."""
    r = np.asarray(rank, dtype=np.int64)
    first = np.arange(n, dtype=np.int64)
    rest = n - 1 - first
    counts = rest * (rest - 1) // 2  # triples starting with a
    starts = np.concatenate([[0], np.cumsum(counts)])
    a = np.searchsorted(starts, r, side="right") - 1
    bc = unrank_pairs(r - starts[a], n - 1 - a) + (a + 1)[:, None]
    return np.concatenate([a[:, None], bc], axis=1)


def combinations_chunk(n: int, order: int, start: int, stop: int) -> np.ndarray:
    """The combinations with ranks ``start:stop`` as an ``(stop - start, order)`` int64 array."""
    ranks = np.arange(start, stop, dtype=np.int64)
    if order == 1:
        return ranks[:, None]
    if order == 2:
        return unrank_pairs(ranks, n)
    if order == 3:
        return unrank_triples(ranks, n)
    raise ValueError(f"order must be 1, 2 or 3, got {order}")


# ---------------------------------------------------------------------- top-k keeper
class TopK:
    """The ``k`` best combinations seen so far by one score (largest, or smallest with ``ascending``).

    Keeps the ranking score, the combination rank and the full row of phenotype predictions. NaN scores
    rank last. Ties are broken by the smaller rank, so the kept set does not depend on chunking.
    """

    def __init__(self, k: int, num_columns: int, ascending: bool = False, device: str | torch.device = "cpu"):
        if k <= 0:
            raise UserError(f"top must be positive, got {k}")
        self.k, self.ascending = int(k), bool(ascending)
        self.scores = torch.zeros(0, device=device)
        self.ranks = torch.zeros(0, dtype=torch.long, device=device)
        self.rows = torch.zeros(0, num_columns, device=device)

    def _key(self, scores: torch.Tensor) -> torch.Tensor:
        """Larger key = better; NaN -> -inf."""
        key = -scores if self.ascending else scores
        return torch.nan_to_num(key.float(), nan=-math.inf)

    def update(self, scores: torch.Tensor, ranks: torch.Tensor, rows: torch.Tensor) -> None:
        """Merge a chunk: ``scores`` (B,), ``ranks`` (B,) long, ``rows`` (B, P)."""
        device = self.scores.device
        scores, ranks, rows = scores.to(device), ranks.to(device), rows.to(device)
        if scores.numel() > self.k:  # cheap pre-selection; ties at the boundary are settled below
            key = self._key(scores)
            kth = torch.topk(key, self.k).values[-1]
            keep = key >= kth
            scores, ranks, rows = scores[keep], ranks[keep], rows[keep]
        s = torch.cat([self.scores, scores.float()])
        r = torch.cat([self.ranks, ranks])
        w = torch.cat([self.rows, rows.float()])
        order = torch.argsort(r, stable=True)  # tie-break by rank: sort by rank, then stably by key
        order = order[torch.argsort(self._key(s[order]), descending=True, stable=True)][: self.k]
        self.scores, self.ranks, self.rows = s[order], r[order], w[order]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"scores": self.scores.cpu(), "ranks": self.ranks.cpu(), "rows": self.rows.cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        device = self.scores.device
        self.scores, self.ranks, self.rows = (state[k].to(device) for k in ("scores", "ranks", "rows"))


# ---------------------------------------------------------------------- result
@dataclass
class ScreenResult:
    """The top combinations of a screen.

    Attributes:
        genome_genes: gene ids of the genome (``combos`` index them).
        combos: ``(k, order)`` gene indices of the kept combinations, best first.
        ranks: ``(k,)`` lexicographic rank of each combination among the candidates' combinations.
        scores: ``(k, P)`` predictions of all phenotypes.
        phenotype_names, by, ascending: the columns and the ranking.
        num_scored, num_total: combinations scored so far / in the whole screen.
    """

    genome_genes: list[str]
    combos: np.ndarray
    ranks: np.ndarray
    scores: np.ndarray
    phenotype_names: list[str]
    by: str
    ascending: bool
    num_scored: int
    num_total: int

    @property
    def complete(self) -> bool:
        return self.num_scored >= self.num_total

    def __len__(self) -> int:
        return len(self.ranks)

    def gene_sets(self) -> list[list[str]]:
        return [[self.genome_genes[i] for i in row] for row in self.combos.tolist()]

    def write_tsv(self, fh: TextIO) -> None:
        """Columns ``rank genes <phenotypes...>`` (rank 1 = best by ``by``)."""
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(["rank", "genes", *self.phenotype_names])
        for i, (genes, row) in enumerate(zip(self.gene_sets(), self.scores, strict=True)):
            w.writerow([i + 1, ";".join(genes), *(f"{x:.6g}" for x in row.tolist())])

    def to_tsv(self, path: str | Path | None = None) -> str:
        """The ranked table as TSV text; also written to ``path`` when given."""
        return tsv_text(self.write_tsv, path)


# ---------------------------------------------------------------------- state
def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def default_state_path(out: str | Path) -> Path:
    """Where a screen writing ``out`` keeps its resumable state (``<out>.state.pt``)."""
    out = Path(out)
    return out.with_name(out.name + ".state.pt")


# ---------------------------------------------------------------------- the screen, in steps
def _ranking(predictor: Any, order: int, by: str | None, batch_size: int, perturbation: str) -> tuple[str, int, int]:
    """Check the settings; the phenotype ranked by, its column and the perturbation type code."""
    if order not in (2, 3):
        raise UserError(f"order must be 2 (pairs) or 3 (triples), got {order}")
    if batch_size <= 0:
        raise UserError(f"batch_size must be positive, got {batch_size}")
    names = predictor.phenotype_names
    if by is None:
        if len(names) != 1:
            raise UserError(f"say which phenotype to rank by (by=...); this model predicts: {', '.join(names)}")
        by = names[0]
    col = predictor.phenotype_index(by)
    ptype = int(PerturbationType.parse(perturbation))
    if ptype == PerturbationType.ADDITION:
        raise UserError("screens perturb genome genes; 'addition' is not a valid screen perturbation")
    return by, col, ptype


def _candidates(genome: Any, genes: Sequence[str] | None, order: int, force: bool) -> np.ndarray:
    """Genome indices of the candidate genes (default: every native gene); duplicates and sizes checked."""
    if genes is None:
        cand = np.flatnonzero(~np.asarray(genome.added, dtype=bool)).astype(np.int64)
    else:
        idx = [genome.index(g, "screen genes") for g in genes]
        seen: dict[int, str] = {}
        for g, i in zip(genes, idx, strict=True):
            if i in seen:
                raise UserError(f"screen genes: gene {genome.display(i)} is listed twice ({seen[i]!r} and {g!r})")
            seen[i] = g
        cand = np.asarray(idx, dtype=np.int64)
    n = len(cand)
    if n < order:
        raise UserError(f"a screen of order {order} needs at least {order} genes, got {n}")
    if order == 3 and n > MAX_TRIPLE_GENES and not force:
        raise UserError(
            f"a triple screen over {n} genes means {num_combinations(n, 3):,} triples; restrict the genes "
            f"to at most {MAX_TRIPLE_GENES} (--genes subset.txt) or pass --force"
        )
    return cand


class _Progress:
    """What a screen has done so far: chunks scored, the top-k keeper, the optional all-scores file.

    :meth:`save` writes the resumable state (and flushes the scores file); :meth:`resume` restores it.
    """

    def __init__(self, signature: dict[str, Any], keeper: TopK, num_chunks: int, state_path: Path | None):
        self.signature, self.keeper, self.num_chunks = signature, keeper, num_chunks
        self.state_path = state_path
        self.done = 0
        self.h5: Any = None

    def resume(self) -> None:
        """Continue from the state file (which must belong to the same screen)."""
        if self.state_path is None or not self.state_path.exists():
            return
        from cellformer.models.checkpoint import load_torch_file

        state = load_torch_file(
            self.state_path, what="state file", require=("signature", "chunks_done", "topk"), kind="screen state"
        )
        diff = [k for k, v in self.signature.items() if state.get("signature", {}).get(k) != v]
        if diff:
            raise UserError(
                f"{self.state_path} belongs to a different screen (differs in: {', '.join(diff)}); "
                "re-run without --resume to start over"
            )
        self.done = int(state["chunks_done"])
        self.keeper.load_state_dict(state["topk"])

    def open_all_scores(self, path: Path, total: int, names: list[str], order: int, genes: list[str]) -> None:
        """The HDF5 file receiving every score (reopened when resuming, else created)."""
        import h5py

        path.parent.mkdir(parents=True, exist_ok=True)
        if self.done and path.exists():
            self.h5 = h5py.File(path, "a")
            return
        self.h5 = h5py.File(path, "w")
        chunk = (min(total, 65536),)
        self.h5.create_dataset("scores", shape=(total, len(names)), dtype="f4", chunks=chunk + (len(names),))
        self.h5.create_dataset("combos", shape=(total, order), dtype="i4", chunks=chunk + (order,))
        self.h5.attrs["genes"] = np.array(genes, dtype=object)
        self.h5.attrs["phenotype_names"] = np.array(names, dtype=object)
        self.h5.attrs["order"] = order
        self.h5.attrs["description"] = "row r = r-th combination of the candidate genes in lexicographic order"

    def save(self) -> None:
        if self.h5 is not None:
            self.h5.flush()
        if self.state_path is not None:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            state = {
                "signature": self.signature,
                "chunks_done": self.done,
                "num_chunks": self.num_chunks,
                "topk": self.keeper.state_dict(),
            }
            _atomic_torch_save(state, self.state_path)

    def close(self) -> None:
        if self.h5 is not None:
            self.h5.close()


def _score_chunk(predictor: Any, cand_t: torch.Tensor, n: int, order: int, ptype: int, start: int, stop: int):
    """Genome-index combinations of ranks ``start:stop`` and their ``(B, P)`` predictions."""
    device = cand_t.device
    local = torch.from_numpy(combinations_chunk(n, order, start, stop)).to(device)
    combos = cand_t[local]  # (B, order) genome indices
    gene_index = combos.reshape(-1)
    types = torch.full_like(gene_index, ptype)
    ptr = torch.arange(0, (stop - start) * order + 1, order, device=device)
    return combos, predictor.predict_indices(gene_index, types, ptr)


# ---------------------------------------------------------------------- the screen
def screen(
    predictor: Any,
    order: int = 2,
    genes: Sequence[str] | None = None,
    by: str | None = None,
    top: int = 1000,
    ascending: bool = False,
    batch_size: int = 4096,
    perturbation: str = "deletion",
    all_scores: str | Path | None = None,
    state_path: str | Path | None = None,
    resume: bool = False,
    save_every_s: float = 60.0,
    max_chunks: int | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
    progress: bool = True,
    force: bool = False,
) -> ScreenResult:
    """Score every combination of ``order`` genes and keep the ``top`` best by phenotype ``by``.

    Args:
        predictor: a :class:`~cellformer.queries.predictor.Predictor`.
        order: 2 (pairs) or 3 (triples).
        genes: candidate genes (names or aliases); default all native genes of the genome. Triples over
            more than :data:`MAX_TRIPLE_GENES` genes need ``force``.
        by: the phenotype to rank by (default: the only phenotype; required when there are several).
        top: how many to keep; ``ascending`` keeps the smallest scores instead of the largest.
        batch_size: combinations per model call (= per chunk; part of the resumable state).
        perturbation: the type applied to every gene of a combination (default ``deletion``).
        all_scores: optional HDF5 path receiving every score (``scores`` (M, P) float32, row = rank,
            ``combos`` (M, order) int32 gene indices, attrs ``genes``/``phenotype_names``).
        state_path: where to keep the resumable state (None: no state is written).
        resume: continue from ``state_path`` if it exists (it must belong to the same screen).
        save_every_s: seconds between state saves (the state is also saved on interruption/abort).
        max_chunks: stop after this many chunks in this call (the result is then partial).
        on_chunk: called as ``on_chunk(chunks_done, num_chunks)`` after each chunk; raising aborts the
            screen after saving the state (the exception propagates).
        progress: show a tqdm progress bar.
        force: allow triple screens over more than :data:`MAX_TRIPLE_GENES` genes.
    """
    from tqdm.auto import tqdm

    by, col, ptype = _ranking(predictor, order, by, batch_size, perturbation)
    names = predictor.phenotype_names
    genome = predictor.base_genome
    cand = _candidates(genome, genes, order, force)
    n = len(cand)
    total = num_combinations(n, order)
    num_chunks = -(-total // batch_size)
    device = predictor.device
    signature = {
        "version": STATE_VERSION,
        "model": predictor.fingerprint(),
        "genes": hashlib.sha256(cand.tobytes()).hexdigest()[:16],
        "order": order,
        "by": by,
        "ascending": bool(ascending),
        "top": int(top),
        "batch_size": int(batch_size),
        "perturbation": ptype,
        "all_scores": str(all_scores) if all_scores is not None else "",
    }
    keeper = TopK(top, len(names), ascending, device=device)
    run = _Progress(signature, keeper, num_chunks, Path(state_path) if state_path is not None else None)
    if resume:
        run.resume()
    if all_scores is not None:
        run.open_all_scores(Path(all_scores), total, list(names), order, [genome.genes[i] for i in cand])

    cand_t = torch.from_numpy(cand).to(device)
    bar = tqdm(
        total=total,
        initial=min(run.done * batch_size, total),
        unit="set",
        unit_scale=True,
        desc=f"screen order {order}",
        disable=not progress,
    )
    last_save = time.monotonic()
    ran = 0
    try:
        while run.done < num_chunks and (max_chunks is None or ran < max_chunks):
            start, stop = run.done * batch_size, min((run.done + 1) * batch_size, total)
            combos, pred = _score_chunk(predictor, cand_t, n, order, ptype, start, stop)
            run.keeper.update(pred[:, col], torch.arange(start, stop, device=device), pred)
            if run.h5 is not None:
                run.h5["scores"][start:stop] = pred.cpu().numpy()
                run.h5["combos"][start:stop] = combos.cpu().numpy().astype(np.int32)
            run.done += 1
            ran += 1
            bar.update(stop - start)
            if on_chunk is not None:
                on_chunk(run.done, num_chunks)
            if run.state_path is not None and time.monotonic() - last_save >= save_every_s:
                run.save()
                last_save = time.monotonic()
    except BaseException:
        run.save()
        raise
    finally:
        bar.close()
    run.save()
    run.close()
    state = run.keeper.state_dict()
    ranks_np = state["ranks"].numpy()
    local = combinations_chunk(n, order, 0, 0) if not len(ranks_np) else _unrank(n, order, ranks_np)
    return ScreenResult(
        genome_genes=list(genome.genes),
        combos=cand[local],
        ranks=ranks_np,
        scores=state["rows"].numpy(),
        phenotype_names=list(names),
        by=by,
        ascending=bool(ascending),
        num_scored=min(run.done * batch_size, total),
        num_total=total,
    )


def _unrank(n: int, order: int, ranks: np.ndarray) -> np.ndarray:
    return unrank_pairs(ranks, n) if order == 2 else unrank_triples(ranks, n)


def screen_pairs(predictor: Any, genes: Sequence[str] | None = None, **kwargs: Any) -> ScreenResult:
    """All pairs of the genome's genes (or of ``genes``); see :func:`screen` for the options."""
    return screen(predictor, 2, genes, **kwargs)


def screen_triples(predictor: Any, genes: Sequence[str] | None = None, **kwargs: Any) -> ScreenResult:
    """All triples of ``genes`` (at most :data:`MAX_TRIPLE_GENES` without ``force``); see :func:`screen`."""
    return screen(predictor, 3, genes, **kwargs)
