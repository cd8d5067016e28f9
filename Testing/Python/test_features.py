"""Multi-scale features and anatomical context."""

import pytest
import torch

from AnoDODELib.config import FeatureConfig
from AnoDODELib.features import (
    Standardiser,
    brain_box_coordinates,
    edge_depth,
    extract_features,
    gaussian_kernel1d,
    masked_smooth,
)


def test_gaussian_kernel_is_normalised_with_right_variance():
    k = gaussian_kernel1d(2.0)
    x = torch.arange(k.numel(), dtype=torch.float32) - k.numel() // 2
    assert float(k.sum()) == pytest.approx(1.0, abs=1e-6)
    assert float((k * x**2).sum()) == pytest.approx(4.0, rel=0.02)


def test_masked_smooth_keeps_constant_inside_mask_up_to_the_edge():
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    img = torch.full_like(mask, 3.0)
    out = masked_smooth(img, mask, 3.0)
    assert torch.allclose(out[mask > 0], torch.tensor(3.0), atol=1e-5)  # no darkening at the brain edge
    assert torch.all(out[mask == 0] == 0)


def test_edge_depth_counts_erosions():
    mask = torch.zeros(1, 1, 11, 11)
    mask[..., 1:10, 1:10] = 1  # 9x9 square: its centre survives 4 erosions (9->7->5->3->1)
    d = edge_depth(mask, max_px=10)
    assert float(d[0, 0, 5, 5]) == 4.0
    assert float(d[0, 0, 1, 1]) == 0.0  # edge pixel
    assert float(d[0, 0, 2, 5]) == 1.0
    assert float(edge_depth(mask, max_px=2)[0, 0, 5, 5]) == 2.0  # capped


def test_brain_box_coordinates_span_minus_one_to_one():
    mask = torch.zeros(4, 10, 12, dtype=torch.bool)
    mask[1:3, 2:8, 3:11] = True
    x, y, z = brain_box_coordinates(mask, torch.arange(4.0) * 2.5, 1.0)
    assert float(x[0, 0, 3]) == pytest.approx(-1) and float(x[0, 0, 10]) == pytest.approx(1)
    assert float(y[0, 2, 0]) == pytest.approx(-1) and float(y[0, 7, 0]) == pytest.approx(1)
    assert z.tolist() == pytest.approx([-3, -1, 1, 3])


@pytest.mark.parametrize("scales", [(0.0, 4.0), (0.0, 4.0, 8.0, 16.0)])
@pytest.mark.parametrize("position", [True, False])
def test_extract_features_shapes(scales, position):
    cfg = FeatureConfig(scales_mm=scales, position_context=position)
    s = torch.randn(3, 20, 24)
    m = torch.zeros(3, 20, 24, dtype=torch.bool)
    m[:, 4:16, 5:20] = True
    f, c = extract_features(s, m, torch.arange(3.0), 2.0, cfg)
    assert f.shape == (3, cfg.channels, 20, 24)
    assert c.shape == (3, cfg.cond_channels, 20, 24)
    assert torch.all(f[:, :, ~m[0]] == 0) and torch.all(c[:, :, ~m[0]] == 0)
    assert torch.allclose(f[:, 0][m], s[m])  # scale 0 is the intensity itself


def test_standardiser_round_trip():
    x = torch.randn(1000, 3) * torch.tensor([2.0, 0.5, 3.0]) + torch.tensor([1.0, -2.0, 0.0])
    st = Standardiser(3).fit(x)
    y = st(x)
    assert torch.allclose(y.mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(y.std(0), torch.ones(3), atol=1e-4)
    assert torch.allclose(st.inverse(y), x, atol=1e-5)


def test_context_channels_follow_the_config():
    """K = depth (+ x, y (+ z)) (+ regional level); the regional level is the masked smoothing of the primary
    contrast at ``regional_scale_mm``, and without ``slice_position`` no channel depends on the slice index."""
    s = torch.randn(4, 20, 24)
    m = torch.zeros(4, 20, 24, dtype=torch.bool)
    m[:, 4:16, 5:20] = True
    pos = torch.arange(4.0) * 5.0
    full = FeatureConfig(regional_scale_mm=8.0)
    assert full.cond_channels == 5
    f, c = extract_features(s, m, pos, 2.0, full)
    assert c.shape[1] == 5
    want = masked_smooth(s.unsqueeze(1), m.float().unsqueeze(1), 8.0 / 2.0)[:, 0]
    assert torch.allclose(c[:, 4], want)
    no_z = FeatureConfig(slice_position=False)
    assert no_z.cond_channels == 3
    _, c2 = extract_features(s, m, pos, 2.0, no_z)
    assert torch.equal(c2, c[:, :3])
    same = s.clone()
    same[:] = s[0]  # identical slices: with no z the context is identical per slice
    _, c3 = extract_features(same, m, pos, 2.0, no_z)
    assert all(torch.equal(c3[0], c3[i]) for i in range(4))
    assert FeatureConfig(position_context=False, regional_scale_mm=4.0).cond_channels == 2
