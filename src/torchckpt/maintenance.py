"""Checking and cleaning a root: ``verify``, ``gc`` and ``repair`` (the manager's and the CLI's).

None of these is needed in normal operation; they answer "is everything intact?",
"remove what crashed saves left behind" and "rebuild a lost or damaged index".
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta

from . import manifest as mf
from .errors import CheckpointError
from .layout import EXPORTS, META, VERSIONS, id_time, version_file
from .records import CheckpointInfo
from .storage import Storage

log = logging.getLogger(__name__)


@dataclass
class VerifyReport:
    """Outcome of ``verify``: ``ok`` unless some file is missing or corrupt.

    Attributes:
        checked: the version ids checked.
        problems: ``(version id, message)`` for every missing or corrupt file.
    """

    checked: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems


def verify_versions(storage: Storage, targets: list[CheckpointInfo]) -> VerifyReport:
    """Check ``meta.json``, sizes and checksums of ``targets``; never raises for bad data.

    Raises:
        StorageError: the backend failed (not: a file is missing or corrupt).
    """
    return verify_copies([(storage, info) for info in targets])


def verify_copies(targets: list[tuple[Storage, CheckpointInfo]]) -> VerifyReport:
    """``verify_versions`` for versions that live in different roots (a cache tier's, a root's).

    Raises:
        StorageError: a backend failed (not: a file is missing or corrupt).
    """
    report = VerifyReport()
    for storage, info in targets:
        report.checked.append(info.version)
        try:
            meta = mf.read_meta(storage, info.version)
            if meta.to_record(with_index_fields=False) != info.to_record(with_index_fields=False):
                report.problems.append((info.version, f"{META} differs from the manifest's record"))
        except FileNotFoundError:
            report.problems.append((info.version, f"{META} is missing"))
        except CheckpointError as exc:
            report.problems.append((info.version, f"{META} is damaged: {exc}"))
        for name, expected in info.files.items():
            try:
                actual, size = storage.checksum(version_file(info.version, name))
            except FileNotFoundError:
                report.problems.append((info.version, f"{name} is missing"))
                continue
            if size != int(expected.get("size", -1)):
                report.problems.append((info.version, f"{name}: size {size}, expected {expected.get('size')}"))
            elif actual != expected.get("checksum"):
                report.problems.append(
                    (info.version, f"{name}: checksum {actual}, expected {expected.get('checksum')}")
                )
    return report


def collect_garbage(storage: Storage, listed: set[str], older_than: timedelta | float) -> list[str]:
    """Remove uncommitted leftovers older than the grace period; returns what was removed.

    Also aborts multipart uploads under the root that were started before the grace
    period and never finished (S3 servers that can list them; a warning where not).

    The grace period protects saves in progress by other writers. Committed but
    unlisted versions are left alone: ``repair`` lists them again.

    Args:
        storage: the root.
        listed: ids the manifest lists.
        older_than: the grace period.
    """
    grace = older_than.total_seconds() if isinstance(older_than, timedelta) else float(older_than)
    now = time.time()
    committed, leftovers = mf.committed_ids(storage)  # one listing and a HEAD per version
    stale = []
    for name in leftovers:
        if name in listed:  # indexed but its meta.json is gone: verify reports it, repair restores it
            continue
        age = now - (id_time(name) or storage.modified(f"{VERSIONS}/{name}") or now)
        if age >= grace:
            stale.append(f"{VERSIONS}/{name}")
    for name in storage.list_names(""):  # interrupted atomic writes: .<file>.<random>.tmp
        if name.startswith(".") and name.endswith(".tmp") and now - (storage.modified(name) or now) >= grace:
            stale.append(name)
    for name in storage.list_names(EXPORTS):
        if name not in listed and name not in committed:
            stale.append(f"{EXPORTS}/{name}")
    storage.remove(stale)
    aborted = storage.abort_unfinished_uploads(grace)
    if aborted is None:
        log.warning(
            "%s: this server cannot list unfinished multipart uploads, so gc cannot abort those of interrupted "
            "saves; their parts stay stored (and billed) until the bucket's lifecycle rule or an admin removes them",
            storage.root_url,
        )
    elif aborted:
        log.info("gc aborted %d unfinished upload(s) under %s", len(aborted), storage.root_url)
        stale += aborted
    if stale:
        log.info("gc removed %d leftover(s) under %s", len(stale), storage.root_url)
    return stale
