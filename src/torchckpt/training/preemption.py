"""Preemption signals: handlers that only set a flag, chained to the handlers they replace.

Spot instances, SLURM and Kubernetes announce the end with a signal (SIGTERM,
SIGUSR1, ...) and a grace period. The handler installed here does no I/O and
takes no lock: it records that a signal arrived and calls the Python handler it
replaced, if any. The training loop acts on the flag at its next step boundary
(``SaveSchedule.should_save``), where saving is safe.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterable
from types import FrameType
from typing import Any

from ..errors import CheckpointError

log = logging.getLogger(__name__)


class PreemptionHandler:
    """Signal handlers that record the arrival of a preemption signal.

    Attributes:
        signals: the signals handled.
        received: the signal numbers that arrived, in order (appending is all a handler does).
    """

    def __init__(self, signals: Iterable[int | signal.Signals]) -> None:
        """Install a flag-setting handler for each signal (from the main thread only).

        Args:
            signals: e.g. ``(signal.SIGTERM, signal.SIGUSR1)``.

        Raises:
            CheckpointError: not called from the main thread (Python only lets it install handlers).
            ValueError: a signal cannot be handled (SIGKILL, SIGSTOP, an unknown number).
        """
        self.signals = tuple(signal.Signals(s) for s in signals)
        self.received: list[int] = []
        self._previous: dict[signal.Signals, Any] = {}
        if not self.signals:
            return
        if threading.current_thread() is not threading.main_thread():
            raise CheckpointError(
                "preemption_signals can only be installed from the main thread (Python delivers signals there); "
                "create the CheckpointManager in the main thread, or pass preemption_signals=() here"
            )
        try:
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        except (OSError, ValueError, RuntimeError):
            self.close()
            raise
        log.debug("preemption handlers installed for %s", ", ".join(s.name for s in self.signals))

    @property
    def signaled(self) -> bool:
        """Whether a handled signal arrived in this process."""
        return bool(self.received)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)  # the only state change: no I/O, no lock
        previous = self._previous.get(signal.Signals(signum))
        if callable(previous):  # a Python handler we replaced (SIG_DFL / SIG_IGN / None are not callable)
            previous(signum, frame)

    def close(self) -> None:
        """Put back the handlers that were there before (where ours is still the installed one)."""
        previous, self._previous = self._previous, {}
        if not previous:
            return
        if threading.current_thread() is not threading.main_thread():
            log.warning("preemption handlers not removed: close() was called outside the main thread")
            return
        for sig, old in previous.items():
            if signal.getsignal(sig) == self._handle:  # someone who replaced ours keeps theirs
                signal.signal(sig, old if old is not None else signal.SIG_DFL)
