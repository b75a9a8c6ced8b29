"""Gradient boosting beside the neural models: LightGBM regression trees, one booster per phenotype.

:class:`GradientBoosting` is a closed-form model for :class:`~cellformer.genotype.training.GenotypeModule`:
it is fitted once at the start of ``fit`` on the training rows (standardised targets, NaN rows of a
phenotype left out), with **early stopping on the validation rows** per phenotype (the boosting round
of the lowest validation MSE is kept). Without validation rows it holds out ``holdout`` of the training
rows (seeded) for the stopping rule. It then goes through the same metrics, checkpoint, ``predict`` and
``explain`` paths as every other model:

* checkpoint: each booster is stored as LightGBM's **text model dump** (a ``str``) in the module's extra
  state, so it sits in the state dict of a checkpoint that loads with ``torch.load(weights_only=True)``;
  nothing is pickled;
* ``explain``: :meth:`GradientBoosting.gain_importance` -- the total split gain of every marker per
  phenotype (LightGBM's ``importance_type="gain"``), read in standardised units and scaled to the
  phenotype's units by the explain module.
"""

from __future__ import annotations

import numpy as np
import torch

from cellformer.genotype.models import MODELS, GenotypeModel


def _lightgbm():
    import lightgbm

    return lightgbm


class GradientBoosting(GenotypeModel):
    """LightGBM gradient boosting per phenotype (module docstring).

    Args:
        n_estimators: the most boosting rounds per phenotype.
        learning_rate, num_leaves, min_data_in_leaf, feature_fraction, bagging_fraction, lambda_l2:
            LightGBM parameters (``bagging_freq`` is 1 when ``bagging_fraction`` < 1).
        early_stopping_rounds: stop when the validation MSE has not improved for this many rounds.
        holdout: share of training rows held out for early stopping when no validation rows exist.
        seed: LightGBM's seed (deterministic training, row-wise histograms).
        num_threads: LightGBM threads (default 1: on a shared machine its OpenMP threads spin-wait and one
            thread was over 100× faster than two in this project's measurements; 0 = all cores).
    """

    closed_form = True

    def __init__(
        self,
        n_loci: int,
        n_phenotypes: int,
        n_estimators: int = 2000,
        learning_rate: float = 0.05,
        num_leaves: int = 15,
        min_data_in_leaf: int = 10,
        feature_fraction: float = 0.5,
        bagging_fraction: float = 0.8,
        lambda_l2: float = 1.0,
        early_stopping_rounds: int = 50,
        holdout: float = 0.1,
        seed: int = 0,
        num_threads: int = 1,
    ):
        super().__init__(n_loci, n_phenotypes)
        self.hparams_dict = {
            "n_estimators": n_estimators,
            "learning_rate": learning_rate,
            "num_leaves": num_leaves,
            "min_data_in_leaf": min_data_in_leaf,
            "feature_fraction": feature_fraction,
            "bagging_fraction": bagging_fraction,
            "lambda_l2": lambda_l2,
            "early_stopping_rounds": early_stopping_rounds,
            "holdout": holdout,
            "seed": seed,
            "num_threads": num_threads,
        }
        self.boosters: list = [None] * self.n_phenotypes
        self.best_iteration = [0] * self.n_phenotypes

    # ------------------------------------------------------------------ fitting
    def _params(self) -> dict:
        h = self.hparams_dict
        return {
            "objective": "regression",
            "learning_rate": h["learning_rate"],
            "num_leaves": h["num_leaves"],
            "min_data_in_leaf": h["min_data_in_leaf"],
            "feature_fraction": h["feature_fraction"],
            "bagging_fraction": h["bagging_fraction"],
            "bagging_freq": 1 if h["bagging_fraction"] < 1 else 0,
            "lambda_l2": h["lambda_l2"],
            "seed": h["seed"],
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": h["num_threads"],
            "verbosity": -1,
        }

    def fit_closed_form(self, x, y, x_val=None, y_val=None) -> dict:
        lgb = _lightgbm()
        x = np.asarray(x, np.float32)
        y = np.asarray(y, np.float64)
        have_val = x_val is not None and y_val is not None and len(x_val) > 0
        if have_val:
            x_val, y_val = np.asarray(x_val, np.float32), np.asarray(y_val, np.float64)
        h = self.hparams_dict
        rounds = []
        for p in range(self.n_phenotypes):
            m = ~np.isnan(y[:, p])
            xt, yt = x[m], y[m, p]
            if len(xt) < 2:
                self.boosters[p], self.best_iteration[p] = None, 0
                rounds.append(0)
                continue
            if have_val and np.isfinite(y_val[:, p]).any():
                mv = ~np.isnan(y_val[:, p])
                xv, yv = x_val[mv], y_val[mv, p]
            else:  # no validation rows: a seeded hold-out of the training rows decides when to stop
                perm = np.random.default_rng(h["seed"]).permutation(len(xt))
                k = max(1, int(round(h["holdout"] * len(xt))))
                xv, yv, xt, yt = xt[perm[:k]], yt[perm[:k]], xt[perm[k:]], yt[perm[k:]]
            train = lgb.Dataset(xt, yt, params={"verbosity": -1}, free_raw_data=True)
            valid = lgb.Dataset(xv, yv, reference=train)
            booster = lgb.train(
                {**self._params(), "metric": "l2"},
                train,
                num_boost_round=h["n_estimators"],
                valid_sets=[valid],
                valid_names=["val"],
                callbacks=[lgb.early_stopping(h["early_stopping_rounds"], verbose=False)],
            )
            best = booster.best_iteration or booster.current_iteration()
            # keep only the trees up to the best round (the stored model is what predicts)
            self.boosters[p] = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
            self.best_iteration[p] = int(best)
            rounds.append(int(best))
        return {"best_iteration": rounds}

    # ------------------------------------------------------------------ prediction
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xn = x.detach().float().cpu().numpy()
        out = np.zeros((len(xn), self.n_phenotypes), np.float32)
        for p, booster in enumerate(self.boosters):
            if booster is not None and len(xn):
                out[:, p] = booster.predict(xn)
        return torch.from_numpy(out).to(x.device)

    def gain_importance(self) -> np.ndarray:
        """(P, L) total split gain of each marker per phenotype (standardised units; 0 = never split on)."""
        out = np.zeros((self.n_phenotypes, self.n_loci))
        for p, booster in enumerate(self.boosters):
            if booster is not None:
                out[p] = booster.feature_importance(importance_type="gain")
        return out

    # ------------------------------------------------------------------ checkpoint (text dumps, no pickle)
    def get_extra_state(self) -> dict:
        return {
            "boosters": [b.model_to_string() if b is not None else "" for b in self.boosters],
            "best_iteration": list(self.best_iteration),
        }

    def set_extra_state(self, state: dict) -> None:
        lgb = _lightgbm()
        self.boosters = [lgb.Booster(model_str=s) if s else None for s in state["boosters"]]
        self.best_iteration = [int(v) for v in state.get("best_iteration", [0] * len(self.boosters))]


MODELS["gbm"] = GradientBoosting
