"""Uploading a cache tier's pending versions to its root: one pass, and the background thread that runs passes.

``upload_pending`` is the one code path, run by the background ``Uploader`` after
each save (and once when a manager opens a cache, for versions an earlier process
left behind), and by ``torchckpt sync`` on the caller's thread. Each version is
copied with ``copying.copy_version``: streamed, checked against its recorded
checksums, committed with the root's own protocol (``meta.json`` last) and listed
by the root's manifest compare-and-swap, where the root's retention applies. Only
then is it marked uploaded in the cache, which may then drop it (``cache_keep_last``).
An upload cut short therefore lists nothing in the root and leaves the version
pending in the cache, for the next pass or the next manager.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone

from .. import manifest as mf
from ..copying import Progress, copy_version
from ..errors import CheckpointError, StorageError, UploadError
from ..records import CheckpointInfo
from ..retention import RetentionPolicy
from .cache import ROOT, CacheTier

log = logging.getLogger(__name__)


def upload_one(
    tier: CacheTier, info: CheckpointInfo, retention: RetentionPolicy | None, progress: Progress | None = None
) -> CheckpointInfo | None:
    """Upload one pending version (unless another uploader did), mark it uploaded, trim the cache.

    Args:
        tier: the cache and its root.
        info: the pending version, as the cache lists it.
        retention: the root's policy, applied in the root's manifest update.
        progress: called with the byte count of every chunk moved.

    Returns:
        The root's record, or None when the version was uploaded already.

    Raises:
        CheckpointError: the cache copy is damaged, or the root failed (``StorageError``); nothing is listed.
    """
    started = time.perf_counter()
    with tier.storage.lock("upload"):  # one uploader per cache at a time (other processes included)
        if info.version in tier.uploaded_ids():
            return None
        listed = mf.read(tier.root).find(info.version)  # a crash after the root listed it, before the marker
        uploaded = listed or copy_version(tier.storage, tier.root, info, progress=progress, retention=retention)[0]
        tier.mark_uploaded(info.version)
    seconds = time.perf_counter() - started
    lag = (datetime.now(timezone.utc) - info.created_at).total_seconds()
    mb = info.size_bytes / 1e6
    log.info(
        "uploaded %s (%.1f MB) to %s in %.2fs (%.0f MB/s); the root was %.1fs behind the cache",
        info.version,
        mb,
        tier.root.root_url,
        seconds,
        mb / max(seconds, 1e-9),
        lag,
    )
    try:
        tier.trim()
    except CheckpointError as exc:  # the upload itself succeeded; the next trim retries
        log.warning("could not trim the cache %s: %s", tier.storage.root_url, exc)
    return uploaded.with_(tiers=(ROOT,))


def upload_pending(
    tier: CacheTier,
    retention: RetentionPolicy | None,
    progress: Progress | None = None,
) -> tuple[list[CheckpointInfo], dict[str, BaseException]]:
    """Upload every pending version of ``tier``, oldest first.

    A ``StorageError`` (the root unreachable, most likely) ends the pass: the rest
    stays pending for the next pass. A damaged cache copy fails only its own version.

    Returns:
        The versions uploaded, and the failures by version id.
    """
    uploaded: list[CheckpointInfo] = []
    failed: dict[str, BaseException] = {}
    for info in tier.pending():
        try:
            done = upload_one(tier, info, retention, progress)
        except Exception as exc:
            failed[info.version] = exc
            log.error(
                "uploading %s to %s failed (it stays in the cache %s): %s",
                info.version,
                tier.root.root_url,
                tier.storage.root_url,
                exc,
            )
            if isinstance(exc, StorageError) or not isinstance(exc, CheckpointError):
                break
            continue
        if done is not None:
            uploaded.append(done)
    left = len(tier.pending()) if uploaded or failed else 0
    if left:
        log.info("%d version(s) still pending upload from %s", left, tier.storage.root_url)
    return uploaded, failed


def failure(tier: CacheTier, failed: dict[str, BaseException]) -> UploadError:
    """The error ``wait()`` raises for failed uploads: what failed, why, and how to finish the job."""
    first = next(iter(failed.values()))
    return UploadError(
        f"{len(failed)} version(s) could not be uploaded to {tier.root.root_url} "
        f"({', '.join(failed)}): {type(first).__name__}: {first}. They stay committed in the cache "
        f"{tier.storage.root_url}; once the root is reachable, wait() again, open a manager on the same cache and "
        f"root, or run `torchckpt sync {tier.root.root_url} --cache {tier.storage.root_url}`"
    )


class Uploader:
    """One background thread running ``upload_pending`` passes when kicked; failures surface in ``wait``."""

    def __init__(self, tier: CacheTier, retention: RetentionPolicy | None) -> None:
        self.tier = tier
        self.retention = retention
        self._cond = threading.Condition()
        self._kicked = False
        self._busy = False
        self._closed = False
        self._failed: dict[str, BaseException] = {}
        self._thread: threading.Thread | None = None

    def kick(self) -> None:
        """Start a pass soon (after the one running, if any)."""
        with self._cond:
            if self._closed:
                return
            self._kicked = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="torchckpt-upload", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._kicked and not self._closed:
                    self._cond.wait()
                if not self._kicked:
                    return
                self._kicked, self._busy = False, True
            try:
                uploaded, failed = upload_pending(self.tier, self.retention)
            except Exception as exc:  # reading the cache itself failed
                log.error("upload pass over %s failed: %s", self.tier.storage.root_url, exc)
                uploaded, failed = [], {"(listing the cache)": exc}
            with self._cond:
                for info in uploaded:
                    self._failed.pop(info.version, None)
                self._failed.update(failed)
                self._busy = False
                self._cond.notify_all()

    def wait(self) -> None:
        """Run a pass over everything pending and block until it ends.

        Raises:
            UploadError: versions that could not be uploaded (they stay pending in the cache).
        """
        self.kick()
        with self._cond:
            while self._kicked or self._busy:
                self._cond.wait()
            failed, self._failed = self._failed, {}
        if failed:
            raise failure(self.tier, failed) from next(iter(failed.values()))

    def close(self) -> None:
        """``wait``, then stop the thread (even when ``wait`` raises).

        Raises:
            UploadError: see ``wait``.
        """
        try:
            self.wait()
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            if self._thread is not None:
                self._thread.join()
