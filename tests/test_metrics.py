"""Metrics a geneticist reads: rank metrics of strong interactions next to the correlations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cellformer.training.metrics import (
    STRONG_INTERACTION,
    average_precision,
    format_metrics_table,
    regression_metrics,
    roc_auc,
)


def brute_average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Precision at every threshold taken from the scores (ties share one), weighted by the recall gained."""
    total, recall = 0.0, 0.0
    for t in sorted(set(scores.tolist()), reverse=True):
        hit = scores >= t
        r = labels[hit].sum() / labels.sum()
        total += (r - recall) * labels[hit].mean()
        recall = r
    return total


def brute_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pairs = list(itertools.product(scores[labels], scores[~labels]))
    return float(np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs]))


@pytest.mark.parametrize("seed", [0, 1])
def test_aupr_and_auroc_match_their_definitions_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(200) < 0.15
    scores = np.round(rng.normal(size=200) + labels, 1)  # rounded: many ties
    assert average_precision(labels, scores) == pytest.approx(brute_average_precision(labels, scores))
    assert roc_auc(labels, scores) == pytest.approx(brute_auc(labels, scores))
    assert roc_auc(labels, -scores) == pytest.approx(1 - roc_auc(labels, scores))
    assert np.isnan(average_precision(np.zeros(5, bool), np.arange(5.0)))


def test_interaction_phenotypes_get_strong_interaction_metrics():
    rng = np.random.default_rng(0)
    y = np.stack([rng.normal(1, 0.1, 300), rng.normal(0, 0.05, 300)], 1)
    pred = y + rng.normal(0, 0.03, y.shape)
    m = regression_metrics(pred, y, ["fitness", "epsilon"])
    assert "aupr_neg" not in m["fitness"]
    eps = m["epsilon"]
    assert eps["n_neg"] == (y[:, 1] < -STRONG_INTERACTION).sum() and eps["n_pos"] == (y[:, 1] > 0.08).sum()
    assert 0.5 < eps["auroc_neg"] <= 1 and eps["aupr_neg"] > eps["n_neg"] / 300  # better than the base rate
    flipped = regression_metrics(-pred, y, ["fitness", "epsilon"])["epsilon"]  # scored the wrong way round
    assert flipped["auroc_neg"] < 0.5 and flipped["auroc_pos"] < 0.5
    table = format_metrics_table(m, "t")
    assert "AUPR (< −0.08)" in table and table.count("|\n") >= 3
