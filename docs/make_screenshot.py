"""Render docs/screenshot.png (the extension catalog's screenshot) from an ``anodode score`` output.

Not a screen capture of Slicer: a matplotlib rendering of what the module shows after a run, drawn with the
module's own display rules and words (heat colours and window from ``AnoDODESlicerLib.mrml``, the status line
from ``AnoDODESlicerLib.panel``): the scan with the heat map over it (only the voxels above the threshold are
coloured) in three views through the most anomalous slice, the slice the module opens on, and the map's peak
in it, the "Anomaly" segment outlined, the slice-score plot (the ranking the module jumps by) with that slice
marked, and the top rows of the slice-score table.

    anodode demo --output-dir OUT        # the synthetic phantom: no patient data in the repository
    python docs/make_screenshot.py OUT/phantom_flair.nii.gz OUT docs/screenshot.png

Needs matplotlib (the ``train`` extra) and slicer-core (the ``test`` extra).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "AnoDODE"))

from AnoDODESlicerLib import mrml, panel


def read_lps(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The image as a (S-I, P-A, L-R)-ordered array: axis 0 inferior -> superior, 1 anterior -> posterior,
    2 right -> left (LPS storage), and its spacing (x, y, z) in mm."""
    image = sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS")
    return sitk.GetArrayFromImage(image).astype(np.float32), image.GetSpacing()


def heat_rgba(anomaly: np.ndarray, threshold: float) -> np.ndarray:
    """RGBA of the heat map as Slicer draws it: heat colours over [floor, max], transparent below the floor."""
    lo, hi = mrml.heatmapDisplayRange(anomaly, threshold)
    t = np.clip((anomaly - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    rgb = np.stack([np.vectorize(lambda v, k=k: mrml.heatColor(float(v))[k])(t) for k in range(3)], axis=-1)
    alpha = np.where(anomaly >= lo, mrml.OVERLAY_OPACITY, 0.0)
    return np.concatenate([rgb, alpha[..., None]], axis=-1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scan", type=Path)
    p.add_argument("score_dir", type=Path, help="the --output-dir of `anodode score`")
    p.add_argument("output", type=Path)
    p.add_argument("--title", default="the synthetic demo phantom", help="what the scan is, for the title")
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem = args.scan.name.split(".")[0]
    report = json.loads((args.score_dir / f"{stem}_report.json").read_text(encoding="utf-8"))
    scan, spacing = read_lps(args.scan)
    anomaly, _ = read_lps(args.score_dir / f"{stem}_anomaly.nii.gz")
    label, _ = read_lps(args.score_dir / f"{stem}_label.nii.gz")
    threshold = float(report["threshold"])
    # the module's ranking (mrml.plottedColumn): the heat map's slice scores, else the likelihood's
    plotted = report.get("slice_anomaly_scores") or []
    if not any(v is not None for v in plotted):
        plotted = report["slice_scores"]
    plotted = np.array([np.nan if v is None else v for v in plotted], dtype=float)
    shown = int(np.nanargmax(plotted))
    # that slice in the LPS-ordered array: the input's axial index axis may run inferior-wards
    direction = np.array(sitk.ReadImage(str(args.scan)).GetDirection()).reshape(3, 3)
    k = shown if direction[2, 2 - int(report["slice_axis"])] > 0 else anomaly.shape[0] - 1 - shown
    peak = (k, *np.unravel_index(int(np.argmax(anomaly[k])), anomaly.shape[1:]))
    lo, hi = np.percentile(scan[scan > 0], [1, 99.5])
    sx, sy, sz = spacing
    views = [  # (title, scan, map, label, extent, letters: left, right, top, bottom)
        (
            "Axial",
            scan[peak[0]],
            anomaly[peak[0]],
            label[peak[0]],
            (0, scan.shape[2] * sx, scan.shape[1] * sy, 0),
            "RLAP",
        ),
        (
            "Coronal",
            scan[::-1, peak[1]],
            anomaly[::-1, peak[1]],
            label[::-1, peak[1]],
            (0, scan.shape[2] * sx, 0, scan.shape[0] * sz),
            "RLSI",
        ),
        (
            "Sagittal",
            scan[::-1, :, peak[2]],
            anomaly[::-1, :, peak[2]],
            label[::-1, :, peak[2]],
            (0, scan.shape[1] * sy, 0, scan.shape[0] * sz),
            "APSI",
        ),
    ]
    fig = plt.figure(figsize=(12, 7.2), facecolor="#2b2b2b")
    grid = fig.add_gridspec(
        2, 3, width_ratios=[1.05, 1, 1], left=0.02, right=0.98, top=0.90, bottom=0.08, wspace=0.2, hspace=0.22
    )
    for i, (title, s, a, lab, extent, letters) in enumerate(views):
        ax = fig.add_subplot(grid[i // 2, 1 + i % 2])
        ax.imshow(s, cmap="gray", vmin=lo, vmax=hi, extent=extent, interpolation="bilinear")
        ax.imshow(heat_rgba(a, threshold), extent=extent, interpolation="bilinear")
        if lab.any():
            # pixel centres where imshow (origin "upper", extent (left, right, bottom, top)) draws them
            left, right, bottom, top = extent
            xs = left + (np.arange(lab.shape[1]) + 0.5) * (right - left) / lab.shape[1]
            ys = top + (np.arange(lab.shape[0]) + 0.5) * (bottom - top) / lab.shape[0]
            ax.contour(xs, ys, lab, levels=[0.5], colors=[mrml.ANOMALY_COLOR], linewidths=1.0)
        ax.set_title(title, color="w", fontsize=10)
        ax.set_xticks([]), ax.set_yticks([])
        for x, y, text in (
            (0.01, 0.5, letters[0]),
            (0.97, 0.5, letters[1]),
            (0.5, 0.97, letters[2]),
            (0.5, 0.01, letters[3]),
        ):
            ax.text(x, y, text, color="#ffd200", transform=ax.transAxes, fontsize=8, ha="center", va="center")
    scores = np.array([np.nan if v is None else v for v in report["slice_scores"]], dtype=float)
    plot = fig.add_subplot(grid[1, 2])
    plot.set_facecolor("white")
    plot.plot(np.arange(plotted.size), plotted, color=mrml.ANOMALY_COLOR, lw=1.2)
    plot.axvline(shown, color="#1f77b4", lw=1, ls="--")
    plot.set_title(f"AnoDODE slice scores (label threshold {threshold:.3g})", color="w", fontsize=10)
    plot.set_xlabel("slice index", color="w", fontsize=8)
    plot.set_ylabel("anomaly score (top 1 cm2)", color="w", fontsize=8)
    plot.tick_params(colors="w", labelsize=7)
    side = fig.add_subplot(grid[:, 0])
    side.axis("off")
    order = [i for i in np.argsort(-np.nan_to_num(plotted, nan=-np.inf)) if np.isfinite(plotted[i])][:14]
    rows = [[str(i), f"{plotted[i]:.2f}", "" if np.isnan(scores[i]) else f"{scores[i]:.3f}"] for i in order]
    side.text(0.0, 1.0, "AnoDODE", color="w", fontsize=14, weight="bold", va="top", transform=side.transAxes)
    status = textwrap.fill(panel.summary(report, 0, shown), 48)
    side.text(
        0.0, 0.955, status, color="#dddddd", fontsize=8.5, va="top", wrap=True, transform=side.transAxes
    )
    table = side.table(
        cellText=rows,
        colLabels=[
            c.replace(" (", "\n(") for c in (mrml.SLICE_COLUMN, mrml.MAP_SCORE_COLUMN, mrml.SCORE_COLUMN)
        ],
        loc="lower left",
        bbox=[0.0, 0.02, 1.0, 0.74],
    )
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    fig.suptitle(
        f"AnoDODE in 3D Slicer: heat map, 'Anomaly' segment, slice scores ({args.title}; "
        "rendered from an `anodode score` run)",
        color="w",
        fontsize=10,
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=90, facecolor=fig.get_facecolor())
    return 0


if __name__ == "__main__":
    sys.exit(main())
