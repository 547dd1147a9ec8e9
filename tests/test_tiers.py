"""Tiers: a local cache in front of a root (local disk, and S3 on moto): upload, read-your-writes, crash safety.

Every behaviour runs with a local cache in front of a local root and of an S3 root.
Outages are real: the local root's folder is replaced by a file (an unmounted share),
the S3 root's server is stopped and started again on the same port. The crash test
kills a child process with SIGKILL while its upload is blocked half-way.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from _writer import tensors_for
from conftest import Backend, make_bucket
from torchckpt import CheckpointManager, RetentionPolicy, StorageError, UploadError
from torchckpt.cli import cli

SRC = str(Path(__file__).resolve().parents[1] / "src")
TESTS = str(Path(__file__).resolve().parent)


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest) -> Backend:
    return request.getfixturevalue(f"{request.param}_backend")


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def cache_ids(cache: Path) -> list[str]:
    return sorted(n for n in os.listdir(cache / "versions") if not n.startswith("."))


def plain(root: Backend) -> CheckpointManager:
    """The root alone, as a reader without the cache sees it."""
    return root.manager(read_only=True)


# ----- upload, retention, read-your-writes -----------------------------------------------------------------
def test_five_saves_reach_the_root_and_the_cache_keeps_the_newest(root: Backend, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with root.manager(cache=str(cache), cache_keep_last=2) as mgr:
        infos = [mgr.save(s, model=tensors_for(s)) for s in range(1, 6)]
        assert all(i.tiers == ("cache",) and i.url.startswith("file://") for i in infos)
        assert [v.version for v in mgr.list()] == [i.version for i in infos]  # read-your-writes, uploaded or not
        mgr.wait()
        assert mgr.pending_uploads() == []
        listed = mgr.list()
        assert [v.version for v in listed] == [i.version for i in infos]
        assert [v.tiers for v in listed] == [("root",)] * 3 + [("cache", "root")] * 2
    in_root = plain(root).list()
    assert [(v.version, v.files, v.size_bytes) for v in in_root] == [(i.version, i.files, i.size_bytes) for i in infos]
    assert all(v.url.startswith(plain(root).root_url) for v in in_root)
    assert plain(root).verify().ok
    assert cache_ids(cache) == [i.version for i in infos[-2:]]
    assert sorted(os.listdir(cache / "uploads")) == [i.version for i in infos[-2:]]
    for s, info in enumerate(infos, 1):
        same(plain(root).load(info.version)["model"], tensors_for(s))
    assert "tiers" not in json.loads(plain(root).storage.read_bytes(f"versions/{infos[0].version}/meta.json"))
    assert "tiers" not in plain(root).storage.read_bytes("manifest.json").decode()


def test_root_retention_applies_and_the_cache_keeps_only_what_is_listed(root: Backend, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with root.manager(cache=str(cache), cache_keep_last=3, retention=RetentionPolicy(keep_last=2)) as mgr:
        infos = [mgr.save(s, model=tensors_for(s)) for s in range(1, 6)]
        mgr.wait()
        assert [v.version for v in mgr.list()] == [i.version for i in infos[-2:]]  # the root's retention
        assert mgr.latest().version == infos[-1].version
    assert [v.version for v in plain(root).list()] == [i.version for i in infos[-2:]]
    assert cache_ids(cache) == [i.version for i in infos[-3:]]  # uploaded copies kept, though the root dropped one
    assert plain(root).verify().ok


def test_async_save_composes_with_the_cache(root: Backend, tmp_path: Path) -> None:
    with root.manager(cache=str(tmp_path / "cache"), async_save=True) as mgr:
        fut = mgr.save(3, model=tensors_for(3))
        info = fut.result()
        assert info.tiers == ("cache",) and mgr.latest().version == info.version
        mgr.wait()
    assert [v.version for v in plain(root).list()] == [info.version]
    same(plain(root).load()["model"], tensors_for(3))


def test_restore_reads_the_cache_copy_and_falls_back_to_the_root(root: Backend, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with root.manager(cache=str(cache)) as mgr:
        a = mgr.save(1, model=tensors_for(1))
        b = mgr.save(2, model=tensors_for(2))
        mgr.wait()
        # the root's copy of b is gone: a clean restore proves the data came from the cache
        plain(root).storage.remove([f"versions/{b.version}/state.pt"])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            same(mgr.restore(b.version).state["model"], tensors_for(2))
        # the cache copy of a is corrupt: restore and load warn and read the root's copy
        path = cache / "versions" / a.version / "state.pt"
        data = bytearray(path.read_bytes())
        data[-200] ^= 0xFF
        path.write_bytes(bytes(data))
        with pytest.warns(UserWarning, match=f"copy of {a.version} in file://.*unusable.*checksum"):
            same(mgr.restore(a.version).state["model"], tensors_for(1))
        with pytest.warns(UserWarning, match="unusable"):
            same(mgr.load(a.version)["model"], tensors_for(1))
        os.unlink(path)  # a missing cache copy: the same fallback
        with pytest.warns(UserWarning, match="unusable"):
            same(mgr.load(a.version)["model"], tensors_for(1))


def test_pin_and_delete_of_a_pending_version_act_on_the_root(root: Backend, tmp_path: Path) -> None:
    with root.manager(cache=str(tmp_path / "cache")) as mgr:
        a = mgr.save(1, model=tensors_for(1))
        b = mgr.save(2, model=tensors_for(2))
        assert mgr.pin(a).pinned  # uploads first: the pin is the root's
        mgr.delete(b.version)
        assert [(v.version, v.pinned) for v in mgr.list()] == [(a.version, True)]
    assert [(v.version, v.pinned) for v in plain(root).list()] == [(a.version, True)]


# ----- crash safety ----------------------------------------------------------------------------------------
CHILD = textwrap.dedent("""
    import json, os, sys, time
    import torch
    sys.path[:0] = [{src!r}, {tests!r}]
    import torchckpt.copying as copying
    from torchckpt import CheckpointManager
    from _writer import tensors_for
    real = copying.stream

    def blocked(src, rel, out, record, progress):  # write half the file, then hang (until SIGKILL)
        f = src.open_stream(rel)
        out.write(f.read(int(record["size"]) // 2))
        print("UPLOADING", flush=True)
        time.sleep(3600)

    copying.stream = blocked
    job = json.loads(sys.argv[1])
    mgr = CheckpointManager(job["root"], storage_options=job["options"] or None, cache=job["cache"])
    big = torch.Generator().manual_seed(7)
    info = mgr.save(7, model=tensors_for(7), big=torch.randn(6 << 20, generator=big))  # 24 MiB: S3 parts leave
    print("SAVED", info.version, flush=True)
    time.sleep(3600)
""")


def test_kill_during_upload_loses_nothing(root: Backend, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    job = {"root": root.url, "options": root.storage_options, "cache": str(cache)}
    code = CHILD.format(src=SRC, tests=TESTS)
    # multipart from the first part, so that a cut-short upload leaves parts behind to look for
    env = {**os.environ, **root.env, "TORCHCKPT_S3_SINGLE_PUT_MAX": "0"}
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(job)], stdout=subprocess.PIPE, text=True, env=env)
    seen: dict[str, str] = {}
    try:
        assert proc.stdout is not None
        while len(seen) < 2:
            line = proc.stdout.readline()
            assert line, f"child exited early ({proc.wait()})"
            word, _, rest = line.strip().partition(" ")
            seen[word] = rest
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    vid = seen["SAVED"]
    assert plain(root).list() == []  # the upload was cut short: nothing listed in the root
    if root.kind == "local":  # really half-written: a staging folder, or parts of an unfinished S3 upload
        assert any(n.startswith(".tmp-") for n in os.listdir(Path(root.url) / "versions"))
    else:
        import boto3

        s3 = boto3.client("s3", endpoint_url=root.env["AWS_ENDPOINT_URL"])
        bucket = root.url.split("/")[2]
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
        assert [
            o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []) if "/versions/" in o["Key"]
        ] == []
    with root.manager(cache=str(cache), read_only=True) as reader:  # read-your-writes across processes
        assert [(v.version, v.tiers) for v in reader.list()] == [(vid, ("cache",))]
        assert [v.version for v in reader.pending_uploads()] == [vid]
    with root.manager(cache=str(cache)) as mgr:  # opening the cache uploads what the dead process left
        mgr.wait()
        assert mgr.pending_uploads() == []
    after = plain(root)
    assert [v.version for v in after.list()] == [vid] and after.verify().ok
    model = {k: torch.zeros_like(v) for k, v in tensors_for(7).items()}
    ckpt = after.restore(model=model)
    same(model, tensors_for(7))
    assert torch.equal(ckpt.state["big"], torch.randn(6 << 20, generator=torch.Generator().manual_seed(7)))
    root.manager().gc(older_than=0)
    assert [n for n in plain(root).storage.list_names("versions")] == [vid]


# ----- outages -----------------------------------------------------------------------------------------------
class Outage:
    """Takes a root away and brings it back: a local folder replaced by a file; an S3 server stopped."""

    def __init__(self, backend: Backend, server: Any = None) -> None:
        self.backend, self.server = backend, server

    def down(self) -> None:
        if self.server is not None:
            self.server.stop()
            return
        path = Path(self.backend.url)
        path.rename(path.with_name("away"))
        path.write_text("not a folder")

    def up(self) -> None:
        if self.server is not None:
            self.server.start()
            return
        path = Path(self.backend.url)
        path.unlink()
        path.with_name("away").rename(path)


@pytest.fixture
def outage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Outage]:
    if request.param == "local":
        yield Outage(Backend("local", str(tmp_path / "root" / "ckpt")))
        return
    from moto.server import ThreadedMotoServer

    from moto_s3 import start_server

    first, endpoint = start_server()
    host, port = first.get_host_and_port()
    first.stop()  # a server of our own, restartable on the same port (moto keeps its buckets in-process)
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    options = {
        "client_kwargs": {"endpoint_url": endpoint},
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
    }
    backend = Backend("s3", f"s3://{make_bucket(endpoint)}/run", options, {"AWS_ENDPOINT_URL": endpoint})
    try:
        yield Outage(backend, server)
    finally:
        server.stop()


@pytest.mark.parametrize("outage", ["local", "s3"], indirect=True)
def test_root_unreachable_saves_keep_committing_and_a_later_manager_uploads(outage: Outage, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    mgr = outage.backend.manager(cache=str(cache))
    outage.down()
    infos = [mgr.save(s, model=tensors_for(s)) for s in range(1, 4)]  # never blocked by the root
    assert all(i.tiers == ("cache",) for i in infos)
    with pytest.raises(UploadError, match=r"could not be uploaded to .*stay committed in the cache.*torchckpt sync"):
        mgr.wait()
    mgr.save(4, model=tensors_for(4))
    with pytest.raises(UploadError):
        mgr.close()
    outage.up()
    assert plain(outage.backend).list() == []  # the failed uploads listed nothing
    assert len(cache_ids(cache)) == 4  # every version kept in the cache
    with outage.backend.manager(cache=str(cache)) as again:
        again.wait()
        assert [v.step for v in again.list()] == [1, 2, 3, 4]
    after = plain(outage.backend)
    assert [v.step for v in after.list()] == [1, 2, 3, 4] and after.verify().ok
    for s in range(1, 5):
        same(after.load(s)["model"], tensors_for(s))


def test_same_manager_uploads_once_the_root_is_back(tmp_path: Path) -> None:
    backend = Backend("local", str(tmp_path / "root" / "ckpt"))
    outage = Outage(backend)
    with backend.manager(cache=str(tmp_path / "cache")) as mgr:
        outage.down()
        mgr.save(1, model=tensors_for(1))
        with pytest.raises(UploadError):
            mgr.wait()
        outage.up()
        assert [v.step for v in mgr.pending_uploads()] == [1]
        report = mgr.verify()  # a pending version is verified where it is: in the cache
        assert report.ok and len(report.checked) == 1
        assert mgr.prune(RetentionPolicy(keep_last=1), dry_run=True) == []  # not the root's to prune yet
        mgr.wait()  # retries what is pending
        assert mgr.pending_uploads() == []
    assert [v.step for v in plain(backend).list()] == [1]


def test_cli_list_and_sync_after_an_outage(tmp_path: Path) -> None:
    backend = Backend("local", str(tmp_path / "root" / "ckpt"))
    outage = Outage(backend)
    cache = str(tmp_path / "cache")
    mgr = backend.manager(cache=cache)
    outage.down()
    infos = [mgr.save(s, model=tensors_for(s)) for s in (1, 2)]
    with pytest.raises(UploadError):
        mgr.close()
    outage.up()
    runner = CliRunner()
    out = runner.invoke(cli, ["list", backend.url, "--cache", cache])
    assert out.exit_code == 0, out.output
    assert "TIERS" in out.output and "2 not uploaded yet" in out.output
    doc = json.loads(runner.invoke(cli, ["list", backend.url, "--cache", cache, "--json"]).output)
    assert [v["tiers"] for v in doc["versions"]] == [["cache"], ["cache"]]
    assert runner.invoke(cli, ["list", backend.url]).output.startswith("no versions")
    out = runner.invoke(cli, ["sync", backend.url, "--cache", cache])
    assert out.exit_code == 0, out.output
    assert f"uploaded {infos[0].version}" in out.output and "uploaded 2 version(s)" in out.output
    doc = json.loads(runner.invoke(cli, ["list", backend.url, "--cache", cache, "--json"]).output)
    assert [v["tiers"] for v in doc["versions"]] == [["cache", "root"], ["cache", "root"]]
    out = runner.invoke(cli, ["sync", backend.url, "--cache", str(tmp_path / "typo")])
    assert out.exit_code == 1 and "does not exist" in out.output


def test_sync_failure_is_one_line_and_exit_1(tmp_path: Path) -> None:
    backend = Backend("local", str(tmp_path / "root" / "ckpt"))
    outage = Outage(backend)
    cache = str(tmp_path / "cache")
    mgr = backend.manager(cache=cache)
    outage.down()
    info = mgr.save(1, model=tensors_for(1))
    with pytest.raises(UploadError):
        mgr.close()
    outage.up()
    path = Path(cache) / "versions" / info.version / "state.pt"
    path.write_bytes(path.read_bytes()[:-10])  # the only copy is damaged: it cannot be uploaded
    out = CliRunner().invoke(cli, ["sync", backend.url, "--cache", cache])
    assert out.exit_code == 1
    assert out.output.count("\n") == 1
    assert "could not be uploaded" in out.output and "the source is corrupt" in out.output
    assert plain(backend).list() == []


# ----- two writers, a full disk, refusals ---------------------------------------------------------------------
def test_two_managers_with_their_own_caches_share_one_root(root: Backend, tmp_path: Path) -> None:
    import threading

    mgrs = [root.manager(cache=str(tmp_path / f"cache{i}")) for i in range(2)]
    saved: list[list[Any]] = [[], []]

    def run(i: int) -> None:
        for s in range(4):
            saved[i].append(mgrs[i].save(100 * i + s, model=tensors_for(100 * i + s)))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for m in mgrs:
        m.close()
    ids = [i.version for part in saved for i in part]
    assert len(set(ids)) == 8
    listed = plain(root).list()
    assert sorted(v.version for v in listed) == sorted(ids)
    assert [v.created_at for v in listed] == sorted(v.created_at for v in listed)
    assert plain(root).verify().ok


FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    sys.path[:0] = [{src!r}, {tests!r}]
    import torch
    from torchckpt import CheckpointManager, StorageError
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as a full disk would
    mgr = CheckpointManager(sys.argv[1], cache=sys.argv[2])
    first = mgr.save(1, w=torch.ones(1000))
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    try:
        mgr.save(2, w=torch.ones(1 << 20))
    except StorageError as exc:
        print("ERROR", exc)
    mgr.wait()
    print("LISTED", [v.step for v in mgr.list()], [v.tiers for v in mgr.list()])
""")


def test_full_cache_disk_is_a_storage_error_and_loses_nothing(tmp_path: Path) -> None:
    assert resource.RLIMIT_FSIZE  # Linux: a per-process file size limit stands in for a full disk
    code = FULL_DISK.format(src=SRC, tests=TESTS)
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "root"), str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "ERROR saving step 2 to file://" in out.stdout and "free space there" in out.stdout
    assert "LISTED [1] [('cache', 'root')]" in out.stdout
    assert [v.step for v in CheckpointManager(tmp_path / "root").list()] == [1]
    assert [n for n in os.listdir(tmp_path / "cache" / "versions") if not n.startswith(".")] == [
        v.version for v in CheckpointManager(tmp_path / "root").list()
    ]


def test_sharded_saves_and_foreign_caches_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cache= does not support sharded"):
        CheckpointManager(tmp_path / "root", cache=tmp_path / "cache", distributed=True)
    CheckpointManager(tmp_path / "root", cache=tmp_path / "cache").close()
    with pytest.raises(StorageError, match="belongs to root .*give every root its own cache"):
        CheckpointManager(tmp_path / "other", cache=tmp_path / "cache")
    with pytest.raises(ValueError, match="cache_keep_last"):
        CheckpointManager(tmp_path / "root", cache=tmp_path / "cache", cache_keep_last=-1)
    with pytest.raises(ValueError, match="is the root itself"):
        CheckpointManager(tmp_path / "root", cache=tmp_path / "root")


def test_upload_logs_duration_and_lag(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="torchckpt")
    with CheckpointManager(tmp_path / "root", cache=tmp_path / "cache") as mgr:
        info = mgr.save(1, model=tensors_for(1))
        mgr.wait()
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith(f"uploaded {info.version}"))
    assert " in " in line and "MB/s" in line and "behind the cache" in line


def test_sharded_state_in_a_process_group_is_refused_before_any_write(tmp_path: Path) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        sharded = {"w": distribute_tensor(torch.ones(4, 4), mesh, [Shard(0)])}
        with CheckpointManager(tmp_path / "root", cache=tmp_path / "cache") as mgr:
            with pytest.raises(ValueError, match="cache= does not support sharded.*docs/tiers.md"):
                mgr.save(1, weights=sharded)
            assert mgr.list() == [] and mgr.save(2, weights=torch.ones(3)).tiers == ("cache",)  # plain state: fine
        assert [v.step for v in CheckpointManager(tmp_path / "root").list()] == [2]
    finally:
        dist.destroy_process_group()


def test_any_fsspec_url_is_a_cache(memory_backend: Backend, tmp_path: Path) -> None:
    with CheckpointManager(tmp_path / "root", cache=memory_backend.url, cache_keep_last=1) as mgr:
        a = mgr.save(1, model=tensors_for(1))
        assert a.url.startswith("memory://")
        mgr.save(2, model=tensors_for(2))
        mgr.wait()
        assert [v.tiers for v in mgr.list()] == [("root",), ("cache", "root")]
        same(mgr.load(1)["model"], tensors_for(1))
    assert CheckpointManager(tmp_path / "root").verify().ok
