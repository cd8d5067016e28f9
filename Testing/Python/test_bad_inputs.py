"""Corrupt inputs, killed runs and bad bundles (issue 13): one line, the right exit code, nothing half-written.

Every bad input is built here from a small synthetic phantom (no shared data needed); the fuzz test uses a
small real FLAIR when ../shared/data is present, the phantom otherwise.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import REPO, data_dir

from AnoDODELib import atomic_write, cli, volume_io, worker
from AnoDODELib.atomic_write import STAGING_PREFIX, StagedWrite, remove_stale_staging
from AnoDODELib.bundle import AnoDODEModel, BundleError, load_model, save_model
from AnoDODELib.config import Calibration, ModelConfig, ScoreNetConfig
from AnoDODELib.demo import make_phantom
from AnoDODELib.outputs import OutputSet, report_bytes

ENV = {**os.environ, "PYTHONPATH": str(REPO / "AnoDODE"), "OMP_NUM_THREADS": "1"}


# ----------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(
        score_net=ScoreNetConfig(channels=3, cond_channels=4, hidden=16, layers=2),
        calibration=Calibration(threshold=0.05),
    )
    return save_model(AnoDODEModel(cfg, metadata={"name": "tiny"}), tmp_path_factory.mktemp("m") / "tiny")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ph") / "phantom.nii.gz"
    sitk.WriteImage(make_phantom(spacing=(3.0, 3.0, 6.0)).image, str(path))
    return path


def score(capsys, *args: object) -> tuple[int, list[str]]:
    """Run ``anodode score`` in-process; (exit code, stderr lines that are not log warnings)."""
    code = cli.main(["score", *map(str, args), "--quiet", "--device", "cpu"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("anodode: WARNING")]


def assert_refused(code: int, lines: list[str], expected_code: int, *fragments: str) -> None:
    assert code == expected_code, lines
    assert len(lines) == 1 and lines[0].startswith("anodode: error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def listing(folder: Path) -> list[str]:
    """The folder's files less the batch summary (summary.csv/.json: a complete list of every input of the
    batch, failed ones with their error, rewritten atomically after each input; see test_cli.py)."""
    summary = {"summary.csv", "summary.json"}
    return sorted(p.name for p in folder.iterdir() if p.name not in summary) if folder.exists() else []


def with_voxels(src: Path, dst: Path, **where_value: float) -> Path:
    image = sitk.ReadImage(str(src))
    array = sitk.GetArrayFromImage(image)
    for i, value in enumerate(where_value.values()):
        array[array.shape[0] // 2, 20 + i, 20] = value
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    sitk.WriteImage(out, str(dst))
    return dst


# ------------------------------------------------------------------------------------------ 1. truncation


@pytest.mark.parametrize("cut", ["10kB", "half"])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_truncated_nifti_is_refused(model_dir, cut, suffix, phantom, tmp_path, capsys):
    data = phantom.read_bytes() if suffix == ".nii.gz" else gzip.decompress(phantom.read_bytes())
    bad = tmp_path / f"cut{suffix}"
    bad.write_bytes(data[:10_000] if cut == "10kB" else data[: len(data) // 2])
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(bad))).shape  # the plain reader takes it: the bug
    out = tmp_path / "out"
    code, lines = score(capsys, bad, "--model", model_dir, "--output-dir", out)
    assert_refused(
        code, lines, 1, str(bad), "gzip stream is incomplete" if suffix == ".nii.gz" else "truncated"
    )
    assert listing(out) == []


def test_a_gzip_crc_error_is_refused(phantom, tmp_path):
    data = bytearray(phantom.read_bytes())
    data[-6] ^= 0xFF  # inside the CRC32 trailer: the content decompresses but does not check out
    bad = tmp_path / "crc.nii.gz"
    bad.write_bytes(bytes(data))
    with pytest.raises(volume_io.InputError, match="corrupt gzip data"):
        volume_io.read_image(bad)


def test_intact_nifti_in_every_layout_reads_the_same(phantom, tmp_path):
    raw = gzip.decompress(phantom.read_bytes())
    plain = tmp_path / "p.nii"
    plain.write_bytes(raw)
    two = tmp_path / "two.nii.gz"
    two.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]) + b"\0" * 64)  # members + padding
    want = sitk.GetArrayFromImage(sitk.ReadImage(str(phantom)))
    for path in (phantom, plain, two):
        assert np.array_equal(sitk.GetArrayFromImage(volume_io.read_image(path)), want)


# ---------------------------------------------------------------------------------------- 2. NaN and Inf


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_voxels_are_refused_in_every_format(model_dir, suffix, value, phantom, tmp_path, capsys):
    bad = with_voxels(phantom, tmp_path / f"bad{suffix}", v=value)
    out = tmp_path / "out"
    code, lines = score(capsys, bad, "--model", model_dir, "--output-dir", out)
    assert_refused(code, lines, 1, "1 voxel(s) are NaN or infinite")
    assert listing(out) == []


def test_non_finite_mask_and_other_contrast_are_refused(phantom, tmp_path):
    image = volume_io.read_image(phantom)
    mask = with_voxels(phantom, tmp_path / "mask.nii.gz", v=math.nan)
    with pytest.raises(volume_io.InputError, match="NaN or infinite"):
        volume_io.read_mask(mask, image)


# ---------------------------------------------------------------------------------------- 3. kill safety


def test_staging_of_a_killed_run_is_removed_by_the_next_and_a_live_one_kept(tmp_path):
    script = (
        "import os, signal, sys; from AnoDODELib.atomic_write import StagedWrite\n"
        "with StagedWrite(sys.argv[1]) as s:\n"
        "    s.path('a_anomaly.nii.gz').write_bytes(b'x' * 1000)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], env=ENV, capture_output=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL
    dead = [p for p in tmp_path.iterdir() if p.name.startswith(STAGING_PREFIX)]
    assert len(dead) == 1  # SIGKILL leaves the staging folder ...
    legacy = tmp_path / ".x_anomaly.nii.gz.tmp-abcd1234"  # ... as did the per-file writer before it
    legacy.mkdir()
    old = time.time() - 2 * atomic_write.LEGACY_STALE_AFTER_S
    os.utime(legacy, (old, old))
    fresh_legacy = tmp_path / ".y_report.json.tmp-abcd1234"
    fresh_legacy.mkdir()
    assert sorted(remove_stale_staging(tmp_path)) == sorted([dead[0], legacy])
    with StagedWrite(tmp_path) as live:  # this process's own folder: a live run's
        assert remove_stale_staging(tmp_path) == [] and live.staging.exists()
    assert listing(tmp_path) == [fresh_legacy.name]  # a recent one may belong to a running old version


def test_kill_during_the_moves_never_shows_a_mixed_set(tmp_path):
    """SIGKILL between two renames of the commit: the old set's report is gone first, so no reader takes the
    folder's files for a complete set; the next run completes it."""
    names = ["s_anomaly.nii.gz", "s_label.nii.gz", "s_overlay.png", "s_report.json"]
    for n in names:
        (tmp_path / n).write_text("old", encoding="utf-8")
    script = (
        "import os, signal, sys; from AnoDODELib import atomic_write\n"
        "real, n = os.replace, [0]\n"
        "def replace(a, b):\n"
        "    n[0] += 1\n"
        "    if n[0] == 3: os.kill(os.getpid(), signal.SIGKILL)\n"
        "    real(a, b)\n"
        "os.replace = replace\n"
        "with atomic_write.StagedWrite(sys.argv[1]) as s:\n"
        f"    for name in {names!r}: s.path(name).write_text('new')\n"
        "    s.commit()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], env=ENV, capture_output=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "s_report.json").exists()  # no report: an incomplete set, whatever else is there
    assert [(tmp_path / n).read_text(encoding="utf-8") for n in names[:2]] == ["new", "new"]
    with StagedWrite(tmp_path) as s:
        for n in names:
            s.path(n).write_text("newer", encoding="utf-8")
        s.commit()
    assert listing(tmp_path) == sorted(names)  # the killed run's staging folder is gone too
    assert {(tmp_path / n).read_text(encoding="utf-8") for n in names} == {"newer"}


def test_sigterm_during_the_moves_is_deferred_until_the_set_is_complete(tmp_path, monkeypatch):
    class Stop(Exception):
        pass

    def handler(signum, frame):
        raise Stop()

    previous = signal.signal(signal.SIGTERM, handler)
    real = os.replace
    calls = []

    def replace(a, b):
        calls.append(b)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        real(a, b)

    monkeypatch.setattr(atomic_write.os, "replace", replace)
    try:
        with pytest.raises(Stop):
            with StagedWrite(tmp_path) as s:
                for n in ("a.png", "a.json"):
                    s.path(n).write_text("x", encoding="utf-8")
                s.commit()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert listing(tmp_path) == ["a.json", "a.png"]  # both moved before the handler ran, no staging left


def test_a_failed_move_leaves_no_part_of_the_new_set(tmp_path, monkeypatch):
    real = os.replace

    def replace(a, b):
        if str(b).endswith("report.json"):
            raise OSError("simulated")
        real(a, b)

    monkeypatch.setattr(atomic_write.os, "replace", replace)
    with pytest.raises(OSError):
        with StagedWrite(tmp_path) as s:
            for n in ("m_anomaly.nrrd", "m_report.json"):
                s.path(n).write_text("x", encoding="utf-8")
            s.commit()
    assert listing(tmp_path) == []


@pytest.mark.parametrize("delay", [0.5, 2.5, 3.5, 4.5])
def test_sigterm_at_any_moment_leaves_a_complete_set_or_nothing(model_dir, delay, phantom, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "AnoDODELib.cli",
            "score",
            str(phantom),
            "--model",
            str(model_dir),
            "--output-dir",
            str(out),
            "--device",
            "cpu",
            "--quiet",
        ],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err
    files = listing(out)
    assert files in ([], sorted(OutputSet.with_stem(out, "phantom").names.values())), files
    if proc.returncode == 128 + signal.SIGTERM:  # handled: one line, and the scan's set was not written
        assert [ln for ln in err.splitlines() if ln.startswith("anodode: error:")] == [
            "anodode: error: terminated (SIGTERM); nothing of the unfinished scan was written"
        ]
        assert files == []
    else:  # finished first (0), or killed while importing / after finishing, outside the handler (-SIGTERM)
        assert proc.returncode in (0, -signal.SIGTERM), err
        assert proc.returncode == -signal.SIGTERM or files


# ------------------------------------------------------------------------------------------ 4. bundles


def _break(meta: dict, kind: str) -> object:
    cfg = meta["config"]
    if kind == "list":
        return [meta]
    if kind == "null":
        return None
    if kind == "spacing0":
        cfg["preprocess"]["in_plane_spacing_mm"] = 0
    elif kind == "reconstructions0":
        cfg["localisation"]["n_reconstructions"] = 0
    elif kind == "steps0":
        cfg["localisation"]["reconstruction_steps"] = 0
    elif kind == "threshold_nan":
        cfg["calibration"]["threshold"] = math.nan
    elif kind == "string_int":
        cfg["score_net"]["hidden"] = "16"
    elif kind == "section_null":
        cfg["sde"] = None
    elif kind == "weights_outside":
        meta["weights"]["file"] = "../outside.pt"
    elif kind == "weights_absolute":
        meta["weights"]["file"] = "/etc/passwd"
    elif kind == "weights_null":
        meta["weights"] = None
    return meta


BUNDLE_BREAKAGES = {
    "list": "must hold a JSON object",
    "null": "must hold a JSON object",
    "spacing0": "config.preprocess.in_plane_spacing_mm must be >= 0.25",
    "reconstructions0": "config.localisation.n_reconstructions must be an integer >= 1",
    "steps0": "config.localisation.reconstruction_steps must be an integer >= 1",
    "threshold_nan": "config.calibration.threshold must be a finite number",
    "string_int": "config.score_net.hidden must be an integer",
    "section_null": "config.sde must be an object",
    "weights_outside": "lies outside the bundle folder",
    "weights_absolute": "lies outside the bundle folder",
    "weights_null": "weights must be an object",
}


@pytest.mark.parametrize("kind", sorted(BUNDLE_BREAKAGES))
def test_every_bundle_field_is_validated_with_one_line_naming_it(model_dir, kind, phantom, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(model_dir, bundle)
    (tmp_path / "outside.pt").write_bytes((bundle / "weights.pt").read_bytes())
    meta = json.loads((bundle / "model.json").read_text(encoding="utf-8"))
    (bundle / "model.json").write_text(json.dumps(_break(meta, kind)), encoding="utf-8")
    with pytest.raises(BundleError, match=BUNDLE_BREAKAGES[kind].replace("(", r"\(")):
        load_model(bundle)
    out = tmp_path / "out"
    code, lines = score(capsys, phantom, "--model", bundle, "--output-dir", out)
    assert_refused(code, lines, 2, BUNDLE_BREAKAGES[kind])
    assert not out.exists()


@pytest.mark.parametrize("tamper", ["truncated", "foreign_object"])
def test_tampered_weights_give_one_line_exit_2(model_dir, tamper, phantom, tmp_path, capsys):
    """weights.pt replaced (and its checksum in model.json updated to match): torch refuses it with a message
    of several lines; the user gets one."""
    import hashlib
    import io

    bundle = tmp_path / "bundle"
    shutil.copytree(model_dir, bundle)
    data = (bundle / "weights.pt").read_bytes()
    if tamper == "truncated":
        data = data[: len(data) // 2]
    else:  # a pickle naming a class weights_only does not allow
        buffer = io.BytesIO()
        torch.save({"net": Path("/etc/passwd")}, buffer)
        data = buffer.getvalue()
    (bundle / "weights.pt").write_bytes(data)
    meta = json.loads((bundle / "model.json").read_text(encoding="utf-8"))
    meta["weights"]["sha256"] = hashlib.sha256(data).hexdigest()
    (bundle / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    out = tmp_path / "out"
    code, lines = score(capsys, phantom, "--model", bundle, "--output-dir", out)
    assert_refused(code, lines, 2, "weights.pt")
    assert len(lines[0]) <= 320 and not out.exists()


# --------------------------------------------------------------------------------------- 5. threshold


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_threshold_is_a_usage_error(model_dir, value, phantom, tmp_path, capsys):
    out = tmp_path / "out"
    code, lines = score(capsys, phantom, "--model", model_dir, "--output-dir", out, f"--threshold={value}")
    assert_refused(code, lines, 2, "--threshold must be a finite number")
    assert not out.exists()


def test_reports_are_strict_json():
    assert json.loads(report_bytes({"a": 1.5, "b": [None, 2]})) == {"a": 1.5, "b": [None, 2]}
    with pytest.raises(ValueError):
        report_bytes({"volume_score_bpd": math.nan})


# ------------------------------------------------------------------------------------- 6. output folder


def test_a_file_in_the_way_of_the_output_folder_fails_before_scoring(
    model_dir, phantom, tmp_path, capsys, monkeypatch
):
    blocker = tmp_path / "out"
    blocker.write_text("a file", encoding="utf-8")
    monkeypatch.setattr(cli, "score_to_files", lambda *a, **k: pytest.fail("scored despite the bad folder"))
    code, lines = score(capsys, phantom, "--model", model_dir, "--output-dir", blocker)
    assert_refused(code, lines, 2, str(blocker), "is a file")
    code, lines = score(capsys, phantom, "--model", model_dir, "--output-dir", blocker / "sub")
    assert_refused(code, lines, 2, "cannot create the output folder")
    assert blocker.read_text(encoding="utf-8") == "a file"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_fails_before_scoring(model_dir, phantom, tmp_path, capsys, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    monkeypatch.setattr(cli, "score_to_files", lambda *a, **k: pytest.fail("scored despite the bad folder"))
    try:
        code, lines = score(capsys, phantom, "--model", model_dir, "--output-dir", out)
    finally:
        out.chmod(0o755)
    assert_refused(code, lines, 2, "not writable")


def test_a_folder_in_the_way_of_an_output_file_fails_before_scoring(model_dir, phantom, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "phantom_report.json").mkdir(parents=True)
    code, lines = score(capsys, phantom, "--model", model_dir, "--output-dir", out)
    assert_refused(code, lines, 1, "a folder is in the way")
    assert listing(out) == ["phantom_report.json"]


# ----------------------------------------------------------------------------------------- 7. smaller


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_a_gpu_is_one_usage_error(model_dir, phantom, tmp_path, capsys):
    code = cli.main(
        [
            "score",
            str(phantom),
            str(phantom),
            "--model",
            str(model_dir),
            "--output-dir",
            str(tmp_path / "out"),
            "--device",
            "cuda",
            "--quiet",
        ]
    )
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert_refused(code, lines, 2, "CUDA")


@pytest.mark.parametrize(
    "size,spacing",
    [((3, 3, 3), (1.0, 1.0, 1.0)), ((40, 40, 20), (1.0, 1.0, 1.0)), ((8, 8, 8), (20.0, 20.0, 20.0))],
)
def test_volumes_too_small_to_be_a_head_are_refused(model_dir, size, spacing, tmp_path, capsys):
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.random(size[::-1]).astype(np.float32))
    image.SetSpacing(spacing)
    path = tmp_path / "small.nii.gz"
    sitk.WriteImage(image, str(path))
    code, lines = score(capsys, path, "--model", model_dir, "--output-dir", tmp_path / "out")
    assert_refused(code, lines, 1, "too small to be a head scan")
    assert listing(tmp_path / "out") == []


def test_head_size_bound_in_mm():
    def image(size, spacing):
        im = sitk.Image(size, sitk.sitkFloat32)
        im.SetSpacing(spacing)
        return im

    volume_io.check_head_size(image((60, 60, 2), (1.0, 1.0, 5.0)), "x")  # 60 mm: just enough
    with pytest.raises(volume_io.InputError, match="600 x 599 voxels, 60 x 59.9 mm"):
        volume_io.check_head_size(image((599, 600, 2), (0.1, 0.1, 5.0)), "x")
    with pytest.raises(volume_io.InputError, match="15 x 15 voxels"):
        volume_io.check_head_size(image((15, 15, 30), (5.0, 5.0, 5.0)), "x")  # 75 mm but 15 voxels


def test_demo_with_a_bad_model_leaves_nothing(tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.json").write_text("null", encoding="utf-8")
    out = tmp_path / "demo"
    code = cli.main(["demo", "--model", str(bad), "--output-dir", str(out), "--quiet"])
    assert code == 2 and listing(out) == []
    # a model that loads but cannot score this phantom (it reads two contrasts): phantom files removed again
    two = tmp_path / "two"
    cfg = ModelConfig(score_net=ScoreNetConfig(channels=6, cond_channels=4, hidden=8, layers=1))
    cfg = ModelConfig(features=type(cfg.features)(contrasts=("flair", "t1ce")), score_net=cfg.score_net)
    save_model(AnoDODEModel(cfg), two)
    code = cli.main(["demo", "--model", str(two), "--output-dir", str(out), "--quiet"])
    assert code == 2 and listing(out) == []
    capsys.readouterr()


def test_a_lesion_sized_mask_warns(model_dir, phantom, tmp_path, caplog):
    ph = make_phantom(spacing=(3.0, 3.0, 6.0))
    lesion = tmp_path / "lesion.nii.gz"
    sitk.WriteImage(ph.lesion, str(lesion))
    brain = sitk.GetImageFromArray((sitk.GetArrayFromImage(ph.image) > 0).astype(np.uint8))
    brain.CopyInformation(ph.image)
    brain_path = tmp_path / "brain.nii.gz"
    sitk.WriteImage(brain, str(brain_path))
    array = sitk.GetArrayFromImage(ph.image)
    assert volume_io.mask_coverage_warning(array, sitk.GetArrayFromImage(ph.lesion) > 0, "m") is not None
    assert volume_io.mask_coverage_warning(array, sitk.GetArrayFromImage(brain) > 0, "m") is None
    with caplog.at_level("WARNING"):
        assert (
            cli.main(
                [
                    "score",
                    str(phantom),
                    "--mask",
                    str(lesion),
                    "--model",
                    str(model_dir),
                    "--output-dir",
                    str(tmp_path / "out"),
                    "--quiet",
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
    assert any("not a lesion mask" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------------------ worker


def test_worker_follows_the_same_rules(model_dir, phantom, tmp_path, capsys):
    truncated = tmp_path / "cut.nii.gz"
    truncated.write_bytes(phantom.read_bytes()[:10_000])
    nan = with_voxels(phantom, tmp_path / "nan.nii.gz", v=math.nan)
    bundle = tmp_path / "bundle"
    shutil.copytree(model_dir, bundle)
    meta = json.loads((bundle / "model.json").read_text(encoding="utf-8"))
    meta["config"]["localisation"]["n_reconstructions"] = 0
    (bundle / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    cases = [
        (["--input", truncated], "gzip stream is incomplete"),
        (["--input", nan], "NaN or infinite"),
        (["--input", phantom, "--threshold", "nan"], "--threshold must be a finite number"),
        (["--input", phantom, "--model", bundle], "config.localisation.n_reconstructions"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--input", phantom, "--device", "cuda"], "CUDA"))
    for i, (args, fragment) in enumerate(cases):
        out = tmp_path / f"out{i}"
        model = [] if "--model" in args else ["--model", model_dir]
        device = [] if "--device" in args else ["--device", "cpu"]
        code = worker.main([*map(str, [*args, *model, *device, "--output-dir", out])])
        captured = capsys.readouterr()
        errors = [ln for ln in captured.err.splitlines() if ln.startswith("ERROR: ")]
        assert code == 1 and len(errors) == 1 and fragment in errors[0], captured.err
        assert "Traceback" not in captured.err and "DONE" not in captured.out
        assert listing(out) == []


# -------------------------------------------------------------------------------------------------- fuzz


def _small_real_volume(tmp_path: Path) -> Path:
    """A real FLAIR shrunk to about 4 mm voxels (or the phantom without the data), as .nii.gz."""
    source = data_dir() / "brats2012" / "BRATS_HG0015" / "BRATS_HG0015_FLAIR.mha"
    path = tmp_path / "small.nii.gz"
    if source.exists():
        sitk.WriteImage(sitk.Shrink(sitk.ReadImage(str(source), sitk.sitkFloat32), [4, 4, 4]), str(path))
    else:
        sitk.WriteImage(make_phantom(spacing=(4.0, 4.0, 6.0)).image, str(path))
    return path


def test_fuzz_truncations_and_byte_flips(model_dir, tmp_path, capsys):
    """Each corrupted copy (a random truncation, or 1-3 random bytes changed anywhere in the file) ends with
    exit 1 or 2 and one error line, or exit 0 with maps identical to the intact file's; never a traceback,
    never a partial output set."""
    intact = _small_real_volume(tmp_path)
    code, lines = score(capsys, intact, "--model", model_dir, "--output-dir", tmp_path / "ref")
    assert code == 0, lines
    ref = OutputSet.with_stem(tmp_path / "ref", "small").paths()
    want = {k: sitk.GetArrayFromImage(sitk.ReadImage(str(ref[k]))) for k in ("anomaly", "label")}
    data = intact.read_bytes()
    rng = np.random.default_rng(13)
    outcomes = {"refused": 0, "identical": 0}
    for i in range(60):
        corrupt = bytearray(data)
        if i % 3 == 0:
            corrupt = corrupt[: int(rng.integers(0, len(data)))]
        else:
            region = len(data) if i % 3 == 1 else min(len(data), 400)  # anywhere, or the gzip/NIfTI header
            for _ in range(int(rng.integers(1, 4))):
                pos = int(rng.integers(0, region))
                corrupt[pos] ^= int(rng.integers(1, 256))
        bad = tmp_path / f"f{i}" / "small.nii.gz"
        bad.parent.mkdir()
        bad.write_bytes(bytes(corrupt))
        out = tmp_path / f"o{i}"
        code, lines = score(capsys, bad, "--model", model_dir, "--output-dir", out)
        if code == 0:
            got = OutputSet.with_stem(out, "small").paths()
            assert listing(out) == sorted(p.name for p in got.values())
            for k in ("anomaly", "label"):
                assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(got[k]))), want[k]), (i, k)
            outcomes["identical"] += 1
        else:
            assert code in (1, 2) and len(lines) == 1 and lines[0].startswith("anodode: error: "), (i, lines)
            assert listing(out) == [], (i, listing(out))
            outcomes["refused"] += 1
    assert outcomes["refused"] > 30, outcomes
    raw = gzip.decompress(data)  # uncompressed NIfTI: no checksum, but every cut leaves data short
    for i in range(10):
        bad = tmp_path / f"u{i}" / "small.nii"
        bad.parent.mkdir()
        bad.write_bytes(raw[: int(rng.integers(0, len(raw)))])
        code, lines = score(capsys, bad, "--model", model_dir, "--output-dir", tmp_path / f"uo{i}")
        assert code == 1 and len(lines) == 1 and lines[0].startswith("anodode: error: "), (i, lines)
        assert listing(tmp_path / f"uo{i}") == []


# ------------------------------------------------------------------------------- implausible geometry


def _respaced(src: Path, dst: Path, spacing: tuple[float, float, float]) -> Path:
    image = sitk.ReadImage(str(src))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(dst))
    return dst


def test_implausible_spacing_fails_one_input_in_one_line_and_the_batch_goes_on(
    model_dir, phantom, tmp_path, capsys
):
    """A header with a wrong spacing (1000 mm, 50 mm or 12 mm in-plane pixels: a field of view of metres; 0.001
    mm slices) is refused from the header before any allocation: one line naming the input, its row in the
    summary, and the next input is scored (it used to be a traceback, or minutes of work then an allocation
    error that ended the batch without a summary)."""
    bad = [
        _respaced(phantom, tmp_path / f"sp{i}.nii.gz", spacing)
        for i, spacing in enumerate(
            [(1000.0, 1000.0, 1000.0), (50.0, 50.0, 6.0), (12.0, 12.0, 6.0), (3.0, 3.0, 0.001)]
        )
    ]
    out = tmp_path / "out"
    code, lines = score(capsys, *bad, phantom, "--model", model_dir, "--output-dir", out)
    assert code == 1, lines
    assert len(lines) == len(bad), lines
    for path, line in zip(bad, lines):
        assert line.startswith(f"anodode: error: {path}: ") and ("spacing" in line or "spans" in line), line
    rows = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert [r["status"] == "ok" for r in rows["rows"]] == [False] * len(bad) + [True]
    assert rows["failed"] == len(bad) and rows["ok"] == 1
    assert listing(out) == sorted(p.name for p in OutputSet.with_stem(out, "phantom").paths().values())


def test_scan_geometry_bounds():
    def image(size, spacing):
        im = sitk.Image(size, sitk.sitkUInt8)
        im.SetSpacing(spacing)
        return im

    volume_io.check_scan_geometry(image((240, 240, 155), (1.0, 1.0, 1.0)), "x", 2.0)  # BraTS
    volume_io.check_scan_geometry(image((512, 512, 16), (0.47, 0.47, 8.0)), "x", 2.0)  # clinical 2-D FLAIR
    volume_io.check_scan_geometry(image((256, 256, 24), (0.9, 0.9, 6.5)), "x", 0.25)  # finest model grid
    for size, spacing, words in [
        ((240, 240, 155), (1.0, 1.0, 0.01), "implausible voxel spacing"),
        ((20, 20, 20), (10.0, 10.0, 10.0), "implausible voxel spacing"),
        ((64, 64, 10), (2.0, 2.0, 40.0), "implausible voxel spacing"),
        ((240, 240, 155), (3.0, 3.0, 3.0), r"spans \(720, 720, 465\) mm"),
        ((1000, 1000, 500), (0.5, 0.5, 1.0), "locations"),
    ]:
        with pytest.raises(volume_io.InputError, match=words):
            volume_io.check_scan_geometry(image(size, spacing), "x", 2.0 if words != "locations" else 0.25)


# --------------------------------------------------------------------------- masks, thresholds, headers


def _mask_like(reference: Path, array: np.ndarray, path: Path) -> Path:
    ref = sitk.ReadImage(str(reference))
    mask = sitk.GetImageFromArray(array.astype(np.uint8))
    mask.CopyInformation(ref)
    sitk.WriteImage(mask, str(path))
    return path


def test_a_mask_that_is_not_a_brain_mask_is_refused(model_dir, phantom, tmp_path, capsys):
    """An all-ones --mask (it used to be scored silently: the background counted as brain, 1622 mL
    "anomalous" on a BraTS scan) and a mask lying mostly on the background of a skull-stripped scan are
    refused in one line naming the mask."""
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(phantom)))
    ones = _mask_like(phantom, np.ones(array.shape), tmp_path / "ones.nii.gz")
    shell = np.ones(array.shape, bool)
    shell[2:-2, 2:-2, 2:-2] = False  # the border region: background only
    outside = _mask_like(
        phantom, shell | (np.arange(array.size).reshape(array.shape) % 50 == 0), tmp_path / "o.nii.gz"
    )
    for mask, words in [(ones, "covers every voxel"), (outside, "lies mostly outside the brain")]:
        out = tmp_path / mask.name.split(".")[0]
        code, lines = score(capsys, phantom, "--mask", mask, "--model", model_dir, "--output-dir", out)
        assert_refused(code, lines, 1, str(mask), words)
        assert listing(out) == []
    brain = _mask_like(phantom, array > 0, tmp_path / "brain.nii.gz")  # a true brain mask still scores
    code, lines = score(
        capsys, phantom, "--mask", brain, "--model", model_dir, "--output-dir", tmp_path / "b"
    )
    assert code == 0, lines


def test_a_negative_threshold_is_a_usage_error_and_the_label_stays_in_the_brain(
    model_dir, phantom, tmp_path, capsys
):
    """The map is >= 0 everywhere, so a negative --threshold would label the whole volume, background included
    (it did); it is refused as a usage error by the CLI (exit 2) and the worker. The label is the voxels whose
    map is above the threshold: not those at it."""
    out = tmp_path / "neg"
    code, lines = score(capsys, phantom, "--threshold", "-1", "--model", model_dir, "--output-dir", out)
    assert_refused(code, lines, 2, "--threshold must be >= 0")
    assert not out.exists() or listing(out) == []
    code = worker.main(
        [
            "--input",
            str(phantom),
            "--threshold",
            "-0.5",
            "--model",
            str(model_dir),
            "--output-dir",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert code == 1 and "ERROR: usage: --threshold must be >= 0" in capsys.readouterr().err
    ref = tmp_path / "ref"
    code, lines = score(capsys, phantom, "--model", model_dir, "--output-dir", ref)
    assert code == 0, lines
    amap = sitk.GetArrayFromImage(sitk.ReadImage(str(OutputSet.with_stem(ref, "phantom").paths()["anomaly"])))
    at = float(np.median(amap[amap > 0]))  # a value the map takes: those voxels are not above it
    code, lines = score(
        capsys, phantom, "--threshold", repr(at), "--model", model_dir, "--output-dir", tmp_path / "at"
    )
    assert code == 0, lines
    label = sitk.GetArrayFromImage(
        sitk.ReadImage(str(OutputSet.with_stem(tmp_path / "at", "phantom").paths()["label"]))
    )
    assert np.count_nonzero(amap == np.float32(at)) >= 1
    np.testing.assert_array_equal(label > 0, amap > np.float32(at))


def test_the_label_never_leaves_the_brain_even_below_zero(tiny_model_dir, phantom):
    """pipeline.score_image: a (calibrated or given) threshold below 0 labels the brain, never the
    background around it."""
    from AnoDODELib.bundle import load_model as load
    from AnoDODELib.pipeline import score_image

    image = sitk.ReadImage(str(phantom))
    result = score_image(image, load(tiny_model_dir), threshold=-1.0, device="cpu", preset="fast")
    np.testing.assert_array_equal(result.label.astype(bool), result.brain)


@pytest.mark.parametrize("value", [0.0, math.nan])
def test_a_nifti_voxel_size_of_zero_is_refused(phantom, tmp_path, value):
    """pixdim[k] = 0 (or NaN) means the voxel size is unknown; SimpleITK reads it as 1 mm without a word."""
    import struct

    raw = bytearray(gzip.decompress(phantom.read_bytes()))
    raw[84:88] = struct.pack("<f", value)  # pixdim[2]
    bad = tmp_path / "pixdim.nii"
    bad.write_bytes(bytes(raw))
    assert sitk.ReadImage(str(bad)).GetSpacing()[1] == 1.0  # what the reader alone makes of it
    with pytest.raises(volume_io.InputError, match=r"pixdim\[2\] is (0|nan): the voxel size is unknown"):
        volume_io.read_image(bad)


def test_every_input_error_names_the_input(phantom, tmp_path):
    """Errors raised without a path (a full disk, a constant brain, an allocation failure) get the input's
    path in front; messages that name it already are kept as they are."""
    import errno

    path = tmp_path / "scan.nii.gz"
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / ".staging" / "x.nii.gz"))
    assert cli.input_error_message(path, full).startswith(f"{path}: No space left on device")
    assert (
        cli.input_error_message(path, MemoryError()) == f"{path}: out of memory while scoring (MemoryError)"
    )
    assert cli.input_error_message(path, volume_io.InputError(f"{path}: bad")) == f"{path}: bad"
    assert cli.input_error_message(path, RuntimeError("first line\nsecond")) == f"{path}: first line"


def test_one_bright_voxel_on_black_is_refused_naming_the_input(model_dir, tmp_path, capsys):
    array = np.zeros((20, 64, 64), np.float32)
    array[10, 30, 30] = 1000.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((3.0, 3.0, 6.0))
    path = tmp_path / "dot.nii.gz"
    sitk.WriteImage(image, str(path))
    code, lines = score(capsys, path, "--model", model_dir, "--output-dir", tmp_path / "out")
    assert code == 1 and len(lines) == 1 and lines[0].startswith(f"anodode: error: {path}: "), lines


def test_contrast_messages_name_the_contrast_file(tmp_path, phantom, capsys):
    """A --contrast image that does not cover the brain is named by its own path, not the FLAIR's with
    "(t1ce)" appended."""
    two = tmp_path / "two"
    cfg = ModelConfig(score_net=ScoreNetConfig(hidden=8, layers=1))
    cfg = ModelConfig(features=type(cfg.features)(contrasts=("flair", "t1ce")), score_net=cfg.score_net)
    save_model(AnoDODEModel(cfg), two)
    far = sitk.ReadImage(str(phantom))
    far.SetOrigin((500.0, 500.0, 500.0))
    t1ce = tmp_path / "t1ce_far.nii.gz"
    sitk.WriteImage(far, str(t1ce))
    code, lines = score(
        capsys, phantom, "--contrast", f"t1ce={t1ce}", "--model", two, "--output-dir", tmp_path / "o"
    )
    assert_refused(code, lines, 1, f"{t1ce}: does not cover")
    assert "(t1ce)" not in lines[0]


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_a_sheared_grid_is_refused_in_one_line(model_dir, phantom, tmp_path, suffix):
    """A non-orthogonal direction matrix (NRRD and MetaImage store one) used to be scored and its maps written
    as NIfTI with a coerced direction, off the input's grid, and ITK's multi-line warning on stderr."""
    image = sitk.ReadImage(str(phantom))
    d = np.eye(3)
    d[0, 1] = 0.3
    d[:, 1] /= np.linalg.norm(d[:, 1])
    image.SetDirection(d.ravel())
    path = tmp_path / f"sheared{suffix}"
    sitk.WriteImage(image, str(path))
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "AnoDODELib.cli", "score", str(path)]
        + ["--model", str(model_dir), "--output-dir", str(out), "--quiet", "--device", "cpu"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=ENV,
        timeout=300,
    )
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"anodode: error: {path}: the image grid is sheared (index axes 0 and 1 at 73.3 degrees, not 90): "
        "AnoDODE needs an orthogonal grid; resample the scan onto one first"
    ], r.stderr
    assert listing(out) == []
    rotated = sitk.ReadImage(str(phantom))  # an oblique but orthogonal grid is fine
    c, s = math.cos(0.3), math.sin(0.3)
    rotated.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    volume_io.check_orthogonal(rotated, "x")
