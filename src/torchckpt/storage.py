"""Every byte goes through here: an fsspec filesystem plus the quirks of each backend.

The manager sees three capabilities and never a URL scheme:

* ``version_writer(id)``: write a version's files so readers see all or nothing
  (local disk: a hidden staging folder, fsynced, renamed into place; object
  stores and ``memory://``: files first, ``meta.json`` last).
* ``read_versioned`` / ``write_conditional`` under ``lock()``: a compare-and-swap
  on one small file (local: a file lock + ``os.replace``; ``memory://``: a
  process lock; S3: ``IfMatch`` / ``IfNoneMatch`` conditional PUTs).
* listing, reading, batched removal, all without stale listing caches.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import posixpath
import secrets
import threading
from typing import IO, Any, Iterator, Mapping

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .errors import CheckpointError, StorageError

log = logging.getLogger(__name__)

STAGING_PREFIX = ".tmp-"
_MEMORY_LOCKS: dict[str, threading.RLock] = {}
_MEMORY_LOCKS_GUARD = threading.Lock()

#: Bounded network behaviour for S3 unless the user chose otherwise.
_S3_DEFAULT_CONFIG = {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 3, "mode": "standard"}}


def _s3_defaults(options: dict[str, Any]) -> dict[str, Any]:
    options = dict(options)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    client_kwargs = dict(options.get("client_kwargs") or {})
    if endpoint and "endpoint_url" not in client_kwargs and "endpoint_url" not in options:
        client_kwargs["endpoint_url"] = endpoint
    if client_kwargs:
        options["client_kwargs"] = client_kwargs
    config = dict(_S3_DEFAULT_CONFIG)
    config.update(options.get("config_kwargs") or {})
    options["config_kwargs"] = config
    return options


def _is_precondition_failure(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return isinstance(exc, FileExistsError) or any(
        s in text for s in ("pre-condition", "precondition", "conditionalrequestconflict", "412", "409")
    )


class Storage:
    """A root folder on one fsspec filesystem."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        storage_options: Mapping[str, Any] | None = None,
        filesystem: fsspec.AbstractFileSystem | None = None,
    ) -> None:
        options = dict(storage_options or {})
        root_str = os.fspath(root)
        try:
            if filesystem is not None:
                fs, path = filesystem, filesystem._strip_protocol(root_str)
            else:
                protocol = fsspec.core.split_protocol(root_str)[0] or "file"
                if protocol in ("s3", "s3a"):
                    options = _s3_defaults(options)
                fs, path = fsspec.core.url_to_fs(root_str, **options)
        except (ImportError, ValueError) as exc:
            raise StorageError(f"cannot open {root_str}: {exc}") from exc
        self.fs: fsspec.AbstractFileSystem = fs
        self.is_local = isinstance(fs, LocalFileSystem)
        protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
        self.is_memory = "memory" in protocols
        self.is_s3 = "s3" in protocols or "s3a" in protocols
        if self.is_local:
            path = os.path.abspath(path)
        self.root = path.rstrip("/") or "/"
        self.storage_options = options

    # ----- naming -------------------------------------------------------------------------------
    def path(self, rel: str = "") -> str:
        """Absolute path of ``rel`` under the root; ``rel`` never escapes it."""
        if not rel:
            return self.root
        norm = posixpath.normpath(rel)
        if rel.startswith("/") or norm.startswith("..") or "\\" in rel or "\x00" in rel:
            raise CheckpointError(f"path {rel!r} escapes the checkpoint root")
        return posixpath.join(self.root, norm) if not self.is_local else os.path.join(self.root, norm)

    def url(self, rel: str = "") -> str:
        return self.fs.unstrip_protocol(self.path(rel))

    @property
    def root_url(self) -> str:
        return self.url()

    @contextlib.contextmanager
    def errors(self, what: str, rel: str = "") -> Iterator[None]:
        """Turn backend errors (other than a missing file) into ``StorageError`` naming the URL."""
        try:
            yield
        except (CheckpointError, FileNotFoundError):
            raise
        except Exception as exc:  # botocore, aiohttp, PermissionError, ...
            raise StorageError(f"{what} failed for {self.url(rel)}: {type(exc).__name__}: {exc}") from exc

    # ----- reachability --------------------------------------------------------------------------
    def check(self, *, create: bool) -> None:
        """Fail fast when the root cannot be used (missing bucket, file in the way, no credentials)."""
        with self.errors("opening the checkpoint root"):
            try:
                info = self.fs.info(self.root)
            except FileNotFoundError:
                info = None
            if info is not None and info.get("type") != "directory":
                raise StorageError(f"{self.root_url} is a file, not a folder: choose another root")
            if info is None:
                if self.is_s3:
                    bucket = self.root.split("/", 1)[0]
                    try:
                        self.fs.ls(bucket, detail=False)
                    except FileNotFoundError:
                        raise StorageError(f"bucket {bucket!r} of {self.root_url} does not exist: create it first") from None
                elif not create:
                    raise StorageError(f"{self.root_url} does not exist")
                if create and not self.is_s3:
                    self.fs.makedirs(self.root, exist_ok=True)

    # ----- reading --------------------------------------------------------------------------------
    def invalidate(self, rel: str = "") -> None:
        self.fs.invalidate_cache(self.path(rel))

    def exists(self, rel: str) -> bool:
        self.invalidate(rel)
        with self.errors("checking", rel):
            return bool(self.fs.exists(self.path(rel)))

    def read_bytes(self, rel: str) -> bytes:
        with self.errors("reading", rel):
            if self.is_s3:  # one GET: by default s3fs first HEADs the object to plan ranged reads
                return self.fs.cat_file(self.path(rel), max_concurrency=1)
            return self.fs.cat_file(self.path(rel))

    def open_read(self, rel: str) -> IO[bytes]:
        """A seekable binary reader: the real file locally, an in-memory copy elsewhere."""
        if self.is_local:
            return open(self.path(rel), "rb")
        return io.BytesIO(self.read_bytes(rel))

    def list_names(self, rel: str) -> list[str]:
        """Names directly under ``rel`` (no cache), empty when it does not exist."""
        self.invalidate(rel)
        with self.errors("listing", rel):
            try:
                entries = self.fs.ls(self.path(rel), detail=False)
            except FileNotFoundError:
                return []
        return sorted({posixpath.basename(str(e).rstrip("/")) for e in entries} - {""})

    def size(self, rel: str) -> int:
        with self.errors("stat", rel):
            return int(self.fs.size(self.path(rel)))

    def modified(self, rel: str) -> float | None:
        """Last modification time (POSIX seconds) when the backend knows it."""
        try:
            return self.fs.modified(self.path(rel)).timestamp()
        except Exception:  # directories on object stores have no mtime
            return None

    # ----- writing ---------------------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a small file so readers see the old or the new content, never a mix."""
        target = self.path(rel)
        with self.errors("writing", rel):
            if self.is_local:
                _atomic_local_write(target, data)
            else:
                self.fs.pipe_file(target, data)

    def open_write(self, rel: str) -> IO[bytes]:
        """A streaming binary writer for a data file (not atomic by itself)."""
        target = self.path(rel)
        if self.is_local:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            return open(target, "wb")
        if self.is_s3:  # concurrent multipart upload from a bounded buffer pool (s3fs's is sequential)
            from .s3_transfer import S3MultipartWriter

            return S3MultipartWriter(self.fs, target)
        return self.fs.open(target, "wb")

    def remove(self, rels: list[str], *, recursive: bool = True) -> None:
        """Remove files (or folders), batched: one multi-object delete per 1000 keys on S3.

        Missing entries are ignored, so a retried or repeated removal is harmless.
        """
        if not rels:
            return
        paths = [self.path(r) for r in rels]
        with self.errors("deleting", rels[0]):
            if not self.is_s3:  # S3 multi-delete ignores missing keys; the others raise
                paths = [p for p in paths if self.fs.exists(p)]
            if paths:
                try:
                    self.fs.rm(paths, recursive=recursive)
                except FileNotFoundError:
                    pass
        for folder in {posixpath.dirname(r) for r in rels}:
            self.invalidate(folder)

    # ----- compare-and-swap on one small file ---------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Serialise writers where the backend has no conditional write."""
        if self.is_local:
            from filelock import FileLock, Timeout

            lock = FileLock(self.path(f".{name}.lock"), timeout=120)
            try:
                lock.acquire()
            except Timeout as exc:
                raise StorageError(
                    f"could not lock {self.url(name)} within {lock.timeout:g} s: another writer holds it"
                ) from exc
            try:
                yield
            finally:
                lock.release()
        elif self.is_memory:
            with _MEMORY_LOCKS_GUARD:
                lk = _MEMORY_LOCKS.setdefault(self.path(name), threading.RLock())
            with lk:
                yield
        else:
            yield  # S3 uses conditional writes; others are documented as single-writer

    def read_versioned(self, rel: str) -> tuple[bytes | None, str | None]:
        """Content and a token (an ETag on S3) for ``write_conditional``."""
        if self.is_s3:
            from fsspec.asyn import sync

            bucket, key, _ = self.fs.split_path(self.path(rel))

            async def get() -> tuple[bytes, str]:
                resp = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
                body = resp["Body"]
                try:
                    return await body.read(), resp["ETag"]
                finally:
                    body.close()

            with self.errors("reading", rel):
                try:  # one GET: the content and the ETag of that very content (a HEAD first was 2 requests)
                    return sync(self.fs.loop, get)
                except FileNotFoundError:
                    return None, None
        try:
            return self.read_bytes(rel), None
        except FileNotFoundError:
            return None, None

    def write_conditional(self, rel: str, data: bytes, token: str | None) -> bool:
        """Write unless someone else changed the file since ``read_versioned``; False on conflict."""
        if not self.is_s3:
            self.write_bytes(rel, data)  # callers hold lock()
            return True
        bucket, key, _ = self.fs.split_path(self.path(rel))
        cond = {"IfMatch": token} if token else {"IfNoneMatch": "*"}
        try:
            self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **cond)
        except Exception as exc:
            if _is_precondition_failure(exc):
                return False
            raise StorageError(f"writing {self.url(rel)} failed: {type(exc).__name__}: {exc}") from exc
        self.invalidate(posixpath.dirname(rel))
        return True

    # ----- versions ----------------------------------------------------------------------------------
    def version_writer(self, rel_dir: str) -> "VersionWriter":
        return VersionWriter(self, rel_dir)


class VersionWriter:
    """Writes one version folder; ``commit()`` makes it visible, ``abort()`` removes traces."""

    def __init__(self, storage: Storage, rel_dir: str) -> None:
        self.storage = storage
        self.rel_dir = rel_dir
        parent, name = posixpath.split(rel_dir)
        # Local disks write into a hidden sibling and rename it into place at commit.
        self.work_dir = (
            posixpath.join(parent, f"{STAGING_PREFIX}{name}-{secrets.token_hex(3)}") if storage.is_local else rel_dir
        )
        self.written: list[str] = []
        self.committed = False

    def open(self, name: str) -> IO[bytes]:
        self.written.append(name)
        if self.storage.is_local:
            return _FsyncOnClose(self.storage.path(posixpath.join(self.work_dir, name)))
        return self.storage.open_write(posixpath.join(self.work_dir, name))

    def write_bytes(self, name: str, data: bytes) -> None:
        with self.open(name) as f:
            f.write(data)

    def commit(self, meta_name: str, meta: bytes) -> None:
        """Write the commit marker last; on a local disk then rename the folder into place."""
        st = self.storage
        with st.errors("committing", self.rel_dir):
            if st.is_local:
                self.write_bytes(meta_name, meta)
                work, final = st.path(self.work_dir), st.path(self.rel_dir)
                _fsync_dir(work)
                os.rename(work, final)
                _fsync_dir(os.path.dirname(final))
            else:
                st.fs.pipe_file(st.path(posixpath.join(self.rel_dir, meta_name)), meta)
                st.invalidate(self.rel_dir)
        self.committed = True

    def abort(self) -> None:
        """Best effort: remove what this writer wrote; ``gc`` catches the rest."""
        if self.committed:
            return
        try:
            self.storage.remove([self.work_dir])
        except Exception as exc:  # the original error matters more
            log.warning("could not clean up %s after a failed save: %s", self.storage.url(self.work_dir), exc)


class _FsyncOnClose(io.FileIO):
    """A local file that reaches the disk before it is closed."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        super().__init__(path, "wb")

    def write(self, data: Any) -> int:
        """Write all of ``data``: one write(2) stops at ~2 GiB on Linux, and a tensor comes in one call."""
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += super().write(view[done:])
        return done

    def close(self) -> None:
        if self.closed:
            return
        try:
            os.fsync(self.fileno())
        finally:  # a failed fsync must not leak the descriptor
            super().close()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_local_write(target: str, data: bytes) -> None:
    folder = os.path.dirname(target)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(target)}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)

