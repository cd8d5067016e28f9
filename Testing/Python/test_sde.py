"""VPSDE against closed forms and a Monte-Carlo simulation of the SDE itself."""

from __future__ import annotations

import math

import pytest
import torch

from AnoDODELib.config import SDEConfig
from AnoDODELib.probability_flow import drift as drift_of
from AnoDODELib.sde import VPSDE, append_dims

DT = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: intra-op threads only add contention on a busy 2-core runner."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def closed_alpha(t: float, b0: float = 0.1, b1: float = 20.0) -> float:
    return math.exp(-0.5 * (b0 * t + 0.5 * (b1 - b0) * t * t))


def test_append_dims() -> None:
    v = torch.arange(3.0)
    assert append_dims(v, 4).shape == (3, 1, 1, 1)
    assert append_dims(torch.tensor(2.0), 0).shape == ()
    assert torch.equal(append_dims(v, 3)[:, 0, 0], v)
    with pytest.raises(ValueError):
        append_dims(torch.zeros(2, 2), 1)


def test_from_config_and_beta() -> None:
    sde = VPSDE.from_config(SDEConfig(beta_min=0.5, beta_max=7.0))
    assert (sde.beta_min, sde.beta_max) == (0.5, 7.0)
    assert sde.beta(0.0).item() == pytest.approx(0.5)
    assert sde.beta(1.0).item() == pytest.approx(7.0)
    assert sde.beta(torch.tensor([0.5], dtype=DT)).item() == pytest.approx(3.75)


def test_integral_beta_is_the_integral_of_beta() -> None:
    sde = VPSDE()
    s = torch.linspace(0.0, 0.7, 20001, dtype=DT)
    numeric = torch.trapezoid(sde.beta(s), s).item()
    assert sde.integral_beta(0.7).item() == pytest.approx(numeric, rel=1e-7)
    assert sde.integral_beta(0.0).item() == 0.0


@pytest.mark.parametrize("t", [1e-4, 0.1, 0.5, 1.0])
def test_marginal_prob_closed_form(t: float) -> None:
    sde = VPSDE()
    x = torch.tensor([[1.0, -2.0, 3.5]], dtype=DT)
    mean, std = sde.marginal_prob(x, t)
    a = closed_alpha(t)
    torch.testing.assert_close(mean, a * x, rtol=1e-12, atol=0.0)
    assert std.item() == pytest.approx(math.sqrt(1.0 - a * a), rel=1e-9)
    # 0-d tensor time gives the same thing
    mean0, std0 = sde.marginal_prob(x, torch.tensor(t, dtype=DT))
    torch.testing.assert_close(mean0, mean)
    torch.testing.assert_close(std0, std)


def test_marginal_prob_batched_time_broadcasts() -> None:
    sde = VPSDE(0.2, 12.0)
    x = torch.randn(4, 2, 3, dtype=DT, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.01, 0.2, 0.6, 1.0], dtype=DT)
    mean, std = sde.marginal_prob(x, t)
    assert mean.shape == x.shape and std.shape == (4, 1, 1)
    for i in range(4):
        mi, si = sde.marginal_prob(x[i : i + 1], float(t[i]))
        torch.testing.assert_close(mean[i : i + 1], mi)
        torch.testing.assert_close(std[i], si.reshape(1, 1))
    a = torch.tensor([closed_alpha(float(ti), 0.2, 12.0) for ti in t], dtype=DT)
    torch.testing.assert_close(std.flatten(), torch.sqrt(1 - a**2))


def test_std_accurate_near_zero() -> None:
    sde = VPSDE()
    t = 1e-7
    expected = math.sqrt(sde.beta_min * t)  # 1 - alpha^2 ~ int beta for small t
    assert sde.marginal_std(torch.tensor(t, dtype=DT)).item() == pytest.approx(expected, rel=1e-5)


def test_sde_drift_and_diffusion() -> None:
    sde = VPSDE()
    x = torch.tensor([[2.0, -1.0], [0.5, 4.0]], dtype=DT)
    t = torch.tensor([0.25, 0.75], dtype=DT)
    drift, g = sde.sde(x, t)
    beta = 0.1 + t * 19.9
    torch.testing.assert_close(drift, -0.5 * beta[:, None] * x)
    torch.testing.assert_close(g, beta.sqrt()[:, None])
    drift_s, g_s = sde.sde(x, 0.25)
    assert g_s.ndim == 0 and g_s.item() == pytest.approx(math.sqrt(0.1 + 0.25 * 19.9))
    torch.testing.assert_close(drift_s[0], drift[0])


def test_marginals_match_euler_maruyama_simulation() -> None:
    """Simulate dx = f dt + g dW from a fixed x0; mean and variance at t must match marginal_prob."""
    sde = VPSDE()
    gen = torch.Generator().manual_seed(1)
    n_paths, n_steps, t_end = 20000, 400, 0.4
    x0 = torch.tensor([2.0, -0.5], dtype=DT)
    x = x0.expand(n_paths, 2).clone()
    dt = t_end / n_steps
    for k in range(n_steps):
        drift, g = sde.sde(x, k * dt)
        x = x + drift * dt + g * math.sqrt(dt) * torch.randn(x.shape, generator=gen, dtype=DT)
    mean, std = sde.marginal_prob(x0[None], t_end)
    torch.testing.assert_close(x.mean(0), mean[0], atol=0.03, rtol=0.0)
    var = x.var(0)
    assert torch.allclose(var, std**2 * torch.ones(2, dtype=DT), rtol=0.05), (var, std**2)


def test_prior_logp() -> None:
    sde = VPSDE()
    z = torch.randn(5, 2, 3, dtype=DT, generator=torch.Generator().manual_seed(2))
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).flatten(1).sum(1)
    torch.testing.assert_close(sde.prior_logp(z), expected)


def test_probability_flow_drift_is_sde_drift_minus_half_g2_score() -> None:
    sde = VPSDE()
    x = torch.randn(3, 4, dtype=DT, generator=torch.Generator().manual_seed(3))
    score = torch.randn(3, 4, dtype=DT, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([0.1, 0.5, 0.9], dtype=DT)
    f, g = sde.sde(x, t)
    torch.testing.assert_close(drift_of(sde, x, t, score), f - 0.5 * g**2 * score)


def test_probability_flow_transports_gaussian_marginals() -> None:
    """For data N(mu, s^2) the exact-score flow keeps u = (x - m_t) / sqrt(v_t) constant:
    dx/dt = m_t' + (x - m_t) v_t' / (2 v_t),  with m_t = alpha mu, v_t = alpha^2 s^2 + 1 - alpha^2."""
    sde = VPSDE()
    mu, s = torch.tensor([0.7, -1.3], dtype=DT), torch.tensor([0.5, 2.0], dtype=DT)
    x = torch.tensor([[0.0, 0.0], [3.0, -4.0]], dtype=DT)
    for t in (0.05, 0.5, 0.95):
        a = closed_alpha(t)
        beta = 0.1 + 19.9 * t
        da = -0.5 * beta * a
        m, v = a * mu, a * a * s * s + 1 - a * a
        dm, dv = da * mu, 2 * a * da * (s * s - 1)
        score = -(x - m) / v
        expected = dm + (x - m) * dv / (2 * v)
        torch.testing.assert_close(drift_of(sde, x, t, score), expected)


def test_eps_form_of_the_drift_and_divergence_is_the_score_form() -> None:
    """The fused path's eps-prediction drift/divergence equal the score form with s = -eps/std, bit for bit."""
    from AnoDODELib import probability_flow as pf

    sde = VPSDE()
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(5))
    eps = torch.randn(64, 3, generator=torch.Generator().manual_seed(6))
    for t in (1e-3, 0.3, 1.0):
        beta, std = pf.coefficients(sde, t)
        assert beta == pytest.approx(0.1 + 19.9 * t) and std == pytest.approx(
            math.sqrt(1 - closed_alpha(t) ** 2)
        )
        assert torch.equal(pf.eps_drift(x, eps, beta, std), (-0.5 * beta) * (x - eps / std))
        assert torch.equal(pf.eps_drift(x, eps, beta, std), (-0.5 * beta) * (x + (-(eps / std))))
        tr = torch.randn(64, generator=torch.Generator().manual_seed(7))
        assert torch.equal(pf.eps_divergence(3, tr, beta, std), (-0.5 * beta) * (3 - tr / std))


def test_exact_trace_of_a_linear_map_and_the_time_grid() -> None:
    from AnoDODELib import probability_flow as pf

    a = torch.tensor([[2.0, 1.0, 0.0], [0.5, -3.0, 1.0], [0.0, 4.0, 0.25]], dtype=DT)
    x = torch.randn(5, 3, dtype=DT, generator=torch.Generator().manual_seed(8))
    with torch.inference_mode():
        out, tr = pf.exact_trace(lambda v: v @ a.T + v**2, x)  # Jacobian A + diag(2 x)
    torch.testing.assert_close(out, x @ a.T + x**2)
    torch.testing.assert_close(tr, torch.full((5,), float(a.trace()), dtype=DT) + 2 * x.sum(1))
    grid = pf.time_grid(1e-3, 1.0, 4, torch.zeros(1))
    assert grid.dtype == torch.float32 and grid.tolist() == torch.linspace(1e-3, 1.0, 5).tolist()
    ts, kw = pf.ode_schedule(
        "dopri5", 0.5, 1e-3, steps=4, rtol=1e-4, atol=1e-6, like=torch.zeros(1, dtype=DT)
    )
    assert ts.tolist() == [0.5, 1e-3] and kw == {"method": "dopri5", "rtol": 1e-4, "atol": 1e-6}
    with pytest.raises(ValueError, match="unknown ODE method"):
        pf.ode_schedule("leapfrog", 0, 1, steps=1, rtol=1, atol=1, like=x)


def test_a_one_step_grid_is_its_two_end_points() -> None:
    from AnoDODELib import probability_flow as pf

    assert pf.time_grid(0.25, 1.0, 1, torch.zeros(1, dtype=DT)).tolist() == [0.25, 1.0]
    with pytest.raises(ValueError, match="steps must be >= 1"):
        pf.time_grid(0.25, 1.0, 0, torch.zeros(1))
