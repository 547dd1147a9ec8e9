"""A test-only storage backend: the proof that a backend is one new file plus a registry line.

``countmem://`` is fsspec's memory filesystem under another protocol name, and
``CountingStorage`` is a complete backend for it written only against the public
``Storage`` interface: it owns its commit strategy (marker last), its manifest
compare-and-swap (a version counter checked under a lock, like an object store's
ETag), and it counts every call a checkpoint makes, so tests can see that the
manager reached storage only through the backend.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any, ClassVar

from fsspec.implementations.memory import MemoryFileSystem

from torchckpt.storage import Storage

PROTOCOL = "countmem"


class CountingMemoryFS(MemoryFileSystem):
    """The memory filesystem under its own protocol (shares the process-wide store)."""

    protocol = (PROTOCOL,)
    root_marker = "/"


class CountingStorage(Storage):
    """Memory storage with an ETag-like conditional write and a call counter."""

    multi_writer_safe = True
    kind: ClassVar[str] = "countmem"
    calls: ClassVar[Counter[str]] = Counter()
    _versions: ClassVar[dict[str, int]] = {}
    _guard: ClassVar[threading.Lock] = threading.Lock()

    def read_bytes(self, rel: str) -> bytes:
        self.calls["read_bytes"] += 1
        return super().read_bytes(rel)

    def open_write(self, rel: str) -> Any:
        self.calls["open_write"] += 1
        return super().open_write(rel)

    def read_versioned(self, rel: str) -> tuple[bytes | None, str | None]:
        self.calls["read_versioned"] += 1
        with self._guard:
            data, _ = super().read_versioned(rel)
            return data, str(self._versions.get(self.path(rel), 0))

    def write_conditional(self, rel: str, data: bytes, token: str | None) -> bool:
        self.calls["write_conditional"] += 1
        with self._guard:  # check-and-store as one step, like S3's If-Match
            if str(self._versions.get(self.path(rel), 0)) != token:
                self.calls["conflicts"] += 1
                return False
            self.write_bytes(rel, data)
            self._versions[self.path(rel)] = self._versions.get(self.path(rel), 0) + 1
            return True
