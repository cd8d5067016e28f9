"""The per-scan figure: slice choice, slice positions, radiological orientation, and both renderers."""

import dataclasses
import logging
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from AnoDODELib import figure, volume_io
from AnoDODELib.figure import FigureInput, figure_input, most_anomalous_slices, render_png, slice_positions_mm


def png_array(data: bytes, tmp_path) -> np.ndarray:
    path = tmp_path / "read.png"
    path.write_bytes(data)
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_most_anomalous_slices_keeps_a_gap_and_fills_up():
    scores = [0.0, 5.0, 4.0, 3.0, None, 9.0, 8.0, 1.0]
    # by score: 5 (9), 6 (8), 1 (5), 2 (4), 3 (3), 7 (1), 0 (0); slices >= 2 apart (2 mm at 1 mm)
    assert most_anomalous_slices(scores, 3, slice_mm=1.0, min_gap_mm=2.0) == [5, 1, 3]
    # 7 still fits the gap, then the gap is relaxed: 6 is the best slice left
    assert most_anomalous_slices(scores, 5, slice_mm=1.0, min_gap_mm=2.0) == [5, 1, 3, 7, 6]
    # thick slices: 2 mm apart already, so neighbours may be chosen
    assert most_anomalous_slices(scores, 3, slice_mm=2.0, min_gap_mm=2.0) == [5, 6, 1]
    assert most_anomalous_slices([None, float("nan")], 3) == []
    assert 4 not in most_anomalous_slices(scores, 8, slice_mm=1.0)


def _image(size=(6, 7, 5), spacing=(1.0, 2.0, 3.0), origin=(10.0, -20.0, 30.0), direction=None) -> sitk.Image:
    img = sitk.Image(list(size), sitk.sitkFloat32)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


def test_slice_positions_are_the_superior_coordinate_of_each_canonical_slice():
    img = _image()
    pos = slice_positions_mm(img, volume_io.slice_geometry(img))
    assert np.allclose(pos, 30.0 + 3.0 * np.arange(5))
    # stored inferior-first (z direction -1): canonical slices still step toward superior
    flipped = _image(direction=(1, 0, 0, 0, 1, 0, 0, 0, -1))
    pos = slice_positions_mm(flipped, volume_io.slice_geometry(flipped))
    assert np.allclose(pos, 30.0 - 3.0 * np.arange(5)[::-1])
    # sagittally stored: index axis 0 runs S-I (direction column 0 = +z), spacing 1 mm along it
    sag = _image(direction=(0, 1, 0, 0, 0, 1, 1, 0, 0))
    pos = slice_positions_mm(sag, volume_io.slice_geometry(sag))
    assert np.allclose(pos, 30.0 + 1.0 * np.arange(6))


@pytest.mark.parametrize("storage", ["LPS", "RAS", "LAS", "PIR", "ASL"])
def test_tiles_are_radiological_whatever_the_storage(storage):
    """A marker at the patient's left and front appears on the tile's right half and upper half."""
    arr = np.zeros((20, 24, 28), np.float32)  # LPS storage: (z, y, x) = (S, P, L)
    arr[4:16, 4:20, 4:24] = 1.0  # "brain"
    arr[12:14, 6:8, 18:22] = 5.0  # left (x high), anterior (y low), superior (z high)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 1.2, 1.5))
    stored = sitk.DICOMOrient(img, storage)
    data = sitk.GetArrayFromImage(stored)
    d = figure_input(
        stored, data, data > 4, 4.0, [1.0] * data.shape[volume_io.slice_geometry(stored).axes[0]], "units"
    )
    s, r, c = np.argwhere(d.scan == 5.0).mean(axis=0)
    h, w = d.scan.shape[1:]
    assert c > w / 2 and r < h / 2  # patient left -> image right; anterior -> top
    assert s > d.scan.shape[0] / 2  # slices run inferior -> superior
    axis = volume_io.slice_geometry(stored).axes[0]  # the titles' slice index is the stored array's
    assert d.slice_index[[12, 13]].mean() == np.argwhere(data == 5.0)[:, axis].mean()
    assert d.pixel_mm == (1.2, 1.0) and d.slice_mm == 1.5
    assert np.all(np.diff(d.slice_position_mm) > 0)


def _data(n_slices=10, with_label=True) -> FigureInput:
    rng = np.random.default_rng(0)
    scan = np.zeros((n_slices, 40, 40), np.float32)
    scan[:, 10:30, 5:25] = 100 + 10 * rng.standard_normal((n_slices, 20, 20))
    anomaly = np.zeros_like(scan)
    anomaly[:, 10:30, 5:25] = rng.uniform(0, 1, (n_slices, 20, 20))
    anomaly[3:6, 15:20, 10:16] = 3.0 + np.arange(3)[:, None, None]
    scores = np.quantile(anomaly.reshape(n_slices, -1), 0.99, axis=1)
    return FigureInput(
        scan=scan,
        anomaly=anomaly,
        label=(anomaly > 1.5) & with_label,
        threshold=1.5,
        slice_scores=scores,
        slice_index=np.arange(n_slices),
        slice_position_mm=2.0 * np.arange(n_slices),
        pixel_mm=(1.0, 1.0),
        slice_mm=2.0,
        units="squared residual",
        title="case",
        subtitle="volume score 1 bpd",
    )


@pytest.mark.parametrize("n", [1, 4, 5])
def test_matplotlib_figure_size(n, tmp_path):
    pytest.importorskip("matplotlib")
    png = render_png(_data(), n_slices=n)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"Matplotlib" in png[:200]  # the writer's Software text chunk
    rows, cols = png_array(png, tmp_path).shape[:2]
    assert (cols, rows) == figure.figure_size_px(n)
    assert figure.figure_size_px(5)[1] > figure.figure_size_px(4)[1] == figure.figure_size_px(3)[1]


def test_without_matplotlib_a_plain_image_and_one_notice(monkeypatch, caplog, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    data = _data()
    with caplog.at_level(logging.WARNING):
        png = render_png(data, n_slices=3)
    notices = [r for r in caplog.records if "matplotlib is not installed" in r.getMessage()]
    assert len(notices) == 1 and "\n" not in notices[0].getMessage()
    assert b"Matplotlib" not in png
    rgb = png_array(png, tmp_path)
    # crop: content rows 10..29, cols 5..24 plus a 4-voxel margin -> 28 x 28 tiles; 3 rows, 2 tiles + 4 px gap
    assert rgb.shape == (3 * 28 + 2 * 4, 2 * 28 + 4, 3)
    chosen = most_anomalous_slices(data.slice_scores, 3, data.slice_mm)
    assert chosen[0] == 5  # the highest planted values
    assert any(not (data.anomaly[k] > data.threshold).any() for k in chosen)  # and a slice without label
    for row, k in enumerate(chosen):
        top = row * 32
        plain, over = rgb[top : top + 28, :28].astype(int), rgb[top : top + 28, 32:].astype(int)
        assert np.all(plain[..., 0] == plain[..., 1])  # the scan alone is grey
        above = data.anomaly[k, 6:34, 1:29] > data.threshold
        outline = np.all(over == (0, 255, 255), axis=-1)
        assert outline.any() == above.any() and np.all(above[outline])  # the outline lies on labelled voxels
        assert np.array_equal(over[~above], plain[~above])  # transparent at or below the threshold
        assert np.all(np.any(over[above & ~outline] != plain[above & ~outline], axis=-1))


def test_figure_of_a_slice_without_label_or_brain_renders():
    pytest.importorskip("matplotlib")
    data = _data(with_label=False)
    empty = FigureInput(**{**data.__dict__, "slice_scores": np.full(10, np.nan), "slice_position_mm": None})
    assert render_png(empty, n_slices=2)[:8] == b"\x89PNG\r\n\x1a\n"


def test_figure_input_checks_shapes():
    data = _data()
    with pytest.raises(ValueError, match="slice_scores"):
        FigureInput(**{**data.__dict__, "slice_scores": np.zeros(3)})
    with pytest.raises(ValueError, match="same"):
        FigureInput(**{**data.__dict__, "label": np.zeros((1, 2, 3), bool)})


def test_the_figure_says_what_it_plots_and_nothing_is_cut_off():
    """The curve's legend names the statistic plotted (the report's slice_anomaly_scores: the map's mean over
    each slice's most anomalous 1 cm²; it said "99th percentile"), the colour bar and the curve are in the
    reader's units (a.u., as the scoring outputs pass them), and every text of the figure (the y-label was cut
    at the left edge) lies inside it; in each tile the patient's right is marked on the left (radiological)."""
    pytest.importorskip("matplotlib")
    data = dataclasses.replace(_data(), units=figure.READER_UNITS, slice_area_mm2=100.0)
    chosen = most_anomalous_slices(data.slice_scores, 4, data.slice_mm)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = figure.build_figure(data, chosen)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    width, height = canvas.get_width_height()
    texts = list(fig.texts) + [fig._suptitle]
    for ax in fig.axes:
        texts += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        texts += list(ax.get_legend().get_texts()) if ax.get_legend() else []
    texts = [t for t in texts if t is not None and t.get_visible() and t.get_text().strip()]
    for t in texts:
        box = t.get_window_extent(renderer)
        assert box.x0 >= -0.5 and box.y0 >= -0.5 and box.x1 <= width + 0.5 and box.y1 <= height + 0.5, (
            t.get_text(),
            box,
        )
    legend = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert "slice score: the map's mean over the slice's most anomalous 1 cm²" in legend
    assert not any("percentile" in t.get_text() for t in texts)
    labels = {ax.get_ylabel() for ax in fig.axes} | {ax.get_xlabel() for ax in fig.axes}
    assert "slice score\n(a.u.)" in labels and "anomaly score (a.u.)" in labels
    tiles = [ax for ax in fig.axes if {t.get_text() for t in ax.texts} >= {"R", "L"}]
    assert len(tiles) == 2 * len(chosen)
    for ax in tiles:
        where = {t.get_text(): t.get_position()[0] for t in ax.texts if t.get_text() in ("R", "L")}
        assert where["R"] < 0.5 < where["L"]
    assert (
        figure.slice_curve_label(36.0) == "slice score: the map's mean over the slice's most anomalous 36 mm²"
    )


def test_the_scoring_figure_is_in_reader_units(phantom_file, tiny_model_dir, tmp_path, monkeypatch):
    """outputs.figure_png draws the map in figure.READER_UNITS, not the report's formula (√(bits/dim x
    residual (z)) x brightness / the scan's brain Q0.75 meant nothing to a radiologist)."""
    from AnoDODELib import outputs
    from AnoDODELib.bundle import load_model

    seen = []
    monkeypatch.setattr(figure, "render_png", lambda data, *a, **k: seen.append(data) or b"\x89PNG\r\n\x1a\n")
    report = outputs.score_to_files(
        outputs.ScanInputs(phantom_file),
        outputs.OutputSet.with_stem(tmp_path, "p"),
        load_model(tiny_model_dir),
        device="cpu",
        preset="fast",
    )
    assert [d.units for d in seen] == ["a.u."] and seen[0].slice_area_mm2 == 100.0
    assert report["map_units"] != "a.u."
