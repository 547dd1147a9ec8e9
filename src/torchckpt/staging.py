"""Reusable host buffers for async saves: the caller pays one memcpy, no allocation.

``StagingPool.snapshot(state)`` copies every tensor of ``state`` into a CPU buffer
kept from the previous save (same path in the state tree, same shape and dtype),
allocating only what is new or changed and dropping buffers no longer used. CUDA
tensors are staged into pinned memory with asynchronous copies and one
synchronisation at the end, so the returned snapshot is complete and training may
mutate the originals as soon as ``snapshot`` returns.

The pool's buffers are reused by the next snapshot, so a caller must not take a new
snapshot while a previous one is still being written (``AsyncSaver`` keeps one save
in flight and waits before staging).
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from .errors import SnapshotChangedError

Path = tuple[Any, ...]
Copy = tuple[int, int, int]  # (destination address, source address, bytes)

#: Big copies are cut into pieces of this size and spread over a few threads: one
#: thread does not saturate memory bandwidth (measured here: 1 GiB in 0.10 s on one
#: thread, 0.07 s on two), and ``ctypes.memmove`` releases the GIL.
PIECE_BYTES = 64 << 20
COPY_THREADS = max(1, min(4, os.cpu_count() or 1))


def _memmove_all(pieces: list[Copy]) -> None:
    for dst, src, n in pieces:
        ctypes.memmove(dst, src, n)


def _stageable(t: torch.Tensor) -> bool:
    """Plain dense tensors (and Parameters) go to a reused buffer; exotic ones are cloned."""
    return (
        t.layout == torch.strided
        and not t.is_quantized
        and not getattr(t, "is_nested", False)
        and (type(t) is torch.Tensor or isinstance(t, torch.nn.Parameter))
        and t.device.type != "meta"
    )


class StagingPool:
    """CPU copies of a state's tensors, reused across snapshots and resized when shapes change."""

    def __init__(self) -> None:
        self._buffers: dict[Path, torch.Tensor] = {}
        self._lock = threading.Lock()
        self._copiers: ThreadPoolExecutor | None = None
        self.allocated_bytes = 0  # bytes allocated by the latest snapshot (0 when fully reused)

    @property
    def nbytes(self) -> int:
        """Host memory the pool holds."""
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def buffer(self, path: Path) -> torch.Tensor | None:
        return self._buffers.get(path)

    def clear(self) -> None:
        with self._lock:
            self._buffers.clear()
            if self._copiers is not None:
                self._copiers.shutdown(wait=True)
                self._copiers = None

    def snapshot(self, value: Any) -> Any:
        """A copy of ``value`` whose tensors live in this pool's buffers (on the CPU)."""
        out, later = self.snapshot_deferred(value, frozenset())
        later.run()
        return out

    def snapshot_deferred(self, value: Any, defer: frozenset[int]) -> tuple[Any, LaterCopies]:
        """Like ``snapshot``, but the copies of CPU tensors whose data pointer is in ``defer`` are left to later.

        Args:
            value: the state to copy.
            defer: data pointers of tensors that nothing changes until the caller says so
                (an optimizer's parameters and state: only its ``step`` changes them).

        Returns:
            The copy (its deferred tensors hold garbage until ``LaterCopies.run`` returns) and those copies.
        """
        with self._lock:
            used: set[Path] = set()
            cuda_devices: set[torch.device] = set()
            self.allocated_bytes = 0
            self._pending: list[Copy] = []
            self._later: list[Copy] = []
            self._watched: list[tuple[Path, torch.Tensor, int]] = []
            self._defer = defer
            out = self._copy(value, (), used, cuda_devices)
            self._run_copies(self._pending)
            for dev in cuda_devices:  # async copies into pinned memory: wait once for all of them
                torch.cuda.synchronize(dev)
            for stale in set(self._buffers) - used:
                del self._buffers[stale]
            later = LaterCopies(self, self._later, self._watched)
            self._later, self._watched, self._defer = [], [], frozenset()
            return out, later

    def _run_copies(self, copies: list[Copy]) -> None:
        pieces = [
            (dst + off, src + off, min(PIECE_BYTES, n - off))
            for dst, src, n in copies
            for off in range(0, n, PIECE_BYTES)
        ]
        if COPY_THREADS < 2 or len(pieces) < 2 or sum(p[2] for p in pieces) < 2 * PIECE_BYTES:
            _memmove_all(pieces)
            return
        if self._copiers is None:
            self._copiers = ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="torchckpt-stage")
        pieces.sort(key=lambda p: -p[2])
        groups = [pieces[i::COPY_THREADS] for i in range(COPY_THREADS)]
        list(self._copiers.map(_memmove_all, groups))

    def _copy(self, value: Any, path: Path, used: set[Path], cuda: set[torch.device]) -> Any:
        if isinstance(value, torch.Tensor):
            return self._stage(value.detach(), path, used, cuda)
        if isinstance(value, dict):
            items = [(k, self._copy(v, path + (k,), used, cuda)) for k, v in value.items()]
            return OrderedDict(items) if isinstance(value, OrderedDict) else dict(items)
        if isinstance(value, list):
            return [self._copy(v, path + (i,), used, cuda) for i, v in enumerate(value)]
        if isinstance(value, tuple) and not hasattr(value, "_fields"):
            return tuple(self._copy(v, path + (i,), used, cuda) for i, v in enumerate(value))
        return value

    def _stage(self, t: torch.Tensor, path: Path, used: set[Path], cuda: set[torch.device]) -> torch.Tensor:
        if type(t).__name__ == "DTensor":  # a shard: its local tensor goes to a reused buffer, the spec is kept
            from .formats.dcp_io import dtensor_like, is_dtensor

            if is_dtensor(t):
                local = t.to_local().detach()  # type: ignore[attr-defined]
                return dtensor_like(self._stage(local, (*path, "<local>"), used, cuda), t)
        if not _stageable(t):
            return t.to("cpu", copy=True)
        is_cuda = t.device.type == "cuda"
        buf = self._buffers.get(path)
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype or (is_cuda and not buf.is_pinned()):
            buf = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=is_cuda)
            self._buffers[path] = buf
            self.allocated_bytes += buf.numel() * buf.element_size()
        used.add(path)
        if t.device.type == "cpu" and t.is_contiguous() and not (t.is_conj() or t.is_neg()):
            # one plain memcpy (GIL released): torch's copy_ splits big copies over OpenMP threads,
            # which on a busy host (training, loaders) stalls in barriers for several times longer
            nbytes = t.numel() * t.element_size()
            if nbytes and t.data_ptr() in self._defer:  # copied by LaterCopies.run; ``t`` kept alive there
                self._later.append((buf.data_ptr(), t.data_ptr(), nbytes))
                self._watched.append((path, t, t._version))
            elif nbytes:  # done in snapshot(), in parallel pieces; ``t`` stays alive until then
                self._pending.append((buf.data_ptr(), t.data_ptr(), nbytes))
        else:
            buf.copy_(t, non_blocking=is_cuda)
        if is_cuda:
            cuda.add(t.device)
        return buf


class LaterCopies:
    """The copies a deferred snapshot left for a background thread (see ``StagingPool.snapshot_deferred``)."""

    def __init__(self, pool: StagingPool, copies: list[Copy], watched: list[tuple[Path, torch.Tensor, int]]) -> None:
        self._pool = pool
        self._copies = copies
        self._watched = watched  # (path, source tensor kept alive, its version counter at the call)

    @property
    def nbytes(self) -> int:
        """Bytes left to copy."""
        return sum(n for _, _, n in self._copies)

    def run(self) -> None:
        """Make the copies; refuse the snapshot when a source tensor was changed in place meanwhile.

        Raises:
            SnapshotChangedError: a deferred tensor was modified before its copy finished.
        """
        copies, self._copies = self._copies, []
        if copies:
            self._pool._run_copies(copies)
        changed = [path for path, t, version in self._watched if t._version != version]
        self._watched = []
        if changed:
            where = ".".join(str(p) for p in changed[0])
            raise SnapshotChangedError(
                f"{where} (and {len(changed) - 1} more) changed in place before the background snapshot of an "
                "async save finished; only optimizer steps wait for it. Call CheckpointManager.wait() before "
                "changing parameters outside an optimizer step, or save with blocking=True"
            )
