"""How a ``Storage`` reads: whole files, ranges, streams, buffers, memory maps, checksums, listings.

A mixin of ``storage.base.Storage`` (kept apart so each module stays one screenful);
backends override single methods for their fast paths (a local disk memory-maps,
S3 fills one preallocated buffer with ranged GETs).
"""

from __future__ import annotations

import io
import mmap
import posixpath
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import IO, TYPE_CHECKING, Any

from ..hashing import checksum_bytes, checksum_stream, verify_record

if TYPE_CHECKING:
    import fsspec

#: Bytes a streamed read asks for at a time.
STREAM_CHUNK = 8 << 20


class Reads:
    """The reading half of the ``Storage`` interface (generic fsspec behaviour)."""

    if TYPE_CHECKING:  # provided by Storage
        fs: fsspec.AbstractFileSystem

        def path(self, rel: str = "") -> str: ...
        def url(self, rel: str = "") -> str: ...
        def errors(self, what: str, rel: str = "") -> AbstractContextManager[None]: ...

    def invalidate(self, rel: str = "") -> None:
        """Forget any cached listing of ``rel`` (fsspec filesystems cache directory listings)."""
        self.fs.invalidate_cache(self.path(rel))

    def exists(self, rel: str) -> bool:
        """Whether ``rel`` exists now (no cached listing)."""
        self.invalidate(rel)
        with self.errors("checking", rel):
            return bool(self.fs.exists(self.path(rel)))

    def read_bytes(self, rel: str) -> bytes:
        """The whole content of a (small) file.

        Raises:
            FileNotFoundError: it does not exist.
            StorageError: the backend failed.
        """
        with self.errors("reading", rel):
            return bytes(self.fs.cat_file(self.path(rel)))

    def read_range(self, rel: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of a file (one ranged read where the backend has them)."""
        with self.errors("reading", rel):
            return bytes(self.fs.cat_file(self.path(rel), start=start, end=end))

    def open_read(self, rel: str) -> IO[bytes]:
        """A seekable binary reader (an in-memory copy unless the backend can do better)."""
        return io.BytesIO(self.read_bytes(rel))

    def open_stream(self, rel: str, *, block_size: int = STREAM_CHUNK) -> IO[bytes]:
        """A sequential reader that holds at most about ``block_size`` bytes at a time.

        Raises:
            FileNotFoundError: the file does not exist.
        """
        with self.errors("reading", rel):
            return self.fs.open(self.path(rel), "rb", block_size=block_size)

    def read_buffer(self, rel: str, size: int) -> bytearray:
        """A whole file of expected ``size`` in one buffer (no joined second copy).

        A file of another size is returned at its real length (or one byte longer
        when it is longer), so the caller's size check reports it.
        """
        buf = bytearray(size)
        with self.errors("reading", rel), self.fs.open(self.path(rel), "rb") as f:
            got = _read_into(f, buf)
            extra = f.read(1)
        if got < size:
            del buf[got:]
        return buf + extra if extra else buf

    def map_read(self, rel: str) -> mmap.mmap | None:
        """A private, copy-on-write memory map of a whole file, where the backend has local files.

        Tensors made from it see the page cache directly (no read copy); writes to them
        stay private to this process and never reach the file. Backends without local
        files return None and callers read the bytes instead (``read_buffer``).

        Raises:
            FileNotFoundError: the file does not exist.
            StorageError: the backend failed.
        """
        return None

    def checksum(self, rel: str) -> tuple[str, int]:
        """Checksum and size of a stored file, read as a stream.

        Raises:
            FileNotFoundError: the file does not exist.
            StorageError: the backend failed.
        """
        with self.errors("verifying", rel), self.open_stream(rel) as f:
            return checksum_stream(f)

    def load_source(self, rel: str, expected: Mapping[str, Any] | None, *, verify: bool) -> str | IO[bytes]:
        """What ``torch.load`` should read ``rel`` from, its size and checksum checked first.

        Inside ``hashing.overlapped_checks()`` a backend may check the bytes on a
        worker thread instead (the local disk does); the block's end waits for it.

        Returns:
            A local path (memory-mappable) on a local disk, else a seekable in-memory reader.

        Raises:
            ChecksumMismatchError: ``verify`` and the bytes differ from ``expected``.
            FileNotFoundError: the file does not exist.
        """
        data = self.read_bytes(rel)
        if verify and expected:
            verify_record(self.url(rel), expected, checksum_bytes(data), len(data))
        return io.BytesIO(data)

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
        """Size in bytes of a stored file."""
        with self.errors("stat", rel):
            return int(self.fs.size(self.path(rel)))

    def modified(self, rel: str) -> float | None:
        """Last modification time (POSIX seconds) when the backend knows it."""
        try:
            return float(self.fs.modified(self.path(rel)).timestamp())
        except Exception:  # folders on object stores have no mtime
            return None


def _read_into(f: Any, buf: bytearray) -> int:
    view, got = memoryview(buf), 0
    while got < len(buf):
        n = f.readinto(view[got:]) if hasattr(f, "readinto") else None
        if n is None:
            chunk = f.read(len(buf) - got)
            n = len(chunk)
            view[got : got + n] = chunk
        if not n:
            break
        got += n
    return got
