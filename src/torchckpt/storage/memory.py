"""``memory://``: fsspec's in-process filesystem, for tests and notebooks.

Files appear whole when their writer closes, so the marker-last commit applies;
the manifest compare-and-swap is a process-wide lock per root (all managers of
one process share the memory filesystem, and nothing outside the process sees it).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import IO, ClassVar

from .base import Storage

_LOCKS: dict[str, threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()


class MemoryStorage(Storage):
    """A folder in fsspec's process-wide memory filesystem."""

    multi_writer_safe = True
    kind: ClassVar[str] = "memory"

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        with _LOCKS_GUARD:
            lk = _LOCKS.setdefault(self.path(name), threading.RLock())
        with lk:
            yield

    def open_write(self, rel: str) -> IO[bytes]:
        """The memory filesystem creates parents implicitly."""
        return self.fs.open(self.path(rel), "wb")
