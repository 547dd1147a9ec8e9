"""Folder versions: a local folder of files committed as one version, and materialised back, verified.

``save_files`` is the primitive under every framework that writes a checkpoint as a
folder (Hugging Face ``checkpoint-N/``, Accelerate ``save_state``): each file under
the folder (recursively, empty files included) is streamed into the version
through the storage's ``VersionWriter`` with its xxh3 checksum computed on the way,
then the version goes through the one commit path (``lifecycle.commit_version``:
``meta.json`` last, one manifest update that lists it, enforces its name and
applies retention). Its record has ``layout="files"`` and relative paths as file
names (``layout.check_rel_path``).

``restore_files`` streams every file into a hidden staging folder next to the
target, checks each size and checksum against the record, and only then moves
the files into place: a corrupt or missing file leaves the target untouched.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import secrets
import shutil
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .errors import CheckpointError, ChecksumMismatchError, NameConflictError, StorageError
from .hashing import HashingWriter, digest_of, new_hasher, verify_record
from .layout import check_rel_path, check_version_name, new_version_id, version_dir, version_file
from .lifecycle import commit_version, name_holders
from .manifest import read as read_manifest
from .records import FILES_LAYOUT, CheckpointInfo, new_version_info
from .retention import RetentionPolicy
from .saving import clean_metrics
from .selectors import Selector
from .storage import Storage

log = logging.getLogger(__name__)

#: Bytes read (or written) per call while streaming one file.
CHUNK = 8 << 20


def walk_files(local_dir: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """Every file under ``local_dir`` as ``(relative POSIX path, local path)``, sorted, each path checked.

    Symlinks to files are read through; symlinked folders are not followed (a loop would never end).

    Args:
        local_dir: the folder.

    Returns:
        The files, sorted by relative path.

    Raises:
        FileNotFoundError: ``local_dir`` is not a folder.
        CheckpointError: a file's relative path cannot be stored safely (see ``layout.check_rel_path``).
    """
    root = Path(local_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder: save_files needs the folder of files to commit")
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for link in [d for d in dirs if (Path(folder) / d).is_symlink()]:
            log.warning("save_files: not following the symlinked folder %s", Path(folder) / link)
            dirs.remove(link)
        for name in files:
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            try:
                check_rel_path(rel)
            except CheckpointError as exc:
                raise CheckpointError(f"cannot save {path}: {exc}; rename it or leave it out of the folder") from None
            found.append((rel, path))
    return sorted(found)


def save_files(
    storage: Storage,
    retention: RetentionPolicy | None,
    local_dir: str | os.PathLike[str],
    *,
    step: int,
    epoch: int | None,
    metrics: dict[str, float | None],
    tags: tuple[str, ...],
    name: str | None,
    replace: bool = False,
) -> CheckpointInfo:
    """Commit every file under ``local_dir`` as one version.

    Args:
        storage: the root.
        retention: applied in the commit's manifest update.
        local_dir: the folder to commit.
        step: the training step.
        epoch: the epoch, if any.
        metrics: recorded metrics.
        tags: recorded tags.
        name: a caller-chosen name, unique among listed versions (None: unnamed).
        replace: move ``name`` from the version holding it (removed in the same manifest update).

    Returns:
        The committed version's record.

    Raises:
        FileNotFoundError: ``local_dir`` is not a folder.
        CheckpointError: a file's path cannot be stored safely (nothing is written).
        NameConflictError: ``name`` is held by another version and ``replace`` is False (nothing stays written).
        ValueError: bad step or epoch; ``name`` is not a valid version name.
        StorageError: the backend failed; nothing was listed.
    """
    started = time.perf_counter()
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int)):
        raise ValueError(f"epoch must be an int or None, got {epoch!r}")
    if name is not None:
        check_version_name(name)
    files = walk_files(local_dir)
    holders = name_holders(read_manifest(storage).versions, name) if name is not None and not replace else []
    if holders:  # fail before uploading anything; the manifest update checks again (another writer may race us)
        raise NameConflictError(
            f"the name {name!r} is held by version {holders[0].version} in {storage.root_url}; choose another "
            "name, delete that version, or pass replace=True to move the name"
        )
    created = datetime.now(timezone.utc)
    vid = new_version_id(step, created)
    writer = storage.version_writer(version_dir(vid))
    records: dict[str, dict[str, Any]] = {}
    try:
        for rel, path in files:
            with open(path, "rb") as src, writer.open(rel) as raw:
                out = HashingWriter(raw, close_raw=False)
                while chunk := src.read(CHUNK):
                    out.write(chunk)
                records[rel] = out.record()
                out.close()
        info = new_version_info(
            vid,
            files=records,
            url=storage.url(version_dir(vid)),
            created_at=created,
            step=step,
            epoch=epoch,
            metrics=metrics,
            tags=tags,
            format=FILES_LAYOUT,
            layout=FILES_LAYOUT,
            name=name,
        )
        removed = commit_version(storage, writer, info, retention, replace_name=replace)
    except BaseException as exc:
        writer.abort()
        if isinstance(exc, OSError) and not isinstance(exc, (CheckpointError, FileNotFoundError)):
            raise StorageError(
                f"saving the folder {local_dir} as step {step} to {storage.root_url} failed: {exc}"
            ) from exc
        raise
    log.info(
        "saved folder %s as %s (%d files, %.1f MB) to %s in %.2fs%s",
        local_dir,
        vid,
        len(records),
        info.size_bytes / 1e6,
        storage.root_url,
        time.perf_counter() - started,
        f", removed {len(removed)}" if removed else "",
    )
    return info


def restore_files(storage: Storage, info: CheckpointInfo, local_dir: str | os.PathLike[str]) -> Path:
    """Materialise a folder version into ``local_dir``, every file verified before any is moved into place.

    Files of ``local_dir`` that the version does not hold are left alone; those it
    holds are replaced.

    Args:
        storage: the root.
        info: a folder version's record.
        local_dir: the target folder (created when missing).

    Returns:
        ``local_dir`` as a ``Path``.

    Raises:
        CheckpointError: ``info`` is not a folder version.
        ChecksumMismatchError: a file is corrupt or missing (``local_dir`` is left as it was).
        StorageError: the backend failed.
    """
    if info.layout != FILES_LAYOUT:
        raise CheckpointError(
            f"version {info.version} is not a folder version (layout {info.layout!r}, format {info.format!r}); "
            "read it with load() or restore()"
        )
    target = Path(local_dir).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.torchckpt-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        for rel, expected in info.files.items():
            dest = _inside(staging, check_rel_path(rel))
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(dest, "wb") as out:
                _download(storage, info, rel, expected, out)
        if not target.exists():
            staging.rename(target)  # one rename: the folder appears complete or not at all
        else:
            for rel in info.files:
                dest = _inside(target, rel)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(_inside(staging, rel), dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.info("restored folder version %s (%d files) into %s", info.version, len(info.files), target)
    return target


def _inside(root: Path, rel: str) -> Path:
    """``root/rel``, refusing (once more, after ``check_rel_path``) anything that lands outside ``root``."""
    path = root.joinpath(*rel.split("/"))
    if os.path.commonpath([os.path.abspath(path), os.path.abspath(root)]) != os.path.abspath(root):
        raise CheckpointError(f"file {rel!r} of a folder version would land outside {root}")
    return path


def _download(storage: Storage, info: CheckpointInfo, rel: str, expected: dict[str, Any], out: IO[bytes]) -> None:
    """Stream one stored file into ``out`` in bounded chunks, checking its size and checksum."""
    rel_path = version_file(info.version, rel)
    url = storage.url(rel_path)
    hasher, size = new_hasher(), 0
    try:
        with storage.errors("reading", rel_path), contextlib.closing(storage.open_stream(rel_path)) as reader:
            while chunk := reader.read(CHUNK):
                hasher.update(chunk)
                size += len(chunk)
                out.write(chunk)
    except FileNotFoundError:  # a listed version lost a file: as unusable as a corrupt one
        raise ChecksumMismatchError(url, str(expected.get("checksum", "a recorded file")), "no such file") from None
    verify_record(url, expected, digest_of(hasher), size)


class FolderVersions:
    """``save_files`` / ``restore_files``: the folder-version methods of ``CheckpointManager``."""

    if TYPE_CHECKING:  # provided by CheckpointManager
        storage: Storage
        retention: RetentionPolicy | None

        def check_writable(self, *, settle: bool = False) -> None: ...
        def wait(self) -> None: ...
        def resolve(
            self, version: Selector, versions: builtins.list[CheckpointInfo] | None = None
        ) -> CheckpointInfo: ...

    def save_files(
        self,
        step: int,
        local_dir: str | os.PathLike[str],
        *,
        epoch: int | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Iterable[str] = (),
        name: str | None = None,
        replace: bool = False,
    ) -> CheckpointInfo:
        """Commit every file under ``local_dir`` (recursively) as one folder version (``folders.save_files``).

        Args:
            step: the training step.
            local_dir: the folder (e.g. a framework's ``checkpoint-N/``).
            epoch: the epoch, if any.
            metrics: numbers to record.
            tags: strings to record.
            name: a caller-chosen name, unique among listed versions, usable as a selector.
            replace: move ``name`` from the version holding it (removed in the same manifest update).

        Returns:
            The committed version's record (``layout == "files"``).

        Raises:
            ReadOnlyError, NameConflictError, CheckpointError (an unsafe file path), StorageError.
        """
        self.check_writable()
        self.wait()
        return save_files(
            self.storage,
            self.retention,
            local_dir,
            step=step,
            epoch=epoch,
            metrics=clean_metrics(metrics),
            tags=tuple(str(t) for t in tags),
            name=name,
            replace=replace,
        )

    def restore_files(self, version: Selector = "latest", local_dir: str | os.PathLike[str] | None = None) -> Path:
        """Materialise a folder version into ``local_dir``, every file verified first (``folders.restore_files``).

        Raises:
            CheckpointNotFoundError, ChecksumMismatchError (``local_dir`` left as it was), CheckpointError.
        """
        if local_dir is None:
            raise TypeError("restore_files needs local_dir: the folder to materialise the version into")
        return restore_files(self.storage, self.resolve(version), local_dir)
