"""Genotype → phenotype models: every one maps genotypes ``x`` (B, L) in {-1, 0, +1} to phenotypes (B, P).

Reading order:

1. :class:`GenotypeModel` -- the interface (``forward(x) -> (B, P)``; ``forward_with_losses`` adds
   auxiliary loss terms; ``closed_form`` models are solved by ``fit_closed_form`` instead of SGD).
2. Linear baselines solved in closed form on the training split: :class:`Ridge` (primal or kernel form,
   λ per phenotype on validation or by k-fold CV) and :class:`Lasso` (FISTA over a λ path).
3. :class:`MLP` -- two hidden layers, each followed by BatchNorm and LeakyReLU.
4. Attention models from the literature, from least to most standard:
   :class:`RijalAttention` (fixed random locus vectors, a ones column, attention only, a phenotype token),
   :class:`CanonicalTransformer` (learned locus embedding × allele sign, attention with Q/K/V bias,
   mean-pool, joint linear head), :class:`VanillaTransformer` (the same tokens through pre-LN blocks with
   skip connections and a ReLU FFN) and :class:`FarielloTransformer` (per-position linear embedding,
   a stock post-LN encoder, an output FFN).
5. :class:`LocusCellFormer` -- the project's model on loci: locus tokens plus a CLS readout through the
   CellFormer :class:`~cellformer.models.cellformer.Block`, with chosen heads KL-tied to locus graphs by
   the regulariser of :mod:`cellformer.models.graph_reg`.
6. :class:`~cellformer.genotype.gbm.GradientBoosting` -- LightGBM per phenotype (in :mod:`.gbm`).

The token models (4, 5) take ``blocks``: markers grouped into linkage blocks, one token per block
(:class:`BlockTokens`, :mod:`cellformer.genotype.blocks`); the others read every marker.

Targets are standardised per phenotype by the training module; models see and predict standardised
values. ``MODELS`` maps a registry name to its class.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cellformer.graphs.graph import GeneGraph
from cellformer.models.graph_reg import GraphRegConfig, GraphRegularizer, parse_graph_reg
from cellformer.models.layers import Block


# ---------------------------------------------------------------------- interface
class GenotypeModel(nn.Module):
    """Base class: ``forward(x (B, L)) -> (B, P)`` standardised phenotypes.

    Attributes:
        closed_form: True when the model is solved by :meth:`fit_closed_form` (no gradient steps).
        uses_blocks: True when the model's tokens can be linkage blocks (``blocks=`` in the constructor,
            see :mod:`cellformer.genotype.blocks`); the other models read every marker directly.
        hparams_dict: the constructor's hyper-parameters (JSON-able), stored in checkpoints.
    """

    closed_form: bool = False
    uses_blocks: bool = False
    hparams_dict: dict

    def __init__(self, n_loci: int, n_phenotypes: int):
        super().__init__()
        self.n_loci, self.n_phenotypes = int(n_loci), int(n_phenotypes)

    def forward_with_losses(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Predictions and auxiliary loss terms (already weighted); none by default."""
        return self(x), {}

    def fit_closed_form(
        self, x: np.ndarray, y: np.ndarray, x_val: np.ndarray | None = None, y_val: np.ndarray | None = None
    ) -> dict:
        """Solve the model on training rows (closed-form models only); returns a summary dict."""
        raise NotImplementedError(f"{type(self).__name__} is trained by gradient descent")


def _init_linear(module: nn.Module, std: float = 0.02) -> None:
    """GPT-style init: N(0, std) weights, zero biases (used by the transformer models)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class BlockTokens(nn.Module):
    """Per-marker token vectors summed into block tokens: (B, M) markers -> (B, T, D) tokens.

    ``blocks`` (M,) gives each marker's block (non-decreasing, 0..T-1; None = one token per marker, the
    identity). A block's token is the sum of its markers' vectors, so a block of one marker is exactly
    that marker's token and every marker keeps its own parameters and gradient.

    :meth:`linear` computes ``Σ_{m∈b} x_m W_m (+ Σ_{m∈b} c_m)`` as one batched matrix product over
    blocks padded to the largest block (O(B·T·S·D) for S the largest block size, never a (B, M, D)
    tensor); :meth:`forward` sums arbitrary per-marker vectors (B, M, D).
    """

    def __init__(self, n_markers: int, blocks: np.ndarray | None = None):
        super().__init__()
        self.n_tokens = int(n_markers)
        index = members = None
        if blocks is not None:
            from cellformer.genotype.blocks import check_blocks

            b = check_blocks(blocks, n_markers)
            index = torch.as_tensor(b, dtype=torch.long)
            sizes = np.bincount(b)
            self.n_tokens = len(sizes)
            # members[t, s] = the s-th marker of block t, or n_markers (a zero column) past its end
            members = np.full((len(sizes), int(sizes.max())), n_markers, dtype=np.int64)
            starts = np.r_[0, np.cumsum(sizes)[:-1]]
            for t, (lo, k) in enumerate(zip(starts, sizes, strict=True)):
                members[t, :k] = np.arange(lo, lo + k)
            members = torch.as_tensor(members)
        self.register_buffer("index", index, persistent=False)
        self.register_buffer("members", members, persistent=False)

    def forward(self, per_marker: torch.Tensor) -> torch.Tensor:
        if self.index is None:
            return per_marker
        B, _, D = per_marker.shape
        return per_marker.new_zeros(B, self.n_tokens, D).index_add_(1, self.index, per_marker)

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens ``Σ_{m∈b} x_m W_m + Σ_{m∈b} c_m`` (B, T, D) of markers ``x`` (B, M), ``weight`` / ``bias`` (M, D)."""
        if self.members is None:
            out = x[..., None] * weight
            return out if bias is None else out + bias
        T, S = self.members.shape
        xp = F.pad(x, (0, 1))[:, self.members]  # (B, T, S), the pad column is 0
        wp = F.pad(weight, (0, 0, 0, 1))[self.members]  # (T, S, D)
        out = torch.bmm(xp.transpose(0, 1), wp).transpose(0, 1)  # (B, T, D)
        if bias is not None:
            out = out + bias.new_zeros(T, bias.shape[1]).index_add_(0, self.index, bias)
        return out


# ---------------------------------------------------------------------- linear models
def _mask_groups(y: np.ndarray) -> list[tuple[np.ndarray, list[int]]]:
    """Group phenotype columns that are measured on exactly the same rows: [(row mask, columns)]."""
    groups: dict[bytes, tuple[np.ndarray, list[int]]] = {}
    for p in range(y.shape[1]):
        m = ~np.isnan(y[:, p])
        groups.setdefault(m.tobytes(), (m, []))[1].append(p)
    return list(groups.values())


def _ridge_solver(x: np.ndarray, y: np.ndarray):
    """A function ``λ -> (W (L, k), b (k,))`` for centred ridge on ``x`` (n, L), ``y`` (n, k), float64.

    One eigendecomposition serves every λ: of ``XᵀX`` (L × L, primal form) when n ≥ L, of the kernel
    ``XXᵀ`` (n × n, dual form, ``W = Xᵀ(XXᵀ + λI)⁻¹y``) when L > n. Intercepts are unpenalised.
    """
    mu_x, mu_y = x.mean(0), y.mean(0)
    xc, yc = x - mu_x, y - mu_y
    n, L = xc.shape
    if n >= L:
        evals, evecs = np.linalg.eigh(xc.T @ xc)
        proj = evecs.T @ (xc.T @ yc)  # (L, k)

        def solve(lam: float):
            w = evecs @ (proj / (np.maximum(evals, 0) + lam)[:, None])
            return w, mu_y - mu_x @ w

    else:
        evals, evecs = np.linalg.eigh(xc @ xc.T)
        proj = evecs.T @ yc  # (n, k)

        def solve(lam: float):
            alpha = evecs @ (proj / (np.maximum(evals, 0) + lam)[:, None])
            w = xc.T @ alpha
            return w, mu_y - mu_x @ w

    return solve


def _kfold(n: int, k: int, seed: int) -> list[np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(f) for f in np.array_split(perm, k)]


class LinearGenotypeModel(GenotypeModel):
    """A linear model ``ŷ = xWᵀ + b`` solved in closed form: weights, bias and the chosen λ are buffers."""

    closed_form = True

    def __init__(self, n_loci: int, n_phenotypes: int):
        super().__init__(n_loci, n_phenotypes)
        self.register_buffer("weight", torch.zeros(n_phenotypes, n_loci))
        self.register_buffer("bias", torch.zeros(n_phenotypes))
        self.register_buffer("lam", torch.full((n_phenotypes,), float("nan")))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def coefficients(self) -> np.ndarray:
        """(P, L) effect of each locus on each (standardised) phenotype."""
        return self.weight.detach().cpu().numpy()


class Ridge(LinearGenotypeModel):
    """Ridge regression ``ŷ = xW + b`` solved in closed form, one λ per phenotype.

    λ is picked from ``lambdas`` (default: ``mean eigenvalue of XᵀX × 10^[-4 … 2]``, 19 values) by
    validation MSE when validation rows are given, else by ``cv_folds``-fold cross-validation on the
    training rows. Each phenotype is fitted on the rows where it is measured (columns measured on the
    same rows share one decomposition). The kernel form is used when there are more loci than rows.

    Args:
        lambdas: absolute penalties to try (None = the relative default grid).
        cv_folds: folds when there is no validation split.
        seed: fold assignment.
    """

    def __init__(
        self, n_loci: int, n_phenotypes: int, lambdas: list[float] | None = None, cv_folds: int = 5, seed: int = 0
    ):
        super().__init__(n_loci, n_phenotypes)
        self.hparams_dict = {"lambdas": lambdas, "cv_folds": cv_folds, "seed": seed}
        self.lambdas, self.cv_folds, self.seed = lambdas, int(cv_folds), int(seed)

    def _grid(self, x: np.ndarray) -> np.ndarray:
        if self.lambdas is not None:
            return np.asarray(self.lambdas, dtype=np.float64)
        scale = max(float(((x - x.mean(0)) ** 2).sum()) / x.shape[1], 1e-12)  # mean eigenvalue of XcᵀXc
        return scale * np.logspace(-4, 2, 19)

    def fit_closed_form(self, x, y, x_val=None, y_val=None) -> dict:
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        use_val = x_val is not None and y_val is not None and len(x_val) > 0
        W = np.zeros((self.n_phenotypes, self.n_loci))
        b = np.zeros(self.n_phenotypes)
        lam = np.full(self.n_phenotypes, np.nan)
        for mask, cols in _mask_groups(y):
            xm, ym = x[mask], y[mask][:, cols]
            if len(xm) < 2:
                continue
            grid = self._grid(xm)
            err = np.zeros((len(grid), len(cols)))
            if use_val:
                xv = np.asarray(x_val, np.float64)
                yv = np.asarray(y_val, np.float64)[:, cols]
                solve = _ridge_solver(xm, ym)
                for g, lm in enumerate(grid):
                    w, bb = solve(lm)
                    err[g] = np.nanmean((xv @ w + bb - yv) ** 2, axis=0) if np.isfinite(yv).any() else 0.0
            else:
                folds = _kfold(len(xm), min(self.cv_folds, len(xm)), self.seed)
                for f in folds:
                    tr = np.setdiff1d(np.arange(len(xm)), f)
                    solve = _ridge_solver(xm[tr], ym[tr])
                    for g, lm in enumerate(grid):
                        w, bb = solve(lm)
                        err[g] += ((xm[f] @ w + bb - ym[f]) ** 2).sum(0)
            err = np.nan_to_num(err, nan=np.inf)
            best = err.argmin(0)
            solve = _ridge_solver(xm, ym)
            for g in np.unique(best):
                w, bb = solve(grid[g])
                sel = np.flatnonzero(best == g)
                for s in sel:
                    W[cols[s]], b[cols[s]], lam[cols[s]] = w[:, s], bb[s], grid[g]
        self.weight.copy_(torch.as_tensor(W, dtype=self.weight.dtype))
        self.bias.copy_(torch.as_tensor(b, dtype=self.bias.dtype))
        self.lam.copy_(torch.as_tensor(lam, dtype=self.lam.dtype))
        return {"lambda": lam.tolist(), "selection": "validation" if use_val else f"{self.cv_folds}-fold CV"}


def _top_eigenvalue(x: np.ndarray, iterations: int = 50, gram: bool = False) -> float:
    """The largest eigenvalue of ``xᵀx`` (of ``x`` itself when ``gram``) by power iteration (seeded), enlarged
    by 1 % so that a FISTA step ``1 / value`` stays safe; never an eigendecomposition."""
    v = np.random.default_rng(0).standard_normal(x.shape[1])
    value = 0.0
    for _ in range(iterations):
        u = x @ v if gram else x.T @ (x @ v)
        value = float(np.linalg.norm(u))
        if value == 0:
            return 0.0
        v = u / value
    return 1.01 * value


class Lasso(LinearGenotypeModel):
    """L1-penalised linear model ``min (1/2n)‖y − xw − b‖² + λ‖w‖₁`` per phenotype, by FISTA.

    The path runs from ``λ_max`` (all-zero weights) down to ``λ_max · min_ratio`` over ``n_lambdas``
    values with warm starts, vectorised over phenotypes (Gram form ``XᵀX/n`` when L ≤ n; with more loci than
    rows, strong-rule screening and products with ``X`` itself, see :meth:`_path`); λ per phenotype is chosen
    by validation MSE (or ``cv_folds``-fold CV without validation rows). :meth:`selected_loci` lists the
    loci with non-zero weight. ``gram_limit``: with more loci than rows, the kept columns' Gram matrix is
    formed when at most this many columns are kept (memory 8·kept² bytes), else products with ``X``.
    """

    def __init__(
        self,
        n_loci: int,
        n_phenotypes: int,
        n_lambdas: int = 20,
        min_ratio: float = 1e-3,
        max_iter: int = 500,
        tol: float = 1e-6,
        cv_folds: int = 5,
        seed: int = 0,
        gram_limit: int = 5000,
    ):
        super().__init__(n_loci, n_phenotypes)
        self.hparams_dict = {
            "n_lambdas": n_lambdas,
            "min_ratio": min_ratio,
            "max_iter": max_iter,
            "tol": tol,
            "cv_folds": cv_folds,
            "seed": seed,
            "gram_limit": gram_limit,
        }
        self.gram_limit = int(gram_limit)
        self.n_lambdas, self.min_ratio, self.max_iter, self.tol = int(n_lambdas), float(min_ratio), int(max_iter), tol
        self.cv_folds, self.seed = int(cv_folds), int(seed)

    def selected_loci(self, phenotype: int | None = None) -> np.ndarray:
        """Indices of loci with a non-zero weight (for one phenotype, or for any)."""
        w = self.coefficients()
        nz = w[phenotype] != 0 if phenotype is not None else (w != 0).any(0)
        return np.flatnonzero(nz)

    def _fista(self, grad, w: np.ndarray, lam: np.ndarray, step: float) -> np.ndarray:
        """FISTA from ``w`` for ``min f(w) + λ‖w‖₁`` given ``grad = ∇f`` and step ``1 / Lipschitz``."""
        z, t = w.copy(), 1.0
        for _ in range(self.max_iter):
            w_new = z - step * grad(z)
            w_new = np.sign(w_new) * np.maximum(np.abs(w_new) - step * lam, 0.0)
            t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
            z = w_new + ((t - 1) / t_new) * (w_new - w)
            delta = np.abs(w_new - w).max() if w.size else 0.0
            w, t = w_new, t_new
            if delta < self.tol:
                break
        return w

    def _path(self, x: np.ndarray, y: np.ndarray, ratios: np.ndarray):
        """Weights (R, L, k) and intercepts (R, k) along the λ path (λ_r = λ_max · ratio_r per column).

        L ≤ n: FISTA on the Gram matrix. L > n (dense panels): FISTA on the columns that the sequential
        strong rule keeps (``|x_jᵀr|/n ≥ 2λ_r − λ_{r−1}`` at the previous solution, plus the non-zero ones),
        then a check of the optimality conditions on every column, adding violators until none is left;
        so no L × L matrix is built and an iteration costs O(n · kept columns).
        """
        n, L = x.shape
        mu_x, mu_y = x.mean(0), y.mean(0)
        xc, yc = x - mu_x, y - mu_y
        corr = xc.T @ yc / n  # (L, k)
        lam_max = np.abs(corr).max(0) + 1e-12  # (k,)
        w = np.zeros_like(corr)
        ws, bs = [], []
        if L <= n:
            gram = xc.T @ xc / n
            step = 1.0 / max(float(np.linalg.eigvalsh(gram)[-1]), 1e-12)
            for r in ratios:
                w = self._fista(lambda z: gram @ z - corr, w, lam_max * r, step)
                ws.append(w.copy())
                bs.append(mu_y - mu_x @ w)
            return np.stack(ws), np.stack(bs), lam_max
        xc32 = xc.astype(np.float32)
        prev = lam_max.copy()
        for r in ratios:
            lam = lam_max * r
            c = np.abs(corr - (xc32.T @ (xc32 @ w.astype(np.float32))) / n)  # |x_jᵀ r| / n at the previous w
            keep = ((c >= (2 * lam - prev)[None]) | (w != 0)).any(1)
            while True:
                cols = np.flatnonzero(keep)
                xs, cs = xc[:, cols], corr[cols]
                if len(cols) <= self.gram_limit:  # the kept columns' Gram matrix: O(kept²) per iteration
                    gs = xs.T @ xs / n
                    step = 1.0 / max(_top_eigenvalue(gs, gram=True) if len(cols) else 1.0, 1e-12)
                    ws_ = self._fista(lambda z, gs=gs, cs=cs: gs @ z - cs, w[cols], lam, step)
                else:
                    step = 1.0 / max(_top_eigenvalue(xs) / n, 1e-12)
                    ws_ = self._fista(lambda z, xs=xs, cs=cs: xs.T @ (xs @ z) / n - cs, w[cols], lam, step)
                w = np.zeros_like(corr)
                w[cols] = ws_
                grad = np.abs(corr - xc.T @ (xc[:, cols] @ ws_) / n)  # optimality: |x_jᵀ r| / n ≤ λ off the set
                violators = (grad > lam[None] * (1 + 1e-6) + 1e-12).any(1) & ~keep
                if not violators.any():
                    break
                keep |= violators
            prev = lam
            ws.append(w.copy())
            bs.append(mu_y - mu_x @ w)
        return np.stack(ws), np.stack(bs), lam_max

    def fit_closed_form(self, x, y, x_val=None, y_val=None) -> dict:
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        use_val = x_val is not None and y_val is not None and len(x_val) > 0
        ratios = np.logspace(0, math.log10(self.min_ratio), self.n_lambdas)
        W = np.zeros((self.n_phenotypes, self.n_loci))
        b = np.zeros(self.n_phenotypes)
        lam = np.full(self.n_phenotypes, np.nan)
        for mask, cols in _mask_groups(y):
            xm, ym = x[mask], y[mask][:, cols]
            if len(xm) < 2:
                continue
            err = np.zeros((len(ratios), len(cols)))
            if use_val:
                xv, yv = np.asarray(x_val, np.float64), np.asarray(y_val, np.float64)[:, cols]
                ws, bs, lam_max = self._path(xm, ym, ratios)
                for r in range(len(ratios)):
                    err[r] = np.nanmean((xv @ ws[r] + bs[r] - yv) ** 2, axis=0) if np.isfinite(yv).any() else 0.0
            else:
                for f in _kfold(len(xm), min(self.cv_folds, len(xm)), self.seed):
                    tr = np.setdiff1d(np.arange(len(xm)), f)
                    fw, fb, _ = self._path(xm[tr], ym[tr], ratios)
                    for r in range(len(ratios)):
                        err[r] += ((xm[f] @ fw[r] + fb[r] - ym[f]) ** 2).sum(0)
                ws, bs, lam_max = self._path(xm, ym, ratios)
            best = np.nan_to_num(err, nan=np.inf).argmin(0)
            for s, c in enumerate(cols):
                W[c], b[c], lam[c] = ws[best[s], :, s], bs[best[s], s], lam_max[s] * ratios[best[s]]
        self.weight.copy_(torch.as_tensor(W, dtype=self.weight.dtype))
        self.bias.copy_(torch.as_tensor(b, dtype=self.bias.dtype))
        self.lam.copy_(torch.as_tensor(lam, dtype=self.lam.dtype))
        return {"lambda": lam.tolist(), "selected_loci": int(len(self.selected_loci()))}


# ---------------------------------------------------------------------- MLP
class MLP(GenotypeModel):
    """Two hidden layers, each ``Linear → BatchNorm → LeakyReLU``, then one output per phenotype.

    Args:
        d_hidden: width of both hidden layers (4,096 in the published scaling study).
        dropout: after each activation (0 as published).
        negative_slope: of the LeakyReLU (0.01).
        bn_momentum: PyTorch BatchNorm momentum (0.2 = Keras-style momentum 0.8 as published).
    """

    def __init__(
        self,
        n_loci: int,
        n_phenotypes: int,
        d_hidden: int = 4096,
        dropout: float = 0.0,
        negative_slope: float = 0.01,
        bn_momentum: float = 0.2,
    ):
        super().__init__(n_loci, n_phenotypes)
        self.hparams_dict = {
            "d_hidden": d_hidden,
            "dropout": dropout,
            "negative_slope": negative_slope,
            "bn_momentum": bn_momentum,
        }
        layers: list[nn.Module] = []
        width = n_loci
        for _ in range(2):
            layers += [
                nn.Linear(width, d_hidden),
                nn.BatchNorm1d(d_hidden, momentum=bn_momentum),
                nn.LeakyReLU(negative_slope),
                nn.Dropout(dropout),
            ]
            width = d_hidden
        layers.append(nn.Linear(width, n_phenotypes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ---------------------------------------------------------------------- attention models
class PlainAttention(nn.Module):
    """Single-head attention only: ``softmax(Q Kᵀ · scale) V`` -- no skip, no LayerNorm, no FFN.

    ``scale=None`` leaves the logits unscaled (the Rijal and canonical designs); Q/K/V have a bias
    only when ``bias`` (the canonical design; Rijal's tokens carry a ones column instead). Runs
    ``F.scaled_dot_product_attention`` (``mask``: boolean, True = may attend).
    """

    def __init__(self, d_in: int, d_out: int, bias: bool, scale: float | None = None):
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(d_in, d_out, bias=bias) for _ in range(3))
        self.scale = 1.0 if scale is None else scale

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        # as (batch, 1 head, tokens, width): the 4-D layout lets SDPA pick its fused kernels (CPU flash too)
        q, k, v = (f(x).unsqueeze(-3) for f in (self.q, self.k, self.v))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale).squeeze(-3)


class RijalAttention(GenotypeModel):
    """The Rijal et al. attention model: one scalar per (genotype, phenotype) pair.

    Token of locus i: ``[x_i · R_i, 1]`` where ``R`` (L, d_model) is a *fixed* random matrix (a buffer,
    never trained) and the trailing 1 is the concatenated column of ones (it plays the role of a bias).
    A phenotype is one more input token ``[e_p, 1]`` (``e_p`` learned). ``n_layers`` plain attention layers
    (:class:`PlainAttention`, unscaled, no skip, LayerNorm or FFN) map the tokens; the output for
    phenotype p is a learned linear readout of phenotype p's token's final state.

    ``phenotype_pass``:

    * ``"joint"`` (default) -- **one pass for all phenotypes**: the P phenotype tokens follow the locus
      tokens in one sequence, under an attention mask by which a locus token attends to the locus tokens
      only and a phenotype token to the locus tokens and itself. Phenotype tokens never see each other, so
      each phenotype's output is exactly what a pass holding only its own token would give (one scalar per
      (genotype, phenotype) pair, as published), at the cost of one sequence of L + P tokens instead of P
      sequences of L + 1. What differs from the published pass: the locus tokens do not attend to the
      phenotype token, so their states are shared by all phenotypes.
    * ``"separate"`` -- the published computation: a separate pass of L + 1 tokens per phenotype, in
      which the locus tokens also attend to the phenotype token (P times the cost).

    With ``blocks``, a block token is the sum of its markers' ``x_m · R_m`` (see :class:`BlockTokens`).
    """

    uses_blocks = True

    def __init__(
        self,
        n_loci: int,
        n_phenotypes: int,
        d_model: int = 12,
        n_layers: int = 3,
        seed: int = 0,
        phenotype_pass: str = "joint",
        blocks: np.ndarray | None = None,
    ):
        super().__init__(n_loci, n_phenotypes)
        if phenotype_pass not in {"joint", "separate"}:
            raise ValueError(f"phenotype_pass must be 'joint' or 'separate', got {phenotype_pass!r}")
        self.hparams_dict = {"d_model": d_model, "n_layers": n_layers, "seed": seed, "phenotype_pass": phenotype_pass}
        self.phenotype_pass = phenotype_pass
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("random_embedding", torch.randn(n_loci, d_model, generator=gen) / math.sqrt(d_model))
        self.tokens = BlockTokens(n_loci, blocks)
        self.phenotype_embed = nn.Embedding(n_phenotypes, d_model)
        width = d_model + 1
        self.layers = nn.ModuleList([PlainAttention(width, width, bias=False) for _ in range(n_layers)])
        self.readout = nn.Linear(width, 1)
        T, P = self.tokens.n_tokens, n_phenotypes
        mask = torch.zeros(T + P, T + P, dtype=torch.bool)
        mask[:, :T] = True  # everyone reads the locus tokens
        mask[T:, T:] = torch.eye(P, dtype=torch.bool)  # a phenotype token also reads itself, no other
        self.register_buffer("joint_mask", mask, persistent=False)

    def _ones(self, t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, t.new_ones(*t.shape[:-1], 1)], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, P = x.shape[0], self.n_phenotypes
        loci = self.tokens.linear(x, self.random_embedding)  # (B, T, d)
        pheno = self.phenotype_embed.weight  # (P, d)
        if self.phenotype_pass == "joint":
            seq = self._ones(torch.cat([loci, pheno[None].expand(B, -1, -1)], dim=1))  # (B, T+P, d+1)
            for layer in self.layers:
                seq = layer(seq, self.joint_mask)
            return self.readout(seq[:, -P:]).squeeze(-1)
        seq = torch.cat([loci[:, None].expand(B, P, -1, -1), pheno[None, :, None].expand(B, P, 1, -1)], dim=2)
        seq = self._ones(seq).flatten(0, 1)  # (B·P, T+1, d+1)
        for layer in self.layers:
            seq = layer(seq)
        return self.readout(seq[:, -1]).view(B, P)


class SignEmbedding(nn.Module):
    """Token of locus i = ``E_i · x_i``: a learned ``Embedding(L, D)`` row times the allele sign (0 = missing).

    With ``blocks`` the token of a block is ``Σ_{m∈b} E_m · x_m`` (:class:`BlockTokens`).

    ``E`` starts at ``N(0, init_std²)`` (GPT-style 0.02, not ``nn.Embedding``'s N(0, 1)): small tokens give
    near-uniform attention at the start, so a model without skip connections (the canonical transformer)
    begins as a linear model of the mean-pooled tokens instead of with saturated, random attention. On the
    benchmark's 1,164-locus table this took the canonical transformer's additive-trait R² from 0.04 to 0.38.
    """

    def __init__(self, n_loci: int, d_model: int, blocks: np.ndarray | None = None, init_std: float = 0.02):
        super().__init__()
        self.embed = nn.Embedding(n_loci, d_model)
        nn.init.normal_(self.embed.weight, std=init_std)
        self.blocks = BlockTokens(n_loci, blocks)

    @property
    def n_tokens(self) -> int:
        return self.blocks.n_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks.linear(x, self.embed.weight)


class CanonicalTransformer(GenotypeModel):
    """The canonical replacement of the Rijal model: learned sign tokens, attention with Q/K/V bias,
    mean-pool and ``Linear(D, P)`` predicting every phenotype jointly (no skip, LayerNorm or FFN).
    """

    uses_blocks = True

    def __init__(
        self, n_loci: int, n_phenotypes: int, d_model: int = 128, n_layers: int = 3, blocks: np.ndarray | None = None
    ):
        super().__init__(n_loci, n_phenotypes)
        self.hparams_dict = {"d_model": d_model, "n_layers": n_layers}
        self.tokens = SignEmbedding(n_loci, d_model, blocks)
        self.layers = nn.ModuleList([PlainAttention(d_model, d_model, bias=True) for _ in range(n_layers)])
        self.head = nn.Linear(d_model, n_phenotypes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tokens(x)
        for layer in self.layers:
            h = layer(h)
        return self.head(h.mean(1))


class VanillaTransformer(GenotypeModel):
    """The same sign tokens through standard pre-LN encoder blocks (skip connections, scaled multi-head
    attention, ReLU FFN, dropout; no positional encoding), mean-pool, LayerNorm and a joint linear head.
    """

    uses_blocks = True

    def __init__(
        self,
        n_loci: int,
        n_phenotypes: int,
        d_model: int = 256,
        n_layers: int = 3,
        n_heads: int = 4,
        d_ff: int = 1024,
        dropout: float = 0.1,
        blocks: np.ndarray | None = None,
    ):
        super().__init__(n_loci, n_phenotypes)
        self.hparams_dict = {
            "d_model": d_model,
            "n_layers": n_layers,
            "n_heads": n_heads,
            "d_ff": d_ff,
            "dropout": dropout,
        }
        self.tokens = SignEmbedding(n_loci, d_model, blocks)
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, d_ff, dropout, activation="relu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_phenotypes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.encoder(self.tokens(x)).mean(1)))


class FarielloTransformer(GenotypeModel):
    """Fariello et al.: a linear embedding of the genotype vector to ``d_model`` per position
    (``token_i = x_i · W_i + b_i``, position-specific so no positional encoding is needed), a stock
    post-LN ``nn.TransformerEncoder`` and an output FFN on the mean-pooled tokens. With ``blocks`` a
    block's token is the sum of its markers' ``x_m · W_m + b_m``.
    """

    uses_blocks = True

    def __init__(
        self,
        n_loci: int,
        n_phenotypes: int,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        d_ff: int = 256,
        dropout: float = 0.1,
        blocks: np.ndarray | None = None,
    ):
        super().__init__(n_loci, n_phenotypes)
        self.hparams_dict = {
            "d_model": d_model,
            "n_layers": n_layers,
            "n_heads": n_heads,
            "d_ff": d_ff,
            "dropout": dropout,
        }
        self.embed_weight = nn.Parameter(torch.empty(n_loci, d_model))
        self.embed_bias = nn.Parameter(torch.zeros(n_loci, d_model))
        nn.init.xavier_uniform_(self.embed_weight)
        self.tokens = BlockTokens(n_loci, blocks)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.head = nn.Sequential(
            nn.Linear(d_model, d_ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d_ff, n_phenotypes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.tokens.linear(x, self.embed_weight, self.embed_bias)
        return self.head(self.encoder(tokens).mean(1))


# ---------------------------------------------------------------------- the locus CellFormer
class LocusCellFormer(GenotypeModel):
    """CellFormer on loci: locus tokens + CLS through pre-LN :class:`Block` s, CLS → ``Linear(D, P)``.

    Tokens: ``token="sign"`` gives ``E_i · x_i`` (learned locus embedding times the allele sign);
    ``token="allele"`` gives ``E_i + A[x_i]`` (a learned embedding of the allele state -1/0/+1).

    Graph tie: ``graph_reg = {graph name: {layer, head, weight λ, rows}}`` adds, for each tied head,
    ``λ · mean_i KL(Ã_i ‖ α_i)`` over ``rows`` sampled valid locus rows ``i`` of the graph, where ``α_i``
    is the head's attention from locus i over the locus keys (CLS excluded, renormalised). Unlike the
    perturbation encoder, which runs once on one wild type, every sample here is its own sequence; the
    term is the mean of the per-sample KL over the first ``graph_samples`` samples of the (shuffled)
    training batch, computed on the same pass that makes the predictions (the LayerNorm'd layer input).
    The rows and samples are drawn from the global torch RNG.

    With ``blocks`` the tokens are linkage blocks (:class:`BlockTokens`: a block's token is the sum of its
    markers' token vectors) and the locus graphs are graphs over the blocks.

    Args:
        graphs: locus graphs by name (``GeneGraph`` over the tokens: the L loci, or the blocks); only
            those in ``graph_reg`` are used.
        d_model, n_layers, n_heads, d_ff (default 4·d_model), dropout: transformer size.
    """

    uses_blocks = True

    def __init__(
        self,
        n_loci: int,
        n_phenotypes: int,
        graphs: Mapping[str, GeneGraph] | None = None,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        d_ff: int | None = None,
        dropout: float = 0.0,
        token: str = "sign",
        graph_reg: dict[str, dict] | None = None,
        graph_samples: int = 8,
        blocks: np.ndarray | None = None,
    ):
        super().__init__(n_loci, n_phenotypes)
        if token not in {"sign", "allele"}:
            raise ValueError(f"token must be 'sign' or 'allele', got {token!r}")
        graphs = dict(graphs or {})
        self.graph_reg: dict[str, GraphRegConfig] = parse_graph_reg(graph_reg, list(graphs), n_layers, n_heads)
        self.hparams_dict = {
            "d_model": d_model,
            "n_layers": n_layers,
            "n_heads": n_heads,
            "d_ff": d_ff,
            "dropout": dropout,
            "token": token,
            "graph_reg": {k: c.to_dict() for k, c in self.graph_reg.items()},
            "graph_samples": graph_samples,
        }
        self.token, self.graph_samples = token, int(graph_samples)
        self.locus_embed = nn.Embedding(n_loci, d_model)
        self.tokens = BlockTokens(n_loci, blocks)
        if token == "allele":
            self.allele_embed = nn.Embedding(3, d_model)
        self.cls_token = nn.Parameter(torch.zeros(d_model))
        self.blocks = nn.ModuleList([Block(d_model, n_heads, d_ff or 4 * d_model, dropout) for _ in range(n_layers)])
        self.norm_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_phenotypes)
        _init_linear(self)
        nn.init.normal_(self.locus_embed.weight, std=1.0)  # unit-scale identities (see CellFormer)
        nn.init.normal_(self.cls_token, std=0.02)
        # rows drawn from the global torch RNG (no generator of its own)
        self.regularizer = GraphRegularizer(graphs, self.graph_reg, np.zeros(self.tokens.n_tokens, dtype=bool))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, 1 + T, D): CLS first (T = L loci, or the blocks)."""
        if self.token == "sign":
            loci = self.tokens.linear(x, self.locus_embed.weight)
        else:
            loci = self.tokens(self.locus_embed.weight + self.allele_embed((x.round().long() + 1).clamp(0, 2)))
        return torch.cat([self.cls_token.expand(x.shape[0], 1, -1), loci], dim=1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Final stream (B, 1 + L, D) after the last LayerNorm, and each block's LN'd input."""
        h = self.embed(x)
        inputs = []
        for block in self.blocks:
            h, ln = block(h)
            inputs.append(ln)
        return self.norm_f(h), inputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(x)[0][:, 0])

    def forward_with_losses(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        h, inputs = self.encode(x)
        losses = {f"graph/{name}": self.graph_loss(name, inputs) for name in self.graph_reg}
        return self.head(h[:, 0]), losses

    def graph_loss(
        self, name: str, layer_inputs: list[torch.Tensor], rows: torch.Tensor | None = None, samples: int | None = None
    ) -> torch.Tensor:
        """``λ · mean_{samples} mean_{rows} KL(Ã_i ‖ α_i)`` of graph ``name`` over the first ``graph_samples``
        sequences of a pass (:class:`~cellformer.models.graph_reg.GraphRegularizer`)."""
        first = [x[: samples or self.graph_samples] for x in layer_inputs]
        return self.regularizer.loss(name, first, [block.attn for block in self.blocks], rows)


#: registry name -> model class
MODELS: dict[str, type[GenotypeModel]] = {
    "ridge": Ridge,
    "lasso": Lasso,
    "mlp": MLP,
    "rijal_attention": RijalAttention,
    "canonical_transformer": CanonicalTransformer,
    "vanilla_transformer": VanillaTransformer,
    "fariello_transformer": FarielloTransformer,
    "cellformer": LocusCellFormer,
}

from cellformer.genotype import gbm as _gbm  # noqa: E402, F401  (registers "gbm"; imports GenotypeModel)


def build_genotype_model(
    name: str,
    n_loci: int,
    n_phenotypes: int,
    graphs: Mapping[str, GeneGraph] | None = None,
    blocks: np.ndarray | None = None,
    **hparams,
) -> GenotypeModel:
    """Instantiate registered model ``name``; ``graphs`` (locus graphs) go to models that take them and
    ``blocks`` (a block index per marker) to the models whose tokens can be blocks."""
    from cellformer.errors import unknown_name_error

    if name not in MODELS:
        raise unknown_name_error("genotype model", name, MODELS)
    cls = MODELS[name]
    context: dict = {}
    if cls is LocusCellFormer:
        context["graphs"] = graphs
    if cls.uses_blocks and blocks is not None:
        context["blocks"] = blocks
    return cls(n_loci, n_phenotypes, **context, **hparams)
