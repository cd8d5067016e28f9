"""Probability-flow ODE likelihood against closed forms, and Hutchinson against the exact trace."""

from __future__ import annotations

import math

import pytest
import torch

from AnoDODELib.config import ScoreNetConfig, SolverConfig
from AnoDODELib.likelihood import LikelihoodResult, log_likelihood, solver_kwargs
from AnoDODELib.probability_flow import ADAPTIVE_METHODS, FIXED_STEP_METHODS
from AnoDODELib.score_model import PointwiseScoreNet, dsm_loss, score_fn
from AnoDODELib.sde import VPSDE

DT = torch.float64
T_EPS = 1e-3
LN2 = math.log(2.0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: intra-op threads only add contention on a busy 2-core runner."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class GaussianData:
    """Data N(mu, diag s^2); under the VP-SDE its marginal at t is N(alpha mu, alpha^2 s^2 + 1 - alpha^2)."""

    def __init__(self, sde: VPSDE, mu: list[float], s: list[float]) -> None:
        self.sde = sde
        self.mu, self.s = torch.tensor(mu, dtype=DT), torch.tensor(s, dtype=DT)

    def marginal(self, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.sde.alpha(torch.as_tensor(t, dtype=DT))
        return a * self.mu, a * a * self.s**2 + 1 - a * a

    def score(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        m, v = self.marginal(t)
        return -(x - m) / v

    def nll(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """-log p_t(x) in nats, (N,)."""
        m, v = self.marginal(t)
        return 0.5 * (torch.log(2 * math.pi * v) + (x - m) ** 2 / v).sum(-1)

    def expected_nll(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """What the method computes: -log p_{t_eps}(x) plus the N(0, I)-for-p_1 prior mismatch at z = x(1)."""
        return self.nll(x, T_EPS) - self.nll(z, 1.0) - self.sde.prior_logp(z)

    def transport(self, x: torch.Tensor, t_from: float, t_to: float) -> torch.Tensor:
        """The exact flow map: (x - m_t) / sqrt(v_t) is constant along the probability-flow ODE."""
        m0, v0 = self.marginal(t_from)
        m1, v1 = self.marginal(t_to)
        return m1 + torch.sqrt(v1 / v0) * (x - m0)


@pytest.fixture(scope="module")
def gauss() -> GaussianData:
    """Standard deviations whose product is 1.5, not 1: the change of variables adds log(1.5) = 0.41 nats
    (0.19 bits/dim) to the NLL, so a sign error in the divergence integral shows (with a product of 1 that
    term was nearly 0 and a flipped sign passed)."""
    g = GaussianData(VPSDE(), mu=[0.5, -1.0, 1.5], s=[0.5, 1.0, 3.0])
    assert abs(math.log(float(g.s.prod()))) > 0.3
    return g


@pytest.fixture(scope="module")
def points(gauss: GaussianData) -> torch.Tensor:
    """The mean, a typical point and two outliers (4 sd, and far off)."""
    mu, s = gauss.mu, gauss.s
    return torch.stack(
        [
            mu,
            mu + s * torch.tensor([1.0, -1.0, 0.5], dtype=DT),
            mu + 4 * s * torch.tensor([1.0, 1.0, -1.0], dtype=DT),
            torch.tensor([-3.0, 3.0, 5.0], dtype=DT),
        ]
    )


def test_gaussian_nll_matches_closed_form_accurate_solver(gauss: GaussianData, points: torch.Tensor) -> None:
    res = log_likelihood(gauss.score, gauss.sde, points, method="dopri5", rtol=1e-9, atol=1e-9, t_eps=T_EPS)
    assert isinstance(res, LikelihoodResult) and res.nfe > 0
    expected = gauss.expected_nll(points, res.prior_z)
    d = points.shape[1]
    torch.testing.assert_close(res.bpd, expected / (d * LN2), atol=1e-4, rtol=0.0)
    torch.testing.assert_close(res.bpd, res.nll_nats / (d * LN2))
    torch.testing.assert_close(res.prior_z, gauss.transport(points, T_EPS, 1.0), atol=1e-6, rtol=0.0)
    # the outliers are less likely than the mean
    assert res.nll_nats[0] < res.nll_nats[1] < res.nll_nats[2]


def test_gaussian_nll_default_rk4_within_stated_tolerance(gauss: GaussianData, points: torch.Tensor) -> None:
    """The default 8-step RK4 is within 0.05 bits/dim here; 32 steps are within 1e-3."""
    d = points.shape[1]
    errors = []
    for steps in (8, 32):
        res = log_likelihood(gauss.score, gauss.sde, points, method="rk4", steps=steps)
        assert res.nfe == 4 * steps
        errors.append((res.bpd - gauss.expected_nll(points, res.prior_z) / (d * LN2)).abs().max().item())
    assert errors[0] < 0.05 and errors[1] < 1e-3 and errors[1] < errors[0] / 10, errors


def test_standard_normal_data_is_a_fixed_point() -> None:
    """Data N(0, I): score = -x, the drift vanishes, z = x and the NLL is the prior's exactly."""
    sde = VPSDE()
    x = torch.tensor([[0.3, -2.0], [4.0, 1.0]], dtype=DT)
    res = log_likelihood(lambda y, t: -y, sde, x, method="euler", steps=5)
    assert res.nfe == 5
    torch.testing.assert_close(res.prior_z, x)
    torch.testing.assert_close(res.nll_nats, -sde.prior_logp(x))


def test_multidimensional_samples_flatten(gauss: GaussianData) -> None:
    """x (N, 2, 3) gives the same result as its (N, 6) flattening; D counts all non-batch dims."""
    g6 = GaussianData(gauss.sde, mu=[0.5, -1.0, 1.5, 0.0, 2.0, -0.5], s=[0.5, 1.0, 2.0, 1.5, 0.7, 1.2])
    x = torch.randn(4, 6, dtype=DT, generator=torch.Generator().manual_seed(0)) * 2

    def score_3d(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return g6.score(y.reshape(-1, 6), t).reshape(y.shape)

    flat = log_likelihood(g6.score, g6.sde, x)
    cube = log_likelihood(score_3d, g6.sde, x.reshape(4, 2, 3))
    torch.testing.assert_close(cube.nll_nats, flat.nll_nats)
    torch.testing.assert_close(cube.bpd, flat.nll_nats / (6 * LN2))
    assert cube.prior_z.shape == (4, 2, 3)


def test_rows_are_independent_samples(gauss: GaussianData, points: torch.Tensor) -> None:
    batch = log_likelihood(gauss.score, gauss.sde, points)
    for i in range(points.shape[0]):
        alone = log_likelihood(gauss.score, gauss.sde, points[i : i + 1])
        torch.testing.assert_close(alone.nll_nats, batch.nll_nats[i : i + 1], rtol=1e-12, atol=1e-12)


def test_rademacher_hutchinson_is_exact_for_a_diagonal_jacobian(
    gauss: GaussianData, points: torch.Tensor
) -> None:
    """The Gaussian score has a diagonal Jacobian, and e^T J e = tr J when e_i^2 = 1."""
    exact = log_likelihood(gauss.score, gauss.sde, points)
    rad = log_likelihood(
        gauss.score, gauss.sde, points, divergence="hutchinson", generator=torch.Generator().manual_seed(0)
    )
    gau = log_likelihood(
        gauss.score,
        gauss.sde,
        points,
        divergence="hutchinson",
        noise="gaussian",
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(rad.nll_nats, exact.nll_nats, rtol=0.0, atol=1e-10)
    assert (gau.nll_nats - exact.nll_nats).abs().max() > 1e-3


def test_option_strings_are_compared_by_value(gauss: GaussianData, points: torch.Tensor) -> None:
    """Options built at run time (read from a file, joined) are new string objects, not the interned
    literals: "gaussian" probes must still be Gaussian, so their estimate differs from Rademacher's exact one."""
    noise = "".join(["gauss", "ian"])
    a = log_likelihood(
        gauss.score,
        gauss.sde,
        points,
        divergence="hutchinson",
        noise=noise,
        generator=torch.Generator().manual_seed(0),
    )
    b = log_likelihood(
        gauss.score,
        gauss.sde,
        points,
        divergence="hutchinson",
        noise="gaussian",
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(a.nll_nats, b.nll_nats, rtol=0.0, atol=0.0)


# ---------------------------------------------------------------- a trained network on a 2-D mixture


def mixture(n: int, gen: torch.Generator) -> torch.Tensor:
    """Two Gaussians (sd 0.3) at +-(1, 1): the score's Jacobian has off-diagonal terms between the modes."""
    sign = torch.randint(0, 2, (n, 1), generator=gen).to(DT) * 2 - 1
    return sign * torch.tensor([1.0, 1.0], dtype=DT) + 0.3 * torch.randn(n, 2, generator=gen, dtype=DT)


@pytest.fixture(scope="module")
def trained() -> tuple[PointwiseScoreNet, VPSDE]:
    torch.manual_seed(0)
    sde = VPSDE()
    net = PointwiseScoreNet(
        ScoreNetConfig(channels=2, cond_channels=1, hidden=32, layers=2, time_embedding=8)
    )
    net = net.double()
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(300):
        loss = dsm_loss(net, sde, mixture(256, gen), torch.zeros(256, 1, dtype=DT), generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval(), sde


TOY_POINTS = torch.tensor(
    [[1.0, 1.0], [-1.0, -1.0], [0.0, 0.0], [1.0, -1.0], [2.5, 0.5], [-3.0, 3.0]], dtype=DT
)


def _fn(net: PointwiseScoreNet, sde: VPSDE, n: int):
    return score_fn(net, sde, torch.zeros(n, 1, dtype=DT))


def test_exact_trace_is_deterministic_and_ranks_outliers(trained) -> None:
    net, sde = trained
    a = log_likelihood(_fn(net, sde, 6), sde, TOY_POINTS)
    b = log_likelihood(_fn(net, sde, 6), sde, TOY_POINTS)
    assert torch.equal(a.nll_nats, b.nll_nats) and torch.equal(a.prior_z, b.prior_z)
    # the modes are likelier than the saddle between them, which is likelier than the far outlier
    assert max(a.nll_nats[0], a.nll_nats[1]) < a.nll_nats[2] < a.nll_nats[5]


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_for_the_exact_trace(trained, noise: str) -> None:
    """Each point replicated R times (rows are independent, each gets its own probe); with fixed-step RK4
    the x trajectory is identical, so the mean Hutchinson NLL must match the exact one up to its standard
    error. The probes are fixed along the trajectory but differ between rows: a real spread."""
    net, sde = trained
    n, reps = TOY_POINTS.shape[0], 200
    exact = log_likelihood(_fn(net, sde, n), sde, TOY_POINTS)
    hutch = log_likelihood(
        _fn(net, sde, n * reps),
        sde,
        TOY_POINTS.repeat_interleave(reps, 0),
        divergence="hutchinson",
        noise=noise,
        generator=torch.Generator().manual_seed(1),
    )
    assert hutch.nfe == exact.nfe == 32
    est = hutch.nll_nats.reshape(n, reps)
    spread = est.std(1)
    assert (spread > 1e-3).all(), spread
    stderr = spread / math.sqrt(reps)
    assert ((est.mean(1) - exact.nll_nats).abs() < 3.5 * stderr).all(), (est.mean(1), exact.nll_nats, stderr)


def test_more_probes_reduce_the_spread(trained) -> None:
    net, sde = trained
    x = TOY_POINTS[2:3].repeat(100, 1)
    spreads = [
        log_likelihood(
            _fn(net, sde, 100),
            sde,
            x,
            divergence="hutchinson",
            n_probes=k,
            generator=torch.Generator().manual_seed(2),
        )
        .nll_nats.std()
        .item()
        for k in (1, 8)
    ]
    assert spreads[1] < 0.6 * spreads[0], spreads  # ~ 1/sqrt(8) = 0.35 expected


def test_hutchinson_reproducible_with_a_seed(trained) -> None:
    net, sde = trained

    def run(seed: int) -> torch.Tensor:
        return log_likelihood(
            _fn(net, sde, 6),
            sde,
            TOY_POINTS,
            divergence="hutchinson",
            generator=torch.Generator().manual_seed(seed),
        ).nll_nats

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_works_under_no_grad_and_inference_mode(trained) -> None:
    net, sde = trained
    x = TOY_POINTS.float()
    net32 = PointwiseScoreNet(net.cfg)
    net32.load_state_dict({k: v.float() for k, v in net.state_dict().items()})
    fn = score_fn(net32, sde, torch.zeros(6, 1))
    ref = log_likelihood(fn, sde, x)
    with torch.no_grad():
        a = log_likelihood(fn, sde, x)
    with torch.inference_mode():
        b = log_likelihood(fn, sde, x)
    assert ref.nll_nats.dtype == torch.float32 and not ref.nll_nats.requires_grad
    torch.testing.assert_close(a.nll_nats, ref.nll_nats)
    torch.testing.assert_close(b.nll_nats, ref.nll_nats)


# ---------------------------------------------------------------- options


@pytest.mark.parametrize("method,steps,nfe", [("euler", 8, 8), ("midpoint", 8, 16), ("rk4", 3, 12)])
def test_fixed_step_nfe(gauss: GaussianData, points: torch.Tensor, method: str, steps: int, nfe: int) -> None:
    assert log_likelihood(gauss.score, gauss.sde, points, method=method, steps=steps).nfe == nfe


@pytest.mark.parametrize("method", ["bosh3", "dopri8"])
def test_adaptive_methods_use_tolerances(gauss: GaussianData, points: torch.Tensor, method: str) -> None:
    loose = log_likelihood(gauss.score, gauss.sde, points, method=method, rtol=1e-3, atol=1e-3)
    tight = log_likelihood(gauss.score, gauss.sde, points, method=method, rtol=1e-7, atol=1e-7)
    assert tight.nfe > loose.nfe
    err = (tight.nll_nats - gauss.expected_nll(points, tight.prior_z)).abs().max()
    assert err < 1e-4


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"method": "rk5"}, "rk4"),
        ({"method": "scipy_solver"}, "dopri5"),
        ({"divergence": "hessian"}, "exact, hutchinson"),
        ({"divergence": "hutchinson", "noise": "uniform"}, "rademacher, gaussian"),
        ({"noise": "uniform"}, "rademacher"),
        ({"divergence": "hutchinson", "n_probes": 0}, "n_probes"),
        ({"method": "euler", "steps": 0}, "steps"),
    ],
)
def test_bad_options_raise(gauss: GaussianData, points: torch.Tensor, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        log_likelihood(gauss.score, gauss.sde, points, **kwargs)


def test_method_lists_are_torchdiffeq_solvers() -> None:
    import sys

    import torchdiffeq  # noqa: F401

    solvers = sys.modules["torchdiffeq._impl.odeint"].SOLVERS
    assert set(FIXED_STEP_METHODS + ADAPTIVE_METHODS) <= set(solvers)


def test_solver_kwargs(gauss: GaussianData, points: torch.Tensor) -> None:
    cfg = SolverConfig(
        method="euler", steps=3, rtol=1e-4, atol=1e-6, divergence="hutchinson", n_probes=2, t_eps=1e-2
    )
    kw = solver_kwargs(cfg)
    assert kw == {
        "method": "euler",
        "steps": 3,
        "rtol": 1e-4,
        "atol": 1e-6,
        "divergence": "hutchinson",
        "n_probes": 2,
        "t_eps": 1e-2,
    }
    assert log_likelihood(gauss.score, gauss.sde, points, **kw).nfe == 3
    assert log_likelihood(gauss.score, gauss.sde, points, **solver_kwargs(SolverConfig())).nfe == 32
