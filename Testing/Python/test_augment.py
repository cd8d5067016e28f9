"""Training augmentation (training/augment.py): exact block averaging, carried masks, identity settings."""

import numpy as np
import pytest

from training.augment import AugmentConfig, augment_intensity, augmented_copy, thicken_slices


def test_thicken_slices_averages_blocks_and_drops_the_remainder():
    a = np.arange(7 * 2 * 2, dtype=np.float32).reshape(7, 2, 2)
    (out,), spacing = thicken_slices([a], 1.0, 3.0)
    assert spacing == 3.0 and out.shape == (2, 2, 2)
    assert np.allclose(out[0], a[0:3].mean(0)) and np.allclose(out[1], a[3:6].mean(0))
    (same,), sp = thicken_slices([a], 2.0, 2.5)  # n = round(1.25) = 1: unchanged
    assert sp == 2.0 and np.array_equal(same, a)


def test_identity_settings_only_rescale_the_brain():
    """gamma 1, no bias, no blobs: u = (x - p1) / (p99 - p1) clipped at 0, and 0 outside the brain."""
    rng = np.random.default_rng(0)
    raw = rng.normal(100, 10, (5, 20, 20)).astype(np.float32)
    brain = np.zeros(raw.shape, bool)
    brain[:, 3:17, 3:17] = True
    cfg = AugmentConfig(copies=1, gamma=(1.0, 1.0), bias=0.0, regional=0.0, blobs=0, thick_p=0.0)
    out = augment_intensity(raw, brain, (3.0, 1.0, 1.0), cfg, np.random.default_rng(1))
    lo, hi = np.percentile(raw[brain].astype(np.float64), [1, 99])
    want = np.clip((raw - lo) / (hi - lo), 0, None)
    assert np.allclose(out[brain], want[brain], rtol=1e-5, atol=1e-6)
    assert np.all(out[~brain] == 0)


def test_augmented_copy_carries_the_lesion_and_brain_onto_thick_slices():
    rng = np.random.default_rng(0)
    raw = rng.normal(100, 10, (12, 16, 16)).astype(np.float32)
    brain = np.zeros(raw.shape, bool)
    brain[:, 2:14, 2:14] = True
    lesion = np.zeros(raw.shape, bool)
    lesion[5, 6:9, 6:9] = True  # one thin slice of lesion
    cfg = AugmentConfig(copies=1, thick_mm=(4.0, 4.0), thick_p=1.0)
    image, b, les = augmented_copy(raw, brain, lesion, (1.0, 1.0, 1.0), cfg, np.random.default_rng(3))
    assert image.GetSpacing() == pytest.approx((1.0, 1.0, 4.0))
    assert b.shape == les.shape == (3, 16, 16)
    assert les[1, 6:9, 6:9].all() and les.sum() == 9  # any lesion in a block marks the thick voxel
    assert np.array_equal(b[0], brain[0])
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(image)
    assert np.all(arr[~b] == 0) and np.isfinite(arr).all()


def test_config_is_validated():
    with pytest.raises(ValueError):
        AugmentConfig(gamma=(0.0, 1.0))
    with pytest.raises(ValueError):
        AugmentConfig(copies=-1)
    with pytest.raises(ValueError):
        AugmentConfig(thick_p=1.5)
