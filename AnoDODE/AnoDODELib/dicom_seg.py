"""DICOM Segmentation (SEG) of a DICOM series input's label, for PACS and DICOM viewers.

When the scan comes from a DICOM series folder, ``anodode score`` adds ``<stem>_seg.dcm`` to its output set
(:func:`seg_output`, an ``outputs.ExtraOutput``: it appears with the other files or not at all): the label
as a Segmentation Storage instance (SOP class 1.2.840.10008.5.1.4.1.1.66.4), binary, one frame per source
slice on the source frames' geometry (each frame references its source instance and carries its position),
in the source's study and frame of reference, as a new series, with the pixel spacing and spacing between
slices of the volume read (not copied from a source instance, whose SpacingBetweenSlices may be wrong, as
GDCM writes 1 for a 2-D slice). Its one segment:

* label "Anomaly"; category SCT 49755003 "Morphologically Abnormal Structure", type SCT 52988006
  "Lesion", anatomic region SCT 12738006 "Brain";
* algorithm type AUTOMATIC, algorithm identification: name "AnoDODE", version the model's version (the first
  12 hex digits of its weights' SHA-256, ``summary.model_version``), family DCM 123110 "Artificial
  Intelligence", parameters the label threshold (anomaly-map units, see the report's ``map_units``), the
  model's name and the preset.

It is written with highdicom, an optional dependency (``pip install "anodode[dicom]"``): without it a DICOM
input gets its NIfTI outputs and one warning line saying how to enable the SEG. A series whose instances
cannot be referenced (multi-frame instances, a missing position, orientation or UID) gets the same: its
NIfTI outputs and one warning line naming why.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from . import __version__, volume_io
from .outputs import ExtraOutput

logger = logging.getLogger(__name__)

#: How to install the optional DICOM SEG writer (the ``dicom`` extra of pyproject.toml).
INSTALL_HINT = 'pip install "anodode[dicom]"'
#: The output kind (report ``outputs`` key) and the file name's ending after the output stem.
KIND = "dicom_seg"
SUFFIX = "_seg.dcm"
SEGMENT_LABEL = "Anomaly"
#: Attributes every source instance needs for the SEG to reference it and share its geometry.
REQUIRED_ATTRIBUTES = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
)
#: Largest distance (voxels, along each index axis) between a source instance's position and the nearest
#: slice origin of the volume read from the series.
POSITION_TOLERANCE_VOXELS = 0.1
#: Largest difference of a source instance's orientation cosines from the volume's direction columns.
ORIENTATION_TOLERANCE = 1e-3


def highdicom_available() -> bool:
    """Whether highdicom (and so pydicom) can be imported."""
    try:
        import highdicom  # noqa: F401
    except ImportError:
        return False
    return True


def seg_output(folder: Path, name: str) -> ExtraOutput | None:
    """The DICOM SEG output of a scan read from the DICOM series folder ``folder``, as file ``name``.

    None for a path that is not a folder, and None with one warning line when highdicom is not installed or
    the series cannot be referenced (see :func:`unreferenceable`). A folder without a readable series also
    gives None: ``volume_io.read_image`` then refuses the scan with its own one-line error. The series' files
    (``volume_io.dicom_series_files``) are read here, headers only, and protected as inputs.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    if not highdicom_available():
        logger.warning(
            "%s: no DICOM SEG written: highdicom is not installed (%s enables it)", folder, INSTALL_HINT
        )
        return None
    import pydicom
    from pydicom.errors import InvalidDicomError

    files = volume_io.dicom_series_files(folder)
    if not files:
        return None
    try:
        sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    except (InvalidDicomError, OSError, ValueError) as exc:
        logger.warning("%s: no DICOM SEG written: a source instance cannot be read (%s)", folder, exc)
        return None
    problem = unreferenceable(sources)
    if problem:
        logger.warning("%s: no DICOM SEG written: %s", folder, problem)
        return None
    return ExtraOutput(KIND, name, partial(write_seg, sources=sources), reads=tuple(files))


def unreferenceable(sources: Sequence[Any]) -> str | None:
    """Why a SEG cannot reference the single-frame ``sources`` (pydicom datasets), or None when it can:
    a missing attribute of ``REQUIRED_ATTRIBUTES``, multi-frame instances, or instances of several series,
    studies or frames of reference."""
    for ds in sources:
        missing = [a for a in REQUIRED_ATTRIBUTES if ds.get(a) in (None, "")]
        if missing:
            return f"instance {ds.get('SOPInstanceUID', '?')} lacks {', '.join(missing)}"
        if int(ds.get("NumberOfFrames") or 1) > 1:
            return "the series holds multi-frame instances (a SEG is written for single-frame series)"
    for attribute in ("SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID"):
        if len({str(ds.get(attribute)) for ds in sources}) > 1:
            return f"the instances differ in {attribute}"
    return None


def source_slices(sources: Sequence[Any], image: sitk.Image) -> list[int]:
    """The slice index (numpy axis 0 of ``sitk.GetArrayFromImage(image)``) of each source instance.

    Each instance must lie on ``image``'s grid: Rows x Columns = the image's size along index axes 1 and 0,
    its orientation cosines the image's first two direction columns (within ``ORIENTATION_TOLERANCE``), its
    ImagePositionPatient (mm, LPS) at continuous index (0, 0, k) with k an integer (within
    ``POSITION_TOLERANCE_VOXELS``), and the instances cover every slice once. ``volume_io.InputError`` (one
    line) otherwise: the files are not the ones the volume was read from.
    """
    size = image.GetSize()
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    slices: list[int] = []
    for ds in sources:
        uid = ds.get("SOPInstanceUID", "?")
        if (int(ds.Rows), int(ds.Columns)) != (size[1], size[0]):
            raise volume_io.InputError(
                f"DICOM instance {uid} has {ds.Rows} x {ds.Columns} pixels, the volume {size[1]} x {size[0]}"
            )
        cosines = np.array([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
        if np.abs(cosines - np.concatenate([direction[:, 0], direction[:, 1]])).max() > ORIENTATION_TOLERANCE:
            raise volume_io.InputError(f"DICOM instance {uid}'s orientation differs from the volume's")
        index = np.array(
            image.TransformPhysicalPointToContinuousIndex([float(v) for v in ds.ImagePositionPatient])
        )
        k = int(round(index[2]))
        off = np.abs(index - np.array([0.0, 0.0, k])).max()
        if off > POSITION_TOLERANCE_VOXELS or not 0 <= k < size[2]:
            raise volume_io.InputError(
                f"DICOM instance {uid} lies off the volume's slices (continuous index {index.round(3).tolist()})"
            )
        slices.append(k)
    if sorted(slices) != list(range(size[2])):
        raise volume_io.InputError(
            f"the {len(sources)} DICOM instances do not cover the volume's {size[2]} slices once each"
        )
    return slices


def write_seg(
    path: Path, image: sitk.Image, result: Any, report: Mapping[str, Any], *, sources: Sequence[Any]
) -> None:
    """Write the binary SEG of ``result.label`` (uint8 0/1 in ``image``'s sitk array layout, the grid the
    series was read into) to ``path``: frame n is the label's slice ``source_slices(...)[n]``, referencing
    source instance n; the segment and algorithm as the module docstring says, the threshold from ``report``.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.valuerep import format_number_as_ds

    slices = source_slices(sources, image)
    order = np.argsort(slices, kind="stable")
    ordered = [sources[i] for i in order]
    label = np.asarray(result.label)
    pixels = np.ascontiguousarray((label[np.asarray(slices)[order]] > 0).astype(np.uint8))
    threshold = float(report["threshold"])
    algorithm = hd.AlgorithmIdentificationSequence(
        name="AnoDODE",
        version=str(report.get("model_version") or "unknown"),
        family=codes.cid7162.ArtificialIntelligence,
        parameters={
            "threshold": f"{threshold:.6g}",
            "model": str(report.get("model", "unnamed"))[:64],
            "preset": str(report.get("preset", "")),
        },
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=[codes.SCT.Brain],
    )
    source_series = int(ordered[0].get("SeriesNumber") or 0)
    seg = hd.seg.Segmentation(
        source_images=ordered,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=hd.UID(),
        series_number=min(source_series + 1000, 2**31 - 1),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="AnoDODE",
        manufacturer_model_name="AnoDODE",
        software_versions=__version__,
        device_serial_number=str(report.get("model_version") or "unknown"),
        series_description="AnoDODE anomaly label",
        content_label="ANOMALY",
        content_description=f"AnoDODE anomaly map > {threshold:.6g}"[:64],
        omit_empty_frames=False,
    )
    # highdicom copies the first source's pixel measures; the spacing between slices is the volume's (the
    # distance of adjacent slice positions, mm), which readers use to stack the frames
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    measures.SpacingBetweenSlices = format_number_as_ds(float(image.GetSpacing()[2]))
    seg.save_as(str(path))
