"""Volume in, volume out: reading and validating scans, the axial slice geometry, brain masks,
intensity normalisation, in-plane resampling, and atomic writes on the input's exact grid.

Array layout: ``sitk.GetArrayFromImage`` order (k, j, i), i.e. numpy axis a <-> image index axis 2 - a.
Canonical slices: (S, P, L) = numpy array re-ordered so axis 0 steps toward +S (superior), axis 1
toward +P (posterior), axis 2 toward +L (left), in LPS physical coordinates (SimpleITK's convention).
Spacings are in mm.
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import SimpleITK as sitk
from skimage import measure, morphology, transform

logger = logging.getLogger(__name__)
PathLike = str | os.PathLike


class InputError(ValueError):
    """A bad input; the message is one line, user-facing."""


def read_image(path: PathLike) -> sitk.Image:
    """Read a 3-D scalar image from a file SimpleITK reads, or a folder holding a DICOM series."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    try:
        if p.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(p))
            if not series:
                raise InputError(f"{p}: folder holds no DICOM series")
            files = max((reader.GetGDCMSeriesFileNames(str(p), s) for s in series), key=len)
            reader.SetFileNames(files)
            image = reader.Execute()
        else:
            image = sitk.ReadImage(str(p))
    except InputError:
        raise
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        reason = next((ln for ln in first if "Unable to determine ImageIO" in ln or "ERROR" in ln.upper()), "")
        raise InputError(f"{p}: not a readable image{' (' + reason.strip()[:120] + ')' if reason else ''}") from None
    dim = image.GetDimension()
    if dim == 2:
        raise InputError(f"{p}: is a 2-D image; AnoDODE needs a 3-D volume")
    if dim != 3:
        raise InputError(f"{p}: is a {dim}-D image; AnoDODE needs a single 3-D volume")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{p}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                         "AnoDODE needs a scalar volume")
    if min(image.GetSize()) == 1:
        raise InputError(f"{p}: has a single slice ({image.GetSize()}); AnoDODE needs a 3-D volume")
    return image


def validate_intensities(image: sitk.Image, name: str) -> np.ndarray:
    """float32 array (sitk layout); InputError for an empty or constant image, or NaN/inf voxels."""
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    if array.size == 0:
        raise InputError(f"{name}: the image is empty")
    finite = np.isfinite(array)
    if not finite.all():
        raise InputError(f"{name}: {int((~finite).sum())} voxel(s) are NaN or infinite")
    if float(array.max()) == float(array.min()):
        raise InputError(f"{name}: the image is constant ({float(array.min()):g} everywhere)")
    return array


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> bool:
    """Same size, and spacing/origin/direction equal within ``tol`` (relative to the spacing for origin)."""
    if a.GetSize() != b.GetSize() or a.GetDimension() != b.GetDimension():
        return False
    sa, sb = np.array(a.GetSpacing()), np.array(b.GetSpacing())
    if not np.allclose(sa, sb, rtol=tol, atol=0):
        return False
    if not np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol * max(1.0, float(sa.max())) * 10):
        return False
    return bool(np.allclose(a.GetDirection(), b.GetDirection(), atol=tol))


def read_mask(path: PathLike, reference: sitk.Image) -> np.ndarray:
    """Bool mask (reference's array layout) from a label image on the reference's exact grid."""
    mask = read_image(path)
    if not same_grid(mask, reference):
        raise InputError(f"{path}: the mask is not on the input's grid (size {mask.GetSize()} vs "
                         f"{reference.GetSize()}, or spacing/origin/direction differ)")
    array = sitk.GetArrayFromImage(mask)
    if not np.isfinite(array).all():
        raise InputError(f"{path}: the mask has NaN or infinite voxels")
    out = array > 0.5
    if not out.any():
        raise InputError(f"{path}: the mask is empty")
    return out


def axial_axis(image: sitk.Image) -> int:
    """Numpy axis along which the patient's S-I direction runs (from the direction cosines)."""
    return slice_geometry(image).axes[0]


@dataclass(frozen=True)
class SliceGeometry:
    """How the sitk array maps to canonical (S, P, L) slices: permutation + flips; spacings in mm."""

    axes: tuple[int, int, int]               # numpy axes giving (axial, A-P, L-R)
    flips: tuple[bool, bool, bool]           # flip each canonical axis so index increases toward +S, +P, +L
    spacing_mm: tuple[float, float, float]   # (slice spacing, row spacing, column spacing), canonical order
    shape: tuple[int, int, int]              # input array shape (sitk layout)

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        out = np.transpose(array, self.axes)
        flip_axes = tuple(i for i, f in enumerate(self.flips) if f)
        return np.flip(out, flip_axes) if flip_axes else out

    def from_canonical(self, canon: np.ndarray) -> np.ndarray:
        flip_axes = tuple(i for i, f in enumerate(self.flips) if f)
        out = np.flip(canon, flip_axes) if flip_axes else canon
        return np.ascontiguousarray(np.transpose(out, np.argsort(self.axes)))


def slice_geometry(image: sitk.Image) -> SliceGeometry:
    """Assign each physical axis (LPS x, y, z) the image index axis most aligned with it."""
    d = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)   # column j = index axis j
    size, spacing = image.GetSize(), image.GetSpacing()
    remaining = [0, 1, 2]
    chosen: dict[int, int] = {}
    for phys in (2, 1, 0):   # S first, then P, then L
        j = max(remaining, key=lambda jj: abs(d[phys, jj]))
        chosen[phys] = j
        remaining.remove(j)
    index_axes = (chosen[2], chosen[1], chosen[0])          # (axial, A-P, L-R) image index axes
    axes = tuple(2 - j for j in index_axes)
    flips = tuple(bool(d[phys, j] < 0) for phys, j in zip((2, 1, 0), index_axes))
    spacing_mm = tuple(float(spacing[j]) for j in index_axes)
    shape = tuple(int(size[2 - a]) for a in range(3))
    return SliceGeometry(axes, flips, spacing_mm, shape)   # type: ignore[arg-type]


def brain_mask_from_image(array: np.ndarray) -> np.ndarray:
    """Brain of a skull-stripped scan: voxels differing from the background value (the most frequent
    value on the border faces; some preprocessings use a constant non-zero background), largest
    connected component, holes filled slice by slice along axis 0."""
    faces = np.concatenate([array[0].ravel(), array[-1].ravel(), array[:, 0].ravel(), array[:, -1].ravel(),
                            array[:, :, 0].ravel(), array[:, :, -1].ravel()])
    values, counts = np.unique(faces, return_counts=True)
    background = values[np.argmax(counts)]
    mask = ~np.isclose(array, background, rtol=0, atol=1e-6 * max(1.0, abs(float(background))))
    if not mask.any():
        return mask
    labels = measure.label(mask, connectivity=1)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    mask = labels == int(np.argmax(sizes))
    for k in range(mask.shape[0]):
        mask[k] = morphology.remove_small_holes(mask[k], max_size=max(64, mask[k].size // 50))
    return mask


def looks_skull_stripped(array: np.ndarray, mask: np.ndarray) -> bool:
    """Heuristic: a skull-stripped scan has a constant background around the brain, so the border
    faces are background and the mask leaves a clear margin. True when the mask touches < 5% of the
    border-face voxels and covers < 60% of the volume."""
    border = np.concatenate([mask[0].ravel(), mask[-1].ravel(), mask[:, 0].ravel(), mask[:, -1].ravel(),
                             mask[:, :, 0].ravel(), mask[:, :, -1].ravel()])
    return bool(border.mean() < 0.05 and mask.mean() < 0.6)


def normalise_intensity(array: np.ndarray, mask: np.ndarray, clip_z: float = 6.0) -> np.ndarray:
    """z-score within the brain, robust: mean and std of brain voxels between the 1st and 99th
    percentiles. float32, 0 outside the brain, clipped to [-clip_z, clip_z]."""
    v = array[mask].astype(np.float64)
    lo, hi = np.percentile(v, [1, 99])
    core = v[(v >= lo) & (v <= hi)]
    mean, std = core.mean(), core.std()
    if std <= 0:
        raise InputError("the brain's intensities are constant")
    z = np.clip((array - mean) / std, -clip_z, clip_z)
    return np.where(mask, z, 0.0).astype(np.float32)


def _target_shape(shape: tuple[int, int], spacing_in: tuple[float, float], spacing_out: float) -> tuple[int, int]:
    return (max(1, int(round(shape[0] * spacing_in[0] / spacing_out))),
            max(1, int(round(shape[1] * spacing_in[1] / spacing_out))))


def resample_slices(slices: np.ndarray, spacing_in: tuple[float, float], spacing_out: float,
                    order: int = 1) -> np.ndarray:
    """(S, H, W) -> (S, h, w) on a grid of ``spacing_out`` mm covering the same field of view.

    Pixel-centre convention of skimage's ``resize`` (edges aligned), so ``resample_back`` is its
    geometric inverse. Downsampling is anti-aliased (Gaussian) for order > 0.
    """
    s, h, w = slices.shape
    th, tw = _target_shape((h, w), spacing_in, spacing_out)
    if (th, tw) == (h, w):
        return slices.astype(np.float32, copy=True)
    anti = order > 0 and (th < h or tw < w)
    out = transform.resize(slices.astype(np.float32), (s, th, tw), order=order, mode="edge",
                           anti_aliasing=anti, anti_aliasing_sigma=None if not anti else
                           (0, max(0, (h / th - 1) / 2), max(0, (w / tw - 1) / 2)), preserve_range=True)
    return out.astype(np.float32)


def resample_back(maps: np.ndarray, shape: tuple[int, int], order: int = 1) -> np.ndarray:
    """(S, h, w) -> (S, H, W): a model-grid map back onto the original in-plane grid."""
    s = maps.shape[0]
    if maps.shape[1:] == tuple(shape):
        return maps.astype(np.float32, copy=True)
    return transform.resize(maps.astype(np.float32), (s, *shape), order=order, mode="edge",
                            anti_aliasing=False, preserve_range=True).astype(np.float32)


def spacing_warnings(image: sitk.Image) -> list[str]:
    """One-line warnings for implausible voxel spacing (mm)."""
    sp = np.array(image.GetSpacing(), dtype=float)
    out = []
    if (sp < 0.2).any() or (sp > 10).any():
        out.append(f"implausible voxel spacing {tuple(round(float(v), 3) for v in sp)} mm for a brain MRI")
    geo = slice_geometry(image)
    if geo.spacing_mm[0] > 3 * max(geo.spacing_mm[1:]):
        out.append(f"thick slices ({geo.spacing_mm[0]:g} mm vs {max(geo.spacing_mm[1:]):g} mm in-plane): "
                   "the map is computed per slice, small lesions may be missed")
    return out


def _check_protect(path: Path, protect: Iterable[PathLike]) -> None:
    target = path.resolve()
    for p in protect:
        if Path(p).resolve() == target:
            raise InputError(f"refusing to overwrite input {path}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic(path: Path, write, protect: Iterable[PathLike]) -> None:
    path = Path(path)
    _check_protect(path, protect)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp creates 0600; outputs get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_image_atomic(array: np.ndarray, reference: sitk.Image, path: PathLike,
                       pixel_type: int = sitk.sitkFloat32, protect: Iterable[PathLike] = ()) -> None:
    """Write ``array`` (reference's sitk layout) with the reference's exact geometry, atomically."""
    expected = tuple(reversed(reference.GetSize()))
    if array.shape != expected:
        raise ValueError(f"array shape {array.shape} does not match the reference {expected}")
    image = sitk.Cast(sitk.GetImageFromArray(np.ascontiguousarray(array)), pixel_type)
    image.CopyInformation(reference)

    def write(tmp: str) -> None:
        sitk.WriteImage(image, tmp, True)

    _atomic(Path(path), write, protect)


def write_bytes_atomic(data: bytes, path: PathLike, protect: Iterable[PathLike] = ()) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    _atomic(Path(path), write, protect)
