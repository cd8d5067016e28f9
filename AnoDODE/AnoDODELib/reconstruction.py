"""Reconstruction-based localisation (the paper's): noise the features part-way, integrate the ODE back.

    x_s = alpha(s) x_0 + std(s) e,   e ~ N(0, I)          (forward marginal at s = t_start)
    x_rec = x(t_eps) solving dx/dt = f - 1/2 g^2 score from t = s down to t_eps
A normal x_0 comes back close to itself; an anomalous one is pulled toward what the model finds likely,
so x_0 - x_rec shows where and how a location departs from normal.
"""
from __future__ import annotations

import torch
from torchdiffeq import odeint

from .score_model import ScoreFn
from .sde import VPSDE


def reconstruct(score_fn: ScoreFn, sde: VPSDE, x0: torch.Tensor, *, t_start: float = 0.3,
                noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
                method: str = "rk4", steps: int = 8, t_eps: float = 1e-3) -> torch.Tensor:
    """Reconstruction of x0 (N, ...) after noising to ``t_start``; same shape as x0."""
    if not t_eps < t_start <= 1.0:
        raise ValueError(f"t_start must lie in ({t_eps}, 1], got {t_start}")
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator).to(x0)
    mean, std = sde.marginal_prob(x0, t_start)
    xs = mean + std * noise

    def dynamics(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return sde.probability_flow_drift(x, t, score_fn(x, t))

    ts = torch.tensor([t_start, t_eps], dtype=x0.dtype, device=x0.device)
    with torch.no_grad():
        return odeint(dynamics, xs, ts, method=method, options={"step_size": (t_start - t_eps) / steps})[-1]
