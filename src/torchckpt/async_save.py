"""Background saves: snapshot on the caller's thread, write on one worker thread.

Only one save is in flight: a new ``save`` waits for the previous one. A failure
is kept and re-raised as ``AsyncSaveError`` by the next ``save``, ``wait()`` or
``close()``, so it is never silently lost.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, TypeVar


from .errors import AsyncSaveError

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

    def submit(self, fn: Callable[[], T], blocked_s: float) -> "Future[T]":
        self.wait()  # one save in flight; surfaces an earlier failure first
        started = time.perf_counter()

        def run() -> T:
            try:
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
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)
            self.staging.clear()
