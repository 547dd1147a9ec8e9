"""``Storage``: a root folder on one fsspec filesystem, and the interface every backend keeps.

The rest of the package reaches bytes only through this class; it never sees a
URL scheme or an ``fsspec`` call. A backend (one file in this package plus a
line in ``storage/__init__.py``) subclasses it and overrides what differs:

* **commit strategy** (``commit_strategy``): how a version folder becomes
  visible all at once (``storage/commit.py``: rename a staging folder into
  place, or write the ``meta.json`` marker last);
* **compare-and-swap** on one small file (``lock`` + ``read_versioned`` +
  ``write_conditional``): what keeps concurrent writers of the manifest from
  losing each other's versions; ``multi_writer_safe`` says whether it does;
* **fast paths**: memory-mapped checksums and loads on a local disk, concurrent
  multipart uploads and ranged reads on S3;
* **reachability** (``check``): a missing bucket or a file in the way fails at construction.

This base class is itself the generic backend (any fsspec filesystem, one writer at a time).

Call order for a version (what ``lifecycle.commit_version`` does): data files
through ``version_writer(dir).open(name)``, then ``VersionWriter.commit`` (the
marker), then the manifest through ``lock``/``read_versioned``/``write_conditional``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import warnings
from collections.abc import Iterator, Mapping
from typing import IO, Any, ClassVar

import fsspec

from ..errors import CheckpointError, SingleWriterWarning, StorageError
from .commit import CommitStrategy, MarkerLast, VersionWriter
from .reads import Reads

log = logging.getLogger(__name__)


class Storage(Reads):
    """A root folder on one fsspec filesystem (the generic, single-writer backend).

    Attributes:
        fs: the fsspec filesystem; only storage backends touch it.
        root: the root's path on ``fs`` (no protocol).
        storage_options: the options the filesystem was opened with.
    """

    #: How a version folder is committed (see ``storage/commit.py``).
    commit_strategy: ClassVar[CommitStrategy] = MarkerLast()
    #: True when concurrent writers of one root cannot lose each other's manifest updates
    #: (a class default; object stores turn it off per instance when the probe says so).
    multi_writer_safe: bool = False
    #: Short name for messages and docs.
    kind: ClassVar[str] = "generic"

    def __init__(
        self,
        fs: fsspec.AbstractFileSystem,
        path: str,
        *,
        storage_options: Mapping[str, Any] | None = None,
        shown_protocol: str | None = None,
    ) -> None:
        """Wrap ``fs`` at ``path``; use ``torchckpt.storage.open_storage`` to build one from a URL.

        Args:
            fs: the filesystem.
            path: the root on ``fs``, without protocol.
            storage_options: what ``fs`` was opened with (kept for copies and messages).
            shown_protocol: the protocol the user typed (``az`` rather than adlfs's ``abfs``).
        """
        self.fs: fsspec.AbstractFileSystem = fs
        self.root = self.normalize_root(path)
        self.storage_options = dict(storage_options or {})
        self._shown_protocol = shown_protocol

    # ----- construction hooks ----------------------------------------------------------------------
    @classmethod
    def prepare_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Fill in backend defaults before the filesystem is created (e.g. S3 endpoints from the environment)."""
        return options

    def normalize_root(self, path: str) -> str:
        """The root path as this backend spells it (no trailing slash)."""
        return path.rstrip("/") or "/"

    # ----- naming -------------------------------------------------------------------------------------
    def path(self, rel: str = "") -> str:
        """Absolute path of ``rel`` under the root.

        Raises:
            CheckpointError: ``rel`` would escape the root.
        """
        if not rel:
            return self.root
        norm = posixpath.normpath(rel)
        if rel.startswith("/") or norm.startswith("..") or "\\" in rel or "\x00" in rel:
            raise CheckpointError(f"path {rel!r} escapes the checkpoint root")
        return posixpath.join(self.root, norm)

    def relative(self, path: str) -> str:
        """The inverse of ``path``: ``rel`` for an absolute path under the root.

        Raises:
            CheckpointError: ``path`` is outside the root.
        """
        rel = posixpath.relpath(os.fspath(path).replace(os.sep, "/"), self.root.replace(os.sep, "/"))
        if rel == "." or rel.startswith(".."):
            raise CheckpointError(f"{path} is not inside {self.root_url}")
        return rel

    def url(self, rel: str = "") -> str:
        """The URL of ``rel``, spelled with the protocol the user typed."""
        path = self.path(rel)
        if self._shown_protocol:
            return f"{self._shown_protocol}://{path}"
        return str(self.fs.unstrip_protocol(path))

    @property
    def root_url(self) -> str:
        """The root's URL (as typed)."""
        return self.url()

    @contextlib.contextmanager
    def errors(self, what: str, rel: str = "") -> Iterator[None]:
        """Turn backend errors (other than a missing file) into ``StorageError`` naming the URL.

        Raises:
            StorageError: any backend failure inside the block.
        """
        try:
            yield
        except (CheckpointError, FileNotFoundError):
            raise
        except Exception as exc:  # botocore, aiohttp, azure, PermissionError, ...
            raise StorageError(f"{what} failed for {self.url(rel)}: {describe(exc)}") from exc

    def warn_if_single_writer(self) -> None:
        """Warn (``SingleWriterWarning``) when concurrent writers to this root are not safe."""
        if not self.multi_writer_safe:
            warnings.warn(
                f"{self.root_url}: the {self.kind} backend has no conditional write or lock torchckpt can use; "
                "concurrent writers to this root are not safe (use one writer per root)",
                SingleWriterWarning,
                stacklevel=3,
            )

    # ----- reachability ---------------------------------------------------------------------------------
    def check(self, *, create: bool) -> None:
        """Fail fast when the root cannot be used (missing bucket, file in the way, no credentials).

        Args:
            create: create the root folder when it is missing (writers do, readers don't).

        Raises:
            StorageError: the root cannot be used, with what to do about it.
        """
        with self.errors("opening the checkpoint root"):
            try:
                info = self.fs.info(self.root)
            except FileNotFoundError:
                info = None
            if info is not None and info.get("type") != "directory":
                raise StorageError(f"{self.root_url} is a file, not a folder: choose another root")
            if info is None:
                self.check_container()
                if create:
                    self.create_root()
                elif not self.folders_are_implicit():
                    raise StorageError(f"{self.root_url} does not exist")

    def check_container(self) -> None:
        """Object stores: raise ``StorageError`` when the bucket/container itself is missing."""

    def folders_are_implicit(self) -> bool:
        """True where a folder exists as soon as something is under it (object stores)."""
        return False

    def create_root(self) -> None:
        """Create the root folder (object stores: nothing to create)."""
        self.fs.makedirs(self.root, exist_ok=True)

    # ----- writing --------------------------------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a small file so that readers see the old or the new content, never a mix.

        Raises:
            StorageError: the backend failed.
        """
        with self.errors("writing", rel):
            self.fs.pipe_file(self.path(rel), data)  # one PUT: object stores publish it whole
        self.invalidate(posixpath.dirname(rel))

    @contextlib.contextmanager
    def atomic_writer(self, rel: str) -> Iterator[IO[bytes]]:
        """Stream a file that becomes visible under ``rel`` only when the block ends without error.

        Object stores publish an object only when its upload completes; a local disk
        writes a temporary file, fsyncs it and renames it into place.

        Raises:
            StorageError: the backend failed (nothing is left under ``rel``).
        """
        with self.errors("writing", rel):
            f = self.open_write(rel)
            try:
                yield f
            except BaseException:
                self.discard(f, rel)
                raise
            f.close()
        self.invalidate(posixpath.dirname(rel))

    def discard(self, f: IO[bytes], rel: str) -> None:
        """Throw away an unfinished writer: nothing may ever be published under ``rel``.

        fsspec's ``discard()`` is a no-op on most filesystems, and an unclosed write file commits
        itself when garbage-collected: mark it closed too, and remove what was already stored.
        """
        discard = getattr(f, "discard", None)
        with contextlib.suppress(Exception):
            if callable(discard):
                discard()  # S3 multipart: abort; gcsfs: cancel the resumable session
        try:
            f.closed = True  # type: ignore[misc]  # AbstractBufferedFile: __del__ then never close()s
        except (AttributeError, TypeError):
            with contextlib.suppress(Exception):
                f.close()
        with contextlib.suppress(Exception):
            if self.fs.exists(self.path(rel)):
                self.fs.rm_file(self.path(rel))

    def abort_unfinished_uploads(self, older_than: float) -> list[str] | None:
        """Abort uploads under the root started more than ``older_than`` seconds ago and never finished.

        Returns:
            The files whose uploads were aborted, or None when this server cannot list them.
        """
        return []

    def open_write(self, rel: str) -> IO[bytes]:
        """A streaming binary writer for a data file (not atomic by itself; durable once closed)."""
        path = self.path(rel)
        if not self.folders_are_implicit():  # e.g. a local disk behind another protocol: no auto-mkdir
            self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        return self.fs.open(path, "wb")

    def move(self, src: str, dst: str) -> None:
        """Rename a file within the root (not atomic on object stores: a copy, then a delete).

        Raises:
            StorageError: the backend failed.
        """
        with self.errors("renaming", src):
            self.fs.mv(self.path(src), self.path(dst))
        self.invalidate(posixpath.dirname(src))
        self.invalidate(posixpath.dirname(dst))

    def remove(self, rels: list[str], *, recursive: bool = True) -> None:
        """Remove files (or folders with everything in them); missing entries are ignored.

        A retried or repeated removal is therefore harmless.

        Raises:
            StorageError: the backend failed.
        """
        if not rels:
            return
        paths = [self.path(r) for r in rels]
        with self.errors("deleting", rels[0]):
            paths = self.existing(paths)
            if paths:
                try:
                    self.fs.rm(paths, recursive=recursive)
                except FileNotFoundError:
                    pass
        for folder in {posixpath.dirname(r) for r in rels}:
            self.invalidate(folder)

    def existing(self, paths: list[str]) -> list[str]:
        """Which of ``paths`` to hand to ``fs.rm`` (backends whose batch delete ignores missing keys: all)."""
        return [p for p in paths if self.fs.exists(p)]

    def remove_empty_folders(self, rels: list[str]) -> None:
        """Remove folders whose files were removed one by one (object stores have none to remove)."""
        self.remove(rels)

    # ----- compare-and-swap on one small file ---------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Serialise writers of ``name`` where the backend has no conditional write (here: nothing)."""
        yield

    def read_versioned(self, rel: str) -> tuple[bytes | None, str | None]:
        """Content and a version token for ``write_conditional``; ``(None, None)`` when missing."""
        try:
            return self.read_bytes(rel), None
        except FileNotFoundError:
            return None, None

    def write_conditional(self, rel: str, data: bytes, token: str | None) -> bool:
        """Write unless someone else changed the file since ``read_versioned``.

        Args:
            rel: the file.
            data: its new content.
            token: what ``read_versioned`` returned (None: the file must not exist).

        Returns:
            False on a conflict (the caller reads again and retries), True when written.

        Raises:
            StorageError: the backend failed.
        """
        self.write_bytes(rel, data)  # callers hold lock(); single writer on a generic backend
        return True

    # ----- versions ------------------------------------------------------------------------------------------------
    def version_writer(self, rel_dir: str, *, work_dir: str | None = None) -> VersionWriter:
        """A writer for one version folder, committed with this backend's strategy.

        Args:
            rel_dir: the version's final folder (``versions/<id>``).
            work_dir: join a folder another process already chose (sharded saves).
        """
        return VersionWriter(self, rel_dir, self.commit_strategy, work_dir=work_dir)

    def publish_folder(self, work_dir: str, rel_dir: str) -> None:
        """Atomically move a finished staging folder into place (backends with folder renames)."""
        raise NotImplementedError(f"{type(self).__name__} cannot rename folders atomically")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.root_url!r})"


def describe(exc: BaseException) -> str:
    """``Type: message`` of a backend exception, for one-line errors."""
    return f"{type(exc).__name__}: {exc}"
