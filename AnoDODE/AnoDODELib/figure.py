"""The figure of one scored scan: its most anomalous axial slices, a colour bar and the slice-score curve.

For each chosen slice two tiles stand side by side: the scan alone, and the scan with the anomaly map over
it (a perceptual colour map, fully transparent where the map is at or below the label threshold, so the
anatomy stays visible) and the label's outline. Each tile pair is titled with its rank, the slice's index
along the input's axial axis (the index of the report's ``slice_scores``) and its position in mm. A colour
bar gives the map's units with the threshold marked; below, the per-slice score curve (the map's mean
over each slice's most anomalous 100 mm^2 of brain, the report's ``slice_anomaly_scores``) with the
chosen slices marked.

Orientation: tiles are canonical axial slices (``volume_io.SliceGeometry``: rows step toward +P, columns
toward +L, derived from the image's direction cosines), drawn in the radiological convention: anterior at
the top, the patient's left on the image's right. The slice position is the patient-superior coordinate
(LPS/RAS z, mm) of the slice's centre.

Rendering uses matplotlib when it is installed (``pip install "anodode[figures]"``). Without it a plain
image is written with SimpleITK's PNG writer (the same tile pairs, one slice per row, most anomalous
first; no text, colour bar or curve) and one warning says so.
"""

from __future__ import annotations

import io
import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import volume_io

logger = logging.getLogger(__name__)

#: Units of the voxel anomaly map for each localisation method (see ``anomaly_map.location_scores``).
MAP_UNITS = {
    "likelihood": "bits/dim",
    "reconstruction": "squared residual (z²)",
    "combined": "bits/dim × residual (z)",
}
#: The map's units on the figure: arbitrary units (the report's ``map_units`` spells out the formula; what a reader
#: needs is the threshold marked on the colour bar: docs/method.md, "Reading the map").
READER_UNITS = "a.u."
#: Chosen slices are at least this far apart (mm), so the tiles show different parts of the brain.
MIN_GAP_MM = 5.0
N_SLICES = 4
DPI = 100
PAIRS_PER_ROW = 2
OVERLAY_ALPHA = 0.75  # opacity of the map over the scan where it exceeds the threshold
OUTLINE_RGB = (0, 255, 255)  # the label's outline (cyan: apart from every colour of the heat map)
MATPLOTLIB_MISSING = (
    "matplotlib is not installed: the figure is a plain image (tiles only; no titles, colour "
    'bar or slice curve); pip install "anodode[figures]" for the full figure'
)


@dataclass(frozen=True)
class FigureInput:
    """What the figure shows; volumes are canonical (S, P, L) arrays (``SliceGeometry.to_canonical``).

    scan: (S, H, W) intensities as stored (any units; windowed at the brain's 0.5-99.5th percentiles).
    anomaly: (S, H, W) anomaly map in ``units``; label: (S, H, W) bool, the voxels above ``threshold``.
    slice_scores: (S,) per-slice score in ``units`` (NaN where the slice has no brain).
    slice_index: (S,) each canonical slice's index along the input's axial array axis.
    slice_position_mm: (S,) superior coordinate (mm) of each slice's centre, or None when unknown.
    pixel_mm: (row, column) in-plane spacing in mm (tiles are drawn with this aspect).
    units: the map's units as a reader sees them (``READER_UNITS`` for the scoring outputs).
    slice_area_mm2: the area the slice scores average over (the model's ``slice_area_mm2``), for the legend.
    """

    scan: np.ndarray
    anomaly: np.ndarray
    label: np.ndarray
    threshold: float
    slice_scores: np.ndarray
    slice_index: np.ndarray
    slice_position_mm: np.ndarray | None
    pixel_mm: tuple[float, float]
    slice_mm: float
    units: str
    title: str = ""
    subtitle: str = ""
    slice_area_mm2: float = 100.0

    def __post_init__(self) -> None:
        shape = self.scan.shape
        if len(shape) != 3 or self.anomaly.shape != shape or self.label.shape != shape:
            raise ValueError(
                f"scan {self.scan.shape}, anomaly {self.anomaly.shape} and label "
                f"{self.label.shape} must be the same (S, H, W) shape"
            )
        for name in ("slice_scores", "slice_index") + (
            ("slice_position_mm",) if self.slice_position_mm is not None else ()
        ):
            if len(getattr(self, name)) != shape[0]:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {shape[0]} slices")


def slice_positions_mm(image: sitk.Image, geometry: volume_io.SliceGeometry) -> np.ndarray:
    """(S,) superior coordinate (mm; LPS z, the same in RAS) of the centre of each canonical slice.

    Slice ``k`` is index ``i = k`` (or ``n - 1 - k`` when the axial axis is flipped) along image index axis
    ``j = 2 - geometry.axes[0]``; its centre is the continuous index with the other two axes at their
    middle, mapped to physical space as ``origin + D diag(spacing) index``.
    """
    n = geometry.canonical_shape[0]
    j = 2 - geometry.axes[0]
    size = np.array(image.GetSize(), dtype=np.float64)
    index = np.tile((size - 1) / 2, (n, 1))
    k = np.arange(n, dtype=np.float64)
    index[:, j] = (n - 1 - k) if geometry.flips[0] else k
    d = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    points = np.array(image.GetOrigin()) + (index * np.array(image.GetSpacing())) @ d.T
    return points[:, 2]


def figure_input(
    image: sitk.Image,
    anomaly_map: np.ndarray,
    label: np.ndarray,
    threshold: float,
    slice_anomaly_scores: Sequence[float | None],
    units: str,
    title: str = "",
    subtitle: str = "",
) -> FigureInput:
    """The figure's input from a scored scan: ``anomaly_map`` and ``label`` in the input's array layout (as
    ``pipeline.ScoreResult``), ``slice_anomaly_scores`` indexed along the input's axial axis."""
    geo = volume_io.slice_geometry(image)
    n = geo.canonical_shape[0]
    if len(slice_anomaly_scores) != n:
        raise ValueError(f"{len(slice_anomaly_scores)} slice scores for {n} axial slices")
    scores = list(slice_anomaly_scores)[::-1] if geo.flips[0] else list(slice_anomaly_scores)
    return canonical_figure_input(
        geo,
        geo.to_canonical(sitk.GetArrayViewFromImage(image)),
        geo.to_canonical(np.asarray(anomaly_map)),
        geo.to_canonical(np.asarray(label)),
        threshold,
        scores,
        units,
        title,
        subtitle,
        slice_position_mm=slice_positions_mm(image, geo),
    )


def canonical_figure_input(
    geometry: volume_io.SliceGeometry,
    scan: np.ndarray,
    anomaly: np.ndarray,
    label: np.ndarray,
    threshold: float,
    slice_scores: Sequence[float | None],
    units: str,
    title: str = "",
    subtitle: str = "",
    slice_position_mm: np.ndarray | None = None,
    slice_area_mm2: float = 100.0,
) -> FigureInput:
    """The figure's input from canonical (S, P, L) arrays of a scan with this ``geometry`` and canonical-order
    ``slice_scores`` (None/NaN without brain); ``slice_position_mm`` None when the image is not at hand."""
    n = geometry.canonical_shape[0]
    return FigureInput(
        scan=np.asarray(scan, dtype=np.float32),
        anomaly=np.asarray(anomaly, dtype=np.float32),
        label=np.asarray(label).astype(bool),
        threshold=float(threshold),
        slice_scores=np.array([np.nan if s is None else float(s) for s in slice_scores], dtype=np.float64),
        slice_index=np.arange(n)[::-1] if geometry.flips[0] else np.arange(n),
        slice_position_mm=slice_position_mm,
        pixel_mm=(geometry.spacing_mm[1], geometry.spacing_mm[2]),
        slice_mm=geometry.spacing_mm[0],
        units=units,
        title=title,
        subtitle=subtitle,
        slice_area_mm2=slice_area_mm2,
    )


def most_anomalous_slices(
    scores: Sequence[float | None], n: int = 3, slice_mm: float = 1.0, min_gap_mm: float = MIN_GAP_MM
) -> list[int]:
    """Indices of up to ``n`` slices with the highest ``scores``, most anomalous first, no two closer than
    ``min_gap_mm``: greedily the highest remaining score whose distance ``|i - j| * slice_mm`` to every
    chosen slice is at least ``min_gap_mm``. Slices without a score (None/NaN) are never chosen; ties go to
    the lower index. When the gap leaves fewer than ``n``, the highest remaining slices fill up."""
    values = np.array([np.nan if s is None else float(s) for s in scores], dtype=np.float64)
    order = [
        int(i)
        for i in np.argsort(-np.nan_to_num(values, nan=-np.inf), kind="stable")
        if np.isfinite(values[i])
    ]
    gap = math.ceil(min_gap_mm / slice_mm - 1e-9) if slice_mm > 0 else 0
    chosen: list[int] = []
    for i in order:
        if len(chosen) < n and all(abs(i - c) >= gap for c in chosen):
            chosen.append(i)
    for i in order:
        if len(chosen) >= n:
            break
        if i not in chosen:
            chosen.append(i)
    return chosen


def render_png(
    data: FigureInput, n_slices: int = N_SLICES, min_gap_mm: float = MIN_GAP_MM, dpi: int = DPI
) -> bytes:
    """The figure as PNG bytes: matplotlib when importable, otherwise the plain SimpleITK image (with one
    warning). See the module docstring for the content."""
    chosen = most_anomalous_slices(data.slice_scores, n_slices, data.slice_mm, min_gap_mm)
    if not chosen:  # no slice with brain: show the middle slice so the figure still shows the scan
        chosen = [data.scan.shape[0] // 2]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        logger.warning(MATPLOTLIB_MISSING)
        return _render_plain(data, chosen)
    return _render_matplotlib(data, chosen, dpi)


def figure_size_px(n_slices: int, dpi: int = DPI) -> tuple[int, int]:
    """(width, height) in pixels of the matplotlib figure with ``n_slices`` slices."""
    w, h = _figure_size_in(n_slices)
    return round(w * dpi), round(h * dpi)


# ----------------------------------------------------------------------------------------------- helpers


def _figure_size_in(n_slices: int) -> tuple[float, float]:
    rows = max(1, math.ceil(n_slices / PAIRS_PER_ROW))
    return 12.0, 1.0 + 3.0 * rows + 2.4


def _background(scan: np.ndarray) -> np.ndarray:
    """Voxels holding the most frequent value of the volume's border faces (a skull-stripped scan's
    background, zero or not)."""
    faces = np.concatenate(
        [scan[:, 0].ravel(), scan[:, -1].ravel(), scan[:, :, 0].ravel(), scan[:, :, -1].ravel()]
    )
    values, counts = np.unique(faces, return_counts=True)
    return scan == values[np.argmax(counts)]


def _crop_box(data: FigureInput, margin: int = 4) -> tuple[slice, slice]:
    """In-plane bounding box (rows, cols) of the non-background voxels over all slices, plus ``margin``."""
    inside = ~_background(data.scan) | (data.anomaly > 0)
    rows, cols = np.flatnonzero(inside.any(axis=(0, 2))), np.flatnonzero(inside.any(axis=(0, 1)))
    if rows.size == 0:
        return slice(None), slice(None)
    h, w = data.scan.shape[1:]
    return (
        slice(max(0, rows[0] - margin), min(h, rows[-1] + margin + 1)),
        slice(max(0, cols[0] - margin), min(w, cols[-1] + margin + 1)),
    )


def _window(data: FigureInput) -> tuple[float, float]:
    """Display window: the 0.5th and 99.5th percentiles of the non-background voxels."""
    values = data.scan[~_background(data.scan)]
    if values.size == 0:
        values = data.scan.ravel()
    lo, hi = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    return lo, hi if hi > lo else lo + 1.0


def _colour_max(data: FigureInput) -> float:
    """Top of the colour scale: the map's maximum, or 1.5x the threshold when nothing exceeds it."""
    top = float(data.anomaly.max()) if data.anomaly.size else 0.0
    return top if top > data.threshold else (1.5 * data.threshold if data.threshold > 0 else 1.0)


def _tile_title(data: FigureInput, rank: int, k: int) -> str:
    where = f", S {data.slice_position_mm[k]:+.1f} mm" if data.slice_position_mm is not None else ""
    return f"#{rank} slice {int(data.slice_index[k])}{where}"


def _render_matplotlib(data: FigureInput, chosen: list[int], dpi: int) -> bytes:
    fig = build_figure(data, chosen, dpi)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def slice_curve_label(area_mm2: float) -> str:
    """The slice-score curve's legend: what it plots, the report's ``slice_anomaly_scores`` (the map's mean
    over each slice's most anomalous ``area_mm2`` of brain)."""
    area = f"{area_mm2 / 100:g} cm²" if area_mm2 >= 100 else f"{area_mm2:g} mm²"
    return f"slice score: the map's mean over the slice's most anomalous {area}"


def build_figure(data: FigureInput, chosen: list[int], dpi: int = DPI):
    """The matplotlib Figure of ``render_png`` (the chosen canonical slices, most anomalous first)."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap, Normalize
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rows_box, cols_box = _crop_box(data)
    lo, hi = _window(data)
    norm = Normalize(vmin=data.threshold, vmax=_colour_max(data))
    heat = ListedColormap(colormaps["inferno"](np.linspace(0.3, 1.0, 256)), name="inferno_upper")
    grey = colormaps["gray"].with_extremes(bad="black")  # the background (outside the head) is black
    background = _background(data.scan)
    aspect = data.pixel_mm[0] / data.pixel_mm[1]
    n_rows = max(1, math.ceil(len(chosen) / PAIRS_PER_ROW))

    fig = Figure(figsize=_figure_size_in(len(chosen)), dpi=dpi)
    grid = fig.add_gridspec(
        n_rows + 1,
        2 * PAIRS_PER_ROW + 1,
        height_ratios=[3.0] * n_rows + [2.0],
        width_ratios=[1.0] * (2 * PAIRS_PER_ROW) + [0.06],
        left=0.07,
        right=0.91,
        top=1 - 1.0 / _figure_size_in(len(chosen))[1],
        bottom=0.07,
        hspace=0.35,
        wspace=0.08,
    )
    title = data.title + (f"\n{data.subtitle}" if data.subtitle else "")
    fig.suptitle(title, fontsize=11)
    image = None
    for rank, k in enumerate(chosen, start=1):
        r, c = divmod(rank - 1, PAIRS_PER_ROW)
        scan = np.ma.masked_where(background[k][rows_box, cols_box], data.scan[k][rows_box, cols_box])
        amap = data.anomaly[k][rows_box, cols_box]
        label = data.label[k][rows_box, cols_box]
        plain, over = fig.add_subplot(grid[r, 2 * c]), fig.add_subplot(grid[r, 2 * c + 1])
        for ax in (plain, over):
            ax.imshow(scan, cmap=grey, vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for x, text, ha in ((0.02, "R", "left"), (0.98, "L", "right")):
                ax.text(x, 0.5, text, transform=ax.transAxes, color="white", fontsize=8, ha=ha, va="center")
        image = over.imshow(
            np.ma.masked_where(amap <= data.threshold, amap),
            cmap=heat,
            norm=norm,
            alpha=OVERLAY_ALPHA,
            aspect=aspect,
            interpolation="nearest",
        )
        if label.any() and not label.all():
            over.contour(label.astype(np.float32), levels=[0.5], colors=["cyan"], linewidths=0.8)
        plain.set_title(_tile_title(data, rank, k), fontsize=9, loc="left")
        over.set_title("map > threshold, label outlined", fontsize=8, loc="right", color="0.3")

    bar_ax = fig.add_subplot(grid[:n_rows, -1])
    if image is not None:
        bar = fig.colorbar(image, cax=bar_ax)
        bar.set_label(f"anomaly score ({data.units})", fontsize=9)
        bar.ax.axhline(data.threshold, color="cyan", linewidth=2)
        span = norm.vmax - norm.vmin
        bar.set_ticks(
            [data.threshold] + [t for t in bar.get_ticks() if data.threshold + 0.08 * span < t <= norm.vmax]
        )
        bar.ax.yaxis.set_major_formatter("{x:.3g}")
        bar.ax.text(
            -0.3,
            data.threshold,
            "threshold",
            transform=bar.ax.get_yaxis_transform(),
            rotation=90,
            ha="right",
            va="bottom",
            fontsize=8,
        )

    curve = fig.add_subplot(grid[n_rows, :-1])
    x = data.slice_position_mm if data.slice_position_mm is not None else data.slice_index.astype(np.float64)
    order = np.argsort(x)
    curve.plot(
        x[order],
        data.slice_scores[order],
        color="0.2",
        linewidth=1.2,
        label=slice_curve_label(data.slice_area_mm2),
    )
    curve.axhline(data.threshold, color="cyan", linestyle="--", linewidth=1, label="label threshold")
    for rank, k in enumerate(chosen, start=1):
        curve.axvline(x[k], color="tab:orange", linewidth=0.8, alpha=0.7)
        if np.isfinite(data.slice_scores[k]):
            curve.plot([x[k]], [data.slice_scores[k]], "o", color="tab:orange", markersize=5)
            curve.annotate(
                f"#{rank}",
                (x[k], data.slice_scores[k]),
                textcoords="offset points",
                xytext=(3, 4),
                fontsize=8,
            )
    if data.slice_position_mm is not None:
        curve.set_xlabel("axial position, superior (mm)")
    else:
        curve.set_xlabel("slice index")
        curve.xaxis.set_major_locator(MaxNLocator(integer=True))
    curve.set_ylabel(f"slice score\n({data.units})", fontsize=9)
    fig.align_ylabels()
    curve.legend(loc="upper left", fontsize=8, frameon=False)
    fig.text(
        0.995,
        0.005,
        "radiological view: patient's left on the image's right (R | L), anterior up",
        ha="right",
        va="bottom",
        fontsize=8,
        color="0.3",
    )
    return fig


def _render_plain(data: FigureInput, chosen: list[int]) -> bytes:
    """One row per chosen slice (most anomalous first): the scan | the scan with the map above the
    threshold (SimpleITK's 'hot' colour map, blended) and the label's outline; written by SimpleITK."""
    rows_box, cols_box = _crop_box(data)
    lo, hi = _window(data)
    top = _colour_max(data)
    rows = []
    for k in chosen:
        scan = sitk.GetImageFromArray(data.scan[k][rows_box, cols_box].astype(np.float32))
        grey = sitk.GetArrayFromImage(
            sitk.Cast(sitk.IntensityWindowing(scan, lo, hi, 0.0, 255.0), sitk.sitkUInt8)
        )
        grey_rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)
        amap = data.anomaly[k][rows_box, cols_box].astype(np.float32)
        scaled = np.clip((amap - data.threshold) / max(top - data.threshold, 1e-12), 0, 1) * 255
        heat = sitk.GetArrayFromImage(
            sitk.ScalarToRGBColormap(
                sitk.GetImageFromArray(scaled.astype(np.uint8)), sitk.ScalarToRGBColormapImageFilter.Hot
            )
        )
        alpha = np.where(amap > data.threshold, OVERLAY_ALPHA, 0.0)[..., None]
        over = (1 - alpha) * grey_rgb + alpha * heat.astype(np.float32)
        label = sitk.GetImageFromArray(data.label[k][rows_box, cols_box].astype(np.uint8))
        outline = sitk.GetArrayFromImage(sitk.LabelContour(label, fullyConnected=True)) > 0
        over[outline] = OUTLINE_RGB
        gap = np.full((grey_rgb.shape[0], 4, 3), 255.0, dtype=np.float32)
        rows.append(np.concatenate([grey_rgb, gap, over], axis=1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255.0, dtype=np.float32))
    canvas = np.concatenate(rows[:-1], axis=0).round().clip(0, 255).astype(np.uint8)
    with tempfile.TemporaryDirectory(prefix="anodode-figure-") as tmp:
        path = Path(tmp) / "figure.png"
        sitk.WriteImage(sitk.GetImageFromArray(canvas, isVector=True), str(path))
        return path.read_bytes()
