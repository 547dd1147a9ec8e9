"""Copying one committed version from one root's ``Storage`` to another's, verified on the way.

The machinery behind ``torchckpt copy`` (``transfer.py``) and the tier uploader
(``tiers/uploader.py``). Each file is streamed in bounded chunks, checksummed on
the way and compared with the source's ``meta.json``, so a corrupt source is
refused instead of spread. On the destination the version goes through the normal
commit protocol: data files through a ``VersionWriter``, ``meta.json`` last, then
one manifest update (``lifecycle.list_committed``), in which the destination's
retention may apply. Ids, steps, metrics, tags and exports travel; pins do not.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import IO, Any

from . import manifest as mf
from .errors import CheckpointError, ChecksumMismatchError
from .hashing import digest_of, new_hasher
from .layout import META, export_path, meta_path, version_dir, version_file
from .lifecycle import list_committed
from .records import CheckpointInfo
from .retention import RetentionPolicy
from .storage import Storage

log = logging.getLogger(__name__)

#: Bytes held in memory per file at a time while copying.
CHUNK = 8 << 20
Progress = Callable[[int], Any]


def copy_size(info: CheckpointInfo) -> int:
    """Bytes a copy of ``info`` will move (data files plus recorded exports)."""
    exports = sum(int(e.get("size", 0) or 0) for e in info.exports.values() if isinstance(e, dict))
    return info.size_bytes + exports


def copy_version(
    src: Storage,
    dst: Storage,
    listed: CheckpointInfo,
    *,
    progress: Progress | None = None,
    retention: RetentionPolicy | None = None,
) -> tuple[CheckpointInfo, list[CheckpointInfo]]:
    """Copy one committed version of ``src`` to ``dst`` and list it there (in ``created_at`` order).

    Args:
        src: the source root.
        dst: the destination root.
        listed: the version's record as the source lists it.
        progress: called with the byte count of every chunk moved.
        retention: the destination's policy, applied in the listing's manifest update (None: a copy never deletes).

    Returns:
        The destination's record, and the versions retention removed there.

    Raises:
        CheckpointError: the source is damaged (missing file, meta.json disagreeing with the manifest).
        ChecksumMismatchError: a source file differs from its recorded checksum (nothing is listed).
        StorageError: a backend failed; nothing is listed at the destination.
    """
    vid = listed.version
    vdir = version_dir(vid)
    meta_bytes = _read_meta_bytes(src, vid)
    meta = CheckpointInfo.from_record(json.loads(meta_bytes))
    if meta.files != listed.files:
        raise CheckpointError(
            f"version {vid} at {src.root_url}: meta.json and the manifest disagree on its files; "
            f"run `torchckpt repair {src.root_url}` first"
        )
    if dst.exists(meta_path(vid)):
        _check_existing(dst, meta)  # committed by an earlier, interrupted copy: verify and list it
    else:
        writer = dst.version_writer(vdir)
        try:
            with dst.errors("writing", vdir):  # source errors are CheckpointErrors and pass through
                for name, record in meta.files.items():
                    with writer.open(name) as out:
                        stream(src, version_file(vid, name), out, record, progress)
            writer.commit(META, meta_bytes)
        except BaseException:
            writer.abort()
            raise
    exports = _copy_exports(src, dst, listed, progress)
    info = meta.with_(pinned=False, exports=exports, url=dst.url(vdir))
    removed = list_committed(dst, info, retention, in_time_order=True)
    log.info("copied %s (%d bytes) from %s to %s", vid, meta.size_bytes, src.root_url, dst.root_url)
    return info, removed


def _read_meta_bytes(src: Storage, vid: str) -> bytes:
    rel = meta_path(vid)
    try:
        data = src.read_bytes(rel)
        json.loads(data)
    except FileNotFoundError:
        raise CheckpointError(f"{src.url(rel)} is missing: the version is listed but not committed") from None
    except ValueError as exc:
        raise CheckpointError(f"{src.url(rel)} is not valid JSON: {exc}") from None
    return data


def stream(src: Storage, rel: str, out: IO[bytes] | Any, record: dict[str, Any], progress: Progress | None) -> None:
    """Copy one file in bounded chunks; raise if what was read differs from the recorded size or checksum.

    Args:
        src: the root to read from.
        rel: the file, relative to ``src``.
        out: a binary writer (anything with ``write``).
        record: the file's recorded ``size`` and ``checksum``.
        progress: called with the byte count of every chunk.

    Raises:
        CheckpointError: the file is missing or has another size.
        ChecksumMismatchError: the bytes differ from the recorded checksum.
    """
    hasher, size = new_hasher(), 0
    url = src.url(rel)
    try:
        with src.errors("reading", rel):
            reader = src.open_stream(rel, block_size=CHUNK)
    except FileNotFoundError:
        raise CheckpointError(f"{url} is missing; the source version is damaged") from None
    with reader:
        while True:
            with src.errors("reading", rel):  # write errors below belong to the destination
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


def _check_existing(dst: Storage, meta: CheckpointInfo) -> None:
    """A committed but unlisted copy at the destination is reused only if it is identical and intact."""
    vdir = version_dir(meta.version)
    theirs = mf.read_meta(dst, meta.version)
    if theirs.files != meta.files:
        raise CheckpointError(
            f"{dst.url(vdir)} already holds a different version with id {meta.version}; not overwriting it"
        )
    for name, record in meta.files.items():
        stream(dst, version_file(meta.version, name), _Discard(), record, None)


def _copy_exports(
    src: Storage, dst: Storage, info: CheckpointInfo, progress: Progress | None
) -> dict[str, dict[str, Any]]:
    """Export artifacts are written before the manifest names them; until then ``gc`` may reclaim them."""
    for name, record in info.exports.items():
        rel = export_path(info.version, name)
        with dst.errors("writing", rel), dst.open_write(rel) as out:
            stream(src, rel, out, record if isinstance(record, dict) else {}, progress)
    return dict(info.exports)


class _Discard:
    """A writer that only counts: verifying reads through the same streaming path."""

    def write(self, data: bytes) -> int:
        return len(data)
