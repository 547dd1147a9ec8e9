"""The training-loop methods of ``CheckpointManager``: ``should_save``, ``maybe_save``, ``preempted``."""

from __future__ import annotations

from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from ..records import CheckpointInfo

if TYPE_CHECKING:
    from .schedule import SaveSchedule


class TrainingLoop:
    """Save on a schedule and on preemption (see docs/training-loops.md)."""

    if TYPE_CHECKING:  # provided by CheckpointManager
        schedule: SaveSchedule

        def save(self, step: int, **kwargs: Any) -> CheckpointInfo | Future[CheckpointInfo] | None: ...

    def should_save(self, step: int) -> bool:
        """Whether to save at ``step`` by the manager's schedule; every rank gets the same answer.

        Call it on every rank at every step (with a time or signal rule it is a collective).
        See ``training.SaveSchedule.should_save``.
        """
        return self.schedule.should_save(step)

    def maybe_save(self, step: int, **save_args: Any) -> CheckpointInfo | Future[CheckpointInfo] | None:
        """``save(step, **save_args)`` when ``should_save(step)``, else None (call it on every rank).

        Returns:
            What ``save`` returns, or None when no save was due.
        """
        return self.save(step, **save_args) if self.should_save(step) else None

    @property
    def preempted(self) -> bool:
        """True from the ``should_save`` that saw a preemption signal (on any rank) on: stop after that save."""
        return self.schedule.preempted
