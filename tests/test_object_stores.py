"""Object-store backends (S3, Azure Blob, GCS): fail-fast construction, the conditional-write probe,
single-writer mode, torn manifest reads, retried conditional writes, multipart leftovers, roots as typed.

Servers: moto (S3), azurite (Azure), gcp-storage-emulator with and without generation
preconditions (GCS), all on 127.0.0.1 (see conftest.py). Servers that ignore conditional
writes are the emulator as shipped and an S3 filesystem wrapper that drops ``If-Match`` /
``If-None-Match`` (what s3rver does).
"""

from __future__ import annotations

import gc
import json
import threading
import warnings
from datetime import datetime, timezone
from typing import Any

import boto3
import fsspec
import pytest
import torch
from click.testing import CliRunner

from conftest import Backend
from torchckpt import CheckpointManager
from torchckpt.cli import cli
from torchckpt.errors import ManifestError, SingleWriterWarning, StorageError, TornReadError
from torchckpt.layout import MANIFEST, PROBE_MARKER
from torchckpt.storage import object_store

OBJECT_STORES = ["s3", "azure", "gcs"]


def one_line_cli_error(url: str, options: dict[str, Any]) -> str:
    """``torchckpt list URL`` with these options: exit 1 and exactly one line on stderr."""
    result = CliRunner().invoke(cli, ["list", url, *Backend("", url, options).cli_options()])
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


# ----- construction: missing container/bucket, bad credentials, roots as typed ------------------------------
@pytest.mark.parametrize("kind", OBJECT_STORES)
def test_missing_bucket_or_container_is_one_storage_error_at_construction(request: Any, kind: str) -> None:
    backend: Backend = request.getfixturevalue(f"{kind}_backend")
    scheme = backend.url.split("://")[0]
    url = f"{scheme}://no-such-bucket-torchckpt/run"
    for read_only in (False, True):
        with pytest.raises(StorageError, match="no-such-bucket-torchckpt.*does not exist: create it first"):
            CheckpointManager(url, storage_options=backend.storage_options, read_only=read_only)
    line = one_line_cli_error(url, backend.storage_options)
    assert "no-such-bucket-torchckpt" in line and "does not exist" in line


def test_bad_credentials_on_azure_are_one_storage_error_at_construction(
    azurite_server: Any, azure_backend: Backend
) -> None:
    options = azurite_server.bad_credentials_options()
    with pytest.raises(StorageError, match=r"credentials were rejected \(403") as err:
        CheckpointManager(azure_backend.url, storage_options=options)
    assert err.value.__cause__ is None or "403" in str(err.value)
    assert "credentials were rejected (403" in one_line_cli_error(azure_backend.url, options)


def test_bad_credentials_on_gcs_are_one_storage_error_at_construction() -> None:
    from servers.gcs import GCSEmulator

    with GCSEmulator(preconditions=True, require_token="s3cret") as emulator, emulator.bucket() as bucket:
        url = f"gs://{bucket}/run"
        CheckpointManager(url, storage_options=emulator.storage_options())  # the right token works
        with pytest.raises(StorageError, match=r"credentials were rejected \(401\)"):
            CheckpointManager(url, storage_options=emulator.bad_credentials_options())
        # the CLI takes JSON options: anonymous access, which this server rejects the same way
        line = one_line_cli_error(url, {"endpoint_url": emulator.endpoint, "token": "anon"})
        assert "credentials were rejected (401)" in line


def test_malformed_azure_connection_string_is_a_storage_error(azure_backend: Backend) -> None:
    with pytest.raises(StorageError, match="cannot open"):
        CheckpointManager(azure_backend.url, storage_options={"connection_string": "nonsense"})


def test_container_or_bucket_deleted_under_a_manager_is_a_storage_error(azurite_server: Any, gcs_server: Any) -> None:
    with azurite_server.container() as container:
        mgr = CheckpointManager(f"az://{container}/run", storage_options=azurite_server.storage_options())
        mgr.save(1, w=torch.zeros(1))
        azurite_server.delete_container(container)
        with pytest.raises(StorageError, match=f"az://{container}/run/versions/.*(ContainerNotFound|container)"):
            mgr.save(2, w=torch.zeros(1))
    with gcs_server.bucket() as bucket:
        mgr = CheckpointManager(f"gs://{bucket}/run", storage_options=gcs_server.storage_options())
        mgr.save(1, w=torch.zeros(1))
        gcs_server.delete_bucket(bucket)
        with pytest.raises((StorageError, FileNotFoundError), match=f"gs://{bucket}/run|{bucket}"):
            mgr.save(2, w=torch.zeros(1))
        gcs_server.create_bucket(bucket)  # for the fixture's cleanup


@pytest.mark.parametrize(("kind", "scheme"), [("azure", "az"), ("azure", "abfs"), ("gcs", "gs"), ("gcs", "gcs")])
def test_roots_are_shown_as_typed(request: Any, kind: str, scheme: str) -> None:
    backend: Backend = request.getfixturevalue(f"{kind}_backend")
    url = f"{scheme}://{backend.url.split('://', 1)[1]}"
    mgr = CheckpointManager(url, storage_options=backend.storage_options)
    info = mgr.save(1, model={"w": torch.ones(3)})
    assert mgr.root_url == url and repr(mgr) == f"CheckpointManager({url!r})"
    assert info.url.startswith(url + "/versions/")
    assert mgr.storage.kind == kind


# ----- the probe ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", OBJECT_STORES)
def test_servers_that_honour_conditional_writes_pass_the_probe(request: Any, kind: str) -> None:
    backend: Backend = request.getfixturevalue(f"{kind}_backend")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SingleWriterWarning)
        mgr = backend.manager()
    assert mgr.storage.multi_writer_safe
    marker = json.loads(mgr.storage.read_bytes(PROBE_MARKER))
    assert marker["honoured"] is True and marker["server"] == mgr.storage.server_identity()
    assert not [n for n in mgr.storage.list_names("") if n.startswith(".torchckpt-probe-")]


def test_the_unpatched_gcs_emulator_is_detected(gcs_ignoring_backend: Backend) -> None:
    with pytest.warns(SingleWriterWarning, match="ignores conditional writes.*single-writer mode"):
        mgr = gcs_ignoring_backend.manager()
    assert not mgr.storage.multi_writer_safe
    assert json.loads(mgr.storage.read_bytes(PROBE_MARKER))["honoured"] is False
    mgr.save(1, model={"w": torch.ones(2)})  # single-writer mode still saves, under the lease
    assert [v.step for v in mgr.list()] == [1]
    assert not mgr.storage.exists(".manifest.lease")  # released after the update


def test_the_probe_runs_once_per_root_and_its_marker_is_used(gcs_backend: Backend) -> None:
    mgr = gcs_backend.manager()
    storage = mgr.storage
    # another process (empty in-process cache) reads the marker instead of probing
    object_store._PROBED.clear()
    storage.write_bytes(PROBE_MARKER, json.dumps({"honoured": False, "server": storage.server_identity()}).encode())
    with pytest.warns(SingleWriterWarning):
        gcs_backend.manager()
    # a marker written for another server is not trusted: probe again
    object_store._PROBED.clear()
    storage.write_bytes(PROBE_MARKER, json.dumps({"honoured": False, "server": "elsewhere"}).encode())
    with warnings.catch_warnings():
        warnings.simplefilter("error", SingleWriterWarning)
        assert gcs_backend.manager().storage.multi_writer_safe
    assert json.loads(storage.read_bytes(PROBE_MARKER))["honoured"] is True


class IgnoringConditionsS3:
    """An s3fs filesystem whose PUTs lose ``If-Match`` / ``If-None-Match``: a server like s3rver."""

    def __init__(self, inner: Any) -> None:
        self.__dict__["_inner"] = inner

    def call_s3(self, method: str, *args: Any, **kwargs: Any) -> Any:
        kwargs.pop("IfMatch", None)
        kwargs.pop("IfNoneMatch", None)
        return self._inner.call_s3(method, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def s3_fs(backend: Backend) -> Any:
    return fsspec.filesystem("s3", skip_instance_cache=True, **backend.storage_options)


def test_an_s3_server_ignoring_conditions_is_detected_and_the_lease_keeps_threads_apart(
    s3_backend: Backend, monkeypatch: Any
) -> None:
    monkeypatch.setenv("TORCHCKPT_LEASE_SETTLE_S", "0.2")
    fs = IgnoringConditionsS3(s3_fs(s3_backend))
    with pytest.warns(SingleWriterWarning, match="ignores conditional writes"):
        first = CheckpointManager(s3_backend.url, filesystem=fs)
    assert first.storage.kind == "s3" and not first.storage.multi_writer_safe
    with pytest.warns(SingleWriterWarning):  # every writer is told
        managers = [first] + [
            CheckpointManager(s3_backend.url, filesystem=IgnoringConditionsS3(s3_fs(s3_backend))) for _ in range(2)
        ]
    saved: list[str] = []
    lock = threading.Lock()

    def run(mgr: CheckpointManager, base: int) -> None:
        for n in range(4):
            info = mgr.save(base + n, model={"w": torch.full((4,), float(base + n))})
            with lock:
                saved.append(info.version)

    threads = [threading.Thread(target=run, args=(m, 100 * i)) for i, m in enumerate(managers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(saved) == 12
    assert sorted(v.version for v in first.list()) == sorted(saved)


# ----- torn manifest reads, retried conditional writes --------------------------------------------------------
class TornReads:
    """Wraps a storage's ``read_versioned``: every ``every``-th manifest read comes back torn."""

    def __init__(self, storage: Any, every: int, how: str) -> None:
        self.storage, self.every, self.how, self.calls, self.torn = storage, every, how, 0, 0
        self.original = storage.read_versioned
        self.guard = threading.Lock()
        storage.read_versioned = self

    def __call__(self, rel: str) -> tuple[bytes | None, str | None]:
        data, token = self.original(rel)
        with self.guard:
            self.calls += 1
            tear = rel == MANIFEST and data is not None and self.calls % self.every == 0
            if tear:
                self.torn += 1
        if not tear:
            return data, token
        if self.how == "short":  # a server announcing the length: the backend notices
            raise TornReadError(f"{rel}: read {len(data) // 2} bytes, the server announced {len(data)}")
        return data[: len(data) // 2], token  # a server that does not: half a JSON document


@pytest.mark.parametrize("how", ["short", "half-json"])
@pytest.mark.parametrize("kind", ["memory", "s3", "gcs"])
def test_torn_manifest_reads_are_read_again_and_nothing_is_lost(request: Any, kind: str, how: str) -> None:
    backend: Backend = request.getfixturevalue(f"{kind}_backend")
    managers = [backend.manager() for _ in range(3)]
    tears = [TornReads(m.storage, every=3, how=how) for m in managers]
    saved: list[str] = []
    lock = threading.Lock()

    def run(mgr: CheckpointManager, base: int) -> None:
        for n in range(5):
            info = mgr.save(base + n, model={"w": torch.full((4,), float(base + n))})
            mgr.list()  # read() retries torn reads too
            with lock:
                saved.append(info.version)

    threads = [threading.Thread(target=run, args=(m, 100 * i)) for i, m in enumerate(managers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(saved) == 15 and sum(t.torn for t in tears) > 0
    assert sorted(v.version for v in backend.manager().list()) == sorted(saved)


def test_s3_notices_a_short_manifest_read(s3_backend: Backend) -> None:
    """The S3 backend compares the body with the announced Content-Length (s3rver served torn reads)."""
    mgr = s3_backend.manager()
    mgr.save(1, model={"w": torch.ones(2)})
    inner = mgr.storage.fs
    calls = {"n": 0}

    class ShortBody:
        def __init__(self, body: Any) -> None:
            self.body = body

        async def read(self) -> bytes:
            return (await self.body.read())[:-7]

        def close(self) -> None:
            self.body.close()

    original = inner._call_s3

    async def call_s3(method: str, *args: Any, **kwargs: Any) -> Any:
        resp = await original(method, *args, **kwargs)
        if method == "get_object" and kwargs.get("Key", "").endswith(MANIFEST) and calls["n"] < 2:
            calls["n"] += 1
            resp["Body"] = ShortBody(resp["Body"])
        return resp

    inner._call_s3 = call_s3
    try:
        with pytest.raises(TornReadError, match="the server announced"):
            mgr.storage.read_versioned(MANIFEST)
        calls["n"] = 0
        info = mgr.save(2, model={"w": torch.ones(2)})  # two torn reads, then a whole one
        assert calls["n"] == 2 and [v.step for v in mgr.list()] == [1, 2] and mgr.latest().version == info.version
    finally:
        del inner._call_s3


def test_a_stably_bad_manifest_is_still_a_manifest_error(memory_backend: Backend) -> None:
    mgr = memory_backend.manager()
    mgr.save(1, model={"w": torch.ones(2)})
    mgr.storage.write_bytes(MANIFEST, b'{"format_version": 1, "versi')
    with pytest.raises(ManifestError, match="not valid JSON.*torchckpt repair"):
        mgr.list()
    with pytest.raises(ManifestError, match="not valid JSON"):
        mgr.save(2, model={"w": torch.ones(2)})
    assert [v.step for v in mgr.repair()] == [1, 2]  # save 2 committed its meta.json before the update failed


@pytest.mark.parametrize("kind", ["memory", "azure", "gcs"])
def test_a_conditional_write_reported_lost_after_it_landed_counts_as_written(request: Any, kind: str) -> None:
    """A client retry after the first try landed gets 412/409: the update sees its own bytes and stops."""
    from torchckpt import manifest as mf

    backend: Backend = request.getfixturevalue(f"{kind}_backend")
    storage = backend.manager().storage
    original = storage.write_conditional
    answers: list[bool] = []

    def lost_answer(rel: str, data: bytes, token: str | None) -> bool:
        answers.append(original(rel, data, token))
        return False if len(answers) == 1 else answers[-1]  # the first answer is "lost"

    storage.write_conditional = lost_answer
    changes = []

    def change(m: mf.Manifest) -> mf.Manifest:
        changes.append(m.generation)
        return mf.Manifest(generation=m.generation, versions=list(m.versions))

    result = mf.update(storage, change)
    assert answers == [True] and changes == [0] and result.generation == 1
    assert mf.read(storage).generation == 1


# ----- discarded writes never commit, on every backend ---------------------------------------------------------
def test_a_failed_atomic_write_never_publishes_the_partial_file(backend: Backend) -> None:
    storage = backend.manager().storage
    for size in (1000, 3 << 20):
        with pytest.raises(Exception, match="boom"), storage.atomic_writer("versions/x/state.pt") as f:
            f.write(b"\x01" * size)
            raise RuntimeError("boom")
        del f
        gc.collect()  # an unclosed fsspec file commits itself in __del__ (gcsfs: from its deferred-close thread)
        assert not storage.exists("versions/x/state.pt"), size


# ----- gc and unfinished multipart uploads ------------------------------------------------------------------------
def test_gc_aborts_stale_multipart_uploads_under_the_root(s3_backend: Backend, s3_endpoint: str) -> None:
    mgr = s3_backend.manager()
    bucket, prefix = s3_backend.url[len("s3://") :].split("/", 1)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    key = f"{prefix}/versions/20260101T000000.000000Z-step000001-abcdef/state.pt"
    up = s3.create_multipart_upload(Bucket=bucket, Key=key)
    s3.upload_part(Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=1, Body=b"x" * (5 << 20))
    other = s3.create_multipart_upload(Bucket=bucket, Key="elsewhere/state.pt")  # not under the root

    class StartedNow(IgnoringConditionsS3):  # moto reports a fixed Initiated date (2010): make it "now"
        def call_s3(self, method: str, *args: Any, **kwargs: Any) -> Any:
            resp = self._inner.call_s3(method, *args, **kwargs)
            for up in resp.get("Uploads", []) if method == "list_multipart_uploads" else []:
                up["Initiated"] = datetime.now(timezone.utc)
            return resp

    young = CheckpointManager(s3_backend.url, filesystem=StartedNow(s3_fs(s3_backend)))
    assert young.gc(older_than=3600) == []  # too young: possibly a save in progress
    assert len(s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])) == 2
    removed = mgr.gc(older_than=3600)
    assert "versions/20260101T000000.000000Z-step000001-abcdef/state.pt" in removed
    left = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["UploadId"] for u in left] == [other["UploadId"]]


def test_gc_says_so_where_the_server_cannot_list_multipart_uploads(s3_backend: Backend, caplog: Any) -> None:
    class NoUploadListing(IgnoringConditionsS3):
        def call_s3(self, method: str, *args: Any, **kwargs: Any) -> Any:
            if method == "list_multipart_uploads":
                raise NotImplementedError("A header you provided implies functionality that is not implemented")
            return self._inner.call_s3(method, *args, **kwargs)

    mgr = CheckpointManager(s3_backend.url, filesystem=NoUploadListing(s3_fs(s3_backend)))
    with caplog.at_level("WARNING", logger="torchckpt"):
        assert mgr.gc(older_than=0) == []
    assert "cannot list unfinished multipart uploads" in caplog.text


def test_gcs_without_a_generation_header_asks_for_the_generation(gcs_backend: Backend) -> None:
    """gcp-storage-emulator as shipped sends no x-goog-generation on downloads: metadata first, then that generation."""
    mgr = gcs_backend.manager()
    mgr.save(1, model={"w": torch.ones(2)})
    fs = mgr.storage.fs
    original = fs._call
    dropped = {"n": 0}

    async def call(method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        out = await original(method, path, *args, **kwargs)
        if kwargs.get("alt") == "media" and "generation" not in kwargs:
            headers, data = out
            dropped["n"] += 1
            return {k.lower(): v for k, v in headers.items() if k.lower() != "x-goog-generation"}, data
        return out

    fs._call = call
    try:
        data, token = mgr.storage.read_versioned(MANIFEST)
        assert data is not None and token is not None and int(token) > 0
        mgr.save(2, model={"w": torch.ones(2)})
        assert dropped["n"] >= 2 and [v.step for v in mgr.list()] == [1, 2]
    finally:
        del fs._call
