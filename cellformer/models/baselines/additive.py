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

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import cg
from torch import nn

from cellformer.data.dataset import NUM_PERTURBATION_TYPES, PerturbationBatch, PerturbationData
from cellformer.errors import UserError
from cellformer.genome import Genome
from cellformer.graphs import GraphSet
from cellformer.models.base import ModelOutput, PhenotypeModel

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


def ridge_gram(X: sp.csr_matrix, target: np.ndarray, rows: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
    """Normal equations ``(ZᵀZ, Zᵀt)`` of ``target ≈ b + μ·|S| + Σ_{i∈S} δ_i`` on boolean ``rows``, with
    ``Z = [X | |S| | 1]`` (``X`` (R, K) marks the members). Sums over rows: the Gram of a union of disjoint
    row sets is the sum of theirs, so cross-fitting needs one Gram per fold."""
    Xt, t = X[rows], target[rows]
    size = np.asarray(Xt.sum(axis=1)).ravel()
    Z = sp.hstack([Xt, sp.csr_matrix(np.c_[size, np.ones_like(size)])]).tocsr()  # last columns: μ and b
    return (Z.T @ Z).tocsr(), Z.T @ t


def ridge_solve(gram: sp.csr_matrix, rhs: np.ndarray, lam: float) -> tuple[np.ndarray, float, float]:
    """Solve ``(ZᵀZ + λ·diag(1…1, 0, 0)) w = Zᵀt`` by Jacobi-preconditioned conjugate gradients.

    Only the deviations ``δ`` are penalised: a gene is shrunk towards the average gene effect ``μ``, not
    towards 0, so sets of different sizes stay on one scale (``μ`` and ``b`` get a 1e-8 ridge for stability).
    Returns ``(δ (K,), μ, b)``.
    """
    k = gram.shape[0] - 2
    A = (gram + sp.diags(np.r_[np.full(k, lam), 1e-8, 1e-8])).tocsr()
    jacobi = sp.diags(1.0 / A.diagonal())  # the μ and b columns are far larger than a gene's: precondition
    sol, info = cg(A, rhs, rtol=1e-8, maxiter=20000, M=jacobi)
    if info:
        raise RuntimeError(f"ridge_fit: conjugate gradients did not converge ({info} iterations)")
    return sol[:-2], float(sol[-2]), float(sol[-1])


def ridge_fit(X: sp.csr_matrix, target: np.ndarray, rows: np.ndarray, lam: float) -> tuple[np.ndarray, float, float]:
    """Ridge fit of ``target ≈ b + μ·|S| + Σ_{i∈S} δ_i`` on boolean ``rows`` (:func:`ridge_gram`,
    :func:`ridge_solve`). Returns ``(δ (K,), μ, b)``; all zeros without rows."""
    if not rows.any():
        return np.zeros(X.shape[1]), 0.0, 0.0
    return ridge_solve(*ridge_gram(X, target, rows), lam)


class CrossFittedAdditive(nn.Module):
    """The additive model solved in closed form (ridge) and cross-fitted: an estimate a model can read.

    Per phenotype ``p`` and (gene, perturbation type) ``i``, effects ``a_ip = μ_p + δ_ip`` solve the ridge
    problem ``min Σ_r (t_rp − b_p − Σ_{i∈S_r} a_ip)² + λ_p Σ_i δ_ip²`` (:func:`ridge_fit`: genes shrink
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
        records = data.subset(np.sort(np.asarray(rows, dtype=np.int64)))
        genes = torch.from_numpy(records.gene_index.astype(np.int64))
        batch = torch.from_numpy(np.repeat(np.arange(len(records)), records.set_sizes))
        key, known = self.keys(genes, torch.from_numpy(records.types.astype(np.int64)))
        fold = set_folds(genes, batch, len(records), self.folds).numpy()
        k = known.numpy()
        X = sp.csr_matrix(
            (np.ones(int(k.sum())), (batch.numpy()[k], key.numpy()[k])), shape=(len(records), self.effect.shape[1])
        )
        cols = [data.phenotype_names.index(n) for n in phenotype_names]
        mean, std = (np.asarray(torch.as_tensor(v).cpu(), dtype=np.float64) for v in (mean, std))
        raw = records.phenotypes[:, cols].astype(np.float64)
        size = np.asarray(X.sum(axis=1)).ravel()  # members with a column
        for p in range(len(cols)):
            mult = bool(self.multiplicative[p])
            target = np.log(np.maximum(raw[:, p], self.floor)) if mult else (raw[:, p] - mean[p]) / std[p]
            has = ~np.isnan(target)

            def standardised(t: np.ndarray, p: int = p, mult: bool = mult) -> np.ndarray:
                return (np.exp(np.minimum(t, 10.0)) - mean[p]) / std[p] if mult else t

            fits_by = self._fold_fits(X, target, has, fold)
            Xh, fh, th = X[has], fold[has], standardised(target[has])
            best = None
            for lam in self.penalties:  # λ by out-of-fold error of the estimate in standardised units
                fits = [fits_by(f, lam) for f in range(self.folds)]
                # every measured record scored by every fold's fit in one product; each keeps its own fold's
                scores = Xh @ np.stack([w for w, _, _ in fits], 1)
                pred = scores[np.arange(len(fh)), fh] + np.array([mu for _, mu, _ in fits])[fh] * size[has]
                pred += np.array([b for _, _, b in fits])[fh]
                err = float(np.sum((standardised(pred) - th) ** 2))
                if best is None or err < best[0]:
                    best = (err, lam, fits)
            _, lam, fits = best
            fits.append(fits_by(None, lam))
            in_fold = np.stack([np.asarray(X[has & (fold == f)].sum(axis=0)).ravel() for f in range(self.folds)])
            for f, (w, mu, b) in enumerate(fits):
                measured = in_fold.sum(0) - (in_fold[f] if f < self.folds else 0)  # the fit's training records
                self.effect[f, :, p] = torch.from_numpy(w).float()
                self.slope[f, p] = mu
                self.bias[f, p] = b
                self.measured[f, :, p] = torch.from_numpy(measured > 0)
            self.penalty[p] = lam

    def _fold_fits(self, X: sp.csr_matrix, target: np.ndarray, has: np.ndarray, fold: np.ndarray):
        """``fit(f, λ)``: the ridge fit on the measured records outside fold ``f`` (None: all of them). One
        Gram per fold is built once; the Gram without fold f is the total minus fold f's."""
        grams = [ridge_gram(X, target, has & (fold == f)) for f in range(self.folds)]
        total_gram, total_rhs = sum(g for g, _ in grams), sum(r for _, r in grams)

        def fit(f: int | None, lam: float) -> tuple[np.ndarray, float, float]:
            if not (has if f is None else has & (fold != f)).any():
                return np.zeros(X.shape[1]), 0.0, 0.0
            if f is None:
                return ridge_solve(total_gram, total_rhs, lam)
            return ridge_solve(total_gram - grams[f][0], total_rhs - grams[f][1], lam)

        return fit

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
