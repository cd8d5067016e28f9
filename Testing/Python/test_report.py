"""training.report: bootstrap intervals over cases and the paired comparison, against hand-computed values."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training import report


def test_bootstrap_interval_of_two_cases_is_hand_computable():
    # resampled means of {0, 1} (2 draws) are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 2.5 % and
    # 97.5 % quantiles are 0 and 1
    assert report.bootstrap_mean_ci([0.0, 1.0], resamples=20_000) == (0.5, 0.0, 1.0)
    assert report.bootstrap_mean_ci([0.7] * 5) == pytest.approx((0.7, 0.7, 0.7))
    mean, lo, hi = report.bootstrap_mean_ci(np.linspace(0, 1, 8), resamples=20_000)
    # the standard error of the mean of 8 equispaced values: sd / sqrt(8); the interval is about +-1.96 se
    se = np.linspace(0, 1, 8).std() / np.sqrt(8)
    assert mean == pytest.approx(0.5) and lo == pytest.approx(0.5 - 1.96 * se, abs=0.03)
    assert hi == pytest.approx(0.5 + 1.96 * se, abs=0.03)


def test_sign_flip_p_exact():
    # d = (1, 2, 3): of the 8 sign patterns only all-plus and all-minus reach |mean| = 2, so p = 2/8
    assert report.sign_flip_p([1.0, 2.0, 3.0]) == pytest.approx(0.25)
    # d = (1, -1, 2), sum 2: signed sums 1-1+2 = 2, 1+1+2 = 4, -1+1+2 = 2 reach |2|, -1-1+2 = 0 does not;
    # with their mirror images 6 of 8
    assert report.sign_flip_p([1.0, -1.0, 2.0]) == pytest.approx(0.75)
    assert report.sign_flip_p([0.1] * 8) == pytest.approx(2 / 256)
    big = report.sign_flip_p([0.1] * 20, resamples=2000)  # Monte Carlo beyond 16 cases
    assert 0 < big < 0.01


def rows_of(values: dict[str, list[float]]) -> list[dict]:
    rows = []
    for method, vals in values.items():
        for k, v in enumerate(vals):
            rows.append(
                {"case": f"c{k}", "method": method, "voxel_auprc": v, "best_dice": v, "slice_auroc": v}
            )
        rows.append({"case": "POOLED", "method": method, "voxel_auprc": 99.0})  # never averaged
    return rows


def test_summary_pairs_each_method_with_the_smoothed_zscore(tmp_path, capsys):
    rows = rows_of(
        {
            "anodode": [0.9, 0.8, 0.7, 0.6],
            "flair_zscore_smoothed": [0.8, 0.8, 0.5, 0.7],
            "flair_zscore": [0.5, 0.5, 0.5, 0.5],
        }
    )
    text = report.summary_tables(rows, ["anodode"], resamples=2000)
    line = next(ln for ln in text.splitlines() if ln.startswith("| anodode |") and "p =" in ln)
    # differences 0.1, 0, 0.2, -0.1: mean +0.050, 2 above, 1 below; the zero flips to itself, the other three
    # give signed sums 0.2, 0.4, 0.2, 0 (and mirrors): |sum| >= 0.2 for 12 of 16 patterns
    assert "+0.050" in line and "2/1" in line and "p = 0.750" in line
    mean_line = next(ln for ln in text.splitlines() if ln.startswith("| anodode |"))
    assert mean_line.startswith("| anodode | 0.750 [")  # pooled rows are not averaged in
    assert any(ln.startswith("| flair_zscore |") for ln in text.splitlines())
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"rows": rows}), encoding="utf-8")
    assert report.main([str(path), "--summary", "--resamples", "500"]) == 0
    assert "Paired with `flair_zscore_smoothed`" in capsys.readouterr().out
