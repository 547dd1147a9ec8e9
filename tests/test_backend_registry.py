"""Adding a storage backend is one new file plus one ``register_backend`` line."""

from __future__ import annotations

import threading
import uuid
import warnings
from typing import Any

import fsspec
import pytest
import torch

from counting_backend import PROTOCOL, CountingMemoryFS, CountingStorage
from torchckpt import CheckpointManager, RetentionPolicy, SingleWriterWarning
from torchckpt.storage import GenericStorage, backend_for, register_backend


@pytest.fixture(scope="module", autouse=True)
def _registered() -> Any:
    fsspec.register_implementation(PROTOCOL, CountingMemoryFS, clobber=True)
    register_backend((PROTOCOL,), CountingStorage)  # the registry line
    yield


def test_registered_backend_is_used_for_its_protocol() -> None:
    CountingStorage.calls.clear()
    root = f"{PROTOCOL}://run-{uuid.uuid4().hex[:8]}"
    net = torch.nn.Linear(3, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SingleWriterWarning)  # multi-writer safe: no warning
        mgr = CheckpointManager(root, retention=RetentionPolicy(keep_last=2))
    assert isinstance(mgr.storage, CountingStorage)
    assert mgr.root_url == root.replace("://", ":///") or mgr.root_url.startswith(f"{PROTOCOL}://")
    for step in range(4):
        mgr.save(step, model=net, metrics={"loss": float(step)})
    assert [v.step for v in mgr.list()] == [2, 3]
    fresh = torch.nn.Linear(3, 2)
    mgr.restore(model=fresh)
    assert torch.equal(fresh.weight, net.weight)
    assert mgr.verify().ok
    # every manifest update went through the backend's own compare-and-swap
    assert CountingStorage.calls["write_conditional"] == 4
    assert CountingStorage.calls["read_versioned"] >= 4
    assert CountingStorage.calls["open_write"] >= 4  # data files through the backend's writer


def test_backend_cas_keeps_concurrent_writers(tmp_path: Any) -> None:
    CountingStorage.calls.clear()
    root = f"{PROTOCOL}://race-{uuid.uuid4().hex[:8]}"
    net = torch.nn.Linear(2, 2)
    errors: list[BaseException] = []

    def writer(offset: int) -> None:
        try:
            mgr = CheckpointManager(root)
            for i in range(10):
                mgr.save(offset + i, model=net)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k * 100,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(CheckpointManager(root).list()) == 30  # no manifest update lost


def test_unknown_protocols_get_the_generic_backend_with_a_warning(tmp_path: Any) -> None:
    assert backend_for(("no-such-protocol",)) is GenericStorage
    fs = fsspec.filesystem("dir", path=str(tmp_path), fs=fsspec.filesystem("file"))
    with pytest.warns(SingleWriterWarning, match="concurrent writers"):
        mgr = CheckpointManager("run", filesystem=fs)
    assert isinstance(mgr.storage, GenericStorage)
    net = torch.nn.Linear(2, 2)
    mgr.save(1, model=net)
    fresh = torch.nn.Linear(2, 2)
    mgr.restore(model=fresh)
    assert torch.equal(fresh.weight, net.weight)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SingleWriterWarning)
        CheckpointManager("run", filesystem=fs, read_only=True)  # readers are not warned
