"""Checksums computed while bytes stream past, so integrity costs no extra pass.

xxh3-128 (the ``xxhash`` library) runs at memory speed, far above disk and
network, and is what ``meta.json`` records as ``"xxh3_128:<hex>"``.
"""

from __future__ import annotations

import contextlib
import io
import mmap
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar
from typing import IO, Any, BinaryIO

import xxhash

from .errors import ChecksumMismatchError

ALGORITHM = "xxh3_128"
_CHUNK = 16 << 20


def new_hasher() -> xxhash.xxh3_128:
    return xxhash.xxh3_128()


def digest_of(hasher: xxhash.xxh3_128) -> str:
    return f"{ALGORITHM}:{hasher.hexdigest()}"


def checksum_bytes(data: bytes | bytearray | memoryview | mmap.mmap) -> str:
    return f"{ALGORITHM}:{xxhash.xxh3_128_hexdigest(data)}"


def checksum_stream(f: IO[bytes]) -> tuple[str, int]:
    """Checksum and size of a readable stream, read in bounded chunks."""
    h, size = new_hasher(), 0
    while chunk := f.read(_CHUNK):
        h.update(chunk)
        size += len(chunk)
    return digest_of(h), size


def checksum_file(path: str) -> tuple[str, int]:
    """Checksum and size of a local file, hashed straight from a read-only memory map.

    No copy into user buffers, and the pages it faults in are the page-cache pages a
    following ``torch.load(mmap=True)`` maps again, so verify-then-load reads the disk once.
    """
    import os

    h = new_hasher()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return digest_of(h), 0
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            if hasattr(m, "madvise") and hasattr(mmap, "MADV_SEQUENTIAL"):
                m.madvise(mmap.MADV_SEQUENTIAL)
            view = memoryview(m)
            try:
                for offset in range(0, size, _CHUNK):
                    h.update(view[offset : offset + _CHUNK])
            finally:
                view.release()
    return digest_of(h), size


def verify_record(url: str, expected: Mapping[str, Any], actual: str, size: int) -> None:
    """Compare what was read (checksum, size) with a version record's entry for that file.

    Args:
        url: the file, for the error message.
        expected: the record's ``{"size", "checksum"}`` (either may be absent).
        actual: the checksum of what was read.
        size: the number of bytes read.

    Raises:
        ChecksumMismatchError: the size or the checksum differs.
    """
    want = str(expected.get("checksum", ""))
    if int(expected.get("size", size)) != size:
        raise ChecksumMismatchError(url, f"{want} ({expected.get('size')} bytes)", f"{actual} ({size} bytes)")
    if want and want != actual:
        raise ChecksumMismatchError(url, want, actual)


_PENDING: ContextVar[list[Future[None]] | None] = ContextVar("torchckpt_pending_checks", default=None)
_POOL: list[ThreadPoolExecutor] = []
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    with _POOL_LOCK:
        if not _POOL:
            _POOL.append(ThreadPoolExecutor(max_workers=2, thread_name_prefix="torchckpt-verify"))
        return _POOL[0]


def check_later(url: str, expected: Mapping[str, Any], compute: Callable[[], tuple[str, int]]) -> None:
    """Verify a file now, or, inside ``overlapped_checks()``, on a worker thread while the caller goes on.

    Args:
        url: the file, for the error message.
        expected: its record's ``{"size", "checksum"}``.
        compute: returns ``(checksum, size)`` of the bytes (xxhash releases the GIL while hashing).

    Raises:
        ChecksumMismatchError: (when not deferred) the bytes differ from the record.
    """

    def run() -> None:
        actual, size = compute()
        verify_record(url, expected, actual, size)

    pending = _PENDING.get()
    if pending is None:
        run()
    else:
        pending.append(_pool().submit(run))


@contextlib.contextmanager
def overlapped_checks() -> Iterator[None]:
    """Let ``check_later`` hash in the background while the block uses the bytes; all checks end with it.

    The block may use bytes before their checksum is known (that is the point:
    hashing overlaps loading and copying). Leaving it waits for every check; the
    first mismatch is raised, also when the block itself failed (corrupt bytes
    often fail to load first: the mismatch is the real cause).

    Raises:
        ChecksumMismatchError: a check started in the block failed.
    """
    pending: list[Future[None]] = []
    token = _PENDING.set(pending)
    try:
        yield
    except BaseException as exc:
        _PENDING.reset(token)
        _raise_first_failure(pending, exc)
        raise
    _PENDING.reset(token)
    _raise_first_failure(pending, None)


def _raise_first_failure(pending: list[Future[None]], cause: BaseException | None) -> None:
    failure: BaseException | None = None
    for future in pending:
        exc = future.exception()
        if exc is not None and failure is None:
            failure = exc
    if failure is not None:
        raise failure from cause


class HashingWriter(io.RawIOBase):
    """A write-only stream that checksums and counts every byte on its way to ``raw``.

    The one hashing writer of the package: formats, exports and the DCP adapter all
    write through it. ``on_close(checksum, size)`` is called once when it closes.
    """

    def __init__(
        self, raw: IO[bytes] | BinaryIO, on_close: Callable[[str, int], None] | None = None, *, close_raw: bool = True
    ) -> None:
        super().__init__()
        self.raw = raw
        self.hasher = new_hasher()
        self.size = 0
        self._on_close = on_close
        self._close_raw = close_raw

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data: Any) -> int:
        view = data if isinstance(data, (bytes, bytearray)) else memoryview(data).cast("B")
        self.raw.write(view)
        self.hasher.update(view)
        self.size += len(view)
        return len(view)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.raw.flush()

    def fileno(self) -> int:
        return self.raw.fileno()

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        if self._close_raw:
            self.raw.close()
        if self._on_close is not None:
            self._on_close(self.checksum, self.size)

    def __del__(self) -> None:  # never close ``raw`` behind its owner's back (IOBase would)
        pass

    @property
    def checksum(self) -> str:
        """``"xxh3_128:<hex>"`` of everything written so far."""
        return digest_of(self.hasher)

    def record(self) -> dict[str, Any]:
        """``{"size", "checksum"}`` as a version record stores it."""
        return {"size": self.size, "checksum": self.checksum}
