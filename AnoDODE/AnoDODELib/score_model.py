"""The score network: an epsilon-prediction MLP applied independently at every feature location."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .config import ScoreNetConfig
from .sde import VPSDE


class FourierTime(nn.Module):
    """Sinusoidal embedding of t in [0, 1]: [sin(2 pi f_k t), cos(2 pi f_k t)], f_k log-spaced in [1, 64]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.logspace(0, math.log10(64.0), dim // 2) * 2 * math.pi)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        arg = t[:, None] * self.freqs
        return torch.cat([arg.sin(), arg.cos()], dim=1)


class PointwiseScoreNet(nn.Module):
    """eps_hat(x, t, c): x (N, C) noisy standardised features, t (N,) or (), c (N, K) context -> (N, C).

    No normalisation layers mix samples, so row i of the output depends on row i of the input only and
    the exact divergence is C vector-Jacobian products.
    """

    def __init__(self, cfg: ScoreNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.time = FourierTime(cfg.time_embedding)
        width = cfg.channels + cfg.cond_channels + 2 * (cfg.time_embedding // 2)
        layers: list[nn.Module] = []
        for _ in range(cfg.layers):
            layers += [nn.Linear(width, cfg.hidden), nn.SiLU()]
            width = cfg.hidden
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(width, cfg.channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        h = torch.cat([x, cond.to(x.dtype), self.time(t)], dim=1)
        return self.out(self.body(h))


ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def score_fn(model: nn.Module, sde: VPSDE, cond: torch.Tensor) -> ScoreFn:
    """score(x, t) = -eps_hat(x, t, cond) / std(t)  (the score of the VP-SDE marginal p_t)."""

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        _, std = sde.marginal_prob(torch.ones(()), t)
        return -model(x, t, cond) / std.to(x)

    return fn


def dsm_loss(model: nn.Module, sde: VPSDE, x0: torch.Tensor, cond: torch.Tensor, t_eps: float = 1e-3,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Denoising score matching, epsilon form: E_{t, eps} ||eps_hat(alpha x0 + std eps, t) - eps||^2 / C."""
    n = x0.shape[0]
    t = torch.rand(n, generator=generator).to(x0) * (1 - t_eps) + t_eps
    eps = torch.randn(x0.shape, generator=generator).to(x0)
    mean, std = sde.marginal_prob(x0, t)
    return (model(mean + std * eps, t, cond) - eps).pow(2).mean()


