"""The probability-flow ODE of the VP-SDE: its drift, its time grid and the exact trace of a Jacobian.

Each is written here once and used by every integrator (``likelihood``, ``reconstruction`` and the fused
fixed-step path of ``fast_ode``).

Drift (Song et al. 2021), with f(x, t) = -1/2 beta(t) x and g(t)^2 = beta(t) of the VP-SDE:

    v(x, t) = f(x, t) - 1/2 g(t)^2 s(x, t) = -1/2 beta(t) (x + s(x, t))

where s is the score; an eps-prediction network gives s = -eps / std(t), so v = -1/2 beta (x - eps / std).
Its divergence is div_x v = -1/2 beta(t) (C + tr(ds/dx)), C the number of dims of one sample.

Time grid: fixed-step methods take ``steps`` uniform steps, t_k = t0 + k (t1 - t0) / steps, computed with
``torch.linspace`` on the CPU in the sample's dtype (so a chunk's grid does not depend on its device);
adaptive methods get [t0, t1] and tolerances.

Exact trace: tr(d f / d x) of a function applied row by row (rows are independent samples, so the
Jacobian is block diagonal), one reverse-mode VJP per dimension d of a sample: the d-th column of the
Jacobian summed over rows gives the d-th diagonal entry of every row's block.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .sde import VPSDE, Time, _as_time, append_dims

FIXED_STEP_METHODS = ("euler", "midpoint", "rk4", "explicit_adams", "implicit_adams")
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
METHODS = FIXED_STEP_METHODS + ADAPTIVE_METHODS


def drift(sde: VPSDE, x: torch.Tensor, t: Time, score: torch.Tensor) -> torch.Tensor:
    """v(x, t) = -1/2 beta(t) (x + score) (shape of x); t a float, 0-d or per-row (N,) tensor."""
    beta = sde.beta(_as_time(t, x))
    if beta.ndim:
        beta = append_dims(beta, x.ndim)
    return (-0.5 * beta) * (x + score)


def coefficients(sde: VPSDE, t: float) -> tuple[float, float]:
    """(beta(t), std(t)) as python floats, computed in float64: the scalars of one fixed step."""
    tt = torch.tensor(float(t), dtype=torch.float64)
    return float(sde.beta(tt)), float(sde.marginal_std(tt))


def eps_drift(x: torch.Tensor, eps: torch.Tensor, beta: float, std: float) -> torch.Tensor:
    """v for an eps-prediction network at scalar coefficients: -1/2 beta (x + s), s = -eps / std."""
    return (-0.5 * beta) * (x + eps / -std)


def eps_divergence(channels: int, eps_trace: torch.Tensor, beta: float, std: float) -> torch.Tensor:
    """div_x v = -1/2 beta (C + tr(ds/dx)), tr(ds/dx) = -tr(d eps/dx) / std, per row."""
    return (-0.5 * beta) * (channels + eps_trace / -std)


def time_grid(t0: float, t1: float, steps: int, like: torch.Tensor) -> torch.Tensor:
    """``steps`` + 1 uniform times from t0 to t1 (linspace on the CPU in ``like``'s dtype, then on its device)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(t0, t1, steps + 1, dtype=like.dtype).to(like.device)


def ode_schedule(
    method: str, t0: float, t1: float, *, steps: int, rtol: float, atol: float, like: torch.Tensor
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Time grid and ``torchdiffeq.odeint`` keyword arguments integrating from t0 to t1 (the solution is
    the one at ``ts[-1]``): fixed-step methods the ``time_grid``, adaptive ones [t0, t1] with rtol/atol."""
    if method not in METHODS:
        raise ValueError(f"unknown ODE method {method!r}; valid: {', '.join(METHODS)}")
    if method in FIXED_STEP_METHODS:
        return time_grid(t0, t1, steps, like), {"method": method}
    ts = torch.tensor([t0, t1], dtype=like.dtype, device=like.device)
    return ts, {"method": method, "rtol": rtol, "atol": atol}


def exact_trace(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """fn(x) and, per row, tr(d fn / d x) by one VJP per dimension of a row; both detached.

    ``fn`` maps (N, ...) to the same shape and treats rows independently. Runs under its own
    enable_grad (works inside inference_mode); no gradient reaches x or fn's parameters' callers.
    """
    with torch.inference_mode(False), torch.enable_grad():
        xt = x.detach().clone().requires_grad_(True)
        out = fn(xt)
        n, d = x.shape[0], x[0].numel()
        flat = out.reshape(n, d)
        trace = torch.zeros(n, dtype=x.dtype, device=x.device)
        for j in range(d):
            (grad,) = torch.autograd.grad(flat[:, j].sum(), xt, retain_graph=j < d - 1)
            trace = trace + grad.reshape(n, d)[:, j]
    return out.detach(), trace.detach()
