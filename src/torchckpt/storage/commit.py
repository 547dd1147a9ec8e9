"""Commit strategies: how a version folder becomes visible to readers all at once.

Two strategies, each a type (after Orbax's ``atomicity.py``), chosen by the
storage backend, never by an ``if`` in the caller:

* ``RenameIntoPlace`` (local disks): every file goes into a hidden staging
  folder next to the final one (``versions/.tmp-<id>-<rand>``), is fsynced, the
  ``meta.json`` marker is written last, and the folder is renamed into place.
  A reader sees no folder or a complete one.
* ``MarkerLast`` (object stores, ``memory://``, generic fsspec): files are
  written in place and ``meta.json`` last; a folder without ``meta.json`` does
  not exist for readers, and ``gc`` removes such leftovers after a grace period.

``VersionWriter`` is what callers use: ``open(name)`` for each data file, then
``commit(meta_name, meta_bytes)``, or ``abort()`` on failure.
"""

from __future__ import annotations

import logging
import posixpath
import secrets
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from typing import IO, Protocol

from ..layout import STAGING_PREFIX

log = logging.getLogger(__name__)


class Publishable(Protocol):
    """What commit strategies need from a storage backend (``storage.base.Storage`` provides it).

    A protocol rather than an import of ``Storage``: the base class builds its
    ``VersionWriter`` from this module, so this module must not depend on it back.
    """

    def open_write(self, rel: str) -> IO[bytes]: ...
    def write_bytes(self, rel: str, data: bytes) -> None: ...
    def publish_folder(self, work_dir: str, rel_dir: str) -> None: ...
    def remove(self, rels: list[str], *, recursive: bool = True) -> None: ...
    def errors(self, what: str, rel: str = "") -> AbstractContextManager[None]: ...
    def url(self, rel: str = "") -> str: ...


class CommitStrategy(ABC):
    """Where a version's files are written, and how they are published."""

    @abstractmethod
    def work_dir(self, rel_dir: str) -> str:
        """The folder the files are written into before the commit.

        Args:
            rel_dir: the version's final folder.

        Returns:
            The folder to write into (``rel_dir`` itself, or a staging sibling).
        """

    @abstractmethod
    def commit(self, storage: Publishable, work_dir: str, rel_dir: str, meta_name: str, meta: bytes) -> None:
        """Write the ``meta.json`` marker and publish the folder.

        Raises:
            StorageError: the backend failed; nothing became visible.
        """


class MarkerLast(CommitStrategy):
    """Files in place, the marker last: for stores without atomic folder renames."""

    def work_dir(self, rel_dir: str) -> str:
        return rel_dir

    def commit(self, storage: Publishable, work_dir: str, rel_dir: str, meta_name: str, meta: bytes) -> None:
        storage.write_bytes(posixpath.join(rel_dir, meta_name), meta)


class RenameIntoPlace(CommitStrategy):
    """A hidden staging folder, fsynced, renamed into place: for local disks."""

    def work_dir(self, rel_dir: str) -> str:
        parent, name = posixpath.split(rel_dir)
        return posixpath.join(parent, f"{STAGING_PREFIX}{name}-{secrets.token_hex(3)}")

    def commit(self, storage: Publishable, work_dir: str, rel_dir: str, meta_name: str, meta: bytes) -> None:
        with storage.open_write(posixpath.join(work_dir, meta_name)) as f:
            f.write(meta)
        storage.publish_folder(work_dir, rel_dir)


class VersionWriter:
    """Writes one version folder; ``commit()`` makes it visible, ``abort()`` removes traces.

    Attributes:
        rel_dir: the version's final folder.
        work_dir: where its files are written until the commit.
        written: names opened so far.
    """

    def __init__(
        self, storage: Publishable, rel_dir: str, strategy: CommitStrategy, *, work_dir: str | None = None
    ) -> None:
        self.storage = storage
        self.rel_dir = rel_dir
        self.strategy = strategy
        self.work_dir = work_dir or strategy.work_dir(rel_dir)
        self.written: list[str] = []
        self.committed = False

    def open(self, name: str) -> IO[bytes]:
        """A streaming writer for the data file ``name`` of this version (durable once closed)."""
        self.written.append(name)
        return self.storage.open_write(posixpath.join(self.work_dir, name))

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write a whole small data file."""
        with self.open(name) as f:
            f.write(data)

    def commit(self, meta_name: str, meta: bytes) -> None:
        """Write the commit marker last and publish the folder.

        Raises:
            StorageError: the backend failed; the version is not visible.
        """
        with self.storage.errors("committing", self.rel_dir):
            self.strategy.commit(self.storage, self.work_dir, self.rel_dir, meta_name, meta)
        self.committed = True

    def abort(self) -> None:
        """Best effort: remove what this writer wrote; ``gc`` catches the rest."""
        if self.committed:
            return
        try:
            self.storage.remove([self.work_dir])
        except Exception as exc:  # the original error matters more
            log.warning("could not clean up %s after a failed save: %s", self.storage.url(self.work_dir), exc)
