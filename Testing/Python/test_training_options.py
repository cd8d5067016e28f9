"""The training CLIs' shared options (training/options.py), the one device resolver and the pooled metrics."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from AnoDODELib.bundle import default_model_dir
from AnoDODELib.pipeline import resolve_device
from training import calibrate, crossval, evaluate, heldout, metrics, report, train

NO_GPU = not torch.cuda.is_available()


def cli_args(name: str, tmp_path) -> list[str]:
    """The required arguments of each training CLI, and one that stops it early (a missing --data folder,
    too many folds) should an option that ought to be refused get through."""
    model = tmp_path / "model"
    if not model.exists():  # calibrate rewrites its model: a copy of the bundled one
        shutil.copytree(default_model_dir(), model)
    nowhere = ["--data", str(tmp_path / "nowhere")]
    return {
        "train": ["--output", str(tmp_path / "out"), *nowhere],
        "evaluate": ["--model", str(model), "--output", str(tmp_path / "out"), *nowhere],
        "calibrate": ["--model", str(model), *nowhere],
        "crossval": ["--output", str(tmp_path / "out"), "--folds", "999"],
        "heldout": ["--output", str(tmp_path / "out"), "--folds", "999"],
        "report": [str(tmp_path / "results.json")],
    }[name]


MAINS = {
    "train": train.main,
    "evaluate": evaluate.main,
    "calibrate": calibrate.main,
    "crossval": crossval.main,
    "heldout": heldout.main,
    "report": report.main,
}
WITH_DEVICE = ("train", "evaluate", "calibrate")
WITH_DATA = ("train", "evaluate", "calibrate")


def refused(capsys, main, argv: list[str]) -> str:
    """The one stderr line of a command line refused while parsing (exit status 2)."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("name", WITH_DEVICE)
@pytest.mark.parametrize("device", ["gpu", "cpu:0", "cuda:x", "", "CPU"])
def test_a_bad_device_is_one_line_and_exit_2(capsys, tmp_path, name, device):
    line = refused(capsys, MAINS[name], [*cli_args(name, tmp_path), "--device", device])
    assert "--device" in line and "valid: auto, cpu, cuda" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not NO_GPU, reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize("name", WITH_DEVICE)
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_one_line_and_exit_2(capsys, tmp_path, name, device):
    line = refused(capsys, MAINS[name], [*cli_args(name, tmp_path), "--device", device])
    assert "sees no CUDA GPU" in line


@pytest.mark.parametrize("name", WITH_DATA)
def test_the_shared_options_parse_and_a_bad_data_source_is_one_line_and_exit_2(capsys, tmp_path, name):
    """Every shared option is accepted; the run then stops at the missing --data folder, nothing written."""
    shared = ["--device", "auto"]
    if name != "calibrate":
        shared += [
            "--cases",
            "a",
            "b",
            "--exclude",
            "c",
            "--resample-seg",
            "--cache",
            str(tmp_path / "cache"),
            "--workers",
            "2",
        ]
    if name == "train":
        shared += ["--contrast", "flair,t1ce"]
    if name == "evaluate":
        shared += ["--contrast", "flair", "--preset", "fast"]
    assert MAINS[name]([*cli_args(name, tmp_path), *shared]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "nowhere" in err[0], err
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("name", ["train", "crossval"])
@pytest.mark.parametrize("contrast", ["flair,flair", "pd", ","])
def test_a_bad_contrast_is_one_line_and_exit_2(capsys, tmp_path, name, contrast):
    line = refused(capsys, MAINS[name], [*cli_args(name, tmp_path), "--contrast", contrast])
    assert "--contrast" in line


@pytest.mark.parametrize("name", ["evaluate", "crossval", "heldout"])
def test_a_bad_preset_is_one_line_and_exit_2(capsys, tmp_path, name):
    line = refused(capsys, MAINS[name], [*cli_args(name, tmp_path), "--preset", "fastest"])
    assert "--preset" in line and "standard" in line


@pytest.mark.parametrize("name", sorted(MAINS))
def test_every_training_cli_refuses_an_unknown_option_with_one_line(capsys, tmp_path, name):
    line = refused(capsys, MAINS[name], [*cli_args(name, tmp_path), "--no-such-option"])
    assert "--no-such-option" in line


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu" if NO_GPU else "cuda")
    for bad in ("gpu", "cpu:0", "cuda:", "cuda:-1", "auto:0", ""):
        with pytest.raises(ValueError, match="unknown device"):
            resolve_device(bad)
    if NO_GPU:
        for cuda in ("cuda", "cuda:0", torch.device("cuda")):
            with pytest.raises(ValueError, match="no CUDA GPU"):
                resolve_device(cuda)
    else:
        assert resolve_device("cuda:0") == torch.device("cuda:0")
        with pytest.raises(ValueError, match="GPU"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_pooled_metrics_pool_the_cases_items_not_their_metrics():
    """Two cases, scores (0.9, 0.1) and (0.8, 0.3, 0.2), positives 0.9 and 0.3. Pooled, ranked
    0.9+ 0.8- 0.3+ 0.2- 0.1-: AUROC = (3 + 2) / (2 x 3) = 5/6 (the per-case mean is (1 + 1/2) / 2);
    average precision = 1/2 x 1 + 1/2 x 2/3 = 5/6; best Dice = 2 x 2 / (3 + 2) = 0.8 at the top three."""
    scores = [np.array([0.9, 0.1]), np.array([0.8, 0.3, 0.2])]
    labels = [np.array([True, False]), np.array([False, True, False])]
    got = metrics.pooled_metrics(scores, labels)
    assert list(got) == ["voxel_auroc", "voxel_auprc", "best_dice"]
    assert got["voxel_auroc"] == pytest.approx(5 / 6) and got["voxel_auprc"] == pytest.approx(5 / 6)
    assert got["best_dice"] == pytest.approx(0.8)
    assert metrics.pooled_metrics(np.concatenate(scores), np.concatenate(labels)) == got
    sl = metrics.pooled_metrics(scores, labels, "slice")
    assert sl == {"slice_auroc": got["voxel_auroc"], "slice_auprc": got["voxel_auprc"]}


def test_pooled_slice_metrics_leave_out_slices_without_a_score():
    """A NaN slice score (no score) is left out: the positive 0.9 above the negative 0.1 alone gives 1, 1
    (counted, the NaN positive would rank last: AUROC 1/2)."""
    got = metrics.pooled_metrics(
        [np.array([0.9, np.nan]), np.array([0.1])], [np.array([True, True]), np.array([False])], "slice"
    )
    assert got == {"slice_auroc": 1.0, "slice_auprc": 1.0}
    with pytest.raises(ValueError, match="unknown kind"):
        metrics.pooled_metrics([np.zeros(1)], [np.zeros(1, bool)], "volume")


def test_the_test_command_in_docs_training_runs_as_written():
    """docs/training.md's test command, run from the repository root as written, collects its tests (it
    named ``test_ddp.py`` without its folder: "file or directory not found")."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    text = (repo / "docs" / "training.md").read_text(encoding="utf-8")
    section = text[text.index("## Tests") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    command = " ".join(block.replace("\\\n", " ").split())
    assert command.startswith(".venv/bin/python -m pytest "), command
    args = command.split()[3:]
    for arg in args:
        assert (repo / arg).is_file(), arg
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
