"""Local disk (paths, ``file://``): staging folder + fsync + rename, a file lock for the manifest.

* Versions commit with ``RenameIntoPlace``; every data file is fsynced as it
  closes, then the staging folder and its parent.
* Small files (the manifest) are written to a temporary file, fsynced and
  ``os.replace``d, so readers see the old or the new content.
* The manifest compare-and-swap holds a ``filelock`` lock next to it: writers on
  one machine (or on a shared filesystem with working locks) are serialised.
* Reads are memory-mapped: checksums hash the page cache directly and
  ``torch.load(mmap=True)`` maps the same pages again, so a verified load reads
  the disk once.
"""

from __future__ import annotations

import contextlib
import io
import mmap
import os
import secrets
from collections.abc import Iterator, Mapping
from typing import IO, Any, ClassVar

from ..errors import StorageError
from ..hashing import check_later, checksum_file
from .base import Storage
from .commit import CommitStrategy, RenameIntoPlace

#: Seconds a writer waits for another process's manifest lock.
LOCK_TIMEOUT = 120.0


class LocalStorage(Storage):
    """A folder on a local (or locally mounted) disk."""

    commit_strategy: ClassVar[CommitStrategy] = RenameIntoPlace()
    multi_writer_safe = True
    kind: ClassVar[str] = "local"

    def normalize_root(self, path: str) -> str:
        return os.path.abspath(path).rstrip("/") or "/"

    def path(self, rel: str = "") -> str:
        return os.path.normpath(super().path(rel)) if rel else self.root

    # ----- reading ---------------------------------------------------------------------------------
    def local_path(self, rel: str) -> str:
        """The file's path on this machine."""
        return self.path(rel)

    def open_read(self, rel: str) -> IO[bytes]:
        return open(self.path(rel), "rb")

    def open_stream(self, rel: str, *, block_size: int = 0) -> IO[bytes]:
        return open(self.path(rel), "rb")

    def read_bytes(self, rel: str) -> bytes:
        with self.errors("reading", rel), open(self.path(rel), "rb") as f:
            return f.read()

    def read_range(self, rel: str, start: int, end: int) -> bytes:
        with self.errors("reading", rel), open(self.path(rel), "rb") as f:
            f.seek(start)
            return f.read(max(0, end - start))

    def map_read(self, rel: str) -> mmap.mmap | None:
        """The file mapped privately (``MAP_PRIVATE``): the page cache itself, never written back.

        An empty file cannot be mapped: None, and the caller reads its (zero) bytes.
        """
        with self.errors("reading", rel), open(self.path(rel), "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return None
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)

    def checksum(self, rel: str) -> tuple[str, int]:
        with self.errors("verifying", rel):
            return checksum_file(self.path(rel))  # from a memory map: no copies through a file object

    def load_source(self, rel: str, expected: Mapping[str, Any] | None, *, verify: bool) -> str | IO[bytes]:
        path = self.path(rel)
        if not os.path.exists(path):
            raise FileNotFoundError(path)
        if verify and expected:  # hashed from a map of the page cache, which torch.load(mmap=True) maps again
            check_later(self.url(rel), expected, lambda: self.checksum(rel))
        return path

    # ----- writing --------------------------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> None:
        with self.atomic_writer(rel) as f:
            f.write(data)

    @contextlib.contextmanager
    def atomic_writer(self, rel: str) -> Iterator[IO[bytes]]:
        target = self.path(rel)
        folder = os.path.dirname(target)
        tmp = os.path.join(folder, f".{os.path.basename(target)}.{secrets.token_hex(4)}.tmp")
        with self.errors("writing", rel):
            os.makedirs(folder, exist_ok=True)
            f = FsyncOnClose(tmp)
            try:
                yield f
                f.close()  # fsynced before it gets its final name
                os.replace(tmp, target)
            except BaseException:
                f.close()
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            fsync_dir(folder)

    def open_write(self, rel: str) -> IO[bytes]:
        return FsyncOnClose(self.path(rel))

    def publish_folder(self, work_dir: str, rel_dir: str) -> None:
        work, final = self.path(work_dir), self.path(rel_dir)
        for folder, _, _ in os.walk(work, topdown=False):  # nested folders of a folder version, the top last
            fsync_dir(folder)
        os.rename(work, final)
        fsync_dir(os.path.dirname(final))

    # ----- compare-and-swap ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        from filelock import FileLock, Timeout

        lock = FileLock(self.path(f".{name}.lock"), timeout=LOCK_TIMEOUT)
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


class FsyncOnClose(io.FileIO):
    """A local file that reaches the disk before it is closed."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        super().__init__(path, "wb")

    def write(self, data: Any) -> int:
        """Write all of ``data``: one write(2) stops at ~2 GiB on Linux, and a tensor comes in one call."""
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += super().write(view[done:]) or 0
        return done

    def close(self) -> None:
        if self.closed:
            return
        try:
            os.fsync(self.fileno())
        finally:  # a failed fsync must not leak the descriptor
            super().close()


def fsync_dir(path: str) -> None:
    """fsync a folder, so a rename or a new entry in it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
