"""Copying committed versions between two managers' roots (e.g. promoting local versions to S3).

What to copy is decided here; how one version is streamed, verified and committed
at the destination is ``copying.copy_version`` (shared with the tier uploader).
Ids, steps, metrics, tags and exports travel; pins do not (they are a decision
about one root, so the destination keeps its own).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from . import copying
from .copying import Progress, copy_size
from .errors import NameConflictError, ReadOnlyError
from .manager import CheckpointManager
from .records import CheckpointInfo

log = logging.getLogger(__name__)

__all__ = ["copy_size", "copy_versions", "plan_copy"]


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
    return [copying.copy_version(src.storage, dst.storage, info, progress=progress)[0] for info in todo]
