"""The manifest: a JSON index of committed versions, updated by compare-and-swap.

Layout: ``{"format_version": 1, "generation": N, "versions": [record, ...]}`` with
records in commit order (oldest first). It is only an index: ``rebuild`` recreates
it from the immutable ``versions/<id>/meta.json`` files.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import CheckpointError, ManifestError, TornReadError
from .layout import MANIFEST, META, STAGING_PREFIX, VERSIONS, check_version_id, meta_path, version_dir
from .records import CheckpointInfo, meta_bytes
from .storage import Storage

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_CAS_ATTEMPTS = 50
#: Reads of a manifest that looks torn (short, unparsable) before it counts as corrupt.
_TORN_ATTEMPTS = 5


def _pause_after_torn_read(attempt: int, exc: Exception, storage: Storage) -> None:
    log.debug("torn read of %s (attempt %d): %s; reading again", storage.url(MANIFEST), attempt + 1, exc)
    time.sleep(0.02 * 2**attempt)


def _read_versioned(storage: Storage) -> tuple[bytes | None, str | None]:
    """``read_versioned`` of the manifest, read again (a bounded number of times) while it reads torn."""
    for attempt in range(_TORN_ATTEMPTS):
        try:
            return storage.read_versioned(MANIFEST)
        except TornReadError as exc:
            if attempt == _TORN_ATTEMPTS - 1:
                raise
            _pause_after_torn_read(attempt, exc, storage)
    raise AssertionError("unreachable")


@dataclass
class Manifest:
    generation: int = 0
    versions: list[CheckpointInfo] = field(default_factory=list)

    def find(self, version: str) -> CheckpointInfo | None:
        for info in self.versions:
            if info.version == version:
                return info
        return None

    def replace(self, info: CheckpointInfo) -> None:
        self.versions = [info if v.version == info.version else v for v in self.versions]


def encode(manifest: Manifest) -> bytes:
    doc = {
        "format_version": FORMAT_VERSION,
        "generation": manifest.generation,
        "versions": [v.to_record() for v in manifest.versions],
    }
    return json.dumps(doc, indent=1, sort_keys=False).encode()


def decode(data: bytes | None, storage: Storage) -> Manifest:
    """Parse a manifest; anything unexpected is a ``ManifestError`` that says how to recover."""
    if data is None:
        return Manifest()
    hint = f"run `torchckpt repair {storage.root_url}` to rebuild it from the versions' meta.json files"
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest {storage.url(MANIFEST)} is not valid JSON ({exc}); {hint}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("versions"), list):
        raise ManifestError(f"manifest {storage.url(MANIFEST)} has no version list; {hint}")
    fmt = doc.get("format_version")
    if not isinstance(fmt, int) or fmt > FORMAT_VERSION:
        raise ManifestError(
            f"manifest {storage.url(MANIFEST)} has format_version {fmt!r}, this torchckpt reads "
            f"{FORMAT_VERSION}: upgrade torchckpt, or {hint}"
        )
    try:
        versions = [CheckpointInfo.from_record(r, storage.url(version_dir(r["id"]))) for r in doc["versions"]]
    except (CheckpointError, KeyError, TypeError) as exc:
        raise ManifestError(f"manifest {storage.url(MANIFEST)} holds a bad record ({exc}); {hint}") from None
    return Manifest(generation=int(doc.get("generation", 0)), versions=versions)


def read(storage: Storage) -> Manifest:
    """One read of the manifest: this is all ``list()``/``latest()`` cost.

    A manifest that reads torn (its length differs from what the server announced, or
    it does not parse while another writer replaces it) is read again a few times;
    only one that stays bad is a ``ManifestError``.

    Raises:
        ManifestError: the manifest is stably unreadable or from a newer torchckpt.
        StorageError: the backend failed.
    """
    for attempt in range(_TORN_ATTEMPTS):
        data, _ = _read_versioned(storage)
        if data is None:
            found = scan(storage)
            if found.versions:
                log.warning(
                    "%s is missing: listing %d version(s) from their meta.json; run `torchckpt repair %s`",
                    storage.url(MANIFEST),
                    len(found.versions),
                    storage.root_url,
                )
            return found
        try:
            return decode(data, storage)
        except ManifestError as exc:
            if attempt == _TORN_ATTEMPTS - 1:
                raise
            _pause_after_torn_read(attempt, exc, storage)
    raise AssertionError("unreachable")


def scan(storage: Storage) -> Manifest:
    """A read-only index derived from ``meta.json`` files, for a root whose manifest is missing.

    A fresh root costs one listing of an empty ``versions/``; a root whose manifest was
    lost can still be listed and restored from until ``repair`` writes a new one.
    """
    infos = []
    for vid in committed_ids(storage)[0]:
        try:
            infos.append(read_meta(storage, vid))
        except (CheckpointError, FileNotFoundError) as exc:
            log.warning("skipping version %s: %s", vid, exc)
    infos.sort(key=lambda i: (i.created_at, i.version))
    return Manifest(versions=infos)


def update(
    storage: Storage, change: Callable[[Manifest], Manifest | None], *, tolerate_corrupt: bool = False
) -> Manifest:
    """Apply ``change`` atomically; retried on a concurrent write so no writer's version is lost.

    ``change`` may return ``None`` to leave the manifest as it is; it must be idempotent
    (applying it to a manifest that already has the change changes nothing more).
    ``tolerate_corrupt`` (for ``repair``) treats an unreadable manifest as empty instead
    of raising. Torn reads are read again (see ``read``). A conditional write reported
    as lost whose bytes are nevertheless what the server now holds (a client retry
    after the first try landed) counts as written.

    Raises:
        ManifestError: the manifest is stably unreadable, or too many writers raced.
        StorageError: the backend failed.
    """
    with storage.lock("manifest"):
        sent: tuple[bytes, Manifest] | None = None
        torn = 0
        for attempt in range(_CAS_ATTEMPTS):
            data, token = _read_versioned(storage)
            if sent is not None and data == sent[0]:
                return sent[1]  # our write landed; only its answer was lost
            try:
                # No scan of meta.json files here: that would list other writers' versions before
                # their own update does, and a concurrent prune could then delete one its saver is
                # about to list. A lost index is rebuilt by ``repair`` (an offline operation).
                current = decode(data, storage)
            except ManifestError as exc:
                torn += 1
                if torn < _TORN_ATTEMPTS:
                    _pause_after_torn_read(torn - 1, exc, storage)
                    continue
                if not tolerate_corrupt:
                    raise
                current = Manifest()
            new = change(current)
            if new is None:
                return current
            new.generation = current.generation + 1
            sent = (encode(new), new)
            if storage.write_conditional(MANIFEST, sent[0], token):
                return new
            log.debug("manifest changed under us (attempt %d); retrying", attempt + 1)
            time.sleep(min(1.0, 0.01 * 2 ** min(attempt, 6)) * random.uniform(0.5, 1.5))
    raise ManifestError(f"could not update {storage.url(MANIFEST)}: too many concurrent writers, try again")


def read_meta(storage: Storage, version: str) -> CheckpointInfo:
    data = storage.read_bytes(meta_path(version))
    try:
        rec = json.loads(data)
    except ValueError as exc:
        raise CheckpointError(f"{storage.url(version_dir(version))}/{META} is not valid JSON: {exc}") from None
    info = CheckpointInfo.from_record(rec, storage.url(version_dir(version)))
    if info.version != version:
        raise CheckpointError(f"{storage.url(version_dir(version))}/{META} names another version {info.version!r}")
    return info


def committed_ids(storage: Storage) -> tuple[list[str], list[str]]:
    """Version folders with a ``meta.json`` (committed) and without (leftovers), by listing."""
    committed: list[str] = []
    leftovers: list[str] = []
    for name in storage.list_names(VERSIONS):
        if name.startswith(STAGING_PREFIX):
            leftovers.append(name)
            continue
        try:
            check_version_id(name)
        except CheckpointError:
            log.warning("ignoring unexpected entry %s under versions/", name)
            continue
        (committed if storage.exists(meta_path(name)) else leftovers).append(name)
    return committed, leftovers


def rebuild(storage: Storage) -> Manifest:
    """Recreate the manifest from ``meta.json`` files, keeping pins and exports it still knows.

    A version the old manifest lists whose ``meta.json`` is missing or damaged stays
    listed when its data files are all there with their recorded sizes, and its
    ``meta.json`` is written again from that record; otherwise it is dropped.
    """
    restored: list[CheckpointInfo] = []

    def change(old: Manifest) -> Manifest:
        infos = []
        restored.clear()
        committed = set(committed_ids(storage)[0])
        for vid in sorted(committed | {v.version for v in old.versions}):
            known = old.find(vid)
            try:
                info = read_meta(storage, vid)
            except (CheckpointError, FileNotFoundError) as exc:
                if known is None or not _data_present(storage, known):
                    log.warning("skipping version %s: %s", vid, exc)
                    continue
                log.warning("version %s: %s; writing it again from the manifest's record", vid, exc)
                restored.append(known)
                info = known
            if known is not None:
                info = info.with_(pinned=known.pinned, exports=known.exports)
            infos.append(info)
        infos.sort(key=lambda i: (i.created_at, i.version))
        return Manifest(generation=old.generation, versions=infos)

    result = update(storage, change, tolerate_corrupt=True)
    for info in restored:  # after the update, so a concurrent change that dropped it wins
        if result.find(info.version) is not None:
            storage.write_bytes(meta_path(info.version), meta_bytes(info))
    return result


def _data_present(storage: Storage, info: CheckpointInfo) -> bool:
    for name, rec in info.files.items():
        try:
            if storage.size(f"{version_dir(info.version)}/{name}") != int(rec.get("size", -1)):
                return False
        except (FileNotFoundError, CheckpointError):
            return False
    return bool(info.files)
