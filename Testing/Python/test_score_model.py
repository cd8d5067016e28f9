"""PointwiseScoreNet, score_fn and dsm_loss."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from AnoDODELib.config import ScoreNetConfig
from AnoDODELib.score_model import FourierTime, PointwiseScoreNet, dsm_loss, score_fn
from AnoDODELib.sde import VPSDE

BUNDLE_WEIGHTS = (
    Path(__file__).resolve().parents[2]
    / "AnoDODE"
    / "Resources"
    / "Models"
    / "anodode-flair-brats"
    / "weights.pt"
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: intra-op threads only add contention on a busy 2-core runner."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def perturbed(net: PointwiseScoreNet, seed: int = 0, scale: float = 0.3) -> PointwiseScoreNet:
    """The net with all weights (including the zero last layer) randomly nudged."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return net


def mixture(n: int, gen: torch.Generator) -> torch.Tensor:
    """A 2-D two-component Gaussian mixture at +-(1, 1), sd 0.3."""
    sign = torch.randint(0, 2, (n, 1), generator=gen).float() * 2 - 1
    return sign * torch.tensor([1.0, 1.0]) + 0.3 * torch.randn(n, 2, generator=gen)


@pytest.mark.parametrize("channels,cond_channels,n", [(3, 4, 5), (1, 0, 1), (2, 1, 7)])
@pytest.mark.parametrize("t_kind", ["scalar", "batch", "float"])
def test_output_shapes(channels: int, cond_channels: int, n: int, t_kind: str) -> None:
    net = PointwiseScoreNet(
        ScoreNetConfig(channels=channels, cond_channels=cond_channels, hidden=8, layers=2, time_embedding=6)
    )
    x, c = torch.randn(n, channels), torch.randn(n, cond_channels)
    t = {"scalar": torch.tensor(0.3), "batch": torch.rand(n), "float": 0.3}[t_kind]
    assert net(x, t, c).shape == (n, channels)
    assert score_fn(net, VPSDE(), c)(x, torch.as_tensor(t)).shape == (n, channels)


def test_bad_shapes_raise() -> None:
    net = PointwiseScoreNet(ScoreNetConfig(channels=3, cond_channels=4))
    with pytest.raises(ValueError, match="x must be"):
        net(torch.zeros(5, 2), torch.tensor(0.5), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="cond must be"):
        net(torch.zeros(5, 3), torch.tensor(0.5), torch.zeros(4, 4))


def test_zero_init_gives_zero_output_and_zero_score() -> None:
    net = PointwiseScoreNet(ScoreNetConfig(channels=3, cond_channels=4))
    x, c = torch.randn(6, 3), torch.randn(6, 4)
    assert torch.count_nonzero(net(x, torch.rand(6), c)) == 0
    assert torch.count_nonzero(score_fn(net, VPSDE(), c)(x, torch.tensor(0.2))) == 0


def test_time_embedding_values() -> None:
    emb = FourierTime(16)
    assert emb.width == 16
    out = emb(torch.tensor([0.0, 0.25]))
    torch.testing.assert_close(out[0], torch.cat([torch.zeros(8), torch.ones(8)]))
    f = 2 * math.pi * 10 ** torch.linspace(0.0, math.log10(64.0), 8)  # 2 pi [1 .. 64], log-spaced
    torch.testing.assert_close(out[1], torch.cat([torch.sin(0.25 * f), torch.cos(0.25 * f)]))


def test_rows_are_independent() -> None:
    """Perturbing row i changes row i only, so the Jacobian of the batch is block diagonal."""
    net = perturbed(PointwiseScoreNet(ScoreNetConfig(channels=3, cond_channels=4, hidden=16, layers=2)))
    gen = torch.Generator().manual_seed(1)
    x, c, t = torch.randn(8, 3, generator=gen), torch.randn(8, 4, generator=gen), torch.rand(8, generator=gen)
    out = net(x, t, c)
    x2, c2 = x.clone(), c.clone()
    x2[3] += 1.0
    c2[3] -= 0.5
    out2 = net(x2, t, c2)
    others = [i for i in range(8) if i != 3]
    assert torch.equal(out[others], out2[others])
    assert not torch.allclose(out[3], out2[3])


def test_score_fn_is_minus_eps_over_std() -> None:
    sde = VPSDE()
    net = perturbed(
        PointwiseScoreNet(ScoreNetConfig(channels=3, cond_channels=4, hidden=16, layers=2)).double()
    )
    gen = torch.Generator().manual_seed(2)
    x, c = (
        torch.randn(4, 3, generator=gen, dtype=torch.float64),
        torch.randn(4, 4, generator=gen, dtype=torch.float64),
    )
    t = 0.37
    std = math.sqrt(1 - math.exp(-(0.1 * t + 0.5 * 19.9 * t * t)))
    expected = -net(x, torch.tensor(t, dtype=torch.float64), c) / std
    fn = score_fn(net, sde, c)
    torch.testing.assert_close(fn(x, torch.tensor(t, dtype=torch.float64)), expected)
    # per-row times equal to the scalar give the same score
    torch.testing.assert_close(fn(x, torch.full((4,), t, dtype=torch.float64)), expected)


def test_dsm_loss_matches_its_definition() -> None:
    """Re-draw t and eps in the documented order from the same seed and recompute by hand."""
    sde = VPSDE()
    net = perturbed(PointwiseScoreNet(ScoreNetConfig(channels=2, cond_channels=1, hidden=8, layers=1)))
    x0, c = torch.randn(10, 2, generator=torch.Generator().manual_seed(3)), torch.zeros(10, 1)
    loss = dsm_loss(net, sde, x0, c, t_eps=0.01, generator=torch.Generator().manual_seed(4))
    gen = torch.Generator().manual_seed(4)
    t = 0.01 + 0.99 * torch.rand(10, generator=gen)
    eps = torch.randn(10, 2, generator=gen)
    a = torch.exp(-0.5 * (0.1 * t + 0.5 * 19.9 * t**2))[:, None]
    xt = a * x0 + torch.sqrt(1 - a**2) * eps
    expected = ((net(xt, t, c) - eps) ** 2).sum(1).mean() / 2
    torch.testing.assert_close(loss, expected)
    assert torch.equal(
        loss, dsm_loss(net, sde, x0, c, t_eps=0.01, generator=torch.Generator().manual_seed(4))
    )


def test_dsm_loss_decreases_with_training() -> None:
    torch.manual_seed(0)
    sde = VPSDE()
    net = PointwiseScoreNet(
        ScoreNetConfig(channels=2, cond_channels=1, hidden=32, layers=2, time_embedding=8)
    )
    gen = torch.Generator().manual_seed(5)
    x_eval, c_eval = mixture(4096, gen), torch.zeros(4096, 1)

    def eval_loss() -> float:
        with torch.no_grad():
            return dsm_loss(net, sde, x_eval, c_eval, generator=torch.Generator().manual_seed(6)).item()

    before = eval_loss()
    assert before == pytest.approx(1.0, abs=0.05)  # zero init: eps_hat = 0, loss = E eps^2
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(100):
        loss = dsm_loss(net, sde, mixture(256, gen), torch.zeros(256, 1), generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.8 * before, (before, after)


def test_bundled_weights_load_strictly() -> None:
    """The state-dict layout is the bundle format: the shipped weights must still load."""
    if not BUNDLE_WEIGHTS.exists():
        pytest.skip(f"no bundled weights at {BUNDLE_WEIGHTS}")
    state = torch.load(BUNDLE_WEIGHTS, weights_only=True)
    net_state = {k[len("score_net.") :]: v for k, v in state.items() if k.startswith("score_net.")}
    net = PointwiseScoreNet(ScoreNetConfig(channels=3, cond_channels=4))
    net.load_state_dict(net_state, strict=True)
    torch.testing.assert_close(net_state["time.freqs"], FourierTime(16).freqs)
