"""Tiers: a local cache in front of a remote root (DESIGN.md, "Tiers"; docs/tiers.md).

``save`` commits to the cache at local-disk speed and returns; ``uploader`` copies
the version to the root in the background; reads prefer the cache. ``Tiers`` is
all the manager talks to: it keeps ``manager.py`` to a few delegating lines.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .. import manifest as mf
from ..errors import UploadError
from ..records import CheckpointInfo
from ..retention import RetentionPolicy
from ..storage import Storage
from .cache import CACHE, ROOT, CacheTier
from .uploader import Uploader, failure, upload_one, upload_pending

#: Why sharded saves do not take a cache (the long form is in docs/tiers.md).
SHARDED_REFUSAL = (
    "cache= does not support sharded (distributed / DCP) saves: a sharded version is complete only when every "
    "rank's shards are in the root, and uploading them in the background would need a collective commit off the "
    "training thread; save sharded state without cache= (see docs/tiers.md)"
)


class Tiers:
    """A cache tier, its background uploader, and the read-your-writes view of both tiers."""

    def __init__(
        self,
        root: Storage,
        cache: str | os.PathLike[str],
        *,
        keep_last: int,
        retention: RetentionPolicy | None,
        read_only: bool,
        background: bool = True,
    ) -> None:
        """Open the cache; unless read-only, start uploading what an earlier process left pending.

        Args:
            root: the root's storage.
            cache: the cache's path or URL.
            keep_last: uploaded versions the cache keeps.
            retention: the root's policy, applied by each upload.
            read_only: never write (no uploads, no cache creation).
            background: run uploads on a background thread (False: the caller runs ``upload_pending``).

        Raises:
            ValueError: a bad ``keep_last``, or the cache is the root.
            StorageError: the cache cannot be used, or it belongs to another root.
        """
        self.tier = CacheTier(root, cache, keep_last=keep_last, read_only=read_only)
        self.retention = retention
        self.uploader: Uploader | None = None
        if not read_only and background:
            self.uploader = Uploader(self.tier, retention)
            self.uploader.kick()  # a crash between a cache commit and its upload loses nothing

    @property
    def cache_url(self) -> str:
        """The cache's root URL."""
        return self.tier.storage.root_url

    def list_versions(self) -> list[CheckpointInfo]:
        """The root's versions plus committed cache versions not yet uploaded, oldest first."""
        return self.tier.merge(mf.read(self.tier.root).versions)

    def copies(self, info: CheckpointInfo) -> list[tuple[Storage, CheckpointInfo]]:
        """Where to read ``info`` from, the cache first."""
        return self.tier.copies(info)

    def save(
        self, format: str, payload: dict[str, Any], module: torch.nn.Module | bytes | None, **args: Any
    ) -> CheckpointInfo:
        """Commit to the cache and queue the upload; returns the cache's record (``tiers == ("cache",)``)."""
        info = self.tier.save(format, payload, module, **args)
        if self.uploader is not None:
            self.uploader.kick()
        return info

    def pending(self) -> list[CheckpointInfo]:
        """Committed cache versions not yet in the root, oldest first."""
        in_root = {v.version for v in mf.read(self.tier.root).versions}
        return [v for v in self.tier.pending() if v.version not in in_root]

    def wait(self) -> None:
        """Upload everything pending and block until done.

        Raises:
            UploadError: some versions could not be uploaded (they stay in the cache).
        """
        if self.uploader is not None:
            self.uploader.wait()

    def close(self) -> None:
        """``wait``, then stop the uploader thread.

        Raises:
            UploadError: see ``wait``.
        """
        if self.uploader is not None:
            uploader, self.uploader = self.uploader, None
            uploader.close()


__all__ = [
    "CACHE",
    "ROOT",
    "SHARDED_REFUSAL",
    "CacheTier",
    "Tiers",
    "UploadError",
    "failure",
    "upload_one",
    "upload_pending",
]
