"""Copying versions between roots: local -> S3 -> local, checksums, refusal of corrupt sources."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from torchckpt import CheckpointManager, ChecksumMismatchError, ReadOnlyError, copying
from torchckpt.cli import cli
from torchckpt.transfer import copy_versions, plan_copy


def net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 1))


def fill(mgr: CheckpointManager, n: int = 3) -> list[Any]:
    return [
        mgr.save(i * 5, epoch=i, model=net(i), metrics={"val_loss": 1.0 / (i + 1)}, tags=["t"], extra={"note": f"v{i}"})
        for i in range(n)
    ]


def corrupt(mgr: CheckpointManager, info: Any) -> None:
    rel = f"versions/{info.version}/state.pt"
    data = bytearray(mgr.storage.read_bytes(rel))
    data[-100] ^= 0xFF
    mgr.storage.fs.pipe_file(mgr.storage.path(rel), bytes(data))


def same_records(a: Any, b: Any) -> None:
    for x, y in zip(a, b, strict=True):
        assert (x.version, x.step, x.epoch, x.created_at, x.metrics, x.tags, x.files, x.size_bytes) == (
            y.version,
            y.step,
            y.epoch,
            y.created_at,
            y.metrics,
            y.tags,
            y.files,
            y.size_bytes,
        )


def test_round_trip_local_s3_local(tmp_path: Path, s3_backend: Any) -> None:
    local = CheckpointManager(tmp_path / "a")
    infos = fill(local)
    local.pin(infos[0])
    s3 = s3_backend.manager()
    moved: list[int] = []
    copied = copy_versions(local, s3, progress=moved.append)
    assert [c.version for c in copied] == [i.version for i in infos]
    assert sum(moved) == sum(i.size_bytes for i in infos)
    assert all(c.url.startswith("s3://") and not c.pinned for c in copied)  # pins are per root
    same_records(s3.list(), local.list())
    assert s3.verify().ok

    back = CheckpointManager(tmp_path / "b")
    copy_versions(s3_backend.manager(read_only=True), back)
    same_records(back.list(), local.list())
    assert back.verify().ok
    for info in infos:  # byte-identical data, and it loads to the same tensors
        rel = f"versions/{info.version}/state.pt"
        assert back.storage.read_bytes(rel) == local.storage.read_bytes(rel)
        assert back.storage.read_bytes(f"versions/{info.version}/meta.json") == local.storage.read_bytes(
            f"versions/{info.version}/meta.json"
        )
    model = net(99)
    ckpt = back.restore(infos[1].version, model=model)
    assert ckpt.extra == {"note": "v1"}
    for p, q in zip(model.parameters(), net(1).parameters()):
        assert torch.equal(p, q)
    assert not any(n.startswith(".tmp-") for n in os.listdir(tmp_path / "b" / "versions"))


def test_skip_present_and_select_versions(tmp_path: Path, memory_backend: Any) -> None:
    src = CheckpointManager(tmp_path / "src")
    infos = fill(src, 4)
    dst = memory_backend.manager()
    assert [c.version for c in copy_versions(src, dst, [infos[2].version, 5])] == [infos[1].version, infos[2].version]
    todo, skipped = plan_copy(src, dst)
    assert [v.version for v in todo] == [infos[0].version, infos[3].version]
    assert [v.version for v in skipped] == [infos[1].version, infos[2].version]
    assert [c.version for c in copy_versions(src, dst)] == [infos[0].version, infos[3].version]
    assert [v.version for v in dst.list()] == [i.version for i in infos]  # commit order kept, not copy order
    assert copy_versions(src, dst) == []
    assert dst.latest().version == infos[3].version


def test_streams_in_bounded_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(copying, "CHUNK", 4096)
    src = CheckpointManager(tmp_path / "src")
    info = src.save(1, weights=torch.randn(64, 1024))  # 256 KiB
    chunks: list[int] = []
    copy_versions(src, CheckpointManager(tmp_path / "dst"), progress=chunks.append)
    assert max(chunks) <= 4096 and sum(chunks) == info.size_bytes and len(chunks) > 60


def test_corrupt_source_is_refused(tmp_path: Path, s3_backend: Any) -> None:
    src = CheckpointManager(tmp_path / "src")
    infos = fill(src, 2)
    corrupt(src, infos[1])
    dst = s3_backend.manager()
    with pytest.raises(ChecksumMismatchError) as err:
        copy_versions(src, dst)
    assert "state.pt" in str(err.value) and infos[1].version in str(err.value)
    assert [v.version for v in dst.list()] == [infos[0].version]  # the good one before it made it
    assert not dst.storage.exists(f"versions/{infos[1].version}/meta.json")
    assert not dst.storage.exists(f"versions/{infos[1].version}/state.pt")  # aborted, nothing left behind

    local_dst = CheckpointManager(tmp_path / "dst")
    with pytest.raises(ChecksumMismatchError):
        copy_versions(src, local_dst, [infos[1].version])
    assert local_dst.list() == [] and os.listdir(tmp_path / "dst" / "versions") == []


def test_truncated_and_missing_source_files(tmp_path: Path, memory_backend: Any) -> None:
    src = CheckpointManager(tmp_path / "src")
    info = fill(src, 1)[0]
    path = tmp_path / "src" / "versions" / info.version / "state.pt"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(Exception, match="bytes"):
        copy_versions(src, memory_backend.manager())
    path.unlink()
    with pytest.raises(Exception, match="missing"):
        copy_versions(src, memory_backend.manager())
    assert memory_backend.manager().list() == []


def test_resumes_after_commit_before_manifest(tmp_path: Path) -> None:
    """A copy killed between meta.json and the manifest update is finished by the next run."""
    from torchckpt import manifest as mf

    src = CheckpointManager(tmp_path / "src")
    infos = fill(src, 2)
    dst_root = tmp_path / "dst"
    copy_versions(src, CheckpointManager(dst_root))
    # as if the manifest update of the second version never happened
    mf.update(
        CheckpointManager(dst_root).storage,
        lambda m: mf.Manifest(m.generation, [v for v in m.versions if v.version != infos[1].version]),
    )
    assert [v.version for v in CheckpointManager(dst_root).list()] == [infos[0].version]
    assert [c.version for c in copy_versions(src, CheckpointManager(dst_root))] == [infos[1].version]
    assert [v.version for v in CheckpointManager(dst_root).list()] == [i.version for i in infos]
    assert CheckpointManager(dst_root).verify().ok


def test_exports_travel_and_read_only_destination(tmp_path: Path, memory_backend: Any) -> None:
    src = CheckpointManager(tmp_path / "src")
    info = fill(src, 1)[0]
    # An export recorded the way the manifest records them (written by hand to stay independent of export.py).
    from torchckpt import manifest as mf
    from torchckpt.hashing import checksum_bytes

    blob = b"scripted-model-bytes" * 100
    src.storage.write_bytes(f"exports/{info.version}/model.pt", blob)
    record = {"size": len(blob), "checksum": checksum_bytes(blob), "kind": "torchscript"}

    def add(m: mf.Manifest) -> mf.Manifest:
        m.replace(m.find(info.version).with_(exports={"model.pt": record}))
        return m

    mf.update(src.storage, add)
    dst = memory_backend.manager()
    copied = copy_versions(src, dst)
    assert copied[0].exports == {"model.pt": record}
    assert dst.storage.read_bytes(f"exports/{info.version}/model.pt") == blob
    with pytest.raises(ReadOnlyError):
        copy_versions(src, memory_backend.manager(read_only=True))


def test_real_torchscript_export_travels(tmp_path: Path, memory_backend: Any) -> None:
    pytest.importorskip("torchckpt.export")
    import torchckpt

    src = CheckpointManager(tmp_path / "src")
    infos = fill(src, 2)
    src.export_torchscript(net(7), version=infos[0].version)
    dst = memory_backend.manager()
    copy_versions(src, dst)
    url = dst.info(infos[0].version).url.replace("/versions/", "/exports/") + "/model.pt"
    scripted = torchckpt.load_torchscript(url)  # checked against the destination's manifest
    x = torch.randn(4, 32)
    with torch.no_grad():
        assert torch.allclose(scripted(x), net(0)(x))  # version 0's weights, not the model passed in


def test_cli_copy(tmp_path: Path, s3_backend: Any) -> None:
    """Local -> S3 as a cron job (endpoint from AWS_ENDPOINT_URL only), then S3 -> local in-process."""
    src = CheckpointManager(tmp_path / "src")
    infos = fill(src, 3)
    env = {**os.environ, **s3_backend.env}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torchckpt",
            "copy",
            str(tmp_path / "src"),
            s3_backend.url,
            infos[0].version,
            "latest",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [v["id"] for v in doc["copied"]] == [infos[0].version, infos[2].version] and doc["skipped"] == []
    assert "copying" not in proc.stderr  # no progress bar when stderr is not a terminal

    runner = CliRunner()
    again = runner.invoke(cli, ["copy", str(tmp_path / "src"), s3_backend.url], env=s3_backend.env)
    assert again.exit_code == 0, again.output
    assert f"skipped {infos[0].version}" in again.stdout and f"copied  {infos[1].version}" in again.stdout

    endpoint = s3_backend.storage_options["client_kwargs"]["endpoint_url"]
    back = runner.invoke(
        cli,
        [
            "copy",
            s3_backend.url,
            str(tmp_path / "back"),
            "-q",
            "--src-storage-option",
            f"client_kwargs.endpoint_url={endpoint}",
        ],
        env={"AWS_ENDPOINT_URL": None},
    )
    assert back.exit_code == 0 and back.stdout == ""
    same_records(CheckpointManager(tmp_path / "back").list(), src.list())

    corrupt(src, infos[1])
    bad = runner.invoke(cli, ["copy", str(tmp_path / "src"), str(tmp_path / "bad")])
    assert bad.exit_code == 1
    assert bad.stderr.count("\n") == 1 and "checksum mismatch" in bad.stderr and "Traceback" not in bad.stderr
    assert [v.version for v in CheckpointManager(tmp_path / "bad").list()] == [infos[0].version]


def test_progress_bar_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import sys

    from torchckpt.cli.output import Progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    with Progress(1 << 20, quiet=False) as update:
        assert update is not None
        update(1 << 19)
    assert "copying" in tty.getvalue()
    with Progress(1 << 20, quiet=True) as update:  # --quiet and --json
        assert update is None
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with Progress(1 << 20, quiet=False) as update:
        assert update is None


def test_progress_bar_on_a_real_terminal(tmp_path: Path) -> None:
    """Under a pseudo-terminal the CLI draws a tqdm bar on stderr (pipes get none: see test_cli_copy)."""
    pty = pytest.importorskip("pty")
    import fcntl
    import struct
    import termios

    src = CheckpointManager(tmp_path / "src")
    fill(src, 2)
    pid, fd = pty.fork()
    if pid == 0:  # child: a 120-column terminal, then the command
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        os.execvp(
            sys.executable, [sys.executable, "-m", "torchckpt", "copy", str(tmp_path / "src"), str(tmp_path / "dst")]
        )
    out = b""
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        out += data
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    assert b"copying: 100%" in out and b"copied 2 version(s)" in out


@pytest.mark.parametrize("kind", ["safetensors", "dcp"])
def test_other_layouts_copy_byte_for_byte(tmp_path: Path, memory_backend: Any, kind: str) -> None:
    """Copy moves what meta.json lists, whatever wrote it: safetensors files, DCP shards and metadata."""
    opts = {"format": "safetensors"} if kind == "safetensors" else {"distributed": True}
    src = CheckpointManager(tmp_path / "src", **opts)
    model = net(3)
    info = src.save(7, model=model)
    dst = memory_backend.manager()
    copy_versions(src, dst)
    assert dst.verify().ok and dst.info(7).files == info.files
    other = net(4)
    dst.restore(model=other)
    for p, q in zip(other.parameters(), model.parameters()):
        assert torch.equal(p, q)
