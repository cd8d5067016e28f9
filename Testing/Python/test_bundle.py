"""Model bundles: round trip, checksum, format version, missing pieces."""

import json
import shutil

import pytest
import torch

from AnoDODELib.bundle import FORMAT_VERSION, BundleError, default_model_dir, load_model, save_model


def test_round_trip_preserves_weights_and_config(tiny_model_dir, tmp_path):
    model = load_model(tiny_model_dir)
    out = save_model(model, tmp_path / "copy")
    again = load_model(out)
    assert again.config == model.config
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    meta = json.loads((out / "model.json").read_text(encoding="utf-8"))
    assert meta["format_version"] == FORMAT_VERSION
    assert set(meta["config"]) == {
        "preprocess",
        "features",
        "sde",
        "score_net",
        "localisation",
        "calibration",
    }
    assert "channels" not in meta["config"]["score_net"] and "t_eps" in meta["config"]["sde"]


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_unknown_format_version_is_refused(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir, tmp_path / "m")
    meta = json.loads((d / "model.json").read_text(encoding="utf-8"))
    meta["format_version"] = 99
    (d / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(BundleError, match="format version 99"):
        load_model(d)


def test_checksum_mismatch_is_refused(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir, tmp_path / "m")
    data = bytearray((d / "weights.pt").read_bytes())
    data[-10] ^= 0xFF
    (d / "weights.pt").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum"):
        load_model(d)


def test_architecture_mismatch_is_refused(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir, tmp_path / "m")
    meta = json.loads((d / "model.json").read_text(encoding="utf-8"))
    meta["config"]["score_net"]["hidden"] = 32
    (d / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(BundleError, match="does not fit"):
        load_model(d)


@pytest.mark.parametrize("breakage", ["no_dir", "no_json", "bad_json", "no_weights", "unknown_key"])
def test_broken_bundles_give_one_line_errors(tiny_model_dir, tmp_path, breakage):
    d = _copy(tiny_model_dir, tmp_path / "m")
    if breakage == "no_dir":
        d = tmp_path / "missing"
    elif breakage == "no_json":
        (d / "model.json").unlink()
    elif breakage == "bad_json":
        (d / "model.json").write_text("{not json", encoding="utf-8")
    elif breakage == "no_weights":
        (d / "weights.pt").unlink()
    else:
        meta = json.loads((d / "model.json").read_text(encoding="utf-8"))
        meta["config"]["sde"]["beta_typo"] = 1.0
        (d / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(BundleError) as info:
        load_model(d)
    assert "\n" not in str(info.value)


def test_bundled_default_model_loads():
    if not (default_model_dir() / "model.json").exists():
        pytest.fail(f"the default model bundle is missing from {default_model_dir()}")
    model = load_model()
    assert model.config.calibration.threshold > 0
    assert (default_model_dir() / "weights.pt").stat().st_size < 10 * 2**20


def test_readme_says_what_the_bundled_model_was_trained_on():
    """Scoring one of the bundled model's training cases is in-sample: README.md says which cases they are
    (all 11 labelled FLAIRs of ../shared/data, 8 BraTS-family and 3 WMH), as model.json lists them."""
    from pathlib import Path

    from AnoDODELib.bundle import load_model

    readme = " ".join((Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8").split())
    cases = load_model().metadata["training"]["cases"]
    brats = [c for c in cases if "BraTS" in c["dataset"] or "BRATS" in c["dataset"] or "TCGA" in c["dataset"]]
    wmh = [c for c in cases if c["dataset"] == "WMH clinical"]
    assert len(brats) + len(wmh) == len(cases)
    assert (
        f"**The bundled model was trained on all {len(cases)} labelled FLAIRs of `../shared/data`**" in readme
    )
    assert f"(the {len(brats)} BraTS-family cases and the {len(wmh)} clinical WMH cases;" in readme
    assert "scoring one of those with it is *in-sample*" in readme
