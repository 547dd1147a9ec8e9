"""An unusable root fails at once with ``StorageError`` naming the URL; the ways to name a root.

No wall-clock assertions: an unreachable endpoint must raise (the bounded retry
is what lets it), not hang.
"""

from __future__ import annotations

import os
import pathlib
import socket
from typing import Any

import boto3
import fsspec
import pytest
import torch

from torchckpt import CheckpointManager
from torchckpt.errors import CheckpointError, StorageError


def _put_file_at_root(backend) -> None:
    if backend.kind == "s3":
        bucket, key = backend.url[len("s3://") :].split("/", 1)
        endpoint = backend.storage_options["client_kwargs"]["endpoint_url"]
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").put_object(Bucket=bucket, Key=key, Body=b"x")
    else:
        fs, path = fsspec.core.url_to_fs(backend.url, **backend.storage_options)
        if backend.kind in ("local", "memory"):
            fs.makedirs(os.path.dirname(path.rstrip("/")), exist_ok=True)
        fs.pipe_file(path, b"not a folder")


def test_file_where_the_root_folder_should_be(backend):
    _put_file_at_root(backend)
    for kwargs in ({}, {"read_only": True}):
        with pytest.raises(StorageError) as err:
            backend.manager(**kwargs)
        msg = str(err.value)
        assert backend.url.split("://")[-1].rstrip("/") in msg
        assert "file" in msg
        assert isinstance(err.value, CheckpointError) and isinstance(err.value, OSError)


def test_file_where_a_parent_folder_should_be(tmp_path):
    (tmp_path / "blocker").write_text("x")
    with pytest.raises(StorageError, match="blocker"):
        CheckpointManager(tmp_path / "blocker" / "ckpt")


def test_read_only_on_missing_local_root(tmp_path):
    missing = tmp_path / "nothing-here"
    with pytest.raises(StorageError, match="nothing-here"):
        CheckpointManager(missing, read_only=True)
    assert not missing.exists()  # a reader creates nothing


def test_missing_bucket(s3_endpoint):
    url = "s3://no-such-bucket-torchckpt/run"
    with pytest.raises(StorageError) as err:
        CheckpointManager(url, storage_options={"client_kwargs": {"endpoint_url": s3_endpoint}})
    assert "no-such-bucket-torchckpt" in str(err.value)
    assert url in str(err.value)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_endpoint_raises_instead_of_hanging():
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    url = "s3://some-bucket/run"
    with pytest.raises(StorageError) as err:
        CheckpointManager(url, storage_options={"client_kwargs": {"endpoint_url": endpoint}})
    assert url in str(err.value)


def test_bucket_deleted_under_a_manager(s3_backend):
    mgr = s3_backend.manager()
    mgr.save(1, w=torch.zeros(1))
    bucket = s3_backend.url[len("s3://") :].split("/", 1)[0]
    endpoint = s3_backend.storage_options["client_kwargs"]["endpoint_url"]
    s3 = boto3.resource("s3", endpoint_url=endpoint, region_name="us-east-1").Bucket(bucket)
    s3.objects.all().delete()
    s3.delete()
    with pytest.raises(StorageError):
        mgr.save(2, w=torch.zeros(1))


# ----- ways to name a root ----------------------------------------------------------------------
def test_root_as_pathlike_and_relative_path(tmp_path, monkeypatch):
    mgr = CheckpointManager(pathlib.Path(tmp_path) / "p")
    info = mgr.save(1, w=torch.ones(1))
    monkeypatch.chdir(tmp_path)
    rel = CheckpointManager("p", read_only=True)
    assert rel.latest() == info and rel.root_url == mgr.root_url
    assert (tmp_path / "p" / "manifest.json").is_file()
    assert (tmp_path / "p" / "versions" / info.version / "meta.json").is_file()


def test_default_root_is_checkpoints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    CheckpointManager().save(1, w=torch.ones(1))
    assert (tmp_path / "checkpoints" / "manifest.json").is_file()


def test_filesystem_instance_instead_of_scheme(memory_backend):
    fs = fsspec.filesystem("memory")
    path = memory_backend.url[len("memory://") :]
    info = CheckpointManager(path, filesystem=fs).save(1, w=torch.ones(1))
    assert memory_backend.manager().latest() == info


def test_s3_endpoint_from_environment(s3_backend, monkeypatch):
    info = s3_backend.manager().save(1, w=torch.ones(1))
    for key, value in s3_backend.env.items():
        monkeypatch.setenv(key, value)
    mgr = CheckpointManager(s3_backend.url)  # no storage_options: AWS_ENDPOINT_URL is used
    assert mgr.latest() == info
    assert torch.equal(mgr.load()["w"], torch.ones(1))


@pytest.mark.skipif(not os.path.exists("/dev/null") or os.name != "posix", reason="needs /dev/null")
def test_local_data_file_writes_every_byte_of_a_huge_buffer() -> None:
    """write(2) moves at most ~2 GiB per call on Linux; a tensor that size must not be cut short.

    /dev/null shows the kernel's cap without 2 GiB of disk (the untouched buffer costs no RAM).
    Its fsync fails, which must still close the file.
    """
    import mmap

    from torchckpt.storage.local import FsyncOnClose as _FsyncOnClose

    size = (2 << 30) + 8192
    data = mmap.mmap(-1, size)  # anonymous, never touched: no memory is used
    f = _FsyncOnClose("/dev/null")
    written = f.write(data)
    data.close()
    assert written == size
    with pytest.raises(OSError):
        f.close()  # fsync of a character device: EINVAL
    assert f.closed


def test_s3_manifest_read_for_a_compare_and_swap_is_one_request(s3_backend: Any) -> None:
    """Content and ETag come from one GET (a HEAD first cost a request and could name newer content)."""
    from faulty_fs import FaultyFS

    inner = fsspec.filesystem("s3", **s3_backend.storage_options)
    counted = FaultyFS(inner)
    mgr = CheckpointManager(s3_backend.url, filesystem=counted)
    mgr.save(1, w=torch.ones(2))
    counted.reset_counts()
    data, token = mgr.storage.read_versioned("manifest.json")
    assert data and token and dict(counted.counts) == {"s3": 1}
    assert mgr.storage.write_conditional("manifest.json", data + b" ", token)
    assert not mgr.storage.write_conditional("manifest.json", data, token)  # the token was the old content's


def test_verify_turns_an_unreadable_data_file_into_a_storage_error(local_backend: Any) -> None:
    """verify() reads files itself: a backend failure must still be a CheckpointError, not a raw OSError."""
    mgr = local_backend.manager()
    info = mgr.save(1, w=torch.ones(2))
    path = pathlib.Path(mgr.storage.path(f"versions/{info.version}/{next(iter(info.files))}"))
    path.unlink()
    path.mkdir()  # reading it fails with IsADirectoryError
    with pytest.raises(StorageError, match="verifying"):
        mgr.verify()


def test_local_manifest_lock_timeout_is_a_storage_error(local_backend: Any, monkeypatch: Any) -> None:
    """Another writer holding the manifest lock too long: a StorageError, not filelock's Timeout."""
    import filelock

    mgr = local_backend.manager()
    real = filelock.FileLock
    monkeypatch.setattr(filelock, "FileLock", lambda path, timeout: real(path, timeout=0.1))
    with real(mgr.storage.path(".manifest.lock")), pytest.raises(StorageError, match="another writer"):
        mgr.save(1, w=torch.ones(2))
