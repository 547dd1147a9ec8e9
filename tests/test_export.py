"""Exports: artifacts match the chosen version (not the live model), on every backend, safely loaded."""

from __future__ import annotations

import copy
import io
import json
import os
import pickle
import warnings
import zipfile
from typing import Any

import pytest
import torch
import torch.nn as nn

import torchckpt
from torchckpt import ChecksumMismatchError, RetentionPolicy, UnsafeCheckpointError
from torchckpt.errors import CheckpointError, CheckpointNotFoundError, ReadOnlyError


def _net() -> nn.Module:
    # Batch norm and dropout make train/eval mode visible in the outputs.
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 2))


def _perturb(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g))
        model[1].running_mean.add_(torch.randn(16, generator=g))


X = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))


def _reference(state: dict[str, torch.Tensor]) -> torch.Tensor:
    ref = _net()
    ref.load_state_dict(state)
    with torch.no_grad():
        return ref.eval()(X)


@pytest.fixture
def history(backend: Any) -> tuple[Any, nn.Module, list[Any], list[dict[str, torch.Tensor]]]:
    """Two saved versions with different weights, and a live model that differs from both."""
    torch.manual_seed(0)
    model = _net()
    mgr = backend.manager()
    infos, states = [], []
    for step, loss in [(1, 0.2), (2, 0.9)]:
        _perturb(model, step)
        states.append(copy.deepcopy(model.state_dict()))
        infos.append(mgr.save(step, model=model, metrics={"loss": loss}))
    _perturb(model, 3)
    return mgr, model, infos, states


@pytest.mark.parametrize("method", ["script", "trace"])
def test_torchscript_matches_chosen_version(backend: Any, history: Any, method: str) -> None:
    mgr, model, infos, states = history
    with torch.no_grad():
        live = model.eval()(X)
    model.train()
    url = mgr.export_torchscript(model, version=infos[0].version, method=method, example_inputs=X)
    assert url == mgr.storage.url(f"exports/{infos[0].version}/model.pt")
    assert model.training and all(m.training for m in model.modules())  # modes given back
    for key, value in states[0].items():  # restore semantics: the model now holds that version
        assert torch.equal(model.state_dict()[key], value), key

    loaded = torchckpt.load_torchscript(url, storage_options=backend.storage_options or None)
    assert not loaded.training
    with torch.no_grad():
        out = loaded(X)
    torch.testing.assert_close(out, _reference(states[0]))
    assert not torch.allclose(out, live)
    assert not torch.allclose(out, _reference(states[1]))

    record = backend.manager(read_only=True).info(infos[0].version).exports["model.pt"]
    assert record["kind"] == "torchscript" and record["method"] == method
    assert record["size"] == mgr.storage.size(f"exports/{infos[0].version}/model.pt")
    assert record["checksum"].startswith("xxh3_128:") and record["created_at"].endswith("Z")
    assert backend.manager().info(infos[1].version).exports == {}


def test_program_round_trip(backend: Any, history: Any) -> None:
    mgr, model, infos, states = history
    url = mgr.export_program(model, (X,), version=mgr.best("loss"))  # version 1 (a CheckpointInfo selector)
    assert f"exports/{infos[0].version}/model.pt2" in url
    loaded = torchckpt.load_program(url, storage_options=backend.storage_options or None)
    assert not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), _reference(states[0]))
    assert mgr.info(infos[0].version).exports["model.pt2"]["kind"] == "program"
    # torch.export's own loader reads the artifact too.
    data = mgr.storage.read_bytes(f"exports/{infos[0].version}/model.pt2")
    assert isinstance(torch.export.load(io.BytesIO(data)), torch.export.ExportedProgram)


def test_no_failure_under_deprecation_errors(memory_backend: Any) -> None:
    """torch 2.13 deprecates torch.jit; our own calls must not break -W error::DeprecationWarning."""
    mgr = memory_backend.manager()
    model = _net()
    mgr.save(1, model=model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        url = mgr.export_torchscript(model)
        traced = mgr.export_torchscript(model, name="traced.pt", method="trace", example_inputs=(X,))
        torchckpt.load_torchscript(url)
        torchckpt.load_torchscript(traced, map_location="cpu")
        prog = mgr.export_program(model, X)
        torchckpt.load_program(prog, map_location="cpu")
        # ...and the user's own filters are untouched: their torch.jit call still raises.
        with pytest.raises(DeprecationWarning):
            torch.jit.script(_net())


def test_pruning_and_deleting_remove_exports(memory_backend: Any) -> None:
    mgr = memory_backend.manager()
    model = _net()
    first = mgr.save(1, model=model)
    second = mgr.save(2, model=model)
    mgr.export_torchscript(model, first.version)
    mgr.export_program(model, (X,), first.version)
    mgr.export_torchscript(model, second.version, name="serving.pt")
    assert set(mgr.info(first.version).exports) == {"model.pt", "model.pt2"}
    assert mgr.storage.list_names(f"exports/{first.version}") == ["model.pt", "model.pt2"]

    mgr.save(3, model=model)
    removed = mgr.prune(RetentionPolicy(keep_last=1))
    assert {v.version for v in removed} == {first.version, second.version}
    assert mgr.storage.list_names(f"exports/{first.version}") == []
    assert not mgr.storage.exists(f"exports/{second.version}/serving.pt")
    assert mgr.gc(older_than=0) == []  # nothing left behind


def test_delete_removes_exports(local_backend: Any) -> None:
    mgr = local_backend.manager()
    model = _net()
    info = mgr.save(1, model=model)
    mgr.save(2, model=model)
    url = mgr.export_torchscript(model, info.version)
    assert os.path.exists(url.replace("file://", ""))
    mgr.delete(info.version)
    assert not os.path.exists(os.path.join(local_backend.url, "exports", info.version))


def test_reexport_replaces_and_records(memory_backend: Any) -> None:
    mgr = memory_backend.manager()
    model = _net()
    info = mgr.save(1, model=model)
    mgr.export_torchscript(model)
    first = mgr.info(info.version).exports["model.pt"]
    mgr.export_torchscript(model, method="trace", example_inputs=X)
    second = mgr.info(info.version).exports["model.pt"]
    assert second["method"] == "trace" and second["checksum"] != first["checksum"]
    assert mgr.storage.size(f"exports/{info.version}/model.pt") == second["size"]


def test_tampered_artifact_is_detected(local_backend: Any) -> None:
    mgr = local_backend.manager()
    model = _net()
    mgr.save(1, model=model)
    url = mgr.export_torchscript(model)
    path = url.replace("file://", "")
    with open(path, "ab") as f:
        f.write(b"junk")
    with pytest.raises(ChecksumMismatchError, match="model.pt"):
        torchckpt.load_torchscript(url)
    # verify=False skips the check (zip readers tolerate the trailing bytes).
    torchckpt.load_torchscript(path, verify=False)


def test_errors(memory_backend: Any) -> None:
    mgr = memory_backend.manager()
    model = _net()
    with pytest.raises(CheckpointNotFoundError):
        mgr.export_torchscript(model)
    mgr.save(1, model=model, other=torch.ones(1))
    with pytest.raises(ValueError, match="example_inputs"):
        mgr.export_torchscript(model, method="trace")
    with pytest.raises(ValueError):
        mgr.export_torchscript(model, method="compile")
    with pytest.raises(ValueError, match="export name"):
        mgr.export_torchscript(model, name="../evil.pt")
    with pytest.raises(ReadOnlyError):
        memory_backend.manager(read_only=True).export_torchscript(model)
    with pytest.raises(CheckpointError, match="object_name"):
        mgr.save(2, net=model, other=torch.ones(1))
        mgr.export_torchscript(model)
    url = mgr.export_torchscript(model, object_name="net")
    with pytest.raises(TypeError, match="map_location"):
        torchckpt.load_torchscript(url, map_location={"cpu": "cpu"})


def test_version_removed_while_exporting(memory_backend: Any) -> None:
    from torchckpt import export

    mgr = memory_backend.manager()
    model = _net()
    info = mgr.save(1, model=model)
    mgr.save(2, model=model)
    mgr.delete(info.version)
    with pytest.raises(CheckpointNotFoundError, match="removed"):
        export._export(mgr, info, "model.pt", "torchscript", lambda f: f.write(b"x"))
    assert not mgr.storage.exists(f"exports/{info.version}/model.pt")


def test_program_map_location(memory_backend: Any) -> None:
    mgr = memory_backend.manager()
    model = _net()
    mgr.save(1, model=model)
    url = mgr.export_program(model, (X,))
    on_meta = torchckpt.load_program(url, map_location="meta")
    assert all(p.is_meta for p in on_meta.parameters())


# ----- malicious artifacts must not run code ----------------------------------------------------------------
class _Evil:
    """Unpickling this creates a folder: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.mkdir, (self.marker,))


def _rewrite(data: bytes, change: Any) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            new = change(item.filename, src.read(item.filename))
            if new is not None:
                dst.writestr(item.filename, new)
    return out.getvalue()


def _program_bytes(mgr: Any) -> tuple[str, bytes]:
    model = _net()
    info = mgr.save(1, model=model)
    mgr.export_program(model, (X,))
    return info.version, mgr.storage.read_bytes(f"exports/{info.version}/model.pt2")


def test_malicious_program_archives_are_refused(memory_backend: Any, tmp_path: Any) -> None:
    mgr = memory_backend.manager()
    _, good = _program_bytes(mgr)
    marker = str(tmp_path / "pwned")
    evil = pickle.dumps(_Evil(marker))
    evil_torch = io.BytesIO()
    torch.save(_Evil(marker), evil_torch)

    def sample_inputs(name: str, content: bytes) -> bytes:
        return evil_torch.getvalue() if "sample_inputs" in name else content

    def pickled_weight(name: str, content: bytes) -> bytes:
        if name.endswith("model_weights_config.json"):
            cfg = json.loads(content)
            first = next(iter(cfg["config"].values()))
            first["use_pickle"] = True
            return json.dumps(cfg).encode()
        if name.endswith("data/weights/weight_0"):
            return evil
        return content

    variants = {
        "sample inputs that need full pickle": _rewrite(good, sample_inputs),
        "a weight stored as a pickle": _rewrite(good, pickled_weight),
    }
    with_so = io.BytesIO()
    with zipfile.ZipFile(with_so, "w") as dst:
        src = zipfile.ZipFile(io.BytesIO(good))
        for item in src.infolist():
            dst.writestr(item.filename, src.read(item.filename))
        dst.writestr("archive/data/aotinductor/model/model.so", b"\x7fELF")
    variants["an AOTInductor shared library"] = with_so.getvalue()
    legacy = io.BytesIO()
    with zipfile.ZipFile(legacy, "w") as dst:
        dst.writestr("version", b"8.0")
        dst.writestr("serialized_state_dict.pt", evil)
    variants["a legacy layout"] = legacy.getvalue()

    for what, data in variants.items():
        mgr.storage.write_bytes(f"outside/{what.replace(' ', '_')}.pt2", data)
        url = mgr.storage.url(f"outside/{what.replace(' ', '_')}.pt2")
        with pytest.raises(UnsafeCheckpointError, match="trust_pickle"):
            torchckpt.load_program(url)
        assert not os.path.exists(marker), what


def test_malicious_pickle_in_torchscript_does_not_run(memory_backend: Any, tmp_path: Any) -> None:
    mgr = memory_backend.manager()
    model = _net()
    info = mgr.save(1, model=model)
    mgr.export_torchscript(model)
    good = mgr.storage.read_bytes(f"exports/{info.version}/model.pt")
    marker = str(tmp_path / "pwned")
    evil = pickle.dumps(_Evil(marker), protocol=2)

    for target in ("data.pkl", "constants.pkl"):
        bad = _rewrite(good, lambda name, content, target=target: evil if name.endswith("/" + target) else content)
        mgr.storage.write_bytes(f"outside/{target}.pt", bad)
        with pytest.raises(Exception):
            torchckpt.load_torchscript(mgr.storage.url(f"outside/{target}.pt"))
        assert not os.path.exists(marker), target


def test_torchscript_saved_on_a_missing_device_loads_on_cpu(memory_backend: Any, monkeypatch: Any) -> None:
    """map_location=None: an archive from a GPU machine still loads on a CPU-only one (simulated)."""
    mgr = memory_backend.manager()
    model = _net()
    mgr.save(1, model=model)
    url = mgr.export_torchscript(model)
    real_load = torch.jit.load
    calls: list[Any] = []

    def gpu_archive(f: Any, map_location: Any = None, **kw: Any) -> Any:
        calls.append(map_location)
        if map_location is None:
            raise RuntimeError(
                "Attempting to deserialize object on a CUDA device but torch.cuda.is_available() is False"
            )
        return real_load(f, map_location=map_location, **kw)

    monkeypatch.setattr(torch.jit, "load", gpu_archive)
    loaded = torchckpt.load_torchscript(url)
    assert calls == [None, "cpu"] and not loaded.training

    def corrupt(f: Any, map_location: Any = None, **kw: Any) -> Any:
        raise RuntimeError("PytorchStreamReader failed reading zip archive")

    monkeypatch.setattr(torch.jit, "load", corrupt)  # other failures are reported, not retried
    with pytest.raises(CheckpointError, match="not a loadable TorchScript"):
        torchckpt.load_torchscript(url)
