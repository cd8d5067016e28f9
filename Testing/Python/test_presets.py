"""Solver presets and the batched scoring path (issue 5): presets are valid, the fast evaluator computes
what the torchdiffeq path computes, fast/standard agree with exact, and CUDA out-of-memory falls back."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

from AnoDODELib import fast_ode, pipeline
from AnoDODELib.bundle import load_model
from AnoDODELib.config import SolverConfig
from AnoDODELib.likelihood import DIVERGENCES, log_likelihood
from AnoDODELib.pipeline import PRESETS, score_locations
from AnoDODELib.probability_flow import METHODS
from AnoDODELib.reconstruction import reconstruct
from AnoDODELib.score_model import score_fn

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small problems: no OpenMP barrier stalls


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_model(tiny_model_dir)


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(3)
    return torch.randn(300, 3, generator=g) * 0.8, torch.rand(300, 4, generator=g)


def test_presets_are_valid():
    assert set(PRESETS) == {"fast", "standard", "exact"}
    for name, p in PRESETS.items():
        cfg = p.likelihood
        assert isinstance(cfg, SolverConfig), name
        assert cfg.method in METHODS and cfg.divergence in DIVERGENCES, name
        assert cfg.steps >= 1 and cfg.rtol > 0 and cfg.atol > 0, name
        assert p.reconstruction in fast_ode.FAST_METHODS and p.slice_spacing_mm >= 0, name
    # cost ordering: fast <= standard, and the exact preset is adaptive and tight and scores every slice
    nfe = {"euler": 1, "midpoint": 2, "rk4": 4}
    fast, std, exact = PRESETS["fast"], PRESETS["standard"], PRESETS["exact"]
    assert (
        nfe[fast.likelihood.method] * fast.likelihood.steps
        <= nfe[std.likelihood.method] * std.likelihood.steps
    )
    assert fast.slice_spacing_mm >= std.slice_spacing_mm
    assert (
        exact.likelihood.method == "dopri5" and exact.likelihood.rtol <= 1e-5 and exact.slice_spacing_mm == 0
    )


@pytest.mark.parametrize("method", fast_ode.FAST_METHODS)
def test_fused_likelihood_matches_torchdiffeq(model, problem, method):
    x, c = problem
    net = model.score_net.eval()
    want = log_likelihood(score_fn(net, model.sde, c), model.sde, x, method=method, steps=3).bpd
    with torch.inference_mode():
        got, nfe = fast_ode.likelihood_fixed(
            fast_ode.PointwiseEvaluator(net, c), model.sde, x, method=method, steps=3, t_eps=1e-3
        )
    assert nfe == 3 * {"euler": 1, "midpoint": 2, "rk4": 4}[method]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_batched_reconstruction_matches_per_draw(model, problem):
    x, c = problem
    net = model.score_net.eval()
    noise = torch.randn(3, *x.shape, generator=torch.Generator().manual_seed(1))
    fn = score_fn(net, model.sde, c)
    want = (
        sum(
            reconstruct(fn, model.sde, x, t_start=0.5, noise=noise[k], method="rk4", steps=4)
            for k in range(3)
        )
        / 3
    )
    with torch.inference_mode():
        got, nfe = fast_ode.reconstruct_batched(
            fast_ode.PointwiseEvaluator(net, c, repeat=3),
            model.sde,
            x,
            noise,
            t_start=0.5,
            steps=4,
            t_eps=1e-3,
        )
    assert nfe == 16
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_fast_and_standard_agree_with_exact(model, problem):
    """Per-location bpd of fast/standard within a stated tolerance of the adaptive dopri5 preset."""
    x, c = problem
    ref = score_locations(model, x, c, solver=PRESETS["exact"].likelihood)
    for name, tol in (("fast", 0.05), ("standard", 0.05)):
        got = score_locations(model, x, c, solver=PRESETS[name].likelihood)
        err = (got.bpd - ref.bpd).abs()
        assert float(err.mean()) < tol, (name, float(err.mean()))
        # the reconstruction does not depend on the likelihood solver
        torch.testing.assert_close(got.residual, ref.residual)


def test_results_do_not_depend_on_chunk_size(model, problem):
    x, c = problem
    a = score_locations(model, x, c, solver=PRESETS["fast"].likelihood, chunk=128)
    b = score_locations(model, x, c, solver=PRESETS["fast"].likelihood, chunk=100000)
    torch.testing.assert_close(a.bpd, b.bpd)
    torch.testing.assert_close(a.residual, b.residual)


def test_cuda_oom_retries_smaller_then_falls_back_to_cpu(model, problem, monkeypatch, caplog):
    """Simulated: every 'cuda' chunk runs out of memory: halve 300 -> 150 -> 75, then the CPU."""
    x, c = problem
    real = pipeline._score_chunk
    calls = []

    def fake(mdl, y, ctx, noise, solver, device, method, seed=0):
        calls.append((device.type, y.shape[0]))
        if device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(mdl, y, ctx, noise, solver, device, method, seed=seed)

    monkeypatch.setattr(pipeline, "_score_chunk", fake)
    monkeypatch.setattr(pipeline, "MIN_CHUNK", 75)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    with caplog.at_level(logging.WARNING, logger="AnoDODELib.pipeline"):
        got = score_locations(
            model, x, c, solver=PRESETS["fast"].likelihood, device=torch.device("cuda"), chunk=300
        )
    sizes = [n for dev, n in calls if dev == "cuda"]
    assert sizes == [300, 150, 75]
    assert any(dev == "cpu" for dev, _ in calls)
    assert "scoring the rest on the CPU" in caplog.text
    want = score_locations(model, x, c, solver=PRESETS["fast"].likelihood)
    torch.testing.assert_close(got.bpd, want.bpd)


def test_other_errors_are_not_swallowed(model, problem, monkeypatch):
    x, c = problem

    def boom(*a, **k):
        raise RuntimeError("something else")

    monkeypatch.setattr(pipeline, "_score_chunk", boom)
    with pytest.raises(RuntimeError, match="something else"):
        score_locations(model, x, c, solver=PRESETS["fast"].likelihood, device=torch.device("cuda"))


def test_hutchinson_and_generic_nets_use_the_fallback_path(model, problem):
    x, c = problem
    solver = dataclasses.replace(PRESETS["standard"].likelihood, divergence="hutchinson", n_probes=2)
    got = score_locations(model, x, c, solver=solver)
    ref = score_locations(model, x, c, solver=PRESETS["standard"].likelihood)
    assert got.bpd.shape == ref.bpd.shape and torch.isfinite(got.bpd).all()
    assert float((got.bpd - ref.bpd).mean().abs()) < 0.5  # unbiased estimator, 300 locations


def test_resolve_device():
    assert pipeline.resolve_device("cpu").type == "cpu"
    assert pipeline.resolve_device(torch.device("cpu")).type == "cpu"
    with pytest.raises(ValueError):
        pipeline.resolve_device("tpu")


def test_scored_slices_every_kth_with_brain_and_the_last():
    mask = torch.zeros(12, 4, 4, dtype=torch.bool)
    mask[2:10, 1:3, 1:3] = True  # brain in slices 2..9
    keep = pipeline.scored_slices(mask, 1.0, 2.0)  # 1 mm slices, >= 2 mm apart: every 2nd, plus the last
    assert torch.nonzero(keep).flatten().tolist() == [2, 4, 6, 8, 9]
    assert torch.nonzero(pipeline.scored_slices(mask, 1.5, 4.0)).flatten().tolist() == [2, 4, 6, 8, 9]
    assert torch.nonzero(pipeline.scored_slices(mask, 5.0, 2.0)).flatten().tolist() == list(range(2, 10))
    assert torch.nonzero(pipeline.scored_slices(mask, 1.0, 0.0)).flatten().tolist() == list(range(2, 10))


def test_interpolate_slices_is_linear_between_scored_neighbours():
    keep = torch.tensor([False, True, False, True, False, False, True, False])
    values = torch.zeros(8, 2)
    values[1], values[3], values[6] = (
        torch.tensor([1.0, -1.0]),
        torch.tensor([3.0, 0.0]),
        torch.tensor([6.0, 3.0]),
    )
    got = pipeline.interpolate_slices(values, keep)
    want = torch.tensor([[1.0, -1.0], [1, -1], [2, -0.5], [3, 0], [4, 1], [5, 2], [6, 3], [6, 3]])
    torch.testing.assert_close(got, want)
    assert pipeline.interpolate_slices(values, torch.ones(8, dtype=torch.bool)) is values


def test_slice_scores_of_skipped_slices_are_interpolated(phantom_file):
    """Per-location bpd equal to the slice index: the interpolated slice score is exact on every brain slice."""
    import SimpleITK as sitk

    from AnoDODELib.bundle import AnoDODEModel
    from AnoDODELib.config import LocalisationConfig, ModelConfig

    cfg = ModelConfig(localisation=LocalisationConfig(method="likelihood"))
    prepared = pipeline.prepare_volume(sitk.ReadImage(str(phantom_file)), cfg)
    gm = prepared.grid_mask
    keep = torch.zeros(gm.shape[0], dtype=torch.bool)
    keep[::3] = True
    keep[-1] = True
    where = gm & keep[:, None, None]
    bpd = torch.nonzero(where)[:, 0].float()  # each scored location's slice index
    scores = pipeline.LocationScores(bpd, torch.ones(bpd.shape[0], 3), 0)  # all brighter than reconstructed
    got = pipeline.canonical_slice_scores(prepared, scores, AnoDODEModel(cfg), keep)
    brain = gm.flatten(1).any(1).tolist()
    first, last = brain.index(True), len(brain) - 1 - brain[::-1].index(True)
    for i, (v, b) in enumerate(zip(got, brain)):
        assert (v is None) == (not b)
        if b and keep[first:].any() and first <= i <= last and where[: i + 1].any() and where[i:].any():
            assert v == pytest.approx(float(i), abs=1e-5), i


def test_slice_score_is_the_top_area_mean_of_the_hyperintense_gated_likelihood_map(phantom_file):
    """The slice score is the mean over the slice's most anomalous 100 mm^2 of brain of the likelihood map
    (bpd gated to locations brighter than their reconstruction), not the slice's mean bpd:
    darker-than-reconstructed locations count 0 whatever their bpd, and an improbable bright patch raises its
    own slice's score."""
    import dataclasses

    import SimpleITK as sitk

    from AnoDODELib.bundle import AnoDODEModel
    from AnoDODELib.config import LocalisationConfig, ModelConfig

    # the slice score reads the model's density map without the intensity weighting: here the likelihood map
    cfg = ModelConfig(localisation=LocalisationConfig(method="likelihood", intensity_product=True))
    model = AnoDODEModel(cfg)
    prepared = pipeline.prepare_volume(sitk.ReadImage(str(phantom_file)), cfg)
    gm = prepared.grid_mask
    n = int(gm.sum())
    slice_of = torch.nonzero(gm)[:, 0]
    bpd = torch.full((n,), 1.0)
    residual = -torch.ones(n, 3)  # every location darker than its reconstruction
    dark = pipeline.canonical_slice_scores(prepared, pipeline.LocationScores(bpd * 50, residual, 0), model)
    assert all(v is None or v == 0.0 for v in dark)
    target = int(slice_of[len(slice_of) // 2])
    in_target = torch.nonzero(slice_of == target).flatten()
    spot = in_target[: max(1, len(in_target) // 10)]  # a tenth of the slice: improbable and bright
    bright = residual.clone()
    bright[spot] = 1.0
    bpd2 = bpd.clone()
    bpd2[spot] = 100.0
    got = pipeline.canonical_slice_scores(prepared, pipeline.LocationScores(bpd2, bright, 0), model)
    assert got[target] == max(v for v in got if v is not None) and got[target] > 0
    like = dataclasses.replace(cfg.localisation, intensity_product=False)
    lmap = pipeline.canonical_map(prepared, pipeline.LocationScores(bpd2, bright, 0), model, like)
    brain = prepared.brain[target]
    _, dy, dx = prepared.geometry.spacing_mm
    k = round(cfg.localisation.slice_area_mm2 / (dy * dx))
    assert 1 < k < brain.sum()
    top = np.sort(lmap[target][brain].astype(np.float64))[-k:]
    assert got[target] == pytest.approx(float(top.mean()), rel=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run it on a GPU machine)")
def test_a_model_moved_to_the_gpu_scores_cpu_features_as_on_the_cpu(tiny_model_dir, problem):
    """training.train calibrates with the model moved to the GPU and the features on the CPU: the standardiser
    used to fail there ("Expected all tensors to be on the same device", issue 21)."""
    feats, ctx = problem
    on_cpu = score_locations(load_model(tiny_model_dir), feats, ctx, device="cpu")
    on_gpu = score_locations(load_model(tiny_model_dir).to("cuda"), feats, ctx, device="cuda")
    assert on_gpu.bpd.device.type == "cpu"
    np.testing.assert_allclose(on_gpu.bpd.numpy(), on_cpu.bpd.numpy(), rtol=1e-4, atol=1e-4)
