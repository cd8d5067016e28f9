"""The ``anodode score`` contract: outputs, report keys, grids, exit codes, bad inputs, no partial files."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from AnoDODELib.bundle import load_model
from AnoDODELib.cli import main, output_stem

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def only_summary(out) -> bool:
    """The output folder holds nothing but (maybe) the batch summary."""
    return not out.exists() or {p.name for p in out.iterdir()} <= {"summary.csv", "summary.json"}


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "AnoDODELib.cli", *map(str, args)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=300,
    )  # whatever the locale


def test_output_stem():
    from pathlib import Path

    assert output_stem(Path("a/b/case_flair.nii.gz")) == "case_flair"
    assert output_stem(Path("x.nrrd")) == "x"
    assert output_stem(Path("dicom_folder")) == "dicom_folder"


def test_colliding_stems_get_their_folder_name(tmp_path):
    from pathlib import Path

    from AnoDODELib.cli import output_stems

    a, b = tmp_path / "pat1" / "Flair.nii.gz", tmp_path / "pat2" / "Flair.nii.gz"
    assert output_stems([a, b, Path("x/other.nrrd")]) == ["pat1_Flair", "pat2_Flair", "other"]


def test_score_writes_the_contract(phantom_file, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    r = run_cli("score", phantom_file, "--model", tiny_model_dir, "--output-dir", out, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    stem = "phantom"
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(
        [
            f"{stem}_{k}"
            for k in ("anomaly.nii.gz", "label.nii.gz", "brainmask.nii.gz", "report.json", "figure.png")
        ]
        + ["summary.csv", "summary.json"]
    )
    ref = sitk.ReadImage(str(phantom_file))
    for name, pixel in (
        ("anomaly", sitk.sitkFloat32),
        ("label", sitk.sitkUInt8),
        ("brainmask", sitk.sitkUInt8),
    ):
        img = sitk.ReadImage(str(out / f"{stem}_{name}.nii.gz"))
        assert img.GetSize() == ref.GetSize()
        assert np.allclose(img.GetSpacing(), ref.GetSpacing())
        assert np.allclose(img.GetOrigin(), ref.GetOrigin())
        assert np.allclose(img.GetDirection(), ref.GetDirection())
        assert img.GetPixelID() == pixel
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{stem}_label.nii.gz")))
    assert set(np.unique(label)) <= {0, 1}
    report = json.loads((out / f"{stem}_report.json").read_text(encoding="utf-8"))
    for key in (
        "volume_score_bpd",
        "slice_axis",
        "slice_scores",
        "threshold",
        "model",
        "device",
        "seconds",
        "nfe",
    ):
        assert key in report
    arr = sitk.GetArrayFromImage(ref)
    axis = report["slice_axis"]
    assert axis == 0  # phantom is stored axially: numpy axis 0 runs S-I
    assert len(report["slice_scores"]) == arr.shape[axis]
    empty = [i for i in range(arr.shape[axis]) if not np.take(arr, i, axis=axis).any()]
    assert all(report["slice_scores"][i] is None for i in empty)
    # the map-based slice score: the 99th percentile of the written anomaly map over each brain slice
    # (the map is >= 0 and 0 outside the brain, so it lies between the whole slice's p99 and its maximum)
    amap = np.moveaxis(sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{stem}_anomaly.nii.gz"))), axis, 0)
    assert [s is None for s in report["slice_anomaly_scores"]] == [s is None for s in report["slice_scores"]]
    k = int(np.argmax(amap.reshape(len(amap), -1).max(1)))
    assert (
        float(np.quantile(amap[k], 0.99)) - 1e-6
        <= report["slice_anomaly_scores"][k]
        <= float(amap[k].max()) + 1e-6
    )
    assert report["threshold"] == pytest.approx(0.05)
    assert report["device"] == "cpu" and report["nfe"] > 0
    loc = load_model(tiny_model_dir).config.localisation
    # standard preset: midpoint reconstruction, 2 evaluations per step, every draw
    assert report["nfe_reconstruction"] == 2 * loc.reconstruction_steps * loc.n_reconstructions
    anomaly = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{stem}_anomaly.nii.gz")))
    assert np.array_equal(label, (anomaly > report["threshold"]).astype(np.uint8))
    assert (out / f"{stem}_figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_threshold_override(phantom_file, tiny_model_dir, tmp_path):
    r = run_cli(
        "score",
        phantom_file,
        "--model",
        tiny_model_dir,
        "--output-dir",
        tmp_path,
        "--threshold",
        "1e9",
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "phantom_label.nii.gz"))).sum() == 0
    assert json.loads((tmp_path / "phantom_report.json").read_text(encoding="utf-8"))["threshold"] == 1e9


def test_sagittally_stored_input_reports_its_axial_axis(phantom_file, tiny_model_dir, tmp_path):
    img = sitk.ReadImage(str(phantom_file))
    sag = sitk.PermuteAxes(img, [2, 0, 1])  # index axis 0 now runs S-I -> numpy axis 2
    path = tmp_path / "sag.nrrd"
    sitk.WriteImage(sag, str(path))
    r = run_cli("score", path, "--model", tiny_model_dir, "--output-dir", tmp_path / "o", "--quiet")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "o" / "sag_report.json").read_text(encoding="utf-8"))
    assert report["slice_axis"] == 2
    assert len(report["slice_scores"]) == sitk.GetArrayFromImage(sag).shape[2]
    out = sitk.ReadImage(str(tmp_path / "o" / "sag_anomaly.nii.gz"))
    assert out.GetSize() == sag.GetSize()


def _bad_inputs(tmp_path, phantom_file):
    bad = {}
    bad["missing"] = tmp_path / "nope.nii.gz"
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"this is not an image")
    bad["unreadable"] = garbage
    two_d = sitk.GetImageFromArray(np.random.rand(32, 32).astype(np.float32))
    bad["2d"] = tmp_path / "two_d.nii.gz"
    sitk.WriteImage(two_d, str(bad["2d"]))
    four_d = sitk.GetImageFromArray(np.random.rand(3, 8, 8, 8).astype(np.float32))
    bad["4d"] = tmp_path / "four_d.nii.gz"
    sitk.WriteImage(four_d, str(bad["4d"]))
    vec = sitk.GetImageFromArray(np.random.rand(8, 8, 8, 3).astype(np.float32), isVector=True)
    bad["vector"] = tmp_path / "vector.nrrd"
    sitk.WriteImage(vec, str(bad["vector"]))
    const = sitk.GetImageFromArray(np.ones((8, 8, 8), np.float32))
    bad["constant"] = tmp_path / "constant.nii.gz"
    sitk.WriteImage(const, str(bad["constant"]))
    for name, value in (("nan", np.nan), ("inf", np.inf)):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(phantom_file)))
        a[a.shape[0] // 2, 10, 10] = value
        img = sitk.GetImageFromArray(a)
        img.CopyInformation(sitk.ReadImage(str(phantom_file)))
        bad[name] = tmp_path / f"{name}.mha"  # the NIfTI writer drops NaN
        sitk.WriteImage(img, str(bad[name]))
    return bad


@pytest.mark.parametrize("kind", ["missing", "unreadable", "2d", "4d", "vector", "constant", "nan", "inf"])
def test_bad_input_one_line_error_and_no_files(kind, phantom_file, tiny_model_dir, tmp_path):
    bad = _bad_inputs(tmp_path, phantom_file)[kind]
    out = tmp_path / "out"
    r = run_cli("score", bad, "--model", tiny_model_dir, "--output-dir", out, "--quiet")
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("anodode: error:")]
    assert len(lines) == 1, r.stderr
    assert only_summary(out)
    rows = json.loads((out / "summary.json").read_text(encoding="utf-8"))[
        "rows"
    ]  # the failed input's row: its error line
    assert [(row["input"], row["status"]) for row in rows] == [
        (str(bad), lines[0][len("anodode: error: ") :])
    ]
    assert rows[0]["volume_score_bpd"] is None and rows[0]["model"] is None


def test_mask_on_another_grid_is_refused(phantom_file, tiny_model_dir, tmp_path):
    img = sitk.ReadImage(str(phantom_file))
    mask = sitk.GetImageFromArray((sitk.GetArrayFromImage(img) > 0).astype(np.uint8))
    mask.CopyInformation(img)
    mask.SetOrigin(tuple(o + 5 for o in img.GetOrigin()))
    mpath = tmp_path / "mask.nii.gz"
    sitk.WriteImage(mask, str(mpath))
    out = tmp_path / "out"
    r = run_cli(
        "score", phantom_file, "--mask", mpath, "--model", tiny_model_dir, "--output-dir", out, "--quiet"
    )
    assert r.returncode == 1 and "error" in r.stderr
    assert only_summary(out)


def test_incompatible_model_bundle(phantom_file, tiny_model_dir, tmp_path):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir, d)
    meta = json.loads((d / "model.json").read_text(encoding="utf-8"))
    meta["format_version"] = 0
    (d / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    out = tmp_path / "out"
    r = run_cli("score", phantom_file, "--model", d, "--output-dir", out)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("anodode: error: model bundle")
    assert not out.exists()


def test_never_overwrites_the_input(phantom_file, tiny_model_dir, tmp_path):
    # an input named like an output, in the output folder, must survive untouched
    import shutil

    out = tmp_path / "out"
    out.mkdir()
    victim = out / "x_anomaly.nii.gz"
    shutil.copy(phantom_file, victim)
    before = victim.read_bytes()
    # scoring 'x_anomaly' writes x_anomaly_anomaly...; scoring a file whose stem makes the same name:
    src = out / "x.nii.gz"
    shutil.copy(phantom_file, src)
    r = run_cli("score", src, victim, "--model", tiny_model_dir, "--output-dir", out, "--quiet")
    assert r.returncode == 1  # writing x_anomaly.nii.gz would overwrite the second input
    assert victim.read_bytes() == before
    assert "overwrite" in r.stderr or "input" in r.stderr


def test_mask_count_must_match_inputs(phantom_file, tiny_model_dir, tmp_path):
    assert (
        main(
            [
                "score",
                str(phantom_file),
                str(phantom_file),
                "--mask",
                str(phantom_file),
                "--model",
                str(tiny_model_dir),
                "--output-dir",
                str(tmp_path),
            ]
        )
        == 2
    )


def test_unknown_preset_exits_2(phantom_file, tiny_model_dir, tmp_path):
    assert (
        main(
            [
                "score",
                str(phantom_file),
                "--preset",
                "turbo",
                "--model",
                str(tiny_model_dir),
                "--output-dir",
                str(tmp_path),
            ]
        )
        == 2
    )


def test_a_folder_of_images_means_every_image_in_it(tmp_path):
    from pathlib import Path

    from AnoDODELib.cli import expand_inputs

    study = tmp_path / "study"
    (study / "sub").mkdir(parents=True)
    for name in ("b.nii.gz", "a.nrrd", "c.NII", "d.mha", ".hidden.nii.gz", "notes.txt", "e.dcm"):
        (study / name).write_bytes(b"")
    (study / "sub" / "f.nii.gz").write_bytes(b"")
    dicom = tmp_path / "series"
    dicom.mkdir()
    (dicom / "IM0001.dcm").write_bytes(b"")
    single = tmp_path / "x.nii.gz"
    inputs, expanded = expand_inputs([single, study, dicom])
    assert inputs == [single, study / "a.nrrd", study / "b.nii.gz", study / "c.NII", study / "d.mha", dicom]
    assert expanded == [study]
    assert expand_inputs([Path("missing_dir")]) == ([Path("missing_dir")], [])


def _mask_file(image_path, path):
    img = sitk.ReadImage(str(image_path))
    mask = sitk.GetImageFromArray((sitk.GetArrayFromImage(img) > 0).astype(np.uint8))
    mask.CopyInformation(img)
    sitk.WriteImage(mask, str(path))
    return path


def test_batch_summary_rows_are_the_reports_values(phantom_file, tiny_model_dir, tmp_path):
    import csv
    import hashlib
    import shutil

    from AnoDODELib.figure import N_SLICES, figure_size_px, most_anomalous_slices
    from AnoDODELib.summary import COLUMNS

    other = tmp_path / "b" / "other.nrrd"
    other.parent.mkdir()
    sitk.WriteImage(sitk.ReadImage(str(phantom_file)), str(other))
    missing = tmp_path / "missing.nii.gz"
    mask = _mask_file(phantom_file, tmp_path / "mask.nii.gz")
    out = tmp_path / "out"
    shutil.copy(mask, tmp_path / "mask2.nii.gz")
    r = run_cli(
        "score",
        phantom_file,
        missing,
        other,
        "--mask",
        mask,
        "--mask",
        mask,
        "--mask",
        tmp_path / "mask2.nii.gz",
        "--model",
        tiny_model_dir,
        "--output-dir",
        out,
        "--device",
        "cpu",
        "--preset",
        "fast",
        "--quiet",
    )
    assert r.returncode == 1  # one input failed
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("anodode: error:")]
    assert len(errors) == 1 and str(missing) in errors[0]
    data = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert (data["inputs"], data["ok"], data["failed"], data["pending"]) == (3, 2, 1, 0)
    rows = data["rows"]
    assert [row["input"] for row in rows] == [str(phantom_file), str(missing), str(other)]
    assert rows[1]["status"] == errors[0][len("anodode: error: ") :]
    assert all(rows[1][c] is None for c in COLUMNS if c not in ("input", "status"))
    brain = sitk.GetArrayFromImage(sitk.ReadImage(str(mask))) > 0
    version = hashlib.sha256((tiny_model_dir / "weights.pt").read_bytes()).hexdigest()[:12]
    for row, stem in ((rows[0], "phantom"), (rows[2], "other")):
        report = json.loads((out / f"{stem}_report.json").read_text(encoding="utf-8"))
        assert row["status"] == "ok"
        for key in (
            "volume_score_bpd",
            "anomalous_volume_ml",
            "map_max",
            "map_p99",
            "most_anomalous_slices",
            "seconds",
            "device",
            "preset",
            "model",
            "model_version",
        ):
            assert row[key] == report[key], key
        # the report's values against the written files (the --mask is the brain)
        image = sitk.ReadImage(report["outputs"]["anomaly"])
        amap = sitk.GetArrayFromImage(image).astype(np.float64)
        label = sitk.GetArrayFromImage(sitk.ReadImage(report["outputs"]["label"]))
        assert report["anomalous_volume_ml"] == pytest.approx(
            label.sum() * np.prod(image.GetSpacing()) / 1000
        )
        assert report["map_max"] == amap.max()
        assert report["map_p99"] == pytest.approx(np.quantile(amap[brain], 0.99), rel=1e-9)
        slices = report["most_anomalous_slices"]
        scores = report["slice_anomaly_scores"]
        assert len(slices) == 3 and slices[0] == int(np.nanargmax(np.array(scores, dtype=float)))
        assert report["model_version"] == version and report["preset"] == "fast" and report["device"] == "cpu"
        png = (out / f"{stem}_figure.png").read_bytes()
        assert report["outputs"]["figure"] == str(out / f"{stem}_figure.png")
        sitk_png = sitk.ReadImage(str(out / f"{stem}_figure.png"))
        # matplotlib is an optional extra (absent in CI's minimum-versions venv): then the plain fallback image
        assert (b"Matplotlib" in png[:200]) == HAS_MATPLOTLIB
        if HAS_MATPLOTLIB:
            n = len(most_anomalous_slices(scores, N_SLICES, image.GetSpacing()[2]))
            assert sitk_png.GetSize() == figure_size_px(n)
    with open(out / "summary.csv", encoding="utf-8", newline="") as f:
        table = list(csv.DictReader(f))
    assert [t["status"] for t in table] == [row["status"] for row in rows]
    assert float(table[0]["map_p99"]) == rows[0]["map_p99"]
    assert table[2]["most_anomalous_slices"] == ";".join(map(str, rows[2]["most_anomalous_slices"]))


def test_a_folder_input_scores_every_image_in_it(phantom_file, tiny_model_dir, tmp_path):
    import shutil

    study = tmp_path / "study"
    study.mkdir()
    shutil.copy(phantom_file, study / "a.nii.gz")
    sitk.WriteImage(sitk.ReadImage(str(phantom_file)), str(study / "b.nrrd"))
    (study / "notes.txt").write_text("not an image", encoding="utf-8")
    out = tmp_path / "out"
    r = run_cli("score", study, "--model", tiny_model_dir, "--output-dir", out, "--preset", "fast", "--quiet")
    assert r.returncode == 0, r.stderr
    rows = json.loads((out / "summary.json").read_text(encoding="utf-8"))["rows"]
    assert [(row["input"], row["status"]) for row in rows] == [
        (str(study / "a.nii.gz"), "ok"),
        (str(study / "b.nrrd"), "ok"),
    ]
    assert (out / "a_report.json").is_file() and (out / "b_report.json").is_file()
    assert (
        main(
            [
                "score",
                str(study),
                "--mask",
                str(phantom_file),
                "--model",
                str(tiny_model_dir),
                "--output-dir",
                str(tmp_path / "o2"),
            ]
        )
        == 2
    )


def test_figure_without_matplotlib_is_plain_with_one_notice(phantom_file, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    code = (
        "import sys; sys.modules['matplotlib'] = None; from AnoDODELib.cli import main; "
        f"sys.exit(main(['score', {str(phantom_file)!r}, '--model', {str(tiny_model_dir)!r}, "
        f"'--output-dir', {str(out)!r}, '--preset', 'fast', '--quiet']))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    notices = [ln for ln in r.stderr.splitlines() if "matplotlib is not installed" in ln]
    assert len(notices) == 1
    png = (out / "phantom_figure.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and b"Matplotlib" not in png
    img = sitk.ReadImage(str(out / "phantom_figure.png"))
    assert img.GetNumberOfComponentsPerPixel() == 3 and img.GetSize()[0] > img.GetSize()[1] / 4


def test_a_closed_stdout_pipe_ends_quietly():
    """``anodode info | head -c 0``: the reader is gone before anything is printed; the command stops with
    128 + SIGPIPE and no traceback (it used to print BrokenPipeError's)."""
    import os
    import signal
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # nobody will read: the first write to stdout fails with EPIPE
    try:
        proc = subprocess.run(
            [sys.executable, "-c", "from AnoDODELib import cli; cli.run()", "info"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=120,
            check=False,
        )
    finally:
        os.close(write)
    assert proc.returncode == 128 + signal.SIGPIPE, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


def test_a_closed_stdout_does_not_fail_a_scored_input(phantom_file, tiny_model_dir, tmp_path):
    """``anodode score ... | head -c 0``: every file is written and the input's row says ok (it used to say
    "[Errno 32] Broken pipe", exit 1); the line meant for stdout goes nowhere."""
    import os

    out = tmp_path / "out"
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "AnoDODELib.cli",
                "score",
                str(phantom_file),
                "--model",
                str(tiny_model_dir),
            ]
            + ["--output-dir", str(out), "--preset", "fast"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=300,
            check=False,
        )
    finally:
        os.close(write)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Broken pipe" not in proc.stderr
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert [r["status"] for r in summary["rows"]] == ["ok"] and summary["failed"] == 0
    assert (out / "phantom_report.json").is_file() and (out / "phantom_anomaly.nii.gz").is_file()


def test_a_folder_scored_into_itself_can_be_scored_again(phantom_file, tiny_model_dir, tmp_path):
    """The second run of ``anodode score study/ --output-dir study/`` scores the scan again and leaves out
    the maps the first run wrote there (listed in its report); it used to score those as scans and fail the
    real one with "refusing to overwrite input"."""
    import shutil

    study = tmp_path / "study"
    study.mkdir()
    shutil.copy(phantom_file, study / "a.nii.gz")
    for run in range(2):
        r = run_cli(
            "score", study, "--model", tiny_model_dir, "--output-dir", study, "--preset", "fast", "--quiet"
        )
        assert r.returncode == 0, (run, r.stderr)
        rows = json.loads((study / "summary.json").read_text(encoding="utf-8"))["rows"]
        assert [(row["input"], row["status"]) for row in rows] == [(str(study / "a.nii.gz"), "ok")], run
    assert "left out 3 file(s) an earlier AnoDODE run wrote there" in r.stderr
    assert sorted(p.name for p in study.iterdir()) == sorted(
        [
            "a.nii.gz",
            "a_anomaly.nii.gz",
            "a_label.nii.gz",
            "a_brainmask.nii.gz",
            "a_figure.png",
            "a_report.json",
        ]
        + ["summary.csv", "summary.json"]
    )
    # a folder holding nothing but outputs has nothing to score
    for name in ("a.nii.gz", "summary.csv", "summary.json"):
        (study / name).unlink()
    r = run_cli("score", study, "--model", tiny_model_dir, "--output-dir", tmp_path / "o", "--quiet")
    assert r.returncode == 2 and "holds only AnoDODE outputs" in r.stderr


def test_bad_log_level_and_empty_output_dir_are_usage_errors(phantom_file, tiny_model_dir, tmp_path):
    import os

    env = {**os.environ, "ANODODE_LOG": "loud"}
    r = subprocess.run(
        [sys.executable, "-m", "AnoDODELib.cli", "info"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=env,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "anodode: error: ANODODE_LOG must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL or a number (got 'loud')"
    ]
    for command in (["score", str(phantom_file)], ["demo"]):
        r = run_cli(*command, "--model", tiny_model_dir, "--output-dir", "", "--quiet")
        assert r.returncode == 2 and r.stderr.strip().splitlines() == [
            "anodode: error: --output-dir must name a folder (got an empty string)"
        ], r.stderr


def test_runs_into_one_folder_keep_each_others_rows(tmp_path):
    """summary.csv/json list every input scored into the folder: runs at the same time (4 processes, 10
    summary writes each, as a batch writes after every input) never drop each other's rows, and the latest
    row of an input replaces its earlier one in place."""
    from AnoDODELib import summary

    out = tmp_path / "out"
    code = (
        "import sys; from AnoDODELib import summary\n"
        "k = sys.argv[1]\n"
        "for i in range(10):\n"
        "    rows = [summary.summary_row(f'{k}_{j}.nii.gz') if j > i else summary.summary_row(f'{k}_{j}.nii.gz', error='x')"
        " for j in range(3)]\n"
        f"    summary.write_summary(rows, {str(out)!r})\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, name]) for name in "abcd"]
    assert [p.wait(timeout=300) for p in procs] == [0] * 4
    rows = json.loads((out / "summary.json").read_text(encoding="utf-8"))["rows"]
    assert sorted(r["input"] for r in rows) == sorted(f"{k}_{j}.nii.gz" for k in "abcd" for j in range(3))
    assert all(r["status"] == "x" for r in rows)
    summary.write_summary([summary.summary_row("b_1.nii.gz", error="again")], out)
    again = json.loads((out / "summary.json").read_text(encoding="utf-8"))["rows"]
    assert [r["input"] for r in again] == [r["input"] for r in rows]
    assert [r["status"] for r in again if r["input"] == "b_1.nii.gz"] == ["again"]


def test_help_texts_are_true():
    """``score --help`` says a folder is an input, what --output-dir defaults to, and points to sections and
    files that exist (--preset pointed to a README section "Speed" there is none of); ``evaluate --help``
    names the slice statistic evaluate computes (it said "99th percentile")."""
    import re
    from pathlib import Path

    from AnoDODELib.cli import build_parser
    from training import evaluate

    repo = Path(__file__).resolve().parents[2]
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    text = " ".join(sub.choices["score"].format_help().split())
    assert "folder of NIfTI/NRRD/MHA files" in text and "(default: anodode_output)" in text
    readme = (repo / "README.md").read_text(encoding="utf-8")
    for section in re.findall(r"README(?:\.md)?, '([^']+)'", text):
        assert f"## {section}\n" in readme, section
    for doc in re.findall(r"(docs/[\w.]+\.md)", text):
        assert (repo / doc).is_file(), doc
    assert "Speed)" not in text
    assert "99th" not in evaluate.__doc__ and "most anomalous 1 cm²" in " ".join(evaluate.__doc__.split())


def test_warnings_get_a_line_of_their_own_beside_the_progress_bar(phantom_file, tiny_model_dir, tmp_path):
    """A warning logged while the progress bar is drawn starts its own line (tqdm.write): it used to be
    written onto the bar's line ("phantom (preprocessing) 5%|▍ anodode: WARNING: ...")."""
    import os
    import re

    ph = sitk.ReadImage(str(phantom_file))
    unstripped = sitk.GetArrayFromImage(ph) + 5.0  # no constant background: the "not skull-stripped" warning
    image = sitk.GetImageFromArray(unstripped + np.random.default_rng(0).normal(0, 1, unstripped.shape))
    image.CopyInformation(ph)
    path = tmp_path / "raw.nii.gz"
    sitk.WriteImage(sitk.Cast(image, sitk.sitkFloat32), str(path))
    env = {**os.environ, "COLUMNS": "100"}
    r = subprocess.run(
        [sys.executable, "-m", "AnoDODELib.cli", "score", str(path), "--model", str(tiny_model_dir)]
        + ["--output-dir", str(tmp_path / "out"), "--preset", "fast", "--brain-extraction", "never"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    pieces = re.split(r"[\r\n]", r.stderr)  # tqdm redraws with \r: each piece is what a line shows
    warned = [p for p in pieces if "anodode: WARNING:" in p]
    assert warned and all(p.startswith("anodode: WARNING:") for p in warned), warned
