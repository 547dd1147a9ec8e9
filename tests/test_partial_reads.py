"""Partial reads: ``restore(model=net)`` / ``load(objects=[...])`` read and verify only the named objects.

Versions of the torch format store each large object in ``<name>.state.pt`` (the
rest in ``state.pt``); safetensors versions already had ``<name>.safetensors``.
Versions written before (fixture from commit efad6af) keep loading, whole.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import Backend
from torchckpt import CheckpointManager, ChecksumMismatchError
from torchckpt.errors import MissingObjectError
from torchckpt.formats.torch_file import SPLIT_MIN

FIXTURE = Path(__file__).parent / "data" / "issue13" / "root-efad6af"


def _state(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A model of ~1.5 MiB and an Adam state twice that size (both above the split threshold)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(640, 600), torch.nn.Linear(600, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(2, 640)).sum().backward()
    opt.step()
    assert sum(p.numel() * 4 for p in model.parameters()) >= SPLIT_MIN
    return model, opt


def _fresh() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    return _state(seed=99)


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def _opened(monkeypatch: pytest.MonkeyPatch, mgr: CheckpointManager) -> list[str]:
    """Names of the data files the manager reads from now on."""
    seen: list[str] = []
    storage = mgr.storage
    for method in ("load_source", "map_read", "read_buffer", "read_bytes"):
        original = getattr(storage, method)

        def spy(rel: str, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            if rel.startswith("versions/"):
                seen.append(rel.rsplit("/", 1)[1])
            return _original(rel, *args, **kwargs)

        monkeypatch.setattr(storage, method, spy)
    return seen


@pytest.mark.parametrize("fmt", ["torch", "safetensors"])
def test_load_objects_reads_only_the_named_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    model, opt = _state()
    mgr = CheckpointManager(tmp_path / "ck", format=fmt)
    info = mgr.save(1, model=model, optimizer=opt)
    suffix = ".state.pt" if fmt == "torch" else ".safetensors"
    assert {"state.pt", f"model{suffix}", f"optimizer{suffix}"} <= set(info.files)
    seen = _opened(monkeypatch, mgr)
    got = mgr.load(objects=["model"])
    assert list(got) == ["model"]  # never another object's data
    assert not any(n.startswith("optimizer") for n in seen), seen
    for key, value in model.state_dict().items():
        assert torch.equal(got["model"][key], value)
    both = mgr.load(objects=["optimizer", "model"])
    assert set(both) == {"model", "optimizer"}
    assert torch.equal(both["optimizer"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    with pytest.raises(MissingObjectError, match="scheduler"):
        mgr.load(objects=["scheduler"])


@pytest.mark.parametrize("fmt", ["torch", "safetensors"])
def test_corrupt_unrequested_object_is_ignored_until_read(tmp_path: Path, fmt: str) -> None:
    model, opt = _state()
    mgr = CheckpointManager(tmp_path / "ck", format=fmt)
    info = mgr.save(1, model=model, optimizer=opt)
    folder = tmp_path / "ck" / "versions" / info.version
    _flip_last_byte(folder / ("optimizer.state.pt" if fmt == "torch" else "optimizer.safetensors"))
    net, _ = _fresh()
    ckpt = mgr.restore(model=net)  # the optimizer's file is never read
    for key, value in model.state_dict().items():
        assert torch.equal(net.state_dict()[key], value)
    assert "optimizer" in ckpt.state  # listed, not read yet
    with pytest.raises(ChecksumMismatchError, match="optimizer"):
        ckpt.state["optimizer"]  # reading it now verifies it
    with pytest.raises(ChecksumMismatchError, match="optimizer"):
        mgr.load(objects=["optimizer"])
    with pytest.raises(ChecksumMismatchError):
        mgr.restore(model=net, optimizer=_fresh()[1])
    assert torch.equal(mgr.load(objects=["model"])["model"]["0.weight"], model[0].weight)


@pytest.mark.parametrize("fmt", ["torch", "safetensors"])
def test_corrupt_requested_object_is_refused(tmp_path: Path, fmt: str) -> None:
    model, opt = _state()
    mgr = CheckpointManager(tmp_path / "ck", format=fmt)
    info = mgr.save(1, model=model, optimizer=opt)
    _flip_last_byte(
        tmp_path / "ck" / "versions" / info.version / ("model.state.pt" if fmt == "torch" else "model.safetensors")
    )
    with pytest.raises(ChecksumMismatchError, match="model"):
        mgr.restore(model=_fresh()[0])
    with pytest.raises(ChecksumMismatchError, match="model"):
        mgr.load(objects=["model"])
    got = mgr.load(objects=["optimizer"])  # the other object is intact and readable alone
    assert torch.equal(got["optimizer"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_unread_objects_stay_in_state_and_load_on_use(tmp_path: Path) -> None:
    model, opt = _state()
    mgr = CheckpointManager(tmp_path / "ck")
    mgr.save(1, model=model, optimizer=opt, sched={"last_epoch": 3})
    ckpt = mgr.restore(model=_fresh()[0])
    assert len(ckpt.state) == 3 and set(ckpt.state) == {"model", "optimizer", "sched"}
    assert ckpt.state["sched"] == {"last_epoch": 3}
    assert torch.equal(ckpt.state.get("optimizer")["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert ckpt.state.get("nothing") is None
    with pytest.raises(KeyError):
        ckpt.state["nothing"]
    assert set(dict(ckpt.state)) == {"model", "optimizer", "sched"}


def test_partial_restore_on_s3_fetches_only_the_model(s3_backend: Backend) -> None:
    model, opt = _state()
    mgr = s3_backend.manager()
    info = mgr.save(1, model=model, optimizer=opt)
    model_bytes = info.files["model.state.pt"]["size"]
    fetched: list[int] = []
    fs = mgr.storage.fs
    original = fs._call_s3

    async def counting(method: str, *args: Any, **kwargs: Any) -> Any:
        out = await original(method, *args, **kwargs)
        if method == "get_object" and not str(kwargs.get("Key", "")).endswith("manifest.json"):
            fetched.append(int(out.get("ContentLength", 0)))
        return out

    fs._call_s3 = counting
    try:
        net, _ = _fresh()
        mgr.restore(model=net)
    finally:
        fs._call_s3 = original
    assert torch.equal(net[0].weight, model[0].weight)
    assert fetched and sum(fetched) <= 1.1 * model_bytes, (sum(fetched), model_bytes, info.files)


@pytest.mark.parametrize("fmt", ["torch", "safetensors"])
def test_versions_of_the_previous_release_still_load(tmp_path: Path, fmt: str) -> None:
    import sys

    sys.path.insert(0, str(FIXTURE.parent))
    try:
        from make_fixture import build
    finally:
        sys.path.pop(0)
    root = tmp_path / "old"
    shutil.copytree(FIXTURE / fmt, root)
    model, opt = build()
    mgr = CheckpointManager(root)
    info = mgr.latest()
    assert info is not None and set(info.files) <= {"state.pt", "model.safetensors", "optimizer.safetensors"}
    assert mgr.verify().ok
    net = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
    ckpt = mgr.restore(model=net)
    for key, value in model.state_dict().items():
        assert torch.equal(net.state_dict()[key], value)
    assert torch.equal(ckpt.state["optimizer"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert list(mgr.load(objects=["optimizer"])) == ["optimizer"]
    full = mgr.load()
    assert set(full) == {"model", "optimizer"}
    assert os.path.isdir(root)
