"""Device remapping: a checkpoint written "on cuda:0" restores on this CPU-only machine.

We cannot write a real CUDA checkpoint without a GPU, so a ``register_package``
tagger labels every CPU storage ``cuda:0`` while saving: the bytes are then
exactly what a GPU run writes, and plain ``torch.load`` fails on them the way
users know.
"""

from __future__ import annotations

import io

import fsspec
import pytest
import torch
import torch.nn as nn
import torch.serialization as ts

CUDA_ERROR = "Attempting to deserialize object on a CUDA device"


def _registry_snapshot():
    return list(ts._package_registry)


class tagged_as:
    """Context manager: while active, torch.save labels CPU storages as ``location``."""

    def __init__(self, location: str) -> None:
        self.location = location

    def __enter__(self):
        self.saved = _registry_snapshot()
        location = self.location

        def tagger(storage):
            return location if storage.device.type == "cpu" else None

        def deserializer(obj, loc):  # never claims a storage: loading uses torch's own rules
            return None

        ts.register_package(0, tagger, deserializer)  # priority 0 runs before the CPU tagger (10)
        return self

    def __exit__(self, *exc):
        ts._package_registry[:] = self.saved  # torch has no unregister: put the list back


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(128, 16), nn.ReLU(), nn.Linear(16, 1))


def _read_state_file(backend, info) -> bytes:
    fs, folder = fsspec.core.url_to_fs(info.url, **backend.storage_options)
    return fs.cat_file(f"{folder}/state.pt")


@pytest.fixture(autouse=True)
def cpu_only(monkeypatch):
    """Behave as a CPU-only machine even where a GPU exists (this is what the tests reproduce)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def cuda_checkpoint(backend):
    """A version whose storages are all tagged cuda:0, plus the model it came from."""
    model = _model()
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 128)).sum().backward()
    opt.step()
    before = len(ts._package_registry)
    with tagged_as("cuda:0"):
        assert len(ts._package_registry) == before + 1
        info = backend.manager().save(7, model=model, optimizer=opt, extra={"ema": torch.ones(3)})
    assert len(ts._package_registry) == before  # cleanly unregistered
    return backend, info, model, opt


def test_tagger_is_removed_afterwards():
    with tagged_as("cuda:0"):
        buf = io.BytesIO()
        torch.save(torch.ones(2), buf)
    with pytest.raises(RuntimeError, match=CUDA_ERROR):
        torch.load(io.BytesIO(buf.getvalue()))
    buf = io.BytesIO()
    torch.save(torch.ones(2), buf)  # saving after the context is plain CPU again
    assert torch.equal(torch.load(io.BytesIO(buf.getvalue())), torch.ones(2))


def test_plain_torch_load_fails_on_the_cuda_checkpoint(cuda_checkpoint):
    backend, info, _, _ = cuda_checkpoint
    data = _read_state_file(backend, info)
    with pytest.raises(RuntimeError, match=CUDA_ERROR):
        torch.load(io.BytesIO(data))
    with pytest.raises(RuntimeError, match=CUDA_ERROR):
        torch.load(io.BytesIO(data), weights_only=False)


def test_restore_with_no_arguments_works(cuda_checkpoint):
    backend, info, model, opt = cuda_checkpoint
    mgr = backend.manager()
    ckpt = mgr.restore()  # no map_location, nothing given: everything lands on the CPU
    assert ckpt.info == info
    for key, value in model.state_dict().items():
        got = ckpt.state["model"][key]
        assert got.device.type == "cpu" and torch.equal(got, value)
    assert ckpt.extra["ema"].device.type == "cpu"

    torch.manual_seed(1)
    fresh = nn.Sequential(nn.Linear(128, 16), nn.ReLU(), nn.Linear(16, 1))
    fresh_opt = torch.optim.Adam(fresh.parameters())
    mgr.restore(model=fresh, optimizer=fresh_opt, restore_rng=True)
    for a, b in zip(fresh.parameters(), model.parameters()):
        assert torch.equal(a, b)
    assert fresh_opt.state_dict()["state"][0]["exp_avg"].device.type == "cpu"
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert mgr.load()["model"]["0.weight"].device.type == "cpu"


@pytest.mark.parametrize(
    "map_location",
    ["cpu", torch.device("cpu"), {"cuda:0": "cpu"}, lambda storage, location: storage],
    ids=["str", "device", "dict", "callable"],
)
def test_every_map_location_form(cuda_checkpoint, map_location):
    backend, info, model, _ = cuda_checkpoint
    mgr = backend.manager()
    state = mgr.load(map_location=map_location)
    assert torch.equal(state["model"]["2.bias"], model.state_dict()["2.bias"])
    assert state["model"]["2.bias"].device.type == "cpu"
    fresh = nn.Sequential(nn.Linear(128, 16), nn.ReLU(), nn.Linear(16, 1))
    mgr.restore(model=fresh, map_location=map_location)
    assert torch.equal(fresh[0].weight, model[0].weight)


def test_callable_map_location_sees_the_saved_device(local_backend):
    with tagged_as("cuda:0"):
        local_backend.manager().save(1, w=torch.ones(3))
    seen = []

    def to_cpu(storage, location):
        seen.append(location)
        return storage

    assert torch.equal(local_backend.manager().load(map_location=to_cpu)["w"], torch.ones(3))
    assert seen and set(seen) == {"cuda:0"}


@pytest.mark.parametrize("device", ["cuda:1", "cuda:3"])
def test_other_missing_devices_fall_back_to_cpu(local_backend, device):
    with tagged_as(device):
        local_backend.manager().save(1, w=torch.arange(5.0))
    state = local_backend.manager().load()
    assert state["w"].device.type == "cpu" and torch.equal(state["w"], torch.arange(5.0))


def test_whole_model_from_cuda_loads_on_cpu(local_backend):
    model = _model()
    with tagged_as("cuda:0"):
        local_backend.manager().save(1, model=model, whole_model=True)
    loaded = local_backend.manager().load_model(trust_pickle=True)
    assert isinstance(loaded, nn.Sequential)
    assert loaded[0].weight.device.type == "cpu" and torch.equal(loaded[0].weight, model[0].weight)


def test_cpu_checkpoint_stays_on_cpu_by_default(backend):
    mgr = backend.manager()
    mgr.save(1, w=torch.ones(2))
    assert mgr.load()["w"].device == torch.device("cpu")
    assert mgr.load(map_location=torch.device("cpu"))["w"].device == torch.device("cpu")
