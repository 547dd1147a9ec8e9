"""Data-parallel ranks (DDP on 2 gloo ranks): one version per save, inner-module keys, agreement.

One spawn per backend runs, on both ranks: saves called by every rank
(unguarded) and by rank 0 only (guarded) — one version per step, rank 0's
metrics, ``None`` on rank 1, no hang; a restore on every rank into DDP-wrapped
modules; ``should_save`` agreement (a time rule due on one rank's clock only, a
signal on rank 1 only) with one collective per call, none for the step rule.
The parent then restores the versions into bare, ``torch.compile``-d and
``DataParallel`` modules.
"""

from __future__ import annotations

import os
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from torchckpt import CheckpointManager
from torchckpt.training import SaveSchedule

WORLD = 2
STEPS = (1, 2, 3, 4, 5)  # 1-3: every rank calls save; 4-5: only rank 0 does
KEYS = ["0.weight", "0.bias", "2.weight", "2.bias"]


def _model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _check_agreement(rank: int) -> None:
    calls = {"n": 0}
    real = dist.all_reduce

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        return real(*args, **kwargs)

    dist.all_reduce = counting  # type: ignore[assignment]
    try:
        steps_only = SaveSchedule(every_steps=3)
        assert [steps_only.should_save(s) for s in range(7)] == [False, False, False, True, False, False, True]
        assert calls["n"] == 0  # the step rule needs no communication

        clock = FakeClock()
        timed = SaveSchedule(every_seconds=10, clock=clock)
        assert timed.should_save(1) is False and calls["n"] == 1
        if rank == 0:
            clock.now += 11  # only rank 0's clock says the time is up
        assert timed.should_save(2) is True and calls["n"] == 2  # ... and both ranks save
        assert timed.should_save(2) is False  # never twice for one step
        assert timed.should_save(3) is False  # rank 0's timer restarted at the save
        assert calls["n"] == 4

        signaled = SaveSchedule(every_steps=1000, preemption_signals=(signal.SIGUSR1,))
        assert signaled.should_save(1) is False and not signaled.preempted
        if rank == 1:
            os.kill(os.getpid(), signal.SIGUSR1)  # only rank 1 is told
            assert signaled.preemption is not None and signaled.preemption.signaled
        assert signaled.should_save(2) is True and signaled.preempted  # on both ranks, at the same step
        assert signaled.should_save(3) is False and signaled.preempted  # one save per signal
        signaled.close()
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    finally:
        dist.all_reduce = real  # type: ignore[assignment]


def _worker(rank: int, init_file: str, url: str, options: dict[str, Any], out: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
    )
    try:
        model = nn.parallel.DistributedDataParallel(_model())
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        mgr = CheckpointManager(url, storage_options=options or None)
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(rank))
        for step in STEPS:
            model(x).pow(2).mean().backward()  # gradients averaged over the ranks
            opt.step()
            opt.zero_grad()
            kwargs: dict[str, Any] = dict(model=model, optimizer=opt, metrics={"loss": float(rank + step)})
            if step <= 3:
                info = mgr.save(step, **kwargs)  # unguarded: every rank calls it
                assert (info is None) == (rank != 0)
            elif rank == 0:
                assert mgr.save(step, **kwargs) is not None  # guarded: rank 1 never calls, nothing waits
        dist.barrier()
        versions = mgr.list()
        assert [v.step for v in versions] == list(STEPS)  # one version per step, not one per rank
        assert [v.metrics["loss"] for v in versions] == [float(s) for s in STEPS]  # rank 0's numbers
        assert list(mgr.load()["model"]) == KEYS
        if rank == 0:
            torch.save(model.module.state_dict(), os.path.join(out, "expected.pt"))

        fresh = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)))
        fresh_opt = torch.optim.Adam(fresh.parameters(), lr=0.01)
        ckpt = mgr.restore(model=fresh, optimizer=fresh_opt)  # every rank restores, into a DDP wrapper
        assert ckpt.step == 5 and ckpt.missing_keys == {"model": []} and ckpt.unexpected_keys == {"model": []}
        for k, v in model.module.state_dict().items():
            assert torch.equal(fresh.module.state_dict()[k], v), k
        assert fresh_opt.state_dict()["state"][0]["exp_avg"].equal(opt.state_dict()["state"][0]["exp_avg"])

        _check_agreement(rank)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_ddp_ranks_write_one_version_per_save(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    backend = request.getfixturevalue(f"{kind}_backend")
    out = tmp_path / "out"
    out.mkdir()
    mp.spawn(
        _worker,
        args=(str(tmp_path / "pg-init"), backend.url, backend.storage_options, str(out)),
        nprocs=WORLD,
        join=True,
    )
    expected = torch.load(out / "expected.pt")
    mgr = backend.manager()
    assert [v.step for v in mgr.list()] == list(STEPS)

    bare = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    mgr.restore(model=bare)
    compiled_inner = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    mgr.restore(model=torch.compile(compiled_inner, backend="eager"))
    parallel_inner = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    mgr.restore(model=nn.DataParallel(parallel_inner))
    for restored in (bare, compiled_inner, parallel_inner):
        for k, v in expected.items():
            assert torch.equal(restored.state_dict()[k], v), k
