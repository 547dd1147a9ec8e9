"""Every collective of a sharded save or restore, behind one wrapper (after DCP's ``_DistWrapper``).

With no process group each call is the single-process identity, so callers are
written once for both cases. The rule the wrapper keeps: **a failure on any rank
becomes the same failure on every rank** — the failing rank re-raises its own
exception, the others raise a ``CheckpointError`` that names the rank and the
cause — so no rank waits forever in a collective the others have left.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch.distributed as dist

from ..errors import CheckpointError

T = TypeVar("T")
_SIDE_GROUP: list[Any] = []


def process_group_active() -> bool:
    """Whether ``torch.distributed`` is initialised in this process."""
    return dist.is_available() and dist.is_initialized()


class Collectives:
    """The process group as a sharded save needs it.

    Attributes:
        active: whether there is a process group (False: one process).
        rank: this process's rank (0 without a group).
        world: the number of ranks (1 without a group).
    """

    def __init__(self, active: bool | None = None, group: Any = None) -> None:
        self.active = process_group_active() if active is None else active
        self.group = group if self.active else None  # None: the default group
        self.rank = dist.get_rank() if self.active else 0
        self.world = dist.get_world_size() if self.active else 1

    def side_channel(self) -> Collectives:
        """The same ranks on a gloo group of their own, for collectives run by a background thread.

        Created once per process (a collective: every rank must be here); a background
        save's collectives then never interleave with training's on the default group.
        """
        if not self.active:
            return self
        if not _SIDE_GROUP:
            _SIDE_GROUP.append(dist.new_group(backend="gloo"))
        return Collectives(True, group=_SIDE_GROUP[0])

    @property
    def is_coordinator(self) -> bool:
        """Rank 0, which decides ids and commits."""
        return self.rank == 0

    def broadcast(self, value: T | None) -> T:
        """Rank 0's ``value`` on every rank (others pass anything, e.g. None)."""
        if not self.active:
            return value  # type: ignore[return-value]
        box = [value if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]  # type: ignore[return-value]

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value`` on rank 0 (in rank order); an empty list elsewhere."""
        if not self.active:
            return [value]
        out: list[Any] = [None] * self.world if self.rank == 0 else []
        dist.gather_object(value, out if self.rank == 0 else None, dst=0, group=self.group)
        return out

    def any_failed(self, failed: bool) -> bool:
        """True on every rank when any rank passes True."""
        if not self.active:
            return failed
        flags: list[Any] = [None] * self.world
        dist.all_gather_object(flags, failed, group=self.group)
        return any(flags)

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.active:
            dist.barrier(group=self.group)

    def all_or_none(self, fn: Callable[[], T], what: str) -> T:
        """Run ``fn`` on every rank; if it raised anywhere, raise on every rank.

        Raises:
            Exception: this rank's own failure, or ``CheckpointError`` naming the rank that failed.
        """
        error: Exception | None = None
        result: Any = None
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
            error = exc
        if self.any_failed(error is not None):
            if error is not None:
                raise error
            raise CheckpointError(f"{what} failed on another rank; nothing was committed")
        return result

    def on_coordinator(self, fn: Callable[[], T], what: str) -> T:
        """Run ``fn`` on rank 0 only and give its result (which must pickle) to every rank.

        Raises:
            Exception: rank 0 re-raises its own failure; the others raise ``CheckpointError`` with its text.
        """
        outcome: tuple[bool, Any] | None = None
        error: Exception | None = None
        if self.is_coordinator:
            try:
                outcome = (True, fn())
            except Exception as exc:  # noqa: BLE001 - reported to every rank
                error = exc
                outcome = (False, f"{type(exc).__name__}: {exc}")
        ok, value = self.broadcast(outcome)
        if ok:
            return value
        if error is not None:
            raise error
        raise CheckpointError(f"{what} failed on rank 0: {value}")
