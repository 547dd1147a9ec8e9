"""A wrapping fsspec filesystem that fails on the k-th call of a chosen kind.

``FaultyFS(inner)`` presents the inner filesystem (its ``protocol``, its
``_strip_protocol``, ``split_path``, ``call_s3``, ``loop`` …: every attribute is
delegated), so ``CheckpointManager(root, filesystem=FaultyFS(inner))`` treats it
exactly like ``inner`` (S3 keeps its conditional-write CAS). Calls are counted
per *kind*; ``arm(kind, k)`` makes the k-th call of that kind (counted from the
arming) raise ``InjectedFault`` (an ``OSError``, like a dropped connection or a
full disk), or every call from the k-th on with ``persistent=True`` (an outage).

Kinds: ``open`` ``cat`` ``pipe`` ``rm`` ``info`` ``ls`` ``exists`` ``makedirs``
``s3`` (``call_s3`` / ``_call_s3``: raw S3 requests) and, on files returned by
``open``, ``write`` ``read`` ``close``.
"""

from __future__ import annotations

import inspect
from collections import Counter
from typing import Any

#: fsspec method name -> fault kind
METHOD_KINDS = {
    "open": "open",
    "_open": "open",
    "cat_file": "cat",
    "cat": "cat",
    "_cat_file": "cat",
    "pipe_file": "pipe",
    "pipe": "pipe",
    "_pipe_file": "pipe",
    "rm": "rm",
    "rm_file": "rm",
    "_rm": "rm",
    "info": "info",
    "size": "info",
    "modified": "info",
    "_info": "info",
    "ls": "ls",
    "_ls": "ls",
    "find": "ls",
    "exists": "exists",
    "_exists": "exists",
    "makedirs": "makedirs",
    "mkdir": "makedirs",
    "call_s3": "s3",
    "_call_s3": "s3",
}
FILE_KINDS = ("write", "read", "close")
KINDS = tuple(sorted(set(METHOD_KINDS.values()))) + FILE_KINDS


class InjectedFault(OSError):
    """The failure FaultyFS raises (an OSError: what a real filesystem or network raises)."""


class FaultyFS:
    """Delegates everything to ``inner``; counts calls by kind and fails the armed one."""

    def __init__(self, inner: Any) -> None:
        self.__dict__["_inner"] = inner
        self.__dict__["counts"] = Counter()
        self.__dict__["fired"] = 0
        self.__dict__["_armed"] = None

    # ----- control -------------------------------------------------------------------------------
    def arm(self, kind: str, k: int, *, persistent: bool = False) -> None:
        assert kind in KINDS, kind
        self.counts.clear()
        self.__dict__["fired"] = 0
        self.__dict__["_armed"] = (kind, k, persistent)

    def disarm(self) -> None:
        self.__dict__["_armed"] = None

    def reset_counts(self) -> None:
        self.counts.clear()

    def hit(self, kind: str, what: str = "") -> None:
        self.counts[kind] += 1
        armed = self._armed
        if armed is None or armed[0] != kind:
            return
        n, k, persistent = self.counts[kind], armed[1], armed[2]
        if n == k or (persistent and n > k):
            self.__dict__["fired"] = self.fired + 1
            raise InjectedFault(f"injected fault: call #{n} of kind {kind} ({what})")

    # ----- delegation ----------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        kind = METHOD_KINDS.get(name)
        if kind is None or not callable(attr):
            return attr
        if inspect.iscoroutinefunction(attr):

            async def async_call(*args: Any, **kwargs: Any) -> Any:
                self.hit(kind, _describe(name, args))
                return await attr(*args, **kwargs)

            return async_call

        def call(*args: Any, **kwargs: Any) -> Any:
            self.hit(kind, _describe(name, args))
            result = attr(*args, **kwargs)
            if kind == "open":
                return FaultyFile(self, result)
            return result

        return call

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._inner, name, value)

    def __repr__(self) -> str:
        return f"FaultyFS({self._inner!r}, armed={self._armed})"


def _describe(name: str, args: tuple[Any, ...]) -> str:
    if name in ("call_s3", "_call_s3") and args:
        return f"{name} {args[0]}"
    return f"{name} {args[0]!r}" if args else name


class FaultyFile:
    """A file from ``FaultyFS.open``: ``write``/``read``/``close`` are counted and may fail."""

    def __init__(self, fs: FaultyFS, inner: Any) -> None:
        self._fs = fs
        self._inner = inner

    def write(self, data: Any) -> Any:
        self._fs.hit("write", getattr(self._inner, "path", ""))
        return self._inner.write(data)

    def read(self, *args: Any) -> Any:
        self._fs.hit("read", getattr(self._inner, "path", ""))
        return self._inner.read(*args)

    def close(self) -> None:
        if getattr(self._inner, "closed", False):
            return
        try:
            self._fs.hit("close", getattr(self._inner, "path", ""))
        except BaseException:
            # A failed close loses the buffered data: drop it like a dropped upload would.
            _discard(self._inner)
            raise
        self._inner.close()

    def __enter__(self) -> FaultyFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self) -> Any:
        return iter(self._inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _discard(f: Any) -> None:
    """Abandon a buffered fsspec file without committing it."""
    try:
        if hasattr(f, "discard"):
            f.discard()
        elif hasattr(f, "buffer"):  # MemoryFile / AbstractBufferedFile: forget the data, then close
            f.closed = True
    except Exception:
        pass
