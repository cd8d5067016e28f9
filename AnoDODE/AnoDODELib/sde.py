"""Variance-preserving SDE (Song et al. 2021): dx = -1/2 beta(t) x dt + sqrt(beta(t)) dW, t in [0, 1]."""
from __future__ import annotations

import math

import torch

from .config import SDEConfig


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dims to ``v`` until it has ``ndim`` dims (for broadcasting over a batch)."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


class VPSDE:
    """beta(t) = beta_min + t (beta_max - beta_min);  alpha(t) = exp(-1/2 int_0^t beta);  std = sqrt(1 - alpha^2)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    @classmethod
    def from_config(cls, cfg: SDEConfig) -> "VPSDE":
        return cls(cfg.beta_min, cfg.beta_max)

    def beta(self, t: torch.Tensor | float) -> torch.Tensor:
        t = torch.as_tensor(t)
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integral_beta(self, t: torch.Tensor | float) -> torch.Tensor:
        t = torch.as_tensor(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t ** 2

    def sde(self, x: torch.Tensor, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift f(x, t) = -1/2 beta x and diffusion g(t) = sqrt(beta) (broadcast over x's batch)."""
        beta = append_dims(self.beta(t).to(x), x.ndim) if torch.as_tensor(t).ndim else self.beta(t).to(x)
        return -0.5 * beta * x, torch.sqrt(beta)

    def marginal_prob(self, x: torch.Tensor, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean alpha(t) x and std sqrt(1 - alpha(t)^2) of p_t(x_t | x_0 = x)."""
        log_alpha = -0.5 * self.integral_beta(t).to(x)
        if log_alpha.ndim:
            log_alpha = append_dims(log_alpha, x.ndim)
        return torch.exp(log_alpha) * x, torch.sqrt(-torch.expm1(2 * log_alpha))

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, I) in nats, summed over all non-batch dims -> (batch,)."""
        d = z[0].numel()
        return -0.5 * d * math.log(2 * math.pi) - 0.5 * z.flatten(1).pow(2).sum(1)

    def probability_flow_drift(self, x: torch.Tensor, t: torch.Tensor | float, score: torch.Tensor) -> torch.Tensor:
        """dx/dt = f(x, t) - 1/2 g(t)^2 score(x, t): the ODE whose marginals equal the SDE's."""
        drift, g = self.sde(x, t)
        return drift - 0.5 * g ** 2 * score
