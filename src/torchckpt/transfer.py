"""Copying committed versions between two roots (e.g. promoting local versions to S3).

Each file is streamed in bounded chunks, checksummed on the way and compared with
the source's ``meta.json``, so a corrupt source is refused instead of spread. On
the destination every version goes through the normal commit protocol: data
files through a ``VersionWriter``, ``meta.json`` last, then one manifest update.
Ids, steps, metrics, tags and exports travel; pins do not (they are a decision
about one root, so the destination keeps its own).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

from . import manifest as mf
from .errors import CheckpointError, ChecksumMismatchError, NameConflictError, ReadOnlyError
from .hashing import digest_of, new_hasher
from .layout import META, export_path, meta_path, version_dir, version_file
from .lifecycle import list_version
from .manager import CheckpointManager
from .records import CheckpointInfo

log = logging.getLogger(__name__)

#: Bytes held in memory per file at a time while copying.
CHUNK = 8 << 20
Progress = Callable[[int], Any]


def plan_copy(
    src: CheckpointManager, dst: CheckpointManager, versions: Iterable[Any] | None = None
) -> tuple[list[CheckpointInfo], list[CheckpointInfo]]:
    """Source versions to copy and those already at the destination, oldest first.

    ``versions`` holds selectors (ids, steps, ``"latest"``, ``CheckpointInfo``); ``None`` means all.
    """
    listed = src.list()
    if versions is None:
        chosen = listed
    else:
        ids = {src.resolve(v, listed).version for v in versions}  # no manifest read per selector
        chosen = [v for v in listed if v.version in ids]
    present = {v.version for v in dst.list()}
    return [v for v in chosen if v.version not in present], [v for v in chosen if v.version in present]


def copy_size(info: CheckpointInfo) -> int:
    """Bytes a copy of ``info`` will move (data files plus recorded exports)."""
    exports = sum(int(e.get("size", 0) or 0) for e in info.exports.values() if isinstance(e, dict))
    return info.size_bytes + exports


def copy_versions(
    src: CheckpointManager,
    dst: CheckpointManager,
    versions: Sequence[Any] | None = None,
    progress: Progress | None = None,
) -> list[CheckpointInfo]:
    """Copy versions (default: all) from ``src`` to ``dst``; returns the destination records.

    Versions already listed at the destination are skipped, so an interrupted copy
    can simply be run again. ``progress`` is called with the byte count of every
    chunk moved. Retention of ``dst`` is not applied: a copy never deletes.
    """
    if dst.read_only:
        raise ReadOnlyError(f"cannot copy into {dst.root_url}: its manager is read-only")
    todo, skipped = plan_copy(src, dst, versions)
    held = {v.name: v.version for v in dst.list() if v.name is not None}
    for info in todo:  # refuse before copying a byte (the manifest update checks again)
        if info.name is not None and held.get(info.name, info.version) != info.version:
            raise NameConflictError(
                f"cannot copy {info.version}: its name {info.name!r} is held by version {held[info.name]} at "
                f"{dst.root_url}; delete that version there first"
            )
    for info in skipped:
        log.info("skipping %s: already at %s", info.version, dst.root_url)
    return [_copy_one(src, dst, info, progress) for info in todo]


def _copy_one(
    src: CheckpointManager, dst: CheckpointManager, listed: CheckpointInfo, progress: Progress | None
) -> CheckpointInfo:
    vid = listed.version
    vdir = version_dir(vid)
    meta_bytes = _read_meta_bytes(src, vid)
    meta = CheckpointInfo.from_record(json.loads(meta_bytes))
    if meta.files != listed.files:
        raise CheckpointError(
            f"version {vid} at {src.root_url}: meta.json and the manifest disagree on its files; "
            f"run `torchckpt repair {src.root_url}` first"
        )
    if dst.storage.exists(meta_path(vid)):
        _check_existing(dst, meta)  # committed by an earlier, interrupted copy: verify and list it
    else:
        writer = dst.storage.version_writer(vdir)
        try:
            with dst.storage.errors("writing", vdir):  # source errors are CheckpointErrors and pass through
                for name, record in meta.files.items():
                    with writer.open(name) as out:
                        _stream(src, version_file(vid, name), out, record, progress)
            writer.commit(META, meta_bytes)
        except BaseException:
            writer.abort()
            raise
    exports = _copy_exports(src, dst, listed, progress)
    info = meta.with_(pinned=False, exports=exports, url=dst.storage.url(vdir))
    list_version(dst.storage, info, in_time_order=True)  # a copy never applies retention: it never deletes
    log.info("copied %s (%d bytes) from %s to %s", vid, meta.size_bytes, src.root_url, dst.root_url)
    return info


def _read_meta_bytes(src: CheckpointManager, vid: str) -> bytes:
    rel = meta_path(vid)
    try:
        data = src.storage.read_bytes(rel)
        json.loads(data)
    except FileNotFoundError:
        raise CheckpointError(f"{src.storage.url(rel)} is missing: the version is listed but not committed") from None
    except ValueError as exc:
        raise CheckpointError(f"{src.storage.url(rel)} is not valid JSON: {exc}") from None
    return data


def _stream(
    src: CheckpointManager, rel: str, out: IO[bytes], record: dict[str, Any], progress: Progress | None
) -> None:
    """Copy one file in bounded chunks; raise if what was read differs from the recorded checksum."""
    hasher, size = new_hasher(), 0
    url = src.storage.url(rel)
    try:
        with src.storage.errors("reading", rel):
            reader = src.storage.open_stream(rel, block_size=CHUNK)
    except FileNotFoundError:
        raise CheckpointError(f"{url} is missing; the source version is damaged") from None
    with reader:
        while True:
            with src.storage.errors("reading", rel):  # write errors below belong to the destination
                chunk = reader.read(CHUNK)
            if not chunk:
                break
            hasher.update(chunk)
            size += len(chunk)
            out.write(chunk)
            if progress is not None:
                progress(len(chunk))
    expected_size, expected = record.get("size"), record.get("checksum")
    if expected_size is not None and size != int(expected_size):
        raise CheckpointError(f"{url} has {size} bytes, its meta.json says {expected_size}; the source is corrupt")
    if expected is not None and digest_of(hasher) != expected:
        raise ChecksumMismatchError(url, str(expected), digest_of(hasher))


def _check_existing(dst: CheckpointManager, meta: CheckpointInfo) -> None:
    """A committed but unlisted copy at the destination is reused only if it is identical and intact."""
    vdir = version_dir(meta.version)
    theirs = mf.read_meta(dst.storage, meta.version)
    if theirs.files != meta.files:
        raise CheckpointError(
            f"{dst.storage.url(vdir)} already holds a different version with id {meta.version}; not overwriting it"
        )
    for name, record in meta.files.items():
        _stream(dst, version_file(meta.version, name), _Discard(), record, None)


def _copy_exports(
    src: CheckpointManager, dst: CheckpointManager, info: CheckpointInfo, progress: Progress | None
) -> dict[str, dict[str, Any]]:
    """Export artifacts are written before the manifest names them; until then ``gc`` may reclaim them."""
    for name, record in info.exports.items():
        rel = export_path(info.version, name)
        with dst.storage.errors("writing", rel), dst.storage.open_write(rel) as out:
            _stream(src, rel, out, record if isinstance(record, dict) else {}, progress)
    return dict(info.exports)


class _Discard:
    """A writer that only counts: verifying reads through the same streaming path."""

    def write(self, data: bytes) -> int:
        return len(data)
