"""Training-loop API in one process: schedule, preemption handlers, autoresume, wrapped modules, data position."""

from __future__ import annotations

import os
import signal
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchckpt import CheckpointError, CheckpointInfo, CheckpointManager
from torchckpt.errors import CheckpointNotFoundError, ChecksumMismatchError, NoMatchingKeysError
from torchckpt.training import ResumableSampler, SaveSchedule


class FakeClock:
    """Seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


# ----- schedule --------------------------------------------------------------------------------------------
def test_step_rule_positive_multiples_once_each() -> None:
    sched = SaveSchedule(every_steps=4)
    assert [s for s in range(13) if sched.should_save(s)] == [4, 8, 12]
    assert sched.should_save(12) is False  # never twice for one step
    assert SaveSchedule().should_save(8) is False  # no rule, no save
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="save_every_steps"):
            SaveSchedule(every_steps=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="save_every_seconds"):
        SaveSchedule(every_seconds=0)


def test_time_rule_counts_from_creation_and_from_each_commit(tmp_path: Path) -> None:
    clock = FakeClock()
    mgr = CheckpointManager(tmp_path / "c")
    mgr.schedule = SaveSchedule(every_seconds=60, clock=clock)
    assert mgr.maybe_save(1, w=torch.ones(2)) is None
    clock.now += 59.5
    assert mgr.maybe_save(2, w=torch.ones(2)) is None
    clock.now += 0.5  # 60 s since the manager was created
    info = mgr.maybe_save(3, w=torch.ones(2))
    assert isinstance(info, CheckpointInfo) and info.step == 3
    assert mgr.should_save(3) is False  # the same step again: no
    clock.now += 30
    assert mgr.should_save(4) is False  # 30 s since the commit
    clock.now += 29
    mgr.save(5, w=torch.ones(2))  # a save outside the schedule restarts the clock too
    clock.now += 59
    assert mgr.should_save(6) is False
    clock.now += 1
    assert mgr.should_save(7) is True
    assert [v.step for v in mgr.list()] == [3, 5]


def test_async_save_restarts_the_clock_when_committed(tmp_path: Path) -> None:
    clock = FakeClock()
    with CheckpointManager(tmp_path / "c", async_save=True) as mgr:
        mgr.schedule = SaveSchedule(every_seconds=10, clock=clock)
        clock.now += 10
        future = mgr.maybe_save(1, w=torch.ones(3))
        assert future is not None and not isinstance(future, CheckpointInfo)
        clock.now += 7
        future.result()
        mgr.wait()
        clock.now += 9  # 16 s after the save started, 9 s after it committed
        assert mgr.should_save(2) is False
        clock.now += 1
        assert mgr.should_save(3) is True


def test_direct_save_counts_for_the_step(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path / "c", save_every_steps=5)
    mgr.save(5, w=torch.zeros(1))
    assert mgr.maybe_save(5, w=torch.zeros(1)) is None
    assert len(mgr.list()) == 1


# ----- preemption -----------------------------------------------------------------------------------------------
def test_preemption_flag_saves_at_next_step_chains_and_is_removed_on_close(tmp_path: Path) -> None:
    seen: list[int] = []

    def previous(signum: int, frame: Any) -> None:
        seen.append(signum)

    old = signal.signal(signal.SIGUSR1, previous)
    try:
        mgr = CheckpointManager(tmp_path / "c", save_every_steps=100, preemption_signals=(signal.SIGUSR1,))
        assert signal.getsignal(signal.SIGUSR1) != previous  # installed
        assert mgr.maybe_save(1, w=torch.ones(1)) is None and not mgr.preempted
        os.kill(os.getpid(), signal.SIGUSR1)
        assert seen == [signal.SIGUSR1]  # the previous Python handler still ran
        assert mgr.schedule.preemption is not None and mgr.schedule.preemption.signaled
        assert not mgr.preempted  # not before the step boundary that acts on it
        info = mgr.maybe_save(2, w=torch.ones(1))
        assert isinstance(info, CheckpointInfo) and info.step == 2 and mgr.preempted
        assert mgr.maybe_save(3, w=torch.ones(1)) is None and mgr.preempted  # one save per signal
        os.kill(os.getpid(), signal.SIGUSR1)  # a second signal: one more save
        assert mgr.should_save(4) is True
        mgr.close()
        assert signal.getsignal(signal.SIGUSR1) == previous  # the previous handler is back
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_a_save_started_after_the_signal_answers_it(tmp_path: Path) -> None:
    old = signal.getsignal(signal.SIGUSR2)
    with CheckpointManager(tmp_path / "c", preemption_signals=(signal.SIGUSR2,)) as mgr:
        os.kill(os.getpid(), signal.SIGUSR2)
        mgr.save(7, w=torch.ones(1))  # the loop saved on its own after the signal
        assert mgr.should_save(8) is False
    assert signal.getsignal(signal.SIGUSR2) == old


def test_handlers_only_from_the_main_thread(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def make() -> None:
        try:
            CheckpointManager(tmp_path / "c", preemption_signals=(signal.SIGTERM,))
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            errors.append(exc)
        CheckpointManager(tmp_path / "c").close()  # no handlers requested: fine in any thread

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    assert len(errors) == 1 and isinstance(errors[0], CheckpointError)
    assert "main thread" in str(errors[0])
    assert CheckpointManager(tmp_path / "c").schedule.preemption is None  # default: nothing installed
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


# ----- autoresume -------------------------------------------------------------------------------------------------
def test_missing_ok_on_an_empty_root_returns_none_and_touches_nothing(backend: Any) -> None:
    mgr = backend.manager()
    before = sorted(mgr.storage.list_names(""))
    net = _net()
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    assert mgr.restore(model=net, missing_ok=True) is None
    assert mgr.restore("best", model=net, missing_ok=True) is None
    assert sorted(mgr.storage.list_names("")) == before
    assert all(torch.equal(v, weights[k]) for k, v in net.state_dict().items())
    with pytest.raises(CheckpointNotFoundError):
        mgr.restore(model=net)  # without missing_ok: the same error as before

    mgr.save(3, model=net)
    ckpt = mgr.restore(model=_net(), missing_ok=True)
    assert ckpt is not None and ckpt.step == 3
    with pytest.raises(CheckpointNotFoundError):
        mgr.restore(9, model=net, missing_ok=True)  # a root with versions: a wrong selector still raises


def test_missing_ok_still_raises_on_corrupt_data(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path / "c")
    info = mgr.save(1, model=_net())
    assert isinstance(info, CheckpointInfo)
    path = Path(info.url.removeprefix("file://")) / "state.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError):
        mgr.restore(model=_net(), missing_ok=True)


# ----- wrapped modules and keys ------------------------------------------------------------------------------------
def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("wrap", ["dataparallel", "compile"])
def test_wrapped_modules_save_inner_keys_and_restore_both_ways(wrap: str, backend: Any) -> None:
    net = _net()
    wrapped = nn.DataParallel(net) if wrap == "dataparallel" else torch.compile(net, backend="eager")
    assert all(k.startswith(("module.", "_orig_mod.")) for k in wrapped.state_dict())
    mgr = backend.manager()
    mgr.save(1, model=wrapped)
    assert list(mgr.load()["model"]) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    bare = _net().requires_grad_(False)
    for p in bare.parameters():
        p.zero_()
    mgr.restore(model=bare.requires_grad_(True))
    assert _same(bare, net)
    target = _net()
    rewrapped = nn.DataParallel(target) if wrap == "dataparallel" else torch.compile(target, backend="eager")
    with torch.no_grad():
        for p in target.parameters():
            p.zero_()
    mgr.restore(model=rewrapped)
    assert _same(target, net)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "_orig_mod.module."])
def test_older_versions_with_a_uniform_prefix_load(prefix: str, backend: Any) -> None:
    net = _net()
    legacy = OrderedDict((prefix + k, v) for k, v in net.state_dict().items())  # what older code stored
    mgr = backend.manager()
    mgr.save(1, model=legacy)
    for target in (_net(), nn.DataParallel(_net()), torch.compile(_net(), backend="eager")):
        ckpt = mgr.restore(model=target)
        inner = target.module if isinstance(target, nn.DataParallel) else getattr(target, "_orig_mod", target)
        assert _same(inner, net) and ckpt.missing_keys == {"model": []}


def test_a_real_submodule_named_module_is_not_stripped(tmp_path: Path) -> None:
    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = nn.Linear(2, 2)

    src = Holder()
    mgr = CheckpointManager(tmp_path / "c")
    mgr.save(1, model=src)
    dst = Holder()
    mgr.restore(model=dst)
    assert _same(dst, src)


def test_key_map_renames_and_drops(tmp_path: Path) -> None:
    class Old(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Linear(3, 4)
            self.head = nn.Linear(4, 2)
            self.aux = nn.Linear(4, 1)

    old = Old()
    mgr = CheckpointManager(tmp_path / "c")
    mgr.save(1, model=old, optimizer=torch.optim.SGD(old.parameters(), lr=0.1))
    new = _net()

    def key_map(key: str) -> str | None:
        if key.startswith("aux."):
            return None
        return key.replace("encoder.", "0.").replace("head.", "2.")

    ckpt = mgr.restore(model=new, key_map=key_map)
    assert torch.equal(new[0].weight, old.encoder.weight) and torch.equal(new[2].bias, old.head.bias)
    assert ckpt.missing_keys == {"model": []} and ckpt.unexpected_keys == {"model": []}
    with pytest.raises(RuntimeError, match="Unexpected key"):
        mgr.restore(model=_net(), key_map=lambda k: k.replace("encoder.", "0.").replace("head.", "2."))
    with pytest.raises(CheckpointError, match="distinct"):
        mgr.restore(model=_net(), key_map=lambda k: "same")


def test_non_strict_restore_that_loads_nothing_raises_before_touching_anything(tmp_path: Path) -> None:
    net = _net()
    opt = torch.optim.Adam(net.parameters())
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    mgr = CheckpointManager(tmp_path / "c")
    mgr.save(1, optimizer=opt, model=net)  # the optimizer comes first: it must not be loaded either

    class Other(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(3, 4)
            self.out = nn.Linear(4, 2)

    other = Other()
    fresh_opt = torch.optim.Adam(other.parameters())
    with pytest.raises(NoMatchingKeysError, match="key_map"):
        mgr.restore(optimizer=fresh_opt, model=other, strict=False)
    assert fresh_opt.state_dict()["state"] == {}  # no silent half-restore

    partial = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.Linear(2, 2))
    ckpt = mgr.restore(model=partial, strict=False)  # a partial match is fine, and reported
    assert ckpt.missing_keys == {"model": ["3.weight", "3.bias"]} and ckpt.unexpected_keys == {"model": []}
    assert torch.equal(partial[0].weight, net[0].weight)
    smaller = nn.Sequential(nn.Linear(3, 4))
    ckpt = mgr.restore(model=smaller, strict=False)
    assert ckpt.unexpected_keys == {"model": ["2.weight", "2.bias"]} and ckpt.missing_keys == {"model": []}


# ----- data position --------------------------------------------------------------------------------------------------
def test_generators_are_saved_and_restored_by_name(backend: Any) -> None:
    gen = torch.Generator().manual_seed(42)
    torch.randn(5, generator=gen)
    mgr = backend.manager()
    mgr.save(1, shuffle=gen)
    expected = torch.randn(8, generator=gen)
    other = torch.Generator().manual_seed(0)
    mgr.restore(shuffle=other)
    assert torch.equal(torch.randn(8, generator=other), expected)


def test_a_plain_dataloader_is_refused_with_the_recipe(tmp_path: Path) -> None:
    loader = DataLoader(TensorDataset(torch.arange(10.0)), batch_size=2, shuffle=True)
    mgr = CheckpointManager(tmp_path / "c")
    with pytest.raises(TypeError, match=r"ResumableSampler.*docs/training-loops.md"):
        mgr.save(1, loader=loader)
    mgr.save(1, loader={"k": torch.ones(1)})
    with pytest.raises(TypeError, match="ResumableSampler"):
        mgr.restore(loader=loader)


def _indices(batches: Any) -> list[int]:
    return [int(i) for (x,) in batches for i in x.tolist()]


@pytest.mark.parametrize("workers", [0, 2])
def test_resumable_sampler_resumes_mid_epoch_on_the_next_batch(workers: int) -> None:
    data = TensorDataset(torch.arange(10))

    def make() -> tuple[ResumableSampler, DataLoader]:
        sampler = ResumableSampler(data, seed=3)
        return sampler, DataLoader(data, batch_size=3, sampler=sampler, num_workers=workers)

    sampler, loader = make()
    straight = [_indices(sampler.batches(loader)) for _ in range(2)]
    assert sorted(straight[0]) == list(range(10)) and straight[0] != straight[1] and sampler.epoch == 2

    sampler, loader = make()
    got: list[int] = []
    for i, (x,) in enumerate(sampler.batches(loader)):
        got += x.tolist()
        if i == 1:
            state = sampler.state_dict()
            break
    assert state["epoch"] == 0 and state["position"] == 6  # handed 2 batches, whatever the workers prefetched
    sampler, loader = make()
    sampler.load_state_dict(state)
    got += _indices(sampler.batches(loader))
    assert got == straight[0] and sampler.epoch == 1 and sampler.position == 0
    assert _indices(sampler.batches(loader)) == straight[1]


def test_resumable_sampler_refuses_what_would_lose_the_position() -> None:
    data = TensorDataset(torch.arange(10))
    sampler = ResumableSampler(data, seed=1)
    loader = DataLoader(data, batch_size=2, sampler=sampler)
    next(iter(loader))  # iterated directly: the count is unknown
    with pytest.raises(CheckpointError, match=r"sampler.batches\(loader\)"):
        sampler.state_dict()
    with pytest.raises(ValueError, match="sampler=this sampler"):
        next(ResumableSampler(data).batches(loader))
    with pytest.raises(ValueError, match="same data set"):
        ResumableSampler(range(11)).load_state_dict(ResumableSampler(range(10)).state_dict())


def test_resumable_sampler_shares_an_epoch_between_ranks() -> None:
    shares = [list(ResumableSampler(range(10), seed=5, num_replicas=3, rank=r)) for r in range(3)]
    assert all(len(s) == 4 for s in shares)  # padded to an equal share, like DistributedSampler
    assert set().union(*shares) == set(range(10))
    assert shares[0] != shares[1]
