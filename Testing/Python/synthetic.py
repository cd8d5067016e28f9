"""Generated scans for tests that need no real anatomy: any storage orientation, known physical content.

A scan is defined in physical LPS millimetres (x toward Left, y toward Posterior, z toward Superior, the
volume centred on the origin) by a function of (x, y, z); ``scan`` samples it on the voxel grid of any
direction matrix and spacing, so the same anatomy can be stored axially, sagittally, coronally, flipped.
"""

from __future__ import annotations

import contextlib
import itertools
import locale

import numpy as np
import SimpleITK as sitk

#: Half-axes (mm) of the ellipsoidal "brain" along x, y, z.
BRAIN_AXES = (60.0, 72.0, 50.0)


def orientations() -> list[tuple[str, np.ndarray]]:
    """Direction matrices (columns = index axes in LPS): the 6 axis permutations, each with a different
    pattern of flipped axes so that every index axis is flipped in some of them (axial LPS and RAS storage,
    sagittal and coronal storage among them)."""
    signs = [(1, 1, 1), (-1, -1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, -1), (1, 1, -1), (-1, 1, 1)]
    out = []
    for n, perm in enumerate(itertools.permutations(range(3))):
        for s in (signs[n], signs[n + 1]):
            d = np.zeros((3, 3))
            for j, phys in enumerate(perm):
                d[phys, j] = s[j]
            names = "".join(("+" if s[j] > 0 else "-") + "xyz"[phys] for j, phys in enumerate(perm))
            out.append((names, d))
    return out


def scan(
    fn,
    direction: np.ndarray,
    spacing: tuple[float, float, float],
    extent_mm: tuple[float, float, float] = (140.0, 164.0, 120.0),
) -> sitk.Image:
    """``fn(x, y, z)`` (physical mm, arrays) sampled on a grid with the given direction (3x3, columns are the
    index axes) and per-index-axis spacing (mm), covering ``extent_mm`` along x, y, z around the origin."""
    d = np.asarray(direction, float)
    phys_of_index = [int(np.argmax(np.abs(d[:, j]))) for j in range(3)]
    size = [int(np.ceil(extent_mm[phys_of_index[j]] / spacing[j])) for j in range(3)]
    origin = -d @ ((np.array(size) - 1) / 2.0 * np.array(spacing))
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")  # array order (k, j, i)
    idx = np.stack([i, j, k], axis=-1) * np.array(spacing)
    p = origin + idx @ d.T
    values = np.asarray(fn(p[..., 0], p[..., 1], p[..., 2]), np.float32)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(d.flatten()))
    image.SetOrigin(tuple(float(o) for o in origin))
    return image


def brain(x, y, z, axes: tuple[float, float, float] = BRAIN_AXES) -> np.ndarray:
    """True inside the ellipsoidal brain of half-axes ``axes`` (mm)."""
    ax, ay, az = axes
    return (x / ax) ** 2 + (y / ay) ** 2 + (z / az) ** 2 < 1.0


def blob(x, y, z, centre, radius_mm: float) -> np.ndarray:
    """True inside the sphere of ``radius_mm`` around ``centre`` (x, y, z mm)."""
    return (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 < radius_mm**2


def flair_like(
    blobs: list[tuple[tuple[float, float, float], float, float]] = (),
    axes: tuple[float, float, float] = BRAIN_AXES,
    phase: float = 0.0,
):
    """A FLAIR-like function: brain intensity 100 with a smooth gradient and a fixed texture (shifted by
    ``phase``), 0 outside the brain of half-axes ``axes``; each (centre, radius_mm, intensity) blob replaces
    the intensity inside its sphere."""

    def fn(x, y, z):
        texture = 4.0 * np.sin(x / 7.0 + phase) * np.cos(y / 9.0) * np.sin(z / 5.0 + 1.0)
        v = 100.0 + 0.05 * x + texture
        for centre, radius, value in blobs:
            v = np.where(blob(x, y, z, centre, radius), value, v)
        return np.where(brain(x, y, z, axes), v, 0.0)

    return fn


def physical_point(image: sitk.Image, array_index) -> np.ndarray:
    """LPS point (mm) of a voxel given by its numpy (k, j, i) index."""
    return np.array(image.TransformIndexToPhysicalPoint([int(v) for v in array_index[::-1]]))


def loaded_case(
    name: str,
    cfg,
    spacing=(2.0, 2.0, 3.0),
    lesion=(-20.0, 10.0, 12.0),
    radius_mm: float = 10.0,
    axes: tuple[float, float, float] = BRAIN_AXES,
    extent_mm=(140.0, 164.0, 120.0),
    phase: float = 0.0,
    value: float = 180.0,
):
    """A generated FLAIR-like case (axial LPS storage) with a bright spherical lesion, loaded as training
    loads a case (``training.train.select_healthy``: tissue selection, 6 mm margin)."""
    from pathlib import Path

    from AnoDODELib.pipeline import prepare_volume
    from training.cases import Case
    from training.train import select_healthy

    image = scan(
        flair_like([(lesion, radius_mm, value)], axes=axes, phase=phase), np.eye(3), spacing, extent_mm
    )
    sphere = scan(
        lambda x, y, z: blob(x, y, z, lesion, radius_mm).astype(np.float32), np.eye(3), spacing, extent_mm
    )
    prepared = prepare_volume(image, cfg)
    tumour = np.ascontiguousarray(prepared.geometry.to_canonical(sitk.GetArrayFromImage(sphere) > 0))
    lc = select_healthy(
        Case(name, "synthetic", Path(f"{name}.nii.gz"), None), prepared, tumour, "tissue", 6.0
    )
    lc.raw = prepared.geometry.to_canonical(sitk.GetArrayFromImage(image))  # no file: the baselines read this
    return lc


def write_dicom_series(
    image: sitk.Image,
    folder,
    series_uid: str = "1.2.826.0.1.3680043.2.1125.2.100",
    study_uid: str = "1.2.826.0.1.3680043.2.1125.1",
    frame_of_reference_uid: str = "1.2.826.0.1.3680043.2.1125.3",
    names: str = "IM{k:04d}.dcm",
    shuffle_names: bool = False,
) -> list:
    """``image`` (cast to int16) as a single-frame MR Image Storage series, one file per slice along index
    axis 2 in ``folder``, with the tags a reader needs to rebuild the volume (positions, orientation, pixel
    spacing, slice thickness and spacing) and a SEG writer needs to reference it (study, series, instance
    and frame-of-reference UIDs, patient). ``shuffle_names``: file names in reverse slice order (so name order
    is not slice order). Returns the files, in slice order."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    volume = sitk.Cast(image, sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = np.array(volume.GetDirection()).reshape(3, 3)
    orientation = "\\".join(f"{v:.6f}" for v in (*d[:, 0], *d[:, 1]))
    sx, sy, sz = volume.GetSpacing()
    depth = volume.GetDepth()
    files = []
    with _locale_kept():  # GDCM's writer leaves the process in the "C" locale (ASCII text I/O) otherwise
        for k in range(depth):
            files.append(
                _write_slice(
                    writer,
                    volume,
                    k,
                    folder / names.format(k=(depth - 1 - k) if shuffle_names else k),
                    {
                        "0008|0018": f"{series_uid}.{k + 1}",
                        "0020|000d": study_uid,
                        "0020|000e": series_uid,
                        "0020|0052": frame_of_reference_uid,
                        "0020|0037": orientation,
                        "0028|0030": f"{sy:.6f}\\{sx:.6f}",
                        "0018|0050": f"{sz:.6f}",
                        "0018|0088": f"{sz:.6f}",
                    },
                )
            )
    return files


def write_bids_dataset(root, files: dict, image: sitk.Image, name: str = "synthetic") -> dict:
    """A raw BIDS dataset in ``root``: ``dataset_description.json`` and, for each BIDS-relative path of
    ``files`` (e.g. ``"sub-01/anat/sub-01_FLAIR.nii.gz"``), ``image`` shifted by the mapped intensity offset
    (so each scan's content differs). Returns {relative path: absolute Path}."""
    import json
    from pathlib import Path

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": name, "BIDSVersion": "1.10.0"}), encoding="utf-8"
    )
    out = {}
    for relative, offset in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(sitk.Cast(image, sitk.sitkFloat32) + float(offset), str(path))
        out[relative] = path
    return out


@contextlib.contextmanager
def _locale_kept():
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_slice(writer, volume: sitk.Image, k: int, path, tags: dict):
    """Slice ``k`` of ``volume`` as one MR Image Storage file at ``path`` with the series' ``tags`` and its
    own instance number and position."""
    sl = volume[:, :, k]
    common = {
        "0008|0060": "MR",
        "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL",
        "0008|0016": "1.2.840.10008.5.1.4.1.1.4",
        "0010|0010": "Phantom^Test",
        "0010|0020": "ANODODE-TEST",
        "0020|0011": "7",
        "0020|0013": str(k + 1),
        "0020|0032": "\\".join(f"{v:.6f}" for v in volume.TransformIndexToPhysicalPoint((0, 0, k))),
    }
    for key, value in {**common, **tags}.items():
        sl.SetMetaData(key, value)
    writer.SetFileName(str(path))
    writer.Execute(sl)
    return path
