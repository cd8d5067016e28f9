"""The score network: an epsilon-prediction MLP applied independently at every feature location.

    eps_hat = net([x, c, emb(t)]),      score(x, t) = grad_x log p_t(x) ~= -eps_hat(x, t, c) / std(t)

trained by denoising score matching in epsilon form (:func:`dsm_loss`). Rows of ``x`` are independent
samples (no batch normalisation or any other mixing across rows), which the exact divergence in
``likelihood.py`` relies on.

The module layout (``time.freqs``, ``body.{0,2,...}``, ``out``) is the state-dict format of saved bundles;
changing it breaks ``weights.pt`` files already shipped.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .config import ScoreNetConfig
from .sde import VPSDE, append_dims

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""score(x, t): x (N, ...), t a 0-d or (N,) tensor -> grad_x log p_t(x), shape of x."""


class FourierTime(nn.Module):
    """Sinusoidal embedding of t in [0, 1]: [sin(w_k t), cos(w_k t)], w_k = 2 pi f_k, f_k log-spaced in [1, 64].

    Output width ``2 * (dim // 2)``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        freqs = 2.0 * math.pi * torch.logspace(0.0, math.log10(64.0), dim // 2)
        self.register_buffer("freqs", freqs)

    @property
    def width(self) -> int:
        """Output width, 2 * (dim // 2): a sine and a cosine per frequency."""
        return 2 * self.freqs.numel()

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t (N,) -> (N, width)."""
        angle = t[:, None] * self.freqs.to(t)
        return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)


class PointwiseScoreNet(nn.Module):
    """eps_hat(x, t, c): an MLP on [x, c, emb(t)] with ``cfg.layers`` SiLU hidden layers of width ``cfg.hidden``.

    x: (N, C) noisy standardised features, t: (N,) or 0-d diffusion times in [0, 1], c: (N, K) context.
    Returns eps_hat (N, C), the predicted unit-variance noise. The last layer is zero-initialised, so an
    untrained network predicts eps_hat = 0 (score = 0).
    """

    def __init__(self, cfg: ScoreNetConfig) -> None:
        super().__init__()
        if cfg.channels is None or cfg.cond_channels is None:
            raise ValueError(
                "ScoreNetConfig.channels and cond_channels must be given for a stand-alone network "
                "(a ModelConfig derives them from its features)"
            )
        self.cfg = cfg
        self.time = FourierTime(cfg.time_embedding)
        width = cfg.channels + cfg.cond_channels + self.time.width
        layers: list[nn.Module] = []
        for _ in range(cfg.layers):
            layers += [nn.Linear(width, cfg.hidden), nn.SiLU()]
            width = cfg.hidden
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(width, cfg.channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor) -> torch.Tensor:
        """eps_hat(x, t, c): x (N, C), t 0-d or (N,), cond (N, K) -> (N, C); ValueError on a wrong shape."""
        if x.ndim != 2 or x.shape[1] != self.cfg.channels:
            raise ValueError(f"x must be (N, {self.cfg.channels}), got {tuple(x.shape)}")
        if cond.shape != (x.shape[0], self.cfg.cond_channels):
            raise ValueError(
                f"cond must be ({x.shape[0]}, {self.cfg.cond_channels}), got {tuple(cond.shape)}"
            )
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        h = torch.cat([x, cond.to(x.dtype), self.time(t)], dim=1)
        return self.out(self.body(h))


def score_fn(model: nn.Module, sde: VPSDE, cond: torch.Tensor) -> ScoreFn:
    """The score function of ``model`` with fixed context: score(x, t) = -eps_hat(x, t, cond) / std(t).

    cond (N, K) must match the rows of the x passed to the returned function.
    """

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        std = sde.marginal_std(t)
        if std.ndim:
            std = append_dims(std, x.ndim)
        return -model(x, t, cond) / std

    return score


def dsm_loss(
    model: nn.Module,
    sde: VPSDE,
    x0: torch.Tensor,
    cond: torch.Tensor,
    t_eps: float = 1e-3,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Denoising score matching, epsilon form (a scalar, in squared noise units):

        t ~ U(t_eps, 1),  eps ~ N(0, I),  x_t = alpha(t) x0 + std(t) eps,
        loss = mean over rows and channels of (eps_hat(x_t, t, cond) - eps)^2  = E ||eps_hat - eps||^2 / C.

    x0 (N, C) clean features, cond (N, K). ``generator`` (a CPU generator) makes t and eps reproducible.
    """
    n = x0.shape[0]
    t = t_eps + (1.0 - t_eps) * torch.rand(n, generator=generator, dtype=x0.dtype).to(x0.device)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    mean, std = sde.marginal_prob(x0, t)
    eps_hat = model(mean + std * eps, t, cond)
    return (eps_hat - eps).pow(2).mean()
