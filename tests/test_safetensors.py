"""format="safetensors": per-object .safetensors files other tools read, tied weights, checksums, summaries."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load as st_load
from safetensors.torch import load_file

from torchckpt import CheckpointManager, ChecksumMismatchError
from torchckpt.formats import safetensors_file as stf
from torchckpt.summary import tensor_summary


class TiedLM(nn.Module):
    """A tiny language model whose output layer shares the embedding matrix (like GPT-2)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(12, 6)
        self.body = nn.Linear(6, 6)
        self.head = nn.Linear(6, 12, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(self.emb(x))))


def _trained(seed: int = 0) -> tuple[TiedLM, torch.optim.Optimizer, Any]:
    torch.manual_seed(seed)
    model = TiedLM()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(2):
        model(torch.tensor([1, 2, 3])).sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return model, opt, sched


def _file_tensors(mgr: CheckpointManager, version: str, name: str) -> dict[str, torch.Tensor]:
    """Read a stored file with the safetensors library itself (no torchckpt code involved)."""
    rel = f"versions/{version}/{name}"
    if mgr.storage.kind == "local":
        return load_file(mgr.storage.path(rel))
    return st_load(mgr.storage.read_bytes(rel))


def test_round_trip_every_backend(backend: Any) -> None:
    model, opt, sched = _trained()
    mgr = backend.manager(format="safetensors")
    info = mgr.save(
        7, model=model, optimizer=opt, scheduler=sched, extra={"note": "x", "t": torch.arange(3)}, metrics={"loss": 0.5}
    )
    assert info.format == "safetensors"
    assert set(info.files) == {"state.pt", "model.safetensors", "optimizer.safetensors"}

    # Other tools read model.safetensors directly, with the module's own state_dict keys.
    tensors = _file_tensors(mgr, info.version, "model.safetensors")
    expected = model.state_dict()
    assert set(tensors) == set(expected) - {"head.weight"}  # the tied copy is stored once
    for key, value in tensors.items():
        assert torch.equal(value, expected[key])
    opt_tensors = _file_tensors(mgr, info.version, "optimizer.safetensors")
    assert "state.0.exp_avg" in opt_tensors

    fresh, fresh_opt, fresh_sched = _trained(seed=1)
    ckpt = backend.manager(format="safetensors", read_only=True).restore(
        model=fresh, optimizer=fresh_opt, scheduler=fresh_sched
    )
    assert ckpt.step == 7 and ckpt.extra["note"] == "x" and torch.equal(ckpt.extra["t"], torch.arange(3))
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    assert fresh.head.weight is fresh.emb.weight  # the model's own tie survives restore
    saved_opt, got_opt = opt.state_dict(), fresh_opt.state_dict()
    assert saved_opt["param_groups"] == got_opt["param_groups"]
    for pid, st in saved_opt["state"].items():
        for k, v in st.items():
            assert torch.equal(v, got_opt["state"][pid][k]), (pid, k)
    assert fresh_sched.state_dict() == sched.state_dict()
    assert mgr.verify().ok
    # A manager opened with the default format reads it too: the format is per version.
    assert torch.equal(backend.manager().load()["model"]["body.bias"], model.body.bias)


def test_tied_weights_stored_once_and_retied_on_load(local_backend: Any) -> None:
    model, _, _ = _trained()
    mgr = local_backend.manager(format="safetensors")
    info = mgr.save(1, model=model)
    path = mgr.storage.path(f"versions/{info.version}/model.safetensors")
    with safe_open(path, framework="pt") as f:
        assert sorted(f.keys()) == ["body.bias", "body.weight", "emb.weight"]
        meta = f.metadata()
    assert meta["format"] == "pt"
    assert json.loads(meta["torchckpt.aliases"]) == {"head.weight": "emb.weight"}

    state = mgr.load()["model"]
    assert state["head.weight"] is state["emb.weight"]  # re-tied: one tensor under both names
    assert list(state) == list(model.state_dict())  # key order as saved

    # A model without tying code still loads (both names get the shared values).
    untied = nn.ModuleDict({"emb": nn.Embedding(12, 6), "body": nn.Linear(6, 6), "head": nn.Linear(6, 12, bias=False)})
    untied.load_state_dict(state)
    assert torch.equal(untied["head"].weight, model.emb.weight)
    # A Hugging Face style loader reading the file alone sees the tied key missing and re-ties itself.
    missing, unexpected = TiedLM().load_state_dict(load_file(path), strict=False)
    assert missing == ["head.weight"] and unexpected == []


def test_state_pt_holds_placeholders_not_tensor_data(local_backend: Any) -> None:
    model, opt, _ = _trained()
    mgr = local_backend.manager(format="safetensors")
    info = mgr.save(1, model=model, optimizer=opt)
    skeleton = torch.load(mgr.storage.path(f"versions/{info.version}/state.pt"), weights_only=True)

    def tensors_in(value: Any) -> int:
        if isinstance(value, torch.Tensor):
            return 1
        if isinstance(value, dict):
            return sum(tensors_in(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return sum(tensors_in(v) for v in value)
        return 0

    assert tensors_in(skeleton["objects"]) == 0
    assert skeleton["objects"]["model"]["body.weight"][stf.PLACEHOLDER] == "body.weight"
    assert skeleton["objects"]["optimizer"]["param_groups"] == opt.state_dict()["param_groups"]


def test_dtypes_shapes_and_views(memory_backend: Any) -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    state = {
        "bf16": torch.randn(3, 5).to(torch.bfloat16),
        "f16": torch.randn(2).half(),
        "f64": torch.randn(2, 2, dtype=torch.float64),
        "i64": torch.tensor([1, -2, 3]),
        "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 4),
        "transposed": base.t(),  # non-contiguous view: stored contiguous, values equal
        "row": base[1],  # partial overlap with "base": an independent copy
        "base": base,
        "complex128": torch.randn(2, dtype=torch.complex128),  # not a safetensors dtype: stays in state.pt
    }
    mgr = memory_backend.manager(format="safetensors")
    info = mgr.save(1, stuff=state, weights=torch.ones(2, 3))
    got = mgr.load(map_location="cpu")
    for key, value in state.items():
        assert got["stuff"][key].dtype == value.dtype, key
        assert torch.equal(got["stuff"][key], value), key
    assert torch.equal(got["weights"], torch.ones(2, 3))
    tensors = _file_tensors(mgr, info.version, "stuff.safetensors")
    assert "complex128" not in tensors and torch.equal(tensors["transposed"], base.t())
    assert set(_file_tensors(mgr, info.version, "weights.safetensors")) == {"weights"}
    # Loaded tensors are writable (restore may copy into them or train on them).
    got["stuff"]["base"].add_(1)


def test_checksum_mismatch_detected(local_backend: Any) -> None:
    model, _, _ = _trained()
    mgr = local_backend.manager(format="safetensors")
    info = mgr.save(1, model=model)
    path = mgr.storage.path(f"versions/{info.version}/model.safetensors")
    with open(path, "r+b") as f:
        f.seek(-3, 2)
        byte = f.read(1)
        f.seek(-3, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ChecksumMismatchError) as exc:
        mgr.restore(model=TiedLM())
    assert "model.safetensors" in str(exc.value)
    report = mgr.verify()
    assert not report.ok and "model.safetensors" in report.problems[0][1]
    mgr.load(verify=False)  # the opt-out reads the damaged bytes anyway
    # A truncated file is a size mismatch, also named.
    with open(path, "r+b") as f:
        f.truncate(100)
    with pytest.raises(ChecksumMismatchError, match="model.safetensors"):
        mgr.load()


def test_map_location(memory_backend: Any) -> None:
    mgr = memory_backend.manager(format="safetensors")
    mgr.save(1, model=nn.Linear(3, 2))
    assert mgr.load(map_location="meta")["model"]["weight"].device.type == "meta"
    assert mgr.load(map_location=torch.device("meta"))["model"]["bias"].is_meta
    assert mgr.load(map_location={"cpu": "meta"})["model"]["weight"].is_meta
    seen: list[str] = []

    def where(storage: Any, location: str) -> Any:
        seen.append(location)
        return storage

    assert mgr.load(map_location=where)["model"]["weight"].device.type == "cpu"
    assert seen and set(seen) == {"cpu"}
    # The default never fails for a device this machine lacks: such tensors land on the CPU.
    t = torch.ones(2)
    assert stf.place(t, "cuda:7", None).device.type == ("cuda" if torch.cuda.device_count() > 7 else "cpu")
    assert stf.place(t, "cuda:7", {"cuda:7": "cpu"}).device.type == "cpu"


def test_show_summary_reads_headers_only(backend: Any, monkeypatch: Any) -> None:
    model, opt, _ = _trained()
    torch_mgr = backend.sub("torch").manager()
    st_mgr = backend.sub("st").manager(format="safetensors")
    torch_mgr.save(1, model=model, optimizer=opt)
    st_mgr.save(1, model=model, optimizer=opt)

    def no_data(*_: Any, **__: Any) -> None:
        raise AssertionError("summary must not read tensor data")

    monkeypatch.setattr(stf, "read_file", no_data)
    rows = tensor_summary(st_mgr)
    assert rows == tensor_summary(torch_mgr)
    by_name = {r.name: r for r in rows}
    assert by_name["model.emb.weight"].shape == (12, 6) and by_name["model.emb.weight"].dtype == "float32"
    assert by_name["model.head.weight"].shape == (12, 6)  # aliases are listed under their own name
    assert "optimizer.state.0.exp_avg" in by_name


def test_bad_object_names_and_reserved_keys(memory_backend: Any) -> None:
    mgr = memory_backend.manager(format="safetensors")
    with pytest.raises(ValueError, match="object name"):
        mgr.save(1, **{"../escape": torch.ones(1)})
    with pytest.raises(ValueError, match="object name"):
        mgr.save(1, **{".hidden": torch.ones(1)})
    with pytest.raises(ValueError, match="reserved"):
        mgr.save(1, d={stf.PLACEHOLDER: "x", "t": torch.ones(1)})
    assert mgr.list() == []


def test_async_save(memory_backend: Any) -> None:
    model, opt, _ = _trained()
    with memory_backend.manager(format="safetensors", async_save=True) as mgr:
        fut = mgr.save(3, model=model, optimizer=opt)
        info = fut.result(timeout=60)
    fresh = TiedLM()
    memory_backend.manager().restore(info.version, model=fresh)
    assert torch.equal(fresh.body.weight, model.body.weight)
    assert torch.equal(fresh.head.weight, model.emb.weight)


def test_large_file_on_s3_uses_ranged_fetch(s3_backend: Any, monkeypatch: Any) -> None:
    """Files of 8 MiB and more come from S3 straight into one buffer; checksums still apply."""
    from torchckpt.storage import s3_transfer

    fetched: list[str] = []
    real_fetch = s3_transfer.fetch

    def spy(fs: Any, path: str, size: int, **kw: Any) -> Any:
        fetched.append(path)
        return real_fetch(fs, path, size, **kw)

    monkeypatch.setattr(s3_transfer, "fetch", spy)
    big = torch.randn(2304, 1024)  # 9 MiB
    mgr = s3_backend.manager(format="safetensors")
    info = mgr.save(1, model={"big": big, "small": torch.ones(3)})
    assert info.files["model.safetensors"]["size"] > 8 << 20
    got = mgr.load()["model"]
    assert torch.equal(got["big"], big) and torch.equal(got["small"], torch.ones(3))
    assert any(p.endswith("model.safetensors") for p in fetched)
    rel = f"versions/{info.version}/model.safetensors"
    data = bytearray(mgr.storage.read_bytes(rel))
    data[-5] ^= 0xFF
    mgr.storage.fs.pipe_file(mgr.storage.path(rel), bytes(data))
    with pytest.raises(ChecksumMismatchError, match="model.safetensors"):
        mgr.load()
    mgr.storage.fs.pipe_file(mgr.storage.path(rel), bytes(data[: 1 << 20]))
    with pytest.raises(ChecksumMismatchError, match="model.safetensors"):
        mgr.load()


def test_local_read_is_a_private_map_that_training_may_write(tmp_path: Any) -> None:
    """Restored tensors view the file's pages (no read copy) yet writes to them never reach the file."""
    model, opt, _ = _trained()
    mgr = CheckpointManager(tmp_path / "ck", format="safetensors")
    info = mgr.save(1, model=model, optimizer=opt)
    state = mgr.load()
    exp_avg = state["optimizer"]["state"][0]["exp_avg"]
    saved = exp_avg.clone()
    exp_avg.add_(1.0)  # what an optimizer step does to a restored state: must not crash nor touch the file
    exp_avg.zero_()
    assert mgr.verify(info.version).ok
    assert torch.equal(mgr.load()["optimizer"]["state"][0]["exp_avg"], saved)


def test_local_mapped_read_still_detects_a_flipped_byte(tmp_path: Any) -> None:
    model, opt, _ = _trained()
    mgr = CheckpointManager(tmp_path / "ck", format="safetensors")
    info = mgr.save(1, model=model, optimizer=opt)
    path = tmp_path / "ck" / "versions" / info.version / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError):
        mgr.restore(model=TiedLM())
