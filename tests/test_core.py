"""The core round trip on every backend: training state, versions, records, RNG, managers.

Every test here runs on a local folder, ``memory://`` and S3 (moto) via ``backend``.
"""

from __future__ import annotations

import dataclasses
import json
import random
from datetime import datetime, timedelta, timezone

import fsspec
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import xxhash

from torchckpt import Checkpoint, CheckpointInfo
from torchckpt.errors import CheckpointError, ManifestError, MissingObjectError

# ----- the classic tutorial model ------------------------------------------------------------------
_GEN = torch.Generator().manual_seed(1234)
DATA_X = torch.randn(256, 128, generator=_GEN)
DATA_Y = DATA_X[:, :4].sum(dim=1, keepdim=True) + 0.1 * torch.randn(256, 1, generator=_GEN)


def make_training(seed: int):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(128, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    return model, opt, sched


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_step(model, opt, sched) -> float:
    """One step whose batch and loss weight draw on the torch, Python and NumPy RNGs."""
    idx = torch.randint(0, DATA_X.shape[0], (32,))
    weight = 1.0 + 0.01 * random.random() + 0.01 * float(np.random.rand())
    loss = weight * F.mse_loss(model(DATA_X[idx]), DATA_Y[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    return loss.item()


def params(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def fs_of(backend, url: str):
    """The backend's own fsspec filesystem and the path of ``url`` on it."""
    return fsspec.core.url_to_fs(url, **backend.storage_options)


def test_tutorial_training_resumes_bit_identically(backend):
    total, cut = 8, 4

    # the uninterrupted run
    model, opt, sched = make_training(seed=1)
    seed_everything(7)
    losses_ref = [train_step(model, opt, sched) for _ in range(total)]
    params_ref = params(model)
    lr_ref = sched.get_last_lr()

    # the interrupted run: same start, saved mid-training
    model, opt, sched = make_training(seed=1)
    seed_everything(7)
    losses = [train_step(model, opt, sched) for _ in range(cut)]
    info = backend.manager().save(
        cut, model=model, optimizer=opt, scheduler=sched, epoch=0, metrics={"loss": losses[-1]}
    )
    del model, opt, sched

    # a new process would start from scratch: fresh objects, different init, scrambled RNGs
    model2, opt2, sched2 = make_training(seed=99)
    seed_everything(12345)
    before = params(model2)
    ckpt = backend.manager().restore(model=model2, optimizer=opt2, scheduler=sched2, restore_rng=True)
    assert isinstance(ckpt, Checkpoint)
    assert ckpt.info == info and ckpt.step == cut and ckpt.epoch == 0
    assert ckpt.metrics == {"loss": losses[-1]}
    assert not all(torch.equal(a, b) for a, b in zip(before, params(model2)))
    assert sched2.last_epoch == cut
    losses += [train_step(model2, opt2, sched2) for _ in range(total - cut)]

    assert losses == losses_ref  # exact float equality, step by step
    for a, b in zip(params(model2), params_ref):
        assert torch.equal(a, b)
    assert sched2.get_last_lr() == lr_ref


def test_without_restore_rng_the_data_order_differs(backend):
    """The counter-test: the exactness above really depends on the saved RNG state."""
    model, opt, sched = make_training(seed=1)
    seed_everything(7)
    train_step(model, opt, sched)
    mgr = backend.manager()
    mgr.save(1, model=model, optimizer=opt, scheduler=sched)
    expected = torch.randint(0, 1000, (8,))
    seed_everything(8)
    mgr.restore(model=model, optimizer=opt, scheduler=sched)
    assert not torch.equal(torch.randint(0, 1000, (8,)), expected)
    mgr.restore(model=model, optimizer=opt, scheduler=sched, restore_rng=True)
    assert torch.equal(torch.randint(0, 1000, (8,)), expected)


def test_rng_states_python_numpy_torch_restored(backend):
    mgr = backend.manager()
    seed_everything(3)
    random.random(), np.random.rand(), torch.rand(1)  # move off the seeded start
    mgr.save(1, w=torch.zeros(2))
    expected = (random.random(), np.random.rand(3).tolist(), torch.rand(3), random.gauss(0, 1))
    seed_everything(4)
    mgr.restore(restore_rng=True)
    got = (random.random(), np.random.rand(3).tolist(), torch.rand(3), random.gauss(0, 1))
    assert got[0] == expected[0]
    assert got[1] == expected[1]
    assert torch.equal(got[2], expected[2])
    assert got[3] == expected[3]


def test_latest_is_most_recently_committed_rollback(backend):
    mgr = backend.manager()
    assert mgr.latest() is None and mgr.list() == []
    net = nn.Linear(3, 2)
    for step in (10, 20):
        mgr.save(step, model=net)
    with torch.no_grad():
        net.weight.fill_(1.5)
    rolled = mgr.save(15, model=net)  # a rollback: re-run from 10, save 15 after 20
    assert [v.step for v in mgr.list()] == [10, 20, 15]
    assert mgr.latest() == rolled and mgr.latest().step == 15
    fresh = nn.Linear(3, 2)
    ckpt = backend.manager().restore(model=fresh)
    assert ckpt.step == 15
    assert torch.equal(fresh.weight, torch.full((2, 3), 1.5))
    # ids sort by commit time
    ids = [v.version for v in mgr.list()]
    assert ids == sorted(ids) and len(set(ids)) == 3


def test_plain_tensors_and_dicts_of_tensors(backend):
    mgr = backend.manager()
    weights = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    buffers = {"mean": torch.tensor([1.0, 2.0]), "count": torch.tensor(5, dtype=torch.int64)}
    mgr.save(3, weights=weights, buffers=buffers)

    state = backend.manager().load()
    assert set(state) == {"weights", "buffers"}
    assert torch.equal(state["weights"], weights)
    assert state["buffers"].keys() == buffers.keys()
    assert torch.equal(state["buffers"]["count"], buffers["count"])
    assert state["buffers"]["count"].dtype == torch.int64

    w2 = torch.zeros(2, 3)
    b2 = {"mean": torch.zeros(2), "count": torch.tensor(0, dtype=torch.int64)}
    ckpt = backend.manager().restore(weights=w2, buffers=b2)
    assert torch.equal(w2, weights)  # in place
    assert torch.equal(b2["mean"], buffers["mean"]) and int(b2["count"]) == 5
    assert set(ckpt.state) == {"weights", "buffers"}

    # a name saved but not given stays in .state; a name given but not saved raises
    ckpt = backend.manager().restore(weights=torch.zeros(2, 3))
    assert torch.equal(ckpt.state["buffers"]["mean"], buffers["mean"])
    with pytest.raises(MissingObjectError, match="optimizer") as err:
        backend.manager().restore(weights=torch.zeros(2, 3), optimizer=torch.zeros(1))
    assert isinstance(err.value, CheckpointError) and "weights" in str(err.value)
    # strict key check for dicts
    with pytest.raises(CheckpointError, match="keys"):
        backend.manager().restore(buffers={"mean": torch.zeros(2)})


def test_extra_json_values_and_tensors(backend):
    mgr = backend.manager()
    extra = {
        "update_steps": 7,
        "name": "run-42",
        "lr": 0.001,
        "flags": [True, False, None],
        "nested": {"a": [1, 2.5, "x"], "b": {"c": 3}},
        "ema": torch.linspace(0, 1, 5),
        "tensors": {"t": torch.ones(2, dtype=torch.bfloat16)},
    }
    mgr.save(1, w=torch.zeros(1), extra=extra)
    ckpt = backend.manager().restore()
    got = ckpt.extra
    assert {k: got[k] for k in ("update_steps", "name", "lr", "flags", "nested")} == {
        k: extra[k] for k in ("update_steps", "name", "lr", "flags", "nested")
    }
    assert torch.equal(got["ema"], extra["ema"])
    assert got["tensors"]["t"].dtype == torch.bfloat16 and torch.equal(got["tensors"]["t"], extra["tensors"]["t"])
    # a value a safe load could not read back is refused up front
    with pytest.raises(TypeError, match="extra"):
        mgr.save(2, w=torch.zeros(1), extra={"bad": object()})
    assert [v.step for v in mgr.list()] == [1]


def test_checkpoint_info_record(backend):
    mgr = backend.manager()
    before = datetime.now(timezone.utc)
    info = mgr.save(
        100, epoch=3, model=nn.Linear(4, 2), metrics={"val_loss": 0.25, "acc": torch.tensor(0.75)}, tags=["warmup", "a"]
    )
    after = datetime.now(timezone.utc)
    assert isinstance(info, CheckpointInfo)
    assert dataclasses.is_dataclass(info)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.step = 5  # type: ignore[misc]
    assert info.step == 100 and info.epoch == 3
    assert info.metrics == {"val_loss": 0.25, "acc": 0.75}
    assert isinstance(info.metrics["acc"], float)
    assert info.tags == ("warmup", "a")
    assert info.pinned is False and info.format == "torch"
    assert info.created_at.tzinfo is not None and info.created_at.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= info.created_at <= after + timedelta(seconds=1)
    assert "step000100" in info.version
    assert set(info.version) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")

    # files: name -> size and checksum, matching the bytes actually stored at info.url
    assert set(info.files) == {"state.pt"}
    fs, folder = fs_of(backend, info.url)
    assert fs.exists(f"{folder}/meta.json")
    data = fs.cat_file(f"{folder}/state.pt")
    assert info.files["state.pt"]["size"] == len(data) == info.size_bytes
    assert info.files["state.pt"]["checksum"] == f"xxh3_128:{xxhash.xxh3_128_hexdigest(data)}"

    # the same record from the manifest, another manager, info() by id
    again = backend.manager().info(info.version)
    assert again == info and again.files == info.files and again.created_at == info.created_at
    assert again.url == info.url


def test_meta_json_content(backend):
    mgr = backend.manager()
    info = mgr.save(
        5,
        epoch=1,
        model=nn.Linear(2, 2),
        optimizer=torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1),
        metrics={"loss": 1.5},
        tags=["t"],
    )
    fs, folder = fs_of(backend, info.url)
    meta = json.loads(fs.cat_file(f"{folder}/meta.json"))
    assert meta["id"] == info.version
    assert meta["step"] == 5 and meta["epoch"] == 1
    assert meta["created_at"].endswith("Z")
    assert datetime.fromisoformat(meta["created_at"].replace("Z", "+00:00")) == info.created_at
    assert meta["format"] == "torch"
    assert meta["files"] == info.files
    assert meta["size_bytes"] == info.size_bytes
    assert meta["metrics"] == {"loss": 1.5} and meta["tags"] == ["t"]
    assert meta["torch_version"] == torch.__version__
    assert meta["objects"] == ["model", "optimizer"]
    assert "pinned" not in meta  # it changes; it lives in the manifest only


def test_manifest_json_format(backend):
    mgr = backend.manager()
    a = mgr.save(1, w=torch.zeros(1))
    b = mgr.save(2, w=torch.ones(1), metrics={"m": 2.0})
    fs, root = fs_of(backend, mgr.root_url)
    doc = json.loads(fs.cat_file(f"{root}/manifest.json"))
    assert doc["format_version"] == 1
    assert doc["generation"] == 2
    assert [r["id"] for r in doc["versions"]] == [a.version, b.version]
    rec = doc["versions"][1]
    assert rec["step"] == 2 and rec["metrics"] == {"m": 2.0} and rec["pinned"] is False
    assert rec["files"] == b.files
    mgr.pin(a)
    doc = json.loads(fs.cat_file(f"{root}/manifest.json"))
    assert doc["generation"] == 3 and doc["versions"][0]["pinned"] is True
    assert backend.manager().info(a.version).pinned is True


def test_two_managers_on_one_root_see_each_other(backend):
    m1, m2 = backend.manager(), backend.manager()
    assert m2.list() == []
    a = m1.save(1, w=torch.zeros(1))
    assert [v.version for v in m2.list()] == [a.version]  # no stale listing cache
    b = m2.save(2, w=torch.ones(1))
    assert [v.version for v in m1.list()] == [a.version, b.version]
    assert m1.latest() == b
    assert torch.equal(m1.load()["w"], torch.ones(1))
    m2.delete(a)
    assert [v.version for v in m1.list()] == [b.version]


def test_context_manager_and_close_wait_for_pending_saves(backend):
    net = nn.Linear(8, 8)
    with backend.manager() as mgr:
        fut = mgr.save(1, model=net, blocking=False)
        with torch.no_grad():
            net.weight.zero_()  # the background save must not see this
    assert fut.done()
    info = fut.result()
    assert [v.version for v in backend.manager().list()] == [info.version]
    assert not torch.equal(backend.manager().load()["model"]["weight"], torch.zeros(8, 8))

    mgr = backend.manager(async_save=True)
    fut = mgr.save(2, model=net)
    mgr.close()
    assert fut.done() and backend.manager().latest().step == 2
    mgr.close()  # idempotent


def test_load_returns_plain_state_dict(backend):
    model, opt, sched = make_training(seed=5)
    train_step(model, opt, sched)
    backend.manager().save(1, model=model, optimizer=opt, scheduler=sched)
    state = backend.manager().load(1, map_location="cpu")
    assert set(state) == {"model", "optimizer", "scheduler"}
    for key, value in model.state_dict().items():
        assert torch.equal(state["model"][key], value)
    assert state["optimizer"]["param_groups"][0]["lr"] == opt.param_groups[0]["lr"]
    assert state["scheduler"]["last_epoch"] == 1


def test_bad_arguments_rejected(backend):
    mgr = backend.manager()
    with pytest.raises(ValueError):
        mgr.save(-1, w=torch.zeros(1))
    with pytest.raises(ValueError):
        mgr.save(1)  # nothing to save
    with pytest.raises(TypeError):
        mgr.save(1, w=object())
    assert mgr.list() == []


def test_commit_order_data_then_meta_then_manifest(backend, monkeypatch):
    """Spy on the protocol: data complete before meta.json, meta.json before the manifest lists it."""
    from torchckpt import manifest as mf
    from torchckpt.storage import VersionWriter

    mgr = backend.manager()
    first = mgr.save(0, w=torch.zeros(1))  # the manifest exists: listing is the manifest's
    fs, root = fs_of(backend, mgr.root_url)
    seen: dict[str, object] = {}
    real_commit, real_update = VersionWriter.commit, mf.update

    def commit(self, meta_name, meta):
        folder = f"{root}/{self.work_dir}"
        fs.invalidate_cache()
        seen["at_commit"] = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False))
        seen["state_size"] = fs.size(f"{folder}/state.pt")
        seen["listed_at_commit"] = [v.version for v in backend.manager().list()]
        seen["work_dir"], seen["final"] = self.work_dir, self.rel_dir
        return real_commit(self, meta_name, meta)

    def update(storage, change, **kw):
        fs.invalidate_cache()
        seen["meta_before_manifest"] = json.loads(fs.cat_file(f"{root}/{seen['final']}/meta.json"))
        seen["listed_before_manifest"] = [v.version for v in backend.manager().list()]
        return real_update(storage, change, **kw)

    monkeypatch.setattr(VersionWriter, "commit", commit)
    monkeypatch.setattr(mf, "update", update)
    info = mgr.save(1, w=torch.ones(1000))

    assert seen["at_commit"] == ["state.pt"]  # data complete, no meta.json yet
    assert seen["state_size"] == info.files["state.pt"]["size"]
    assert seen["listed_at_commit"] == [first.version] and seen["listed_before_manifest"] == [first.version]
    if backend.kind == "local":  # written in a hidden staging folder, renamed into place at commit
        assert seen["work_dir"].startswith("versions/.tmp-" + info.version + "-")
    else:  # no rename on object stores: the final folder, meta.json last
        assert seen["work_dir"] == f"versions/{info.version}"
    assert seen["meta_before_manifest"]["id"] == info.version  # committed before it is listed
    assert fs.exists(f"{root}/versions/{info.version}/meta.json")
    assert [v.version for v in mgr.list()] == [first.version, info.version]


def test_repair_rebuilds_a_corrupt_manifest(backend):
    mgr = backend.manager()
    a = mgr.save(1, w=torch.zeros(1), metrics={"m": 1.0}, tags=["x"])
    b = mgr.save(2, w=torch.ones(1))
    mgr.pin(a)
    fs, root = fs_of(backend, mgr.root_url)
    fs.pipe_file(f"{root}/manifest.json", b'{"format_version": 1, "versions": [{"id": ')
    with pytest.raises(ManifestError, match="repair"):
        backend.manager().list()
    rebuilt = backend.manager().repair()
    assert [v.version for v in rebuilt] == [a.version, b.version]
    assert rebuilt[0].metrics == {"m": 1.0} and rebuilt[0].tags == ("x",) and rebuilt[0].files == a.files
    assert torch.equal(backend.manager().load(a)["w"], torch.zeros(1))
    # a repair over an existing manifest keeps pins
    mgr.pin(a)
    assert backend.manager().repair()[0].pinned is True
