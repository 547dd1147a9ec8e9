"""What S3, Azure Blob and GCS share: implicit folders, a fail-fast container check, the probe.

Object stores keep concurrent writers apart with a conditional write on the
manifest (S3 ``If-Match``, Azure ETag ``If-Match``, GCS ``ifGenerationMatch``).
Some servers accept those headers and ignore them (gcp-storage-emulator, s3rver,
some S3-compatible stores): two writers then overwrite each other's manifest
updates and a version drops out of the index without any error.

**The probe** asks the server once per root: create a probe object twice with
create-only semantics (the second must be refused), replace it with the fresh
token (must succeed) and with the now stale token (must be refused). 4 writes,
1 read, 1 delete. The answer is cached in the process and in the root
(``PROBE_MARKER``: result, server identity, time), so later managers on the
root, in any process, read one small object instead. Delete the marker to ask
again (after a server upgrade).

**Single-writer mode**: where the probe fails, ``multi_writer_safe`` turns
False for this instance, the manager warns (``SingleWriterWarning``), and every
manifest update holds a writer lease (``storage/lease.py``) instead of relying
on the ignored condition.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import threading
import time
import warnings
from collections.abc import Iterator
from typing import IO, Any

from ..errors import SingleWriterWarning, StorageError
from ..layout import PROBE_MARKER, PROBE_PREFIX
from .base import Storage
from .lease import Lease

log = logging.getLogger(__name__)

#: (root URL, server identity) -> whether the server honours conditional writes.
_PROBED: dict[tuple[str, str], bool] = {}
_PROBED_GUARD = threading.Lock()


class ObjectStore(Storage):
    """A prefix in a bucket/container of an object store with conditional writes."""

    #: What the protocol promises; an instance turns it off when the probe finds the server ignores conditions.
    multi_writer_safe = True

    # ----- identity and reachability ------------------------------------------------------------------
    def server_identity(self) -> str:
        """Which server answers for this root (endpoint or account URL): part of the probe's cache key."""
        return self.kind

    def folders_are_implicit(self) -> bool:
        return True

    def create_root(self) -> None:
        """Nothing to create: a prefix exists once an object is under it."""

    def existing(self, paths: list[str]) -> list[str]:
        return paths  # batch deletes ignore missing keys: no HEAD per key

    def remove_empty_folders(self, rels: list[str]) -> None:
        """Object stores have no folders: nothing is left once the objects are gone."""

    def check(self, *, create: bool) -> None:
        """The container check first (one request, no retries), then the root itself.

        Asking ``fs.info`` first would sit through the client's retries (about 30 s on
        GCS, 85 s on Azure) before a missing container or bad credentials are reported.

        Raises:
            StorageError: missing bucket/container, rejected credentials, unreachable
                endpoint, or a file where the root folder should be.
        """
        self.check_container()
        with self.errors("opening the checkpoint root"):
            try:
                info = self.fs.info(self.root)
            except FileNotFoundError:
                return
        if info.get("type") != "directory":
            raise StorageError(f"{self.root_url} is a file, not a folder: choose another root")

    # ----- the probe -----------------------------------------------------------------------------------------
    def conditional_writes_honoured(self) -> bool:
        """Whether this root's server refuses stale conditional writes (probed once per root).

        Raises:
            StorageError: the probe could not write under the root.
        """
        key = (self.root_url, self.server_identity())
        with _PROBED_GUARD:
            known = _PROBED.get(key)
        if known is None:
            known = self._marker(key[1])
            if known is None:
                known = self.probe_conditional_writes()
                self._write_marker(key[1], known)
            with _PROBED_GUARD:
                _PROBED[key] = known
        if not known:
            self.multi_writer_safe = False
        return known

    def probe_conditional_writes(self) -> bool:
        """Ask the server: does it refuse a second create and a stale replace?

        Returns:
            True when both are refused and the fresh replace succeeds.

        Raises:
            StorageError: the backend failed.
        """
        rel = f"{PROBE_PREFIX}{secrets.token_hex(6)}"
        try:
            if not self.write_conditional(rel, b"probe 1", None):
                raise StorageError(f"{self.url(rel)} exists already: remove it and try again")
            _, token = self.read_versioned(rel)
            second_create = self.write_conditional(rel, b"probe 2", None)  # must be refused
            fresh = self.write_conditional(rel, b"probe 3", token)  # must succeed unless create 2 "won"
            stale = self.write_conditional(rel, b"probe 4", token)  # must be refused: the token is stale now
        finally:
            with contextlib.suppress(Exception):
                self.remove([rel])
        honoured = (not second_create) and fresh and (not stale)
        log.info("%s: conditional writes %s", self.root_url, "honoured" if honoured else "IGNORED by the server")
        return honoured

    def _marker(self, server: str) -> bool | None:
        try:
            doc = json.loads(self.read_bytes(PROBE_MARKER))
        except (FileNotFoundError, ValueError, UnicodeDecodeError):
            return None
        if not isinstance(doc, dict) or doc.get("server") != server or not isinstance(doc.get("honoured"), bool):
            return None
        return bool(doc["honoured"])

    def _write_marker(self, server: str, honoured: bool) -> None:
        doc = {"honoured": honoured, "server": server, "checked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.write_bytes(PROBE_MARKER, json.dumps(doc).encode())

    # ----- single-writer mode ----------------------------------------------------------------------------------
    def warn_if_single_writer(self) -> None:
        """Probe the root (once); warn ``SingleWriterWarning`` when its server ignores conditional writes."""
        if not self.conditional_writes_honoured():
            warnings.warn(
                f"{self.root_url}: the server ignores conditional writes (If-Match / ifGenerationMatch); "
                "concurrent writers to this root are not safe: torchckpt runs in single-writer mode "
                "(manifest updates take a writer lease; use one writer per root)",
                SingleWriterWarning,
                stacklevel=3,
            )

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Nothing where conditional writes work; a writer lease where the server ignores them."""
        if self.conditional_writes_honoured():
            yield
            return
        with Lease(self, name):
            yield


class Upload:
    """A streaming upload whose failures are ``StorageError`` naming the file.

    adlfs and gcsfs raise their SDK's exceptions (``ResourceNotFoundError``, ``HttpError``)
    from ``write``/``flush``/``close``; a failed ``close`` also throws the upload away, so it
    is never retried from ``__del__``.

    Args:
        storage: the root.
        rel: the file.
        f: the fsspec write file.
    """

    def __init__(self, storage: Storage, rel: str, f: IO[bytes]) -> None:
        self._storage, self._rel, self._f = storage, rel, f

    def write(self, data: Any) -> int:
        """Buffer ``data`` (uploading full blocks).

        Raises:
            StorageError: the upload failed.
        """
        with self._storage.errors("writing", self._rel):
            return self._f.write(data)

    def flush(self) -> None:
        """Upload what is buffered where the filesystem does so on flush."""
        with self._storage.errors("writing", self._rel):
            self._f.flush()

    def close(self) -> None:
        """Finish the upload: the object becomes visible whole.

        Raises:
            StorageError: the upload failed (nothing is published).
        """
        if self._f.closed:
            return
        try:
            with self._storage.errors("writing", self._rel):
                self._f.close()
        except BaseException:
            self._storage.discard(self._f, self._rel)
            raise

    def discard(self) -> None:
        """Throw the upload away (see ``Storage.discard``)."""
        self._storage.discard(self._f, self._rel)

    @property
    def closed(self) -> bool:
        """Whether the upload finished or was thrown away."""
        return bool(self._f.closed)

    def __enter__(self) -> Upload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)
