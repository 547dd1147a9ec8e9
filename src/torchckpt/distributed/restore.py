"""Collective sharded restore: DCP reads into the live objects' own state dicts.

Shards land where the current world size and placement want them (resharding is
DCP's). Every rank calls ``restore_sharded``; a missing, corrupt or unsafe file on
any rank raises on every rank before DCP starts (see ``Collectives``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .. import rng
from ..errors import MissingObjectError
from ..formats.dcp_io import dcp_load
from ..records import Checkpoint, CheckpointInfo
from ..storage import Storage
from .collectives import Collectives
from .state import apply_state, load_target

log = logging.getLogger(__name__)


def restore_sharded(
    storage: Storage,
    info: CheckpointInfo,
    objects: Mapping[str, Any],
    *,
    collective: bool,
    strict: bool = True,
    restore_rng: bool = False,
    verify: bool = True,
    trust_pickle: bool = False,
) -> Checkpoint:
    """Load a sharded version into ``objects`` in place.

    Args:
        storage: the root.
        info: the sharded version's record.
        objects: name -> live object to load into.
        collective: every rank of the process group calls this (False: one process reads alone).
        strict: refuse missing or unexpected keys.
        restore_rng: restore this rank's saved RNG state.
        verify: check every file against the record before DCP reads it.
        trust_pickle: allow arbitrary pickle in non-tensor values.

    Returns:
        The checkpoint (``.state`` holds what was loaded, ``.extra`` the saved extra).

    Raises:
        MissingObjectError: an object was given that the version did not save.
        CheckpointError: missing, corrupt or unsafe data (on any rank).
    """
    missing = [name for name in objects if name not in info.objects]
    if missing:
        raise MissingObjectError(
            f"version {info.version} has no {', '.join(missing)}; it saved: {', '.join(info.objects) or 'nothing'}"
        )
    group = Collectives(active=None if collective else False)  # None: whatever the process group says
    given = set(objects)
    target: dict[str, Any] = {"objects": {name: load_target(name, obj, objects) for name, obj in objects.items()}}
    own_rng = f"rank{group.rank}"

    def fill(path: tuple[Any, ...]) -> bool:
        head = path[0]
        if head == "objects":
            return len(path) > 1 and path[1] not in given
        if head == "rng":
            return restore_rng and len(path) > 1 and path[1] == own_rng
        return head in ("extra", "torchckpt")

    state = dcp_load(
        storage,
        info,
        target,
        fill,
        strict=strict,
        verify=verify,
        trust_pickle=trust_pickle,
        no_dist=not group.active,
        any_failed=group.any_failed,
    )
    loaded = state.get("objects", {})
    for name, obj in objects.items():
        apply_state(name, obj, loaded[name], objects, strict)
    if restore_rng:
        saved_rng = state.get("rng", {}).get(own_rng)
        if saved_rng:
            rng.restore(saved_rng)
        else:
            log.warning("version %s has no RNG state for rank %d; RNG left as it is", info.version, group.rank)
    return Checkpoint(info=info, state=loaded, extra=state.get("extra", {}))
