"""Safety on every backend: failed saves leave nothing, corruption is caught, pickle is refused.

Covers: a save that fails half-way, checksum mismatch (and ``verify=False``),
``restore(fallback=True)``, a malicious pickle that must not run, whole-model
saves behind ``trust_pickle``, read-only managers.
"""

from __future__ import annotations

import io
import json
import os
import warnings

import fsspec
import pytest
import torch
import torch.nn as nn
import xxhash

from torchckpt import RetentionPolicy
from torchckpt.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    ChecksumMismatchError,
    ReadOnlyError,
    UnsafeCheckpointError,
)


def fs_of(backend, url: str):
    return fsspec.core.url_to_fs(url, **backend.storage_options)


def version_folders(backend, mgr) -> list[str]:
    """Every entry under versions/ (committed, staging or half-written), by listing."""
    fs, root = fs_of(backend, mgr.root_url)
    fs.invalidate_cache()
    try:
        return sorted(os.path.basename(p.rstrip("/")) for p in fs.ls(f"{root}/versions", detail=False))
    except FileNotFoundError:
        return []


def flip_one_float(backend, info, *, value: float = 1.0, count: int = 64) -> int:
    """Flip one bit of a float32 ``value`` amid a saved run of ``count`` of them (1.0 -> 1.5); returns its offset."""
    fs, folder = fs_of(backend, info.url)
    data = bytearray(fs.cat_file(f"{folder}/state.pt"))
    start = bytes(data).find(torch.tensor(value).numpy().tobytes() * count)
    assert start >= 0, "the saved ones must be stored verbatim"
    pos = start + 4 * (count // 2) + 2  # third byte of a 1.0: 0x80 -> 0xc0 makes 1.5
    data[pos] ^= 0x40
    fs.pipe_file(f"{folder}/state.pt", bytes(data))
    return pos


# ----- a save that fails half-way -------------------------------------------------------------------
class Unserializable:
    """Has a state_dict, but it holds something no checkpoint can store."""

    def state_dict(self):
        return {"fn": lambda x: x, "w": torch.ones(2)}

    def load_state_dict(self, state):  # pragma: no cover - never reached
        raise AssertionError


class Tagged(torch.Tensor):
    pass


def test_failed_save_leaves_no_visible_version(backend):
    mgr = backend.manager()
    good = mgr.save(1, model=nn.Linear(2, 2))
    folders = version_folders(backend, mgr)
    assert folders == [good.version]

    # 1. refused before a byte is written
    with pytest.raises(TypeError, match="fn"):
        mgr.save(2, model=nn.Linear(2, 2), weird=Unserializable())
    # 2. a tensor subclass a safe load could not read back
    with pytest.raises(TypeError, match="subclass"):
        mgr.save(2, w=torch.zeros(2).as_subclass(Tagged))
    # 3. really half-way: state.pt is fully written, then pickling the module fails
    net = nn.Linear(2, 2)
    net.hook = lambda x: x  # a lambda cannot be pickled
    with pytest.raises(Exception, match="lambda"):
        mgr.save(2, model=net, whole_model=True)

    for m in (mgr, backend.manager()):
        assert m.list() == [good] and m.latest() == good
    assert version_folders(backend, mgr) == folders  # no committed, staging or partial folder
    assert mgr.gc(older_than=0) == []  # nothing left over for gc either

    # the next save works and becomes the latest
    nxt = mgr.save(3, model=nn.Linear(2, 2))
    assert [v.step for v in backend.manager().list()] == [1, 3]
    assert sorted(version_folders(backend, mgr)) == sorted([good.version, nxt.version])


def test_failed_async_save_leaves_nothing_and_is_reported(backend):
    mgr = backend.manager(async_save=True)
    net = nn.Linear(2, 2)
    net.hook = lambda x: x
    with pytest.raises(Exception, match="lambda"):
        mgr.save(1, model=net, whole_model=True)
    ok = mgr.save(2, model=nn.Linear(2, 2))
    mgr.wait()
    assert [v.version for v in backend.manager().list()] == [ok.result().version]
    mgr.close()


# ----- integrity ---------------------------------------------------------------------------------
def test_checksum_mismatch_names_file_expected_actual(backend):
    mgr = backend.manager()
    info = mgr.save(1, w=torch.ones(1024))
    flip_one_float(backend, info)
    fs, folder = fs_of(backend, info.url)
    actual = f"xxh3_128:{xxhash.xxh3_128_hexdigest(fs.cat_file(f'{folder}/state.pt'))}"
    expected = info.files["state.pt"]["checksum"]
    assert actual != expected

    for call in (lambda: mgr.restore(), lambda: backend.manager().load(), lambda: mgr.restore(w=torch.zeros(1024))):
        with pytest.raises(ChecksumMismatchError) as err:
            call()
        e = err.value
        assert isinstance(e, CheckpointError)
        assert e.file.endswith(f"{info.version}/state.pt")
        assert e.expected == expected and e.actual == actual
        for part in (info.version, "state.pt", expected, actual):
            assert part in str(e)

    # verify=False skips the check: the flipped value comes through
    w = mgr.load(verify=False)["w"]
    assert (w != 1.0).sum() == 1 and (w == 1.5).sum() == 1
    target = torch.zeros(1024)
    mgr.restore(w=target, verify=False)
    assert (target == 1.5).sum() == 1

    report = mgr.verify()
    assert not report.ok and report.checked == [info.version]
    assert report.problems[0][0] == info.version and "state.pt" in report.problems[0][1]


def test_truncated_file_is_a_checksum_mismatch(backend):
    mgr = backend.manager()
    info = mgr.save(1, w=torch.ones(1024))
    fs, folder = fs_of(backend, info.url)
    data = fs.cat_file(f"{folder}/state.pt")
    fs.pipe_file(f"{folder}/state.pt", data[: len(data) // 2])
    with pytest.raises(ChecksumMismatchError, match="bytes") as err:
        mgr.restore()
    assert err.value.file.endswith("state.pt")
    assert not mgr.verify(info).ok


def test_fallback_restores_newest_older_good_version(backend):
    mgr = backend.manager()
    good = mgr.save(1, w=torch.full((256,), 2.0))
    middle = mgr.save(2, w=torch.ones(256))
    newest = mgr.save(3, w=torch.ones(256))
    flip_one_float(backend, middle)
    fs, folder = fs_of(backend, newest.url)
    fs.rm(f"{folder}/state.pt")  # the preemption case: data missing

    with pytest.raises(ChecksumMismatchError, match="no such file") as err:
        mgr.restore()  # no fallback: the failure surfaces, naming the lost file
    assert err.value.file.endswith(f"{newest.version}/state.pt")
    target = torch.zeros(256)
    with pytest.warns(UserWarning) as record:
        ckpt = mgr.restore(w=target, fallback=True)
    assert ckpt.info == good and ckpt.step == 1
    assert torch.equal(target, torch.full((256,), 2.0))
    text = " ".join(str(r.message) for r in record)
    assert newest.version in text and middle.version in text

    # from an explicit selector, older versions only
    with pytest.warns(UserWarning):
        assert mgr.restore(middle, fallback=True).info == good
    # a good chosen version restores without any warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mgr.restore(good, fallback=True).info == good

    # nothing usable at all
    flip_one_float(backend, good, value=2.0)
    with pytest.warns(UserWarning), pytest.raises(CheckpointNotFoundError):
        mgr.restore(fallback=True)


# ----- malicious pickle --------------------------------------------------------------------------
class Evil:
    """Unpickling this creates a folder: the stand-in for arbitrary code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _plant_version(backend, mgr, vid: str, payload) -> None:
    """Write a complete, consistent version by hand (as an attacker with write access could)."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    record = {
        "id": vid,
        "step": 9,
        "epoch": None,
        "created_at": "2099-01-01T00:00:00Z",
        "format": "torch",
        "files": {"state.pt": {"size": len(data), "checksum": f"xxh3_128:{xxhash.xxh3_128_hexdigest(data)}"}},
        "size_bytes": len(data),
        "metrics": {},
        "tags": [],
        "torch_version": torch.__version__,
        "objects": ["model"],
    }
    fs, root = fs_of(backend, mgr.root_url)
    fs.makedirs(f"{root}/versions/{vid}", exist_ok=True)
    fs.pipe_file(f"{root}/versions/{vid}/state.pt", data)
    fs.pipe_file(f"{root}/versions/{vid}/meta.json", json.dumps(record).encode())


def test_malicious_pickle_refused_and_never_runs(backend, tmp_path):
    marker = str(tmp_path / "pwned")
    mgr = backend.manager()
    good = mgr.save(1, model=nn.Linear(2, 2))
    vid = "20990101T000000.000000Z-step000009-evil00"
    _plant_version(backend, mgr, vid, {"torchckpt": 1, "objects": {"model": Evil(marker)}, "extra": {}, "rng": {}})
    assert [v.version for v in mgr.repair()] == [good.version, vid]
    assert mgr.latest().version == vid

    calls = [
        lambda: mgr.restore(),
        lambda: mgr.restore(model=nn.Linear(2, 2)),
        lambda: mgr.load(vid),
        lambda: mgr.restore(fallback=True),  # unsafe is never silently skipped
        lambda: backend.manager().restore(verify=False),
    ]
    for call in calls:
        with pytest.raises(UnsafeCheckpointError) as err:
            call()
        msg = str(err.value)
        assert "mkdir" in msg  # the offending global (posix.mkdir)
        assert "trust_pickle" in msg
        assert not os.path.exists(marker)
    assert isinstance(err.value, CheckpointError)

    # the opt-in really is what stands between the file and its code
    mgr.restore(trust_pickle=True)
    assert os.path.exists(marker)


def test_tampered_state_file_with_pickle_refused(backend, tmp_path):
    """Swapped in under a good record: the checksum catches it; without verify, the allowlist does."""
    marker = str(tmp_path / "pwned")
    mgr = backend.manager()
    info = mgr.save(1, model=nn.Linear(2, 2))
    buf = io.BytesIO()
    torch.save({"torchckpt": 1, "objects": {"model": Evil(marker)}, "extra": {}, "rng": {}}, buf)
    fs, folder = fs_of(backend, info.url)
    fs.pipe_file(f"{folder}/state.pt", buf.getvalue())
    with pytest.raises(ChecksumMismatchError):
        mgr.restore()
    with pytest.raises(UnsafeCheckpointError, match="trust_pickle"):
        mgr.restore(verify=False)
    assert not os.path.exists(marker)


def test_whole_model_needs_trust_pickle(backend):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(128, 16), nn.ReLU(), nn.Linear(16, 1))
    mgr = backend.manager()
    info = mgr.save(1, model=net, whole_model=True)
    assert "module.pt" in info.files and info.size_bytes == sum(f["size"] for f in info.files.values())
    with pytest.raises(UnsafeCheckpointError, match="trust_pickle"):
        backend.manager().load_model()
    loaded = backend.manager().load_model(trust_pickle=True)
    assert isinstance(loaded, nn.Sequential)
    x = torch.randn(3, 128)
    assert torch.equal(loaded(x), net(x))
    # the weights alone still restore safely, without trust_pickle
    fresh = nn.Sequential(nn.Linear(128, 16), nn.ReLU(), nn.Linear(16, 1))
    mgr.restore(model=fresh)
    assert torch.equal(fresh(x), net(x))
    # load_model on a weights-only version is a clear error
    mgr.save(2, model=net)
    with pytest.raises(CheckpointError, match="whole_model"):
        mgr.load_model(trust_pickle=True)
    assert isinstance(mgr.load_model(1, trust_pickle=True), nn.Sequential)


def test_whole_model_async(backend):
    net = nn.Linear(4, 2)
    with backend.manager() as mgr:
        fut = mgr.save(1, model=net, whole_model=True, blocking=False)
    assert "module.pt" in fut.result().files
    loaded = backend.manager().load_model(trust_pickle=True)
    assert torch.equal(loaded.weight, net.weight)


def test_corrupt_module_file_caught(backend):
    mgr = backend.manager()
    info = mgr.save(1, model=nn.Linear(4, 2), whole_model=True)
    fs, folder = fs_of(backend, info.url)
    data = bytearray(fs.cat_file(f"{folder}/module.pt"))
    data[len(data) // 2] ^= 0xFF
    fs.pipe_file(f"{folder}/module.pt", bytes(data))
    with pytest.raises(ChecksumMismatchError, match="module.pt"):
        mgr.load_model(trust_pickle=True)


# ----- read-only ----------------------------------------------------------------------------------
def test_read_only_refuses_every_write(backend):
    writer = backend.manager()
    a = writer.save(1, w=torch.zeros(1), metrics={"m": 1.0})
    b = writer.save(2, w=torch.ones(1), metrics={"m": 0.5})
    fs, root = fs_of(backend, writer.root_url)
    manifest_before = fs.cat_file(f"{root}/manifest.json")

    ro = backend.manager(read_only=True, retention=RetentionPolicy(keep_last=1))
    writes = {
        "save": lambda: ro.save(3, w=torch.zeros(1)),
        "save_async": lambda: ro.save(3, w=torch.zeros(1), blocking=False),
        "delete": lambda: ro.delete(a),
        "pin": lambda: ro.pin(a),
        "unpin": lambda: ro.unpin(a),
        "prune": lambda: ro.prune(),
        "prune_policy": lambda: ro.prune(RetentionPolicy(keep_last=1)),
        "gc": lambda: ro.gc(older_than=0),
        "repair": lambda: ro.repair(),
        "export_torchscript": lambda: ro.export_torchscript(nn.Linear(1, 1)),
        "export_program": lambda: ro.export_program(nn.Linear(1, 1), (torch.zeros(1, 1),)),
    }
    for call in writes.values():
        with pytest.raises(ReadOnlyError, match="read-only"):
            call()
    assert isinstance(ReadOnlyError("x"), CheckpointError)

    # reads all work, and nothing changed
    assert ro.list() == [a, b] and ro.latest() == b and ro.best("m") == b and ro.info(1) == a
    assert torch.equal(ro.load()["w"], torch.ones(1))
    assert ro.restore(a).step == 1
    assert ro.verify().ok
    assert [v.version for v in ro.prune(dry_run=True)] == [a.version]
    assert fs.cat_file(f"{root}/manifest.json") == manifest_before
    assert version_folders(backend, writer) == sorted([a.version, b.version])
