"""The end-to-end fixed costs cut for issue 11 item 6 change no value: the intensity normalisation computed at
the brain's voxels only equals the whole-volume formula bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from AnoDODELib import volume_io


@pytest.mark.parametrize("reference", ["mean", "wm_peak"])
def test_normalisation_at_the_brain_voxels_equals_the_whole_volume_formula(reference):
    """z = clip((x - c) / s, -clip_z, clip_z) in float64 inside the brain, 0 outside, cast to float32; also on a
    non-contiguous (transposed, flipped) view, as the canonical layout passes it."""
    rng = np.random.default_rng(3)
    brain = np.zeros((18, 26, 22), bool)
    brain[2:15, 4:22, 3:20] = rng.uniform(size=(13, 18, 17)) > 0.1
    scan = np.where(brain, rng.normal(300, 60, brain.shape), 5.0).astype(np.float32)
    scan[5, 10, 10] = 5e4  # clipped at +clip_z
    view = np.flip(np.transpose(scan, (2, 0, 1)), 1)
    mask = np.flip(np.transpose(brain, (2, 0, 1)), 1)
    for array, inside in ((scan, brain), (view, mask)):
        z = volume_io.normalise_intensity(array, inside, clip_z=3.0, reference=reference)
        c, s = volume_io.intensity_reference(array[inside].astype(np.float64), reference)
        expected = np.where(inside, np.clip((array.astype(np.float64) - c) / s, -3.0, 3.0), 0.0).astype(
            np.float32
        )
        assert z.dtype == np.float32 and z.shape == array.shape
        assert np.array_equal(z.view(np.uint32), expected.view(np.uint32))  # bit for bit, signs of zero too
        assert z.max() == 3.0
