"""Correctness of every fast path (issue 5): mmap restore, staged async snapshots,
concurrent multipart upload and buffered S3 reads, checksums on each path, and
the memory bounds checked functionally. No wall-clock assertions."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

from torchckpt import CheckpointError, CheckpointManager, ChecksumMismatchError
from torchckpt.staging import StagingPool
from torchckpt.storage import s3_transfer

MiB = 1 << 20


def _model(seed: int = 0, width: int = 64) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, 8))


def _trained(seed: int = 0, width: int = 64) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = _model(seed, width)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(4, width)).sum().backward()
        opt.step()
    return model, opt


def _same_state(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            _same_state(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same_state(x, y)
    else:
        assert a == b


def _state_file(mgr: CheckpointManager, info: Any) -> str:
    return mgr.storage.path(f"versions/{info.version}/state.pt")


# ----- local: mmap restore ----------------------------------------------------------------------------
def test_mmap_restore_equals_normal_path(local_backend: Any) -> None:
    model, opt = _trained(1)
    with local_backend.manager() as mgr:
        info = mgr.save(5, model=model, optimizer=opt, extra={"t": torch.arange(3)})
        reference = torch.load(_state_file(mgr, info), weights_only=True)  # plain read, no mmap
        new_model, new_opt = _trained(2)
        ckpt = mgr.restore(model=new_model, optimizer=new_opt)
    _same_state(reference["objects"]["model"], new_model.state_dict())
    _same_state(reference["objects"]["optimizer"], new_opt.state_dict())
    _same_state(reference["extra"], ckpt.extra)
    _same_state(model.state_dict(), new_model.state_dict())
    _same_state(opt.state_dict(), new_opt.state_dict())
    # the restored optimizer keeps training (its mmap-backed state is private: the file is untouched)
    new_opt.zero_grad()
    new_model(torch.randn(4, 64)).sum().backward()
    new_opt.step()
    with local_backend.manager() as mgr:
        assert mgr.verify().ok


def test_local_checksum_failure_detected_on_mmap_path(local_backend: Any) -> None:
    model, opt = _trained()
    with local_backend.manager() as mgr:
        info = mgr.save(1, model=model, optimizer=opt)
        path = _state_file(mgr, info)
        with open(path, "r+b") as f:  # flip one byte inside the tensor data, same size
            f.seek(os.path.getsize(path) // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))
        with pytest.raises(ChecksumMismatchError):
            mgr.restore(model=_model())
        with pytest.raises(ChecksumMismatchError):
            mgr.load()
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) - 10)
        with pytest.raises(ChecksumMismatchError):
            mgr.load()


def test_checksum_file_matches_streamed_checksum(tmp_path: Any) -> None:
    from torchckpt.hashing import checksum_bytes, checksum_file

    for n in (0, 1, 17 << 20):
        p = tmp_path / f"f{n}"
        data = os.urandom(n)
        p.write_bytes(data)
        assert checksum_file(str(p)) == (checksum_bytes(data), n)


# ----- async: staged snapshots ---------------------------------------------------------------------------
def test_async_snapshot_isolation(backend: Any) -> None:
    model, opt = _trained(3)
    before_model = {k: v.clone() for k, v in model.state_dict().items()}
    before_opt = {i: {k: v.clone() for k, v in s.items()} for i, s in opt.state_dict()["state"].items()}
    raw = {"a": torch.ones(1000), "b": torch.arange(10)}
    with backend.manager() as mgr:
        fut = mgr.save(7, blocking=False, model=model, optimizer=opt, tensors=raw)
        # training mutates everything right after the call returns
        with torch.no_grad():
            for p in model.parameters():
                p.add_(100.0)
            for s in opt.state.values():
                s["exp_avg"].mul_(-3.0)
        raw["a"].fill_(-1)
        raw["b"].zero_()
        info = fut.result()
        mgr.wait()
        state = mgr.load(info)
    _same_state(before_model, dict(state["model"]))
    for i, s in before_opt.items():
        _same_state(s, state["optimizer"]["state"][i])
    assert torch.equal(state["tensors"]["a"], torch.ones(1000))
    assert torch.equal(state["tensors"]["b"], torch.arange(10))


def test_staging_buffers_reused_and_resized() -> None:
    pool = StagingPool()
    state = {"m": {"w": torch.randn(4, 4), "b": torch.randn(4)}, "l": [torch.zeros(3)], "n": 5}
    first = pool.snapshot(state)
    assert pool.allocated_bytes == (16 + 4 + 3) * 4
    ptrs = {k: v.untyped_storage().data_ptr() for k, v in first["m"].items()}
    state["m"]["w"].add_(1)
    second = pool.snapshot(state)
    assert pool.allocated_bytes == 0  # nothing new
    assert {k: v.untyped_storage().data_ptr() for k, v in second["m"].items()} == ptrs
    assert torch.equal(second["m"]["w"], state["m"]["w"]) and second["n"] == 5
    assert second["m"]["w"].data_ptr() != state["m"]["w"].data_ptr()
    # a shape change gets a new buffer; a dtype change too; a vanished entry frees its buffer
    state["m"]["w"] = torch.randn(8, 4)
    state["m"]["b"] = state["m"]["b"].double()
    del state["l"]
    third = pool.snapshot(state)
    assert third["m"]["w"].shape == (8, 4) and torch.equal(third["m"]["w"], state["m"]["w"])
    assert third["m"]["b"].dtype == torch.float64
    assert pool.buffer(("l", 0)) is None
    assert pool.nbytes == (32 * 4) + 4 * 8
    # non-contiguous, conjugate-view and 0-d sources are staged correctly
    t = torch.arange(12.0).reshape(3, 4).t()
    c = torch.randn(5, dtype=torch.complex64).conj()
    staged = pool.snapshot({"t": t, "c": c, "s": torch.tensor(3.5)})
    assert torch.equal(staged["t"], t) and torch.equal(staged["c"], c.resolve_conj())
    assert staged["s"].item() == 3.5


def test_manager_reuses_staging_buffers_across_async_saves(local_backend: Any) -> None:
    model, opt = _trained(4)
    with local_backend.manager(async_save=True) as mgr:
        mgr.save(1, model=model, optimizer=opt).result()
        pool = mgr._saver.staging
        path = ("objects", "model", "0.weight")
        ptr = pool.buffer(path).untyped_storage().data_ptr()
        mgr.save(2, model=model, optimizer=opt).result()
        assert pool.allocated_bytes == 0
        assert pool.buffer(path).untyped_storage().data_ptr() == ptr
        bigger, bigger_opt = _trained(5, width=96)  # shapes change: buffers are resized
        mgr.save(3, model=bigger, optimizer=bigger_opt)
        mgr.wait()
        assert pool.buffer(path).shape == (96, 96)
        restored = _model(0, width=96)
        mgr.restore(model=restored)
    _same_state(bigger.state_dict(), restored.state_dict())


def test_async_failure_surfaces_on_next_call(local_backend: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchckpt import AsyncSaveError
    from torchckpt.formats import pickling as serialization

    model = _model()
    with local_backend.manager() as mgr:

        def boom(*a: Any, **k: Any) -> Any:
            raise OSError("disk full")

        monkeypatch.setattr(serialization.torch, "save", boom)
        mgr.save(1, blocking=False, model=model)
        with pytest.raises(AsyncSaveError):
            mgr.wait()
        monkeypatch.undo()
        mgr.save(2, blocking=False, model=model).result()
        assert [v.step for v in mgr.list()] == [2]


# ----- S3: concurrent multipart upload ---------------------------------------------------------------------
@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3_transfer, "PART_SIZE", 5 * MiB)  # S3's (and moto's) minimum
    monkeypatch.setattr(s3_transfer, "CONCURRENCY", 2)
    monkeypatch.setattr(s3_transfer, "SINGLE_PUT_MAX", 0)  # multipart from the first full part


def _s3fs(backend: Any) -> Any:
    return CheckpointManager(backend.url, storage_options=backend.storage_options).storage.fs


def _uploads(fs: Any, bucket: str) -> list[Any]:
    return fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", [])


def test_multipart_upload_reassembles_exact_bytes(s3_backend: Any, small_parts: None) -> None:
    fs = _s3fs(s3_backend)
    bucket = s3_backend.url[5:].split("/")[0]
    data = os.urandom(12 * MiB + 12345)
    path = f"{bucket}/raw/blob"
    with s3_transfer.S3MultipartWriter(fs, path) as w:
        step = MiB + 7  # writes that straddle part boundaries
        for o in range(0, len(data), step):
            assert w.write(memoryview(data)[o : o + step]) == len(data[o : o + step])
    assert w.max_buffers <= 3  # concurrency + 1: the pool is smaller than the object
    assert fs.cat_file(path) == data
    assert bytes(s3_transfer.fetch(fs, path, len(data))) == data
    assert bytes(s3_transfer.fetch(fs, path, len(data), concurrency=3)) == data
    assert _uploads(fs, bucket) == []


def test_small_object_is_one_put(s3_backend: Any, small_parts: None, monkeypatch: pytest.MonkeyPatch) -> None:
    fs = _s3fs(s3_backend)
    bucket = s3_backend.url[5:].split("/")[0]
    calls: list[str] = []
    real = fs._call_s3

    async def counting(method: str, *a: Any, **k: Any) -> Any:
        calls.append(method)
        return await real(method, *a, **k)

    monkeypatch.setattr(fs, "_call_s3", counting)
    with s3_transfer.S3MultipartWriter(fs, f"{bucket}/raw/small") as w:
        w.write(b"x" * 1000)
    assert calls == ["put_object"]
    monkeypatch.undo()
    assert fs.cat_file(f"{bucket}/raw/small") == b"x" * 1000


@pytest.mark.parametrize("size", [3 * 5 * MiB + 777, 4 * 5 * MiB + 777])
def test_single_put_window_holds_parts_then_goes_multipart(
    s3_backend: Any, small_parts: None, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """Below the window one PUT from the held part buffers; above it multipart starting with them."""
    monkeypatch.setattr(s3_transfer, "SINGLE_PUT_MAX", 4 * 5 * MiB)  # 4 parts: one PUT below 20 MiB
    fs = _s3fs(s3_backend)
    bucket = s3_backend.url[5:].split("/")[0]
    calls: list[str] = []
    real = fs._call_s3

    async def counting(method: str, *a: Any, **k: Any) -> Any:
        calls.append(method)
        return await real(method, *a, **k)

    monkeypatch.setattr(fs, "_call_s3", counting)
    data = os.urandom(size)
    path = f"{bucket}/raw/window"
    with s3_transfer.S3MultipartWriter(fs, path) as w:
        for o in range(0, len(data), MiB + 7):
            w.write(memoryview(data)[o : o + MiB + 7])
    monkeypatch.undo()
    assert w.max_buffers <= w.pool_size == 4
    if size < 4 * 5 * MiB:
        assert calls == ["put_object"]
    else:
        assert calls[0] == "create_multipart_upload" and calls[-1] == "complete_multipart_upload"
        assert calls.count("upload_part") == 5
    assert fs.cat_file(path) == data
    assert _uploads(fs, bucket) == []


def test_chain_reader_reads_and_seeks_across_segments() -> None:
    parts = [b"abc", bytearray(b""), memoryview(b"defgh"), b"ij"]
    r = s3_transfer.ChainReader(parts)
    assert len(r) == 10 and r.read() == b"abcdefghij"
    r.seek(2)
    assert r.read(4) == b"cdef"
    buf = bytearray(10)
    assert r.readinto(buf) == 4 and bytes(buf[:4]) == b"ghij"
    assert r.seek(0, 2) == 10 and r.read(3) == b""


def test_multipart_failure_aborts_and_commits_nothing(
    s3_backend: Any, small_parts: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = torch.nn.Linear(1024, 3000)  # ~12 MiB of weights: three parts
    with s3_backend.manager() as mgr:
        mgr.save(1, model=torch.nn.Linear(2, 2))
        fs = mgr.storage.fs
        bucket = mgr.storage.root.split("/")[0]
        real = fs._call_s3
        seen = {"parts": 0}

        async def failing(method: str, *a: Any, **k: Any) -> Any:
            if method == "upload_part":
                seen["parts"] += 1
                if seen["parts"] == 2:
                    raise ConnectionError("network down")
            return await real(method, *a, **k)

        monkeypatch.setattr(fs, "_call_s3", failing)
        with pytest.raises(CheckpointError):
            mgr.save(2, model=model)
        monkeypatch.undo()
        assert [v.step for v in mgr.list()] == [1]
        assert _uploads(fs, bucket) == []
        leftovers = [p for p in fs.find(mgr.storage.root) if "/versions/" in p and not p.endswith(".json")]
        committed = [v.version for v in mgr.list()]
        assert all(any(c in p for c in committed) for p in leftovers)


def test_s3_round_trip_larger_than_part_pool(
    s3_backend: Any, small_parts: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory bound, functionally: a state bigger than all part buffers together saves and restores."""
    monkeypatch.setattr(s3_transfer, "CONCURRENCY", 1)  # a pool of 2 x 5 MiB part buffers
    model, opt = _trained(6, width=1100)  # ~14 MiB of state
    with s3_backend.manager() as mgr:
        info = mgr.save(3, model=model, optimizer=opt)
        assert info.size_bytes > 2 * 5 * MiB
        new_model, new_opt = _trained(7, width=1100)
        mgr.restore(model=new_model, optimizer=new_opt)  # the buffered fetch path (>= 8 MiB)
        async_fut = mgr.save(4, blocking=False, model=model, optimizer=opt)
        async_fut.result()
        assert mgr.verify().ok
    _same_state(model.state_dict(), new_model.state_dict())
    _same_state(opt.state_dict(), new_opt.state_dict())


def test_s3_checksum_failures_detected(s3_backend: Any, small_parts: None) -> None:
    model = torch.nn.Linear(1024, 2500)  # ~10 MiB: the buffered fetch path
    with s3_backend.manager() as mgr:
        info = mgr.save(1, model=model)
        fs = mgr.storage.fs
        key = mgr.storage.path(f"versions/{info.version}/state.pt")
        good = bytearray(fs.cat_file(key))
        bad = bytearray(good)
        bad[len(bad) // 2] ^= 0xFF
        fs.pipe_file(key, bytes(bad))
        with pytest.raises(ChecksumMismatchError):
            mgr.restore(model=torch.nn.Linear(1024, 2500))
        fs.pipe_file(key, bytes(good[:-100]))  # shorter than recorded
        with pytest.raises(ChecksumMismatchError):
            mgr.load()
        fs.pipe_file(key, bytes(good) + b"tail")  # longer than recorded
        with pytest.raises(ChecksumMismatchError):
            mgr.load()
        fs.pipe_file(key, bytes(good))
        mgr.load()


def test_memory_backend_checksum_failure_detected(memory_backend: Any) -> None:
    with memory_backend.manager() as mgr:
        info = mgr.save(1, model=_model())
        fs = mgr.storage.fs
        key = mgr.storage.path(f"versions/{info.version}/state.pt")
        data = bytearray(fs.cat_file(key))
        data[-200] ^= 0x01
        fs.pipe_file(key, bytes(data))
        with pytest.raises(ChecksumMismatchError):
            mgr.load()


def test_buffer_reader_is_a_seekable_stream() -> None:
    data = bytearray(os.urandom(1000))
    r = s3_transfer.BufferReader(data)
    assert r.read(10) == bytes(data[:10])
    r.seek(-5, os.SEEK_END)
    assert r.read() == bytes(data[-5:])
    r.seek(100)
    out = bytearray(50)
    assert r.readinto(out) == 50 and out == data[100:150]
    assert r.tell() == 150


# ----- restore into a live module: memcpy prefill ---------------------------------------------------------
def test_prefilled_restore_matches_and_does_not_alias(local_backend: Any) -> None:
    from torchckpt.fastload import prefill_module

    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    net(torch.randn(4, 8))  # BatchNorm running stats and num_batches_tracked change
    with local_backend.manager() as mgr:
        mgr.save(1, model=net)
        fresh = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
        ids = {k: id(v) for k, v in fresh.state_dict(keep_vars=True).items()}
        ckpt = mgr.restore(model=fresh)
    _same_state(net.state_dict(), fresh.state_dict())
    assert {k: id(v) for k, v in fresh.state_dict(keep_vars=True).items()} == ids  # same Parameter objects
    with torch.no_grad():
        fresh[0].weight.add_(1.0)
    assert torch.equal(ckpt.state["model"]["0.weight"], net[0].weight)  # the returned state is not the live one
    # shape mismatches and unexpected keys are still torch's errors; strict=False still tolerates keys
    bad = {k: v.clone() for k, v in net.state_dict().items()}
    bad["0.weight"] = torch.zeros(3, 3)
    with pytest.raises(RuntimeError):
        fresh.load_state_dict(prefill_module(fresh, bad))
    partial = {"0.weight": torch.ones(8, 8)}
    fresh.load_state_dict(prefill_module(fresh, partial), strict=False)
    assert torch.equal(fresh[0].weight, torch.ones(8, 8))


def test_prefill_leaves_modules_with_pre_hooks_to_torch() -> None:
    from torchckpt.fastload import prefill_module

    net = torch.nn.Linear(4, 4)
    seen: list[str] = []

    def hook(state: Any, prefix: str, *args: Any) -> None:
        seen.append(prefix)
        state[prefix + "bias"] = state[prefix + "bias"] + 1

    net._register_load_state_dict_pre_hook(hook)
    src = {"weight": torch.ones(4, 4), "bias": torch.zeros(4)}
    out = prefill_module(net, src)
    assert out is src and not torch.equal(net.weight, torch.ones(4, 4))  # untouched
    net.load_state_dict(out)
    assert seen == [""] and torch.equal(net.bias, torch.ones(4))


def test_staging_copies_in_parallel_pieces_are_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """Big tensors are cut into pieces copied by several threads: every byte must land in place."""
    from torchckpt import staging

    monkeypatch.setattr(staging, "PIECE_BYTES", 4096)
    monkeypatch.setattr(staging, "COPY_THREADS", 3)
    pool = staging.StagingPool()
    state = {"a": torch.randn(10_000), "b": [torch.arange(7, dtype=torch.int16), torch.randn(3, 5000)], "n": 4}
    before = state["a"].clone()
    staged = pool.snapshot(state)
    assert pool._copiers is not None  # the threaded path ran
    state["a"].add_(1.0)  # the snapshot is a copy
    assert torch.equal(staged["a"], before)
    assert torch.equal(staged["b"][0], torch.arange(7, dtype=torch.int16))
    assert torch.equal(staged["b"][1], state["b"][1]) and staged["n"] == 4
    pool.clear()
    assert pool._copiers is None
