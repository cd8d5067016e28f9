"""Variance-preserving SDE (Song et al. 2021, "score_sde" VP-SDE) on t in [0, 1].

    dx = f(x, t) dt + g(t) dW,    f(x, t) = -1/2 beta(t) x,    g(t) = sqrt(beta(t))
    beta(t) = beta_min + t (beta_max - beta_min)
    p_t(x_t | x_0) = N(alpha(t) x_0, std(t)^2 I),   alpha(t) = exp(-1/2 int_0^t beta),   std = sqrt(1 - alpha^2)

Times ``t`` may be a python float, a 0-d tensor or a (batch,) tensor; per-sample times are broadcast over
the trailing dims of ``x`` with :func:`append_dims`.
"""

from __future__ import annotations

import math

import torch

from .config import SDEConfig

Time = torch.Tensor | float


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """``v`` with trailing singleton dims appended until it has ``ndim`` dims (k-diffusion style).

    A (batch,) tensor becomes (batch, 1, ..., 1) so it broadcasts against a (batch, ...) tensor; a 0-d
    tensor with ``ndim`` 0 is returned unchanged.
    """
    extra = ndim - v.ndim
    if extra < 0:
        raise ValueError(f"cannot append dims to a {v.ndim}-d tensor to make it {ndim}-d")
    return v[(...,) + (None,) * extra]


def _as_time(t: Time, like: torch.Tensor | None = None) -> torch.Tensor:
    """t as a floating tensor, with ``like``'s dtype and device when given."""
    if like is not None:
        return torch.as_tensor(t, dtype=like.dtype, device=like.device)
    t = torch.as_tensor(t)
    return t if t.is_floating_point() else t.to(torch.get_default_dtype())


class VPSDE:
    """The VP-SDE with linear beta; see the module docstring for the equations."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        if not 0.0 <= beta_min <= beta_max:
            raise ValueError(f"need 0 <= beta_min <= beta_max, got {beta_min}, {beta_max}")
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    @classmethod
    def from_config(cls, cfg: SDEConfig) -> VPSDE:
        """The SDE with the config's beta_min and beta_max."""
        return cls(cfg.beta_min, cfg.beta_max)

    def __repr__(self) -> str:
        return f"VPSDE(beta_min={self.beta_min}, beta_max={self.beta_max})"

    def beta(self, t: Time) -> torch.Tensor:
        """beta(t) = beta_min + t (beta_max - beta_min); same shape as t."""
        t = _as_time(t)
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integral_beta(self, t: Time) -> torch.Tensor:
        """int_0^t beta(s) ds = beta_min t + 1/2 (beta_max - beta_min) t^2; same shape as t."""
        t = _as_time(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t

    def alpha(self, t: Time) -> torch.Tensor:
        """alpha(t) = exp(-1/2 int_0^t beta): the mean scale of p_t(x_t | x_0); same shape as t."""
        return torch.exp(-0.5 * self.integral_beta(t))

    def marginal_std(self, t: Time) -> torch.Tensor:
        """std(t) = sqrt(1 - alpha(t)^2), computed as sqrt(-expm1(-int beta)) (accurate near t = 0)."""
        return torch.sqrt(-torch.expm1(-self.integral_beta(t)))

    def sde(self, x: torch.Tensor, t: Time) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift f(x, t) = -1/2 beta(t) x (shape of x) and diffusion g(t) = sqrt(beta(t)).

        g has t's shape with trailing dims appended so that it broadcasts against x.
        """
        beta = self.beta(_as_time(t, x))
        if beta.ndim:
            beta = append_dims(beta, x.ndim)
        return -0.5 * beta * x, torch.sqrt(beta)

    def marginal_prob(self, x: torch.Tensor, t: Time) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean alpha(t) x (shape of x) and std sqrt(1 - alpha(t)^2) (broadcastable to x) of p_t(. | x_0 = x)."""
        t = _as_time(t, x)
        if t.ndim:
            t = append_dims(t, x.ndim)
        return self.alpha(t) * x, self.marginal_std(t)

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, I) in nats, summed over all non-batch dims of z (batch, ...) -> (batch,)."""
        d = z[0].numel()
        return -0.5 * d * math.log(2.0 * math.pi) - 0.5 * z.reshape(z.shape[0], -1).pow(2).sum(1)
