"""Reconstruction-based localisation (the paper's): noise the features part-way, integrate the ODE back.

    x_s   = alpha(s) x_0 + std(s) e,   e ~ N(0, I)                 forward marginal at s = t_start
    x_rec = x(t_eps),  dx/dt = f(x, t) - 1/2 g(t)^2 score(x, t)   integrated from t = s down to t_eps

A normal x_0 comes back close to itself; an anomalous one is pulled toward what the model finds likely,
so the residual x_0 - x_rec shows where and how a location departs from normal (in the units of x, i.e.
standardised features).
"""

from __future__ import annotations

import torch
from torchdiffeq import odeint

from . import probability_flow as pf
from .score_model import ScoreFn
from .sde import VPSDE


def reconstruct(
    score_fn: ScoreFn,
    sde: VPSDE,
    x0: torch.Tensor,
    *,
    t_start: float = 0.3,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    method: str = "rk4",
    steps: int = 8,
    t_eps: float = 1e-3,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> torch.Tensor:
    """Reconstruction of x0 (N, ...) after noising it to ``t_start``; same shape and dtype as x0.

    ``noise`` (shape of x0) is the e above; when None it is drawn from ``generator`` (CPU). Fixed-step
    methods take ``steps`` uniform steps from t_start to t_eps; adaptive ones use rtol/atol. No gradients.
    """
    if not t_eps < t_start <= 1.0:
        raise ValueError(f"t_start must lie in (t_eps={t_eps}, 1], got {t_start}")
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    elif noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} differs from x0 shape {tuple(x0.shape)}")
    ts, kwargs = pf.ode_schedule(method, t_start, t_eps, steps=steps, rtol=rtol, atol=atol, like=x0)

    def dynamics(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return pf.drift(sde, x, t, score_fn(x, t))

    with torch.no_grad():
        mean, std = sde.marginal_prob(x0, t_start)
        x_start = mean + std * noise.to(x0)
        return odeint(dynamics, x_start, ts, **kwargs)[-1]


def reconstruction_error(x0: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    """Squared reconstruction error per sample: sum over non-batch dims of (x0 - x_rec)^2 -> (N,).

    The signed residual itself is simply ``x0 - x_rec`` (positive where x0 is brighter than normal).
    """
    return (x0 - x_rec).reshape(x0.shape[0], -1).pow(2).sum(1)
