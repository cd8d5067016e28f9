"""Training loop: equals the engine's DSM loop, resumes bit for bit, and DDP (gloo, 2 CPU processes)
gives the single-process weights for the same global batch."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from AnoDODELib.bundle import AnoDODEModel
from AnoDODELib.config import ModelConfig, ScoreNetConfig
from AnoDODELib.score_model import dsm_loss
from training.train import RunOptions, TrainConfig, fit, one_cycle

CFG = ModelConfig(score_net=ScoreNetConfig(channels=3, cond_channels=4, hidden=16, layers=2))
TC = TrainConfig(steps=12, batch_size=64, lr=5e-3, seed=3)


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(500, 3, generator=g) * 2 + 1, torch.rand(500, 4, generator=g) * 2 - 1


def new_model() -> AnoDODEModel:
    torch.manual_seed(TC.seed)
    return AnoDODEModel(CFG)


def weights(model: AnoDODEModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_fit_equals_engine_dsm_loop():
    feats, ctx = data()
    m = new_model()
    fit(m, feats, ctx, TC, torch.device("cpu"), progress=False)
    # the pre-sharding loop: indices from a seeded generator, t and noise from the global RNG in dsm_loss
    ref = new_model()
    gen = torch.Generator().manual_seed(TC.seed)
    ref.standardiser.fit(feats)
    y = ref.standardiser(feats)
    opt = torch.optim.Adam(ref.score_net.parameters(), lr=TC.lr)
    sched = one_cycle(opt, TC)
    for _ in range(TC.steps):
        idx = torch.randint(0, y.shape[0], (TC.batch_size,), generator=gen)
        loss = dsm_loss(ref.score_net, ref.sde, y[idx], ctx[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    a, b = weights(m), weights(ref)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_gives_identical_weights(tmp_path):
    feats, ctx = data()
    full = new_model()
    fit(full, feats, ctx, TC, torch.device("cpu"), progress=False)
    half = new_model()
    fit(
        half,
        feats,
        ctx,
        TC,
        torch.device("cpu"),
        progress=False,
        run=RunOptions(tmp_path, checkpoint_every=0, stop_after=TC.steps // 2),
    )
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ck["step"] == TC.steps // 2
    torch.manual_seed(12345)  # a fresh process: the RNG state must come from the checkpoint
    resumed = AnoDODEModel(CFG)
    fit(resumed, feats, ctx, TC, torch.device("cpu"), progress=False, run=RunOptions(tmp_path, resume=True))
    a, b = weights(full), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = dataclasses.replace(TC, lr=1e-3)
    with pytest.raises(ValueError, match="different training config"):
        fit(
            AnoDODEModel(CFG),
            feats,
            ctx,
            other,
            torch.device("cpu"),
            progress=False,
            run=RunOptions(tmp_path, resume=True),
        )


def _worker(rank: int, world: int, store: str, out: str) -> None:
    """One rank. The ranks meet through a file store in the test's folder, not a TCP store on a "free" port:
    the port could be taken between finding it and binding it (other test runs share the machine), and the
    TCP store lives in rank 0's process, so rank 0 leaving first could abort rank 1 (SIGABRT, seen once).
    Every rank waits at a barrier before tearing the group down, so none leaves while another still talks."""
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        feats, ctx = data()
        m = new_model()
        fit(m, feats, ctx, TC, torch.device("cpu"), progress=False)
        if rank == 0:
            torch.save(weights(m), out)
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_two_processes_match_one(tmp_path):
    feats, ctx = data()
    single = new_model()
    fit(single, feats, ctx, TC, torch.device("cpu"), progress=False)
    out = tmp_path / "ddp.pt"
    store = tmp_path / "rendezvous"
    torch.multiprocessing.spawn(_worker, args=(2, str(store), str(out)), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    ref = weights(single)
    for k in ref:
        torch.testing.assert_close(ddp[k], ref[k], rtol=1e-4, atol=1e-5)
    assert any(not torch.equal(ref[k], weights(new_model())[k]) for k in ref)  # it did train


def test_batch_must_divide_across_ranks(monkeypatch):
    import training.train as tr

    monkeypatch.setattr(tr, "dist_info", lambda: (0, 3))
    feats, ctx = data()
    with pytest.raises(ValueError, match="not divisible"):
        fit(new_model(), feats, ctx, TC, torch.device("cpu"), progress=False)
