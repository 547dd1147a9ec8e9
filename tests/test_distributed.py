"""Sharded (DCP) versions: 2 gloo ranks on the CPU saving DTensor weights + optimizer.

Each spawn costs several seconds, so one spawn per backend runs every multi-rank
check in sequence (save, agree on the id, restore in 2 ranks, per-rank values,
a rank failing mid-save, retention on rank 0); the parent process then
restores the same version into an unsharded model (resharding 2 -> 1) and runs
the file-based operations (verify, show, list, copy, delete) on it. The local run
also restores a version one process saved (resharding 1 -> 2), round-trips an
FSDP2 (``fully_shard``) model, and restores the 2-rank version in 3 ranks.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from torchckpt import CheckpointManager, RetentionPolicy
from torchckpt.errors import AsyncSaveError, CheckpointError, ChecksumMismatchError, MissingObjectError

WORLD = 2
pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch without torch.distributed")


# ----- shared helpers (module level: spawned workers import them) ---------------------------------------
def _plain_model() -> nn.Module:
    torch.manual_seed(1234)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))


def _shard(model: nn.Module, mesh: Any) -> nn.Module:
    from torch.distributed.tensor import Shard, distribute_module, distribute_tensor

    def partition(name: str, module: nn.Module, device_mesh: Any) -> None:
        for pname, param in list(module.named_parameters(recurse=False)):
            module.register_parameter(pname, nn.Parameter(distribute_tensor(param.data, device_mesh, [Shard(0)])))

    return distribute_module(model, mesh, partition)


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, k: float) -> None:
    for i, p in enumerate(model.parameters()):
        p.grad = torch.ones_like(p) * (k + i)
    opt.step()
    opt.zero_grad()


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _expected(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    names = {id(p): n for n, p in model.named_parameters()}
    out = {"model": {k: _full(v).clone() for k, v in model.state_dict().items()}, "exp_avg": {}, "exp_avg_sq": {}}
    for p, st in opt.state.items():
        out["exp_avg"][names[id(p)]] = _full(st["exp_avg"]).clone()
        out["exp_avg_sq"][names[id(p)]] = _full(st["exp_avg_sq"]).clone()
    return out


def _check_equal(model: nn.Module, opt: torch.optim.Optimizer, expected: dict[str, Any]) -> None:
    for k, v in model.state_dict().items():
        assert torch.equal(_full(v), expected["model"][k]), k
    names = {id(p): n for n, p in model.named_parameters()}
    assert len(opt.state) == len(expected["exp_avg"])
    for p, st in opt.state.items():
        assert torch.equal(_full(st["exp_avg"]), expected["exp_avg"][names[id(p)]])
        assert torch.equal(_full(st["exp_avg_sq"]), expected["exp_avg_sq"][names[id(p)]])


def _exit_now() -> None:
    """End a worker that succeeded without interpreter teardown: now and then a C++ thread of the
    process group is still joinable at exit and the process aborts ("terminate called without an
    active exception"), which would fail a passing test."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _worker(rank: int, init_file: str, url: str, options: dict[str, Any], out_dir: str, single_url: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
    )
    try:
        mesh = init_device_mesh("cpu", (WORLD,))
        model = _shard(_plain_model(), mesh)
        assert all(isinstance(p, DTensor) for p in model.parameters())
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        mgr = CheckpointManager(url, storage_options=options or None, retention=RetentionPolicy(keep_last=2))

        from torch.distributed.tensor import Shard, distribute_tensor

        def extra(step: int) -> dict[str, Any]:  # replicated, per rank (rank-unique key), sharded
            return {
                "note": "shared",
                f"rank{rank}_seen": torch.full((3,), float(rank * 100 + step)),
                "cursor": distribute_tensor(torch.arange(8.0) + step, mesh, [Shard(0)]),
            }

        # 1. two sharded saves, detected automatically (distributed=None, DTensor weights)
        _train_step(model, opt, 1.0)
        mgr.save(1, model=model, optimizer=opt, epoch=0, metrics={"loss": 2.0}, extra=extra(1))
        _train_step(model, opt, 2.0)
        info = mgr.save(2, model=model, optimizer=opt, epoch=1, metrics={"loss": 1.0}, extra=extra(2))
        assert info.layout == "dcp" and info.step == 2 and info.epoch == 1
        records: list[Any] = [None] * WORLD
        dist.all_gather_object(records, info.to_record())
        assert records[0] == records[1], "ranks disagree on the committed version"
        assert {f"__{r}_0.distcp" for r in range(WORLD)} | {".metadata"} <= set(info.files)
        expected = _expected(model, opt)
        if rank == 0:
            torch.save(expected, os.path.join(out_dir, "expected.pt"))

        # 2. restore in 2 ranks into scrambled weights and a fresh optimizer
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
        opt2 = torch.optim.Adam(model.parameters(), lr=0.01)
        ckpt = mgr.restore(model=model, optimizer=opt2, restore_rng=True)
        assert ckpt.info.version == info.version and ckpt.step == 2
        _check_equal(model, opt2, expected)
        assert ckpt.extra["note"] == "shared"
        assert torch.equal(ckpt.extra[f"rank{rank}_seen"], torch.full((3,), float(rank * 100 + 2)))
        other = 1 - rank
        assert torch.equal(ckpt.extra[f"rank{other}_seen"], torch.full((3,), float(other * 100 + 2)))
        assert torch.equal(ckpt.extra["cursor"], torch.arange(8.0) + 2)  # a DTensor in extra: back whole

        # 3. a rank failing mid-save: nothing committed on any rank, gc finds nothing it must keep
        from torchckpt.hashing import HashingWriter

        real_write = HashingWriter.write
        if rank == 1:

            def failing(self: Any, data: Any) -> int:
                if self.size > 0:
                    raise OSError("injected disk failure")
                return real_write(self, data)

            HashingWriter.write = failing  # type: ignore[method-assign]
        try:
            mgr.save(3, model=model, optimizer=opt2, extra=extra(3))
        except CheckpointError as exc:
            assert "injected" in str(exc) or rank == 0, exc
            failed = True
        else:
            failed = False
        finally:
            HashingWriter.write = real_write  # type: ignore[method-assign]
        assert failed, "a failed rank must fail the save on every rank"

        class Broken:  # fails while the state is built, before DCP: no rank may hang in a collective
            def state_dict(self) -> dict[str, Any]:
                raise RuntimeError("broken state_dict")

        try:
            mgr.save(3, model=model, counter=Broken() if rank == 1 else {"n": torch.zeros(1)})
        except RuntimeError as exc:
            assert rank == 1 and "broken" in str(exc)
        except CheckpointError as exc:
            assert rank == 0 and "another rank" in str(exc)
        else:
            raise AssertionError("the save must fail on every rank")
        dist.barrier()
        assert [v.step for v in mgr.list()] == [1, 2]
        if rank == 0:
            mgr.gc(older_than=0)
            from torchckpt import manifest as mf

            committed, leftovers = mf.committed_ids(mgr.storage)
            assert leftovers == [] and sorted(committed) == sorted(v.version for v in mgr.list())
        dist.barrier()

        # 4. retention runs on rank 0 only (keep_last=2): step 1 goes, everyone sees the same list
        mgr.save(4, model=model, optimizer=opt2, epoch=2, extra=extra(4))
        assert [v.step for v in mgr.list()] == [2, 4]

        # 4b. blocking=False: save returns after staging; the version is the state at the call, bit-exact
        amgr = CheckpointManager(f"{url.rstrip('/')}/async", storage_options=options or None)
        _train_step(model, opt2, 5.0)
        want = _expected(model, opt2)
        fut = amgr.save(5, blocking=False, model=model, optimizer=opt2, extra=extra(5))
        with torch.no_grad():  # training goes on at once
            for p in model.parameters():
                p.add_(1000.0)
        info5 = fut.result()
        assert info5.layout == "dcp" and [v.step for v in amgr.list()] == [5]
        opt3 = torch.optim.Adam(model.parameters(), lr=0.01)
        amgr.restore(model=model, optimizer=opt3)
        _check_equal(model, opt3, want)
        # a background failure on one rank surfaces on the next call, on every rank, and commits nothing
        if rank == 1:

            def failing_bg(self: Any, data: Any) -> int:
                if self.size > 0:
                    raise OSError("injected background failure")
                return real_write(self, data)

            HashingWriter.write = failing_bg  # type: ignore[method-assign]
        try:
            amgr.save(6, blocking=False, model=model, optimizer=opt3)
            try:
                amgr.wait()
            except AsyncSaveError:
                surfaced = True
            else:
                surfaced = False
        finally:
            HashingWriter.write = real_write  # type: ignore[method-assign]
        assert surfaced, "a failed background save must surface on every rank"
        dist.barrier()
        assert [v.step for v in amgr.list()] == [5]
        amgr.close()

        # 5. resharding 1 -> 2: a version one process saved through DCP, restored into the shards
        single = CheckpointManager(single_url)
        model_1 = _shard(_plain_model(), mesh)
        opt_1 = torch.optim.Adam(model_1.parameters(), lr=0.01)
        single.restore(model=model_1, optimizer=opt_1)
        _check_equal(model_1, opt_1, torch.load(os.path.join(out_dir, "single.pt")))

        # 6. FSDP2 (fully_shard) on the CPU: its DTensor parameters and optimizer state round-trip
        if not url.startswith("s3://"):  # once is enough
            from torch.distributed.fsdp import fully_shard

            fsdp = _plain_model()
            for layer in fsdp:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer, mesh=mesh)
            fully_shard(fsdp, mesh=mesh)
            fopt = torch.optim.Adam(fsdp.parameters(), lr=0.01)
            fsdp(torch.ones(3, 6)).sum().backward()
            fopt.step()
            fmgr = CheckpointManager(os.path.join(single_url, "..", "fsdp"))
            fmgr.save(1, model=fsdp, optimizer=fopt)
            want = _expected(fsdp, fopt)
            with torch.no_grad():
                for p in fsdp.parameters():
                    p.zero_()
            fopt2 = torch.optim.Adam(fsdp.parameters(), lr=0.01)  # gradients still set: state must still load
            fmgr.restore(model=fsdp, optimizer=fopt2)
            _check_equal(fsdp, fopt2, want)
        with open(os.path.join(out_dir, f"ok{rank}"), "w") as f:
            json.dump({"version": info.version}, f)
    finally:
        dist.destroy_process_group()
    _exit_now()


def _restore_worker(rank: int, world: int, init_file: str, url: str, options: dict[str, Any], out_dir: str) -> None:
    """Resharding N -> M: the 2-rank version restored into 3 ranks (uneven shards of 8 and 4 rows)."""
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    try:
        mesh = init_device_mesh("cpu", (world,))
        model = _shard(_plain_model(), mesh)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        mgr = CheckpointManager(url, storage_options=options or None, read_only=True)
        with open(os.path.join(out_dir, f"ok{0}")) as f:
            version = json.load(f)["version"]
        ckpt = mgr.restore(version, model=model, optimizer=opt, restore_rng=True)  # rank 2 has no RNG: warns
        _check_equal(model, opt, torch.load(os.path.join(out_dir, "expected.pt")))
        assert ckpt.extra["note"] == "shared"
    finally:
        dist.destroy_process_group()
    _exit_now()


def _run_ranks(tmp_path: Path, url: str, options: dict[str, Any]) -> str:
    out = tmp_path / "out"
    out.mkdir()
    # a version saved by one process through DCP, for the ranks to reshard 1 -> 2
    single_url = str(tmp_path / "single")
    model = _plain_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    _train_step(model, opt, 5.0)
    CheckpointManager(single_url, distributed=True).save(7, model=model, optimizer=opt)
    torch.save(_expected(model, opt), out / "single.pt")
    mp.spawn(_worker, args=(str(tmp_path / "pg-init"), url, options, str(out), single_url), nprocs=WORLD, join=True)
    results = [json.loads((out / f"ok{r}").read_text()) for r in range(WORLD)]
    assert results[0] == results[1]
    return results[0]["version"]


def _reshard_into_one_process(mgr: CheckpointManager, version: str, expected_file: Path) -> None:
    expected = torch.load(expected_file)
    model = _plain_model()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    ckpt = mgr.restore(version, model=model, optimizer=opt)
    _check_equal(model, opt, expected)
    assert {"rank0_seen", "rank1_seen", "note"} <= set(ckpt.extra)
    state = mgr.load(version)
    assert set(state) == {"model", "optimizer"}
    for k, v in expected["model"].items():
        assert torch.equal(state["model"][k], v)
    assert mgr.verify(version).ok


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_two_ranks_save_restore_and_reshard(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    backend = request.getfixturevalue(f"{kind}_backend")
    version = _run_ranks(tmp_path, backend.url, backend.storage_options)
    mgr = backend.manager()
    assert [v.step for v in mgr.list()] == [2, 4]
    info = mgr.info(version)
    assert info.layout == "dcp" and info.size_bytes == sum(r["size"] for r in info.files.values())
    _reshard_into_one_process(mgr, version, tmp_path / "out" / "expected.pt")
    if kind == "local":  # 2 -> 3 ranks (once is enough)
        mp.spawn(
            _restore_worker,
            args=(3, str(tmp_path / "pg-init-3"), backend.url, backend.storage_options, str(tmp_path / "out")),
            nprocs=3,
            join=True,
        )

    from torchckpt.summary import tensor_summary

    shapes = {t.name: t.shape for t in tensor_summary(mgr, version)}
    assert shapes["model.0.weight"] == (8, 6) and shapes["optimizer.state.2.weight.exp_avg"] == (4, 8)


# ----- single process, distributed=True (no process group): fast checks of the file-based operations ------
def test_single_process_dcp_layout_and_file_operations(memory_backend: Any, tmp_path: Path) -> None:
    mgr = memory_backend.manager(distributed=True)
    model = _plain_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    _train_step(model, opt, 1.0)
    sched.step()
    first = mgr.save(1, model=model, optimizer=opt, scheduler=sched, extra={"tokens": 7})
    _train_step(model, opt, 2.0)
    sched.step()
    second = mgr.save(2, model=model, optimizer=opt, scheduler=sched, extra={"tokens": 9})
    assert second.layout == "dcp" and set(second.files) == {".metadata", "__0_0.distcp"}
    assert set(second.objects) == {"model", "optimizer", "scheduler"}

    model2 = _plain_model()
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)
    ckpt = mgr.restore(model=model2, optimizer=opt2, scheduler=sched2)
    assert ckpt.extra == {"tokens": 9}
    assert sched2.state_dict() == sched.state_dict()
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(
        opt.state[next(model.parameters())]["momentum_buffer"], opt2.state[next(model2.parameters())]["momentum_buffer"]
    )
    with pytest.raises(MissingObjectError):
        mgr.restore(model=model2, ema=model2)

    # corruption: verify reports it, restore refuses it, fallback takes the older version
    path = mgr.storage.path(f"versions/{second.version}/__0_0.distcp")
    data = bytearray(mgr.storage.fs.cat_file(path))
    data[len(data) // 2] ^= 0xFF
    mgr.storage.fs.pipe_file(path, bytes(data))
    report = mgr.verify()
    assert [v for v, _ in report.problems] == [second.version]
    with pytest.raises(ChecksumMismatchError):
        mgr.restore(model=model2)
    with pytest.warns(UserWarning):
        ckpt = mgr.restore(model=model2, fallback=True)
    assert ckpt.info.version == first.version and ckpt.extra == {"tokens": 7}

    # copy (file-based) to a local folder, restore there; delete removes every file
    from torchckpt.transfer import copy_versions

    dst = CheckpointManager(tmp_path / "copy")
    copy_versions(mgr, dst, [first.version])
    assert dst.verify().ok and dst.list()[0].layout == "dcp"
    dst.restore(model=model2)
    dst.delete(first.version)
    assert dst.storage.list_names("versions") == []


def test_unsafe_values_in_dcp_are_refused(tmp_path: Path) -> None:
    """Non-tensor values are read with weights_only loading, like state.pt."""
    from torchckpt.errors import UnsafeCheckpointError

    mgr = CheckpointManager(tmp_path / "c", distributed=True)
    mgr.save(1, model=_plain_model())
    import torch.distributed.checkpoint as dcp

    # plant a pickled object the safe loader must refuse, via DCP itself, in a committed-looking version
    vdir = mgr.storage.path(f"versions/{mgr.latest().version}")
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

    with pytest.warns(UserWarning):
        dcp.save(
            {"objects": {"model": {"bad": Path("x")}}},
            storage_writer=FsspecWriter(str(tmp_path / "evil")),
            no_dist=True,
        )
    for name in (".metadata", "__0_0.distcp"):
        os.replace(tmp_path / "evil" / name, os.path.join(vdir, name))
    with pytest.raises(UnsafeCheckpointError):
        mgr.load(verify=False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
