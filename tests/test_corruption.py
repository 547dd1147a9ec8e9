"""Corruption: flip a byte in, truncate, or delete each kind of file of the newest version.

Data files (``state.pt``, ``model.safetensors``): loading raises
``ChecksumMismatchError``, ``verify`` reports the file (``torchckpt verify``
exits 1), ``restore(fallback=True)`` lands on the newest good version, and
``repair`` keeps the index intact (corrupt data is reported, never unlisted).

``meta.json`` (the commit marker, not read by loads: the manifest holds the same
record and the data is checked against its checksums): loading still works,
``verify`` reports the damaged marker, and ``repair`` writes it again from the
manifest's record so ``verify`` passes afterwards.

``manifest.json``: flipped or truncated, every read raises ``ManifestError``
naming ``torchckpt repair``; ``restore(fallback=True)`` falls back to the
``meta.json`` files; missing, the versions are listed from their ``meta.json``
files; ``repair`` rebuilds it (pins kept) in every case.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from _writer import tensors_for
from torchckpt import (
    CheckpointManager,
    ChecksumMismatchError,
    ManifestError,
    RetentionPolicy,
)
from torchckpt import manifest as mf
from torchckpt.cli import cli

DAMAGES = ["flip", "truncate", "delete"]


def damage(mgr: CheckpointManager, rel: str, how: str) -> None:
    fs, path = mgr.storage.fs, mgr.storage.path(rel)
    if how == "delete":
        fs.rm(path)
    else:
        data = bytearray(fs.cat_file(path))
        if how == "flip":
            data[0 if rel.endswith(".json") else len(data) // 2] ^= 0x55
        else:
            data = data[: len(data) // 2]
        fs.pipe_file(path, bytes(data))
    mgr.storage.invalidate(rel.rsplit("/", 1)[0] if "/" in rel else "")


def cli_verify(backend: Any) -> Any:
    args = ["verify", backend.url, *backend.cli_options()]
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def history(backend: Any, fmt: str) -> tuple[CheckpointManager, list[Any]]:
    mgr = backend.manager(format=fmt)
    infos = [mgr.save(step, model=tensors_for(step), metrics={"loss": 1.0 / step}) for step in (1, 2, 3)]
    mgr.pin(infos[0])
    return mgr, infos


def restored_step(mgr: CheckpointManager) -> int:
    model = {k: torch.zeros_like(v) for k, v in tensors_for(3).items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ckpt = mgr.restore(fallback=True, model=model, strict=False)
    for name, tensor in tensors_for(ckpt.step).items():
        assert torch.equal(ckpt.state["model"][name], tensor)
    return ckpt.step


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("kind", ["state.pt", "model.safetensors"])
def test_data_file(backend: Any, kind: str, how: str) -> None:
    fmt = "safetensors" if kind == "model.safetensors" else "torch"
    mgr, infos = history(backend, fmt)
    assert kind in infos[-1].files
    damage(mgr, f"versions/{infos[-1].version}/{kind}", how)

    with pytest.raises(ChecksumMismatchError) as err:
        mgr.load()
    assert kind in str(err.value)
    report = mgr.verify()
    assert not report.ok and [v for v, _ in report.problems] == [infos[-1].version]
    assert kind in report.problems[0][1]
    result = cli_verify(backend)
    assert result.exit_code == 1, result.output
    assert restored_step(mgr) == 2  # the newest good version
    # the index was never the problem: repair keeps everything listed and pinned, and verify still reports
    assert [v.version for v in mgr.repair()] == [i.version for i in infos]
    assert mgr.info(infos[0].version).pinned
    assert not mgr.verify().ok
    mgr.delete(infos[-1])
    assert mgr.verify().ok and cli_verify(backend).exit_code == 0


@pytest.mark.parametrize("how", DAMAGES)
def test_meta_json(backend: Any, how: str) -> None:
    mgr, infos = history(backend, "torch")
    damage(mgr, f"versions/{infos[-1].version}/meta.json", how)

    assert mgr.load()["model"]["b"].equal(tensors_for(3)["b"])  # data and record are intact
    report = mgr.verify()
    assert not report.ok and report.problems[0][0] == infos[-1].version
    assert "meta.json" in report.problems[0][1]
    assert cli_verify(backend).exit_code == 1
    assert restored_step(mgr) == 3
    assert mgr.gc(older_than=0) == []  # a listed version is never garbage
    assert [v.version for v in mgr.repair()] == [i.version for i in infos]
    assert mgr.verify().ok and cli_verify(backend).exit_code == 0
    assert mgr.info(infos[0].version).pinned


@pytest.mark.parametrize("how", DAMAGES)
def test_manifest(backend: Any, how: str) -> None:
    mgr, infos = history(backend, "torch")
    damage(mgr, "manifest.json", how)

    if how == "delete":  # an index that is gone is derived from the meta.json files
        assert [v.version for v in mgr.list()] == [i.version for i in infos]
        assert mgr.load()["model"]["w"].equal(tensors_for(3)["w"])
    else:
        for call in (mgr.list, mgr.load, mgr.verify, lambda: mgr.prune(RetentionPolicy(keep_last=1)), mgr.gc):
            with pytest.raises(ManifestError, match="torchckpt repair"):
                call()
        result = cli_verify(backend)
        assert result.exit_code == 1 and "torchckpt repair" in result.output
        # a save still commits its data (meta.json) before the index update fails: repair lists it
        with pytest.raises(ManifestError, match="torchckpt repair"):
            mgr.save(4, model=tensors_for(4))
        infos.append(next(i for i in mf.scan(mgr.storage).versions if i.step == 4))
    assert restored_step(mgr) == infos[-1].step  # fallback=True resumes even without a readable index
    versions = mgr.repair()
    assert [v.version for v in versions] == [i.version for i in infos]
    assert mgr.verify().ok and cli_verify(backend).exit_code == 0
    mgr.save(5, model=tensors_for(5))
    assert [v.step for v in mgr.list()] == [i.step for i in infos] + [5]


def test_lost_manifest_then_save_then_repair(memory_backend: Any) -> None:
    """Writers never list versions from a scan (a concurrent prune could delete one its saver is about
    to list), so a save after a lost manifest starts a new index; repair lists the older versions again."""
    mgr, infos = history(memory_backend, "torch")
    damage(mgr, "manifest.json", "delete")
    mgr.save(4, model=tensors_for(4))
    assert [v.step for v in mgr.list()] == [4]
    assert [v.step for v in mgr.repair()] == [1, 2, 3, 4]
