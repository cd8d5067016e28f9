"""Reconstruction (noise to t_start, probability-flow ODE back) with the exact score of Gaussian data."""

from __future__ import annotations

import math

import pytest
import torch

from AnoDODELib.reconstruction import reconstruct, reconstruction_error
from AnoDODELib.sde import VPSDE

DT = torch.float64
T_EPS = 1e-3
SDE = VPSDE()
MU = torch.tensor([0.5, -1.0, 1.5], dtype=DT)
S = torch.tensor([0.5, 1.0, 2.0], dtype=DT)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: intra-op threads only add contention on a busy 2-core runner."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def marginal(t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Data N(MU, diag S^2) under the VP-SDE at t: N(alpha MU, alpha^2 S^2 + 1 - alpha^2)."""
    a = SDE.alpha(torch.as_tensor(t, dtype=DT))
    return a * MU, a * a * S**2 + 1 - a * a


def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    m, v = marginal(t)
    return -(x - m) / v


def closed_form(x0: torch.Tensor, noise: torch.Tensor, t_start: float) -> torch.Tensor:
    """x_s = alpha x0 + std e, then the exact flow map back: (x - m_t) / sqrt(v_t) is invariant."""
    mean, std = SDE.marginal_prob(x0, t_start)
    xs = mean + std * noise
    ms, vs = marginal(t_start)
    me, ve = marginal(T_EPS)
    return me + torch.sqrt(ve / vs) * (xs - ms)


def draws(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, dtype=DT, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("t_start", [0.05, 0.5, 1.0])
def test_matches_the_exact_flow_map(t_start: float) -> None:
    x0 = MU + S * 2 * draws(5, 0)
    noise = draws(5, 1)
    rec = reconstruct(score, SDE, x0, t_start=t_start, noise=noise, method="rk4", steps=64, t_eps=T_EPS)
    assert rec.shape == x0.shape and rec.dtype == x0.dtype
    torch.testing.assert_close(rec, closed_form(x0, noise, t_start), atol=1e-6, rtol=0.0)


def test_adaptive_method_matches_the_exact_flow_map() -> None:
    x0, noise = MU + S * draws(4, 2), draws(4, 3)
    rec = reconstruct(score, SDE, x0, t_start=0.7, noise=noise, method="dopri5", rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(rec, closed_form(x0, noise, 0.7), atol=1e-7, rtol=0.0)


def test_small_t_start_returns_close_to_x0() -> None:
    x0 = MU + S * draws(256, 4)
    errors = {}
    for t_start in (0.01, 0.3, 0.9):
        rec = reconstruct(score, SDE, x0, t_start=t_start, generator=torch.Generator().manual_seed(5))
        errors[t_start] = (rec - x0).abs().mean().item()
    # at t = 0.01 the noise std is 0.063, so the mean absolute change is ~0.05
    assert errors[0.01] < 0.08
    assert errors[0.01] < errors[0.3] < errors[0.9], errors


def test_large_t_start_pulls_an_outlier_to_the_data() -> None:
    outlier = (MU + 5 * S * torch.tensor([1.0, -1.0, 1.0], dtype=DT))[None]
    # without noise the reconstruction lands almost on the mean
    rec0 = reconstruct(score, SDE, outlier, t_start=0.99, noise=torch.zeros_like(outlier))
    assert ((rec0 - MU).abs() < 0.05 * (outlier - MU).abs()).all(), rec0
    # with noise it is close to a sample of the data distribution, N(MU, S^2), up to the alpha(0.99) = 7e-3
    # memory of x0 that the closed form keeps: mean closed_form(x0, 0), sd sqrt(v_eps / v_s) std(t_s) ~ S
    n = 2000
    rec = reconstruct(
        score, SDE, outlier.expand(n, 3), t_start=0.99, generator=torch.Generator().manual_seed(6), steps=16
    )
    _, std_s = SDE.marginal_prob(MU, 0.99)
    sd = torch.sqrt(marginal(T_EPS)[1] / marginal(0.99)[1]) * std_s
    torch.testing.assert_close(sd, S, rtol=0.01, atol=0.0)
    stderr = sd / math.sqrt(n)
    assert ((rec.mean(0) - rec0[0]).abs() < 4 * stderr).all(), (rec.mean(0), rec0)
    torch.testing.assert_close(rec.std(0), sd, rtol=0.1, atol=0.0)
    # on average the reconstruction is far nearer the data mean than the outlier it started from
    assert (
        reconstruction_error(outlier.expand(n, 3), rec).mean()
        > 10 * reconstruction_error(MU.expand(n, 3), rec).mean()
    )


def test_generator_reproducible_and_noise_used() -> None:
    x0 = MU + S * draws(3, 7)
    a = reconstruct(score, SDE, x0, generator=torch.Generator().manual_seed(8))
    b = reconstruct(score, SDE, x0, generator=torch.Generator().manual_seed(8))
    c = reconstruct(score, SDE, x0, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b) and not torch.equal(a, c)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(8), dtype=DT)
    assert torch.equal(a, reconstruct(score, SDE, x0, noise=noise))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"t_start": 0.0}, "t_start"),
        ({"t_start": 1.5}, "t_start"),
        ({"noise": torch.zeros(2, 3, dtype=DT)}, "noise shape"),
        ({"method": "rk5"}, "rk4"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        reconstruct(score, SDE, MU.expand(4, 3), **kwargs)


def test_reconstruction_error() -> None:
    x0 = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], dtype=DT)
    rec = torch.tensor([[1.0, 0.0, 4.0], [0.5, 0.5, 0.0]], dtype=DT)
    torch.testing.assert_close(reconstruction_error(x0, rec), torch.tensor([5.0, 0.5], dtype=DT))
    assert reconstruction_error(x0.reshape(2, 3, 1), rec.reshape(2, 3, 1)).shape == (2,)


def test_reconstruction_map_over_the_finest_scales_only():
    """Hand-computed: residuals (N, C) of 2 contrasts x 3 scales; "finest" sums channels 0 and 3 (one-sided
    for FLAIR, two-sided for T1ce), "all" every channel."""
    import torch

    from AnoDODELib.anomaly_map import finest_channels, hyperintense_channels, location_scores
    from AnoDODELib.config import FeatureConfig, LocalisationConfig

    feats = FeatureConfig(contrasts=("flair", "t1ce"))
    assert finest_channels(feats).tolist() == [True, False, False, True, False, False]
    r = torch.tensor([[2.0, 1.0, 1.0, -3.0, 5.0, 5.0], [-2.0, 0.0, 0.0, 1.0, 0.0, 0.0]])
    bpd = torch.zeros(2)
    fine = LocalisationConfig(residual_scales="finest")
    got = location_scores(bpd, r, fine, hyperintense_channels(feats, fine), finest_channels(feats))
    assert got.tolist() == [4.0 + 9.0, 0.0 + 1.0]
    every = LocalisationConfig()
    got = location_scores(bpd, r, every, hyperintense_channels(feats, every), finest_channels(feats))
    assert got.tolist() == [4.0 + 1 + 1 + 9 + 25 + 25, 0.0 + 1.0]
