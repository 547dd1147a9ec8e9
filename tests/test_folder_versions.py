"""Folder versions: ``save_files`` / ``restore_files`` on every backend, names as selectors, safety."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from torchckpt import CheckpointManager, RetentionPolicy
from torchckpt.errors import CheckpointError, ChecksumMismatchError, NameConflictError
from torchckpt.layout import check_rel_path
from torchckpt.summary import tensor_summary
from torchckpt.transfer import copy_versions


def make_tree(root: Path, marker: str = "a") -> dict[str, bytes]:
    files = {
        "model.safetensors": b"",  # replaced below by a real safetensors file
        "optimizer.pt": marker.encode() * 1000,
        "empty.txt": b"",
        "sub/dir/deep.bin": os.urandom(3000),
        "sub/empty/also-empty": b"",
        "trainer_state.json": json.dumps({"global_step": 3, "m": marker}).encode(),
        "with space (1).txt": b"spaces are fine",
    }
    from safetensors.torch import save

    files["model.safetensors"] = save({"w": torch.arange(6.0).reshape(2, 3)})
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_round_trip_nested_and_empty_files(backend, tmp_path):
    mgr = backend.manager()
    files = make_tree(tmp_path / "src")
    info = mgr.save_files(3, tmp_path / "src", epoch=1, metrics={"loss": 0.5}, tags=["hf"], name="checkpoint-3")
    assert info.layout == "files" and info.name == "checkpoint-3" and info.step == 3 and info.epoch == 1
    assert set(info.files) == set(files)
    assert info.files["empty.txt"]["size"] == 0 and info.size_bytes == sum(len(d) for d in files.values())
    listed = mgr.list()[-1]
    assert listed == info and listed.name == "checkpoint-3"
    out = mgr.restore_files("checkpoint-3", tmp_path / "out")
    assert out == tmp_path / "out" and read_tree(out) == files
    assert mgr.verify().ok
    # the name is a selector everywhere, found in the one manifest read of info()
    assert mgr.info("checkpoint-3").version == info.version
    rows = tensor_summary(mgr, "checkpoint-3")
    assert [(r.name, r.shape, r.dtype) for r in rows] == [("model.safetensors:w", (2, 3), "float32")]


def test_restore_into_existing_folder_replaces_only_its_files(local_backend, tmp_path):
    mgr = local_backend.manager()
    files = make_tree(tmp_path / "src")
    mgr.save_files(1, tmp_path / "src")
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.me").write_bytes(b"x")
    (target / "optimizer.pt").write_bytes(b"stale")
    mgr.restore_files("latest", target)
    assert read_tree(target) == {**files, "keep.me": b"x"}
    assert not [p for p in tmp_path.iterdir() if "torchckpt-" in p.name]  # staging folder gone


def test_100_mib_file_streamed_and_verified(backend, tmp_path):
    src = tmp_path / "big"
    src.mkdir()
    block = os.urandom(1 << 20)
    with open(src / "weights.bin", "wb") as f:
        for _ in range(100):
            f.write(block)
    mgr = backend.manager()
    info = mgr.save_files(1, src)
    assert info.files["weights.bin"]["size"] == 100 << 20
    out = mgr.restore_files(info, tmp_path / "out")
    assert (out / "weights.bin").stat().st_size == 100 << 20
    with open(out / "weights.bin", "rb") as f:
        assert f.read(1 << 20) == block
        f.seek(99 << 20)
        assert f.read() == block


@pytest.mark.parametrize(
    "bad", ["../x", "/abs", "a/../../b", "a//b", "./a", "a\\b", "*", "a/?", "meta.json", "a\x00b", "", "x/../.."]
)
def test_escaping_paths_refused(bad):
    with pytest.raises(CheckpointError):
        check_rel_path(bad)


def test_odd_local_file_names_refused_before_anything_is_written(local_backend, tmp_path):
    mgr = local_backend.manager()
    for name in ("a\\..\\..\\evil", "meta.json", "glob*"):
        src = tmp_path / f"src{len(name)}"
        src.mkdir()
        (src / "fine.txt").write_bytes(b"ok")
        (src / name).write_bytes(b"bad")
        with pytest.raises(CheckpointError, match="rename it"):
            mgr.save_files(1, src)
    assert mgr.list() == []
    versions = Path(local_backend.url) / "versions"
    assert not versions.exists() or not os.listdir(versions)


def test_tampered_record_cannot_escape_on_restore(local_backend, tmp_path):
    mgr = local_backend.manager()
    make_tree(tmp_path / "src")
    mgr.save_files(1, tmp_path / "src")
    manifest = Path(local_backend.url) / "manifest.json"
    doc = json.loads(manifest.read_text())
    rec = doc["versions"][0]["files"].pop("optimizer.pt")
    doc["versions"][0]["files"]["../../outside.pt"] = rec
    manifest.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError):
        mgr.restore_files("latest", tmp_path / "out")
    assert not (tmp_path / "outside.pt").exists() and not (tmp_path / "out").exists()


def test_corrupted_file_detected_and_target_untouched(backend, tmp_path):
    mgr = backend.manager()
    make_tree(tmp_path / "src")
    info = mgr.save_files(1, tmp_path / "src")
    rel = f"versions/{info.version}/sub/dir/deep.bin"
    data = bytearray(mgr.storage.read_bytes(rel))
    data[10] ^= 0xFF
    mgr.storage.write_bytes(rel, bytes(data))
    with pytest.raises(ChecksumMismatchError, match="deep.bin"):
        mgr.restore_files("latest", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    report = mgr.verify()
    assert not report.ok and "deep.bin" in report.problems[0][1]
    mgr.storage.remove([rel])
    with pytest.raises(ChecksumMismatchError, match="no such file"):
        mgr.restore_files("latest", tmp_path / "out")


def test_names_unique_and_movable(backend, tmp_path):
    mgr = backend.manager()
    make_tree(tmp_path / "a", "a")
    make_tree(tmp_path / "b", "b")
    first = mgr.save_files(1, tmp_path / "a", name="last.ckpt")
    with pytest.raises(NameConflictError, match=first.version):
        mgr.save_files(2, tmp_path / "b", name="last.ckpt")
    assert [v.version for v in mgr.list()] == [first.version]
    second = mgr.save_files(2, tmp_path / "b", name="last.ckpt", replace=True)
    assert [v.version for v in mgr.list()] == [second.version]  # moved in the same manifest update
    assert not mgr.storage.exists(f"versions/{first.version}")
    assert mgr.info("last.ckpt").version == second.version
    mgr.pin("last.ckpt")
    with pytest.raises(NameConflictError, match="pinned"):
        mgr.save_files(3, tmp_path / "a", name="last.ckpt", replace=True)
    for bad in ("latest", "best", "123", "a/b", "../x", "a b", ""):
        with pytest.raises(ValueError):
            mgr.save_files(4, tmp_path / "a", name=bad)
    with pytest.raises(CheckpointError):
        mgr.info("no-such-name")
    # names work with the single-file save as well
    named = mgr.save(5, w=torch.ones(2), name="epoch=0-step=5.ckpt")
    assert mgr.load("epoch=0-step=5.ckpt")["w"].sum() == 2 and named.name == "epoch=0-step=5.ckpt"


def test_name_conflict_inside_manifest_update_leaves_no_data(local_backend, tmp_path):
    """Two writers racing for one name: the manifest update refuses the second, whose data is removed."""
    from torchckpt import folders

    mgr = local_backend.manager()
    make_tree(tmp_path / "a")
    mgr.save_files(1, tmp_path / "a", name="n")
    real = folders.name_holders
    folders.name_holders = lambda versions, name: []  # the pre-check saw nothing (the other writer was not done)
    try:
        with pytest.raises(NameConflictError):
            mgr.save_files(2, tmp_path / "a", name="n")
    finally:
        folders.name_holders = real
    assert len(mgr.list()) == 1 and len(os.listdir(Path(local_backend.url) / "versions")) == 1


def test_folder_versions_are_versions(backend, tmp_path):
    """list / show / verify / prune / retention / copy / load treat them like any other version."""
    mgr = backend.manager(retention=RetentionPolicy(keep_last=2))
    make_tree(tmp_path / "src")
    infos = [mgr.save_files(s, tmp_path / "src", name=f"checkpoint-{s}", metrics={"loss": 1.0 / s}) for s in (1, 2, 3)]
    assert [v.version for v in mgr.list()] == [i.version for i in infos[1:]]  # retention applied at commit
    assert mgr.prune(RetentionPolicy(keep_last=1)) == [infos[1]]
    with pytest.raises(CheckpointError, match="restore_files"):
        mgr.load("checkpoint-3")
    with pytest.raises(CheckpointError, match="restore_files"):
        mgr.restore("checkpoint-3", model=torch.nn.Linear(1, 1))
    dst = CheckpointManager(str(tmp_path / "copy"))
    copied = copy_versions(mgr, dst)
    assert [c.version for c in copied] == [infos[2].version] and dst.list()[0].name == "checkpoint-3"
    assert dst.verify().ok
    assert read_tree(dst.restore_files("checkpoint-3", tmp_path / "back")) == read_tree(tmp_path / "src")
    # a name held by another version at the destination: refused before anything is copied
    other = CheckpointManager(str(tmp_path / "other"))
    other.save(1, w=torch.zeros(1), name="checkpoint-3")
    with pytest.raises(NameConflictError, match="checkpoint-3"):
        copy_versions(mgr, other)
    assert len(other.list()) == 1 and len(os.listdir(tmp_path / "other" / "versions")) == 1
    # repair rebuilds the record (name and nested paths) from meta.json
    assert [v.to_record() for v in mgr.repair()] == [v.to_record() for v in mgr.list()]


def test_cli_lists_shows_and_verifies_folder_versions(local_backend, tmp_path):
    from click.testing import CliRunner

    from torchckpt.cli import cli

    mgr = local_backend.manager()
    make_tree(tmp_path / "src")
    mgr.save_files(7, tmp_path / "src", name="checkpoint-7")
    runner = CliRunner()
    shown = runner.invoke(cli, ["show", local_backend.url, "checkpoint-7"])
    assert shown.exit_code == 0, shown.output
    assert "sub/dir/deep.bin" in shown.output and "model.safetensors:w" in shown.output
    assert "checkpoint-7" in shown.output
    listed = runner.invoke(cli, ["list", local_backend.url, "--json"])
    assert json.loads(listed.output)["versions"][0]["name"] == "checkpoint-7"
    verified = runner.invoke(cli, ["verify", local_backend.url])
    assert verified.exit_code == 0, verified.output


def test_old_records_have_no_name(local_backend):
    mgr = local_backend.manager()
    mgr.save(1, w=torch.zeros(1))
    doc = json.loads((Path(local_backend.url) / "manifest.json").read_text())
    assert "name" not in doc["versions"][0] and mgr.list()[0].name is None
