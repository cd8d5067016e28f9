"""Metrics against hand-computed values."""

import math

import numpy as np
import pytest

from training import metrics


def test_auroc_hand_computed():
    # positives 0.9, 0.4; negatives 0.6, 0.2, 0.1: pairs won 1+1+1 (0.9) + 0+1+1 (0.4) = 5 of 6
    s = np.array([0.9, 0.6, 0.4, 0.2, 0.1])
    y = np.array([1, 0, 1, 0, 0])
    assert metrics.auroc(s, y) == pytest.approx(5 / 6)


def test_auroc_ties_count_half():
    assert metrics.auroc(np.array([0.5, 0.5]), np.array([1, 0])) == pytest.approx(0.5)


def test_auprc_hand_computed():
    # ranks: 0.9(+) P=1 R=.5 ; 0.6(-) ; 0.4(+) P=2/3 R=1  -> AP = .5*1 + .5*2/3
    s = np.array([0.9, 0.6, 0.4, 0.2, 0.1])
    y = np.array([1, 0, 1, 0, 0])
    assert metrics.auprc(s, y) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_best_dice_hand_computed():
    # thresholds: >=0.9 -> TP1 FP0: 2/3 ; >=0.6 -> TP1 FP1: 2/4 ; >=0.4 -> TP2 FP1: 4/5
    s = np.array([0.9, 0.6, 0.4, 0.2, 0.1])
    y = np.array([1, 0, 1, 0, 0])
    d, t = metrics.best_dice(s, y)
    assert d == pytest.approx(0.8)
    assert t == pytest.approx(0.4)


def test_dice_and_degenerate_cases():
    assert metrics.dice(np.array([1, 1, 0]), np.array([1, 0, 0])) == pytest.approx(2 / 3)
    assert math.isnan(metrics.auroc(np.array([0.1, 0.2]), np.array([0, 0])))
    assert math.isnan(metrics.auprc(np.array([0.1, 0.2]), np.array([0, 0])))
    with pytest.raises(ValueError):
        metrics.auroc(np.zeros(3), np.zeros(2))


def test_perfect_and_inverted_rankings():
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.3
    s = y + rng.random(200) * 0.5
    assert metrics.auroc(s, y) == pytest.approx(1.0)
    assert metrics.auprc(s, y) == pytest.approx(1.0)
    assert metrics.best_dice(s, y)[0] == pytest.approx(1.0)
    assert metrics.auroc(-s, y) == pytest.approx(0.0)


def test_roc_and_pr_curves_hand_computed():
    s = np.array([0.9, 0.6, 0.4, 0.2, 0.1])
    y = np.array([1, 0, 1, 0, 0])
    fpr, tpr = metrics.roc_curve(s, y)
    np.testing.assert_allclose(fpr, [0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1, 1])
    assert np.trapezoid(tpr, fpr) == pytest.approx(metrics.auroc(s, y))
    recall, precision = metrics.pr_curve(s, y)
    np.testing.assert_allclose(recall, [0.5, 0.5, 1, 1, 1])
    np.testing.assert_allclose(precision, [1, 0.5, 2 / 3, 0.5, 0.4])
    x, _yy = metrics.thin_curve(np.arange(10.0), np.arange(10.0), n=4)
    assert x[0] == 0 and x[-1] == 9 and len(x) <= 5


def test_best_dice_threshold_is_the_one_reaching_it():
    """The threshold belongs to the best cut, counted from the top score down: with scores 0.9 0.8 0.5 0.3 and
    truth 1 1 0 0 the best cut is >= 0.8 (Dice 1); the hand-computed case above is symmetric (its best cut is
    the middle score) and could not tell a threshold read from the wrong end of the list."""
    s = np.array([0.9, 0.8, 0.5, 0.3])
    y = np.array([1, 1, 0, 0])
    assert metrics.best_dice(s, y) == (pytest.approx(1.0), pytest.approx(0.8))
    rng = np.random.default_rng(4)
    s, y = rng.random(300), rng.random(300) < 0.2
    s[y] += 0.4
    d, t = metrics.best_dice(s, y)
    assert metrics.dice(s >= t, y) == pytest.approx(d)
