"""Background saves: snapshot on the caller's thread (or partly on the worker), write on one worker thread.

Only one save is in flight: a new ``save`` waits for the previous one. A failure
is kept and re-raised as ``AsyncSaveError`` by the next ``save``, ``wait()`` or
``close()``, so it is never silently lost.

Deferred snapshots (CheckFreq, FAST '21): tensors that only an optimizer step
changes (the parameters and state of an optimizer being saved) are copied on the
worker thread while training runs its next forward and backward; a global
optimizer step pre-hook (``torch.optim.optimizer.register_optimizer_step_pre_hook``)
makes any optimizer's ``step`` wait until that copy is done, so the version holds
exactly the state at the ``save`` call. Everything else (buffers such as
BatchNorm statistics that a forward pass changes, RNG states, ``extra``) is
copied before ``save`` returns. A deferred tensor changed in place by anything
but an optimizer step is detected (its version counter) and fails that save.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import AsyncSaveError

if TYPE_CHECKING:
    from .staging import LaterCopies, StagingPool

log = logging.getLogger(__name__)
T = TypeVar("T")


class AsyncSaver:
    """One worker thread and the bookkeeping that makes its failures visible."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torchckpt-save")
        self._pending: Future[Any] | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        from .staging import StagingPool

        self.staging = StagingPool()  # host buffers reused by every async save of this saver
        self._snapshot_done: threading.Event | None = None  # unset while a deferred snapshot is copying
        self._step_hook: Any = None

    def submit(self, fn: Callable[[], T], blocked_s: float, later: LaterCopies | None = None) -> Future[T]:
        """Run ``fn`` (the write) on the worker, after ``later`` (the deferred snapshot copies) if given.

        Args:
            fn: writes and commits the version.
            blocked_s: how long the caller was blocked (logged).
            later: copies to make first; optimizer steps wait for them (see the module docstring).

        Returns:
            The future of ``fn``'s result.

        Raises:
            AsyncSaveError: an earlier background save failed.
        """
        self.wait()  # one save in flight; surfaces an earlier failure first
        started = time.perf_counter()
        done = None
        if later is not None and later.nbytes:
            done = threading.Event()
            self._snapshot_done = done
            self._hook_optimizer_steps()

        def run() -> T:
            try:
                if done is not None:
                    try:
                        later.run()  # type: ignore[union-attr]
                    finally:
                        done.set()  # optimizer steps go on, whatever happened
                result = fn()
            except BaseException as exc:
                with self._lock:
                    self._error = self._error or exc
                log.error("background save failed: %s", exc)
                raise
            log.info(
                "async save committed: caller blocked %.3fs, background %.3fs",
                blocked_s,
                time.perf_counter() - started,
            )
            return result

        fut = self._pool.submit(run)
        self._pending = fut
        return fut

    def start(self, stage: Callable[[StagingPool], tuple[Callable[[], T], LaterCopies | None]]) -> Future[T]:
        """Wait for the save in flight, stage the next on the caller's thread, write it on the worker.

        Args:
            stage: given this saver's buffer pool, copies the state (on the caller's thread) and returns
                the write to run in the background and the copies it left for the worker (or None).

        Returns:
            The future of the write's result.

        Raises:
            AsyncSaveError: an earlier background save failed (on every rank, for sharded saves).
        """
        self.wait()  # one save in flight, and its staging buffers are about to be reused
        started = time.perf_counter()
        write, later = stage(self.staging)
        return self.submit(write, blocked_s=time.perf_counter() - started, later=later)

    def wait_snapshot(self) -> bool:
        """Block until the in-flight save's deferred snapshot is copied (training may then change the state).

        Returns:
            Whether a deferred snapshot was (or had been) started by the latest save.
        """
        done = self._snapshot_done
        if done is not None:
            done.wait()
        return done is not None

    def _hook_optimizer_steps(self) -> None:
        if self._step_hook is not None:
            return
        ref = weakref.ref(self)

        def before_step(*_: Any) -> None:
            saver = ref()
            if saver is not None:
                saver.wait_snapshot()

        from torch.optim.optimizer import register_optimizer_step_pre_hook

        self._step_hook = register_optimizer_step_pre_hook(before_step)

    def wait(self) -> None:
        """Block until the in-flight save finished; raise the first failure once."""
        fut, self._pending = self._pending, None
        if fut is not None:
            try:
                fut.result()
            except BaseException:
                pass  # recorded in self._error by run()
        with self._lock:
            err, self._error = self._error, None
        if err is not None:
            raise AsyncSaveError(f"a background save failed: {type(err).__name__}: {err}") from err

    def close(self) -> None:
        """Wait for the in-flight save, then release the worker, the step hook and the staging buffers."""
        try:
            self.wait()
        finally:
            if self._step_hook is not None:
                self._step_hook.remove()
                self._step_hook = None
            self._pool.shutdown(wait=True)
            self.staging.clear()
