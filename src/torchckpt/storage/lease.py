"""A writer lease for roots whose server ignores conditional writes (single-writer mode).

Without a working compare-and-swap, the only primitives are "write an object"
and "read it back". The lease uses them the way Fischer's mutual-exclusion
algorithm uses a shared register with known timing:

1. read ``<name>.lease``; if another writer's unexpired lease is there, wait;
2. write our own lease record (a random owner token, an expiry time);
3. wait ``SETTLE_S`` seconds, then read it back: still ours -> we hold it;
   someone else's -> they wrote after us, go back to 1.

Two writers that both saw the lease free write within one read-and-write of
each other; whoever wrote last holds it, and the other sees that on its read
back. That holds as long as one read-then-write takes less than ``SETTLE_S``;
a writer whose own read-then-write took longer does not trust its record and
starts over with a new token (its late record then blocks others until it
expires). A crashed holder blocks others until its lease expires (``TTL_S``).
Torn or half-written lease records count as "held".

This turns silent manifest losses into waits, at the cost of ``SETTLE_S`` per
manifest update. It is not a substitute for a server that honours conditional
writes (a writer paused longer than ``SETTLE_S`` between its read and its
write can still slip through): the manager warns, and the docs say to use one
writer per root there. ``TORCHCKPT_LEASE_SETTLE_S`` overrides ``SETTLE_S``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import time
from typing import TYPE_CHECKING

from ..errors import StorageError
from ..layout import LEASE_SUFFIX

if TYPE_CHECKING:
    from .base import Storage

log = logging.getLogger(__name__)

#: Seconds between writing a lease record and reading it back.
SETTLE_S = 1.0
#: Seconds a lease record is valid (a crashed holder blocks others this long at most);
#: a manifest update holds it for a read and a write.
TTL_S = 15.0
#: Seconds a writer waits for the lease before giving up.
TIMEOUT_S = 600.0


def settle_seconds() -> float:
    """``SETTLE_S``, or ``TORCHCKPT_LEASE_SETTLE_S`` from the environment."""
    try:
        return float(os.environ.get("TORCHCKPT_LEASE_SETTLE_S", SETTLE_S))
    except ValueError:
        return SETTLE_S


class Lease:
    """``with Lease(storage, "manifest"):`` holds the root's writer lease for ``name``.

    Args:
        storage: the root.
        name: what the lease guards (the lease object is ``.<name>.lease``).
    """

    def __init__(self, storage: Storage, name: str) -> None:
        self.storage = storage
        self.rel = f".{name}{LEASE_SUFFIX}"
        self.owner = ""
        self.settle = settle_seconds()

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _holder(self) -> tuple[str, float] | None:
        """(owner, expires_at) of the current record; None when free. Unreadable records count as held."""
        try:
            data = self.storage.read_bytes(self.rel)
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(data)
            return str(doc["owner"]), float(doc["expires_at"])
        except (ValueError, KeyError, TypeError):
            return "<unreadable>", time.time() + self.settle  # torn read of a record being replaced

    def acquire(self) -> None:
        """Wait until this writer holds the lease.

        Raises:
            StorageError: another writer held it for longer than ``TIMEOUT_S``.
        """
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            self.owner = secrets.token_hex(8)
            started = time.monotonic()
            holder = self._holder()
            if holder is None or holder[1] < time.time():
                record = {"owner": self.owner, "expires_at": time.time() + TTL_S, "pid": os.getpid()}
                self.storage.write_bytes(self.rel, json.dumps(record).encode())
                if time.monotonic() - started < self.settle * 0.9:
                    time.sleep(self.settle)
                    now = self._holder()
                    if now is not None and now[0] == self.owner:
                        return
                else:
                    log.warning("%s: slow lease write; starting over", self.storage.url(self.rel))
            if time.monotonic() > deadline:
                raise StorageError(
                    f"could not take the writer lease {self.storage.url(self.rel)} within {TIMEOUT_S:g} s: "
                    "another writer holds it (this server ignores conditional writes: use one writer per root)"
                )
            time.sleep(self.settle * random.uniform(0.1, 0.5))

    def release(self) -> None:
        """Give the lease back (only if the record is still ours)."""
        try:
            holder = self._holder()
            if holder is not None and holder[0] == self.owner:
                self.storage.remove([self.rel])
        except Exception as exc:  # it expires by itself
            log.warning("could not release %s: %s", self.storage.url(self.rel), exc)
