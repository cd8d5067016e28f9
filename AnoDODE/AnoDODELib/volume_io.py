"""Volume in, volume out: reading and validating scans, the axial slice geometry, brain masks,
intensity normalisation, in-plane resampling, and atomic writes on the input's exact grid.

Conventions
-----------
* Array layout: ``sitk.GetArrayFromImage`` order (k, j, i), i.e. numpy axis ``a`` <-> image index
  axis ``2 - a``.
* Physical coordinates are LPS (SimpleITK/ITK convention): +x toward the patient's Left, +y toward
  Posterior, +z toward Superior. Column ``j`` of the direction matrix is the physical unit vector of
  image index axis ``j``.
* Canonical slices (S, P, L): the array re-ordered (and flipped) so axis 0 steps toward +S, axis 1
  (rows) toward +P and axis 2 (columns) toward +L. Slices are axial; no interpolation is involved.
* Spacings and physical lengths are in mm; shapes and indices are in voxels.

Library code: no slicer/qt imports; errors a user can fix are :class:`InputError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from skimage import measure, morphology, transform

logger = logging.getLogger(__name__)
PathLike = str | os.PathLike

#: Physical LPS axis index of the canonical (axial, A-P, L-R) axes.
_CANONICAL_PHYSICAL = (2, 1, 0)


class InputError(ValueError):
    """A bad input; the message is one line, user-facing."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def _one_line(text: str, limit: int = 160) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _sitk_reason(exc: BaseException) -> str:
    """The informative line of a (multi-line) SimpleITK exception, without the C++ source location."""
    text = re.sub(r"\(0x[0-9a-fA-F]+\)", "", str(exc))  # object addresses: noise to a user
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if "ERROR:" in ln:
            return _one_line(ln.split("ERROR:", 1)[1])
    return _one_line(lines[-1]) if lines else type(exc).__name__


# --------------------------------------------------------------------------------------------- reading


def _read_dicom_folder(folder: Path) -> tuple[sitk.Image, list[str]]:
    """The folder's largest DICOM series, after :func:`check_dicom_slices`; and the warnings to log once the
    reader's own output is no longer silenced (a log line written while it is would go to /dev/null)."""
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(f"{folder}: folder holds no DICOM series (pass an image file or a DICOM folder)")
    files = max((reader.GetGDCMSeriesFileNames(str(folder), s) for s in series), key=len)
    warnings = []
    if len(series) > 1:
        warnings.append(
            f"{folder} holds {len(series)} DICOM series; reading the largest ({len(files)} files): pass a "
            "folder holding one series to choose another"
        )
    check_dicom_slices(folder, list(files))
    reader.SetFileNames(files)
    return reader.Execute(), warnings


#: Slice positions of a DICOM series may differ from even steps by this fraction of the step (rounding in the
#: tags); a larger difference is a missing or extra slice.
DICOM_STEP_TOLERANCE = 0.1


def dicom_slice_positions(files: list[str]) -> np.ndarray | None:
    """Each file's position (mm) along its slices' normal: ImagePositionPatient (0020,0032) projected on the
    cross product of the ImageOrientationPatient (0020,0037) row and column directions. None when a file
    lacks either tag or they do not parse (the reader's own geometry is then all there is)."""
    positions = []
    normal = None
    for name in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        try:
            reader.ReadImageInformation()
            ipp = [float(v) for v in reader.GetMetaData("0020|0032").split("\\")]
            iop = [float(v) for v in reader.GetMetaData("0020|0037").split("\\")]
        except (RuntimeError, ValueError):
            return None
        if len(ipp) != 3 or len(iop) != 6:
            return None
        if normal is None:
            normal = np.cross(iop[:3], iop[3:])
            if not np.isfinite(normal).all() or np.linalg.norm(normal) < 1e-6:
                return None
            normal = normal / np.linalg.norm(normal)
        positions.append(float(np.dot(ipp, normal)))
    return np.array(positions)


def check_dicom_slices(folder: Path, files: list[str]) -> None:
    """:class:`InputError` (one line) unless the series' slices are evenly spaced: no two at one position
    (e.g. two echoes or a repeated acquisition in one series) and no step differing from the median step by
    more than ``DICOM_STEP_TOLERANCE`` of it (a missing slice). SimpleITK reads such a series with its mean
    slice spacing, which misplaces every slice after the gap (by up to half a slice)."""
    positions = dicom_slice_positions(files)
    if positions is None or positions.size < 3:
        return
    order = np.sort(positions)
    steps = np.diff(order)
    step = float(np.median(steps))
    same = int(np.count_nonzero(steps < 1e-3))
    if same or step <= 0:
        raise InputError(
            f"{folder}: {same + 1} DICOM files of the series lie at the same slice position; "
            "pass a folder holding one acquisition"
        )
    off = np.abs(steps - step) > DICOM_STEP_TOLERANCE * step
    if off.any():
        k = int(np.argmax(np.abs(steps - step)))
        raise InputError(
            f"{folder}: the DICOM series has a gap: its slices are {step:.3g} mm apart but {steps[k]:.3g} mm "
            f"between slices {k + 1} and {k + 2} of {positions.size} (a missing file?); AnoDODE needs "
            "evenly spaced slices"
        )


def dicom_series_files(folder: PathLike) -> list[Path]:
    """The files of the DICOM series that :func:`read_image` reads from ``folder`` (the series with the most
    files, GDCM's choice and order, the reader's slice order); [] when the folder holds no DICOM series.

    For writers that refer back to the source instances (dicom_seg.py); the selection mirrors
    ``_read_dicom_folder``, and such a writer checks each file's position against the image it was read into.
    """
    reader = sitk.ImageSeriesReader()
    with _native_output_silenced():
        series = reader.GetGDCMSeriesIDs(str(folder))
        lists = [reader.GetGDCMSeriesFileNames(str(folder), s) for s in series]
    return [Path(f) for f in max(lists, key=len)] if lists else []


#: NIfTI datatype code -> numpy element type (the formats' scalar types; others are left to the reader).
_NIFTI_TYPES = {
    2: "u1",
    4: "i2",
    8: "i4",
    16: "f4",
    64: "f8",
    256: "i1",
    512: "u2",
    768: "u4",
    1024: "i8",
    1280: "u8",
    128: "u1",
    2304: "u1",
    32: "c8",
    1792: "c16",
}
_NIFTI_COMPONENTS = {128: 3, 2304: 4}  # RGB24, RGBA32: bytes per voxel beyond the element size
_GZIP_CHUNK = 1 << 20


def _gunzip_whole(path: Path) -> bytes:
    """The decompressed content of a gzip file, refusing a truncated stream or a CRC/length mismatch (one line).

    Concatenated gzip members are read in turn (as gzip readers do); trailing zero padding is allowed."""
    import zlib

    out: list[bytes] = []
    members = 0
    with open(path, "rb") as f:
        pending = b""
        while True:
            if not pending:
                pending = f.read(_GZIP_CHUNK)
            if not pending:
                break
            if members and not pending.strip(b"\0"):
                pending = b""
                continue
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                while not d.eof:
                    if not pending:
                        pending = f.read(_GZIP_CHUNK)
                        if not pending:
                            raise InputError(
                                f"{path}: the gzip stream is incomplete (a truncated or partly copied file)"
                            )
                    out.append(d.decompress(pending))
                    pending = b""
            except zlib.error as exc:
                raise InputError(f"{path}: corrupt gzip data ({exc})") from None
            pending = d.unused_data
            members += 1
    if not members:
        raise InputError(f"{path}: the file is empty")
    return b"".join(out)


def _nifti_header(
    head: bytes, path: Path
) -> tuple[str, int, tuple[int, ...], int, str, tuple[float, ...]] | None:
    """(endianness, datatype, dims, vox_offset, magic, pixdim) of a NIfTI-1/2 (or Analyze 7.5) header; None
    when ``head`` does not start with one (left to the reader). InputError for a header too short to hold one."""
    import struct

    for end in "<>":
        size = struct.unpack(end + "i", head[:4])[0] if len(head) >= 4 else None
        if size == 348:
            if len(head) < 348:
                raise InputError(f"{path}: truncated NIfTI header ({len(head)} of 348 bytes)")
            dims = struct.unpack(end + "8h", head[40:56])
            datatype = struct.unpack(end + "h", head[70:72])[0]
            vox_offset = int(struct.unpack(end + "f", head[108:112])[0] or 0)
            magic = head[344:348].rstrip(b"\0").decode("latin-1")
            pixdim = struct.unpack(end + "8f", head[76:108])
            return end, datatype, tuple(int(v) for v in dims), vox_offset, magic, pixdim
        if size == 540:
            if len(head) < 540:
                raise InputError(f"{path}: truncated NIfTI-2 header ({len(head)} of 540 bytes)")
            datatype = struct.unpack(end + "h", head[12:14])[0]
            dims = struct.unpack(end + "8q", head[16:80])
            vox_offset = struct.unpack(end + "q", head[168:176])[0]
            magic = head[4:8].rstrip(b"\0").decode("latin-1")
            pixdim = struct.unpack(end + "8d", head[104:168])
            return end, datatype, tuple(int(v) for v in dims), int(vox_offset), magic, pixdim
    return None


def check_nifti(path: PathLike) -> None:
    """Refuse a NIfTI-1/2 file (.nii, .nii.gz, or an .hdr/.img pair) whose content is not what its header says.

    SimpleITK's NIfTI reader scores files it should refuse: a gzip stream cut short or with a wrong CRC, voxel
    data shorter than the header's dimensions and datatype imply (the missing voxels read as 0), NaN or
    infinite float voxels (read as 0), and a spatial voxel size (pixdim[1..3]) of 0 or NaN (read as 1 mm). This reads the file once, decompressing it whole, and raises
    :class:`InputError` (one line naming the path) for each of these. A header it does not recognise is left
    to the reader.
    """
    p = Path(path)
    name = p.name.lower()
    compressed = name.endswith(".gz")
    raw = _gunzip_whole(p) if compressed else p.read_bytes()
    parsed = _nifti_header(raw[:540], p)
    if parsed is None:
        return
    end, datatype, dims, vox_offset, magic, pixdim = parsed
    ndim = dims[0]
    if not 1 <= ndim <= 7 or any(d < 1 for d in dims[1 : ndim + 1]):
        raise InputError(f"{p}: invalid NIfTI dimensions {list(dims[: max(1, min(ndim, 7)) + 1])}")
    unknown = [k for k in range(1, min(ndim, 3) + 1) if not (math.isfinite(pixdim[k]) and pixdim[k] != 0)]
    if unknown:  # ITK reads these as 1 mm, silently
        raise InputError(
            f"{p}: the NIfTI header's voxel size pixdim[{unknown[0]}] is {pixdim[unknown[0]]:g}: the voxel "
            "size is unknown (fix the header)"
        )
    if datatype not in _NIFTI_TYPES:
        return
    count = math.prod(dims[1 : ndim + 1])
    element = np.dtype(end + _NIFTI_TYPES[datatype])
    nbytes = count * element.itemsize * _NIFTI_COMPONENTS.get(datatype, 1)
    if magic in ("ni1", "ni2") or name.endswith(".hdr") or name.endswith(".hdr.gz"):  # data in the .img file
        stem = p.name[: -len(".hdr.gz")] if name.endswith(".hdr.gz") else p.with_suffix("").name
        candidates = [p.with_name(stem + ext) for ext in (".img", ".img.gz", ".IMG")]
        data_path = next((c for c in candidates if c.exists()), None)
        if data_path is None:
            raise InputError(f"{p}: the NIfTI header's data file {stem}.img is missing")
        data = _gunzip_whole(data_path) if data_path.name.lower().endswith(".gz") else data_path.read_bytes()
        offset, where = max(0, vox_offset), data_path
    else:
        data, offset, where = raw, max(vox_offset, 0), p
    if len(data) < offset + nbytes:
        held = max(0, len(data) - offset)
        raise InputError(
            f"{where}: truncated: the NIfTI header describes {nbytes} bytes of voxel data, the file "
            f"holds {held}"
        )
    if element.kind in "fc":
        values = np.frombuffer(
            data, dtype=element, count=count * _NIFTI_COMPONENTS.get(datatype, 1), offset=offset
        )
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise InputError(f"{p}: {bad} voxel(s) are NaN or infinite")


@contextlib.contextmanager
def _native_output_silenced() -> Iterator[None]:
    """Send file descriptors 1 and 2 to /dev/null for the duration: ITK's readers print their own multi-line
    complaints (e.g. MetaIO's "data not read completely") beside the exception this module turns into one
    line, and a host parsing stdout (the worker protocol) must not see them."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    saved: list[tuple[int, int]] = []
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        yield
        return
    try:
        for fd in (1, 2):
            try:
                saved.append((fd, os.dup(fd)))
                os.dup2(devnull, fd)
            except OSError:
                pass
        yield
    finally:
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        os.close(devnull)


def read_image(path: PathLike) -> sitk.Image:
    """Read a 3-D scalar image.

    ``path`` is a file SimpleITK reads (NIfTI, NRRD, MHA, ...) or a folder holding a DICOM series
    (the series with the most files is read, with a warning when there are several; unevenly spaced slices,
    e.g. a missing file, are refused: :func:`check_dicom_slices`). Raises :class:`InputError` (one line naming the path)
    for a missing path, an unreadable file, a NIfTI file whose content is not what its header says (see
    :func:`check_nifti`: truncated, corrupt gzip, NaN/inf voxels the NIfTI reader would hide), an empty
    image, a 2-D or single-slice image, an image of more than 3 dimensions, a multi-component (vector/RGB)
    image, or NaN/infinite voxels (any format).
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    header = _nifti_header_file(p)
    try:
        if header is not None:
            check_nifti(header)
        warnings: list[str] = []
        with _native_output_silenced():
            if p.is_dir():
                image, warnings = _read_dicom_folder(p)
            else:
                image = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        raise InputError(f"{p}: not a readable image ({_sitk_reason(exc)})") from None
    except (OSError, MemoryError) as exc:
        raise InputError(
            f"{p}: cannot be read ({getattr(exc, 'strerror', None) or type(exc).__name__})"
        ) from None
    for warning in warnings:
        logger.warning(warning)
    dim = image.GetDimension()
    size = image.GetSize()
    if dim == 2:
        hint = (
            " (a DICOM slice? pass the folder holding the series)" if p.suffix.lower() in (".dcm", "") else ""
        )
        raise InputError(f"{p}: is a 2-D image{hint}; AnoDODE needs a 3-D volume")
    if dim != 3:
        raise InputError(f"{p}: is a {dim}-D image {size}; AnoDODE needs a single 3-D volume")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{p}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            "AnoDODE needs a scalar (grey-value) volume"
        )
    check_orthogonal(image, str(p))
    if min(size) == 0:
        raise InputError(f"{p}: the image is empty (size {size})")
    if min(size) == 1:
        raise InputError(f"{p}: has a single slice (size {size}); AnoDODE needs a 3-D volume")
    values = sitk.GetArrayViewFromImage(image)
    if values.dtype.kind in "fc":
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise InputError(f"{p}: {bad} voxel(s) are NaN or infinite")
    return image


#: Direction cosines may depart from an orthonormal matrix by this much (rounding in the header).
ORTHOGONAL_TOLERANCE = 1e-3


def check_orthogonal(image: sitk.Image, name: str) -> None:
    """:class:`InputError` (one line) unless ``image``'s direction matrix D is orthonormal, max|D^T D - I| <=
    ``ORTHOGONAL_TOLERANCE``: a sheared grid (NRRD and MetaImage store one) cannot be written back as NIfTI
    (ITK's writer coerces the direction, with a multi-line warning), so the maps would not lie on the input's
    grid. Naming the angle between the two most sheared index axes."""
    if image.GetDimension() != 3:
        return
    d = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    gram = d.T @ d
    if np.isfinite(gram).all() and np.abs(gram - np.eye(3)).max() <= ORTHOGONAL_TOLERANCE:
        return
    norms = np.sqrt(np.clip(np.diag(gram), 1e-30, None))
    cosines = np.abs(gram / np.outer(norms, norms) - np.eye(3))
    i, j = np.unravel_index(int(np.nanargmax(cosines)), cosines.shape)
    angle = math.degrees(math.acos(min(1.0, float(cosines[i, j]))))
    raise InputError(
        f"{name}: the image grid is sheared (index axes {min(i, j)} and {max(i, j)} at {angle:.1f} degrees, "
        "not 90): AnoDODE needs an orthogonal grid; resample the scan onto one first"
    )


def _nifti_header_file(p: Path) -> Path | None:
    """The NIfTI/Analyze header file of ``p`` (itself, or the .hdr beside an .img), None for other formats."""
    name = p.name.lower()
    if p.is_dir():
        return None
    if name.endswith((".nii", ".nii.gz", ".hdr", ".hdr.gz")):
        return p
    for ext in (".img", ".img.gz"):
        if name.endswith(ext):
            stem = p.name[: -len(ext)]
            return next(
                (h for h in (p.with_name(stem + ".hdr"), p.with_name(stem + ".HDR")) if h.exists()), None
            )
    return None


def validate_intensities(image: sitk.Image, name: str) -> np.ndarray:
    """The image's voxels as a float32 array (sitk layout z, y, x).

    Raises :class:`InputError` (naming ``name``) for an empty (size 0) image, NaN/inf voxels, or a
    constant image.
    """
    array = sitk.GetArrayFromImage(image)
    if array.size == 0:
        raise InputError(f"{name}: the image is empty (size {image.GetSize()})")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name}: has {image.GetNumberOfComponentsPerPixel()} components per voxel")
    array = array.astype(np.float32, copy=False)  # GetArrayFromImage's array is a copy already
    finite = np.isfinite(array)
    if not finite.all():
        raise InputError(f"{name}: {int((~finite).sum())} voxel(s) are NaN or infinite")
    lo, hi = float(array.min()), float(array.max())
    if lo == hi:
        raise InputError(f"{name}: the image is constant ({lo:g} everywhere)")
    return array


#: The smallest in-plane field of view (mm, along each in-plane axis) taken for a head scan: an adult brain
#: is about 140 x 170 mm axially, a newborn's about 90 x 110 mm; 60 mm leaves room for a tight crop.
MIN_IN_PLANE_FOV_MM = 60.0
#: The fewest voxels along each in-plane axis (the model grid needs a few pixels to smooth and take features).
MIN_IN_PLANE_VOXELS = 16


def check_head_size(image: sitk.Image, name: str) -> None:
    """:class:`InputError` unless ``image`` is large enough to be a head scan: each in-plane axis (of the
    canonical axial slices) spans at least ``MIN_IN_PLANE_FOV_MM`` mm and ``MIN_IN_PLANE_VOXELS`` voxels.
    (Through-plane, two slices are enough: thick-slab scans are valid input.)"""
    geometry = slice_geometry(image)
    _, rows, cols = geometry.canonical_shape
    fov = (rows * geometry.spacing_mm[1], cols * geometry.spacing_mm[2])
    if min(fov) < MIN_IN_PLANE_FOV_MM or min(rows, cols) < MIN_IN_PLANE_VOXELS:
        raise InputError(
            f"{name}: too small to be a head scan ({rows} x {cols} voxels, "
            f"{fov[0]:.3g} x {fov[1]:.3g} mm in-plane; at least {MIN_IN_PLANE_VOXELS} voxels and "
            f"{MIN_IN_PLANE_FOV_MM:g} mm along each in-plane axis are needed)"
        )


#: Voxel spacing (mm) AnoDODE scores: finer than MIN_SPACING_MM is a header error (no MRI resolves 50 um), an
#: in-plane pixel coarser than MAX_IN_PLANE_SPACING_MM would be upsampled more than 4x per axis onto a 2 mm
#: model grid, a slice thicker than MAX_SLICE_SPACING_MM holds no usable anatomy.
MIN_SPACING_MM, MAX_IN_PLANE_SPACING_MM, MAX_SLICE_SPACING_MM = 0.05, 8.0, 30.0
#: The largest physical extent (mm) along any axis: a head is about 250 mm long, a torso field of view 500 mm.
MAX_EXTENT_MM = 600.0
#: The most model-grid locations a scan may have (slices x rows x columns at the model's in-plane spacing):
#: about 1 GB of features and context; a whole-brain 1 mm scan on the 2 mm grid has about 2.5 million.
MAX_GRID_LOCATIONS = 1 << 25


def check_scan_geometry(image: sitk.Image, name: str, grid_spacing_mm: float | None = None) -> None:
    """:class:`InputError` (one line naming ``name``) unless ``image``'s header describes a plausible scan,
    checked from the header alone, before anything is allocated for scoring:

    * every spacing finite and at least ``MIN_SPACING_MM``; in-plane spacing at most
      ``MAX_IN_PLANE_SPACING_MM``, slice spacing at most ``MAX_SLICE_SPACING_MM`` (canonical axes);
    * the extent (size x spacing, mm) along every axis at most ``MAX_EXTENT_MM``;
    * with ``grid_spacing_mm`` (the model grid's in-plane pixel, mm), at most ``MAX_GRID_LOCATIONS``
      model-grid locations: n_slices x round(rows x dy / g) x round(cols x dx / g).

    A header with a wrong spacing (1000 mm, 0.001 mm) otherwise makes the resampled grids explode: minutes of
    work, then an allocation failure."""
    spacing = np.array(image.GetSpacing(), dtype=float)
    size = np.array(image.GetSize(), dtype=float)
    shown = tuple(round(float(v), 4) for v in spacing)
    if not np.isfinite(spacing).all() or (spacing < MIN_SPACING_MM).any():
        raise InputError(
            f"{name}: implausible voxel spacing {shown} mm (each must be at least {MIN_SPACING_MM:g} mm); "
            "check the file's header"
        )
    geometry = slice_geometry(image)
    slice_mm, dy, dx = geometry.spacing_mm
    if max(dy, dx) > MAX_IN_PLANE_SPACING_MM or slice_mm > MAX_SLICE_SPACING_MM:
        raise InputError(
            f"{name}: implausible voxel spacing {shown} mm for a brain MRI (in-plane at most "
            f"{MAX_IN_PLANE_SPACING_MM:g} mm, slices at most {MAX_SLICE_SPACING_MM:g} mm); check the header"
        )
    extent = size * spacing
    if extent.max() > MAX_EXTENT_MM:
        raise InputError(
            f"{name}: the image spans {tuple(round(float(v)) for v in extent)} mm "
            f"(size {tuple(int(v) for v in size)} x spacing {shown} mm); a head scan spans at most "
            f"{MAX_EXTENT_MM:g} mm along each axis: check the header's spacing"
        )
    if grid_spacing_mm is not None:
        n, rows, cols = geometry.canonical_shape
        h, w = _target_shape((rows, cols), (dy, dx), grid_spacing_mm)
        if n * h * w > MAX_GRID_LOCATIONS:
            raise InputError(
                f"{name}: {n} slices of {h} x {w} pixels on the model's {grid_spacing_mm:g} mm grid are "
                f"more than the {MAX_GRID_LOCATIONS} locations AnoDODE scores at once"
            )


#: A --mask covering less than this fraction of the image's non-background voxels is probably a lesion mask.
LESION_SIZED_MASK_FRACTION = 0.1


def mask_coverage_warning(array: np.ndarray, mask: np.ndarray, name: str) -> str | None:
    """A one-line warning when ``mask`` (bool, ``array``'s layout) covers less than
    ``LESION_SIZED_MASK_FRACTION`` of the non-background voxels of ``array`` (background: the most frequent
    value on the array's border faces): a brain mask covers most of a skull-stripped scan, a lesion mask
    a small part of it. None otherwise."""
    foreground = int(np.count_nonzero(~_is_background(array, _background_value(array))))
    covered = int(np.count_nonzero(mask))
    if foreground and covered < LESION_SIZED_MASK_FRACTION * foreground:
        return (
            f"{name}: the mask covers only {100.0 * covered / foreground:.1f}% of the scan's non-background "
            "voxels; --mask expects a brain mask, not a lesion mask"
        )
    return None


def _grid_difference(a: sitk.Image, b: sitk.Image, tol: float) -> str:
    """'' when ``a`` and ``b`` share a grid, else which attribute differs (one short phrase)."""
    if a.GetDimension() != b.GetDimension():
        return f"dimension {a.GetDimension()} vs {b.GetDimension()}"
    if a.GetSize() != b.GetSize():
        return f"size {a.GetSize()} vs {b.GetSize()}"
    sa, sb = np.array(a.GetSpacing(), float), np.array(b.GetSpacing(), float)
    if not np.allclose(sa, sb, rtol=tol, atol=0):
        return (
            f"spacing {tuple(round(float(v), 4) for v in sa)} vs {tuple(round(float(v), 4) for v in sb)} mm"
        )
    # origin: within 10*tol voxels (mm tolerance scaled by the spacing; NIfTI stores float32)
    if not np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=10 * tol * max(1.0, float(sa.max()))):
        return (
            f"origin {tuple(round(float(v), 3) for v in a.GetOrigin())} vs "
            f"{tuple(round(float(v), 3) for v in b.GetOrigin())} mm"
        )
    if not np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=tol):
        return "direction (orientation) differs"
    return ""


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> bool:
    """Whether two images share a voxel grid: equal size; spacing equal within ``tol`` relative;
    origin within ``10*tol`` voxels (in mm: ``10*tol*max(1, spacing)``); direction cosines within ``tol``."""
    return _grid_difference(a, b, tol) == ""


def align_to(
    image: sitk.Image, reference: sitk.Image, name: str, region: np.ndarray | None = None
) -> np.ndarray:
    """``image``'s voxels in ``reference``'s array layout (float32, validated like any input).

    On the reference's grid (see :func:`same_grid`) the voxels are returned as they are. Otherwise each
    reference voxel gets ``image`` linearly interpolated at its physical position (mm): the two must
    already be aligned in physical space (one session, or co-registered); nothing is registered here.
    Raises :class:`InputError` when a voxel of ``region`` (bool, reference layout; default: all) lies
    outside ``image``.
    """
    array = validate_intensities(image, name)
    if image.GetDimension() != reference.GetDimension():
        raise InputError(
            f"{name}: {image.GetDimension()}-D image for a {reference.GetDimension()}-D reference"
        )
    if same_grid(image, reference):
        return array
    logger.warning(
        "%s is not on the reference grid (%s): resampled by physical position, not registered",
        name,
        _grid_difference(image, reference, 1e-4),
    )
    moved = sitk.Resample(
        sitk.Cast(image, sitk.sitkFloat32),
        reference,
        sitk.Transform(),
        sitk.sitkLinear,
        float("nan"),
        sitk.sitkFloat32,
    )
    out = sitk.GetArrayFromImage(moved)
    outside = ~np.isfinite(out)
    if region is not None:
        outside &= region.astype(bool)
    if outside.any():
        raise InputError(
            f"{name}: does not cover {int(outside.sum())} voxel(s) of the brain; it must be "
            "aligned with the primary scan"
        )
    return np.nan_to_num(out, nan=0.0).astype(np.float32)


#: A --mask on a skull-stripped scan with more than this fraction of its voxels on the scan's constant
#: background is not a brain mask (an all-ones mask on BraTS: 83%; a brain mask: under 1%).
MASK_OUTSIDE_FRACTION = 0.5


def read_mask(path: PathLike, reference: sitk.Image) -> np.ndarray:
    """A brain mask as a bool array in ``reference``'s sitk array layout (voxels with value > 0.5).

    Raises :class:`InputError` when the file cannot be read (see :func:`read_image`), when its grid
    differs from the reference's (size, spacing, origin, direction; see :func:`same_grid`), when it
    is empty, when it covers every voxel, or when, on a skull-stripped scan (at least 60% of the border
    faces hold one background value), more than ``MASK_OUTSIDE_FRACTION`` of its voxels lie on that background.
    """
    mask = read_image(path)
    diff = _grid_difference(mask, reference, 1e-4)
    if diff:
        raise InputError(f"{path}: the mask is not on the input's voxel grid ({diff}); resample it first")
    array = sitk.GetArrayFromImage(mask)
    if not np.isfinite(array).all():
        raise InputError(f"{path}: the mask has NaN or infinite voxels")
    out = array > 0.5
    if not out.any():
        raise InputError(f"{path}: the mask is empty (no voxel above 0.5)")
    if out.all():
        raise InputError(
            f"{path}: the mask covers every voxel of the image; --mask expects a brain mask (1 in the brain, "
            "0 outside it)"
        )
    scan = sitk.GetArrayViewFromImage(reference)
    faces = _border_faces(scan)
    background = _background_value(scan)
    if float(_is_background(faces, background).mean()) >= 0.6:  # a skull-stripped scan's constant background
        outside = float(_is_background(scan[out], background).mean())
        if outside > MASK_OUTSIDE_FRACTION:
            raise InputError(
                f"{path}: the mask lies mostly outside the brain ({100 * outside:.0f}% of its voxels hold the "
                f"scan's background value {background:g}); --mask expects a brain mask"
            )
    return out


# -------------------------------------------------------------------------------------------- geometry


def _direction(image: sitk.Image) -> np.ndarray:
    if image.GetDimension() != 3:
        raise InputError(f"expected a 3-D image, got {image.GetDimension()}-D")
    d = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)  # column j = index axis j
    if not np.isfinite(d).all() or abs(np.linalg.det(d)) < 1e-3:
        raise InputError("the image's direction matrix is degenerate (axes not independent)")
    return d


def _index_axis_per_physical(d: np.ndarray) -> tuple[int, int, int]:
    """For each physical axis (x=L, y=P, z=S) the image index axis that runs along it.

    Each index axis claims its dominant physical axis (largest |cosine| in its direction column). When
    two index axes claim the same physical axis (directions near 45 degrees), the one-to-one assignment
    with the largest total |cosine| is used instead, with a warning.
    """
    a = np.abs(d)
    claims = [int(np.argmax(a[:, j])) for j in range(3)]  # physical axis of index axis j
    if sorted(claims) == [0, 1, 2]:
        return tuple(claims.index(phys) for phys in range(3))  # type: ignore[return-value]
    best = max(
        itertools.permutations(range(3)), key=lambda perm: sum(a[phys, perm[phys]] for phys in range(3))
    )
    logger.warning(
        "oblique image: index axes do not each have a distinct dominant direction; "
        "using the closest axis assignment %s",
        best,
    )
    return best  # type: ignore[return-value]


@dataclass(frozen=True)
class SliceGeometry:
    """How the sitk array maps to canonical slices (S, P, L): a permutation plus flips; spacings in mm.

    axes: numpy axes of the input array giving (axial, A-P, L-R).
    flips: whether each canonical axis is flipped so its index increases toward +S, +P, +L.
    spacing_mm: (slice spacing, row spacing, column spacing) in mm, canonical order.
    shape: the input array shape (sitk layout, voxels).
    """

    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    spacing_mm: tuple[float, float, float]
    shape: tuple[int, int, int]

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        """(n_slices, rows, cols) in voxels."""
        return tuple(self.shape[a] for a in self.axes)  # type: ignore[return-value]

    def _flip_axes(self) -> tuple[int, ...]:
        return tuple(i for i, f in enumerate(self.flips) if f)

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """Input-layout array (``shape``) -> canonical (n_slices, rows, cols); a view where possible."""
        if tuple(array.shape) != tuple(self.shape):
            raise ValueError(f"array shape {tuple(array.shape)} does not match the geometry's {self.shape}")
        out = np.transpose(array, self.axes)
        flips = self._flip_axes()
        return np.flip(out, flips) if flips else out

    def from_canonical(self, canon: np.ndarray) -> np.ndarray:
        """Exact inverse of :meth:`to_canonical`: canonical array -> input layout (contiguous copy)."""
        if tuple(canon.shape) != self.canonical_shape:
            raise ValueError(f"canonical shape {tuple(canon.shape)} does not match {self.canonical_shape}")
        flips = self._flip_axes()
        out = np.flip(canon, flips) if flips else canon
        return np.ascontiguousarray(np.transpose(out, np.argsort(self.axes)))


def slice_geometry(image: sitk.Image) -> SliceGeometry:
    """The permutation and flips taking ``image``'s array to canonical (S, P, L) slices.

    Derived from the direction cosines only (works for oblique directions, RAS or LPS storage,
    sagittally or coronally stored scans); each physical axis is claimed by exactly one index axis.
    """
    d = _direction(image)
    index_of_phys = _index_axis_per_physical(d)
    index_axes = tuple(index_of_phys[phys] for phys in _CANONICAL_PHYSICAL)  # (axial, A-P, L-R)
    axes = tuple(2 - j for j in index_axes)
    flips = tuple(bool(d[phys, j] < 0) for phys, j in zip(_CANONICAL_PHYSICAL, index_axes))
    spacing = image.GetSpacing()
    spacing_mm = tuple(float(spacing[j]) for j in index_axes)
    size = image.GetSize()
    shape = (int(size[2]), int(size[1]), int(size[0]))
    return SliceGeometry(axes, flips, spacing_mm, shape)  # type: ignore[arg-type]


def axial_axis(image: sitk.Image) -> int:
    """The numpy axis (of ``sitk.GetArrayFromImage``) along which the patient's S-I direction runs.

    The image index axis ``j`` whose direction column has the largest |S| (LPS z) component; the numpy
    axis is ``2 - j``. Identical to ``slice_geometry(image).axes[0]`` (which also resolves near-45
    degree ties consistently with the other two axes).
    """
    return slice_geometry(image).axes[0]


# ---------------------------------------------------------------------------------------- brain masks


def _border_faces(array: np.ndarray) -> np.ndarray:
    """All voxels on the six faces of a 3-D array (edges counted more than once; fine for fractions)."""
    return np.concatenate(
        [
            array[0].ravel(),
            array[-1].ravel(),
            array[:, 0].ravel(),
            array[:, -1].ravel(),
            array[:, :, 0].ravel(),
            array[:, :, -1].ravel(),
        ]
    )


def _background_value(array: np.ndarray) -> float:
    values, counts = np.unique(_border_faces(array), return_counts=True)
    return float(values[np.argmax(counts)])


def _is_background(array: np.ndarray, background: float) -> np.ndarray:
    if np.issubdtype(array.dtype, np.integer):
        return array == background
    return np.isclose(array, background, rtol=0, atol=1e-6 * max(1.0, abs(background)))


def _fill_enclosed_3d(mask: np.ndarray) -> np.ndarray:
    """Fill background regions not connected to the array border (cavities fully inside the mask)."""
    labels = measure.label(~mask, connectivity=1)
    outside = np.unique(_border_faces(labels))
    return ~np.isin(labels, outside[outside > 0]) | mask


def brain_mask_from_image(
    array: np.ndarray, *, slice_axis: int = 0, keep_fraction: float = 0.1
) -> np.ndarray:
    """Brain mask of a skull-stripped scan (bool, same layout as ``array``).

    Brain = voxels that differ from the background value, the most frequent value on the array's
    border faces (some BraTS preprocessings leave a constant non-zero background). Keeps the largest
    6-connected component and any other component with at least ``keep_fraction`` of its size (e.g. a
    cerebellum that touches the rest only diagonally), fills cavities enclosed in 3-D, then fills small
    holes (< 2% of a slice) slice by slice along ``slice_axis`` (pass :func:`axial_axis` for axial slices).
    """
    if array.ndim != 3:
        raise ValueError(f"expected a 3-D array, got shape {array.shape}")
    mask = ~_is_background(array, _background_value(array))
    if not mask.any():
        return mask
    labels = measure.label(mask, connectivity=1)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = np.flatnonzero(sizes >= max(1, keep_fraction * sizes.max()))
    mask = np.isin(labels, keep)
    mask = _fill_enclosed_3d(mask)
    moved = np.moveaxis(mask, slice_axis, 0)  # a view: filling writes into ``mask``
    max_hole = max(64, moved[0].size // 50)
    for k in range(moved.shape[0]):
        if moved[k].any():
            moved[k] = morphology.remove_small_holes(moved[k], max_size=max_hole)
    return mask


def _side_faces(array: np.ndarray, slice_axis: int) -> np.ndarray:
    """The voxels on the four faces of a 3-D array that bound its slices along ``slice_axis`` in-plane (the
    faces crossed by the in-plane axes; the first and last slice are not among them)."""
    moved = np.moveaxis(array, slice_axis, 0)
    return np.concatenate(
        [moved[:, 0].ravel(), moved[:, -1].ravel(), moved[:, :, 0].ravel(), moved[:, :, -1].ravel()]
    )


def looks_skull_stripped(array: np.ndarray, mask: np.ndarray, slice_axis: int | None = None) -> bool:
    """Heuristic: whether ``array`` looks skull-stripped (then its non-background region is its brain).

    A skull-stripped scan sits in a constant background that fills the field-of-view border: True when
    at least 60% of the border voxels hold the background value (the most frequent border value), the mask
    touches at most 25% of the border voxels, and the mask covers less than 70% of the volume. A raw head
    scan has noisy background and tissue (scalp, neck) reaching the border. With ``slice_axis`` (the axial
    axis) the border is the in-plane one only (``_side_faces``), so a slab that cuts through the brain (a
    partial-coverage or cropped stripped scan, whose first and last slices are full of brain) still counts.
    """
    if array.shape != mask.shape:
        raise ValueError(f"array {array.shape} and mask {mask.shape} differ in shape")
    if slice_axis is None:
        faces, mask_faces = _border_faces(array), _border_faces(mask.astype(bool))
    else:
        faces, mask_faces = _side_faces(array, slice_axis), _side_faces(mask.astype(bool), slice_axis)
    background_fraction = float(_is_background(faces, _background_value(array)).mean())
    mask_border = float(mask_faces.mean())
    return bool(background_fraction >= 0.6 and mask_border <= 0.25 and float(mask.mean()) < 0.7)


# --------------------------------------------------------------------------------------- intensities


#: The white-matter peak is the mode of a kernel density estimate of the brain's core intensities whose Gaussian
#: kernel has a standard deviation of the core's range (1st to 99th percentile) over WM_PEAK_BANDWIDTH_DIVISOR.
WM_PEAK_BANDWIDTH_DIVISOR = 64
#: Grid cells per kernel standard deviation on which the density is evaluated (linear binning).
_KDE_CELLS_PER_SIGMA = 16


def intensity_mode(core: np.ndarray, lo: float, hi: float) -> float:
    """The mode of a Gaussian kernel density estimate of ``core`` (values in [lo, hi], 1-D):

        f(x) = sum_i K_h(x - v_i),   K_h the normal density of standard deviation h = (hi - lo) / 64,

    evaluated with linear binning on a grid of h / 16 (each value split between its two nearest grid points in
    proportion to its distance, so no value is moved), refined by a parabola through the highest grid point
    and its neighbours.

    Why not a histogram's fullest bin: intensities are quantised (a scan stored as integers, or as floats
    rounded in an earlier step: 0.01 on the BraTS 2015 FLAIRs), and bins whose width is not a multiple of the
    quantum hold alternately k and k + 1 levels. On a broad white-matter peak that comb, not the anatomy,
    decides which bin is fullest: the same scan stored as int16 x 100 moved the peak by 0.16 white-matter
    spreads, one voxel of mask erosion by 0.05, enough to change the anomalous volume by 11 %. The kernel
    is wider than a quantum and the binning exact to first order, so f depends on the values, not on how they
    are stored (benchmarks/bench_storage_invariance.py)."""
    sigma = (hi - lo) / WM_PEAK_BANDWIDTH_DIVISOR
    step = sigma / _KDE_CELLS_PER_SIGMA
    pad = 4 * _KDE_CELLS_PER_SIGMA  # the kernel's reach beyond [lo, hi], in grid cells
    n = int(round((hi - lo) / step)) + 1 + 2 * pad
    t = (core - lo) / step + pad  # grid coordinate of each value
    i = np.clip(np.floor(t).astype(np.int64), 0, n - 2)
    frac = np.clip(t - i, 0.0, 1.0)
    weights = np.bincount(i, weights=1.0 - frac, minlength=n) + np.bincount(i + 1, weights=frac, minlength=n)
    from scipy import ndimage

    density = ndimage.gaussian_filter1d(weights[:n], _KDE_CELLS_PER_SIGMA, mode="constant", truncate=4.0)
    k = int(np.argmax(density))
    offset = 0.0
    if 0 < k < n - 1:
        a, b, c = density[k - 1], density[k], density[k + 1]
        curvature = a - 2.0 * b + c
        if curvature < 0:
            offset = 0.5 * (a - c) / curvature
    return float(lo + (k - pad + offset) * step)


def intensity_reference(values: np.ndarray, reference: str = "mean") -> tuple[float, float]:
    """(centre, scale) that map brain intensities ``values`` (1-D) to normalised units (x - centre) / scale.

    Both use the brain voxels between the 1st and 99th percentiles (the "core"):
    "mean":    centre = mean, scale = standard deviation of the core;
    "wm_peak": centre = the mode of the core's intensity density (:func:`intensity_mode`: a Gaussian kernel
               density estimate, bandwidth 1/64 of the core's range), which on FLAIR is normal-appearing white
               matter; scale = 1.4826 x the median absolute deviation of the core about that mode (equal to
               the standard deviation for a Gaussian around the peak).
    Both are equivariant: values a x + b (a > 0) give centre a c + b and scale a s.
    """
    from .config import INTENSITY_REFERENCES

    if reference not in INTENSITY_REFERENCES:
        raise ValueError(
            f"unknown intensity reference {reference!r}; valid: {', '.join(INTENSITY_REFERENCES)}"
        )
    lo, hi = np.percentile(values, [1, 99])
    core = values[(values >= lo) & (values <= hi)]
    if reference == "mean" or hi <= lo:
        return float(core.mean()), float(core.std())
    centre = intensity_mode(core.astype(np.float64), float(lo), float(hi))
    return centre, float(1.4826 * np.median(np.abs(core - centre)))


def normalise_intensity(
    array: np.ndarray,
    mask: np.ndarray,
    clip_z: float = 6.0,
    reference: str = "mean",
    name: str = "input",
) -> np.ndarray:
    """Normalised intensity within the brain: ``(x - centre) / scale`` with the ``reference``'s robust centre
    and scale (see ``intensity_reference``; "mean" is the z-score). Returns float32, 0 outside the brain,
    clipped to ``[-clip_z, clip_z]``. Raises :class:`InputError` (naming ``name``, the image's file) for an
    empty mask or constant brain intensities.
    """
    if array.shape != mask.shape:
        raise ValueError(f"array {array.shape} and mask {mask.shape} differ in shape")
    mask = mask.astype(bool)
    v = array[mask].astype(np.float64)
    if v.size == 0:
        raise InputError(f"{name}: the brain mask is empty")
    mean, std = intensity_reference(v, reference)
    if std <= 1e-12 * max(1.0, abs(mean)):
        mean, std = float(v.mean()), float(v.std())  # a mostly-flat brain with a few outliers
    if std <= 1e-12 * max(1.0, abs(mean)):
        raise InputError(f"{name}: the brain's intensities are constant")
    out = np.zeros(array.shape, dtype=np.float32)  # computed at the brain's voxels only (a fifth of a scan)
    out[mask] = np.clip((v - mean) / std, -clip_z, clip_z)
    return out


# ---------------------------------------------------------------------------------------- resampling


def _target_shape(
    shape: tuple[int, int], spacing_in: tuple[float, float], spacing_out: float
) -> tuple[int, int]:
    return (
        max(1, round(shape[0] * spacing_in[0] / spacing_out)),
        max(1, round(shape[1] * spacing_in[1] / spacing_out)),
    )


def resample_slices(
    slices: np.ndarray, spacing_in: tuple[float, float], spacing_out: float, order: int = 1
) -> np.ndarray:
    """Resample every slice of ``slices`` (S, H, W) to a grid of about ``spacing_out`` mm: (S, h, w)
    with ``h = round(H * spacing_in[0] / spacing_out)`` and ``w = round(W * spacing_in[1] / spacing_out)``.

    The output covers the same physical field of view (H*spacing_in[0] by W*spacing_in[1] mm; pixel
    edges aligned, so the effective pixel size is ``H*spacing_in[0]/h``), the convention
    :func:`resample_back` inverts. Downsampling is anti-aliased with a Gaussian for ``order > 0``;
    use ``order=0`` (nearest) for label masks. Slices are never mixed. Returns float32.
    """
    if slices.ndim != 3:
        raise ValueError(f"expected (S, H, W) slices, got shape {slices.shape}")
    if spacing_out <= 0 or min(spacing_in) <= 0:
        raise ValueError(f"spacings must be positive (in {spacing_in}, out {spacing_out} mm)")
    s, h, w = slices.shape
    th, tw = _target_shape((h, w), spacing_in, spacing_out)
    data = slices.astype(np.float32)
    if (th, tw) == (h, w):
        return data.copy() if data is slices else data
    anti = order > 0 and (th < h or tw < w)
    sigma = (0.0, max(0.0, (h / th - 1) / 2), max(0.0, (w / tw - 1) / 2)) if anti else None
    out = transform.resize(
        data,
        (s, th, tw),
        order=order,
        mode="edge",
        anti_aliasing=anti,
        anti_aliasing_sigma=sigma,
        preserve_range=True,
    )
    return out.astype(np.float32)


def resample_back(maps: np.ndarray, shape: tuple[int, int], order: int = 1) -> np.ndarray:
    """(S, h, w) model-grid maps -> (S, H, W) on the original in-plane grid ``shape`` (voxels), the
    geometric inverse of :func:`resample_slices` (same field of view, pixel edges aligned). float32."""
    if maps.ndim != 3:
        raise ValueError(f"expected (S, h, w) maps, got shape {maps.shape}")
    s = maps.shape[0]
    data = maps.astype(np.float32)
    if maps.shape[1:] == tuple(shape):
        return data.copy() if data is maps else data
    return transform.resize(
        data, (s, *shape), order=order, mode="edge", anti_aliasing=False, preserve_range=True
    ).astype(np.float32)


def spacing_warnings(image: sitk.Image) -> list[str]:
    """One-line warnings for implausible voxel spacing (mm): any spacing < 0.2 mm or > 10 mm, or a
    slice spacing more than 3x the in-plane spacing."""
    sp = np.array(image.GetSpacing(), dtype=float)
    out = []
    if (sp < 0.2).any() or (sp > 10).any():
        out.append(f"implausible voxel spacing {tuple(round(float(v), 3) for v in sp)} mm for a brain MRI")
    geo = slice_geometry(image)
    if geo.spacing_mm[0] > 3 * max(geo.spacing_mm[1:]):
        out.append(
            f"thick slices ({geo.spacing_mm[0]:g} mm vs {max(geo.spacing_mm[1:]):g} mm in-plane): "
            "the map is computed per slice, small lesions may be missed"
        )
    return out


# ------------------------------------------------------------------------------------------- writing


def image_like(array: np.ndarray, reference: sitk.Image, pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
    """``array`` (``reference``'s sitk array layout) as an image with exactly the reference's size, spacing
    (mm), origin (mm) and direction, cast to ``pixel_type`` (bool arrays as uint8 first)."""
    expected = tuple(reversed(reference.GetSize()))
    if tuple(array.shape) != expected:
        raise ValueError(f"array shape {tuple(array.shape)} does not match the reference {expected}")
    data = np.ascontiguousarray(array.astype(np.uint8) if array.dtype == bool else array)
    image = sitk.Cast(sitk.GetImageFromArray(data), pixel_type)
    image.CopyInformation(reference)
    return image


def write_image(image: sitk.Image, path: PathLike) -> None:
    """``sitk.WriteImage`` with compression; the format follows the extension (not atomic by itself: write
    into a staging path of :mod:`atomic_write`)."""
    sitk.WriteImage(image, str(path), True)
