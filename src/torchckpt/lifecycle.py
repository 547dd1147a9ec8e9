"""The one commit path, and the one removal path, of every version.

Commit (steps 2-4 of the protocol in docs/storage-layout.md), used by single-file
saves, sharded saves, copies and folder versions alike:

1. ``VersionWriter.commit`` writes ``meta.json`` last (the commit marker);
2. one manifest compare-and-swap appends the record and unlists what the
   retention policy drops (never the new version, never a pinned one);
3. only after that update succeeded is the unlisted versions' data deleted
   (``meta.json`` first, so an interrupted delete leaves uncommitted garbage that
   ``gc`` removes, never a listed version with missing files).
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Mapping
from typing import Any

from . import manifest as mf
from .errors import CheckpointNotFoundError, NameConflictError
from .layout import META, export_dir, export_path, meta_path, version_dir, version_file
from .records import CheckpointInfo, meta_bytes
from .retention import RetentionPolicy
from .storage import Storage, VersionWriter

log = logging.getLogger(__name__)


def commit_version(
    storage: Storage,
    writer: VersionWriter,
    info: CheckpointInfo,
    retention: RetentionPolicy | None,
    *,
    meta_extra: Mapping[str, Any] | None = None,
    meta: bytes | None = None,
    replace_name: bool = False,
) -> list[CheckpointInfo]:
    """Commit a written version, list it, apply retention, delete what retention dropped.

    Args:
        storage: the root.
        writer: the version's writer, its data files written.
        info: the version's record.
        retention: the policy applied in the same manifest update (None: keep all).
        meta_extra: layout-specific fields stored in ``meta.json`` beside the record.
        meta: ``meta.json`` bytes to write as they are (copies keep the source's).
        replace_name: a listed version holding ``info.name`` is unlisted in the same update (else: an error).

    Returns:
        The versions retention (or ``replace_name``) removed.

    Raises:
        StorageError: the commit or the manifest update failed (the version is not listed).
        NameConflictError: ``info.name`` is taken (the committed data is removed again).
    """
    writer.commit(META, meta if meta is not None else meta_bytes(info, meta_extra))
    try:
        return list_committed(storage, info, retention, replace_name=replace_name)
    except NameConflictError:
        delete_data(storage, [info])  # committed but never listed: nobody else can be reading it
        raise


def list_committed(
    storage: Storage,
    info: CheckpointInfo,
    retention: RetentionPolicy | None,
    *,
    in_time_order: bool = False,
    replace_name: bool = False,
) -> list[CheckpointInfo]:
    """List a version whose ``meta.json`` is written, apply retention, delete what retention dropped.

    Args:
        storage: the root.
        info: the committed version's record.
        retention: the policy applied in the same manifest update (None: keep all).
        in_time_order: insert by ``created_at`` (copies, uploads) instead of appending.
        replace_name: a listed version holding ``info.name`` is unlisted in the same update (else: an error).

    Returns:
        The versions retention (or ``replace_name``) removed.

    Raises:
        StorageError: the manifest update failed (the version is not listed).
        NameConflictError: ``info.name`` is taken.
    """
    removed = list_version(storage, info, retention, in_time_order=in_time_order, replace_name=replace_name)
    if removed:
        # The version is committed: a failed delete must not make the save look failed
        # (the caller would retry and duplicate it); ``gc`` removes what is left.
        try:
            delete_data(storage, removed)
            log.info("removed %d version(s) from %s", len(removed), storage.root_url)
        except Exception as exc:
            log.warning("retention after committing %s failed to delete unlisted data: %s", info.version, exc)
    return removed


def list_version(
    storage: Storage,
    info: CheckpointInfo,
    retention: RetentionPolicy | None = None,
    *,
    in_time_order: bool = False,
    replace_name: bool = False,
) -> list[CheckpointInfo]:
    """List a committed version and unlist what ``retention`` drops, in one manifest update.

    Idempotent: a version already listed (e.g. after ``repair``) is left as it is.

    Args:
        storage: the root.
        info: the committed version.
        retention: applied to the new list; the new version itself is never dropped.
        in_time_order: insert by ``created_at`` (copies of older versions) instead of appending.
        replace_name: unlist the version that holds ``info.name`` (unless pinned) instead of raising.

    Returns:
        The unlisted versions, whose data the caller deletes.

    Raises:
        NameConflictError: ``info.name`` is held by another listed version (checked inside the update, so two
            writers cannot both take a name).
    """
    removed: list[CheckpointInfo] = []

    def add(m: mf.Manifest) -> mf.Manifest | None:
        removed.clear()
        if m.find(info.version) is not None:
            return None
        holders = name_holders(m.versions, info.name)
        if holders:
            pinned = [h.version for h in holders if h.pinned]
            if not replace_name or pinned:
                why = f"pinned version {pinned[0]}" if pinned else f"version {holders[0].version}"
                raise NameConflictError(
                    f"the name {info.name!r} is held by {why} in {storage.root_url}; choose another name"
                    + ("" if pinned else ", delete that version, or pass replace=True to move the name")
                )
            removed.extend(holders)
            held = {h.version for h in holders}
            m = mf.Manifest(m.generation, [v for v in m.versions if v.version not in held])
        if in_time_order:
            keys = [(v.created_at, v.version) for v in m.versions]
            at = bisect.bisect_right(keys, (info.created_at, info.version))  # keep created_at order, as repair does
            versions = m.versions[:at] + [info] + m.versions[at:]
        else:
            versions = m.versions + [info]
        if retention is not None:
            removed.extend(v for v in retention.to_remove(versions) if v.version != info.version)
        removed[:] = list({v.version: v for v in removed}.values())
        gone = {v.version for v in removed}
        return mf.Manifest(m.generation, [v for v in versions if v.version not in gone])

    mf.update(storage, add)
    return removed


def name_holders(versions: list[CheckpointInfo], name: str | None) -> list[CheckpointInfo]:
    """The listed versions that hold ``name`` (none for an unnamed version)."""
    return [] if name is None else [v for v in versions if v.name == name]


def unlist(storage: Storage, choose: Callable[[list[CheckpointInfo]], list[CheckpointInfo]]) -> list[CheckpointInfo]:
    """Unlist the versions ``choose`` picks from the current list (one manifest update), then delete their data.

    Unlisting first means a crash in between leaves garbage for ``gc``, never a
    listed version with missing data.

    Returns:
        The removed versions.
    """
    removed: list[CheckpointInfo] = []

    def change(m: mf.Manifest) -> mf.Manifest | None:
        removed.clear()
        removed.extend(choose(m.versions))
        if not removed:
            return None
        gone = {v.version for v in removed}
        return mf.Manifest(m.generation, [v for v in m.versions if v.version not in gone])

    mf.update(storage, change)
    if removed:
        delete_data(storage, removed)
        log.info("removed %d version(s) from %s", len(removed), storage.root_url)
    return removed


def set_pinned(storage: Storage, version: str, pinned: bool) -> CheckpointInfo:
    """Pin or unpin a listed version (one manifest update); returns its new record.

    Raises:
        CheckpointNotFoundError: the version is not listed (removed meanwhile).
    """
    result: list[CheckpointInfo] = []

    def change(m: mf.Manifest) -> mf.Manifest:
        info = m.find(version)
        if info is None:
            raise CheckpointNotFoundError(f"version {version} was removed meanwhile")
        result.append(info.with_(pinned=pinned))
        m.replace(result[-1])
        return m

    mf.update(storage, change)
    return result[-1]


def delete_data(storage: Storage, infos: list[CheckpointInfo]) -> None:
    """Delete unlisted versions' files and exports: ``meta.json`` (the commit marker) first."""
    storage.remove([meta_path(i.version) for i in infos], recursive=False)
    files = [version_file(i.version, name) for i in infos for name in i.files]
    exports = [export_path(i.version, name) for i in infos for name in i.exports]
    storage.remove(files + exports, recursive=False)
    storage.remove_empty_folders([version_dir(i.version) for i in infos])
    # artifacts the manifest does not name (an export cut short before its record) go too
    ids = {i.version for i in infos}
    storage.remove(sorted(export_dir(v) for v in set(storage.list_names("exports")) & ids))
