"""A wheel install carries the default model: build the wheel, install it in a fresh venv outside the
repository, score a scan with ``anodode score`` and no ``--model``.

The wheel is built from a copy of the packaged files without build isolation (the running environment's
setuptools, nothing downloaded); the fresh venv gets only the wheel (``--no-deps``) and sees the running
environment's installed dependencies through a path file, not its editable AnoDODE.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def run(cmd, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run(
        [str(c) for c in cmd],
        check=False,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=env,
        **kw,
    )


def test_wheel_install_scores_with_the_bundled_model(tmp_path, phantom_file):
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "AnoDODE" / "AnoDODELib", src / "AnoDODE" / "AnoDODELib", ignore=ignore)
    shutil.copytree(REPO / "AnoDODE" / "Resources" / "Models", src / "AnoDODE" / "Resources" / "Models")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    built = run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            tmp_path / "dist",
            src,
        ],
        cwd=tmp_path,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("anodode-*.whl")

    venv = tmp_path / "fresh"
    assert run([sys.executable, "-m", "venv", "--without-pip", venv]).returncode == 0
    py = venv / "bin" / "python"
    site_dir = Path(
        run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    )
    (site_dir / "running_env_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n", encoding="utf-8")
    installed = run(
        [sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", "--no-index", wheel]
    )
    assert installed.returncode == 0, installed.stderr

    where = run(
        [py, "-c", "import AnoDODELib.bundle as b; print(b.__file__); print(b.default_model_dir())"],
        cwd=tmp_path,
    )
    module_file, model_dir = where.stdout.split()
    assert Path(module_file).is_relative_to(venv) and Path(model_dir).is_relative_to(venv), where.stdout
    assert (Path(model_dir) / "model.json").is_file() and (Path(model_dir) / "weights.pt").is_file()

    out = tmp_path / "out"
    scored = run(
        [
            venv / "bin" / "anodode",
            "score",
            phantom_file,
            "--output-dir",
            out,
            "--device",
            "cpu",
            "--preset",
            "fast",
            "--quiet",
        ],
        cwd=tmp_path,
    )
    assert scored.returncode == 0, scored.stderr
    report = json.loads((out / "phantom_report.json").read_text(encoding="utf-8"))
    shipped = json.loads(
        (REPO / "AnoDODE" / "Resources" / "Models" / "anodode-flair-brats" / "model.json").read_text(
            encoding="utf-8"
        )
    )
    assert report["threshold"] == shipped["config"]["calibration"]["threshold"]
    assert (out / "phantom_anomaly.nii.gz").is_file()
