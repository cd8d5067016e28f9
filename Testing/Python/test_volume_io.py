"""volume_io: reading/validation errors, slice geometry, brain masks, resampling, atomic writes."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import require_data

from AnoDODELib import atomic_write
from AnoDODELib import volume_io as vio
from AnoDODELib.atomic_write import OutputError
from AnoDODELib.volume_io import InputError

# ------------------------------------------------------------------------------------------- helpers


def rot_x(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])


def rot_z(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])


def make_image(
    size=(9, 7, 5),
    spacing=(0.9, 1.1, 3.0),
    direction=None,
    origin=(-20.0, 31.5, -7.25),
    array: np.ndarray | None = None,
    pixel=sitk.sitkFloat32,
) -> sitk.Image:
    if array is None:
        array = np.random.default_rng(0).normal(size=tuple(reversed(size))).astype(np.float32)
    img = sitk.GetImageFromArray(array)
    img = sitk.Cast(img, pixel)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    d = np.eye(3) if direction is None else np.asarray(direction, float)
    img.SetDirection(tuple(float(v) for v in d.ravel()))
    return img


def physical_grids(img: sitk.Image) -> np.ndarray:
    """(3, z, y, x): LPS coordinates (mm) of every voxel, sitk array layout, via TransformIndexToPhysicalPoint."""
    nx, ny, nz = img.GetSize()
    out = np.empty((3, nz, ny, nx))
    for k in range(nz):
        for j in range(ny):
            for i in range(nx):
                out[:, k, j, i] = img.TransformIndexToPhysicalPoint((i, j, k))
    return out


def assert_one_line(exc: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(exc.value)
    assert msg and "\n" not in msg, repr(msg)
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"


# Direction matrices (LPS; column j = physical direction of index axis j) with the numpy axes of
# (axial, A-P, L-R) and flips known by construction.
SAGITTAL = np.array([[0, 0, 1], [1, 0, 0], [0, -1, 0]], float)  # i -> +P, j -> -S (rows go down), k -> +L
CORONAL = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], float)  # i -> +L, j -> -S, k -> +P
RAS = np.diag([-1.0, -1.0, 1.0])  # NIfTI-style RAS storage
OBLIQUE = rot_z(20) @ rot_x(20)
GEOMETRY_CASES = {
    #  name: (direction, axes, flips)
    "lps": (np.eye(3), (0, 1, 2), (False, False, False)),
    "ras": (RAS, (0, 1, 2), (False, True, True)),
    "all_flipped": (-np.eye(3), (0, 1, 2), (True, True, True)),
    "sagittal": (SAGITTAL, (1, 2, 0), (True, False, False)),
    "coronal": (CORONAL, (1, 0, 2), (True, False, False)),
    "oblique": (OBLIQUE, (0, 1, 2), (False, False, False)),
    "oblique_ras": (OBLIQUE @ RAS, (0, 1, 2), (False, True, True)),
    "oblique_sagittal": (rot_x(-20) @ rot_z(25) @ SAGITTAL, (1, 2, 0), (True, False, False)),
}


# -------------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("name", list(GEOMETRY_CASES))
def test_axial_axis_and_slice_geometry_match_construction(name):
    direction, axes, flips = GEOMETRY_CASES[name]
    img = make_image(direction=direction)
    geo = vio.slice_geometry(img)
    assert geo.axes == axes
    assert geo.flips == flips
    assert vio.axial_axis(img) == axes[0]
    assert geo.shape == sitk.GetArrayFromImage(img).shape
    # spacing of the canonical axes: the spacing of the index axis behind each numpy axis (2 - a)
    assert geo.spacing_mm == tuple(img.GetSpacing()[2 - a] for a in axes)


@pytest.mark.parametrize("name", list(GEOMETRY_CASES))
def test_canonical_round_trip_is_exact(name):
    img = make_image(direction=GEOMETRY_CASES[name][0])
    geo = vio.slice_geometry(img)
    a = sitk.GetArrayFromImage(img)
    canon = geo.to_canonical(a)
    assert canon.shape == geo.canonical_shape
    back = geo.from_canonical(canon)
    assert back.shape == a.shape and back.dtype == a.dtype
    assert np.array_equal(back, a)
    with pytest.raises(ValueError):
        geo.to_canonical(a[:-1])


@pytest.mark.parametrize("name", list(GEOMETRY_CASES))
def test_canonical_axes_run_toward_superior_posterior_left(name):
    img = make_image(direction=GEOMETRY_CASES[name][0])
    geo = vio.slice_geometry(img)
    x, y, z = (geo.to_canonical(g) for g in physical_grids(img))  # L, P, S coordinates in mm
    assert (np.diff(z, axis=0) > 0).all(), "slices must step toward +S"
    assert (np.diff(y, axis=1) > 0).all(), "rows must step toward +P"
    assert (np.diff(x, axis=2) > 0).all(), "columns must step toward +L"
    # canonical step lengths are the reported spacings (mm)
    for axis in range(3):
        step = np.diff(np.stack([x, y, z]), axis=axis + 1)
        assert np.allclose(np.linalg.norm(step, axis=0), geo.spacing_mm[axis])


@pytest.mark.parametrize("name", list(GEOMETRY_CASES))
def test_physical_marker_lands_where_expected(name):
    img = make_image(
        size=(21, 21, 21),
        spacing=(1.0, 1.2, 2.0),
        direction=GEOMETRY_CASES[name][0],
        array=np.zeros((21, 21, 21), np.float32),
    )
    centre = np.array(img.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in img.GetSize()]))
    geo = vio.slice_geometry(img)

    def canonical_index(point) -> np.ndarray:
        a = np.zeros(geo.shape, np.uint8)
        i, j, k = img.TransformPhysicalPointToIndex(tuple(point))
        a[k, j, i] = 1
        return np.argwhere(geo.to_canonical(a))[0]

    c0 = canonical_index(centre)
    # 4 mm toward +S moves to a later slice, same row/column; +P -> later row; +L -> later column
    for axis_phys, canon_axis in ((2, 0), (1, 1), (0, 2)):
        offset = np.zeros(3)
        offset[axis_phys] = 4.0
        c1 = canonical_index(centre + offset)
        assert c1[canon_axis] > c0[canon_axis], (axis_phys, c0, c1)
        if name in ("lps", "ras", "all_flipped", "sagittal", "coronal"):  # axis-aligned: no cross-talk
            others = [a for a in range(3) if a != canon_axis]
            assert np.array_equal(c1[others], c0[others])


def test_geometry_resolves_45_degree_ties_one_to_one():
    # index axes 0 and 1 both lie at 45 degrees between L and P: each physical axis still gets one index axis
    img = make_image(direction=rot_z(45))
    geo = vio.slice_geometry(img)
    assert geo.axes[0] == 0 and sorted(geo.axes) == [0, 1, 2]


def test_real_sagittally_acquired_ixi_geometry():
    path = require_data("healthy_ixi", "IXI002-Guys-0828", "hd_bet_IXI002-Guys-0828-T1.nii.gz")
    img = vio.read_image(path)
    geo = vio.slice_geometry(img)
    # index axis 0 (numpy axis 2) runs L-R with 1.2 mm; the oblique volume's S axis is index axis 2
    assert geo.axes == (0, 1, 2) and geo.flips == (False, True, False)
    assert geo.spacing_mm[2] == pytest.approx(1.2, abs=1e-3)
    assert vio.axial_axis(img) == 0


# ----------------------------------------------------------------------------------------- writing


def write_map(
    array: np.ndarray, ref: sitk.Image, path, pixel_type: int = sitk.sitkFloat32, protect=()
) -> None:
    """``array`` on ``ref``'s grid through the one atomic writer, as ``outputs.score_to_files`` writes maps."""
    image = vio.image_like(array, ref, pixel_type)
    atomic_write.write_file(path, lambda tmp: vio.write_image(image, tmp), protect)


@pytest.mark.parametrize("ext,tol", [(".nii.gz", 1e-5), (".nrrd", 1e-12), (".mha", 1e-12), (".mhd", 1e-12)])
@pytest.mark.parametrize("name", ["oblique_ras", "sagittal"])
def test_written_map_keeps_reference_geometry_and_values(tmp_path, ext, tol, name):
    ref = make_image(direction=GEOMETRY_CASES[name][0], origin=(-12.3456789, 45.6789123, 7.1111111))
    values = np.random.default_rng(1).normal(size=sitk.GetArrayFromImage(ref).shape).astype(np.float32)
    out = tmp_path / f"map{ext}"
    write_map(values, ref, out)
    back = sitk.ReadImage(str(out))
    assert back.GetSize() == ref.GetSize()
    assert np.allclose(back.GetSpacing(), ref.GetSpacing(), rtol=0, atol=tol)
    assert np.allclose(back.GetOrigin(), ref.GetOrigin(), rtol=0, atol=tol * 100)
    assert np.allclose(back.GetDirection(), ref.GetDirection(), rtol=0, atol=tol)
    assert back.GetPixelID() == sitk.sitkFloat32
    assert np.array_equal(sitk.GetArrayFromImage(back), values)
    assert vio.same_grid(back, ref)
    leftovers = [p.name for p in tmp_path.iterdir() if "tmp" in p.name]
    assert leftovers == []


def test_write_label_as_uint8(tmp_path):
    ref = make_image()
    label = sitk.GetArrayFromImage(ref) > 0
    write_map(label, ref, tmp_path / "label.nii.gz", sitk.sitkUInt8)
    back = sitk.ReadImage(str(tmp_path / "label.nii.gz"))
    assert back.GetPixelID() == sitk.sitkUInt8
    assert np.array_equal(sitk.GetArrayFromImage(back), label.astype(np.uint8))


def test_write_rejects_wrong_shape(tmp_path):
    ref = make_image()
    with pytest.raises(ValueError):
        write_map(np.zeros((2, 2, 2), np.float32), ref, tmp_path / "x.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_protect_refuses_to_overwrite_inputs(tmp_path, monkeypatch):
    ref = make_image()
    inp = tmp_path / "input.nii.gz"
    sitk.WriteImage(ref, str(inp))
    before = inp.read_bytes()
    arr = np.zeros(sitk.GetArrayFromImage(ref).shape, np.float32)
    (tmp_path / "sub").mkdir()
    link = tmp_path / "link.nii.gz"
    link.symlink_to(inp)
    monkeypatch.chdir(tmp_path)
    for target in (inp, tmp_path / "sub" / ".." / "input.nii.gz", Path("input.nii.gz"), link):
        with pytest.raises(OutputError) as exc:
            write_map(arr, ref, target, protect=[inp])
        assert_one_line(exc, "refusing to overwrite")
        with pytest.raises(OutputError):
            atomic_write.write_bytes(target, b"{}", protect=[str(inp)])
    with pytest.raises(OutputError):  # protect given as the symlink, target the real file
        atomic_write.write_bytes(inp, b"{}", protect=[link])
    assert inp.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.nii.gz", "link.nii.gz", "sub"]


def test_atomic_write_cleans_up_after_success_and_failure(tmp_path, monkeypatch):
    out = tmp_path / "report.json"
    atomic_write.write_bytes(out, b'{"a": 1}')
    atomic_write.write_bytes(out, b'{"a": 2}')  # overwriting an earlier output is fine
    assert out.read_bytes() == b'{"a": 2}'
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]

    ref = make_image()
    arr = np.ones(sitk.GetArrayFromImage(ref).shape, np.float32)
    img_out = tmp_path / "map.nii.gz"
    write_map(arr, ref, img_out)
    before = img_out.read_bytes()

    def failing_write(image, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(vio.sitk, "WriteImage", failing_write)
    with pytest.raises(RuntimeError):
        write_map(arr * 2, ref, img_out)
    monkeypatch.undo()
    assert img_out.read_bytes() == before  # the old output is untouched

    def failing_replace(src, dst):
        raise OSError("simulated rename failure")

    monkeypatch.setattr(vio.os, "replace", failing_replace)
    with pytest.raises(OSError):
        atomic_write.write_bytes(out, b"new")
    monkeypatch.undo()
    assert out.read_bytes() == b'{"a": 2}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.nii.gz", "report.json"]


def test_write_into_missing_folder_is_one_line_error(tmp_path):
    with pytest.raises(OutputError) as exc:
        atomic_write.write_bytes(tmp_path / "nope" / "out.json", b"x")
    assert_one_line(exc, "nope")


# --------------------------------------------------------------------------------------- bad inputs


def _write(img: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(img, str(path))
    return path


BAD_FILES = {
    "missing": lambda d: d / "does_not_exist.nii.gz",
    "garbage": lambda d: (d / "garbage.nii.gz").write_bytes(os.urandom(3000)) and d / "garbage.nii.gz",
    "text": lambda d: (d / "notes.txt").write_text("hello\nworld\n", encoding="utf-8") and d / "notes.txt",
    "empty_file": lambda d: (d / "empty.nrrd").write_bytes(b"") or d / "empty.nrrd",
    "2d": lambda d: _write(sitk.Image([8, 8], sitk.sitkFloat32) + 1, d / "slice.nii.gz"),
    "2d_png": lambda d: _write(sitk.Image([8, 8], sitk.sitkUInt8) + 1, d / "slice.png"),
    "single_slice": lambda d: _write(sitk.Image([8, 8, 1], sitk.sitkFloat32) + 1, d / "one.nii.gz"),
    "4d": lambda d: _write(sitk.Image([6, 6, 6, 3], sitk.sitkFloat32), d / "dwi.nii.gz"),
    "vector": lambda d: _write(sitk.Image([6, 6, 6], sitk.sitkVectorFloat32, 3), d / "field.nrrd"),
    "rgb": lambda d: _write(sitk.Image([6, 6, 6], sitk.sitkVectorUInt8, 3), d / "rgb.mha"),
    "no_dicom_folder": lambda d: (d / "folder").mkdir() or d / "folder",
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_raise_one_line_input_error(tmp_path, case):
    path = BAD_FILES[case](tmp_path)
    with pytest.raises(InputError) as exc:
        vio.read_image(path)
    assert_one_line(exc, path.name)
    assert isinstance(exc.value, ValueError)


def _intensity_case(case: str) -> sitk.Image:
    a = np.random.default_rng(2).normal(size=(5, 6, 7)).astype(np.float32)
    if case == "constant":
        a[:] = 3.0
    elif case == "nan":
        a[2, 3, 4] = np.nan
    elif case == "inf":
        a[0, 0, 0] = np.inf
    elif case == "neg_inf":
        a[4, 5, 6] = -np.inf
    elif case == "empty":
        return sitk.Image([0, 6, 7], sitk.sitkFloat32)
    return make_image(size=(7, 6, 5), array=a)


@pytest.mark.parametrize("case", ["constant", "nan", "inf", "neg_inf", "empty"])
def test_bad_intensities_raise_one_line_input_error(case):
    with pytest.raises(InputError) as exc:
        vio.validate_intensities(_intensity_case(case), "flair.nii.gz")
    assert_one_line(exc, "flair.nii.gz")


def test_validate_intensities_returns_float32_sitk_layout():
    a = (np.arange(5 * 6 * 7).reshape(5, 6, 7) % 17).astype(np.int16)
    img = make_image(size=(7, 6, 5), array=a, pixel=sitk.sitkInt16)
    out = vio.validate_intensities(img, "x")
    assert out.dtype == np.float32 and out.shape == (5, 6, 7)
    assert np.array_equal(out, a.astype(np.float32))


def _mask_for(ref: sitk.Image, case: str) -> sitk.Image:
    a = np.zeros(tuple(reversed(ref.GetSize())), np.uint8)
    a[2, 3, 4] = 1
    m = make_image(
        size=ref.GetSize(),
        spacing=ref.GetSpacing(),
        origin=ref.GetOrigin(),
        direction=np.array(ref.GetDirection()).reshape(3, 3),
        array=a,
        pixel=sitk.sitkUInt8,
    )
    if case == "spacing":
        m.SetSpacing((0.9, 1.1, 2.5))
    elif case == "origin":
        m.SetOrigin(tuple(np.add(ref.GetOrigin(), (0.0, 0.5, 0.0))))
    elif case == "direction":
        m.SetDirection(tuple(RAS.ravel()))
    elif case == "size":
        m = sitk.Image([9, 7, 6], sitk.sitkUInt8) + 1
        m.CopyInformation(make_image(size=(9, 7, 6)))
    elif case == "empty":
        m = m * 0
    elif case == "float_noise":  # NIfTI float32 round-off must not count as another grid
        m.SetOrigin(tuple(np.add(ref.GetOrigin(), 1e-6)))
        m.SetSpacing(tuple(np.multiply(ref.GetSpacing(), 1 + 1e-7)))
    return m


@pytest.mark.parametrize("case", ["spacing", "origin", "direction", "size", "empty"])
def test_bad_masks_raise_one_line_input_error(tmp_path, case):
    ref = make_image()
    path = _write(_mask_for(ref, case), tmp_path / f"mask_{case}.nrrd")
    with pytest.raises(InputError) as exc:
        vio.read_mask(path, ref)
    assert_one_line(exc, path.name)


def test_read_mask_on_grid(tmp_path):
    ref = make_image(direction=OBLIQUE)
    path = _write(_mask_for(ref, "float_noise"), tmp_path / "mask.nrrd")
    mask = vio.read_mask(path, ref)
    assert mask.dtype == bool and mask.shape == sitk.GetArrayFromImage(ref).shape
    assert np.argwhere(mask).tolist() == [[2, 3, 4]]


def test_a_soft_mask_is_brain_above_one_half(tmp_path):
    """A soft (probabilistic, or resampled) mask: its fringe below 0.5 is not brain. Read as > 0, the 0.3
    fringe around a brain became brain."""
    ref = make_image(size=(20, 20, 10), spacing=(3.0, 3.0, 6.0))
    soft = np.zeros((10, 20, 20), np.float32)
    soft[2:8, 4:16, 4:16] = 0.3
    soft[3:7, 6:14, 6:14] = 1.0
    soft[5, 10, 10] = 0.5  # exactly one half: not above it
    image = sitk.GetImageFromArray(soft)
    image.CopyInformation(ref)
    path = _write(image, tmp_path / "soft.nrrd")
    mask = vio.read_mask(path, ref)
    np.testing.assert_array_equal(mask, soft > 0.5)
    assert mask.sum() == 4 * 8 * 8 - 1


def test_same_grid_tolerance():
    a = make_image()
    b = make_image()
    assert vio.same_grid(a, b)
    b.SetOrigin(tuple(np.add(a.GetOrigin(), (0, 0, 0.01))))
    assert not vio.same_grid(a, b)
    b.SetOrigin(a.GetOrigin())
    b.SetSpacing(tuple(np.multiply(a.GetSpacing(), (1, 1, 1.001))))
    assert not vio.same_grid(a, b)


# -------------------------------------------------------------------------------------------- DICOM


def _write_dicom_series(folder: Path, volume: sitk.Image, series_uid: str) -> None:
    """One file per slice, with the tags GDCM needs to rebuild the 3-D geometry."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = np.array(volume.GetDirection()).reshape(3, 3)
    orientation = "\\".join(f"{v:.6f}" for v in (*d[:, 0], *d[:, 1]))
    sx, sy, sz = volume.GetSpacing()
    for k in range(volume.GetDepth()):
        sl = volume[:, :, k]
        tags = {
            "0008|0060": "MR",
            "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL",
            "0010|0010": "Phantom^Test",
            "0010|0020": "ANODODE-TEST",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": series_uid,
            "0008|0018": f"{series_uid}.{k + 1}",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.4",
            "0020|0013": str(k + 1),
            "0020|0037": orientation,
            "0020|0032": "\\".join(f"{v:.6f}" for v in volume.TransformIndexToPhysicalPoint((0, 0, k))),
            "0028|0030": f"{sy:.6f}\\{sx:.6f}",
            "0018|0050": f"{sz:.6f}",
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice_{series_uid[-3:]}_{k:03d}.dcm"))
        writer.Execute(sl)


def test_dicom_folder_reads_largest_series_as_3d_volume(tmp_path):
    rng = np.random.default_rng(3)
    a = rng.integers(0, 1000, size=(6, 12, 16)).astype(np.int16)
    vol = make_image(
        size=(16, 12, 6),
        spacing=(0.8, 0.7, 2.5),
        direction=rot_x(20),
        origin=(-10.0, 20.0, 30.0),
        array=a,
        pixel=sitk.sitkInt16,
    )
    folder = tmp_path / "dicom"
    _write_dicom_series(folder, vol, "1.2.826.0.1.3680043.2.1125.2.100")
    small = make_image(size=(16, 12, 2), spacing=(1, 1, 1), array=a[:2], pixel=sitk.sitkInt16)
    _write_dicom_series(folder, small, "1.2.826.0.1.3680043.2.1125.2.200")  # a distractor series

    img = vio.read_image(folder)
    assert img.GetDimension() == 3 and img.GetSize() == (16, 12, 6)
    assert np.allclose(img.GetSpacing(), (0.8, 0.7, 2.5), atol=1e-4)
    assert np.allclose(img.GetOrigin(), vol.GetOrigin(), atol=1e-4)
    assert np.allclose(img.GetDirection(), vol.GetDirection(), atol=1e-4)
    assert np.array_equal(sitk.GetArrayFromImage(img), a)
    assert vio.axial_axis(img) == 0


def _dicom_volume(n: int = 10, spacing_z: float = 8.0) -> sitk.Image:
    rng = np.random.default_rng(5)
    a = rng.integers(0, 1000, size=(n, 24, 20)).astype(np.int16)
    return make_image(
        size=(20, 24, n),
        spacing=(4.0, 4.0, spacing_z),
        direction=rot_x(10),
        origin=(-40.0, -48.0, -30.0),
        array=a,
        pixel=sitk.sitkInt16,
    )


def test_a_dicom_series_with_a_missing_slice_is_refused(tmp_path):
    """A series whose slices are 8 mm apart but for one 16 mm gap (a missing file) used to be read with the
    mean spacing (8.9 mm here), every slice after the gap misplaced; it is refused in one line naming the
    folder and where the gap is. Two files at one position (two acquisitions in one series) likewise."""
    folder = tmp_path / "gap"
    _write_dicom_series(folder, _dicom_volume(), "1.2.826.0.1.3680043.2.1125.3.100")
    (folder / "slice_100_004.dcm").unlink()
    assert sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))).GetSpacing()[2] != 8.0
    with pytest.raises(
        vio.InputError, match=r"gap: its slices are 8 mm apart but 16 mm between slices 4 and 5 of 9"
    ):
        vio.read_image(folder)
    twice = tmp_path / "twice"
    _write_dicom_series(twice, _dicom_volume(), "1.2.826.0.1.3680043.2.1125.3.200")
    shutil.copy(twice / "slice_200_003.dcm", twice / "slice_200_003b.dcm")
    with pytest.raises(vio.InputError, match="2 DICOM files of the series lie at the same slice position"):
        vio.read_image(twice)
    even = tmp_path / "even"
    _write_dicom_series(even, _dicom_volume(), "1.2.826.0.1.3680043.2.1125.3.300")
    assert vio.read_image(even).GetSpacing()[2] == pytest.approx(8.0, abs=1e-4)


def test_the_several_series_warning_reaches_the_user_and_the_report(tmp_path, tiny_model_dir):
    """The warning used to be logged while the reader's stderr was sent to /dev/null, so nobody saw it; it is
    on stderr now, and in the report's warnings."""
    import subprocess
    import sys

    folder = tmp_path / "study"
    _write_dicom_series(folder, _dicom_volume(n=12, spacing_z=6.0), "1.2.826.0.1.3680043.2.1125.4.100")
    _write_dicom_series(folder, _dicom_volume(n=3, spacing_z=6.0), "1.2.826.0.1.3680043.2.1125.4.200")
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "AnoDODELib.cli", "score", str(folder), "--model", str(tiny_model_dir)]
        + ["--output-dir", str(out), "--preset", "fast", "--quiet"]
        + ["--brain-extraction", "never"],  # a synthetic series, not a head
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    said = [ln for ln in r.stderr.splitlines() if "holds 2 DICOM series" in ln]
    assert len(said) == 1 and said[0].startswith("anodode: WARNING: ") and "largest (12 files)" in said[0]
    report = json.loads((out / "study_report.json").read_text(encoding="utf-8"))
    assert any("holds 2 DICOM series" in w for w in report["warnings"])


# --------------------------------------------------------------------------------------- resampling


@pytest.mark.parametrize(
    "shape,spacing_in,spacing_out,expected",
    [
        ((2, 240, 200), (1.0, 1.2), 2.0, (2, 120, 120)),
        ((3, 100, 64), (0.9375, 0.9375), 2.0, (3, 47, 30)),
        ((1, 20, 30), (3.0, 3.0), 2.0, (1, 30, 45)),
        ((4, 50, 50), (2.0, 2.0), 2.0, (4, 50, 50)),
    ],
)
def test_resample_shape_arithmetic_and_back(shape, spacing_in, spacing_out, expected):
    x = np.random.default_rng(4).normal(size=shape).astype(np.float32)
    y = vio.resample_slices(x, spacing_in, spacing_out)
    assert y.shape == expected and y.dtype == np.float32
    z = vio.resample_back(y, shape[1:])
    assert z.shape == shape and z.dtype == np.float32


@pytest.mark.parametrize("order", [0, 1, 3])
@pytest.mark.parametrize("spacing_in", [(0.9, 1.1), (3.0, 2.5)])
def test_constant_stays_constant(order, spacing_in):
    x = np.full((3, 37, 41), 2.5, np.float32)
    x[1] = -1.0  # slices are never mixed
    y = vio.resample_slices(x, spacing_in, 2.0, order=order)
    z = vio.resample_back(y, x.shape[1:], order=order)
    for arr in (y, z):
        assert np.allclose(arr[0], 2.5, atol=1e-5) and np.allclose(arr[1], -1.0, atol=1e-5)


def test_mask_resampling_with_order_0_stays_binary():
    m = np.zeros((2, 64, 64), np.float32)
    m[:, 10:40, 20:50] = 1
    y = vio.resample_slices(m, (1.0, 1.0), 2.0, order=0)
    assert set(np.unique(y)) == {0.0, 1.0}
    assert y.sum() / 2 == pytest.approx(m.sum() / 2 / 4, rel=0.1)


def test_downsampling_is_anti_aliased():
    r, c = np.indices((90, 90))
    checker = ((r + c) % 2).astype(np.float32)[None]  # 1-pixel pattern, far above the new Nyquist
    y = vio.resample_slices(checker, (0.9, 0.9), 2.0, order=1)
    assert abs(float(y.mean()) - 0.5) < 0.02
    assert float(y[:, 2:-2, 2:-2].std()) < 0.05


def _centroid_mm(img2d: np.ndarray, pixel_mm: tuple[float, float]) -> np.ndarray:
    """Centroid (mm from the field of view's corner) with pixel centres at (i + 0.5) * pixel size."""
    w = np.clip(img2d, 0, None)
    r, c = np.indices(w.shape)
    return np.array(
        [((r + 0.5) * w).sum() / w.sum() * pixel_mm[0], ((c + 0.5) * w).sum() / w.sum() * pixel_mm[1]]
    )


def test_blob_centroid_preserved_in_mm():
    H, W, sp = 180, 150, (0.9, 1.1)
    r, c = np.indices((H, W))
    centre_mm = (61.3, 97.9)
    blob = np.exp(
        -(((r + 0.5) * sp[0] - centre_mm[0]) ** 2 + ((c + 0.5) * sp[1] - centre_mm[1]) ** 2) / (2 * 6.0**2)
    )
    x = blob[None].astype(np.float32)
    y = vio.resample_slices(x, sp, 2.0)
    eff = (H * sp[0] / y.shape[1], W * sp[1] / y.shape[2])  # model-grid pixel size (mm)
    assert eff[0] == pytest.approx(2.0, rel=0.02) and eff[1] == pytest.approx(2.0, rel=0.02)
    assert np.allclose(_centroid_mm(y[0], eff), centre_mm, atol=0.1)
    z = vio.resample_back(y, (H, W))
    assert np.allclose(_centroid_mm(z[0], sp), centre_mm, atol=0.1)
    assert np.abs(z[0] - blob).max() < 0.05  # smooth blob survives down+up


# ---------------------------------------------------------------------------- masks and normalisation


def _phantom(background: float, noise_background: bool = False) -> np.ndarray:
    rng = np.random.default_rng(5)
    z, y, x = np.indices((40, 60, 50))
    brain = ((z - 20) / 15) ** 2 + ((y - 30) / 24) ** 2 + ((x - 25) / 20) ** 2 <= 1
    a = np.where(brain, rng.normal(1.0, 0.3, brain.shape), background).astype(np.float32)
    # an enclosed cavity at the background value, too large for slice-wise small-hole filling
    cavity = ((z - 20) / 5) ** 2 + ((y - 30) / 12) ** 2 + ((x - 25) / 9) ** 2 <= 1
    a[cavity] = background
    a[2, 2, 2] = 5.0  # a speck outside the brain
    if noise_background:
        a[~brain] = np.abs(rng.normal(0, 0.5, (~brain).sum()))
    return a, brain


@pytest.mark.parametrize("background", [0.0, -3.62, 100.0])
def test_brain_mask_on_constant_nonzero_background(background):
    a, brain = _phantom(background)
    mask = vio.brain_mask_from_image(a)
    assert mask.dtype == bool and mask.shape == a.shape
    assert np.array_equal(mask, brain)
    assert vio.looks_skull_stripped(a, mask)


def test_noisy_background_does_not_look_skull_stripped():
    a, brain = _phantom(0.0, noise_background=True)
    assert not vio.looks_skull_stripped(a, vio.brain_mask_from_image(a))
    assert not vio.looks_skull_stripped(a, brain)  # even with a good (user) brain mask


def test_normalise_intensity():
    rng = np.random.default_rng(6)
    brain = np.zeros((20, 30, 30), bool)
    brain[3:17, 5:25, 4:26] = True
    a = np.where(brain, rng.normal(400, 50, brain.shape), -7.0).astype(np.float32)
    a[10, 10, 10] = 1e6  # an outlier must not inflate the std
    z = vio.normalise_intensity(a, brain, clip_z=4.0)
    assert z.dtype == np.float32 and z.shape == a.shape
    assert (z[~brain] == 0).all()
    assert z.max() == pytest.approx(4.0) and z.min() >= -4.0
    inside = z[brain]
    assert abs(float(np.median(inside))) < 0.1 and 0.8 < float(inside.std()) < 1.2
    with pytest.raises(InputError):
        vio.normalise_intensity(a, np.zeros_like(brain))


def test_spacing_warnings():
    assert vio.spacing_warnings(make_image(spacing=(1, 1, 1))) == []
    assert len(vio.spacing_warnings(make_image(spacing=(0.1, 1, 1)))) == 1
    assert len(vio.spacing_warnings(make_image(spacing=(1, 1, 12)))) == 2
    thick = vio.spacing_warnings(make_image(spacing=(1, 1, 6.5)))
    assert len(thick) == 1 and "thick" in thick[0]
    # 5 mm along index 0, but index 0 is L-R in a sagittal stack: axial slices are 1 mm apart... the
    # in-plane columns are 5 mm, so no thick-slice warning
    assert vio.spacing_warnings(make_image(spacing=(1, 1, 5), direction=SAGITTAL)) == []
    assert all("\n" not in w for w in thick)


# ----------------------------------------------------------------------------------------- real data


def test_brain_mask_matches_given_mask_on_constant_nonzero_background_brats():
    case = require_data("deepmedic_brats2015", "brats_2013_pat0001_1")
    img = vio.read_image(case / "Flair_subtrMeanDivStd.nii.gz")
    a = vio.validate_intensities(img, "flair")
    given = vio.read_mask(case / "brainmask.nii.gz", img)
    assert float(np.median(a[~given])) != 0.0  # the background really is non-zero here
    mask = vio.brain_mask_from_image(a, slice_axis=vio.axial_axis(img))
    dice = 2 * (mask & given).sum() / (mask.sum() + given.sum())
    assert dice > 0.98, dice
    assert vio.looks_skull_stripped(a, mask)


def test_not_skull_stripped_scan_is_detected():
    img = vio.read_image(require_data("pyradiomics", "brain1_image.nrrd"))
    a = vio.validate_intensities(img, "brain1")
    assert not vio.looks_skull_stripped(a, vio.brain_mask_from_image(a))
    assert any("thick" in w for w in vio.spacing_warnings(img))


def test_brats_flair_looks_skull_stripped():
    img = vio.read_image(
        require_data("brats2023_noGT", "BraTS-GLI-00001-000", "BraTS-GLI-00001-000-t2f.nii.gz")
    )
    a = vio.validate_intensities(img, "t2f")
    assert vio.looks_skull_stripped(a, vio.brain_mask_from_image(a))


@pytest.mark.parametrize("storage", ["sagittal", "coronal"])
def test_the_automatic_mask_fills_holes_in_axial_slices_whatever_the_storage(storage):
    """A thin tunnel of background running superior-inferior through the brain is open in 3-D (the 3-D filling
    leaves it) but a small hole in every axial slice: the automatic mask fills it along the axial axis, which
    for a sagittally or coronally stored scan is not array axis 0 (filling along axis 0 left it open)."""
    canonical = np.zeros((40, 48, 44), np.float32)  # (S, P, L)
    s, p, c = np.ogrid[:40, :48, :44]
    brain = ((s - 19.5) / 18) ** 2 + ((p - 23.5) / 21) ** 2 + ((c - 21.5) / 19) ** 2 <= 1
    canonical[brain] = 100.0 + (s + p + c)[brain]
    tunnel = np.zeros(canonical.shape, bool)
    tunnel[:, 22:25, 20:23] = True
    canonical[tunnel] = 0.0
    direction = {"sagittal": SAGITTAL, "coronal": CORONAL}[storage]
    axes, flips = GEOMETRY_CASES[storage][1:]
    stored = np.transpose(np.flip(canonical, [i for i, f in enumerate(flips) if f]), np.argsort(axes))
    image = make_image(
        size=stored.shape[::-1], spacing=(1.0, 1.0, 1.0), direction=direction, array=stored.copy()
    )
    geometry = vio.slice_geometry(image)
    assert geometry.axes == axes and geometry.axes[0] != 0
    np.testing.assert_array_equal(geometry.to_canonical(sitk.GetArrayFromImage(image)), canonical)
    mask = vio.brain_mask_from_image(sitk.GetArrayFromImage(image), slice_axis=vio.axial_axis(image))
    got = geometry.to_canonical(mask)
    inside = tunnel & brain
    assert inside.sum() > 100 and got[inside].all()
    np.testing.assert_array_equal(got, brain | inside)
