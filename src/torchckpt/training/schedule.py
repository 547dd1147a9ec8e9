"""When to save: every N steps, every T seconds, and at the first step boundary after a preemption signal.

``SaveSchedule.should_save(step)`` is called by every rank at every step. The
step rule needs no communication (every rank sees the same step); the time and
signal rules do (clocks drift, a signal may reach one rank only), so when one
of them is configured each call makes one small ``all_reduce`` and every rank
gets the same answer. The clock is injectable for tests.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterable

from .preemption import PreemptionHandler
from .ranks import agree_any


class SaveSchedule:
    """Decides at which steps a training loop saves.

    Attributes:
        every_steps: save at positive multiples of this step count (None: no step rule).
        every_seconds: save when this many seconds passed since the last committed save or the
            schedule's creation (None: no time rule).
        preemption: the installed signal handlers (None without ``preemption_signals``).
    """

    def __init__(
        self,
        every_steps: int | None = None,
        every_seconds: float | None = None,
        *,
        preemption_signals: Iterable[int | signal.Signals] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Set the rules (and install signal handlers when ``preemption_signals`` is not empty).

        Args:
            every_steps: a positive int, or None.
            every_seconds: a positive number of seconds, or None.
            preemption_signals: signals that mean "save at the next step boundary".
            clock: seconds as a float, monotonic (tests pass a fake one).

        Raises:
            ValueError: a rule that is not positive.
            CheckpointError: signal handlers requested outside the main thread.
        """
        if every_steps is not None and (
            isinstance(every_steps, bool) or not isinstance(every_steps, int) or every_steps <= 0
        ):
            raise ValueError(f"save_every_steps must be a positive int or None, got {every_steps!r}")
        if every_seconds is not None and (
            isinstance(every_seconds, bool) or not isinstance(every_seconds, (int, float)) or not every_seconds > 0
        ):
            raise ValueError(f"save_every_seconds must be a positive number or None, got {every_seconds!r}")
        self.every_steps = every_steps
        self.every_seconds = every_seconds
        self.clock = clock
        signals = tuple(preemption_signals)
        self.preemption = PreemptionHandler(signals) if signals else None
        self._since = clock()  # the time rule counts from here: creation, a save's start, its commit
        self._last_step: int | None = None  # the last step a save was decided or started for
        self._handled = 0  # signals already answered by a save
        self._preempted = False

    @property
    def agrees(self) -> bool:
        """Whether ``should_save`` communicates (a time or signal rule is configured)."""
        return self.every_seconds is not None or self.preemption is not None

    @property
    def preempted(self) -> bool:
        """True from the ``should_save`` call that first saw a preemption signal (on any rank) on.

        Latched at ``should_save`` so that ``maybe_save(step); if preempted: break`` never stops
        before the preemption save, and every rank of a process group stops at the same step.
        """
        return self._preempted

    def _pending_signal(self) -> bool:
        return self.preemption is not None and len(self.preemption.received) > self._handled

    def should_save(self, step: int) -> bool:
        """Whether the loop should save at ``step`` (the same answer on every rank).

        Args:
            step: the current training step.

        Returns:
            True at most once per step: at a positive multiple of ``every_steps``, when
            ``every_seconds`` passed, or when a preemption signal arrived and no save started since.
        """
        by_step = self.every_steps is not None and step > 0 and step % self.every_steps == 0
        by_time = self.every_seconds is not None and self.clock() - self._since >= self.every_seconds
        signaled = self._pending_signal()
        if self.agrees:
            by_time, signaled = agree_any([by_time, signaled])
        if signaled:
            self._preempted = True
        if step == self._last_step:
            return False
        due = by_step or by_time or signaled
        if due:
            self.save_started(step)
        return due

    def save_started(self, step: int) -> None:
        """Record that a save of ``step`` started (``should_save`` then says False for it).

        Args:
            step: the step being saved.
        """
        self._last_step = step
        self._since = self.clock()
        if self.preemption is not None:
            self._handled = len(self.preemption.received)

    def save_committed(self) -> None:
        """Restart the time rule: a save was committed (for async saves: when it finished)."""
        self._since = self.clock()

    def close(self) -> None:
        """Remove the signal handlers (the previous ones are back)."""
        if self.preemption is not None:
            self.preemption.close()
