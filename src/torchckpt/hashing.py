"""Checksums computed while bytes stream past, so integrity costs no extra pass.

xxh3-128 (the ``xxhash`` library) runs at memory speed, far above disk and
network, and is what ``meta.json`` records as ``"xxh3_128:<hex>"``.
"""

from __future__ import annotations

from typing import IO, BinaryIO

import xxhash

ALGORITHM = "xxh3_128"
_CHUNK = 16 << 20


def new_hasher() -> "xxhash.xxh3_128":
    return xxhash.xxh3_128()


def digest_of(hasher: "xxhash.xxh3_128") -> str:
    return f"{ALGORITHM}:{hasher.hexdigest()}"


def checksum_bytes(data: bytes | memoryview) -> str:
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
    import mmap
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


class HashingWriter:
    """File-like wrapper that checksums and counts every byte written through it."""

    def __init__(self, raw: BinaryIO | IO[bytes]) -> None:
        self.raw = raw
        self.hasher = new_hasher()
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        self.hasher.update(data)
        self.size += len(data)
        return self.raw.write(data) or len(data)

    def flush(self) -> None:
        self.raw.flush()

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        self.raw.close()

    @property
    def checksum(self) -> str:
        return digest_of(self.hasher)

    def record(self) -> dict[str, object]:
        return {"size": self.size, "checksum": self.checksum}

    def __enter__(self) -> "HashingWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
