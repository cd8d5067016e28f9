"""Config dataclasses validate themselves; derived fields; the bundle format migration (v1 -> v2)."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest

from AnoDODELib import anomaly_map, bundle, likelihood, probability_flow
from AnoDODELib.bundle import FORMAT_VERSION, BundleError, load_model, migrate, save_model
from AnoDODELib.config import (
    DIVERGENCES,
    LOCALISATIONS,
    SOLVER_METHODS,
    Calibration,
    FeatureConfig,
    LocalisationConfig,
    ModelConfig,
    PreprocessConfig,
    ScoreNetConfig,
    SDEConfig,
    SolverConfig,
    from_dict,
    to_dict,
)

V1_BUNDLE = Path(__file__).parent / "data" / "scoring_reference" / "model_v1"

BAD_VALUES = [
    (PreprocessConfig, "in_plane_spacing_mm", 0.0),
    (PreprocessConfig, "in_plane_spacing_mm", math.nan),
    (PreprocessConfig, "clip_z", -1.0),
    (FeatureConfig, "contrasts", ()),
    (FeatureConfig, "contrasts", ("flair", "flair")),
    (FeatureConfig, "scales_mm", ()),
    (FeatureConfig, "scales_mm", (0.0, -4.0)),
    (FeatureConfig, "scales_mm", "8"),
    (FeatureConfig, "edge_scale_mm", 0.0),
    (FeatureConfig, "position_context", 1),
    (SDEConfig, "beta_min", 0.0),
    (SDEConfig, "beta_max", 0.05),
    (SDEConfig, "t_eps", 0.0),
    (SDEConfig, "t_eps", 1.0),
    (ScoreNetConfig, "channels", 0),
    (ScoreNetConfig, "hidden", 0),
    (ScoreNetConfig, "hidden", "64"),
    (ScoreNetConfig, "layers", True),
    (ScoreNetConfig, "time_embedding", 1),
    (ScoreNetConfig, "hidden", 16.0),
    (SolverConfig, "method", "rk5"),
    (SolverConfig, "steps", 0),
    (SolverConfig, "rtol", 0.0),
    (SolverConfig, "divergence", "trace"),
    (SolverConfig, "n_probes", 0),
    (SolverConfig, "t_eps", math.inf),
    (LocalisationConfig, "method", "magic"),
    (LocalisationConfig, "hyperintense_only", "yes"),
    (LocalisationConfig, "hyperintense_contrasts", ("dwi",)),
    (LocalisationConfig, "t_start", 0.0),
    (LocalisationConfig, "t_start", 1.5),
    (LocalisationConfig, "n_reconstructions", 0),
    (LocalisationConfig, "reconstruction_steps", 0),
    (LocalisationConfig, "smooth_mm", -1.0),
    (Calibration, "threshold", math.nan),
    (Calibration, "threshold", math.inf),
    (Calibration, "quantile", 1.0),
]


@pytest.mark.parametrize(
    "cls,name,value", BAD_VALUES, ids=[f"{c.__name__}.{n}={v!r}" for c, n, v in BAD_VALUES]
)
def test_every_config_refuses_a_bad_value_naming_the_field(cls, name, value):
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        cls(**{name: value})


def test_defaults_are_valid_and_boundaries_accepted():
    for cls in (
        PreprocessConfig,
        FeatureConfig,
        SDEConfig,
        SolverConfig,
        LocalisationConfig,
        Calibration,
        ModelConfig,
    ):
        cls()
    LocalisationConfig(t_start=1.0, smooth_mm=0.0, hyperintense_contrasts=())
    FeatureConfig(scales_mm=(0.0,))
    Calibration(threshold=-2.5)


def test_name_registries_match_the_modules_that_use_them():
    assert set(SOLVER_METHODS) == set(probability_flow.METHODS)
    assert set(DIVERGENCES) == set(likelihood.DIVERGENCES)
    assert set(LOCALISATIONS) == set(anomaly_map.LOCALISATIONS)


def test_from_dict_names_the_field_by_its_path():
    data = to_dict(ModelConfig())
    data["localisation"]["n_reconstructions"] = 0
    with pytest.raises(ValueError, match=r"^config\.localisation\.n_reconstructions must be an integer >= 1"):
        from_dict(ModelConfig, data, "config")
    with pytest.raises(ValueError, match=r"^config\.sde must be an object"):
        from_dict(ModelConfig, {**to_dict(ModelConfig()), "sde": [0.1, 20]}, "config")
    with pytest.raises(ValueError, match="unknown ScoreNetConfig keys in config.score_net"):
        from_dict(ModelConfig, {**to_dict(ModelConfig()), "score_net": {"widht": 3}}, "config")


def test_score_net_widths_are_derived_from_the_features():
    two = FeatureConfig(contrasts=("flair", "t1ce"), scales_mm=(0.0, 4.0, 8.0), position_context=False)
    cfg = ModelConfig(features=two, score_net=ScoreNetConfig(hidden=8))
    assert (cfg.score_net.channels, cfg.score_net.cond_channels) == (6, 1)
    assert ModelConfig(features=two, score_net=ScoreNetConfig(channels=3, cond_channels=4, hidden=8)) == cfg
    data = to_dict(cfg)
    assert "channels" not in data["score_net"] and "cond_channels" not in data["score_net"]
    assert from_dict(ModelConfig, data) == cfg
    assert dataclasses.replace(cfg, features=FeatureConfig()).score_net.channels == 3  # follows the features


def test_model_config_has_no_solver_and_calibration_no_slice_scores():
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    assert "solver" not in fields and "slice_score_mean_bpd" not in {
        f.name for f in dataclasses.fields(Calibration)
    }
    assert SDEConfig().t_eps == SolverConfig().t_eps == 1e-3


# --------------------------------------------------------------------------------------------- migration


def v1_meta() -> dict:
    return json.loads((V1_BUNDLE / "model.json").read_text(encoding="utf-8"))


def test_the_v1_reference_is_a_v1_bundle():
    meta = v1_meta()
    assert meta["format_version"] == 1 and "solver" in meta["config"]
    assert "slice_score_mean_bpd" in meta["config"]["calibration"] and "t_eps" not in meta["config"]["sde"]


def test_migrate_v1_to_current():
    meta = v1_meta()
    meta["config"]["solver"]["t_eps"] = 2e-3
    out = migrate(meta)
    assert meta["format_version"] == 1 and "solver" in meta["config"]  # the input is not changed
    assert out["format_version"] == FORMAT_VERSION == 3
    assert out["config"]["sde"] == {**meta["config"]["sde"], "t_eps": 2e-3}
    assert "solver" not in out["config"]
    assert set(out["config"]["calibration"]) == {"threshold", "quantile"}
    assert out["config"]["score_net"] == meta["config"]["score_net"]  # checked against the features on load
    cfg = from_dict(ModelConfig, out["config"], "config")
    assert cfg.sde.t_eps == 2e-3 and cfg.score_net.channels == cfg.features.channels
    assert migrate(out) == out  # the current format passes through


def test_migrate_v2_to_v3_drops_the_slice_quantile():
    """v2 stored ``localisation.slice_quantile``; v3 ranks slices by their most anomalous area instead."""
    meta = migrate(v1_meta())
    meta["format_version"] = 2
    meta["config"]["localisation"]["slice_quantile"] = 0.9
    with pytest.raises(ValueError, match="slice_quantile"):  # not a field of the current config
        from_dict(ModelConfig, meta["config"], "config")
    out = migrate(meta)
    assert out["format_version"] == 3 and "slice_quantile" not in out["config"]["localisation"]
    assert meta["config"]["localisation"]["slice_quantile"] == 0.9  # the input is not changed
    cfg = from_dict(ModelConfig, out["config"], "config")
    assert cfg.localisation.slice_area_mm2 == LocalisationConfig().slice_area_mm2 == 100.0
    assert cfg.localisation.brightness_quantile is None and LocalisationConfig().brightness_quantile == 0.75


def test_a_v1_bundle_loads_and_saves_as_current(tmp_path):
    model = load_model(V1_BUNDLE)
    meta = v1_meta()
    assert model.config.sde.t_eps == meta["config"]["solver"]["t_eps"]
    assert model.config.calibration.threshold == meta["config"]["calibration"]["threshold"]
    # older bundles keep their unscaled intensity product (their thresholds were calibrated on it)
    assert model.config.localisation.brightness_quantile is None
    assert model.config.localisation == from_dict(
        LocalisationConfig, {**meta["config"]["localisation"], "brightness_quantile": None}
    )
    again = load_model(save_model(model, tmp_path / "v2"))
    assert (
        json.loads((tmp_path / "v2" / "model.json").read_text(encoding="utf-8"))["format_version"]
        == FORMAT_VERSION
    )
    assert again.config == model.config
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert bool((a == b).all()), k


def test_stored_network_widths_are_ignored_in_favour_of_the_features(tmp_path):
    shutil.copytree(V1_BUNDLE, tmp_path / "b")
    meta = v1_meta()
    meta["config"]["score_net"]["channels"] = 5
    (tmp_path / "b" / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    assert from_dict(ModelConfig, migrate(meta)["config"]).score_net.channels == 3  # derived, not read
    assert load_model(tmp_path / "b").config.score_net.channels == 3


@pytest.mark.parametrize("version", [0, 4, "1", None, True])
def test_unknown_format_versions_are_refused(version, tmp_path):
    shutil.copytree(V1_BUNDLE, tmp_path / "b")
    meta = {**v1_meta(), "format_version": version}
    (tmp_path / "b" / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(BundleError, match="format version"):
        load_model(tmp_path / "b")


def test_a_later_field_needs_one_table_row(monkeypatch):
    """How a v4 would add a field whose default differs from what v3 bundles computed: one "default" row."""
    monkeypatch.setattr(bundle, "FORMAT_VERSION", 4)
    monkeypatch.setitem(
        bundle.MIGRATIONS,
        3,
        (
            ("default", "config.features.new_field", 7),
            ("move", "config.preprocess.clip_z", "config.features.clip_z"),
        ),
    )
    out = migrate(v1_meta())
    assert out["format_version"] == 4
    assert out["config"]["features"]["new_field"] == 7 and "t_eps" in out["config"]["sde"]
    assert out["config"]["features"]["clip_z"] == v1_meta()["config"]["preprocess"]["clip_z"]
    assert "clip_z" not in out["config"]["preprocess"]
    done = {**v1_meta(), "format_version": 3}
    done["config"]["features"]["new_field"] = 3
    assert migrate(done)["config"]["features"]["new_field"] == 3  # present values are kept


@pytest.mark.parametrize(
    "section,field,bad",
    [
        ("preprocess", "intensity_reference", "median"),
        ("features", "slice_position", 1),
        ("features", "regional_scale_mm", -1.0),
        ("features", "regional_clip", float("nan")),
        ("localisation", "residual_scales", "coarse"),
        ("localisation", "slice_area_mm2", 0.0),
        ("localisation", "intensity_product", "yes"),
    ],
)
def test_generalisation_fields_are_validated(section, field, bad):
    import dataclasses as dc

    from AnoDODELib import config as C

    cls = {
        "preprocess": C.PreprocessConfig,
        "features": C.FeatureConfig,
        "localisation": C.LocalisationConfig,
    }[section]
    with pytest.raises(ValueError, match=field):
        dc.replace(cls(), **{field: bad})


OVERSIZED = [
    ("preprocess", "in_plane_spacing_mm", 0.001),
    ("preprocess", "in_plane_spacing_mm", 50.0),
    ("preprocess", "clip_z", 1e9),
    ("features", "scales_mm", [0.0, 1e6]),
    ("features", "scales_mm", [float(k) for k in range(17)]),
    ("features", "edge_scale_mm", 1e6),
    ("features", "regional_scale_mm", 1e6),
    ("sde", "beta_max", 1e9),
    ("score_net", "hidden", 10**6),
    ("score_net", "layers", 10**4),
    ("score_net", "time_embedding", 10**6),
    ("localisation", "reconstruction_steps", 10**9),
    ("localisation", "n_reconstructions", 10**6),
    ("localisation", "smooth_mm", 1e5),
    ("localisation", "slice_area_mm2", 1e9),
]


@pytest.mark.parametrize(
    "section,field,value", OVERSIZED, ids=[f"{s}.{f}={v!r:.12}" for s, f, v in OVERSIZED]
)
def test_a_bundle_value_that_would_explode_a_run_is_refused_at_load(
    tiny_model_dir, tmp_path, section, field, value
):
    """Values that pass as numbers but would make a run allocate terabytes or integrate for hours (a 0.001 mm
    model grid, 10^9 reconstruction steps, a 10^6-wide network) fail at load with one line naming the field."""
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(tiny_model_dir, bundle_dir)
    meta = json.loads((bundle_dir / "model.json").read_text(encoding="utf-8"))
    meta["config"][section][field] = value
    (bundle_dir / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(BundleError, match=rf"config\.{section}\.{field} must be") as err:
        load_model(bundle_dir)
    assert "\n" not in str(err.value)


def test_solver_bounds():
    SolverConfig(steps=1000, n_probes=1000, rtol=1.0)
    for name, value in [("steps", 10**6), ("n_probes", 10**5), ("rtol", 2.0), ("atol", 10.0)]:
        with pytest.raises(ValueError, match=rf"^{name} must be"):
            SolverConfig(**{name: value})
