"""The per-location score of each localisation (anomaly_map.location_scores) against hand-computed values.

Five locations, bpd b and residual r = y - y_rec of a FLAIR model with 3 scales (channels 0, 1, 2; channel
0 the finest scale, the "bright" gate):

    likelihood:      max(b, 0) * [r_0 > 0]                 (hyperintense_only: FLAIR counts where brighter)
    combined:        max(b, 0) * max(r_0, 0)
    reconstruction:  sum_c max(r_c, 0)^2                   (sum_c r_c^2 without hyperintense_only)

The expected values below were worked out by hand from these tables, not by running the code.
"""

from __future__ import annotations

import dataclasses
import json
import math
from types import SimpleNamespace

import pytest
import torch

from AnoDODELib.anomaly_map import finest_channels, hyperintense_channels, location_scores
from AnoDODELib.config import FeatureConfig, LocalisationConfig

BPD = torch.tensor([1.0, 2.0, -0.5, 3.0, 0.25])
RESIDUAL = torch.tensor(
    [
        [0.5, -0.3, 0.2],
        [-0.2, 0.4, 0.1],
        [0.7, 0.1, -0.6],
        [0.0, 0.9, 0.3],  # not brighter at the finest scale (r_0 = 0): gated out
        [0.8, -0.5, 0.5],
    ]
)
FLAIR = torch.tensor([True, True, True])


def loc(method: str, **kw) -> LocalisationConfig:
    return dataclasses.replace(LocalisationConfig(), method=method, **kw)


def scores(method: str, hyperintense: torch.Tensor | None = FLAIR, **kw) -> list[float]:
    cfg = loc(method, **kw)
    finest = finest_channels(FeatureConfig())
    return location_scores(BPD, RESIDUAL, cfg, hyperintense, finest).tolist()


def test_likelihood_is_the_positive_bpd_where_the_finest_flair_channel_is_brighter() -> None:
    #  b:  1.0, 2.0, -0.5, 3.0, 0.25;  r_0 > 0:  yes, no, yes, no (0), yes
    assert scores("likelihood") == pytest.approx([1.0, 0.0, 0.0, 0.0, 0.25], abs=1e-7)


def test_combined_is_the_positive_bpd_times_the_positive_finest_residual() -> None:
    #  max(b, 0) * max(r_0, 0):  1 * .5, 2 * 0, 0 * .7, 3 * 0, .25 * .8
    assert scores("combined") == pytest.approx([0.5, 0.0, 0.0, 0.0, 0.2], abs=1e-7)


def test_reconstruction_sums_the_squared_positive_residuals() -> None:
    #  .25 + 0 + .04,  0 + .16 + .01,  .49 + .01 + 0,  0 + .81 + .09,  .64 + 0 + .25
    assert scores("reconstruction") == pytest.approx([0.29, 0.17, 0.50, 0.90, 0.89], abs=1e-6)
    #  finest scale only: max(r_0, 0)^2
    assert scores("reconstruction", residual_scales="finest") == pytest.approx(
        [0.25, 0.0, 0.49, 0.0, 0.64], abs=1e-6
    )


def test_without_hyperintense_only_every_residual_counts_both_ways() -> None:
    assert scores("likelihood", hyperintense_only=False) == pytest.approx(
        [1.0, 2.0, 0.0, 3.0, 0.25], abs=1e-7
    )
    norms = [math.sqrt(0.38), math.sqrt(0.21), math.sqrt(0.86), math.sqrt(0.90), math.sqrt(1.14)]
    want = [1.0 * norms[0], 2.0 * norms[1], 0.0, 3.0 * norms[3], 0.25 * norms[4]]
    assert scores("combined", hyperintense_only=False) == pytest.approx(want, abs=1e-6)
    assert scores("reconstruction", hyperintense_only=False) == pytest.approx(
        [0.38, 0.21, 0.86, 0.90, 1.14], abs=1e-6
    )


def test_settings_read_from_a_bundle_are_compared_by_value() -> None:
    """A model.json's strings are new objects, not the interned literals of the code: the "finest" and
    "reconstruction" settings must be recognised by value."""
    method, scales = json.loads('["reconstruction", "finest"]')
    cfg = loc(method, residual_scales=scales)
    got = location_scores(BPD, RESIDUAL, cfg, FLAIR, finest_channels(FeatureConfig())).tolist()
    assert got == pytest.approx([0.25, 0.0, 0.49, 0.0, 0.64], abs=1e-6)
    likelihood, combined = json.loads('["likelihood", "combined"]')
    assert location_scores(BPD, RESIDUAL, loc(likelihood), FLAIR).tolist() == pytest.approx(
        [1.0, 0, 0, 0, 0.25]
    )
    assert location_scores(BPD, RESIDUAL, loc(combined), FLAIR).tolist() == pytest.approx([0.5, 0, 0, 0, 0.2])


def test_no_hyperintense_channel_means_no_gate() -> None:
    """A model of contrasts none of which is hyperintense (e.g. T1 only): the likelihood is not gated and the
    combined map weights it by the two-sided residual norm, as without hyperintense_only."""
    none = torch.zeros(3, dtype=torch.bool)
    assert scores("likelihood", none) == scores("likelihood", hyperintense_only=False)
    assert scores("combined", none) == pytest.approx(scores("combined", hyperintense_only=False))
    assert scores("reconstruction", none) == pytest.approx([0.38, 0.21, 0.86, 0.90, 1.14], abs=1e-6)


def test_default_hyperintense_is_every_channel() -> None:
    for method in ("likelihood", "combined", "reconstruction"):
        assert scores(method, None) == scores(method, FLAIR)


def test_the_gate_is_the_first_hyperintense_channel_and_only_those_are_one_sided() -> None:
    """T1 (two-sided) then FLAIR (one-sided), 2 scales each: channels t1@0, t1@1, flair@0, flair@1; the
    bright gate is channel 2, FLAIR's finest scale."""
    features = FeatureConfig(contrasts=("t1", "flair"), scales_mm=(0.0, 4.0))
    hyper = hyperintense_channels(features, LocalisationConfig())
    assert hyper.tolist() == [False, False, True, True]
    assert finest_channels(features).tolist() == [True, False, True, False]
    bpd = torch.tensor([2.0, 1.0, 4.0])
    residual = torch.tensor([[0.9, 0.0, 0.5, -0.1], [-1.0, 2.0, -0.3, 0.6], [0.0, 0.0, 0.0, 1.0]])
    cfg_scores = {
        m: location_scores(bpd, residual, loc(m), hyper, finest_channels(features)).tolist()
        for m in ("likelihood", "combined", "reconstruction")
    }
    assert cfg_scores["likelihood"] == pytest.approx([2.0, 0.0, 0.0])
    assert cfg_scores["combined"] == pytest.approx([1.0, 0.0, 0.0])
    #  t1 channels squared both ways, flair channels clamped at 0:  .81 + .25,  1 + 4 + .36,  1
    assert cfg_scores["reconstruction"] == pytest.approx([1.06, 5.36, 1.0], abs=1e-6)
    finest = location_scores(
        bpd, residual, loc("reconstruction", residual_scales="finest"), hyper, finest_channels(features)
    ).tolist()
    #  t1@0 squared, flair@0 clamped:  .81 + .25,  1 + 0,  0
    assert finest == pytest.approx([1.06, 1.0, 0.0], abs=1e-6)


def test_scores_of_a_longer_scale_list() -> None:
    features = FeatureConfig(contrasts=("flair", "t2"), scales_mm=(0.0, 2.0, 4.0, 8.0))
    assert finest_channels(features).tolist() == [True, False, False, False, True, False, False, False]
    assert (
        hyperintense_channels(features, LocalisationConfig(hyperintense_contrasts=("t2",))).tolist()
        == [False] * 4 + [True] * 4
    )


def test_bad_settings_raise() -> None:
    with pytest.raises(ValueError, match="finest-scale channels"):
        location_scores(BPD, RESIDUAL, loc("reconstruction", residual_scales="finest"), FLAIR, None)
    for bad in (
        {"method": "nope", "residual_scales": "all"},
        {"method": "combined", "residual_scales": "nope"},
    ):
        cfg = SimpleNamespace(hyperintense_only=True, **bad)
        with pytest.raises(ValueError, match="unknown"):
            location_scores(BPD, RESIDUAL, cfg, FLAIR)
