"""The cache tier: a second root (a local disk, usually) that versions are committed to first.

It has the usual layout, commit protocol and manifest of its own, plus two
things only a cache has (paths in ``layout``):

* ``tier.json`` binds it to one root: a cache opened in front of another root
  is refused, so a version can never be uploaded to the wrong place;
* ``uploads/<id>`` markers say which versions are committed and listed in the
  root. A version without a marker is *pending*: nothing else remembers it, so
  the cache never removes it, and every manager opened on this cache uploads it.

What is listed (read-your-writes) is the root's versions plus pending ones;
``copies`` says where a version can be read from, the cache first.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from typing import Any

import torch

from .. import lifecycle
from .. import manifest as mf
from ..errors import StorageError
from ..layout import TIER_BINDING, UPLOADS, uploaded_marker, version_dir
from ..records import CheckpointInfo
from ..saving import write_version
from ..storage import Storage, open_storage

log = logging.getLogger(__name__)

CACHE, ROOT = "cache", "root"


class CacheTier:
    """A cache root in front of a (remote) root.

    Attributes:
        root: the root's storage.
        storage: the cache's storage.
        keep_last: how many uploaded versions the cache keeps besides the pending ones.
    """

    def __init__(self, root: Storage, cache: str | os.PathLike[str], *, keep_last: int, read_only: bool) -> None:
        """Open (and unless read-only, create and bind) the cache.

        Args:
            root: the root's storage.
            cache: a local path or an fsspec URL.
            keep_last: uploaded versions to keep in the cache (>= 0).
            read_only: never write to the cache.

        Raises:
            ValueError: a negative ``keep_last``, or the cache is the root itself.
            StorageError: the cache cannot be used, or it belongs to another root.
        """
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0:
            raise ValueError(f"cache_keep_last must be an int >= 0, got {keep_last!r}")
        self.root = root
        self.storage = open_storage(cache)
        if self.storage.root_url == root.root_url:
            raise ValueError(f"cache {self.storage.root_url} is the root itself; choose another folder")
        self.storage.check(create=not read_only)
        self.keep_last = keep_last
        self._bind(read_only)

    def _bind(self, read_only: bool) -> None:
        try:
            bound = json.loads(self.storage.read_bytes(TIER_BINDING)).get("root")
        except FileNotFoundError:
            bound = None
        except ValueError as exc:
            raise StorageError(
                f"{self.storage.url(TIER_BINDING)} is not valid JSON ({exc}); "
                "move the cache folder aside and start a new one"
            ) from None
        if bound is None:
            if not read_only:
                self.storage.write_bytes(TIER_BINDING, json.dumps({"root": self.root.root_url}).encode())
        elif bound != self.root.root_url:
            raise StorageError(
                f"cache {self.storage.root_url} belongs to root {bound}, not {self.root.root_url}; "
                "give every root its own cache folder"
            )

    # ----- what is where ---------------------------------------------------------------------------
    def versions(self) -> list[CheckpointInfo]:
        """Versions committed in the cache (uploaded or not), oldest first."""
        return mf.read(self.storage).versions

    def uploaded_ids(self) -> set[str]:
        """Ids of the cache's versions that reached the root (one listing)."""
        return set(self.storage.list_names(UPLOADS))

    def pending(self) -> list[CheckpointInfo]:
        """Cache versions not yet uploaded, oldest first."""
        done = self.uploaded_ids()
        return [v.with_(tiers=(CACHE,)) for v in self.versions() if v.version not in done]

    def merge(self, root_versions: list[CheckpointInfo]) -> list[CheckpointInfo]:
        """The root's versions plus pending cache versions, each with its ``tiers``, by ``created_at``."""
        cached = {v.version: v for v in self.versions()}
        done = self.uploaded_ids()
        merged = [v.with_(tiers=(CACHE, ROOT) if v.version in cached else (ROOT,)) for v in root_versions]
        in_root = {v.version for v in root_versions}
        merged += [v.with_(tiers=(CACHE,)) for vid, v in cached.items() if vid not in in_root and vid not in done]
        merged.sort(key=lambda v: v.created_at)  # stable: the root's own order among equal times
        return merged

    def copies(self, info: CheckpointInfo) -> list[tuple[Storage, CheckpointInfo]]:
        """Where ``info`` can be read from: the cache first when it holds the version, then the root."""
        out: list[tuple[Storage, CheckpointInfo]] = []
        vdir = version_dir(info.version)
        if CACHE in info.tiers:
            out.append((self.storage, info.with_(url=self.storage.url(vdir))))
        if ROOT in info.tiers or not out:
            out.append((self.root, info.with_(url=self.root.url(vdir))))
        return out

    # ----- writing -----------------------------------------------------------------------------------
    def save(
        self, format: str, payload: dict[str, Any], module: torch.nn.Module | bytes | None, **args: Any
    ) -> CheckpointInfo:
        """Commit one version to the cache (the usual protocol; no retention: pending versions stay).

        Raises:
            StorageError: the cache could not hold it (a full disk, say); nothing was listed.
        """
        try:
            info = write_version(self.storage, format, payload, module, None, **args)
        except StorageError as exc:
            raise StorageError(
                f"{exc}; the cache {self.storage.root_url} could not take this version: free space there, lower "
                "cache_keep_last, or check that uploads are not failing (pending_uploads())"
            ) from exc
        return info.with_(tiers=(CACHE,))

    def mark_uploaded(self, version: str) -> None:
        """Record that ``version`` is listed in the root (after which the cache may remove it)."""
        stamp = datetime.now(timezone.utc).isoformat()
        self.storage.write_bytes(
            uploaded_marker(version), json.dumps({"root": self.root.root_url, "uploaded_at": stamp}).encode()
        )

    def trim(self) -> list[CheckpointInfo]:
        """Remove uploaded versions beyond the newest ``keep_last`` (never a pending one); returns them."""
        done = self.uploaded_ids()

        def choose(versions: list[CheckpointInfo]) -> list[CheckpointInfo]:
            uploaded = [v for v in versions if v.version in done]
            return uploaded[: max(0, len(uploaded) - self.keep_last)]

        removed = lifecycle.unlist(self.storage, choose)
        # markers last: a crash before this leaves a marker of a removed version, which nothing reads
        self.storage.remove([uploaded_marker(v.version) for v in removed], recursive=False)
        listed = {v.version for v in self.versions()} if done else set()
        stale = [uploaded_marker(vid) for vid in done - listed - {v.version for v in removed}]
        if stale:
            self.storage.remove(stale, recursive=False)
        return removed

    def __repr__(self) -> str:
        return f"CacheTier({self.storage.root_url!r} -> {self.root.root_url!r})"


__all__ = ["CACHE", "ROOT", "UPLOADS", "CacheTier"]
