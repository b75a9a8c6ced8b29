"""Additive: the no-interaction baseline (a floor every interaction model must beat).

Each gene ``i`` has a learned effect ``a_ip`` per phenotype ``p``. How a set ``S`` combines them
depends on the phenotype's kind:

* ``multiplicative`` (fitness-like, the default for names containing ``fitness`` or ``growth``):
  ``f(S) = exp(b_p + sum_{i in S} a_ip)`` -- the product of per-gene single-mutant fitnesses
  ``exp(a_ip)`` (log-additive), times a learned wild-type level ``exp(b_p)`` (1 at initialisation).
  This is exactly the null model that defines genetic interactions (``eps = f_ij - f_i f_j``).
* ``interaction`` (names containing ``epsilon``, ``eps``, ``tau`` or ``interaction``): the model has
  no interaction term by construction, so it predicts one learned constant ``b_p`` per phenotype
  (the best constant under MSE is the mean of the training scores).
* ``additive`` (anything else): ``b_p + sum_{i in S} a_ip``.

Everything is a parameter trained by the same loss as the other models; the kinds can be
overridden by name with ``kinds={"my_pheno": "multiplicative"}``. Multiplicative phenotypes are
computed in original units (a product of fitnesses is not a product of standardised scores); the
other kinds are computed in standardised units and unscaled.

:class:`CrossFittedAdditive` is the same idea solved in closed form (ridge, cross-fitted over folds of the
training records) for another model to read as an input: CellFormer's ``additive_features``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, cg
from torch import nn

from cellformer.data.dataset import NUM_PERTURBATION_TYPES, PerturbationBatch, PerturbationData
from cellformer.errors import UserError
from cellformer.genome import Genome
from cellformer.graphs import GraphSet
from cellformer.models.base import ModelOutput, PhenotypeModel
from cellformer.models.pairs import is_dense, pattern_codes, pattern_matrix

KINDS = ("multiplicative", "interaction", "additive")

#: Optimiser settings at which the additive model has converged on the embedded default (AdamW, batch 256,
#: cosine schedule): tuned by a sweep with ``cellformer fit --config configs/additive.yaml`` over lr 0.01,
#: 0.03, 0.05, 0.1, 0.3 and 2,000 / 4,000 / 8,000 steps, keeping the setting after which more steps or
#: another lr no longer raise the validation fitness Pearson (lr ≥ 0.1 diverges). configs/additive.yaml uses it.
TUNED: dict[str, float | int] = {"lr": 0.03, "steps": 4000}


def phenotype_kind(name: str) -> str:
    """Default kind of a phenotype from its name (see module docstring)."""
    tokens = set(re.split(r"[^a-z0-9]+", name.lower()))
    if tokens & {"epsilon", "eps", "tau", "interaction", "gi", "digenic", "trigenic"}:
        return "interaction"
    if any(t.startswith(("fitness", "growth")) for t in tokens):
        return "multiplicative"
    return "additive"


class Additive(PhenotypeModel):
    """Per-gene effects combined without interactions.

    Args:
        genome: the genome; heterologous genes beyond it get no effect (they contribute 0).
        graphs: unused (accepted for the common constructor).
        phenotype_names: output columns.
        kinds: optional ``{phenotype: "multiplicative" | "interaction" | "additive"}`` overrides.
        max_log: clamp of the multiplicative exponent (keeps ``exp`` finite early in training).
    """

    def __init__(
        self,
        genome: Genome,
        graphs: GraphSet,
        phenotype_names: list[str],
        kinds: dict[str, str] | None = None,
        max_log: float = 10.0,
    ):
        super().__init__()
        self.phenotype_names = list(phenotype_names)
        kinds = dict(kinds or {})
        unknown = set(kinds) - set(self.phenotype_names)
        if unknown:
            raise KeyError(f"kinds given for unknown phenotypes {sorted(unknown)}; have {self.phenotype_names}")
        self.kinds = [kinds.get(n, phenotype_kind(n)) for n in self.phenotype_names]
        bad = [k for k in self.kinds if k not in KINDS]
        if bad:
            raise ValueError(f"unknown phenotype kind(s) {bad}; expected one of {KINDS}")
        self.hparams_dict = {"kinds": kinds, "max_log": max_log}
        self.num_genes = len(genome)
        self.max_log = max_log
        p = len(self.phenotype_names)
        self.effect = nn.Parameter(torch.zeros(self.num_genes, p))
        self.bias = nn.Parameter(torch.zeros(p))
        self.register_buffer(
            "multiplicative", torch.tensor([k == "multiplicative" for k in self.kinds]), persistent=False
        )
        self.register_buffer("uses_genes", torch.tensor([k != "interaction" for k in self.kinds]), persistent=False)

    def forward(self, batch: PerturbationBatch) -> ModelOutput:
        bsz, p = batch.num_samples, len(self.phenotype_names)
        known = batch.gene_index < self.num_genes
        effects = self.effect[batch.gene_index.clamp_max(self.num_genes - 1)] * known.unsqueeze(1)
        summed = torch.zeros(bsz, p, device=self.bias.device, dtype=effects.dtype).index_add_(0, batch.batch, effects)
        summed = summed * self.uses_genes
        linear = self.bias + summed
        # a product of fitnesses lives in original units (exp(0) = 1 is the wild type); the other kinds are
        # fitted in standardised units like every model
        pred = torch.where(self.multiplicative, torch.exp(linear.clamp(max=self.max_log)), self.unscale(linear))
        return ModelOutput(pred=pred)


# ---------------------------------------------------------------------- closed form, cross-fitted
def set_folds(gene_index: torch.Tensor, batch: torch.Tensor, num_sets: int, folds: int) -> torch.Tensor:
    """(num_sets,) fold in ``[0, folds)`` of each set: a hash of its members, so a record always lands in
    the same fold whichever batch or row order it comes in (no record ids needed)."""
    mixed = (gene_index.long() * 2654435761 + 97) % 4294967296
    total = torch.zeros(num_sets, dtype=torch.long, device=gene_index.device).index_add(0, batch, mixed)
    return total % folds


class RidgeProblem:
    """The normal equations of ``target ≈ b + μ·|S| + Σ_{i∈S} δ_i`` over records of 0..``MAX`` columns, for the
    fits that leave one fold of the records out (cross-fitting) and the fit on all of them, phenotype by
    phenotype.

    ``members`` maps a set size s to the (R_s, s) columns (in ``[0, k)``) of the records with that many
    columns, sorted by fold, and ``bounds`` to the (folds + 1,) offsets of each fold in them. The ``δ`` block
    of the Gram has one pattern for every fit and phenotype (that of all records): the ordered member pairs
    of every record are coded into it once (:func:`~cellformer.models.pairs.pattern_codes`). For a
    phenotype (:meth:`set_target`; NaN = not measured) each fold's sums are one ``bincount`` of its records'
    codes, and the system without fold f is the total minus fold f's. The ``μ`` and ``b`` rows are vectors.
    A column without measured records gets ``δ = 0``. :meth:`solve` keeps the last system for the next λ.
    """

    def __init__(self, members: dict, bounds: dict, k: int, folds: int):
        self.k, self.folds, self.members, self.bounds = k, folds, members, bounds
        sizes = [s for s in members if s]
        keys = [(members[s][:, :, None] * k + members[s][:, None, :]).reshape(len(members[s]), -1) for s in sizes]
        self.pattern, codes = pattern_codes(keys, k * k)
        self.codes = dict(zip(sizes, codes, strict=True))
        self.dense = is_dense(self.pattern, k)

    def set_target(self, target: dict) -> None:
        """Per size, the (R_s,) targets of the records in the order of ``members`` (NaN: not measured)."""
        self.target = target
        self._folds = [self._sums(f) for f in range(self.folds)]
        self._total = [sum(parts) for parts in zip(*self._folds, strict=True)]
        self._system: tuple | None = None

    def records(self, fold: int) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """``(size, members, targets, codes or None)`` of the measured records of ``fold``, per size."""
        for s, m in self.members.items():
            sl = slice(self.bounds[s][fold], self.bounds[s][fold + 1])
            m, t, code = m[sl], self.target[s][sl], self.codes[s][sl] if s else None
            has = ~np.isnan(t)
            if not has.all():
                m, t, code = m[has], t[has], None if code is None else code[has]
            if len(t):
                yield s, m, t, code

    def _sums(self, fold: int) -> list:
        """Gram values on the pattern, Σ size and Σ 1 per column, (Σ size², Σ size, records) and the right-hand
        side over the measured records of ``fold``."""
        k, nnz = self.k, len(self.pattern)
        values, size_col, count_col = np.zeros(nnz, np.int32), np.zeros(k), np.zeros(k)  # Gram entries are counts
        scalars, rhs = np.zeros(3), np.zeros(k + 2)
        for s, m, t, code in self.records(fold):
            if s:
                values += np.bincount(code.ravel(), minlength=nnz).astype(np.int32)
                cols = m.ravel()
                counts = np.bincount(cols, minlength=k)
                size_col += s * counts
                count_col += counts
                rhs[:k] += np.bincount(cols, np.repeat(t, s), minlength=k)
            scalars += [s * s * len(t), s * len(t), len(t)]
            rhs[k:] += [s * t.sum(), t.sum()]
        return [values, size_col, count_col, scalars, rhs]

    def measured(self, leave_out: int | None) -> bool:
        """Whether the fit without fold ``leave_out`` (None: all) has any measured record."""
        records = self._total[3][2] - (0 if leave_out is None else self._folds[leave_out][3][2])
        return records > 0

    def system(self, leave_out: int | None) -> tuple:
        """``(Gram of δ, its diagonal, Σ size and Σ 1 per column, (Σ size², Σ size, records), right-hand side)``
        of the fit on every fold but ``leave_out`` (None: all): the sums over all records minus the fold's."""
        if self._system is not None and self._system[0] == leave_out:
            return self._system[1]
        sums = self._total
        if leave_out is not None:
            sums = [a - b for a, b in zip(self._total, self._folds[leave_out], strict=True)]
        values, size_col, count_col, scalars, rhs = sums
        k = self.k
        # every column occurs in some record of ``members``, so its (i, i) entry is in the pattern
        diagonal = values[np.searchsorted(self.pattern, np.arange(k) * (k + 1))].astype(np.float64) if len(
            values) else np.zeros(k)  # fmt: skip
        gram = pattern_matrix(self.pattern, values, k, self.dense)
        out = (gram, diagonal, size_col, count_col, scalars, rhs)
        self._system = (leave_out, out)
        return out

    def solve(self, leave_out: int | None, lam: float, x0: np.ndarray | None = None) -> np.ndarray:
        """``(δ (K,), μ, b)`` as one vector: the fit on every fold but ``leave_out`` (None: all), ridge ``λ`` on
        ``δ`` (``μ`` and ``b`` get 1e-8 for stability), by Jacobi-preconditioned conjugate gradients from
        ``x0``. Every column must occur in some record of ``members`` (its δ is 0 where none of the fit's is
        measured)."""
        gram, diagonal, size_col, count_col, (s2, s1, n), rhs = self.system(leave_out)
        k = self.k

        def matvec(x: np.ndarray) -> np.ndarray:
            x = np.asarray(x).ravel()
            d, mu, b = x[:k], x[k], x[k + 1]
            top = gram @ d + lam * d + size_col * mu + count_col * b
            return np.r_[top, size_col @ d + (s2 + 1e-8) * mu + s1 * b, count_col @ d + s1 * mu + (n + 1e-8) * b]

        diag = np.r_[diagonal + lam, s2 + 1e-8, n + 1e-8]  # μ and b are far larger than a δ: precondition
        op = LinearOperator((k + 2, k + 2), matvec=matvec, dtype=np.float64)
        jacobi = LinearOperator((k + 2, k + 2), matvec=lambda x: np.asarray(x).ravel() / diag, dtype=np.float64)
        sol, info = cg(op, rhs, x0=x0, rtol=1e-8, maxiter=20000, M=jacobi)
        if info:
            raise RuntimeError(f"ridge fit: conjugate gradients did not converge ({info} iterations)")
        return sol


class CrossFittedAdditive(nn.Module):
    """The additive model solved in closed form (ridge) and cross-fitted: an estimate a model can read.

    Per phenotype ``p`` and (gene, perturbation type) ``i``, effects ``a_ip = μ_p + δ_ip`` solve the ridge
    problem ``min Σ_r (t_rp − b_p − Σ_{i∈S_r} a_ip)² + λ_p Σ_i δ_ip²`` (:class:`RidgeProblem`: genes shrink
    towards the average gene ``μ_p``) over the training records measuring ``p``,
    where ``t`` is ``log max(y, floor)`` for ``multiplicative`` phenotypes (the estimate is then
    ``exp(b + Σ a)``, the product of per-gene fitnesses) and the standardised value otherwise (see
    :func:`phenotype_kind`). The normal equations are sparse and solved by conjugate gradients.

    **Cross-fitting.** The training records are split into ``folds`` by :func:`set_folds`; fit ``f``
    leaves fold ``f`` out and a training record's estimate comes from the fit that never saw it, so a
    model trained on the estimate cannot learn to trust a value that contains its own label. Evaluation
    uses the fit on all training records. ``λ_p`` is chosen from ``penalties`` by the out-of-fold error.

    :meth:`forward` returns per phenotype the standardised estimate and the share of the set's members
    that had training records (0 for genes outside the base genome or never measured), (B, 2P).
    """

    def __init__(
        self,
        num_genes: int,
        phenotype_names: list[str],
        folds: int = 5,
        penalties: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0),
        floor: float = 0.01,
    ):
        super().__init__()
        if folds < 2:
            raise UserError(f"the cross-fitted additive estimate needs at least 2 folds, got {folds}")
        self.num_genes, self.folds, self.penalties, self.floor = num_genes, folds, tuple(penalties), floor
        p, keys = len(phenotype_names), num_genes * NUM_PERTURBATION_TYPES
        kinds = [phenotype_kind(n) == "multiplicative" for n in phenotype_names]
        self.register_buffer("multiplicative", torch.tensor(kinds))
        # fits 0..folds-1 leave that fold out; fit ``folds`` uses every training record
        self.register_buffer("effect", torch.zeros(folds + 1, keys, p))
        self.register_buffer("bias", torch.zeros(folds + 1, p))
        self.register_buffer("slope", torch.zeros(folds + 1, p))  # μ: the average gene's effect
        self.register_buffer("measured", torch.zeros(folds + 1, keys, p, dtype=torch.bool))
        self.register_buffer("penalty", torch.zeros(p))

    def keys(self, gene_index: torch.Tensor, types: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gene, type) column of every member and whether it has one (genes of the base genome)."""
        known = gene_index < self.num_genes
        key = gene_index.long().clamp_max(self.num_genes - 1) * NUM_PERTURBATION_TYPES + types.long()
        return key, known

    @torch.no_grad()
    def fit(self, data: PerturbationData, rows: np.ndarray, phenotype_names: list[str], mean, std) -> None:
        """Fit every fold and the full model on training ``rows`` of ``data``; ``mean``/``std`` (P,) are the
        model's target scaling (standardised = (y − mean) / std)."""
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        sizes = data.set_sizes[rows]
        take = data.member_positions(rows)
        genes = data.gene_index[take].astype(np.int64)
        batch = np.repeat(np.arange(len(rows)), sizes)
        key, known = (x.numpy() for x in self.keys(torch.from_numpy(genes), torch.from_numpy(
            data.types[take].astype(np.int64))))  # fmt: skip
        fold = set_folds(torch.from_numpy(genes), torch.from_numpy(batch), len(rows), self.folds).numpy()
        # the records by their number of base-genome members s: (R_s, s) member columns, record numbers
        n_known = np.bincount(batch[known], minlength=len(rows))
        if not known.all():
            key = key[np.lexsort((~known, batch))]  # each record's base-genome members first, in order
        start = np.r_[0, np.cumsum(sizes)[:-1]]
        groups = {}
        for c in np.unique(n_known).tolist():
            recs = np.flatnonzero(n_known == c)
            groups[c] = (recs, key[start[recs][:, None] + np.arange(c)])
        # one problem for every phenotype: the columns that occur, each size's records sorted by fold
        present = np.zeros(self.effect.shape[1], dtype=bool)
        for _, m in groups.values():
            present[m.ravel()] = True
        used, column = np.flatnonzero(present), np.cumsum(present) - 1
        members, bounds, order = {}, {}, {}
        for c, (recs, m) in groups.items():
            by_fold = np.argsort(fold[recs], kind="stable")
            order[c] = recs[by_fold]
            members[c] = column[m[by_fold]]
            bounds[c] = np.searchsorted(fold[order[c]], np.arange(self.folds + 1))
        problem = RidgeProblem(members, bounds, len(used), self.folds)
        cols = [data.phenotype_names.index(n) for n in phenotype_names]
        mean, std = (np.asarray(torch.as_tensor(v).cpu(), dtype=np.float64) for v in (mean, std))
        self.effect.zero_()
        self.measured.zero_()
        for p, col in enumerate(cols):
            raw = data.phenotypes[rows, col].astype(np.float64)
            mult = bool(self.multiplicative[p])
            target = np.log(np.maximum(raw, self.floor)) if mult else (raw - mean[p]) / std[p]
            problem.set_target({c: target[recs] for c, recs in order.items()})
            self._fit_phenotype(p, problem, used, mean[p], std[p], mult)

    def _fit_phenotype(self, p: int, problem: RidgeProblem, used: np.ndarray, mean: float, std: float,
                       mult: bool) -> None:  # fmt: skip
        """Cross-fit phenotype ``p`` (the problem's target): λ by the out-of-fold error of the estimate in
        standardised units."""

        def standardised(t: np.ndarray) -> np.ndarray:
            return (np.exp(np.minimum(t, 10.0)) - mean) / std if mult else t

        self.penalty[p] = self.penalties[0]
        if not problem.measured(None):
            return
        k = problem.k
        fits = {lam: [] for lam in self.penalties}
        for f in range(self.folds):  # fold by fold, each λ warm-started from the last
            x = np.zeros(k + 2)
            for lam in self.penalties:
                x = problem.solve(f, lam, x) if problem.measured(f) else np.zeros(k + 2)
                fits[lam].append(x)
        best = None
        for lam in self.penalties:  # each record scored by the fit that left its fold out
            err = 0.0
            for f, w in enumerate(fits[lam]):
                for s, m, t, _ in problem.records(f):
                    pred = w[:k][m].sum(1) + w[k] * s + w[k + 1]
                    err += float(np.sum((standardised(pred) - standardised(t)) ** 2))
            if best is None or err < best[0]:
                best = (err, lam)
        lam = best[1]
        full = problem.solve(None, lam, np.mean(fits[lam], axis=0))
        in_fold = np.zeros((self.folds, k))
        for f in range(self.folds):
            for _, m, _, _ in problem.records(f):
                in_fold[f] += np.bincount(m.ravel(), minlength=k)
        for f, w in enumerate([*fits[lam], full]):
            measured = in_fold.sum(0) - (in_fold[f] if f < self.folds else 0)  # the fit's training records
            self.effect[f, used, p] = torch.from_numpy(w[:k]).float()
            self.slope[f, p] = float(w[k])
            self.bias[f, p] = float(w[k + 1])
            self.measured[f, used, p] = torch.from_numpy(measured > 0)
        self.penalty[p] = lam

    @torch.no_grad()
    def forward(
        self,
        gene_index: torch.Tensor,
        types: torch.Tensor,
        ptr: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        cross_fitted: bool,
        hidden: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, 2P): standardised estimate (``mean``/``std``: the model's target scaling) and measured-member
        share per phenotype. ``cross_fitted`` (training records): each set reads the fit that left its fold out.
        ``hidden`` (nnz,) bool: members read as unmeasured genes (the average gene's effect ``μ``)."""
        B = ptr.numel() - 1
        batch = torch.repeat_interleave(torch.arange(B, device=ptr.device), ptr[1:] - ptr[:-1])
        if cross_fitted:
            fit = set_folds(gene_index, batch, B, self.folds)
        else:
            fit = torch.full((B,), self.folds, dtype=torch.long, device=ptr.device)
        key, known = self.keys(gene_index, types)
        member_fit = fit[batch]
        use = known if hidden is None else known & ~hidden
        w = self.effect[member_fit, key] * use[:, None]
        seen = self.measured[member_fit, key].float() * use[:, None]
        zeros = torch.zeros(B, w.shape[1], device=w.device)
        n_known = zeros[:, :1].index_add(0, batch, known[:, None].float())
        lin = self.bias[fit] + self.slope[fit] * n_known + zeros.index_add(0, batch, w)
        share = zeros.index_add(0, batch, seen) / (ptr[1:] - ptr[:-1]).clamp_min(1)[:, None]
        est = torch.where(self.multiplicative, (torch.exp(lin.clamp(max=10.0)) - mean) / std, lin)
        return torch.cat([est, share], dim=1)
