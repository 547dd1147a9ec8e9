"""Checksums computed while bytes stream past, so integrity costs no extra pass.

xxh3-128 (the ``xxhash`` library) runs at memory speed, far above disk and
network, and is what ``meta.json`` records as ``"xxh3_128:<hex>"``.
"""

from __future__ import annotations

import io
import mmap
from collections.abc import Mapping
from typing import IO, Any, BinaryIO, Callable

import xxhash

from .errors import ChecksumMismatchError

ALGORITHM = "xxh3_128"
_CHUNK = 16 << 20


def new_hasher() -> "xxhash.xxh3_128":
    return xxhash.xxh3_128()


def digest_of(hasher: "xxhash.xxh3_128") -> str:
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
